//! Discord HTTP interactions for Relaycord.
//!
//! Every request is verified (ed25519 over timestamp ‖ body, fail closed), published to
//! JetStream as `<prefix>.interactions.<kind>.<name>` with dedupe id `ix:<id>`, then
//! routed to a handler — NATS request/reply or an HTTP function — whose reply becomes the
//! HTTP response if it comes within the deadline. Otherwise Relaycord answers with a
//! deferral and a worker sends the late reply as a follow-up; late replies are kept on a
//! JetStream stream, so they survive the death of the replica that deferred.
//!
//! The same endpoint takes Discord's webhook events (`POST /webhook-events`: application
//! installs, entitlements, …), verified alike, published to
//! `<prefix>.webhooks.<EVENT_TYPE>.<guild|none>` and acknowledged with 204 once stored.
//!
//! ```no_run
//! # async fn demo(js: async_nats::jetstream::Context, shared: relaycord_bus::Shared<'_>) -> Result<(), Box<dyn std::error::Error>> {
//! use relaycord_interactions::{InteractionMetrics, InteractionsSection};
//! let config = InteractionsSection::default(); // as loaded from `[interactions]`
//! let metrics = InteractionMetrics::new(&prometheus::Registry::new())?;
//! let service = relaycord_interactions::start(&config, shared, js, metrics).await?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! service.run(listener, tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod batch;
pub mod config;
mod decisions;
mod endpoint;
pub mod error;
mod handled;
pub mod handler_headers;
mod late;
mod late_http;
mod metrics;
mod owned;
pub mod replies;
pub mod response;
pub mod rest;
pub mod routes;
mod serve;
pub mod settings;
pub mod verify;
mod webhook_events;
mod webhook_seen;

use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use relaycord_bus::Shared;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{InteractionsSection, public_key};
pub use decisions::{Decisions, TOKEN_LIFETIME};
pub use error::{InteractionsError, InteractionsErrorKind};
pub use late::CONSUMER as LATE_REPLIES_CONSUMER;
pub use metrics::InteractionMetrics;
pub use routes::{Handler, RouteConfig, Routes};
pub use serve::ServeLimits;
pub use settings::Settings;
pub use webhook_seen::SEEN_FOR as WEBHOOK_EVENTS_SEEN_FOR;

use endpoint::{Answer, Endpoint};
use late::LateWorker;
use replies::ReplyMux;
use rest::DiscordRest;

/// The role's entry point: builds the service from the `[interactions]` section and the
/// shared sections, and sets it up on NATS. Serving is the second step,
/// [`Service::run`], so that the caller can report ready in between.
pub async fn start(
    config: &InteractionsSection,
    shared: Shared<'_>,
    js: jetstream::Context,
    metrics: InteractionMetrics,
) -> Result<Service, InteractionsError> {
    let settings = Settings::from_config(config, shared)
        .map_err(|e| InteractionsError::new(InteractionsErrorKind::Config, e.to_string()))?;
    Service::start(settings, js, metrics).await
}

/// A started interactions service: streams, bucket, consumer and reply subscription are
/// set up; [`Service::run`] serves HTTP and sends late replies until shutdown.
pub struct Service {
    endpoint: Arc<Endpoint>,
    late: LateWorker,
    late_consumer: async_nats::jetstream::consumer::PullConsumer,
    shutdown_mux: CancellationToken,
}

impl Service {
    /// Sets up everything the service needs on NATS. Idempotent, so replicas may start
    /// in any order.
    pub async fn start(
        settings: Settings,
        js: jetstream::Context,
        metrics: InteractionMetrics,
    ) -> Result<Self, InteractionsError> {
        relaycord_bus::install_crypto_provider();
        let subjects = settings.subjects.clone();
        relaycord_bus::ensure_streams(&js, &subjects, &settings.streams)
            .await
            .map_err(|e| {
                InteractionsError::with_source(InteractionsErrorKind::Setup, "streams", e)
            })?;
        replies::ensure_stream(&js, &subjects, settings.streams.replicas).await?;
        let decisions = Decisions::open(&js, &subjects, settings.streams.replicas).await?;
        let webhook_seen =
            webhook_seen::Seen::open(&js, &subjects, settings.streams.replicas).await?;
        let client = js.client();
        let shutdown_mux = CancellationToken::new();
        let replica = format!("{:016x}", rand::random::<u64>());
        let mux = ReplyMux::start(&client, &subjects, &replica, shutdown_mux.clone()).await?;
        let http = reqwest::Client::builder().build().map_err(|e| {
            InteractionsError::with_source(InteractionsErrorKind::Setup, "HTTP client", e)
        })?;
        let owned = owned::Owned::default();
        let late = LateWorker {
            owned: owned.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            decisions: decisions.clone(),
            rest: DiscordRest::new(http.clone(), &settings.api_base),
            metrics: metrics.clone(),
            concurrency: settings.late_concurrency,
        };
        let late_consumer = late.consumer().await?;
        let late_calls = late_http::LateCalls::new(Arc::clone(&settings.late_http_calls));
        let endpoint = Arc::new(Endpoint {
            late_calls,
            webhook_seen,
            verifier: verify::Verifier::new(settings.public_key.clone())
                .window(settings.timestamp_window),
            routes: settings.routes.clone(),
            subjects,
            js,
            client,
            http,
            mux,
            owned,
            decisions,
            metrics,
            settings,
        });
        Ok(Self {
            endpoint,
            late,
            late_consumer,
            shutdown_mux,
        })
    }

    /// The HTTP routes: `POST <path>` (interactions) and `POST <webhook_events_path>`.
    pub fn router(&self) -> Router {
        let settings = &self.endpoint.settings;
        Router::new()
            .route(&settings.path, post(endpoint::handle))
            .route(&settings.webhook_events_path, post(webhook_events::handle))
            // Refused like the endpoint's own refusals, with `Connection: close`: the body
            // goes unread, so a pooled client must not send its next request after it.
            // Last: a route added below the method fallback would not get it.
            .method_not_allowed_fallback(|| async {
                Answer::refused(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            })
            .fallback(|| async { Answer::refused(StatusCode::NOT_FOUND, "not_found") })
            .with_state(Arc::clone(&self.endpoint))
    }

    /// Serves `listener` and runs the late-reply worker until `shutdown`, then drains.
    ///
    /// On `shutdown` the service keeps accepting and serving for `drain_delay`, every
    /// response saying `Connection: close` (the caller fails its readiness at the same
    /// moment, so load balancers stop routing here meanwhile); then it closes the listener
    /// and gives requests in flight and late HTTP calls `shutdown_grace`.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), InteractionsError> {
        let limits = self.endpoint.settings.serve;
        // A child token and a token of its own: a failing server stops this service, not
        // the caller's others.
        let phases = serve::Shutdown {
            draining: shutdown.child_token(),
            stop: CancellationToken::new(),
        };
        let stop = phases.stop.clone();
        let app = self.router();
        let late = tokio::spawn(self.late.run(self.late_consumer, stop.clone()));
        // `stop` comes `drain_delay` after `shutdown`. The grace period runs from the stop,
        // for connections and late calls alike.
        let stopped_at = tokio::spawn({
            let serve::Shutdown { draining, stop } = phases.clone();
            async move {
                tokio::select! {
                    () = stop.cancelled() => return tokio::time::Instant::now(),
                    () = draining.cancelled() => {}
                }
                tracing::info!(
                    drain_delay = ?limits.drain_delay,
                    "shutting down: still serving (with Connection: close) while load balancers stop routing here"
                );
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(limits.drain_delay) => {}
                }
                stop.cancel();
                tracing::info!(
                    shutdown_grace = ?limits.shutdown_grace,
                    "listener closed; draining the requests in flight"
                );
                tokio::time::Instant::now()
            }
        });
        let served = serve::serve(
            listener,
            app,
            limits,
            self.endpoint.metrics.clone(),
            phases.clone(),
        )
        .await
        .map_err(|e| {
            InteractionsError::with_source(InteractionsErrorKind::Serve, "HTTP server", e)
        });
        phases.draining.cancel();
        stop.cancel();
        // Only now: a request in flight until its connection closed may still have
        // started a late call.
        let stopped_at = stopped_at
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now());
        self.endpoint
            .late_calls
            .drain(stopped_at + limits.shutdown_grace)
            .await;
        self.shutdown_mux.cancel();
        late.await.map_err(|e| {
            InteractionsError::with_source(InteractionsErrorKind::Serve, "late-reply worker", e)
        })?;
        served
    }
}
