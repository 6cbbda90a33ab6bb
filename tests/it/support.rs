//! A whole Relaycord stack on loopback: a real nats-server child, the Discord
//! simulator, ingest, the HTTP sink and a receiver, each reachable by tests.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prometheus::Registry;
use relaycord::config::Config;
use relaycord::nats_server::NatsServer;
use relaycord::receiver::Receiver;
use relaycord::roles;
use relaycord_bus::Secret;
use relaycord_sim::{SimConfig, Simulator};
use relaycord_sinks::http::HttpSinkConfig;
use relaycord_sinks::retry::Backoff;
use relaycord_sinks::{SinkConfig, SinkKind};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub struct StackOptions {
    pub shards: u32,
    /// Where the sink posts; `None` starts a receiver and posts there.
    pub sink_url: Option<String>,
    pub with_sink: bool,
    /// Extra nats-server arguments (e.g. `-c FILE`).
    pub nats_args: Vec<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            shards: 4,
            sink_url: None,
            with_sink: true,
            nats_args: Vec::new(),
        }
    }
}

pub struct Stack {
    pub nats: NatsServer,
    pub sim: Simulator,
    pub receiver: Receiver,
    pub js: jetstream::Context,
    pub registry: Registry,
    pub shutdown: CancellationToken,
    ingest: JoinHandle<anyhow::Result<()>>,
    sinks: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Stack {
        let args: Vec<&str> = opts.nats_args.iter().map(String::as_str).collect();
        let nats = NatsServer::start_with(&args)
            .expect("start nats-server (the test command installs it)");
        let shutdown = CancellationToken::new();
        let (sim, receiver) = sim_and_receiver(opts.shards, opts.shards * 4, &shutdown).await;
        let sink_url = opts.sink_url.unwrap_or_else(|| receiver.url());
        let config = stack_config(nats.url(), &sim, sink_url, |_| {});

        let js = roles::connect(&config, "test").await.unwrap();
        let registry = Registry::new();
        let ingest = tokio::spawn({
            let (config, js, registry, shutdown) = (
                config.clone(),
                js.clone(),
                registry.clone(),
                shutdown.clone(),
            );
            async move { roles::run_ingest(&config, js, &registry, &Default::default(), shutdown).await }
        });
        let sinks = opts.with_sink.then(|| {
            tokio::spawn({
                let (config, js, registry, shutdown) = (
                    config.clone(),
                    js.clone(),
                    registry.clone(),
                    shutdown.clone(),
                );
                async move { roles::run_sinks(&config, &[], js, &registry, shutdown).await }
            })
        });
        sim.wait_ready(Duration::from_secs(30))
            .await
            .expect("all shards identified");
        Stack {
            nats,
            sim,
            receiver,
            js,
            registry,
            shutdown,
            ingest,
            sinks,
        }
    }

    /// Every dispatch the simulator logged that ingest publishes.
    pub fn expected(&self) -> HashSet<String> {
        relaycord::dev::expected_ids(&self.sim.sent(), None)
    }

    /// Waits until the receiver has every expected id; returns the ids still missing.
    pub async fn wait_delivered(
        &self,
        expected: &HashSet<String>,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.receiver.seen();
            let missing: Vec<String> = expected
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sum of a counter or gauge over all its label sets, from the stack's registry.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.registry, name)
    }

    /// Messages currently stored in the gateway stream.
    pub async fn stream_messages(&self) -> u64 {
        let mut stream = self.js.get_stream("DISCORD_GATEWAY").await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.ingest.await.unwrap().unwrap();
        if let Some(sinks) = self.sinks {
            sinks.await.unwrap().unwrap();
        }
    }
}

/// The simulator on a free port and a receiver that verifies [`SECRET`] signatures.
pub async fn sim_and_receiver(
    shards: u32,
    guilds: u32,
    shutdown: &CancellationToken,
) -> (Simulator, Receiver) {
    let sim = Simulator::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            shards,
            guilds,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let key = relaycord_sinks::http::SigningKey::parse(SECRET).unwrap();
    let receiver = Receiver::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(key),
        false,
        shutdown.clone(),
    )
    .unwrap();
    (sim, receiver)
}

/// A validated config: NATS at `nats_url`, Discord = the simulator, one HTTP sink posting
/// to `sink_url`; `edit` adjusts it before validation.
pub fn stack_config(
    nats_url: String,
    sim: &Simulator,
    sink_url: String,
    edit: impl FnOnce(&mut Config),
) -> Config {
    let mut config = Config::load(None).unwrap();
    config.nats.url = nats_url;
    config.discord.token = Secret::new(sim.config().token.clone());
    config.discord.api_base = sim.api_base();
    config.sinks = vec![http_sink("receiver", sink_url)];
    edit(&mut config);
    config.validate().unwrap();
    config
}

pub fn http_sink(name: &str, url: String) -> SinkConfig {
    SinkConfig {
        max_attempts: 1000,
        concurrency: 32,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..SinkConfig::new(
            name,
            SinkKind::Http(HttpSinkConfig {
                url,
                secret: Some(Secret::new(SECRET)),
                headers: Default::default(),
                timeout: Duration::from_secs(5),
            }),
        )
    }
}

/// Sum of a metric's samples over all label sets, read from the text exposition as a
/// scraper would. For histograms pass the `_count` series.
pub fn metric(registry: &Registry, name: &str) -> f64 {
    metric_with(registry, name, &[])
}

/// Like [`metric`], counting only samples whose labels contain every `labels` entry
/// (written as in the exposition, e.g. `outcome="delivered"`).
pub fn metric_with(registry: &Registry, name: &str, labels: &[&str]) -> f64 {
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    sum_metric_with(&String::from_utf8(text).unwrap(), name, labels)
}

/// Sums the samples of `name` (any labels) in a Prometheus text exposition.
pub fn sum_metric(exposition: &str, name: &str) -> f64 {
    sum_metric_with(exposition, name, &[])
}

pub fn sum_metric_with(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && labels.iter().all(|l| line.contains(l))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every `Nats-Msg-Id` stored in `stream`, with how many messages carry it: what a test
/// compares with the simulator's proof log.
pub async fn stream_ids(
    js: &jetstream::Context,
    stream: &str,
) -> std::collections::HashMap<String, u32> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            headers_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pending = consumer.cached_info().num_pending;
    let mut ids = std::collections::HashMap::new();
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = batch.next().await {
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .expect("every event carries Nats-Msg-Id");
            *ids.entry(id.as_str().to_owned()).or_insert(0) += 1;
            pending = pending.saturating_sub(1);
        }
    }
    ids
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}
