//! The interactions role (`relaycord interactions`): the service comes from the
//! interactions crate; the binary adds metrics, health and the listener.

use anyhow::Context;
use async_nats::jetstream;
use prometheus::Registry;
use relaycord_interactions::{InteractionMetrics, InteractionsErrorKind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry::Health;

/// Serves interactions on `listener` until `shutdown`; ready once set up on NATS. On
/// `shutdown` (SIGTERM) `/readyz` fails at once while the service serves on for
/// `interactions.drain_delay`, then drains (see [`relaycord_interactions::Service::run`]).
pub async fn run_interactions(
    config: &Config,
    js: jetstream::Context,
    registry: &Registry,
    health: &Health,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Not ready the moment the shutdown comes, before and whatever the service does.
    tokio::spawn({
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            health.set_stopping();
        }
    });
    let metrics = InteractionMetrics::new(registry)?;
    // Shared for as long as the service runs, its drain included.
    let finished = CancellationToken::new();
    let _finished = finished.clone().drop_guard();
    crate::roles::share_invalid_requests(config, &js, "interactions", finished.clone()).await;
    let service =
        match relaycord_interactions::start(&config.interactions, config.shared(), js, metrics)
            .await
        {
            Ok(service) => service,
            // A config mistake says which key; only a NATS failure needs the context.
            Err(e) if e.kind() == InteractionsErrorKind::Config => return Err(e.into()),
            Err(e) => return Err(e).context("cannot set up the interactions service on NATS"),
        };
    health.set_ready(true);
    service.run(listener, shutdown).await?;
    Ok(())
}
