//! `POST /interactions`: verify, publish, route, answer within the deadline.
//!
//! Order matters and is the security boundary: nothing is parsed, published or routed
//! before the signature and timestamp are verified over the exact bytes received.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_nats::HeaderMap as NatsHeaders;
use async_nats::jetstream;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use relaycord_bus::interaction::{InteractionKeys, Kind};
use relaycord_bus::{Envelope, Source, Subjects, headers};
use serde_json::value::RawValue;
use tokio::time::Instant as TokioInstant;

use crate::Settings;
use crate::decisions::{Decision, Decisions};
use crate::metrics::InteractionMetrics;
use crate::replies::ReplyMux;
use crate::response::{self, InvalidReply};
use crate::routes::{Action, Handler, Route, Routes};
use crate::verify::{SIGNATURE_HEADER, TIMESTAMP_HEADER, Verifier};

/// Headers Relaycord adds to the requests it sends handlers.
pub mod handler_headers {
    pub const INTERACTION_ID: &str = "Relaycord-Interaction-Id";
    pub const KIND: &str = "Relaycord-Interaction-Kind";
}

pub(crate) struct Endpoint {
    pub verifier: Verifier,
    pub routes: Routes,
    pub settings: Settings,
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub http: reqwest::Client,
    pub mux: ReplyMux,
    pub decisions: Decisions,
    pub metrics: InteractionMetrics,
}

/// The response and how to count it.
struct Answer {
    status: StatusCode,
    body: Bytes,
    outcome: &'static str,
    reason: &'static str,
}

impl Answer {
    fn json(body: Bytes, outcome: &'static str) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            outcome,
            reason: "",
        }
    }

    fn error(status: StatusCode, outcome: &'static str, reason: &'static str) -> Self {
        Self {
            status,
            body: Bytes::from(format!(r#"{{"error":"{reason}"}}"#)),
            outcome,
            reason,
        }
    }
}

pub(crate) async fn handle(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = endpoint.process(&headers, body, started).await;
    let m = &endpoint.metrics;
    m.request(answer.outcome, answer.reason);
    m.response_latency
        .with_label_values(&[answer.outcome])
        .observe(started.elapsed().as_secs_f64());
    (
        answer.status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

impl Endpoint {
    async fn process(&self, headers: &HeaderMap, body: Body, started: Instant) -> Answer {
        let limit = self.settings.max_body;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Answer::error(StatusCode::PAYLOAD_TOO_LARGE, "rejected", "too_large");
        }
        let Ok(body) = axum::body::to_bytes(body, limit).await else {
            return Answer::error(StatusCode::PAYLOAD_TOO_LARGE, "rejected", "too_large");
        };
        let header = |name| headers.get(name).map(|v| v.as_bytes());
        if let Err(rejection) = self.verifier.verify(
            header(SIGNATURE_HEADER),
            header(TIMESTAMP_HEADER),
            &body,
            SystemTime::now(),
        ) {
            return Answer::error(StatusCode::UNAUTHORIZED, "rejected", rejection.as_str());
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            return Answer::error(StatusCode::BAD_REQUEST, "rejected", "malformed");
        };
        let keys = match InteractionKeys::parse(text) {
            Ok(keys) => keys,
            Err(error) => {
                tracing::debug!(%error, "malformed interaction after a valid signature");
                return Answer::error(StatusCode::BAD_REQUEST, "rejected", "malformed");
            }
        };
        if keys.kind == Kind::Ping {
            return Answer::json(response::pong(), "pong");
        }
        let deadline = TokioInstant::from_std(started + self.settings.deadline);
        // Bounded by the deadline too: past it Discord has given up on the answer anyway.
        let published = tokio::time::timeout_at(deadline, self.publish(&keys, text))
            .await
            .unwrap_or_else(|_| Err("no JetStream ack before the deadline".into()));
        if let Err(error) = published {
            tracing::warn!(%error, interaction = %keys.id, "cannot record the interaction");
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "failed", "publish");
        }
        match self.routes.find(&keys) {
            None => match &self.settings.default_response {
                Some(body) if response::validate(keys.kind, body).is_ok() => {
                    Answer::json(body.clone(), "default")
                }
                _ => Answer::json(response::deferral(keys.kind, false), "deferred"),
            },
            Some(route) => match &route.action {
                Action::Respond(body) => Answer::json(body.clone(), "default"),
                Action::Defer => {
                    Answer::json(response::deferral(keys.kind, route.ephemeral), "deferred")
                }
                Action::Handler(Handler::Nats(subject)) => {
                    self.ask_nats(&keys, route, subject, body.clone(), deadline)
                        .await
                }
                Action::Handler(Handler::Http(url)) => {
                    self.ask_http(&keys, route, url, headers, body.clone(), deadline)
                        .await
                }
            },
        }
    }

    /// Publishes the envelope and waits for JetStream's ack: every routed interaction is
    /// on the bus first. A duplicate ack (same `ix:<id>`) is fine.
    async fn publish(
        &self,
        keys: &InteractionKeys<'_>,
        text: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let started = Instant::now();
        let data: &RawValue = serde_json::from_str(text)?;
        let id = keys.dedupe_key();
        let envelope = Envelope {
            id: id.as_str().into(),
            source: Source::Interaction,
            event_type: "INTERACTION_CREATE".into(),
            shard: None,
            seq: None,
            guild_id: keys.guild_id.clone(),
            received_at: relaycord_bus::envelope::now_rfc3339().into(),
            data,
        };
        let mut nats_headers = NatsHeaders::new();
        nats_headers.insert(headers::MSG_ID, id.as_str());
        nats_headers.insert(headers::TYPE, "INTERACTION_CREATE");
        self.js
            .publish_with_headers(
                keys.subject(&self.subjects),
                nats_headers,
                envelope.to_bytes(),
            )
            .await?
            .await?;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn ask_nats(
        &self,
        keys: &InteractionKeys<'_>,
        route: &Route,
        subject: &str,
        body: Bytes,
        deadline: TokioInstant,
    ) -> Answer {
        let sent = Instant::now();
        let mut waiter = self.mux.wait(&keys.id);
        let mut request_headers = NatsHeaders::new();
        request_headers.insert(handler_headers::INTERACTION_ID, keys.id.as_ref());
        request_headers.insert(handler_headers::KIND, keys.kind.as_str());
        let published = self
            .client
            .publish_with_reply_and_headers(
                subject.to_owned(),
                self.mux.reply_subject(&keys.id),
                request_headers,
                body,
            )
            .await;
        if published.is_err() {
            return self.unavailable(keys.kind, "handler_error");
        }
        let observe = |result: &str| {
            self.metrics
                .handler_latency
                .with_label_values(&["nats", result])
                .observe(sent.elapsed().as_secs_f64());
        };
        match tokio::time::timeout_at(deadline, &mut waiter.reply).await {
            Ok(Ok(reply)) if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) => {
                self.unavailable(keys.kind, "no_responders")
            }
            Ok(Ok(reply)) => {
                observe("in_time");
                // Recorded first: the late-reply worker sees this reply on the stream too
                // and must know it was the HTTP response.
                if let Err(error) = self.decisions.record(&keys.id, &Decision::Answered).await {
                    tracing::warn!(%error, "cannot record an answered interaction");
                }
                self.checked(keys.kind, reply.payload)
            }
            Ok(Err(_)) | Err(_) => self.defer(keys, route).await,
        }
    }

    async fn ask_http(
        &self,
        keys: &InteractionKeys<'_>,
        route: &Route,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
        deadline: TokioInstant,
    ) -> Answer {
        let sent = Instant::now();
        let mut request = self
            .http
            .post(url)
            .timeout(self.settings.http_handler_timeout)
            .header(header::CONTENT_TYPE, "application/json")
            .header(handler_headers::INTERACTION_ID, keys.id.as_ref())
            .header(handler_headers::KIND, keys.kind.as_str())
            .body(body);
        // Discord's own signature headers, so a function written with a Discord library
        // verifies the request exactly as it would a direct one.
        for name in [SIGNATURE_HEADER, TIMESTAMP_HEADER] {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value.as_bytes());
            }
        }
        let call = Box::pin(async move {
            let response = request.send().await?.error_for_status()?;
            response.bytes().await
        });
        let mut call = call;
        let metrics = self.metrics.clone();
        match tokio::time::timeout_at(deadline, &mut call).await {
            Ok(Ok(reply)) => {
                metrics
                    .handler_latency
                    .with_label_values(&["http", "in_time"])
                    .observe(sent.elapsed().as_secs_f64());
                self.checked(keys.kind, reply)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error.without_url(), "HTTP handler failed");
                metrics
                    .handler_latency
                    .with_label_values(&["http", "error"])
                    .observe(sent.elapsed().as_secs_f64());
                self.unavailable(keys.kind, "handler_error")
            }
            Err(_) => {
                // The late answer goes through the replies stream like a NATS handler's,
                // so one worker (any replica's) sends every follow-up.
                let (kind, js) = (keys.kind, self.js.clone());
                let subject = self.mux.reply_subject(&keys.id);
                let unavailable = self.settings.unavailable_response(kind);
                tokio::spawn(async move {
                    let result = call.await;
                    let result_label = if result.is_ok() { "late" } else { "error" };
                    metrics
                        .handler_latency
                        .with_label_values(&["http", result_label])
                        .observe(sent.elapsed().as_secs_f64());
                    let reply = match result {
                        Ok(reply) if response::validate(kind, &reply).is_ok() => reply,
                        _ => unavailable,
                    };
                    let published = match js.publish(subject, reply).await {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(error) = published {
                        tracing::warn!(%error, "cannot store a late HTTP handler reply");
                        metrics.late("failed");
                    }
                });
                self.defer(keys, route).await
            }
        }
    }

    /// Records the deferral (with what a follow-up needs) before answering with it, so
    /// that whichever replica's worker reads the late reply can deliver it.
    async fn defer(&self, keys: &InteractionKeys<'_>, route: &Route) -> Answer {
        match (&keys.application_id, &keys.token) {
            (Some(app), Some(token)) => {
                let decision = Decision::deferred(app, token, keys.kind, SystemTime::now());
                if let Err(error) = self.decisions.record(&keys.id, &decision).await {
                    tracing::warn!(%error, "cannot record a deferral: a late reply will be lost");
                }
            }
            _ => {
                tracing::warn!(interaction = %keys.id, "no application_id or token: a late reply cannot be sent")
            }
        }
        Answer::json(response::deferral(keys.kind, route.ephemeral), "deferred")
    }

    fn checked(&self, kind: Kind, reply: Bytes) -> Answer {
        match response::validate(kind, &reply) {
            Ok(_) => Answer::json(reply, "answered"),
            Err(error) => {
                let error: InvalidReply = error;
                tracing::warn!(%error, "handler reply refused");
                self.unavailable(kind, "invalid_reply")
            }
        }
    }

    fn unavailable(&self, kind: Kind, reason: &'static str) -> Answer {
        Answer {
            reason,
            ..Answer::json(self.settings.unavailable_response(kind), "unavailable")
        }
    }
}
