//! `relaycord replay`: deliver a time range of events again, to one sink only.
//!
//! A replay reads the events stream (or, with `--only failed`, the sink's dead letters)
//! between two times through a consumer of its own, so the sink's durable consumer and
//! every other sink go on with live traffic untouched. Each event goes through the sink
//! built from the same `[[sinks]]` entry (filters, URL, secret, templates) with its
//! original id, one after another in stream order (so every lane keeps its order), and
//! carries `Relaycord-Replay`. Nothing is published back onto the gateway subjects.
//!
//! Delivery is at-least-once like the sink's: the checkpoint ([`checkpoint`]) is written
//! every [`CHECKPOINT_EVERY`] events or [`SAVE_EVERY`], so a replay killed halfway resends at
//! most that many when run again, with the same ids for receivers to dedupe on.

pub mod checkpoint;
mod failed;
mod letters;
mod range;

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use bytes::Bytes;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::dlq::{self, DeadLetterInfo};
use crate::error::{SinkError, SinkErrorKind};
use crate::{Body, Event, Outcome, Sink};

pub use checkpoint::Checkpoint;

/// The header every replayed delivery carries (http, NATS and AMQP headers): the replay's
/// checkpoint key, the same for every delivery of one replay and its continuations.
pub const HEADER: &str = "Relaycord-Replay";

/// Events between two checkpoint writes, at most: what a killed replay resends.
pub const CHECKPOINT_EVERY: u64 = 100;

/// Time between two checkpoint writes, at most (a slow or paced replay).
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Which events of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Every event of the range the sink's filters take.
    All,
    /// The sink's dead letters whose events were received in the range; each one
    /// delivered is removed from the DLQ, the others stay.
    Failed,
}

/// One replay, its range already resolved.
#[derive(Debug, Clone)]
pub struct Request {
    pub since: SystemTime,
    pub until: SystemTime,
    pub only: Only,
    /// The checkpoint's key ([`checkpoint::key`]).
    pub key: String,
    /// Events per second at most.
    pub rate: Option<f64>,
    /// Count what would be sent; send nothing, write no checkpoint.
    pub dry_run: bool,
    /// Forget an earlier run's checkpoint and start over.
    pub fresh: bool,
}

/// What a replay did. `sent + skipped + failed` are this run's; `earlier` holds what
/// earlier runs of the same replay had done when this one continued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Events in the range for this sink (after its filters); in a dry run, all of them.
    pub matched: u64,
    pub sent: u64,
    /// The sink would not send them (e.g. the discord sink's own messages).
    pub skipped: u64,
    /// Still failing after `max_attempts`: dead-lettered (or left in the DLQ).
    pub failed: u64,
    /// The checkpoint of the run this one continued.
    pub earlier: Option<Checkpoint>,
    /// The range, as resolved on the first run.
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// The oldest event still stored, when it is later than `since`: the stream's
    /// `max_age` dropped the start of the range.
    pub oldest_stored: Option<SystemTime>,
    /// Why the replay ended before the range did (interrupted, failures in a row);
    /// running the same command again continues.
    pub stopped: Option<String>,
}

/// The sink and its delivery settings, as the replay needs them.
pub struct Target<'a, S> {
    pub name: &'a str,
    pub sink: &'a S,
    pub settings: &'a crate::DriverSettings,
}

/// Runs `request` against `target`; `progress` is called about every five seconds.
pub async fn run<S: Sink>(
    js: &jetstream::Context,
    target: &Target<'_, S>,
    request: &Request,
    shutdown: &CancellationToken,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report, SinkError> {
    match request.only {
        Only::All => range::run(js, target, request, shutdown, progress).await,
        Only::Failed => failed::run(js, target, request, shutdown, progress).await,
    }
}

/// What became of one replayed event.
pub(crate) enum Delivered {
    Sent,
    Skipped,
    Failed {
        reason: String,
        status: Option<u16>,
        attempts: u32,
    },
}

/// Delivers events one at a time through the sink, retrying each like the driver does
/// (the sink's `max_attempts` and backoff), at most `rate` per second.
pub(crate) struct Sender<'a, S> {
    target: &'a Target<'a, S>,
    replay: &'a str,
    pace: Option<Interval>,
    shutdown: &'a CancellationToken,
    failures_in_a_row: u64,
}

impl<'a, S: Sink> Sender<'a, S> {
    pub fn new(
        target: &'a Target<'a, S>,
        replay: &'a str,
        rate: Option<f64>,
        shutdown: &'a CancellationToken,
    ) -> Self {
        let pace = rate.and_then(pace).map(|period| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        Self {
            target,
            replay,
            pace,
            shutdown,
            failures_in_a_row: 0,
        }
    }

    /// `None` when the replay is stopping and the event was not (fully) tried.
    pub async fn send<'e>(
        &mut self,
        id: &'e str,
        event_type: &'e str,
        body: &'e Body<'e>,
    ) -> Option<Delivered>
    where
        'a: 'e,
    {
        if let Some(pace) = &mut self.pace {
            tokio::select! {
                _ = pace.tick() => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
        let settings = self.target.settings;
        let mut attempt = 1;
        loop {
            let event = Event {
                id,
                event_type,
                attempt,
                body,
                lane: None,
                replay: Some(self.replay),
            };
            let (reason, status, after) = match self.target.sink.deliver(&event).await {
                Outcome::Delivered => {
                    self.failures_in_a_row = 0;
                    return Some(Delivered::Sent);
                }
                Outcome::Skipped { .. } => return Some(Delivered::Skipped),
                Outcome::Permanent { reason, status } => (reason, status, None),
                Outcome::Retry {
                    reason,
                    status,
                    after,
                } if attempt < settings.max_attempts => (reason, status, Some(after)),
                Outcome::Retry { reason, status, .. } => (reason, status, None),
            };
            let Some(after) = after else {
                self.failures_in_a_row += 1;
                return Some(Delivered::Failed {
                    reason,
                    status,
                    attempts: attempt,
                });
            };
            tracing::debug!(sink = self.target.name, id, attempt, %reason, "replay attempt failed");
            let wait = settings.backoff.next_delay(attempt, after);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => return None,
            }
            attempt += 1;
        }
    }

    /// Set when as many events in a row failed as would pause the live sink
    /// (`pause.after`; 0 never stops): the receiver is down, and trying the rest of the
    /// range would only fill the DLQ. Run the replay again to continue.
    pub fn receiver_down(&self) -> Option<String> {
        let after = u64::from(self.target.settings.pause.after);
        (after > 0 && self.failures_in_a_row >= after).then(|| {
            format!(
                "{} events in a row failed after every attempt: the receiver looks down",
                self.failures_in_a_row
            )
        })
    }
}

/// The time between two deliveries at `rate` per second; `None` for a rate that is not
/// a positive number or faster than one per microsecond.
pub fn pace(rate: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(1.0 / rate)
        .ok()
        .filter(|period| *period >= Duration::from_micros(1))
}

/// Stores an event that failed its replay as a dead letter of the sink, as the driver
/// would; `replay --only failed` or `dlq replay` can take it from there.
pub(crate) async fn dead_letter(
    js: &jetstream::Context,
    sink: &str,
    seq: u64,
    id: &str,
    event_type: &str,
    payload: Bytes,
    failure: (&str, Option<u16>, u32),
) -> Result<(), SinkError> {
    let (reason, status, attempts) = failure;
    let reason = format!("replay: {reason}");
    let info = DeadLetterInfo {
        sink,
        id,
        event_type: Some(event_type),
        reason: &reason,
        status,
        attempts,
        source_seq: Some(seq),
    };
    dlq::publish(js, &info, payload).await.map_err(|e| {
        SinkError::new(
            SinkErrorKind::Bus,
            format!("event {id} failed its replay and cannot be dead-lettered: {e}"),
        )
    })
}

/// Calls `progress` at most every five seconds.
pub(crate) struct Ticker {
    last: Instant,
}

impl Ticker {
    pub fn new() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            return true;
        }
        false
    }
}
