//! One message's trip through the driver: filter, dedupe, deliver, then ack, nak with a
//! delay, hold (a paused sink, see [`crate::pause`]) or dead-letter. The message's body is read once ([`Body`]) and lent to each
//! step.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, AckKind, Message};
use futures::FutureExt;
use relaycord_bus::headers;
use tokio_util::sync::CancellationToken;

use crate::dedupe::Dedupe;
use crate::dlq::{self, DeadLetterInfo};
use crate::filter::type_and_guild;
use crate::holds::Holds;
use crate::metrics::DeliveryHandles;
use crate::pause::{Breaker, Verdict};
use crate::settings::DriverSettings;
use crate::{Body, Event, Outcome, Sink, SinkMetrics};

pub(crate) struct Worker<S> {
    pub sink: Arc<S>,
    pub js: jetstream::Context,
    pub settings: Arc<DriverSettings>,
    pub metrics: SinkMetrics,
    pub handles: DeliveryHandles,
    pub dedupe: Option<Dedupe>,
    /// Naks of untried events, which must not spend their attempts.
    pub holds: Holds,
    /// Cuts short what may wait indefinitely: storing a dead letter while the DLQ is down.
    pub shutdown: CancellationToken,
    pub breaker: Breaker,
}

impl<S: Sink> Worker<S> {
    pub async fn handle(&self, message: Message) {
        let body = Body::new(&message.payload);
        let Some((event, copy, held)) = self.prepare(&message, &body).await else {
            return;
        };
        if self.breaker.is_paused() {
            // Pulled just before the pause: back to the stream, untried.
            let delay = self.settings.pause.probe_interval;
            self.hold(&message, Some(held)).await;
            self.conclude(&message, AckKind::Nak(Some(delay)), "held")
                .await;
            return;
        }
        let Some(outcome) = self.attempt(&event, &message).await else {
            return;
        };
        self.settle(&message, &event, copy, &body, outcome).await;
    }

    /// Delivers one event to a paused sink, holding it (in-progress acks, no nak, so no
    /// delivery is spent) and trying again at each probe time until the receiver takes
    /// it or the worker stops. An event refused for good is let go after one try (a
    /// nak, delayed by `probe_max_interval`), so the next probe tries another.
    pub async fn probe(&self, message: Message) {
        let body = Body::new(&message.payload);
        let Some((event, copy, _)) = self.prepare(&message, &body).await else {
            return;
        };
        loop {
            let stopping = self.with_progress(
                async {
                    tokio::select! {
                        () = self.breaker.until_probe() => false,
                        () = self.shutdown.cancelled() => true,
                    }
                },
                &message,
            );
            if stopping.await {
                self.release(&message).await;
                return;
            }
            if !self.breaker.is_paused() {
                // Resumed meanwhile (another event got through): the normal path.
                if let Some(outcome) = self.attempt(&event, &message).await {
                    self.settle(&message, &event, copy, &body, outcome).await;
                }
                return;
            }
            let Some(outcome) = self.attempt(&event, &message).await else {
                return;
            };
            match outcome {
                outcome @ (Outcome::Delivered | Outcome::Skipped { .. }) => {
                    self.settle(&message, &event, copy, &body, outcome).await;
                    return;
                }
                Outcome::Retry { reason, after, .. } => {
                    self.breaker.probe_failed(&reason, after);
                }
                Outcome::Permanent { reason, .. } => {
                    // Maybe the receiver, maybe this one event (too large, a channel the
                    // bot may not post in): held, it would keep the sink paused forever.
                    // It goes back to the stream for later, and the next probe is another
                    // event; a resumed sink settles it as usual.
                    self.breaker.probe_failed(&reason, None);
                    let later = self.settings.pause.probe_max_interval;
                    self.conclude(&message, AckKind::Nak(Some(later)), "probe_failed")
                        .await;
                    return;
                }
            }
            self.count("probe_failed");
        }
    }

    /// The checks before any attempt: filter, envelope, dedupe, attempts left. `None`
    /// when they settled the message; else the event, which stored copy it is and how
    /// often it was held.
    async fn prepare<'m>(
        &self,
        message: &'m Message,
        body: &'m Body<'m>,
    ) -> Option<(Event<'m>, Option<u64>, u32)> {
        let s = &self.settings;
        let (attempt, held) = self.attempt_number(message).await;
        if !s.filter.accepts(&message.subject, body) {
            self.conclude(message, AckKind::Ack, "skipped").await;
            return None;
        }
        let Some(id) = event_id(message, body) else {
            // Not an envelope: no receiver could use it, and retrying cannot fix it.
            let reason = "message on the bus is not a Relaycord envelope";
            self.dead_letter(message, "", attempt, reason, None).await;
            return None;
        };
        let event = Event {
            id,
            event_type: type_and_guild(&message.subject).0,
            attempt,
            body,
            lane: None,
            replay: None,
        };
        // Which stored copy this is: redeliveries of it share the stream sequence.
        let info = message.info().ok();
        let copy = info.as_ref().map(|info| info.stream_sequence);
        // Unknown counts as a redelivery: looked up.
        let delivered = info.map_or(2, |info| info.delivered);
        if let Some(dedupe) = &self.dedupe
            && let Some(seq) = copy
            && dedupe.must_look_up(delivered)
            && dedupe.delivered_copy(event.id, seq).await
        {
            // Before the attempts check: a delivered event whose ack was lost on its
            // last attempt is done, not dead.
            self.conclude(message, AckKind::Ack, "duplicate").await;
            return None;
        }
        if attempt > s.max_attempts {
            let reason = "attempts exhausted (the worker stopped during the last attempt)";
            self.dead_letter(message, event.id, attempt - 1, reason, None)
                .await;
            return None;
        }
        Some((event, copy, held))
    }

    /// This delivery's attempt number: JetStream's deliveries minus the times the event
    /// went back untried; and those holds.
    async fn attempt_number(&self, message: &Message) -> (u32, u32) {
        let Ok(info) = message.info() else {
            return (1, 0);
        };
        let delivered = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        // A first delivery was never held: only redeliveries look it up.
        let held = match delivered {
            1 => 0,
            _ => self.holds.count(info.stream_sequence).await,
        };
        (delivered.saturating_sub(held).max(1), held)
    }

    /// Writes down that `message` goes back untried; `held`: its holds so far, when
    /// known.
    async fn hold(&self, message: &Message, held: Option<u32>) {
        let Ok(info) = message.info() else {
            return;
        };
        let seq = info.stream_sequence;
        let before = match held {
            Some(held) => held,
            None if info.delivered <= 1 => 0,
            None => self.holds.count(seq).await,
        };
        self.holds.add(seq, before).await;
    }

    /// One delivery attempt, timed, the sink's panic caught: `Err` carries what it said.
    pub(crate) async fn try_deliver(
        &self,
        event: &Event<'_>,
        message: &Message,
    ) -> Result<Outcome, Box<dyn Any + Send>> {
        let started = Instant::now();
        let outcome = AssertUnwindSafe(self.deliver_with_progress(event, message))
            .catch_unwind()
            .await;
        self.handles
            .attempt_latency
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// One delivery attempt, timed. `None` when the sink panicked: the message was
    /// nak'd already.
    async fn attempt(&self, event: &Event<'_>, message: &Message) -> Option<Outcome> {
        match self.try_deliver(event, message).await {
            Ok(outcome) => Some(outcome),
            Err(panic) => {
                // Left alone, the message would wait out ack_wait in silence. The
                // attempt counts (it is one of JetStream's deliveries), so an event that
                // panics every time still ends in the DLQ after max_attempts.
                let s = &self.settings;
                tracing::error!(sink = %s.name, id = %event.id, attempt = event.attempt, panic = %panic_message(&*panic), "the sink panicked; the event is redelivered at once");
                self.conclude(message, AckKind::Nak(None), "panicked").await;
                None
            }
        }
    }

    /// Acks, naks with a delay, holds (paused sink) or dead-letters after an attempt.
    async fn settle(
        &self,
        message: &Message,
        event: &Event<'_>,
        copy: Option<u64>,
        body: &Body<'_>,
        outcome: Outcome,
    ) {
        let s = &self.settings;
        let attempt = event.attempt;
        let (reason, status) = match outcome {
            Outcome::Delivered => {
                if let Some(dedupe) = &self.dedupe
                    && let Some(seq) = copy
                {
                    dedupe.record_copy(event.id, seq).await;
                }
                self.breaker.delivered();
                self.conclude(message, AckKind::Ack, "delivered").await;
                if let Some(age) = end_to_end(body) {
                    self.handles.end_to_end_latency.observe(age.as_secs_f64());
                }
                return;
            }
            Outcome::Skipped { reason } => {
                tracing::debug!(sink = %s.name, id = %event.id, %reason, "skipped");
                self.conclude(message, AckKind::Ack, "skipped").await;
                return;
            }
            Outcome::Retry {
                reason,
                status,
                after,
            } if attempt < s.max_attempts => {
                let delay = s.backoff.next_delay(attempt, after);
                tracing::debug!(sink = %s.name, id = %event.id, attempt, ?status, %reason, ?delay, "delivery failed; retrying");
                self.conclude(message, AckKind::Nak(Some(delay)), "retried")
                    .await;
                return;
            }
            Outcome::Retry { reason, status, .. } => {
                (format!("attempts exhausted: {reason}"), status)
            }
            Outcome::Permanent { reason, status } => (reason, status),
        };
        match self.breaker.failed(&reason) {
            Verdict::DeadLetter => {
                self.dead_letter(message, event.id, attempt, &reason, status)
                    .await;
            }
            Verdict::Hold(delay) => {
                self.conclude(message, AckKind::Nak(Some(delay)), "held")
                    .await;
            }
        }
    }

    /// Hands a message pulled but never started back to the server for another worker.
    pub async fn release(&self, message: &Message) {
        self.hold(message, None).await;
        self.conclude(message, AckKind::Nak(None), "released").await;
    }

    /// Runs the delivery, telling JetStream every half ack-wait that it is still
    /// being worked on, so a slow receiver does not cause a parallel redelivery.
    async fn deliver_with_progress(&self, event: &Event<'_>, message: &Message) -> Outcome {
        self.with_progress(self.sink.deliver(event), message).await
    }

    /// Runs `work`, sending an in-progress ack every half ack-wait meanwhile.
    async fn with_progress<F: Future>(&self, work: F, message: &Message) -> F::Output {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(self.settings.ack_wait / 2);
        tick.tick().await;
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = tick.tick() => self.ack(message, AckKind::Progress).await,
            }
        }
    }

    /// Moves a message to `relaycord.dlq.<sink>` and terminates it; false when it was
    /// given back instead (the worker is stopping). While the dead letter
    /// cannot be stored (DLQ stream missing, NATS unreachable), it keeps trying in this
    /// worker with in-progress acks instead of nak'ing: a nak would spend one of the
    /// consumer's `max_deliver` deliveries per failure, and once those are gone the
    /// server never hands the message out again, so it would be neither delivered nor
    /// dead-lettered. Only a stopping worker gives the message back (nak).
    pub(crate) async fn dead_letter(
        &self,
        message: &Message,
        id: &str,
        attempts: u32,
        reason: &str,
        status: Option<u16>,
    ) -> bool {
        let s = &self.settings;
        let info = DeadLetterInfo {
            sink: &s.name,
            id,
            event_type: message
                .headers
                .as_ref()
                .and_then(|m| m.get(headers::TYPE))
                .map(|t| t.as_str()),
            reason,
            status,
            attempts,
            source_seq: message.info().ok().map(|i| i.stream_sequence),
        };
        let mut failures = 0;
        loop {
            let stored = dlq::publish(&self.js, &info, message.payload.clone());
            let error = match self.with_progress(stored, message).await {
                Ok(()) => {
                    tracing::warn!(sink = %s.name, %id, attempts, ?status, %reason, "dead-lettered");
                    self.conclude(message, AckKind::Term, "dead_lettered").await;
                    return true;
                }
                Err(dlq::StoreError::TooLarge { bytes, max_payload }) => {
                    tracing::error!(sink = %s.name, %id, bytes, max_payload, "LOST: the dead letter can never fit the NATS server's max_payload; the event stays in its stream, find it by its id");
                    self.conclude(message, AckKind::Term, "abandoned").await;
                    return true;
                }
                Err(error) => error,
            };
            failures += 1;
            self.count("dead_letter_failed");
            tracing::error!(sink = %s.name, %id, %error, failures, "cannot store dead letter; retrying");
            let wait = tokio::time::sleep(s.backoff.ceiling(failures));
            let stopping = self.with_progress(
                async {
                    tokio::select! {
                        () = wait => false,
                        () = self.shutdown.cancelled() => true,
                    }
                },
                message,
            );
            if stopping.await {
                self.give_back_undead(message, id).await;
                return false;
            }
        }
    }

    /// A stopping worker hands back a message it could not dead-letter. The consumer's
    /// deliveries are unlimited, so the next worker tries to store it again.
    async fn give_back_undead(&self, message: &Message, id: &str) {
        let s = &self.settings;
        tracing::warn!(sink = %s.name, %id, "stopping before the dead letter could be stored; released for another worker");
        self.ack(message, AckKind::Nak(Some(s.backoff.max))).await;
    }

    /// Settles a message with `kind`, counted as `outcome` first: once acked or nak'd the
    /// event can be redelivered and settled again before this task runs on, and the
    /// metrics must not say less than the stream has seen.
    pub(crate) async fn conclude(&self, message: &Message, kind: AckKind, outcome: &str) {
        self.count(outcome);
        self.ack(message, kind).await;
    }

    pub(crate) async fn ack(&self, message: &Message, kind: AckKind) {
        // A lost ack means a redelivery later, which dedupe (or the receiver) absorbs:
        // logging is all that is useful here.
        if let Err(error) = message.ack_with(kind).await {
            let sink = &self.settings.name;
            tracing::warn!(%sink, %error, ?kind, "ack failed; the message will be redelivered");
        }
    }

    pub(crate) fn count(&self, outcome: &str) {
        if relaycord_bus::trace::enabled() {
            tracing::Span::current().record("outcome", outcome);
        }
        match outcome {
            "delivered" => self.handles.delivered.inc(),
            _ => self
                .metrics
                .deliveries
                .with_label_values(&[&self.settings.name, outcome])
                .inc(),
        }
    }
}

/// What a panic said, when it said it with a string (as `panic!` and `expect` do).
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// The dedupe id: the `Nats-Msg-Id` header, else the envelope's own `id`.
pub(crate) fn event_id<'a>(message: &'a Message, body: &'a Body<'_>) -> Option<&'a str> {
    if let Some(id) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::MSG_ID))
    {
        return Some(id.as_str());
    }
    body.envelope().ok().map(|e| e.id.as_ref())
}

pub(crate) fn end_to_end(body: &Body<'_>) -> Option<Duration> {
    let envelope = body.envelope().ok()?;
    SystemTime::now()
        .duration_since(envelope.received_at_time()?)
        .ok()
}
