//! Wiring of the interactions role (`relaycord interactions`) from the config file.

use anyhow::Context;
use async_nats::jetstream;
use bytes::Bytes;
use prometheus::Registry;
use relaycord_interactions::{InteractionMetrics, Service, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry::Health;

/// The service settings of `config` (public key, routes, deadline, REST base).
pub fn settings(config: &Config) -> anyhow::Result<Settings> {
    let ix = &config.interactions;
    Ok(Settings::new(config.public_key()?)
        .path(ix.path.clone())
        .deadline(ix.deadline)
        .max_body(ix.max_body)
        .routes(config.interactions_routes()?)
        .default_response(
            ix.default_response
                .as_ref()
                .map(|v| Bytes::from(v.to_string())),
        )
        .unavailable_message(ix.unavailable_message.clone())
        .api_base(config.discord.api_base.clone())
        .subjects(config.nats.subjects())
        .streams(config.nats.streams()))
}

/// Serves interactions on `listener` until `shutdown`; ready once set up on NATS.
pub async fn run_interactions(
    config: &Config,
    js: jetstream::Context,
    registry: &Registry,
    health: &Health,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = settings(config)?;
    let metrics = InteractionMetrics::new(registry)?;
    let service = Service::start(settings, js, metrics)
        .await
        .context("cannot set up the interactions service on NATS")?;
    health.set_ready(true);
    service.run(listener, shutdown).await?;
    Ok(())
}
