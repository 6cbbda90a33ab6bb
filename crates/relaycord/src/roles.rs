//! Wiring of each role (ingest, sinks) from the config file.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use prometheus::Registry;
use relaycord_ingest::{IngestMetrics, ShardHealth};
use relaycord_sinks::{SinkConfig, SinkMetrics};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry::Health;

/// Connects to NATS and sets up the streams; fails with the key to fix when it cannot.
pub async fn connect(config: &Config, role: &str) -> anyhow::Result<jetstream::Context> {
    let client = crate::nats_client::connect(&config.nats, role).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client);
    relaycord_bus::ensure_streams(&js, &config.nats.subjects(), &config.nats.streams())
        .await
        .context(
            "cannot set up JetStream streams (is JetStream enabled? start nats-server with -js)",
        )?;
    Ok(js)
}

/// Runs the ingest role until `shutdown`, with `/readyz` and `/healthz` following the
/// shards it holds.
pub async fn run_ingest(
    config: &Config,
    js: jetstream::Context,
    registry: &Registry,
    health: &Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let section = &config.ingest;
    let shards = ShardHealth::default();
    let (threshold, max_unacked_age) = (section.unhealthy_after, section.max_unacked_age);
    health.add_check({
        let shards = shards.clone();
        move || shards.readiness(threshold, max_unacked_age)
    });
    let stall = section.stall_after();
    health.add_liveness_check({
        let shards = shards.clone();
        move || shards.liveness(stall)
    });
    let metrics = IngestMetrics::new(registry)?;
    relaycord_ingest::run(section, config.shared(), js, metrics, shards, shutdown).await?;
    Ok(())
}

/// The named sinks (all configured sinks when `names` is empty), each built once to
/// validate it. Needs no NATS: `relaycord sink` calls it before connecting, so a bad
/// template or URL is reported as such (naming the key) even when NATS is down, and no
/// stream or consumer is created for a sink that cannot run.
pub fn select_sinks<'a>(
    config: &'a Config,
    names: &[String],
) -> anyhow::Result<Vec<&'a SinkConfig>> {
    let selected: Vec<&SinkConfig> = if names.is_empty() {
        config.sinks.iter().collect()
    } else {
        names
            .iter()
            .map(|name| {
                config
                    .sinks
                    .iter()
                    .find(|s| &s.name == name)
                    .with_context(|| {
                        let known: Vec<&str> =
                            config.sinks.iter().map(|s| s.name.as_str()).collect();
                        format!("no sink named {name:?} in the config (configured: {known:?})")
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if selected.is_empty() {
        anyhow::bail!("no sinks configured: add a [[sinks]] entry (see docs/configuration.md)");
    }
    for sink in &selected {
        sink.check()?;
    }
    Ok(selected)
}

/// Runs the named sinks (all configured sinks when `names` is empty) until `shutdown`,
/// with `/readyz` failing while a sink is paused.
pub async fn run_sinks(
    config: &Config,
    names: &[String],
    js: jetstream::Context,
    registry: &Registry,
    health: &Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let selected = select_sinks(config, names)?;
    let metrics = SinkMetrics::new(registry)?;
    health.add_check({
        let paused = metrics.paused_sinks.clone();
        move || paused.readiness()
    });
    let subjects = config.nats.subjects();
    if selected
        .iter()
        .any(|s| matches!(s.kind, relaycord_sinks::config::SinkKind::Discord(_)))
    {
        share_invalid_requests(config, &js, "sink", shutdown.clone()).await;
    }
    let mut tasks = JoinSet::new();
    for sink in selected {
        let (sink, js, subjects, metrics, shutdown) = (
            sink.clone(),
            js.clone(),
            subjects.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { sink.run(js, &subjects, metrics, shutdown).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("sink task panicked")??;
    }
    Ok(())
}

/// Shares this process's count of Discord's invalid answers with the deployment's other
/// processes (they usually leave through one egress IP, and Discord bans per IP; see
/// `relaycord_bus::invalid_requests`). Without NATS KV the process counts alone, and says so.
pub async fn share_invalid_requests(
    config: &Config,
    js: &jetstream::Context,
    role: &str,
    shutdown: CancellationToken,
) {
    let stem = relaycord_bus::streams::stream_stem(&config.nats.subjects());
    match relaycord_bus::InvalidRequests::bucket(js, &stem, config.nats.stream_replicas).await {
        Ok(kv) => {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
            let process = format!("{role}-{host}-{}", std::process::id());
            tokio::spawn(async move {
                relaycord_bus::InvalidRequests::process()
                    .share(kv, &process, shutdown)
                    .await;
            });
        }
        Err(error) => tracing::warn!(
            %error,
            "cannot share Discord's invalid-request count through NATS KV; this process counts alone"
        ),
    }
}
