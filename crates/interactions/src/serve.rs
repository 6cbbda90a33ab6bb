//! The public HTTP listener, hardened for the open internet.
//!
//! The endpoint faces anyone who finds its URL, so slow or idle clients must not hold it:
//! each connection must send its request headers within `header_read_timeout` (hyper
//! closes it otherwise, idle keep-alive connections included), a request body must
//! arrive within `body_read_timeout` (408, see the endpoint), a response must be taken by
//! the client within [`WRITE_TIMEOUT`], dead peers are found by TCP keepalive, and a
//! shutdown waits at most `shutdown_grace` for requests in flight.
//!
//! A shutdown comes in two steps, so that a rollout or a scale-down drops no request
//! (Discord does not retry one): from `draining` (SIGTERM) the listener still accepts and
//! serves, but every response says `Connection: close`, so clients and proxies take their
//! next request elsewhere while load balancers stop routing here (the role fails `/readyz`
//! at the same moment); from `stop` (`drain_delay` later) the listener is closed, new
//! connections are refused by the kernel, and requests in flight get `shutdown_grace`.
//!
//! At most `max_connections` are served at once. At the cap a new connection is not
//! refused: the oldest connection that is not serving a verified request (still sending
//! its head or body, idle, or answered 401) is closed for it. Refusing the newest would let
//! anyone holding `max_connections` trickling connections lock Discord out; closing the
//! oldest unverified one costs an attacker a connection per connection, and a request that
//! passed the signature check is never closed this way. Only when every connection is
//! serving a verified request is the new one refused.
//!
//! Memory per connection is bounded too: hyper buffers at most [`MAX_HEAD_BUFFER`] of a
//! request head, and bodies share one budget (`max_body_memory`, see the endpoint).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::metrics::InteractionMetrics;

/// A response the client has not taken for this long (it stopped reading, its window is
/// shut) closes the connection: such a client would otherwise hold a slot for good.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's read buffer per connection (its default is ~400 KiB). Discord's request heads
/// are well under 2 KiB; 16 KiB leaves room for proxies' headers.
pub const MAX_HEAD_BUFFER: usize = 16 * 1024;

/// TCP keepalive: a peer that vanished (no FIN, no RST) is found within about a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Limits of the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A connection that has not sent a whole request head by then is closed.
    pub header_read_timeout: Duration,
    /// A request whose body has not fully arrived this long after its headers gets 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; at the cap the oldest unverified one is closed.
    pub max_connections: usize,
    /// On shutdown, the listener accepts and serves this long more (answering with
    /// `Connection: close`) before it closes.
    pub drain_delay: Duration,
    /// Once the listener is closed, requests in flight get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            max_connections: 1024,
            drain_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The two steps of a shutdown (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    /// Serve on, but close each connection after its response.
    pub draining: CancellationToken,
    /// Close the listener; requests in flight get `shutdown_grace`.
    pub stop: CancellationToken,
}

/// One served connection as the accept loop and the endpoint see it.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Serving a request whose signature verified: not closed to make room.
    verified: AtomicBool,
    evict: CancellationToken,
}

/// Given to the endpoint with each request (a request extension), so it can say that the
/// request verified.
#[derive(Debug, Clone)]
pub(crate) struct ConnMark(Arc<ConnState>);

impl ConnMark {
    pub fn verified(&self) {
        self.0.verified.store(true, Ordering::Relaxed);
    }
}

/// The open connections in accept order (ids grow), for closing the oldest unverified.
#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Arc<ConnState>>,
}

impl Conns {
    /// Makes room for a new connection under `cap`: `Some(id)` to serve it under, after
    /// closing the oldest unverified connection if at the cap; `None`: refuse it.
    fn admit(&mut self, cap: usize) -> Option<(u64, Arc<ConnState>, bool)> {
        let mut evicted = false;
        if self.open.len() >= cap.max(1) {
            let oldest = self
                .open
                .iter()
                .find(|(_, c)| !c.verified.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            let state = self.open.remove(&oldest).expect("found above");
            state.evict.cancel();
            evicted = true;
        }
        let id = self.next;
        self.next += 1;
        let state = Arc::new(ConnState::default());
        self.open.insert(id, Arc::clone(&state));
        Some((id, state, evicted))
    }
}

/// Serves `router` on `listener` until `shutdown.stop`, within `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    metrics: InteractionMetrics,
    shutdown: Shutdown,
) -> io::Result<()> {
    let Shutdown { draining, stop } = shutdown;
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut connections = JoinSet::new();
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    errors.accepted();
                    accepted
                }
                // Whatever accept() reports (EMFILE, ENOBUFS, EPROTO, ENETUNREACH …), the
                // listening socket itself stays usable: a public endpoint must not stop
                // serving because one connection or one moment went wrong.
                Err(error) => {
                    let wait = errors.failed(&error, Instant::now());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let admitted = conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(limits.max_connections);
        let Some((id, state, evicted)) = admitted else {
            metrics.connections_rejected.inc();
            drop(stream);
            continue;
        };
        if evicted {
            metrics.connections_evicted.inc();
        }
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let mark = ConnMark(Arc::clone(&state));
        let router = router.clone();
        let draining_now = draining.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            let mark = mark.clone();
            let draining = draining_now.clone();
            request.extensions_mut().insert(mark.clone());
            let response = router.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                let mut response = response.await;
                // The request is answered: the connection is again one that may be closed
                // to make room (until its next request verifies).
                mark.0.verified.store(false, Ordering::Relaxed);
                // Shutting down: the client's next request goes to another replica (hyper
                // closes the connection once this response is written).
                if draining.is_cancelled()
                    && let Ok(response) = &mut response
                {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        });
        let stop = stop.clone();
        let metrics = metrics.clone();
        let conns = Arc::clone(&conns);
        connections.spawn(async move {
            // Dropped when the connection ends or is aborted after the grace period.
            let _open = Open::new(id, conns, &metrics);
            let mut connection = std::pin::pin!(
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(MAX_HEAD_BUFFER)
                    .serve_connection(TokioIo::new(WriteTimeout::new(stream)), service)
            );
            tokio::select! {
                _ = connection.as_mut() => {}
                // Closed to make room for a newer connection (see the module docs).
                () = state.evict.cancelled() => {}
                () = stop.cancelled() => {
                    // Finish the request in flight, then close; idle ones close now.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
        });
    }
    // Closed now, not after the drain: a connection made from here on is refused at once
    // (a proxy can retry it elsewhere) instead of waiting in the backlog to be reset.
    drop(listener);
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
    Ok(())
}

/// A served connection: counted in `connections_open` and listed until dropped.
struct Open {
    id: u64,
    conns: Arc<Mutex<Conns>>,
    gauge: prometheus::IntGauge,
}

impl Open {
    fn new(id: u64, conns: Arc<Mutex<Conns>>, metrics: &InteractionMetrics) -> Self {
        metrics.connections_open.inc();
        Self {
            id,
            conns,
            gauge: metrics.connections_open.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .remove(&self.id);
    }
}

/// A stream whose writes fail once they have been blocked for [`WRITE_TIMEOUT`].
struct WriteTimeout<S> {
    inner: S,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            blocked: None,
        }
    }

    /// `Pending` stays pending until the deadline, which then fails the write.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = None;
            return polled;
        }
        let blocked = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match blocked.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl AsyncRead for WriteTimeout<TcpStream> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout<TcpStream> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Failed accepts in a row, and when one was last logged.
#[derive(Default)]
struct AcceptErrors {
    in_a_row: u32,
    logged: Option<Instant>,
    unlogged: u64,
}

/// At most one log line per this, however fast accept() fails.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

impl AcceptErrors {
    fn accepted(&mut self) {
        self.in_a_row = 0;
    }

    /// How long to wait before accepting again after `error`; logs, rate-limited.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        self.in_a_row = self.in_a_row.saturating_add(1);
        let wait = accept_backoff(error, self.in_a_row);
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_LOG_EVERY)
        {
            tracing::warn!(
                %error,
                in_a_row = self.in_a_row,
                suppressed = self.unlogged,
                ?wait,
                "accept failed; still serving"
            );
            self.logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        wait
    }
}

/// The wait after the `in_a_row`-th failed accept in a row. Running out of descriptors or
/// kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) lasts until connections close, so it
/// backs off further; anything else is one connection's trouble and costs a few ms.
fn accept_backoff(error: &io::Error, in_a_row: u32) -> Duration {
    const EXHAUSTED: [i32; 4] = [23, 24, 105, 12]; // ENFILE, EMFILE, ENOBUFS, ENOMEM
    let exhausted = error
        .raw_os_error()
        .is_some_and(|code| EXHAUSTED.contains(&code));
    let backoff = if exhausted {
        relaycord_bus::backoff::Exponential::new(Duration::from_millis(50), Duration::from_secs(1))
    } else {
        relaycord_bus::backoff::Exponential::new(
            Duration::from_millis(5),
            Duration::from_millis(100),
        )
    };
    backoff.delay(in_a_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18 C: accept() errors other than four kinds stopped the server.
    #[test]
    fn every_accept_error_is_waited_out_and_logged_rarely() {
        let errors = [
            io::Error::from_raw_os_error(71),  // EPROTO
            io::Error::from_raw_os_error(105), // ENOBUFS
            io::Error::from_raw_os_error(101), // ENETUNREACH
            io::Error::from_raw_os_error(24),  // EMFILE
            io::Error::from_raw_os_error(12),  // ENOMEM
            io::Error::other("something new"),
        ];
        for error in &errors {
            let first = accept_backoff(error, 1);
            let many = accept_backoff(error, 1000);
            assert!(first > Duration::ZERO, "{error}: no busy loop");
            assert!(many <= Duration::from_secs(1), "{error}: bounded, {many:?}");
            assert!(many >= first, "{error}");
        }
        // Exhaustion backs off more than one connection's trouble.
        assert!(
            accept_backoff(&errors[3], 5) > accept_backoff(&errors[0], 5),
            "EMFILE waits longer than EPROTO"
        );
        let mut log = AcceptErrors::default();
        let start = Instant::now();
        for i in 0..100 {
            log.failed(
                &errors[i % errors.len()],
                start + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(
            (log.in_a_row, log.unlogged),
            (100, 99),
            "one line for 100 errors in 0.1 s"
        );
        log.failed(&errors[0], start + ACCEPT_LOG_EVERY);
        assert_eq!(log.unlogged, 0, "logged again after the interval");
        log.accepted();
        assert_eq!(log.in_a_row, 0);
    }

    /// Issue 18 B: at the cap the oldest unverified connection makes room; verified ones
    /// are never closed for it.
    #[test]
    fn the_oldest_unverified_connection_makes_room() {
        let mut conns = Conns::default();
        let (a, a_state, _) = conns.admit(3).unwrap();
        let (_, b_state, _) = conns.admit(3).unwrap();
        let (_, c_state, _) = conns.admit(3).unwrap();
        ConnMark(Arc::clone(&a_state)).verified();
        let (_, _, evicted) = conns.admit(3).unwrap();
        assert!(evicted);
        assert!(
            !a_state.evict.is_cancelled(),
            "a is serving a verified request"
        );
        assert!(b_state.evict.is_cancelled(), "b is the oldest unverified");
        assert!(!c_state.evict.is_cancelled());
        assert!(conns.open.contains_key(&a));
        assert_eq!(conns.open.len(), 3);
        // Every connection verified: the new one is refused.
        for state in conns.open.values() {
            state.verified.store(true, Ordering::Relaxed);
        }
        assert!(conns.admit(3).is_none());
    }
}
