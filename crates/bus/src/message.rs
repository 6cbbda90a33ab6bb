//! The one place an envelope becomes a NATS message.
//!
//! Ingest, the interactions endpoint, the dead-letter queue, the nats sink and the tests all
//! publish envelopes; building the message here keeps the headers of [`crate::headers`]
//! identical on every path, which consumers rely on (docs/bus.md is the contract). That
//! includes `traceparent`, so every publish continues the trace it is part of.

use async_nats::jetstream::{self, context::PublishError, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::headers;
use crate::subject::BusSubject;

/// The custom header names as values: an `&str` name is copied into a new allocation on
/// every insert, these are not (ingest builds a message per gateway event).
const TYPE_HEADER: HeaderName = HeaderName::from_static(headers::TYPE);
const SHARD_HEADER: HeaderName = HeaderName::from_static(headers::SHARD);

/// A message ready to publish: subject, payload and headers. Only this module makes one
/// (`#[non_exhaustive]`), so the headers every consumer relies on are set here or not at all.
/// Other crates read its fields:
///
/// ```
/// let message = relaycord_bus::OutgoingMessage::envelope_bytes("a.b", bytes::Bytes::new(), None, None);
/// assert_eq!(message.subject, "a.b");
/// ```
///
/// but a struct literal does not compile outside this crate (E0639):
///
/// ```compile_fail,E0639
/// let message = relaycord_bus::OutgoingMessage {
///     subject: "discord.gateway.READY.none".into(),
///     payload: bytes::Bytes::new(),
///     headers: async_nats::HeaderMap::new(),
/// };
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutgoingMessage {
    pub subject: String,
    pub payload: Bytes,
    pub headers: HeaderMap,
}

impl OutgoingMessage {
    /// An event as published on the bus: the serialized envelope, with `Nats-Msg-Id` = its
    /// `id` (the stream's dedupe key), `Relaycord-Type` and, for gateway events,
    /// `Relaycord-Shard`. The subject is one the bus built ([`BusSubject`]).
    pub fn event(subject: BusSubject, envelope: &Envelope<'_>) -> Self {
        Self {
            subject: subject.into(),
            payload: envelope.to_bytes(),
            headers: Self::event_headers(&envelope.id, &envelope.event_type, envelope.shard),
        }
    }

    /// The headers [`Self::event`] gives an event with this id, type and shard, built
    /// again: a publisher that retries sends these rather than keeping a copy of the first
    /// message's (a copy per event costs about ten allocations, a retry is rare).
    /// `traceparent` comes from the current span, as in [`Self::event`].
    pub fn event_headers(id: &str, event_type: &str, shard: Option<u32>) -> HeaderMap {
        let mut headers =
            Self::envelope_bytes("", Bytes::new(), Some(id), Some(event_type)).headers;
        if let Some(shard) = shard {
            headers.insert(SHARD_HEADER, shard.to_string());
        }
        headers
    }

    /// An envelope already serialized (a stored event, a dead letter's payload), with the
    /// headers its publisher chooses: `Nats-Msg-Id` when the stream should dedupe it, and
    /// `Relaycord-Type` when known; `traceparent` when tracing is on and a span is current.
    pub fn envelope_bytes(
        subject: impl Into<String>,
        payload: Bytes,
        msg_id: Option<&str>,
        event_type: Option<&str>,
    ) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(msg_id) = msg_id {
            headers.insert(headers::MSG_ID, msg_id);
        }
        if let Some(event_type) = event_type {
            headers.insert(TYPE_HEADER, event_type);
        }
        crate::trace::inject(&mut headers);
        Self {
            subject: subject.into(),
            payload,
            headers,
        }
    }

    /// Adds one more header (e.g. a dead letter's reason).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The subject and the JetStream publish, for callers that send it more than once.
    pub fn into_parts(self) -> (String, PublishMessage) {
        let publish = PublishMessage::build()
            .payload(self.payload)
            .headers(self.headers);
        (self.subject, publish)
    }

    /// Publishes through JetStream and waits for the stream's ack.
    pub async fn publish(
        self,
        js: &jetstream::Context,
    ) -> Result<jetstream::publish::PublishAck, PublishError> {
        let (subject, publish) = self.into_parts();
        js.send_publish(subject, publish).await?.await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::Subjects;

    fn header<'a>(message: &'a OutgoingMessage, name: &str) -> Option<&'a str> {
        message.headers.get(name).map(|v| v.as_str())
    }

    #[test]
    fn a_gateway_event_carries_id_type_and_shard() {
        let data = RawValue::from_string(r#"{"id":"1"}"#.to_owned()).unwrap();
        let envelope = Envelope::gateway("msg:1", "MESSAGE_CREATE", 3, 42, Some("7"), &data);
        let subject = Subjects::default().gateway("MESSAGE_CREATE", Some("7"));
        let message = OutgoingMessage::event(subject, &envelope);
        assert_eq!(message.subject, "discord.gateway.MESSAGE_CREATE.7");
        assert_eq!(message.payload, envelope.to_bytes());
        assert_eq!(header(&message, "Nats-Msg-Id"), Some("msg:1"));
        assert_eq!(header(&message, "Relaycord-Type"), Some("MESSAGE_CREATE"));
        assert_eq!(header(&message, "Relaycord-Shard"), Some("3"));
        assert_eq!(message.headers.iter().count(), 3);
        let again = OutgoingMessage::event_headers("msg:1", "MESSAGE_CREATE", Some(3));
        assert_eq!(again, message.headers, "a retry sends the same headers");
    }

    #[test]
    fn an_interaction_has_no_shard_header() {
        let data = RawValue::from_string("{}".to_owned()).unwrap();
        let envelope = Envelope::interaction("ix:9", None, &data);
        let subject = Subjects::default().interaction("command", "ping");
        let message = OutgoingMessage::event(subject, &envelope);
        assert_eq!(header(&message, "Nats-Msg-Id"), Some("ix:9"));
        assert_eq!(
            header(&message, "Relaycord-Type"),
            Some("INTERACTION_CREATE")
        );
        assert_eq!(header(&message, "Relaycord-Shard"), None);
        assert_eq!(message.headers.iter().count(), 2);
    }

    #[test]
    fn stored_bytes_get_only_the_headers_asked_for() {
        let bare = OutgoingMessage::envelope_bytes("s", Bytes::from_static(b"{}"), None, None);
        assert_eq!(bare.headers.iter().count(), 0);
        let letter = OutgoingMessage::envelope_bytes(
            "relaycord.dlq.a",
            Bytes::from_static(b"{}"),
            Some("dlq:a:1:msg:1"),
            Some("MESSAGE_CREATE"),
        )
        .header("Relaycord-Sink", "a");
        assert_eq!(header(&letter, "Nats-Msg-Id"), Some("dlq:a:1:msg:1"));
        assert_eq!(header(&letter, "Relaycord-Type"), Some("MESSAGE_CREATE"));
        assert_eq!(header(&letter, "Relaycord-Sink"), Some("a"));
        assert_eq!(letter.payload, Bytes::from_static(b"{}"));
    }
}
