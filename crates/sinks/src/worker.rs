//! One message's trip through the driver: filter, dedupe, deliver, then ack, nak with a
//! delay, or dead-letter.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, AckKind, Message};
use relaycord_bus::{Envelope, headers};

use crate::dedupe::Dedupe;
use crate::dlq::{self, DeadLetterInfo};
use crate::driver::{DriverSettings, ack};
use crate::filter::type_and_guild;
use crate::{Event, Outcome, Sink, SinkMetrics};

pub(crate) struct Worker<S> {
    pub sink: Arc<S>,
    pub js: jetstream::Context,
    pub settings: Arc<DriverSettings>,
    pub metrics: SinkMetrics,
    pub dedupe: Option<Dedupe>,
}

impl<S: Sink> Worker<S> {
    pub async fn handle(&self, message: Message) {
        let s = &self.settings;
        let attempt = message.info().map_or(1, |i| i.delivered.max(1) as u32);
        if !s.filter.accepts(&message.subject, &message.payload) {
            self.count("skipped");
            self.ack(&message, AckKind::Ack).await;
            return;
        }
        let Some(id) = event_id(&message) else {
            // Not an envelope: no receiver could use it, and retrying cannot fix it.
            let reason = "message on the bus is not a Relaycord envelope";
            self.dead_letter(&message, "", attempt, reason, None).await;
            return;
        };
        let event = Event {
            id,
            event_type: type_and_guild(&message.subject).0.to_owned(),
            payload: message.payload.clone(),
            attempt,
        };
        if attempt > s.max_attempts {
            let reason = "attempts exhausted (the worker stopped during the last attempt)";
            self.dead_letter(&message, &event.id, attempt - 1, reason, None)
                .await;
            return;
        }
        if let Some(dedupe) = &self.dedupe
            && dedupe.delivered(&event.id).await
        {
            // Checked on first deliveries too: the same event published again after the
            // stream's duplicate window is a new message with the same id.
            self.count("duplicate");
            self.ack(&message, AckKind::Ack).await;
            return;
        }

        let started = Instant::now();
        let outcome = self.deliver_with_progress(&event, &message).await;
        self.metrics
            .attempt_latency
            .with_label_values(&[&s.name])
            .observe(started.elapsed().as_secs_f64());

        match outcome {
            Outcome::Delivered => {
                if let Some(dedupe) = &self.dedupe {
                    dedupe.record(&event.id).await;
                }
                self.ack(&message, AckKind::Ack).await;
                self.count("delivered");
                if let Some(age) = end_to_end(&event.payload) {
                    self.metrics
                        .end_to_end_latency
                        .with_label_values(&[&s.name])
                        .observe(age.as_secs_f64());
                }
            }
            Outcome::Retry {
                reason,
                status,
                after,
            } if attempt < s.max_attempts => {
                let delay = s.backoff.next_delay(attempt, after);
                tracing::debug!(sink = %s.name, id = %event.id, attempt, ?status, %reason, ?delay, "delivery failed; retrying");
                self.ack(&message, AckKind::Nak(Some(delay))).await;
                self.count("retried");
            }
            Outcome::Retry { reason, status, .. } => {
                let reason = format!("attempts exhausted: {reason}");
                self.dead_letter(&message, &event.id, attempt, &reason, status)
                    .await;
            }
            Outcome::Permanent { reason, status } => {
                self.dead_letter(&message, &event.id, attempt, &reason, status)
                    .await;
            }
        }
    }

    /// Hands a message pulled but never started back to the server for another worker.
    pub async fn release(&self, message: &Message) {
        self.ack(message, AckKind::Nak(None)).await;
        self.count("released");
    }

    /// Runs the delivery, telling JetStream every half ack-wait that it is still
    /// being worked on, so a slow receiver does not cause a parallel redelivery.
    async fn deliver_with_progress(&self, event: &Event, message: &Message) -> Outcome {
        let deliver = self.sink.deliver(event);
        tokio::pin!(deliver);
        let mut tick = tokio::time::interval(self.settings.ack_wait / 2);
        tick.tick().await;
        loop {
            tokio::select! {
                outcome = &mut deliver => return outcome,
                _ = tick.tick() => self.ack(message, AckKind::Progress).await,
            }
        }
    }

    /// Moves a message to `relaycord.dlq.<sink>` and terminates it. If the dead letter
    /// cannot be stored, the message is nak'ed instead: it is never dropped here.
    async fn dead_letter(
        &self,
        message: &Message,
        id: &str,
        attempts: u32,
        reason: &str,
        status: Option<u16>,
    ) {
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
        match dlq::publish(&self.js, &info, message.payload.clone()).await {
            Ok(()) => {
                tracing::warn!(sink = %s.name, %id, attempts, ?status, %reason, "dead-lettered");
                self.ack(message, AckKind::Term).await;
                self.count("dead_lettered");
            }
            Err(error) => {
                tracing::error!(sink = %s.name, %id, %error, "cannot store dead letter; will retry");
                self.ack(message, AckKind::Nak(Some(s.backoff.max))).await;
            }
        }
    }

    async fn ack(&self, message: &Message, kind: AckKind) {
        ack(&self.settings.name, message, kind).await;
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .deliveries
            .with_label_values(&[&self.settings.name, outcome])
            .inc();
    }
}

/// The dedupe id: the `Nats-Msg-Id` header, else the envelope's own `id`.
fn event_id(message: &Message) -> Option<String> {
    if let Some(id) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::MSG_ID))
    {
        return Some(id.as_str().to_owned());
    }
    Envelope::from_slice(&message.payload)
        .ok()
        .map(|e| e.id.into_owned())
}

fn end_to_end(payload: &[u8]) -> Option<Duration> {
    let envelope = Envelope::from_slice(payload).ok()?;
    SystemTime::now()
        .duration_since(envelope.received_at_time()?)
        .ok()
}
