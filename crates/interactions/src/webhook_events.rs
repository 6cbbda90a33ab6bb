//! `POST /webhook-events`: Discord's webhook events (the application's Webhook Events URL).
//!
//! The same gate as interactions (endpoint.rs: signature and timestamp over the exact
//! bytes, body limits and budget) and then: PING (`type: 0`) gets 204; an event is
//! published to `<prefix>.webhooks.<EVENT_TYPE>.<guild|none>` and acknowledged with 204
//! only after JetStream's ack. An event that could not be stored gets 503, so Discord
//! sends it again (with backoff, for up to 10 minutes).
//!
//! Retries are the same event under the same id (`wh:…`, see relaycord_bus::webhook_event),
//! so JetStream keeps one copy within its duplicate window. Discord retries for longer than
//! the default window (5 minutes), so the ids of stored events are also kept in a KV
//! bucket (webhook_seen.rs): a retry that finds its id there is acknowledged unpublished.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use relaycord_bus::OutgoingMessage;
use relaycord_bus::webhook_event::{WebhookBody, WebhookEvent};
use tokio::time::Instant as TokioInstant;

use crate::endpoint::{Answer, Endpoint};
use crate::serve::ConnMark;

pub(crate) async fn handle(
    State(endpoint): State<Arc<Endpoint>>,
    mark: Option<axum::Extension<ConnMark>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let span = relaycord_bus::span!(
        "webhook_event",
        otel.kind = "server",
        outcome = tracing::field::Empty
    );
    let mark = mark.map(|axum::Extension(mark)| mark);
    let answer = endpoint.webhook_event(&headers, body, started, mark.as_ref());
    let answer = crate::endpoint::traced(span, &headers, answer).await;
    endpoint
        .metrics
        .webhook_event(answer.outcome, answer.reason);
    answer.into_response()
}

impl Endpoint {
    async fn webhook_event(
        &self,
        headers: &HeaderMap,
        body: Body,
        started: Instant,
        mark: Option<&ConnMark>,
    ) -> Answer {
        let verified = match self.verified(headers, body, mark).await {
            Ok(verified) => verified,
            Err(refused) => return refused,
        };
        let parsed = std::str::from_utf8(&verified.body)
            .map_err(|e| e.to_string())
            .and_then(|text| WebhookBody::parse(text).map_err(|e| e.to_string()));
        let event = match parsed {
            Ok(WebhookBody::Ping) => return Answer::no_content("pong"),
            Ok(WebhookBody::Event(event)) => event,
            Err(error) => {
                tracing::debug!(%error, "malformed webhook event after a valid signature");
                return Answer::error(StatusCode::BAD_REQUEST, "rejected", "malformed");
            }
        };
        let deadline = TokioInstant::from_std(started + self.settings.deadline);
        let id = event.dedupe_key();
        match tokio::time::timeout_at(deadline, self.store_webhook_event(&event)).await {
            Ok(None) => Answer::no_content("duplicate"),
            Ok(Some(ack)) => {
                // Off the response path: the event is stored, and the 204 must not wait.
                let (seen, id, seq) = (self.webhook_seen.clone(), id.to_owned(), ack.sequence);
                tokio::spawn(async move { seen.insert(&id, seq).await });
                Answer::no_content(if ack.duplicate { "duplicate" } else { "stored" })
            }
            Err(_) => {
                tracing::warn!(
                    id,
                    "cannot store the webhook event before the deadline; Discord will retry it"
                );
                Answer::unrecorded("publish")
            }
        }
    }

    /// Publishes the event and waits for JetStream's ack; `None` when it is known to be
    /// stored already.
    async fn store_webhook_event(
        &self,
        event: &WebhookEvent<'_>,
    ) -> Option<jetstream::publish::PublishAck> {
        let id = event.dedupe_key();
        if self.webhook_seen.contains(id).await {
            return None;
        }
        let span = relaycord_bus::span!("publish", otel.kind = "producer", %id);
        let message = span
            .in_scope(|| OutgoingMessage::event(event.subject(&self.subjects), &event.envelope()));
        Some(self.publish_acked(message, span).await)
    }
}
