//! Logging setup and the `/metrics`, `/healthz`, `/readyz` endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `RUST_LOG` wins; otherwise `default` (e.g. "info"). Colours only on a terminal: a
/// pod's log or a file gets plain lines that grep and log shippers read as written.
pub fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Readiness: a flag the role sets once it is serving, and optional role checks (e.g.
/// "no shard down for longer than ingest.unhealthy_after"). Liveness: the process
/// answers, and optional role checks (e.g. "the ingest loop is running").
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    checks: Arc<std::sync::Mutex<Vec<Check>>>,
    live_checks: Arc<std::sync::Mutex<Vec<Check>>>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// From now on `/readyz` fails ("shutting down"), whatever else holds: a role that
    /// serves on for a while after SIGTERM calls it first, so that load balancers stop
    /// routing to it meanwhile.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn add_check(&self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        self.checks
            .lock()
            .expect("health lock")
            .push(Arc::new(check));
    }

    /// A check for `/healthz`: `Err` when restarting the process is the fix.
    pub fn add_liveness_check(
        &self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.live_checks
            .lock()
            .expect("health lock")
            .push(Arc::new(check));
    }

    /// `Ok` when alive; otherwise the first reason it is not.
    pub fn liveness(&self) -> Result<(), String> {
        let checks = self.live_checks.lock().expect("health lock").clone();
        checks.iter().try_for_each(|check| check())
    }

    /// `Ok` when ready; otherwise the first reason it is not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting".to_owned());
        }
        let checks = self.checks.lock().expect("health lock").clone();
        checks.iter().try_for_each(|check| check())
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Health,
}

/// Serves the metrics endpoint until `shutdown` (a role that drains after SIGTERM passes
/// a token of its own, so that `/readyz` answers 503 through the drain instead of going
/// silent). Logs the bound address: with port 0
/// (tests, several replicas on one host) the log is the only place that names it.
pub fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    health: Health,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("metrics endpoint on http://{addr}/metrics");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(error) = encoder.encode(&state.registry.gather(), &mut body) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            error.to_string().into_bytes(),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        body,
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}"),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn stopping_fails_readiness_for_good() {
        let health = Health::default();
        assert_eq!(health.readiness(), Err("starting".to_owned()));
        health.set_ready(true);
        assert_eq!(health.readiness(), Ok(()));
        health.set_stopping();
        assert_eq!(health.readiness(), Err("shutting down".to_owned()));
        // A SIGTERM during the start: the role's "ready" that comes later does not undo it.
        health.set_ready(true);
        assert_eq!(health.readiness(), Err("shutting down".to_owned()));
        assert_eq!(health.liveness(), Ok(()), "still alive while it drains");
    }
}
