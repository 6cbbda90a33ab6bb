//! The late-reply worker: one durable pull consumer on the replies stream, shared by
//! every replica, sends each reply that came after a deferral as a follow-up.
//!
//! | decision in KV          | what the worker does                                       |
//! |-------------------------|------------------------------------------------------------|
//! | `answered`, `delivered` | ack (it was the HTTP response, or was already sent)        |
//! | `deferred`              | take it (`delivering` with this reply's stream sequence, compare-and-set on the record's revision), then follow it up (below) |
//! | `delivering`, this reply | follow it up (a redelivery of the reply being sent)        |
//! | `delivering`, another reply | ack, `duplicate`: one follow-up per interaction          |
//! | `claimed`, younger than [`DECISION_WAIT`] | nak until then: the owner may still record `answered` |
//! | `claimed`, older        | as `deferred`: the owner's deferral record never landed    |
//! | none                    | nak with backoff; after [`UNDECIDED_GRACE`] ack, counted `undecided` |
//!
//! A compare-and-set that loses (another reply took the record, or the owner settled it)
//! naks briefly and reads the record again.
//!
//! Following up: token older than 15 min → term, `expired`; autocomplete → ack,
//! `dropped_autocomplete` (Discord takes no late choices); a reply that cannot be sent late
//! → term, `invalid`; REST 2xx → `delivered` record, ack; 401/404 → `expired`; 429/5xx/
//! transport → nak (`retried`) after max(Retry-After, backoff).
//!
//! Every wait is bounded by time, not by [`MAX_DELIVER`], which is only a backstop: the
//! tests below check that each wait ends before the deliveries run out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull, kv};
use futures::StreamExt;
use relaycord_bus::Subjects;
use relaycord_bus::backoff::Exponential;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::decisions::{
    DECISION_WAIT, Decision, Decisions, TOKEN_LIFETIME, Target, parse_kind, unix_ms,
};
use crate::error::{InteractionsError, InteractionsErrorKind};
use crate::handler_headers;
use crate::metrics::InteractionMetrics;
use crate::owned::Owned;
use crate::replies::{interaction_id, replies_all, replies_stream};
use crate::response::{FollowUp, follow_up};
use crate::rest::{DiscordRest, RestError};
use relaycord_bus::interaction::Kind;

/// Durable consumer name, shared by all replicas.
pub const CONSUMER: &str = "relaycord-late-replies";

/// Deliveries of one reply before it is given up (max_deliver is always set).
const MAX_DELIVER: i64 = 100;

/// How long a reply may wait for its interaction's record to be readable. The claim is
/// written before the handler is asked, so only a lagging read (a KV replica behind its
/// leader) or an expired record gets here.
pub const UNDECIDED_GRACE: Duration = Duration::from_secs(60);

/// Shortest nak delay, so that clock rounding never turns a wait into a busy loop.
const MIN_NAK: Duration = Duration::from_millis(100);

pub(crate) struct LateWorker {
    /// What this replica's own requests decided (see owned.rs).
    pub owned: Owned,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub decisions: Decisions,
    pub rest: DiscordRest,
    pub metrics: InteractionMetrics,
    pub concurrency: usize,
}

impl LateWorker {
    /// Creates (or finds) the durable consumer. Called at start, so a setup problem
    /// surfaces there, and again whenever the consumer vanished while running.
    pub async fn consumer(&self) -> Result<PullConsumer, InteractionsError> {
        let setup = |e: Box<dyn std::error::Error + Send + Sync>| {
            InteractionsError::with_source(InteractionsErrorKind::Setup, "late-reply consumer", e)
        };
        let stream = self
            .js
            .get_stream(replies_stream(&self.subjects))
            .await
            .map_err(|e| setup(e.into()))?;
        stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    filter_subject: replies_all(&self.subjects),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: MAX_DELIVER,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| setup(e.into()))
    }

    /// Consumes until `shutdown`. NATS outages and a deleted consumer are waited out:
    /// replies stay on the stream meanwhile.
    ///
    /// A reply is posted at most once while its message is handled, even when the
    /// follow-up is slow or the slots are busy: messages are pulled only for free slots
    /// (a message waiting in a prefetch buffer past `ack_wait` would be delivered again
    /// and could be posted twice), the message is kept in progress while it is handled,
    /// and a second delivery of a message this replica is still handling waits for it.
    pub async fn run(self, mut consumer: PullConsumer, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.concurrency.max(1)));
        let handling = Arc::new(Mutex::new(HashSet::new()));
        while !shutdown.is_cancelled() {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = Arc::clone(&slots).acquire_owned() => permit,
            };
            let Ok(first) = first else { return };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(permit);
            }
            let progress = progress_interval(consumer.cached_info().config.ack_wait);
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(PULL_WAIT)
                .messages()
                .await;
            let mut messages = match batch {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "late-reply consumer unavailable; retrying");
                    drop(permits);
                    pause(&shutdown).await;
                    if let Ok(again) = this.consumer().await {
                        consumer = again;
                    }
                    continue;
                }
            };
            let mut failed = false;
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = messages.next() => message,
                };
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "late-reply pull interrupted");
                        failed = true;
                        break;
                    }
                    None => break,
                };
                // One permit per requested message, so there is one for each that comes.
                let Some(permit) = permits.pop() else { break };
                let (this, handling) = (Arc::clone(&this), Arc::clone(&handling));
                // Continues the trace of whoever stored the reply (HTTP handlers' late
                // replies, and NATS handlers that pass `traceparent` on).
                let span = relaycord_bus::span!("interaction.follow_up", otel.kind = "consumer");
                relaycord_bus::trace::continue_from(&span, message.headers.as_ref());
                tokio::spawn(async move {
                    let sequence = message.info().map(|i| i.stream_sequence).ok();
                    let ack = match sequence {
                        Some(seq) if !handling.lock().expect("handling lock").insert(seq) => {
                            // Delivered again while this replica still handles it (its
                            // progress came late): the first delivery settles it.
                            AckKind::Nak(Some(progress * 3))
                        }
                        _ => {
                            let ack = in_progress(&message, progress, this.handle(&message))
                                .instrument(span)
                                .await;
                            if let Some(seq) = sequence {
                                handling.lock().expect("handling lock").remove(&seq);
                            }
                            ack
                        }
                    };
                    if let Err(error) = message.ack_with(ack).await {
                        tracing::debug!(%error, "late-reply ack failed; it will be redelivered");
                    }
                    drop(permit);
                });
            }
            if failed {
                // E.g. the consumer was deleted: wait, then find or make it again.
                drop(permits);
                pause(&shutdown).await;
                if let Ok(again) = this.consumer().await {
                    consumer = again;
                }
            }
        }
    }

    async fn handle(&self, message: &jetstream::Message) -> AckKind {
        let id = interaction_id(&message.subject);
        let info = message.info().ok();
        let delivered = info.as_ref().map_or(1, |i| i.delivered);
        // Status messages (e.g. no responders) and empty payloads carry no reply.
        if message.payload.is_empty() || message.status.is_some() {
            return AckKind::Ack;
        }
        if delivered >= MAX_DELIVER {
            self.metrics.late("failed");
            return AckKind::Term;
        }
        let published_ms = info
            .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
            .unwrap_or_default();
        // A reply this replica's own request answered with: the `answered` record is
        // stored, so there is nothing to read (nor to wait for until DECISION_WAIT).
        if self.owned.answered(id, DECISION_WAIT).await {
            return AckKind::Ack;
        }
        let now_ms = unix_ms(SystemTime::now());
        let entry = match self.decisions.entry(id).await {
            Ok(entry) => entry,
            Err(_) => return AckKind::Nak(Some(backoff(delivered))),
        };
        let (decision, revision) = match entry {
            Some((decision, revision)) => (Some(decision), revision),
            None => (None, 0),
        };
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let target = match decision {
            Some(Decision::Answered { .. } | Decision::Delivered) => return AckKind::Ack,
            // A redelivery of the reply being followed up (a failed or unacknowledged
            // attempt): it goes on, over its own record.
            Some(Decision::Delivering(d)) if d.reply == sequence => {
                return self
                    .follow_up(id, &d.target, revision, &message.payload, delivered)
                    .await;
            }
            // Another reply of the same interaction is the follow-up: one per interaction.
            Some(Decision::Delivering(_)) => {
                tracing::info!(interaction = id, "a second late reply; dropped");
                self.metrics.late("duplicate");
                return AckKind::Ack;
            }
            None => {
                let waited = Duration::from_millis(now_ms.saturating_sub(published_ms));
                return match undecided(waited, delivered) {
                    Some(delay) => AckKind::Nak(Some(delay)),
                    None => {
                        tracing::warn!(interaction = id, "late reply without a record; dropped");
                        self.metrics.late("undecided");
                        AckKind::Ack
                    }
                };
            }
            Some(Decision::Claimed(target)) => {
                let age = Duration::from_millis(now_ms.saturating_sub(target.at_ms));
                if let Some(delay) = claim_wait(age) {
                    return AckKind::Nak(Some(delay));
                }
                target
            }
            Some(Decision::Deferred(target)) => target,
        };
        // Taken over the record as read: if another reply (or the owner) changed it
        // meanwhile, this one reads it again instead of posting a second follow-up.
        let delivering = crate::decisions::Delivering {
            reply: sequence,
            target: target.clone(),
        };
        let revision = match self
            .decisions
            .start_delivery(id, revision, delivering)
            .await
        {
            Ok(revision) => revision,
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                return AckKind::Nak(Some(MIN_NAK));
            }
            Err(error) => {
                tracing::debug!(%error, interaction = id, "cannot take the follow-up; retrying");
                return AckKind::Nak(Some(backoff(delivered)));
            }
        };
        let ack = self
            .follow_up(id, &target, revision, &message.payload, delivered)
            .await;
        // Timed once, when the reply is settled; HTTP handlers' late replies are timed
        // where they arrive (endpoint.rs).
        let from_http = message
            .headers
            .as_ref()
            .and_then(|h| h.get(handler_headers::HANDLER))
            .is_some_and(|v| v.as_str() == "http");
        if !matches!(ack, AckKind::Nak(_)) && !from_http {
            let latency = Duration::from_millis(published_ms.saturating_sub(target.at_ms));
            self.metrics
                .handler_latency
                .with_label_values(&["nats", "late"])
                .observe(latency.as_secs_f64());
        }
        ack
    }

    /// Sends a late reply to Discord as the follow-up of `target`'s deferral.
    /// `revision`: of this reply's `delivering` record.
    async fn follow_up(
        &self,
        id: &str,
        target: &Target,
        revision: u64,
        reply: &[u8],
        delivered: i64,
    ) -> AckKind {
        let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(target.at_ms));
        if age >= TOKEN_LIFETIME {
            self.metrics.late("expired");
            return AckKind::Term;
        }
        let Some(kind) = parse_kind(&target.kind) else {
            return AckKind::Term;
        };
        if kind == Kind::Autocomplete {
            // The normal fate of a late autocomplete: its empty choices were the answer.
            self.metrics.late("dropped_autocomplete");
            return AckKind::Ack;
        }
        let follow = match follow_up(kind, reply) {
            Ok(FollowUp::Nothing) => return AckKind::Ack,
            Ok(follow) => follow,
            Err(error) => {
                tracing::warn!(interaction = id, %error, "late reply is not deliverable");
                self.metrics.late("invalid");
                return AckKind::Term;
            }
        };
        match self
            .rest
            .send(&target.application_id, &target.token, &follow)
            .await
        {
            Ok(()) => {
                // Recorded before the ack, so that a redelivery (lost ack) does not post
                // again. Should it fail, the `delivering` record still keeps every other
                // reply out; only this reply's redelivery would post again (an edit with
                // the same content).
                if let Err(error) = self.decisions.delivered(id, revision).await {
                    tracing::warn!(%error, interaction = id, "follow-up sent but not recorded as delivered");
                }
                self.metrics.late("delivered");
                AckKind::Ack
            }
            Err(RestError::Expired) => {
                self.metrics.late("expired");
                AckKind::Term
            }
            Err(RestError::Rejected(status)) => {
                tracing::warn!(interaction = id, status, "Discord refused the late reply");
                self.metrics.late("invalid");
                AckKind::Term
            }
            Err(RestError::Retry(after)) => {
                self.metrics.late("retried");
                AckKind::Nak(Some(retry_delay(delivered, after)))
            }
        }
    }
}

/// The nak delay of a reply whose interaction has no readable record `waited` after the
/// reply was stored, or `None`: give up.
fn undecided(waited: Duration, delivered: i64) -> Option<Duration> {
    (waited < UNDECIDED_GRACE).then(|| {
        backoff(delivered)
            .min(UNDECIDED_GRACE - waited)
            .max(MIN_NAK)
    })
}

/// The nak delay of a reply whose interaction was claimed `age` ago and not decided, or
/// `None`: the owner can no longer record `answered`, so the claim counts as a deferral.
fn claim_wait(age: Duration) -> Option<Duration> {
    (age < DECISION_WAIT).then(|| (DECISION_WAIT - age).max(MIN_NAK))
}

/// After a failed follow-up: Discord's Retry-After, but never less than the backoff, so
/// that retries outlast the token rather than the deliveries.
fn retry_delay(delivered: i64, retry_after: Option<Duration>) -> Duration {
    backoff(delivered).max(retry_after.unwrap_or_default())
}

/// 0.5 s doubling to 30 s, by delivery count (1 = the first delivery failed).
const BACKOFF: Exponential = Exponential::new(Duration::from_millis(500), Duration::from_secs(30));

fn backoff(delivered: i64) -> Duration {
    BACKOFF.delay(u32::try_from(delivered.max(1)).unwrap_or(u32::MAX))
}

/// How long one pull waits for replies (the server holds the request meanwhile).
const PULL_WAIT: Duration = Duration::from_secs(5);

/// How often a message being handled is marked in progress: three times per `ack_wait`,
/// so one late mark does not let the deadline pass.
fn progress_interval(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(MIN_NAK)
}

/// Runs `work`, telling the server every `every` that `message` is still being handled
/// (AckKind::Progress resets its ack deadline), so it is not delivered again meanwhile.
async fn in_progress(
    message: &jetstream::Message,
    every: Duration,
    work: impl std::future::Future<Output = AckKind>,
) -> AckKind {
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            ack = &mut work => return ack,
            _ = ticks.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "late-reply progress not sent");
                }
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows one reply through `step` (a nak delay, or `None`: done) from its first
    /// delivery; returns the time waited and the deliveries used.
    fn run(mut step: impl FnMut(Duration, i64) -> Option<Duration>) -> (Duration, i64) {
        let (mut waited, mut delivered) = (Duration::ZERO, 1);
        while let Some(delay) = step(waited, delivered) {
            waited += delay;
            delivered += 1;
            assert!(delivered < 10_000, "never ends");
        }
        (waited, delivered)
    }

    #[test]
    fn an_undecided_reply_gets_its_whole_grace_before_the_deliveries_run_out() {
        let (waited, delivered) = run(undecided);
        assert!(waited >= UNDECIDED_GRACE, "gave up after {waited:?}");
        assert!(
            waited < UNDECIDED_GRACE + MIN_NAK,
            "kept waiting: {waited:?}"
        );
        assert!(
            delivered < MAX_DELIVER,
            "{delivered} deliveries would hit max_deliver ({MAX_DELIVER}) first"
        );
    }

    #[test]
    fn an_unsettled_claim_becomes_a_deferral_after_the_decision_wait() {
        assert_eq!(claim_wait(Duration::ZERO), Some(DECISION_WAIT));
        assert_eq!(
            claim_wait(DECISION_WAIT - Duration::from_millis(1)),
            Some(MIN_NAK)
        );
        assert_eq!(claim_wait(DECISION_WAIT), None);
        // From a reply seen 2.6 s after the claim (just past a 2.5 s deadline).
        let (waited, delivered) = run(|w, _| claim_wait(Duration::from_millis(2600) + w));
        assert_eq!(waited, DECISION_WAIT - Duration::from_millis(2600));
        assert_eq!(delivered, 2);
        // The owner stops waiting for its `answered` write before the claim is taken over.
        assert!(DECISION_WAIT > crate::decisions::DISCORD_RESPONSE_LIMIT);
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty() {
        let ms = |d| backoff(d).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(6)], [500, 500, 1000, 16_000]);
        assert_eq!([ms(7), ms(MAX_DELIVER), ms(i64::MAX)], [30_000; 3]);
    }

    #[test]
    fn follow_up_retries_outlast_the_token_not_max_deliver() {
        // Discord asking for no wait at all, every time: the backoff still spaces retries.
        for retry_after in [None, Some(Duration::ZERO), Some(Duration::from_millis(100))] {
            let waited: Duration = (1..MAX_DELIVER).map(|d| retry_delay(d, retry_after)).sum();
            assert!(
                waited > TOKEN_LIFETIME,
                "{MAX_DELIVER} deliveries last only {waited:?} with {retry_after:?}"
            );
        }
        // A longer Retry-After is honoured.
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }
}
