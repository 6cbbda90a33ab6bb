//! Wiring of each role (ingest, sinks) from the config file.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use prometheus::Registry;
use relaycord_ingest::{IngestConfig, IngestMetrics, ShardHealth};
use relaycord_sinks::{SinkConfig, SinkMetrics};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ShardCount};
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

pub fn ingest_config(config: &Config) -> anyhow::Result<IngestConfig> {
    let d = &config.discord;
    if d.token.is_empty() {
        anyhow::bail!(
            "discord.token is empty: set DISCORD_TOKEN or discord.token in the config file"
        );
    }
    Ok(IngestConfig {
        token: d.token.clone(),
        intents: config.intents()?,
        api_base: d.api_base.clone(),
        gateway_url: Some(d.gateway_url.clone()).filter(|u| !u.is_empty()),
        shards: config.shard_range()?,
        shard_count: match config.ingest.shard_count {
            ShardCount::Number(n) => Some(n),
            ShardCount::Auto => None,
        },
        window: config.ingest.window,
        subjects: config.nats.subjects(),
        kv_replicas: config.nats.stream_replicas,
        lease_ttl: config.ingest.lease_ttl,
        replica_id: Some(config.ingest.replica_id.clone()).filter(|r| !r.is_empty()),
    })
}

pub async fn run_ingest(
    config: &Config,
    js: jetstream::Context,
    registry: &Registry,
    health: &Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ingest = ingest_config(config)?;
    let shards = ShardHealth::default();
    let threshold = config.ingest.unhealthy_after;
    health.add_check({
        let shards = shards.clone();
        move || match shards.down_longer_than(threshold).as_slice() {
            [] => Ok(()),
            down => Err(format!(
                "shards {down:?} have had no gateway session for over {threshold:?}"
            )),
        }
    });
    // A shard loop may legitimately pause for a NATS request timeout (10 s); a stall
    // shorter than that is not a wedge.
    let stall = threshold.max(Duration::from_secs(30));
    health.add_liveness_check({
        let shards = shards.clone();
        move || shards.liveness(stall)
    });
    let metrics = IngestMetrics::new(registry)?;
    relaycord_ingest::run(ingest, js, metrics, shards, shutdown).await?;
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

/// Runs the named sinks (all configured sinks when `names` is empty) until `shutdown`.
pub async fn run_sinks(
    config: &Config,
    names: &[String],
    js: jetstream::Context,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let selected = select_sinks(config, names)?;
    let metrics = SinkMetrics::new(registry)?;
    let subjects = config.nats.subjects();
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
