//! The window of publishes in flight for one shard, and the resume point it yields.
//!
//! Every dispatch read from the gateway enters the window as a future that resolves
//! once JetStream has acknowledged it (or at once, for READY and RESUMED). Acks are
//! taken out in read order, never in completion order: a later publish that was acked
//! first waits behind an earlier one still in flight (slow, or failed and retried). So
//! [`AckWindow::acked_seq`] is the highest seq below which *every* dispatch is on the
//! bus — the contiguous acked seq, which is what a session may resume from — and not the
//! largest seq acked so far.
//!
//! READY starts a new session and seq numbering: [`AckWindow::new_session`] bumps the
//! generation, and acks of the previous session still in the window are taken out
//! without moving the resume point.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::time::Instant;

/// An ack resolves to the session generation and seq it belongs to.
type AckFuture = Pin<Box<dyn Future<Output = (u64, u64)> + Send>>;

pub(crate) struct AckWindow {
    generation: u64,
    acked_seq: u64,
    inflight: FuturesOrdered<AckFuture>,
    /// When each entry of `inflight` was pushed, in the same order.
    pushed_at: VecDeque<Instant>,
}

impl AckWindow {
    /// A window whose session has everything up to `acked_seq` on the bus (0: none yet).
    pub fn new(acked_seq: u64) -> Self {
        Self {
            generation: 0,
            acked_seq,
            inflight: FuturesOrdered::new(),
            pushed_at: VecDeque::new(),
        }
    }

    /// When the oldest entry still in the window was read: how long the resume point has
    /// been held back. `None` when the window is empty.
    pub fn oldest_since(&self) -> Option<Instant> {
        self.pushed_at.front().copied()
    }

    /// The contiguous acked seq of the current session.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// READY: a new session. Its seqs start again, so the resume point is 0 until its
    /// own acks come out; acks of the previous session no longer move it.
    pub fn new_session(&mut self) {
        self.generation += 1;
        self.acked_seq = 0;
    }

    /// Adds dispatch `seq` of the current session; `ack` completes once it is on the bus.
    pub fn push(&mut self, seq: u64, ack: impl Future<Output = ()> + Send + 'static) {
        let generation = self.generation;
        self.inflight.push_back(Box::pin(async move {
            ack.await;
            (generation, seq)
        }));
        self.pushed_at.push_back(Instant::now());
    }

    /// Adds `seq` as already done (READY, RESUMED): it takes part in the order, so it
    /// moves the resume point only once everything read before it is acked.
    pub fn push_done(&mut self, seq: u64) {
        let generation = self.generation;
        self.inflight
            .push_back(Box::pin(std::future::ready((generation, seq))));
        self.pushed_at.push_back(Instant::now());
    }

    /// Waits for the oldest entry's ack, takes it out and returns its seq; `None` when
    /// the window is empty. Cancel-safe: an ack is taken out and recorded in the same
    /// poll that sees it complete.
    pub async fn next(&mut self) -> Option<u64> {
        let (generation, seq) = self.inflight.next().await?;
        self.pushed_at.pop_front();
        if generation == self.generation {
            self.acked_seq = seq;
        }
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use tokio::sync::oneshot;

    use super::*;

    /// Pushes `seq` with an ack the test completes by sending on the returned channel.
    fn pending(window: &mut AckWindow, seq: u64) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        window.push(seq, async move {
            rx.await.expect("ack sender kept until completed");
        });
        tx
    }

    /// Takes out every ack that is ready now, in order; stops at the first one in flight.
    fn drain_ready(window: &mut AckWindow) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Some(seq)) = window.next().now_or_never() {
            out.push(seq);
        }
        out
    }

    #[tokio::test]
    async fn out_of_order_acks_move_the_resume_point_only_when_contiguous() {
        let mut w = AckWindow::new(10);
        let a11 = pending(&mut w, 11);
        let a12 = pending(&mut w, 12);
        let a13 = pending(&mut w, 13);

        a13.send(()).unwrap();
        a12.send(()).unwrap();
        assert!(drain_ready(&mut w).is_empty(), "11 is still in flight");
        assert_eq!(w.acked_seq(), 10, "not 13: 11 is not on the bus yet");
        assert_eq!(w.len(), 3);

        a11.send(()).unwrap();
        assert_eq!(drain_ready(&mut w), vec![11, 12, 13]);
        assert_eq!(w.acked_seq(), 13);
        assert!(w.is_empty());
        assert_eq!(w.next().await, None);
    }

    /// A publish that fails and is retried completes after everything sent after it:
    /// the resume point waits for it, then jumps over what was acked meanwhile.
    #[tokio::test]
    async fn a_failed_first_publish_retried_holds_back_later_acked_ones() {
        let mut w = AckWindow::new(0);
        // Seq 1's publish: attempts arrive on a channel; it is acked on the first `Ok`,
        // retrying after each `Err` (as `publish_acked` does).
        let (attempts, mut results) = tokio::sync::mpsc::unbounded_channel::<Result<(), ()>>();
        w.push(1, async move {
            while let Some(result) = results.recv().await {
                if result.is_ok() {
                    return;
                }
            }
            panic!("seq 1 never acked");
        });
        let later: Vec<_> = (2..=50).map(|seq| pending(&mut w, seq)).collect();
        for ack in later {
            ack.send(()).unwrap();
        }
        attempts.send(Err(())).unwrap();
        assert!(
            drain_ready(&mut w).is_empty(),
            "seq 1 failed and is being retried"
        );
        assert_eq!(w.acked_seq(), 0, "not 50: seq 1 is not on the bus");

        attempts.send(Ok(())).unwrap();
        assert_eq!(w.next().await, Some(1));
        assert_eq!(w.acked_seq(), 1);
        assert_eq!(drain_ready(&mut w), (2..=50).collect::<Vec<_>>());
        assert_eq!(w.acked_seq(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_entry_dates_from_when_it_was_read() {
        let mut w = AckWindow::new(0);
        assert_eq!(w.oldest_since(), None);
        let start = Instant::now();
        let a1 = pending(&mut w, 1);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let a2 = pending(&mut w, 2);
        assert_eq!(w.oldest_since(), Some(start), "seq 1 is still unacked");
        a2.send(()).unwrap();
        assert!(drain_ready(&mut w).is_empty());
        assert_eq!(w.oldest_since(), Some(start));
        a1.send(()).unwrap();
        assert_eq!(drain_ready(&mut w), vec![1, 2]);
        assert_eq!(w.oldest_since(), None);
    }

    #[tokio::test]
    async fn ready_starts_a_new_session_and_old_acks_do_not_move_it() {
        let mut w = AckWindow::new(0);
        w.push_done(1); // READY of the first session
        let old7 = pending(&mut w, 7);
        let old8 = pending(&mut w, 8);
        assert_eq!(drain_ready(&mut w), vec![1]);
        assert_eq!(w.acked_seq(), 1);

        // The connection is lost and a new session starts before 7 and 8 are acked.
        w.new_session();
        assert_eq!(w.acked_seq(), 0);
        w.push_done(1); // READY of the new session
        let new2 = pending(&mut w, 2);
        new2.send(()).unwrap();
        assert!(
            drain_ready(&mut w).is_empty(),
            "the old session's acks come out first"
        );

        old8.send(()).unwrap();
        old7.send(()).unwrap();
        assert_eq!(w.next().await, Some(7));
        assert_eq!(w.next().await, Some(8));
        assert_eq!(w.acked_seq(), 0, "7 and 8 belong to the old session");
        assert_eq!(drain_ready(&mut w), vec![1, 2]);
        assert_eq!(w.acked_seq(), 2);
    }

    #[tokio::test]
    async fn an_old_session_ack_completing_last_leaves_the_new_position_alone() {
        let mut w = AckWindow::new(40);
        let old41 = pending(&mut w, 41);
        w.new_session();
        w.push_done(1);
        assert!(drain_ready(&mut w).is_empty());
        old41.send(()).unwrap();
        assert_eq!(w.next().await, Some(41));
        assert_eq!(w.acked_seq(), 0, "41 is the old session's seq");
        assert_eq!(w.next().await, Some(1));
        assert_eq!(w.acked_seq(), 1);
    }
}
