//! HTTP handler calls that outlive their deadline, until their reply is stored.
//!
//! A NATS handler's late reply is stored by JetStream itself (the replies stream captures
//! its reply subject); an HTTP handler's reply exists only in this process until it is
//! published there. So that publish is retried until it is stored (the interaction's token
//! bounds it: past it nobody can follow up), under one `Nats-Msg-Id` so retries store one
//! message, and a shutdown waits for the calls in flight: for `shutdown_grace`, after which a
//! call still running is cut off and the user's apology (the unavailable message) is stored in
//! its place, so every deferred interaction gets a follow-up from some replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap as NatsHeaders;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::handler_headers;
use crate::metrics::InteractionMetrics;

/// Waits between attempts to store a late reply: short at first (a leader election lasts
/// seconds), then no busier than every few seconds for as long as the token allows.
const STORE_RETRY: relaycord_bus::backoff::Exponential =
    relaycord_bus::backoff::Exponential::new(Duration::from_millis(100), Duration::from_secs(5));

/// After the grace period, how long the cut-off calls get to store their apologies.
pub(crate) const STORE_AFTER_CUT: Duration = Duration::from_secs(3);

/// The late HTTP calls of one replica: bounded (`max_late_http_calls`), counted, and cut off
/// together at shutdown.
#[derive(Clone)]
pub(crate) struct LateCalls {
    slots: Arc<Semaphore>,
    running: Arc<watch::Sender<usize>>,
    cut: CancellationToken,
}

/// One late call (or shed call's apology) until its reply is stored or given up.
pub(crate) struct Running {
    _slot: Option<OwnedSemaphorePermit>,
    running: Arc<watch::Sender<usize>>,
    pub cut: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.send_modify(|n| *n -= 1);
    }
}

impl LateCalls {
    pub fn new(slots: Arc<Semaphore>) -> Self {
        Self {
            slots,
            running: Arc::new(watch::channel(0).0),
            cut: CancellationToken::new(),
        }
    }

    /// Registers a late call; `None` inside when over `max_late_http_calls` (the call is
    /// then shed, but its apology is still tracked until stored).
    pub fn start(&self) -> (Running, bool) {
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok();
        let admitted = slot.is_some();
        self.running.send_modify(|n| *n += 1);
        let running = Running {
            _slot: slot,
            running: Arc::clone(&self.running),
            cut: self.cut.clone(),
        };
        (running, admitted)
    }

    /// Waits for the calls in flight until `until`, then cuts off the rest and gives their
    /// apologies [`STORE_AFTER_CUT`] to be stored. Returns how many were left behind.
    pub async fn drain(&self, until: tokio::time::Instant) -> usize {
        let mut running = self.running.subscribe();
        let done = tokio::time::timeout_at(until, running.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if done {
            return 0;
        }
        let left = *running.borrow();
        tracing::warn!(
            left,
            "late HTTP handler calls still running after the shutdown grace period; cutting them off with the unavailable message"
        );
        self.cut.cancel();
        let stored = tokio::time::timeout(STORE_AFTER_CUT, running.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if stored {
            return 0;
        }
        let lost = *running.borrow();
        if lost > 0 {
            tracing::warn!(lost, "late replies not stored before exit");
        }
        lost
    }
}

/// Stores an HTTP handler's late `reply` on the replies stream, retried until stored or
/// `until` (the token's end). `false`: given up.
pub(crate) async fn store(
    js: &jetstream::Context,
    subject: String,
    interaction: &str,
    reply: Bytes,
    until: Instant,
    metrics: &InteractionMetrics,
) -> bool {
    let mut headers = NatsHeaders::new();
    headers.insert(handler_headers::HANDLER, "http");
    // One message however many attempts it takes (the stream's duplicate window is 2 min;
    // a later retry storing it twice is a second reply, which the worker drops).
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("http-late:{interaction}").as_str(),
    );
    relaycord_bus::trace::inject(&mut headers);
    let mut attempt = 0;
    loop {
        let published = match js
            .publish_with_headers(subject.clone(), headers.clone(), reply.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let Err(error) = published else { return true };
        attempt += 1;
        let wait = STORE_RETRY.delay(attempt);
        if Instant::now() + wait >= until {
            tracing::warn!(%error, attempt, "cannot store a late HTTP handler reply; giving up as its token expires");
            metrics.late("failed");
            return false;
        }
        if attempt == 1 || attempt % 10 == 0 {
            tracing::warn!(%error, attempt, "cannot store a late HTTP handler reply yet; retrying");
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_calls_then_cuts_them_off() {
        let calls = LateCalls::new(Arc::new(Semaphore::new(2)));
        let (a, admitted_a) = calls.start();
        let (b, admitted_b) = calls.start();
        let (shed, admitted) = calls.start();
        assert!(
            admitted_a && admitted_b && !admitted,
            "the third is over the bound"
        );
        drop(shed);
        // `a` finishes within the grace period; `b` stores its apology once cut off.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(a);
        });
        let cut = b.cut.clone();
        tokio::spawn(async move {
            cut.cancelled().await;
            drop(b);
        });
        let grace = tokio::time::Instant::now() + Duration::from_secs(10);
        assert_eq!(calls.drain(grace).await, 0);
        assert!(calls.cut.is_cancelled(), "b outlived the grace period");

        // Nothing in flight: no cut.
        let idle = LateCalls::new(Arc::new(Semaphore::new(1)));
        assert_eq!(idle.drain(tokio::time::Instant::now()).await, 0);
        assert!(!idle.cut.is_cancelled());
    }
}
