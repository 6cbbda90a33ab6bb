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
use relaycord_bus::{Envelope, OutgoingMessage, Subjects};
use serde_json::value::RawValue;
use tokio::time::Instant as TokioInstant;
use tracing::Instrument;

use crate::Settings;

/// Waits between publish attempts of one interaction: short, as its deadline is.
const PUBLISH_RETRY: relaycord_bus::backoff::Exponential = relaycord_bus::backoff::Exponential::new(
    std::time::Duration::from_millis(25),
    std::time::Duration::from_millis(200),
);
use crate::decisions::Decisions;
use crate::handler_headers;
use crate::metrics::InteractionMetrics;
use crate::owned::Owned;
use crate::replies::ReplyMux;
use crate::response::{self, InvalidReply};
use crate::routes::{Action, Route, Routes};
use crate::serve::ConnMark;
use crate::verify::{SIGNATURE_HEADER, TIMESTAMP_HEADER, Verifier};

pub(crate) struct Endpoint {
    pub verifier: Verifier,
    pub routes: Routes,
    pub settings: Settings,
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub http: reqwest::Client,
    pub mux: ReplyMux,
    pub owned: Owned,
    pub decisions: Decisions,
    pub metrics: InteractionMetrics,
    /// HTTP handler calls past their deadline (late_http.rs).
    pub late_calls: crate::late_http::LateCalls,
    /// Ids of stored webhook events (webhook_events.rs).
    pub webhook_seen: crate::webhook_seen::Seen,
}

/// The response and how to count it.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub outcome: &'static str,
    pub reason: &'static str,
    /// Say `Connection: close`: the request's body may be unread (see [`Answer::refused`]).
    pub close: bool,
}

impl Answer {
    pub fn json(body: Bytes, outcome: &'static str) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            outcome,
            reason: "",
            close: false,
        }
    }

    /// 503: the interaction could not be recorded (`reason`), so it is not routed.
    pub fn unrecorded(reason: &'static str) -> Self {
        Self::error(StatusCode::SERVICE_UNAVAILABLE, "failed", reason)
    }

    /// 204 with no body: how Discord wants webhook events (and their PING) acknowledged.
    pub fn no_content(outcome: &'static str) -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: Bytes::new(),
            outcome,
            reason: "",
            close: false,
        }
    }

    pub(crate) fn error(status: StatusCode, outcome: &'static str, reason: &'static str) -> Self {
        Self {
            status,
            body: Bytes::from(format!(r#"{{"error":"{reason}"}}"#)),
            outcome,
            reason,
            close: false,
        }
    }

    /// A request refused before or while its body was read, or for a bad signature: the
    /// connection closes after the answer. With the body unread, hyper keeps the
    /// connection only if the rest of the body has already arrived (it drains what it
    /// holds, and closes otherwise): a race the client cannot see, so that one not told
    /// would sometimes send its next request onto the closing connection and lose it
    /// ("connection closed before message completed"). Nor is anything else such a client
    /// sends worth reading.
    pub(crate) fn refused(status: StatusCode, reason: &'static str) -> Self {
        Self {
            close: true,
            ..Self::error(status, "rejected", reason)
        }
    }
}

pub(crate) async fn handle(
    State(endpoint): State<Arc<Endpoint>>,
    mark: Option<axum::Extension<ConnMark>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // Discord sends no trace context, but a proxy in front of Relaycord may.
    let span = relaycord_bus::span!(
        "interaction",
        otel.kind = "server",
        outcome = tracing::field::Empty
    );
    let mark = mark.map(|axum::Extension(mark)| mark);
    let answer = endpoint.process(&headers, body, started, mark.as_ref());
    let answer = traced(span, &headers, answer).await;
    let m = &endpoint.metrics;
    m.request(answer.outcome, answer.reason);
    m.response_latency
        .with_label_values(&[answer.outcome])
        .observe(started.elapsed().as_secs_f64());
    answer.into_response()
}

/// Runs a request's `answer` inside its server `span` (continuing the trace context a
/// proxy in front may send) and records the outcome on the span. Both routes use it.
pub(crate) async fn traced(
    span: tracing::Span,
    headers: &HeaderMap,
    answer: impl std::future::Future<Output = Answer>,
) -> Answer {
    relaycord_bus::trace::continue_from_http(&span, headers);
    let answer = answer.instrument(span.clone()).await;
    span.record("outcome", answer.outcome);
    answer
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = if self.status == StatusCode::NO_CONTENT {
            self.status.into_response()
        } else {
            (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                self.body,
            )
                .into_response()
        };
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// A verified request body, holding its room in the body budget.
pub(crate) struct Verified<'a> {
    pub body: Bytes,
    _budget: tokio::sync::SemaphorePermit<'a>,
}

/// How long a request waits for room in the body budget before it gets 503: long enough
/// to ride out a burst, short enough to leave Discord's 3 s for the answer.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Endpoint {
    /// Room for `bytes` of body in the shared budget (`max_body_memory`), waiting up to
    /// [`BUDGET_WAIT`]; `None`: no room.
    async fn body_budget(&self, bytes: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let bytes = u32::try_from(bytes.max(1)).ok()?;
        let wanted = self.settings.body_budget.acquire_many(bytes);
        tokio::time::timeout(BUDGET_WAIT, wanted).await.ok()?.ok()
    }
}

/// Whether a body that is not a routable interaction is still a PING (`"type": 1`).
fn is_ping(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: u64,
    }
    serde_json::from_str::<Typed>(text).is_ok_and(|t| t.kind == 1)
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    /// More than the limit, whether declared or streamed (chunked, no Content-Length).
    TooLarge,
    /// The client stopped sending before the end of the body (hang-up, reset).
    Incomplete,
}

/// Reads the body, refusing it as soon as it grows past `limit`.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Incomplete)?;
        if collected.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected.freeze())
}

/// Largest reply an HTTP handler may send. Discord's own limits (2,000 characters of
/// content, 6,000 of embeds) keep real interaction responses far below it; without a cap a
/// misbehaving function could make this process buffer anything it sends.
pub(crate) const MAX_HANDLER_REPLY: usize = 64 * 1024;

/// Why an HTTP handler's call produced no reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// Transport error, non-2xx status or timeout (the URL left out: it may hold a secret).
    #[error("{0}")]
    Http(reqwest::Error),
    #[error("the reply is larger than {MAX_HANDLER_REPLY} bytes")]
    TooLarge,
}

/// Reads a handler's reply, refusing it as soon as it grows past `limit`.
async fn read_reply(mut response: reqwest::Response, limit: usize) -> Result<Bytes, CallError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(CallError::TooLarge);
    }
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CallError::Http(e.without_url()))?
    {
        if collected.len() + chunk.len() > limit {
            return Err(CallError::TooLarge);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected.freeze())
}

impl Endpoint {
    /// The body of a request whose signature and timestamp are Discord's, read within the
    /// body limits, or the refusal to answer with. Interactions and webhook events alike.
    /// The body keeps its room in the shared budget until the caller drops it (answered).
    pub(crate) async fn verified(
        &self,
        headers: &HeaderMap,
        body: Body,
        mark: Option<&ConnMark>,
    ) -> Result<Verified<'_>, Answer> {
        let header = |name| headers.get(name).map(|v| v.as_bytes());
        // Before a byte of the body is read: a request without Discord's headers costs no
        // buffer (the signature itself needs the body, below).
        if let Err(rejection) = self.verifier.precheck(
            header(SIGNATURE_HEADER),
            header(TIMESTAMP_HEADER),
            SystemTime::now(),
        ) {
            return Err(Answer::refused(
                StatusCode::UNAUTHORIZED,
                rejection.as_str(),
            ));
        }
        let limit = self.settings.max_body;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Answer::refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
        }
        // Bodies share one budget until answered, so that the memory they take is bounded
        // whatever the number of connections. A chunked body may grow to the limit.
        let Some(budget) = self.body_budget(declared.unwrap_or(limit)).await else {
            return Err(Answer::refused(StatusCode::SERVICE_UNAVAILABLE, "busy"));
        };
        let body_deadline = self.settings.serve.body_read_timeout;
        let Ok(body) = tokio::time::timeout(body_deadline, read_body(body, limit)).await else {
            // A body trickled in slower than any real client sends one.
            return Err(Answer::refused(StatusCode::REQUEST_TIMEOUT, "slow_body"));
        };
        let body = body.map_err(|e| match e {
            BodyError::TooLarge => Answer::refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            // Nobody will read this answer; counted apart so hang-ups do not pass for
            // oversized requests.
            BodyError::Incomplete => Answer::refused(StatusCode::BAD_REQUEST, "incomplete_body"),
        })?;
        let verified = self.verifier.verify_batched(
            header(SIGNATURE_HEADER),
            header(TIMESTAMP_HEADER),
            &body,
            SystemTime::now(),
        );
        if let Err(rejection) = verified.await {
            return Err(Answer::refused(
                StatusCode::UNAUTHORIZED,
                rejection.as_str(),
            ));
        }
        // Discord's request: its connection is not closed to make room (serve.rs).
        if let Some(mark) = mark {
            mark.verified();
        }
        Ok(Verified {
            body,
            _budget: budget,
        })
    }

    async fn process(
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
        let body = &verified.body;
        let Ok(text) = std::str::from_utf8(body) else {
            return Answer::error(StatusCode::BAD_REQUEST, "rejected", "malformed");
        };
        let keys = match InteractionKeys::parse(text) {
            Ok(keys) => keys,
            // Discord's endpoint check (and some proxies') may be a bare `{"type":1}`:
            // verified, never published, so it needs no id to be answered.
            Err(_) if is_ping(text) => return Answer::json(response::pong(), "pong"),
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
            return Answer::unrecorded("publish");
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
                Action::Handler(handler) => {
                    self.handled(&keys, route, handler, (headers, body.clone()), started)
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
        let envelope = Envelope::interaction(&id, keys.guild_id.as_deref(), data);
        let span = relaycord_bus::span!("publish", otel.kind = "producer", %id);
        let message =
            span.in_scope(|| OutgoingMessage::event(keys.subject(&self.subjects), &envelope));
        self.publish_acked(message, span).await;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Publishes `message` until JetStream acks it; the caller's deadline cuts it off.
    /// Retried under the same id (JetStream keeps one copy): while a dead node's stream
    /// leader is replaced, publishes get no responders for a few seconds, and a retry
    /// inside Discord's 3 s beats a 5xx.
    pub(crate) async fn publish_acked(
        &self,
        message: OutgoingMessage,
        span: tracing::Span,
    ) -> jetstream::publish::PublishAck {
        let mut attempt = 0;
        loop {
            match message
                .clone()
                .publish(&self.js)
                .instrument(span.clone())
                .await
            {
                Ok(ack) => return ack,
                Err(error) => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "publish failed; retrying");
                    tokio::time::sleep(PUBLISH_RETRY.delay(attempt)).await;
                }
            }
        }
    }

    pub(crate) async fn ask_nats(
        &self,
        keys: &InteractionKeys<'_>,
        route: &Route,
        subject: &str,
        body: Bytes,
        deadline: TokioInstant,
    ) -> Answer {
        let sent = Instant::now();
        // Only the claim's owner gets here, so this id has no other waiter; should it have
        // one all the same, it is not clobbered: this request defers without routing.
        let Some(mut waiter) = self.mux.wait(&keys.id) else {
            tracing::warn!(interaction = %keys.id, "already waiting for this interaction");
            return self.defer(keys, route);
        };
        let mut request_headers = NatsHeaders::new();
        request_headers.insert(handler_headers::INTERACTION_ID, keys.id.as_ref());
        request_headers.insert(handler_headers::KIND, keys.kind.as_str());
        relaycord_bus::trace::inject(&mut request_headers);
        let published = self
            .client
            .publish_with_reply_and_headers(
                subject.to_owned(),
                self.mux.reply_subject(&keys.id),
                request_headers,
                body,
            )
            .await;
        let observe = |result: &str| {
            self.metrics
                .handler_latency
                .with_label_values(&["nats", result])
                .observe(sent.elapsed().as_secs_f64());
        };
        if published.is_err() {
            observe("error");
            return self.unavailable(keys.kind, "handler_error");
        }
        // A late reply is timed by the late-reply worker, which is the one to see it.
        match tokio::time::timeout_at(deadline, &mut waiter.reply).await {
            Ok(Ok(reply)) if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) => {
                observe("error");
                self.unavailable(keys.kind, "no_responders")
            }
            Ok(Ok(reply)) => {
                observe("in_time");
                self.checked(keys.kind, reply.payload)
            }
            Ok(Err(_)) | Err(_) => self.defer(keys, route),
        }
    }

    pub(crate) async fn ask_http(
        &self,
        keys: &InteractionKeys<'_>,
        route: &Route,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
        deadline: TokioInstant,
    ) -> Answer {
        let sent = Instant::now();
        let mut trace = HeaderMap::new();
        relaycord_bus::trace::inject_http(&mut trace);
        let mut request = self
            .http
            .post(url)
            .headers(trace)
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
            let response = request
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| CallError::Http(e.without_url()))?;
            read_reply(response, MAX_HANDLER_REPLY).await
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
                tracing::warn!(%error, "HTTP handler failed");
                metrics
                    .handler_latency
                    .with_label_values(&["http", "error"])
                    .observe(sent.elapsed().as_secs_f64());
                let reason = match error {
                    CallError::TooLarge => "reply_too_large",
                    CallError::Http(_) => "handler_error",
                };
                self.unavailable(keys.kind, reason)
            }
            Err(_) => {
                // The late answer goes through the replies stream like a NATS handler's,
                // so one worker (any replica's) sends every follow-up.
                let (kind, js) = (keys.kind, self.js.clone());
                let subject = self.mux.reply_subject(&keys.id);
                let id = keys.id.to_string();
                let unavailable = self.settings.unavailable_response(kind);
                // Past the token nobody can follow up, so storing the reply is pointless.
                let until = sent + crate::decisions::TOKEN_LIFETIME;
                // Bounded: each waits up to http_handler_timeout (minutes), so a slow
                // function must not pile up tasks. Over the bound the call is dropped and
                // the user gets the unavailable message as the follow-up instead.
                let (running, admitted) = self.late_calls.start();
                if !admitted {
                    metrics.late("shed");
                    tracing::warn!(
                        "too many late HTTP handler calls (interactions.max_late_http_calls); one was cut off"
                    );
                }
                // Dropping the call (when shed) cancels the request.
                let call = admitted.then_some(call);
                let late = async move {
                    let reply = match call {
                        Some(call) => tokio::select! {
                            result = call => {
                                let label = if result.is_ok() { "late" } else { "error" };
                                metrics
                                    .handler_latency
                                    .with_label_values(&["http", label])
                                    .observe(sent.elapsed().as_secs_f64());
                                match result {
                                    Ok(reply) if response::validate(kind, &reply).is_ok() => reply,
                                    Ok(_) => unavailable,
                                    Err(error) => {
                                        tracing::warn!(%error, "late HTTP handler failed");
                                        unavailable
                                    }
                                }
                            }
                            // Shutting down, past the grace period: the user gets the
                            // apology rather than a spinner until the token expires.
                            () = running.cut.cancelled() => {
                                metrics.late("cut");
                                unavailable
                            }
                        },
                        // Only the short JetStream publish of the apology remains.
                        None => unavailable,
                    };
                    crate::late_http::store(&js, subject, &id, reply, until, &metrics).await;
                    drop(running);
                };
                // Still the handler's span: the late reply is stored with its context.
                tokio::spawn(late.instrument(tracing::Span::current()));
                self.defer(keys, route)
            }
        }
    }

    /// The deferral for this interaction (recorded by the caller, see handled.rs).
    fn defer(&self, keys: &InteractionKeys<'_>, route: &Route) -> Answer {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_close_the_connection_and_other_answers_keep_it() {
        let close = |answer: Answer| {
            answer
                .into_response()
                .headers()
                .get(header::CONNECTION)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let refused = Answer::refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
        assert_eq!(close(refused).as_deref(), Some("close"));
        assert_eq!(close(Answer::json(Bytes::from_static(b"{}"), "pong")), None);
        assert_eq!(close(Answer::no_content("stored")), None);
        let malformed = Answer::error(StatusCode::BAD_REQUEST, "rejected", "malformed");
        assert_eq!(close(malformed), None);
        assert_eq!(close(Answer::unrecorded("publish")), None);
    }

    #[tokio::test]
    async fn bodies_are_limited_while_streamed_and_hang_ups_are_not_too_large() {
        let chunks = |parts: Vec<Result<&'static [u8], std::io::Error>>| {
            Body::from_stream(futures::stream::iter(
                parts.into_iter().map(|p| p.map(Bytes::from_static)),
            ))
        };
        let ok = read_body(chunks(vec![Ok(b"abc"), Ok(b"de")]), 5).await;
        assert_eq!(ok.as_deref(), Ok(&b"abcde"[..]));
        let big = read_body(chunks(vec![Ok(b"abc"), Ok(b"def")]), 5).await;
        assert_eq!(big, Err(BodyError::TooLarge));
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "hang-up");
        let hung_up = read_body(chunks(vec![Ok(b"abc"), Err(cut)]), 5).await;
        assert_eq!(hung_up, Err(BodyError::Incomplete));
    }

    #[test]
    fn a_bare_ping_is_a_ping() {
        assert!(
            InteractionKeys::parse(r#"{"type":1}"#).is_err(),
            "no id to route by"
        );
        assert!(is_ping(r#"{"type":1}"#));
        assert!(is_ping(r#"{"type":1,"id":"not a snowflake"}"#));
        assert!(!is_ping(r#"{"type":2}"#));
        assert!(!is_ping(r#"{"id":"1"}"#));
        assert!(!is_ping("{"));
    }
}
