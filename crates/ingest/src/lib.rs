#![doc = include_str!("../README.md")]

mod budget;
mod checkpoint;
pub mod config;
mod coordinator;
mod discovery;
pub mod error;
mod generations;
pub mod health;
pub mod metrics;
mod publish;
mod queue;
pub mod reshard;
mod shard;
mod stop;
pub mod store;
mod window;

use std::sync::Arc;

use async_nats::jetstream;
use relaycord_bus::{ConfigError, Shared};
use tokio_util::sync::CancellationToken;

pub use config::{IngestSection, ShardCount};
pub use discovery::{GatewayBot, SessionStartLimit, discover, gateway_bot};
pub use error::{IngestError, IngestErrorKind};
pub use health::{ShardHealth, ShardRef};
pub use metrics::IngestMetrics;

/// Runs shards until `shutdown` fires or one closes fatally.
///
/// `config` is the `[ingest]` section as loaded; from the shared sections ingest reads
/// the token, intents, REST base and gateway URL of `[discord]` and the subject prefix
/// and replicas of `[nats]`. On shutdown every shard stops reading, waits for its
/// outstanding acks, saves its session and closes with the RESUME code; leases are
/// released for the other replicas.
pub async fn run(
    config: &IngestSection,
    shared: Shared<'_>,
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
    let invalid = |e: ConfigError| IngestError::new(IngestErrorKind::Config, e.to_string());
    let discord = shared.discord;
    let token = discord.require_token().map_err(invalid)?.clone();
    let intents = config::intents(discord).map_err(invalid)?;
    let shards = config.shard_range().map_err(invalid)?;
    let subjects = shared.nats.subjects();
    health.set_nats(js.client());
    let http = reqwest::Client::new();
    let bot = gateway_bot(&http, &discord.api_base, &token).await?;
    let shard_count = config.shard_count.number().unwrap_or(bot.shards).max(1);
    let configured_scope = shards.clone().unwrap_or(0..shard_count);
    if configured_scope.is_empty() || configured_scope.end > shard_count {
        return Err(IngestError::new(
            IngestErrorKind::Config,
            format!(
                "ingest.shards {}..{} does not fit in shard_count {shard_count}: use a range below the shard count",
                configured_scope.start, configured_scope.end
            ),
        ));
    }
    let buckets = store::Buckets::ensure(
        &js,
        &subjects,
        shared.nats.stream_replicas,
        config.lease_ttl,
    )
    .await?;
    let replica = Some(config.replica_id.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(default_replica_id);
    let limit = bot.session_start_limit;
    budget::show_limit(&metrics, &limit);
    metrics
        .window_size
        .set(i64::try_from(config.window.max(1)).unwrap_or(i64::MAX));
    let budget = budget::StartBudget {
        kv: buckets.sessions.clone(),
        http,
        api_base: discord.api_base.clone(),
        token: token.clone(),
        metrics: metrics.clone(),
    };
    let queue = queue::KvQueue::new(
        buckets.identify.clone(),
        replica.clone(),
        limit.max_concurrency,
        budget,
    );
    let gateway_url = discord.gateway_url().map_or(bot.url, str::to_owned);
    // Leased mode follows the generation plan in KV, which outlives any configuration:
    // after a reshard it, not `ingest.shard_count`, says how many shards run.
    let generations = match shards {
        Some(_) => None,
        None => {
            Some(reshard::Generations::ensure(&js, &subjects, shared.nats.stream_replicas).await?)
        }
    };
    let shard_count = match &generations {
        Some(generations) => {
            let (plan, _) = generations.plan_or_init(shard_count).await?;
            if plan.count != shard_count {
                tracing::info!(
                    configured = shard_count,
                    running = plan.count,
                    "the generation plan in NATS KV sets the shard count (a reshard changed it; \
                     `relaycord reshard --to N` to change it again)"
                );
            }
            plan.count
        }
        None => shard_count,
    };
    let scope = shards.clone().unwrap_or(0..shard_count);
    tracing::info!(
        %replica, shards = ?scope, shard_count, max_concurrency = limit.max_concurrency,
        leased = shards.is_none(), %gateway_url, "starting ingest"
    );
    let (view_tx, view) = tokio::sync::watch::channel(generations::View::default());
    let (notices_tx, notices) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(shard::ShardContext {
        js,
        sessions: buckets.sessions.clone(),
        subjects: subjects.clone(),
        window: config.window.max(1),
        metrics,
        health,
        token,
        intents,
        gateway_url,
        queue,
        shard_count,
        alerts: Arc::default(),
        gateway_config: std::sync::OnceLock::new(),
        generations: generations.clone(),
        view,
        notices: notices_tx,
    });
    match generations {
        None => {
            let coordinator =
                coordinator::Coordinator::new(ctx, buckets, replica, scope, config.lease_ttl);
            coordinator.run_static(shutdown).await
        }
        Some(generations) => {
            let supervisor = generations::Supervisor {
                template: ctx,
                buckets,
                generations,
                replica,
                lease_ttl: config.lease_ttl,
                subjects,
                auto_check: config
                    .shard_count
                    .number()
                    .is_none()
                    .then_some(config.reshard_check_interval),
                view: view_tx,
                notices,
                http: reqwest::Client::new(),
                api_base: discord.api_base.clone(),
                all_ready_since: std::sync::Mutex::default(),
            };
            supervisor.run(shutdown).await
        }
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
