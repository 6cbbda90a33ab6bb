//! The public HTTP listener, hardened for the open internet.
//!
//! The endpoint faces anyone who finds its URL, so slow or idle clients must not hold it:
//! each connection must send its request headers within `header_read_timeout` (hyper
//! closes it otherwise, idle keep-alive connections included), a request body must
//! arrive within `body_read_timeout` (408, see the endpoint), at most `max_connections`
//! are served at once (later ones are closed at once and counted), and a shutdown waits
//! at most `shutdown_grace` for requests in flight. A signed PING from Discord is then
//! answered however many slow clients are connected.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::InteractionMetrics;

/// Limits of the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A connection that has not sent a whole request head by then is closed.
    pub header_read_timeout: Duration,
    /// A request whose body has not fully arrived this long after its headers gets 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// On shutdown, requests in flight get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            max_connections: 8192,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `stop`, within `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    metrics: InteractionMetrics,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let result = loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before accept: the
                // listener itself is fine; back off briefly rather than spin.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => break Err(error),
            },
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.connections_rejected.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            // Dropped when the connection ends or is aborted after the grace period.
            let _open = Open::new(slot, &metrics);
            let mut connection = std::pin::pin!(
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service)
            );
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    // Finish the request in flight, then close; idle ones close now.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
        });
    };
    // Bounded drain: past the grace period, whatever is left is dropped.
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            grace = ?limits.shutdown_grace,
            "connections still open after the shutdown grace period; closing them"
        );
        connections.shutdown().await;
    }
    result
}

/// A served connection: holds its slot and counts in `connections_open` until dropped.
struct Open {
    _slot: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Open {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, metrics: &InteractionMetrics) -> Self {
        metrics.connections_open.inc();
        Self {
            _slot: slot,
            gauge: metrics.connections_open.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 23 || code == 24) // ENFILE, EMFILE
}
