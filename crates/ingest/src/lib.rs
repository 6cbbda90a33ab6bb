#![doc = include_str!("../README.md")]

mod budget;
mod checkpoint;
mod coordinator;
mod discovery;
pub mod error;
pub mod health;
pub mod metrics;
mod publish;
mod queue;
mod shard;
mod stop;
pub mod store;
mod window;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use relaycord_bus::{Secret, Subjects};
use tokio_util::sync::CancellationToken;
use twilight_gateway::Intents;

pub use discovery::{GatewayBot, SessionStartLimit, gateway_bot};
pub use error::{IngestError, IngestErrorKind};
pub use health::ShardHealth;
pub use metrics::IngestMetrics;

/// What ingest needs to run; the binary builds it from the config file.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub token: Secret,
    pub intents: Intents,
    /// REST base, e.g. `https://discord.com/api` or the simulator's `http://127.0.0.1:PORT/api`.
    pub api_base: String,
    /// Overrides the gateway URL from `/gateway/bot` (twilight's `proxy_url`).
    pub gateway_url: Option<String>,
    /// A fixed range of shards for this process; `None` shares all shards with the other
    /// replicas through leases.
    pub shards: Option<Range<u32>>,
    /// Total shard count; `None` takes Discord's recommendation.
    pub shard_count: Option<u32>,
    /// Publishes awaiting acknowledgement per shard before reading pauses.
    pub window: usize,
    pub subjects: Subjects,
    /// Replicas of the KV buckets (as for the streams).
    pub kv_replicas: usize,
    /// A dead replica's shards are taken over this long after its last renewal.
    pub lease_ttl: Duration,
    /// This process's name among the replicas; defaults to `$HOSTNAME-<pid>`.
    pub replica_id: Option<String>,
}

/// Runs shards until `shutdown` fires or one closes fatally.
///
/// On shutdown every shard stops reading, waits for its outstanding acks, saves its
/// session and closes with the RESUME code; leases are released for the other replicas.
pub async fn run(
    config: IngestConfig,
    js: jetstream::Context,
    metrics: IngestMetrics,
    health: ShardHealth,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    relaycord_bus::install_crypto_provider();
    // `/healthz` fails once this returns, whatever the reason (or if it is dropped).
    struct Ended(ShardHealth);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.set_ended();
        }
    }
    let _ended = Ended(health.clone());
    health.set_nats(js.client());
    let http = reqwest::Client::new();
    let bot = gateway_bot(&http, &config.api_base, &config.token).await?;
    let shard_count = config.shard_count.unwrap_or(bot.shards).max(1);
    let scope = config.shards.clone().unwrap_or(0..shard_count);
    if scope.is_empty() || scope.end > shard_count {
        return Err(IngestError::new(
            IngestErrorKind::Config,
            format!(
                "ingest.shards {}..{} does not fit in shard_count {shard_count}: use a range below the shard count",
                scope.start, scope.end
            ),
        ));
    }
    let buckets =
        store::Buckets::ensure(&js, &config.subjects, config.kv_replicas, config.lease_ttl).await?;
    let replica = config.replica_id.clone().unwrap_or_else(default_replica_id);
    let limit = bot.session_start_limit;
    let budget = budget::StartBudget {
        kv: buckets.sessions.clone(),
        http,
        api_base: config.api_base.clone(),
        token: config.token.clone(),
    };
    let queue = queue::KvQueue::new(
        buckets.identify.clone(),
        replica.clone(),
        limit.max_concurrency,
        budget,
    );
    let gateway_url = config.gateway_url.clone().unwrap_or(bot.url);
    tracing::info!(
        %replica, shards = ?scope, shard_count, max_concurrency = limit.max_concurrency,
        leased = config.shards.is_none(), %gateway_url, "starting ingest"
    );
    let ctx = Arc::new(shard::ShardContext {
        js,
        sessions: buckets.sessions.clone(),
        subjects: config.subjects.clone(),
        window: config.window.max(1),
        metrics,
        health,
        token: config.token.clone(),
        intents: config.intents,
        gateway_url,
        queue,
        shard_count,
    });
    let coordinator = coordinator::Coordinator::new(ctx, buckets, replica, scope, config.lease_ttl);
    if config.shards.is_some() {
        coordinator.run_static(shutdown).await
    } else {
        coordinator.run_leased(shutdown).await
    }
}

/// `$HOSTNAME-<pid>`, reduced to the characters KV keys allow. In Kubernetes
/// `HOSTNAME` is the pod name.
fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "ingest".to_owned());
    let raw = format!("{host}-{}", std::process::id());
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
