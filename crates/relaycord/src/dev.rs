//! `relaycord dev`: everything in one process — NATS (a child nats-server unless
//! `--nats-url`), the Discord simulator (or real Discord when `DISCORD_TOKEN` is set),
//! ingest, an HTTP sink and a local receiver that prints each event as it arrives. With the
//! simulator, the interactions role runs too and the simulator sends it webhook events.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use prometheus::Registry;
use relaycord_bus::Secret;
use relaycord_devkit::{GENERATED_TYPES, NatsServer, Receiver, expected_ids};
use relaycord_sim::{GenerateSpec, SimConfig, Simulator};
use relaycord_sinks::http::{HttpSinkConfig, SigningKey};
use relaycord_sinks::{SinkConfig, SinkKind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dev_webhooks::DemoWebhooks;
use crate::roles;

/// Webhook events sent with `--events N` (they are few in real life too).
const WEBHOOK_EVENTS: usize = 8;

#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Send exactly this many events, wait for them, print a summary and stop.
    pub events: Option<u64>,
    pub nats_url: Option<String>,
    /// Bot token for real Discord; `None` runs the simulator.
    pub discord_token: Option<Secret>,
    pub shards: u32,
    /// Simulated events per second (0: as fast as possible).
    pub rate: f64,
    /// Print one line per received event.
    pub print_events: bool,
    /// How long to wait for the last events after generation finished.
    pub settle_timeout: Duration,
}

/// What `--events N` proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevReport {
    pub expected: usize,
    pub delivered: usize,
    pub missing: usize,
    pub duplicates: u64,
    /// Webhook events sent and delivered.
    pub webhook_events: (usize, usize),
}

impl DevReport {
    /// Whether every event sent, from both sources, was delivered.
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.webhook_events.0 == self.webhook_events.1
    }

    pub fn webhook_summary(&self) -> String {
        format!(
            "delivered {}/{} webhook events",
            self.webhook_events.1, self.webhook_events.0
        )
    }

    pub fn summary(&self) -> String {
        format!(
            "delivered {}/{} events, {} missing, {} duplicates",
            self.delivered, self.expected, self.missing, self.duplicates
        )
    }
}

/// Runs the demo until `shutdown`, or until `--events` are delivered.
pub async fn run(
    opts: DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<DevReport>> {
    if opts.events.is_some() && opts.discord_token.is_some() {
        bail!("--events counts simulated events: unset DISCORD_TOKEN to use the simulator");
    }
    let _nats_child;
    let nats_url = match &opts.nats_url {
        Some(url) => url.clone(),
        None => {
            let server = NatsServer::start()?;
            eprintln!(
                "nats-server started on {} (store in {})",
                server.url(),
                server.store_dir().display()
            );
            let url = server.url();
            _nats_child = server;
            url
        }
    };

    let stop = shutdown.child_token();
    let sim = match &opts.discord_token {
        Some(_) => None,
        None => {
            let config = SimConfig {
                shards: opts.shards,
                guilds: opts.shards.max(1) * 4,
                ..SimConfig::default()
            };
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let sim = Simulator::start(listener, config).await?;
            eprintln!(
                "Discord simulator on {} ({} shards)",
                sim.api_base(),
                opts.shards
            );
            Some(sim)
        }
    };

    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let key = SigningKey::parse(&secret).expect("generated secret is valid");
    let receiver = Receiver::start(
        TcpListener::bind("127.0.0.1:0").await?,
        Some(key),
        opts.print_events,
        stop.clone(),
    )?;
    eprintln!("receiver listening on {}", receiver.url());

    let config = dev_config(&opts, &nats_url, sim.as_ref(), &receiver, secret)?;
    let js = roles::connect(&config, "dev").await?;
    let registry = Registry::new();
    // With the simulator, the interactions role takes its webhook events on loopback.
    let interactions_listener = match &sim {
        Some(_) => Some(TcpListener::bind("127.0.0.1:0").await?),
        None => None,
    };
    let webhook_events_url = match &interactions_listener {
        Some(l) => Some(format!(
            "http://{}{}",
            l.local_addr()?,
            config.interactions.webhook_events_path
        )),
        None => None,
    };
    let mut interactions = tokio::spawn({
        let (config, js, registry, stop) =
            (config.clone(), js.clone(), registry.clone(), stop.clone());
        async move {
            match interactions_listener {
                Some(listener) => {
                    crate::interactions::run_interactions(
                        &config,
                        js,
                        &registry,
                        &Default::default(),
                        listener,
                        stop,
                    )
                    .await
                }
                None => {
                    stop.cancelled().await;
                    Ok(())
                }
            }
        }
    });
    let mut ingest = tokio::spawn({
        let (config, js, registry, stop) =
            (config.clone(), js.clone(), registry.clone(), stop.clone());
        async move { roles::run_ingest(&config, js, &registry, &Default::default(), stop).await }
    });
    let mut sinks = tokio::spawn({
        let (config, js, registry, stop) =
            (config.clone(), js.clone(), registry.clone(), stop.clone());
        async move { roles::run_sinks(&config, &[], js, &registry, &Default::default(), stop).await }
    });

    let work = async {
        let Some(sim) = &sim else {
            eprintln!("connected to Discord; events print below as they arrive (Ctrl-C to stop)");
            stop.cancelled().await;
            return Ok(None);
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(None),
            ready = sim.wait_ready(Duration::from_secs(60)) => {
                ready.context("shards did not become ready")?;
            }
        }
        let url = webhook_events_url
            .clone()
            .context("the interactions role's URL")?;
        // Ctrl-C stops the interactions role under the check's feet: a clean stop, not
        // a URL that answers wrongly.
        let webhooks = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(None),
            checked = DemoWebhooks::check(sim, url) => match checked {
                Err(_) if stop.is_cancelled() => return Ok(None),
                checked => checked?,
            },
        };
        let generator = sim.generate(GenerateSpec {
            count: opts.events,
            rate_per_sec: opts.rate,
            ..GenerateSpec::default()
        });
        let Some(n) = opts.events else {
            eprintln!(
                "generating events at {}/s and a webhook event every 10s (Ctrl-C to stop)",
                opts.rate
            );
            tokio::spawn(webhooks.trickle(Duration::from_secs(10), stop.clone()));
            stop.cancelled().await;
            generator.stop();
            return Ok(None);
        };
        let webhook_ids = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(None),
            sent = webhooks.send(WEBHOOK_EVENTS) => match sent {
                Err(_) if stop.is_cancelled() => return Ok(None),
                sent => sent?,
            },
        };
        eprintln!(
            "simulator sent {} webhook events, each acknowledged with 204",
            webhook_ids.len()
        );
        let generated = generator.finished().await;
        eprintln!("simulator sent {generated} events; waiting for delivery");
        let expected = expected_ids(&sim.sent(), Some(&GENERATED_TYPES));
        anyhow::ensure!(
            expected.len() as u64 == n,
            "simulator logged {} distinct events, expected {n}",
            expected.len()
        );
        let mut report = wait_for(&receiver, &expected, opts.settle_timeout, &stop).await;
        let webhooks = wait_for(&receiver, &webhook_ids, opts.settle_timeout, &stop).await;
        report.webhook_events = (webhooks.expected, webhooks.delivered);
        report.duplicates += webhooks.duplicates;
        Ok(Some(report))
    };

    // On Ctrl-C every branch may be ready at once (the roles return as soon as `stop`
    // fires): a role that ended because it was asked to is a clean stop, not a failure.
    // The role whose branch won has been awaited; awaiting it again would panic.
    let (report, ended) = tokio::select! {
        report = work => (report, None),
        result = &mut ingest => (role_ended("ingest", result, &stop), Some(0)),
        result = &mut sinks => (role_ended("sink", result, &stop), Some(1)),
        result = &mut interactions => (role_ended("interactions", result, &stop), Some(2)),
    };
    stop.cancel();
    let others = [ingest, sinks, interactions]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != ended)
        .map(|(_, role)| role);
    let _ = tokio::time::timeout(Duration::from_secs(15), futures::future::join_all(others)).await;
    report
}

/// A role task that returned before the demo was done: fine when a shutdown was asked
/// for, an error otherwise (including the role's own error).
fn role_ended(
    role: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<DevReport>> {
    result.with_context(|| format!("{role} panicked"))??;
    if stop.is_cancelled() {
        return Ok(None);
    }
    bail!("{role} stopped unexpectedly")
}

fn dev_config(
    opts: &DevOptions,
    nats_url: &str,
    sim: Option<&Simulator>,
    receiver: &Receiver,
    secret: String,
) -> anyhow::Result<Config> {
    let mut config = Config::load(None)?;
    config.nats.url = nats_url.to_owned();
    match (sim, &opts.discord_token) {
        (Some(sim), _) => {
            config.discord.token = Secret::new(sim.config().token.clone());
            config.discord.api_base = sim.api_base();
            config.discord.public_key = sim.interactions().public_key_hex();
            // No load balancer routes to the demo: Ctrl-C need not keep serving.
            config.interactions.drain_delay = Duration::ZERO;
        }
        (None, Some(token)) => config.discord.token = token.clone(),
        (None, None) => unreachable!("either the simulator or a token"),
    }
    config.sinks = vec![SinkConfig {
        max_attempts: 1000,
        concurrency: 64,
        backoff: relaycord_sinks::retry::Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        },
        ..SinkConfig::new(
            "dev-receiver",
            SinkKind::Http(HttpSinkConfig {
                url: receiver.url(),
                secret: Some(Secret::new(secret)),
                headers: Default::default(),
                timeout: Duration::from_secs(10),
            }),
        )
    }];
    config.validate()?;
    Ok(config)
}

/// Waits until every expected id reached the receiver, showing progress on stderr.
async fn wait_for(
    receiver: &Receiver,
    expected: &HashSet<String>,
    settle: Duration,
    stop: &CancellationToken,
) -> DevReport {
    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let seen = receiver.seen();
        let delivered = expected.iter().filter(|id| seen.contains_key(*id)).count();
        let done = delivered == expected.len();
        if done || started.elapsed() > settle || stop.is_cancelled() {
            let duplicates = expected
                .iter()
                .filter_map(|id| seen.get(id))
                .map(|n| u64::from(n.saturating_sub(1)))
                .sum();
            return DevReport {
                expected: expected.len(),
                delivered,
                missing: expected.len() - delivered,
                duplicates,
                webhook_events: (0, 0),
            };
        }
        if last_progress.elapsed() > Duration::from_secs(2) {
            eprintln!("… {delivered}/{} delivered", expected.len());
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
