//! One Relaycord stack on loopback, built to a test's needs: NATS (one server or a
//! cluster), the simulator as Discord, a receiver verifying [`SECRET`] signatures, and
//! whichever roles the test runs in-process, through the binary's own wiring.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prometheus::Registry;
use relaycord::config::Config;
use relaycord::roles;
use relaycord::telemetry::Health;
use relaycord_bus::Secret;
use relaycord_devkit::{NatsCluster, NatsServer, Receiver, expected_ids};
use relaycord_interactions::RouteConfig;
use relaycord_sim::{GenerateSpec, GeneratorHandle, Interactions, SimConfig, Simulator};
use relaycord_sinks::Driver;
use relaycord_sinks::http::SigningKey;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{RecordingSink, SECRET, http_sink, metric, metric_with, stream_ids};

/// Upper bound for things that take seconds; reached only when a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

type Patch = Box<dyn FnOnce(&mut Config) + Send>;
type Role = JoinHandle<anyhow::Result<()>>;

/// What a [`Stack`] starts. Nothing runs but NATS, the simulator and the receiver
/// unless asked for.
pub struct StackBuilder {
    nats: Option<NatsServer>,
    nats_args: Vec<String>,
    cluster: Option<usize>,
    sim: Option<Simulator>,
    sim_config: SimConfig,
    sink_url: Option<String>,
    ingest: bool,
    wait_ready: bool,
    sinks: bool,
    interactions: Option<Vec<RouteConfig>>,
    patches: Vec<Patch>,
}

impl StackBuilder {
    /// Extra nats-server arguments (`--auth TOKEN`, `-c FILE`).
    pub fn nats_args(mut self, args: &[&str]) -> Self {
        self.nats_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// A nats-server the test started itself (to put a proxy in front of it: the
    /// config patch then points `nats.url` at the proxy).
    pub fn nats_server(mut self, server: NatsServer) -> Self {
        self.nats = Some(server);
        self
    }

    /// A JetStream cluster of `size` nodes instead of one server.
    pub fn cluster(mut self, size: usize) -> Self {
        self.cluster = Some(size);
        self
    }

    /// `shards` simulated shards over four guilds each.
    pub fn shards(mut self, shards: u32) -> Self {
        self.sim_config.shards = shards;
        self.sim_config.guilds = shards * 4;
        self
    }

    pub fn sim_config(mut self, config: SimConfig) -> Self {
        self.sim_config = config;
        self
    }

    /// A simulator the test started itself (to sign requests before the stack exists).
    pub fn simulator(mut self, sim: Simulator) -> Self {
        self.sim = Some(sim);
        self
    }

    /// Runs ingest; [`Stack::start`] returns once every shard is ready.
    pub fn ingest(mut self) -> Self {
        self.ingest = true;
        self.wait_ready = true;
        self
    }

    /// Runs ingest without waiting for the shards: for tests whose shards may never
    /// become ready, or that wait themselves ([`Stack::ready`]).
    pub fn ingest_unready(mut self) -> Self {
        self.ingest = true;
        self
    }

    /// Runs the configured sinks: one HTTP sink posting to the receiver unless the
    /// config patch says otherwise.
    pub fn sinks(mut self) -> Self {
        self.sinks = true;
        self
    }

    /// Where the default HTTP sink posts instead of the receiver.
    pub fn sink_url(mut self, url: impl Into<String>) -> Self {
        self.sink_url = Some(url.into());
        self
    }

    /// Serves interactions with these routes; [`Stack::start`] returns once it answers.
    pub fn interactions(mut self, routes: Vec<RouteConfig>) -> Self {
        self.interactions = Some(routes);
        self
    }

    /// Adjusts the config before validation (applied in the order given).
    pub fn config(mut self, patch: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.patches.push(Box::new(patch));
        self
    }

    pub async fn start(self) -> Stack {
        // Tests build reqwest clients (rustls without a default provider).
        relaycord_bus::install_crypto_provider();
        let nats = match self.cluster {
            None if self.nats.is_some() => NatsCluster {
                nodes: self.nats.into_iter().collect(),
            },
            Some(size) => NatsCluster::start(size).expect("start a nats-server cluster"),
            None => {
                let args: Vec<&str> = self.nats_args.iter().map(String::as_str).collect();
                NatsCluster {
                    nodes: vec![
                        NatsServer::start_with(&args)
                            .expect("start nats-server (scripts/setup.sh installs it)"),
                    ],
                }
            }
        };
        let sim = match self.sim {
            Some(sim) => sim,
            None => start_sim(self.sim_config).await,
        };
        let shutdown = CancellationToken::new();
        let receiver = Receiver::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(SigningKey::parse(SECRET).unwrap()),
            false,
            shutdown.clone(),
        )
        .unwrap();

        let mut config = Config::load(None).unwrap();
        config.nats.url = nats.urls();
        config.discord.api_base = sim.api_base();
        config.discord.token = Secret::new(sim.config().token.clone());
        config.discord.public_key = sim.interactions().public_key_hex();
        let serve_interactions = self.interactions.is_some();
        config.interactions.routes = self.interactions.unwrap_or_default();
        // In-process tests stop the stack at once; the drain after SIGTERM is tested on the
        // binary (interactions_processes::requests_sent_through_a_sigterm_are_all_answered).
        config.interactions.drain_delay = Duration::ZERO;
        let sink_url = self.sink_url.unwrap_or_else(|| receiver.url());
        config.sinks = vec![http_sink("receiver", sink_url)];
        for patch in self.patches {
            patch(&mut config);
        }
        config.validate().unwrap();

        let js = connect(&config, self.cluster.is_some()).await;
        let registry = Registry::new();
        let health = Health::default();
        health.set_ready(true);
        let spawn_role = |run: bool, role: fn(RoleArgs) -> Role| {
            run.then(|| {
                role(RoleArgs {
                    config: config.clone(),
                    js: js.clone(),
                    registry: registry.clone(),
                    health: health.clone(),
                    shutdown: shutdown.clone(),
                })
            })
        };
        let ingest = spawn_role(self.ingest, |a| {
            tokio::spawn(async move {
                roles::run_ingest(&a.config, a.js, &a.registry, &Health::default(), a.shutdown)
                    .await
            })
        });
        let sinks = spawn_role(self.sinks, |a| {
            tokio::spawn(async move {
                roles::run_sinks(&a.config, &[], a.js, &a.registry, &a.health, a.shutdown).await
            })
        });
        let mut stack = Stack {
            discord: sim.interactions(),
            client: js.client(),
            nats,
            sim,
            receiver,
            js,
            registry,
            health,
            shutdown,
            config,
            url: String::new(),
            http: reqwest::Client::new(),
            dir: tempfile::tempdir().unwrap(),
            ingest,
            sinks,
            interactions: None,
        };
        if self.wait_ready {
            stack
                .sim
                .wait_ready(Duration::from_secs(30))
                .await
                .expect("all shards identified");
        }
        if serve_interactions {
            stack.serve_interactions().await;
        }
        stack
    }
}

struct RoleArgs {
    config: Config,
    js: jetstream::Context,
    registry: Registry,
    health: Health,
    shutdown: CancellationToken,
}

/// Connects and sets up the streams. A cluster answers JetStream requests only once it
/// has elected a meta leader, so there the first failures are retried.
pub(crate) async fn connect(config: &Config, cluster: bool) -> jetstream::Context {
    if !cluster {
        return roles::connect(config, "test").await.unwrap();
    }
    let mut last = None;
    for _ in 0..60 {
        match roles::connect(config, "test").await {
            Ok(js) => return js,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the cluster never offered JetStream: {:#}", last.unwrap());
}

/// The simulator on a port of its own.
pub async fn start_sim(config: SimConfig) -> Simulator {
    relaycord_bus::install_crypto_provider();
    Simulator::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), config)
        .await
        .unwrap()
}

/// A running stack; dropping it stops everything (the roles through `shutdown`).
pub struct Stack {
    nats: NatsCluster,
    pub sim: Simulator,
    /// The simulator's interactions side: signs requests as Discord would.
    pub discord: Interactions,
    pub receiver: Receiver,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub registry: Registry,
    /// What `/readyz` would answer for the sinks role.
    pub health: Health,
    pub shutdown: CancellationToken,
    /// The validated config the roles run with.
    pub config: Config,
    /// The interactions endpoint (empty unless serving interactions).
    pub url: String,
    pub(crate) http: reqwest::Client,
    dir: tempfile::TempDir,
    ingest: Option<Role>,
    sinks: Option<Role>,
    interactions: Option<Role>,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder {
            nats: None,
            nats_args: Vec::new(),
            cluster: None,
            sim: None,
            sim_config: SimConfig::default(),
            sink_url: None,
            ingest: false,
            wait_ready: false,
            sinks: false,
            interactions: None,
            patches: Vec::new(),
        }
    }

    /// Each nats-server's process state, port and log tail, for a test's failure message.
    pub fn nats_diagnosis(&self) -> String {
        self.nats.diagnosis()
    }

    /// The (first) nats-server.
    pub fn nats(&self) -> &NatsServer {
        &self.nats.nodes[0]
    }

    pub fn nats_mut(&mut self) -> &mut NatsServer {
        &mut self.nats.nodes[0]
    }

    /// Node `i` of a cluster.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nats.nodes[i]
    }

    /// Every node's URL, as `nats.url` takes them.
    pub fn nats_url(&self) -> String {
        self.nats.urls()
    }

    /// kill -9 of the (first) nats-server.
    pub fn kill_nats(&mut self) {
        self.nats_mut().kill();
    }

    /// A scratch directory that lives as long as the stack (config files, child logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Sum of a counter or gauge over all its label sets, from the stack's registry.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.registry, name)
    }

    /// Sum of `name` over the label sets whose labels contain every `labels` pair
    /// (`outcome="deferred"` style).
    pub fn metric_with(&self, name: &str, labels: &[&str]) -> f64 {
        metric_with(&self.registry, name, labels)
    }

    /// What a test that waited in vain for `sink` prints: whether the sinks role is still
    /// running, its consumer on each stream (delivered, ack floor, pending, unacknowledged,
    /// redelivered) and the sink's own metrics.
    pub async fn sink_diagnosis(&self, sink: &str) -> String {
        use futures::TryStreamExt;
        let role = match &self.sinks {
            Some(role) if role.is_finished() => "the sinks role has stopped",
            Some(_) => "the sinks role is running",
            None => "no sinks role",
        };
        let mut lines = vec![role.to_owned()];
        let name = Driver::<RecordingSink>::consumer_name(sink);
        let streams: Vec<String> = match self.js.stream_names().try_collect().await {
            Ok(names) => names,
            Err(e) => vec![format!("(cannot list streams: {e})")],
        };
        for stream in streams {
            let Ok(stream_handle) = self.js.get_stream(&stream).await else {
                continue;
            };
            if let Ok(i) = stream_handle.consumer_info(&name).await {
                lines.push(format!(
                    "consumer {name} on {stream}: delivered {}, ack floor {}, pending {}, ack pending {}, redelivered {}",
                    i.delivered.stream_sequence,
                    i.ack_floor.stream_sequence,
                    i.num_pending,
                    i.num_ack_pending,
                    i.num_redelivered
                ));
            }
        }
        lines.push(crate::metrics::samples_with(
            &self.registry,
            &format!("sink=\"{sink}\""),
        ));
        lines.join("\n")
    }

    /// Every dispatch the simulator logged that ingest publishes.
    pub fn expected(&self) -> HashSet<String> {
        expected_ids(&self.sim.sent(), None)
    }

    /// Waits until the receiver has every expected id; returns the ids still missing.
    pub async fn wait_delivered(
        &self,
        expected: &HashSet<String>,
        timeout: Duration,
    ) -> Vec<String> {
        let missing = || {
            let seen = self.receiver.seen();
            expected
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .cloned()
                .collect::<Vec<String>>()
        };
        crate::eventually(timeout, async || missing().is_empty()).await;
        missing()
    }

    /// Messages currently stored in the gateway stream.
    pub async fn stream_messages(&self) -> u64 {
        let mut stream = self.js.get_stream("DISCORD_GATEWAY").await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until every shard has a session and a live connection.
    pub async fn ready(&self) {
        if let Err(error) = self.sim.wait_ready(PATIENCE).await {
            panic!(
                "shards not ready: {error}; {:?}\n{}",
                self.sim.stats(),
                self.nats_diagnosis()
            );
        }
    }

    /// Unpaced events, `count` of them.
    pub fn burst(&self, count: u64) -> GeneratorHandle {
        self.stream(count, 0.0)
    }

    /// Paced events, so that a fault lands in the middle of the stream.
    pub fn stream(&self, count: u64, rate_per_sec: f64) -> GeneratorHandle {
        self.sim.generate(GenerateSpec {
            count: Some(count),
            rate_per_sec,
            ..GenerateSpec::default()
        })
    }

    /// Waits until the gateway stream holds every id the simulator logged (the proof log)
    /// and returns those still missing after a minute.
    pub async fn missing(&self) -> Vec<String> {
        let expected = self.expected();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stored = self.stream_messages().await;
            if stored >= expected.len() as u64 || Instant::now() > deadline {
                let on_bus: HashSet<String> = stream_ids(&self.js, "DISCORD_GATEWAY")
                    .await
                    .into_keys()
                    .collect();
                let missing: Vec<String> = expected.difference(&on_bus).cloned().collect();
                if missing.is_empty() || Instant::now() > deadline {
                    return missing;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that nothing the simulator logged is missing from the bus.
    pub async fn assert_nothing_missing(&self) {
        let missing = self.missing().await;
        assert!(
            missing.is_empty(),
            "{} of {} events missing, e.g. {:?}; sim {:?}",
            missing.len(),
            self.sim.sent().len(),
            &missing[..missing.len().min(5)],
            self.sim.stats()
        );
    }

    /// Every `Nats-Msg-Id` in the gateway stream, with how many messages carry it.
    pub async fn gateway_ids(&self) -> HashMap<String, u32> {
        stream_ids(&self.js, "DISCORD_GATEWAY").await
    }

    /// Stops the roles; each must end without error.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for role in [
            self.ingest.take(),
            self.sinks.take(),
            self.interactions.take(),
        ]
        .into_iter()
        .flatten()
        {
            role.await.unwrap().unwrap();
        }
    }

    /// Stops the roles cleanly, then checks that the simulator saw exactly
    /// `failed_resumes` failed RESUMEs and no identify faster than Discord allows.
    pub async fn stop_expecting_failed_resumes(mut self, failed_resumes: u64) {
        self.shutdown.cancel();
        if let Some(ingest) = self.ingest.take() {
            ingest.await.unwrap().expect("ingest ended without error");
        }
        assert_sim_clean(&self.sim, failed_resumes);
        self.stop().await;
    }

    /// Waits for ingest to end by itself and returns its error.
    pub async fn ingest_failure(mut self) -> anyhow::Error {
        let ingest = self.ingest.take().expect("the stack runs ingest");
        let result = tokio::time::timeout(PATIENCE, ingest).await;
        self.shutdown.cancel();
        assert_sim_clean(&self.sim, 0);
        match result {
            Ok(joined) => joined
                .unwrap()
                .expect_err("ingest should stop with an error"),
            Err(_) => panic!(
                "ingest kept running after a fatal close; sim {:?}",
                self.sim.stats()
            ),
        }
    }

    /// Starts the interactions service on the stack's config (when the builder did not,
    /// e.g. to play a replica that starts later) and returns once it answers.
    pub async fn serve_interactions(&mut self) {
        assert!(self.interactions.is_none(), "interactions already served");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.url = format!(
            "http://{}{}",
            listener.local_addr().unwrap(),
            self.config.interactions.path
        );
        let (config, js, registry, shutdown) = (
            self.config.clone(),
            self.js.clone(),
            self.registry.clone(),
            self.shutdown.clone(),
        );
        self.interactions = Some(tokio::spawn(async move {
            relaycord::interactions::run_interactions(
                &config,
                js,
                &registry,
                &Health::default(),
                listener,
                shutdown,
            )
            .await
        }));
        self.wait_serving().await;
    }

    /// Serving starts once NATS is set up. A GET is answered 405 without touching the
    /// request metrics the tests count.
    async fn wait_serving(&self) {
        for _ in 0..500 {
            if self
                .http
                .get(&self.url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 405)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the interactions service did not start");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The checks every ingest test ends with: Discord's identify rate limit and session
/// start limit were never broken, and exactly the expected RESUMEs failed.
pub fn assert_sim_clean(sim: &Simulator, failed_resumes: u64) {
    let stats = sim.stats();
    assert_eq!(
        (
            stats.identify_violations,
            stats.session_start_exhausted,
            stats.failed_resumes
        ),
        (0, 0, failed_resumes),
        "identify violations, exhausted session starts, failed resumes: {stats:?}"
    );
}
