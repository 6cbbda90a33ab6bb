//! One lane's task: its events one after another, each retried in place until it is
//! settled, so nothing of the lane overtakes it. Retries are not naks: a nak would put
//! the event back in the stream behind the lane's later events.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::board::{Board, Held};
use super::records::Records;
use crate::filter::type_and_guild;
use crate::ordering::{LaneMark, OnFailure};
use crate::pause::Verdict;
use crate::worker::{Worker, end_to_end, event_id, panic_message};
use crate::{Body, Event, Outcome, Sink};

/// What one partition's lane tasks share.
pub struct LaneContext<S> {
    pub worker: Arc<Worker<S>>,
    pub board: Board,
    pub records: Records,
    /// Attempts in flight in this process, shared by its partitions (`concurrency`).
    pub attempts: Arc<Semaphore>,
    /// The partition is stopping: no new attempt starts; what waits is left unacked
    /// for the partition's next owner.
    pub stop: CancellationToken,
}

/// What to do after an attempt that did not settle the event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again after this long.
    Retry(Duration),
    /// Give up on it: dead-letter it, and the lane goes on.
    DeadLetter,
}

/// The policy after a failed attempt (`attempt` is 1-based), apart from the delivery so
/// it can be tested alone. Under `block` an event is never given up; past
/// `max_attempts` it is tried at the backoff's ceiling.
pub(crate) fn after_failure(
    on_failure: OnFailure,
    attempt: u32,
    max_attempts: u32,
    retryable: bool,
    retry_after: Option<Duration>,
    backoff: &crate::retry::Backoff,
) -> Next {
    let exhausted = !retryable || attempt >= max_attempts;
    match (exhausted, on_failure) {
        (false, _) | (true, OnFailure::Block) => {
            Next::Retry(backoff.next_delay(attempt.min(max_attempts), retry_after))
        }
        (true, OnFailure::DeadLetter) => Next::DeadLetter,
    }
}

/// Runs `lane` until it has no events left or the partition stops.
pub async fn run<S: Sink>(ctx: Arc<LaneContext<S>>, lane: String) {
    while let Some(held) = ctx.board.next(&lane) {
        if ctx.stop.is_cancelled() {
            ctx.board.done(held.stream_seq);
            continue;
        }
        let seq = held.stream_seq;
        deliver(&ctx, &lane, held).await;
        ctx.board.done(seq);
    }
    ctx.records.forget(&lane);
}

/// Delivers one event of the lane, retrying in place, then acks, dead-letters, or
/// (the partition stopping) leaves it unacked.
async fn deliver<S: Sink>(ctx: &LaneContext<S>, lane: &str, held: Held) {
    let worker = &ctx.worker;
    let s = &worker.settings;
    let message = &held.message;
    let mut attempt = 1;
    loop {
        let record = match ctx.records.get(lane).await {
            Ok(record) => record,
            Err(reason) => {
                tracing::warn!(sink = %s.name, %lane, %reason, "lane held until its record can be read");
                if wait(ctx, s.backoff.ceiling(attempt)).await {
                    return;
                }
                continue;
            }
        };
        if held.stream_seq <= record.stream_seq {
            // Settled by an earlier owner of the partition, which was stopped or died
            // before its ack: the next owner reads again from the oldest unacked event.
            worker.conclude(message, AckKind::Ack, "duplicate").await;
            return;
        }
        let mark = LaneMark {
            key: lane.to_owned(),
            seq: record.lane_seq + 1,
            gap: record.gap,
        };
        // After the mark, which the event borrows for as long as the body.
        let body = Body::new(&message.payload);
        let Some(id) = event_id(message, &body) else {
            let reason = "message on the bus is not a Relaycord envelope";
            if worker.dead_letter(message, "", attempt, reason, None).await {
                settle_record(ctx, lane, held.stream_seq, Settled::DeadLettered).await;
            }
            return;
        };
        let event = Event {
            id,
            event_type: type_and_guild(&message.subject).0,
            attempt,
            body: &body,
            lane: Some(&mark),
            replay: None,
        };
        let outcome = {
            let _slot = ctx.attempts.acquire().await.expect("never closed");
            worker.try_deliver(&event, message).await
        };
        let outcome = outcome.unwrap_or_else(|panic| {
            let panic = panic_message(&*panic).to_owned();
            tracing::error!(sink = %s.name, %id, attempt, %panic, "the sink panicked; the event is tried again");
            worker.count("panicked");
            Outcome::Retry {
                reason: format!("the sink panicked: {panic}"),
                status: None,
                after: None,
            }
        });
        let (reason, status, retryable, after) = match outcome {
            Outcome::Delivered => {
                settle_record(ctx, lane, held.stream_seq, Settled::Delivered).await;
                worker.breaker.delivered();
                worker.conclude(message, AckKind::Ack, "delivered").await;
                if let Some(age) = end_to_end(&body) {
                    worker
                        .metrics
                        .end_to_end_latency
                        .with_label_values(&[&s.name])
                        .observe(age.as_secs_f64());
                }
                return;
            }
            Outcome::Skipped { reason } => {
                tracing::debug!(sink = %s.name, %id, %reason, "skipped");
                settle_record(ctx, lane, held.stream_seq, Settled::Skipped).await;
                worker.conclude(message, AckKind::Ack, "skipped").await;
                return;
            }
            Outcome::Retry {
                reason,
                status,
                after,
            } => (reason, status, true, after),
            Outcome::Permanent { reason, status } => (reason, status, false, None),
        };
        ctx.board.set_failing(lane, true);
        let next = after_failure(
            s.on_failure,
            attempt,
            s.max_attempts,
            retryable,
            after,
            &s.backoff,
        );
        let delay = match next {
            Next::Retry(delay) => {
                tracing::debug!(sink = %s.name, %id, %lane, attempt, ?status, %reason, ?delay, "delivery failed; the lane waits");
                worker.count("retried");
                delay
            }
            Next::DeadLetter => match worker.breaker.failed(&reason) {
                Verdict::DeadLetter => {
                    if worker
                        .dead_letter(message, id, attempt, &reason, status)
                        .await
                    {
                        settle_record(ctx, lane, held.stream_seq, Settled::DeadLettered).await;
                    }
                    return;
                }
                // The sink paused: the receiver, not this event, is failing. The lane
                // keeps the event and tries again at the probe interval.
                Verdict::Hold(delay) => {
                    worker.count("held");
                    delay
                }
            },
        };
        if wait(ctx, delay).await {
            return;
        }
        attempt = attempt.saturating_add(1);
    }
}

enum Settled {
    Delivered,
    DeadLettered,
    Skipped,
}

/// Advances the lane's record; written before the ack, as dedupe's record is.
async fn settle_record<S: Sink>(ctx: &LaneContext<S>, lane: &str, seq: u64, how: Settled) {
    let Ok(record) = ctx.records.get(lane).await else {
        return;
    };
    let record = match how {
        Settled::Delivered => record.delivered(seq),
        Settled::DeadLettered => record.dead_lettered(seq),
        Settled::Skipped => record.skipped(seq),
    };
    ctx.records.put(lane, record).await;
}

/// Waits `delay`; true when the partition stopped meanwhile.
async fn wait<S: Sink>(ctx: &LaneContext<S>, delay: Duration) -> bool {
    tokio::select! {
        () = ctx.stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Backoff;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn dead_letter_gives_up_after_max_attempts_or_a_refusal() {
        let d = OnFailure::DeadLetter;
        assert!(matches!(
            after_failure(d, 1, 3, true, None, &B),
            Next::Retry(_)
        ));
        assert!(matches!(
            after_failure(d, 2, 3, true, None, &B),
            Next::Retry(_)
        ));
        assert_eq!(after_failure(d, 3, 3, true, None, &B), Next::DeadLetter);
        assert_eq!(after_failure(d, 1, 3, false, None, &B), Next::DeadLetter);
    }

    #[test]
    fn block_never_gives_up_and_waits_at_most_the_ceiling() {
        let b = OnFailure::Block;
        for attempt in [1, 3, 4, 100, u32::MAX] {
            let Next::Retry(delay) = after_failure(b, attempt, 3, false, None, &B) else {
                panic!("block never dead-letters (attempt {attempt})");
            };
            assert!(delay <= B.ceiling(3), "{delay:?}");
        }
        let Next::Retry(delay) = after_failure(b, 1, 3, true, Some(Duration::from_secs(7)), &B)
        else {
            panic!("retried");
        };
        assert!(delay >= Duration::from_secs(7), "Retry-After is a floor");
    }
}
