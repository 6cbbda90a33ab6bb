//! A shard's dispatches onto the bus: nothing already read is dropped, a failed publish
//! is retried with the same `Nats-Msg-Id` until JetStream acknowledges it, and only an
//! event the server can never take (over its max_payload) is skipped, loudly.
//!
//! Some failures pass by themselves (a timeout, a reconnect); others last until an
//! operator acts: no stream covers the subject, the NATS user may not publish to it, the
//! stream refuses the message. Those are still retried — dropping the event would lose
//! it, and the fix brings it through — but each is counted by kind and logged as an
//! error naming the subject and the fix, and the shard's oldest unacknowledged publish,
//! which then stops aging away, fails readiness past `ingest.max_unacked_age`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::traits::TimeoutProvider;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use prometheus::{IntCounter, IntCounterVec};
use relaycord_bus::backoff::Exponential;
use relaycord_bus::interaction::InteractionKeys;
use relaycord_bus::subject::BusSubject;
use relaycord_bus::{Dispatch, Envelope, OutgoingMessage, Subjects};
use tracing::Instrument;

use crate::metrics::IngestMetrics;
use crate::window::AckWindow;

/// 100 ms, 200 ms, ... 5 s. No jitter needed: each shard retries its own window, and the
/// server, not contention, is what is down.
const RETRY: Exponential = Exponential::new(Duration::from_millis(100), Duration::from_secs(5));

/// How often one shard logs an error of one kind needing an operator: every event
/// waiting in the window fails the same way, and one line names the cause.
const ALERT_EVERY: Duration = Duration::from_secs(10);

/// "No responders" also answers a publish to a replicated stream that is electing a
/// leader after a node died, for a few seconds (3–7 s seen in the soak, longer on a
/// loaded host): only when it lasts longer is a missing stream the likely cause, worth an
/// operator's attention (an error line, `kind="no_stream"` and its alert). Until then it
/// counts as `unavailable`, like any other NATS failover.
const NO_STREAM_GRACE: Duration = Duration::from_secs(15);

/// Why a publish failed, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Failure {
    /// No stream covers the subject (no responders, status 503).
    NoStream,
    /// The server's permissions forbid this user to publish to the subject.
    Permission,
    /// JetStream answered with an API error (stream limits, sealed stream...).
    Rejected,
    /// No ack in time: a slow or failing-over server.
    Timeout,
    /// Not connected, or the client's own limits.
    Unavailable,
}

impl Failure {
    fn classify(error: &PublishError, subject: &str, ack_timeout: Duration) -> Self {
        match error.kind() {
            PublishErrorKind::StreamNotFound => Self::NoStream,
            // The server drops a forbidden publish and says so only in an asynchronous
            // `-ERR`, recorded by the connection: the ack just never comes.
            PublishErrorKind::TimedOut
                if relaycord_bus::denials::publish_denied(subject, ack_timeout * 3) =>
            {
                Self::Permission
            }
            PublishErrorKind::TimedOut => Self::Timeout,
            PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                Self::Rejected
            }
            // "duplicate message id is in process" (409/10158): the first publish of this id
            // is still being stored (a clustered stream mid-failover); the retry gets its
            // ack once it is. Nothing for an operator to fix (found by the soak).
            PublishErrorKind::Other
                if std::error::Error::source(error)
                    .and_then(|e| e.downcast_ref::<async_nats::jetstream::Error>())
                    .is_some_and(|e| {
                        e.error_code()
                            == async_nats::jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
                    }) =>
            {
                Self::Timeout
            }
            PublishErrorKind::Other
                if std::error::Error::source(error)
                    .is_some_and(|e| e.is::<async_nats::jetstream::Error>()) =>
            {
                Self::Rejected
            }
            _ => Self::Unavailable,
        }
    }

    /// The `kind` label of `relaycord_publish_errors_total`, one of
    /// [`crate::metrics::PUBLISH_ERROR_KINDS`].
    fn label(self) -> &'static str {
        match self {
            Self::NoStream => "no_stream",
            Self::Permission => "permission",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
        }
    }

    /// What a failure counts as once the publish has been failing for `failing`.
    fn after(self, failing: Duration) -> Self {
        match self {
            Self::NoStream if failing < NO_STREAM_GRACE => Self::Unavailable,
            failure => failure,
        }
    }

    /// What an operator must do; `None` when it passes by itself.
    fn fix(self) -> Option<&'static str> {
        match self {
            Self::NoStream => Some(
                "no JetStream stream covers this subject: restore the stream (relaycord creates \
                 it at start, covering `<prefix>.gateway.>` and `<prefix>.interactions.>`) or \
                 its subjects; if it exists and is replicated, it has had no leader all this \
                 time (see the nats-server logs for lost quorum)",
            ),
            Self::Permission => Some(
                "the NATS user may not publish to this subject: allow `<prefix>.gateway.>` and \
                 `<prefix>.interactions.>` in its publish permissions",
            ),
            Self::Rejected => Some(
                "JetStream refuses the message: check the stream's limits (max_msgs, max_bytes \
                 with discard new, max_msg_size) and that it is not sealed",
            ),
            Self::Timeout | Self::Unavailable => None,
        }
    }
}

/// Rate-limits the error lines of failures needing an operator, per kind, per shard.
#[derive(Default)]
pub(crate) struct Alerts {
    last: Mutex<HashMap<(u32, Failure), Instant>>,
}

impl Alerts {
    fn due(&self, shard: u32, failure: Failure) -> bool {
        let mut last = self.last.lock().expect("alerts lock");
        let now = Instant::now();
        match last.get(&(shard, failure)) {
            Some(at) if now.duration_since(*at) < ALERT_EVERY => false,
            _ => {
                last.insert((shard, failure), now);
                true
            }
        }
    }
}

/// A shard's side of publishing, built once per session: its JetStream context, with a
/// bound on unacknowledged publishes of its own (the shard loop's `ShardContext::shard_js`),
/// and its metric handles resolved once, so that an event costs no label lookup and its
/// ack future one reference count.
pub(crate) struct Publisher {
    lane: Arc<Lane>,
    subjects: Subjects,
    /// `relaycord_gateway_events_total` by type: Discord's fixed set of event types.
    events: HashMap<String, IntCounter>,
    events_vec: IntCounterVec,
}

/// What a publish needs until its ack, shared by the shard's publishes in flight.
struct Lane {
    shard: u32,
    js: jetstream::Context,
    metrics: IngestMetrics,
    alerts: Arc<Alerts>,
}

impl Publisher {
    /// Publishes of shard `shard` through `js`, on `subjects`. Takes its parts rather than
    /// the shard's context, so that publishing does not depend on the shard loop that
    /// calls it.
    pub fn new(
        shard: u32,
        js: jetstream::Context,
        subjects: &Subjects,
        metrics: &IngestMetrics,
        alerts: &Arc<Alerts>,
    ) -> Self {
        Self {
            lane: Arc::new(Lane {
                shard,
                js,
                metrics: metrics.clone(),
                alerts: Arc::clone(alerts),
            }),
            subjects: subjects.clone(),
            events: HashMap::new(),
            events_vec: metrics.events.clone(),
        }
    }

    /// Counts a dispatch of `event_type` received.
    pub fn count(&mut self, event_type: &str) {
        match self.events.get(event_type) {
            Some(counter) => counter.inc(),
            None => {
                let counter = self.events_vec.with_label_values(&[event_type]);
                counter.inc();
                self.events.insert(event_type.to_owned(), counter);
            }
        }
    }

    /// Sends the publish of `dispatch` under `id` (its `dedupe::gateway_key`, which the
    /// caller has already made to sort the dispatch) and puts its ack in the window.
    pub async fn publish(&self, dispatch: &Dispatch<'_>, id: String, window: &mut AckWindow) {
        let received = Instant::now();
        let shard_id = self.lane.shard;
        let event_type = dispatch.event_type.as_ref();
        let seq = dispatch.seq;
        let envelope = Envelope::gateway(
            &id,
            event_type,
            shard_id,
            seq,
            dispatch.guild_id(),
            dispatch.data,
        );
        // Traces (when on): the dispatch read from the gateway, and its publish until the
        // ack, whose context the message carries to every consumer.
        let receive = relaycord_bus::span!(
            "gateway.receive",
            otel.kind = "consumer",
            shard = shard_id,
            seq,
            event_type
        );
        let publishing =
            relaycord_bus::span!(parent: &receive, "publish", otel.kind = "producer", %id);
        let outgoing = publishing
            .in_scope(|| OutgoingMessage::event(subject_of(dispatch, &self.subjects), &envelope));
        let resend = Resend {
            payload: outgoing.payload.clone(),
            shard: envelope.shard,
            id,
            event_type: event_type.to_owned(),
        };
        let (subject, message) = outgoing.into_parts();

        // Sending here, in read order, keeps a shard's events in gateway order on the
        // stream whenever no publish has to be retried.
        let first = self.lane.js.send_publish(subject.clone(), message).await;
        // The client refuses a message over the server's max_payload before sending it,
        // and would on every retry: retrying would wedge the shard's window for good.
        // Skipping it loses one event, loudly.
        if let Err(error) = &first
            && error.kind() == PublishErrorKind::MaxPayloadExceeded
        {
            self.lane.metrics.oversized.inc();
            tracing::error!(
                shard = shard_id,
                id = %resend.id,
                event_type,
                %error,
                "event larger than the NATS server's max_payload: skipped; raise max_payload \
                 in the nats-server config (e.g. `max_payload: 8MB`) to carry it"
            );
            window.push_done(seq);
            return;
        }
        let lane = Arc::clone(&self.lane);
        let acked = async move {
            let ack = lane.acked(subject, &resend, first).await;
            let metrics = &lane.metrics;
            metrics.published.inc();
            if ack.duplicate {
                metrics.duplicates.inc();
            }
            metrics
                .publish_latency
                .observe(received.elapsed().as_secs_f64());
        };
        // Inside `publishing`, a retry's `traceparent` is the first attempt's (Resend).
        window.push(seq, acked.instrument(publishing));
    }
}

/// What a retry needs to send a publish again: the payload is shared with the first
/// attempt, the headers are built again from these (the same ones, see
/// `OutgoingMessage::event_headers`) instead of copied for every event.
struct Resend {
    payload: bytes::Bytes,
    id: String,
    event_type: String,
    shard: Option<u32>,
}

impl Resend {
    /// Called inside the publish's span, so that `traceparent` is the first attempt's.
    fn message(&self) -> PublishMessage {
        PublishMessage::build()
            .payload(self.payload.clone())
            .headers(OutgoingMessage::event_headers(
                &self.id,
                &self.event_type,
                self.shard,
            ))
    }
}

/// Gateway events go to `<prefix>.gateway.<TYPE>.<guild>`. Interactions delivered over
/// the gateway go where the HTTP endpoint puts them, `<prefix>.interactions.<kind>.<name>`
/// with the same `ix:<id>` key, so consumers need not care how Discord delivered them.
fn subject_of(dispatch: &Dispatch<'_>, subjects: &Subjects) -> BusSubject {
    if dispatch.event_type == "INTERACTION_CREATE" {
        match InteractionKeys::parse(dispatch.data.get()) {
            Ok(keys) => return keys.subject(subjects),
            Err(error) => {
                tracing::warn!(%error, "unroutable INTERACTION_CREATE; publishing it as a gateway event")
            }
        }
    }
    subjects.gateway(&dispatch.event_type, dispatch.guild_id())
}

impl Lane {
    /// Retries a publish until JetStream acknowledges it. Retrying with the same
    /// `Nats-Msg-Id` is safe: if an earlier attempt did land, the server reports a
    /// duplicate.
    async fn acked(
        &self,
        subject: String,
        resend: &Resend,
        first: Result<PublishAckFuture, PublishError>,
    ) -> jetstream::publish::PublishAck {
        let mut pending = Some(first);
        let mut attempt: u32 = 0;
        let mut failing_since = None;
        loop {
            let sent = match pending.take() {
                Some(sent) => sent,
                None => {
                    self.js
                        .send_publish(subject.clone(), resend.message())
                        .await
                }
            };
            let error = match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) => return ack,
                    Err(error) => error,
                },
                Err(error) => error,
            };
            let failing = failing_since.get_or_insert_with(Instant::now).elapsed();
            let failure = Failure::classify(&error, &subject, self.js.timeout()).after(failing);
            self.report(failure, &subject, &error, attempt);
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(retry_delay(attempt - 1)).await;
        }
    }

    fn report(&self, failure: Failure, subject: &str, error: &PublishError, attempt: u32) {
        self.metrics
            .publish_errors
            .with_label_values(&[failure.label()])
            .inc();
        let shard = self.shard;
        let kind = failure.label();
        let cause = std::error::Error::source(error).map(ToString::to_string);
        match failure.fix() {
            Some(fix) if self.alerts.due(shard, failure) => tracing::error!(
                shard, %subject, kind, %error, cause, attempt,
                "publish cannot succeed until fixed: {fix}; the shard keeps retrying and \
                 stops reading once its window is full"
            ),
            _ if attempt == 0 => tracing::warn!(
                shard, %subject, kind, %error, cause,
                "publish not acknowledged; retrying until it is"
            ),
            _ => tracing::debug!(shard, %subject, kind, %error, attempt, "publish retry failed"),
        }
    }
}

/// The wait after `attempt` failed retries (0 = the first publish failed).
fn retry_delay(attempt: u32) -> Duration {
    RETRY.delay(attempt.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(3), Duration::from_millis(800));
        assert_eq!(retry_delay(40), Duration::from_secs(5));
    }

    #[test]
    fn permanent_failures_are_told_from_passing_ones() {
        let timeout = Duration::from_secs(10);
        let classify =
            |kind, subject: &str| Failure::classify(&PublishError::new(kind), subject, timeout);
        assert_eq!(
            classify(PublishErrorKind::StreamNotFound, "a.b"),
            Failure::NoStream
        );
        assert_eq!(
            classify(PublishErrorKind::TimedOut, "a.b"),
            Failure::Timeout
        );
        relaycord_bus::denials::record(
            r#"Permissions Violation for Publish to "ingest.test.denied""#,
        );
        assert_eq!(
            classify(PublishErrorKind::TimedOut, "ingest.test.denied"),
            Failure::Permission
        );
        assert_eq!(
            classify(PublishErrorKind::BrokenPipe, "a.b"),
            Failure::Unavailable
        );
        let api_error: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":503,"err_code":10077,"description":"maximum messages exceeded"}"#,
        )
        .unwrap();
        let rejected = PublishError::with_source(PublishErrorKind::Other, api_error);
        assert_eq!(
            Failure::classify(&rejected, "a.b", timeout),
            Failure::Rejected
        );
        let in_process: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":409,"err_code":10158,"description":"duplicate message id is in process"}"#,
        )
        .unwrap();
        let in_process = PublishError::with_source(PublishErrorKind::Other, in_process);
        assert_eq!(
            Failure::classify(&in_process, "a.b", timeout),
            Failure::Timeout,
            "a retry racing its first publish passes by itself"
        );
        for failure in [Failure::NoStream, Failure::Permission, Failure::Rejected] {
            assert!(failure.fix().is_some());
            assert!(crate::metrics::PUBLISH_ERROR_KINDS.contains(&failure.label()));
        }
    }

    #[test]
    fn no_responders_need_an_operator_only_past_a_leader_election() {
        let soon = Duration::from_secs(2);
        assert_eq!(Failure::NoStream.after(soon), Failure::Unavailable);
        assert_eq!(Failure::NoStream.after(NO_STREAM_GRACE), Failure::NoStream);
        assert_eq!(Failure::Permission.after(soon), Failure::Permission);
        assert_eq!(Failure::Rejected.after(soon), Failure::Rejected);
        assert_eq!(Failure::Unavailable.after(soon).fix(), None);
    }

    #[test]
    fn one_alert_line_per_kind_and_shard_at_a_time() {
        let alerts = Alerts::default();
        assert!(alerts.due(0, Failure::NoStream));
        assert!(!alerts.due(0, Failure::NoStream));
        assert!(alerts.due(1, Failure::NoStream));
        assert!(alerts.due(0, Failure::Permission));
    }
}
