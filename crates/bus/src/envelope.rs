//! The JSON envelope every message on the bus carries.
//!
//! ```json
//! {"id":"msg:334385199974967042","source":"gateway","type":"MESSAGE_CREATE","shard":0,
//!  "seq":42,"guild_id":"290926798626357250","received_at":"2026-11-23T12:00:00.123Z",
//!  "data":{ ...Discord's `d`, byte for byte... }}
//! ```

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where an event entered Relaycord.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A dispatch read from a gateway shard (`<prefix>.gateway.…`), or an
    /// `INTERACTION_CREATE` dispatch (`<prefix>.interactions.…`).
    Gateway,
    /// An interaction Discord POSTed to the interactions endpoint (`<prefix>.interactions.…`).
    Interaction,
    /// Discord's webhook events (an application's Webhook Events URL, `<prefix>.webhooks.…`).
    Webhook,
}

impl Source {
    /// The name as it is in the envelope's `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Interaction => "interaction",
            Self::Webhook => "webhook",
        }
    }
}

/// An envelope, borrowing its payload. Serializing writes `data` verbatim; deserializing
/// (consumers, sinks) borrows it without parsing it, and borrows the strings too (owned
/// only when they hold escapes), so reading an envelope allocates nothing.
///
/// Other crates read its fields but make one only through a constructor of this module
/// (one per [`Source`]; `#[non_exhaustive]`), so every envelope on the bus has the
/// fields its source requires:
///
/// ```
/// let data = serde_json::value::RawValue::from_string("{}".to_owned()).unwrap();
/// let envelope = relaycord_bus::Envelope::gateway("msg:1", "MESSAGE_CREATE", 0, 1, None, &data);
/// assert_eq!(envelope.seq, Some(1));
/// ```
///
/// A struct literal does not compile outside this crate (E0639; a test of the rule in
/// ARCHITECTURE.md, "Invariants"):
///
/// ```compile_fail,E0639
/// let data = serde_json::value::RawValue::from_string("{}".to_owned()).unwrap();
/// let envelope = relaycord_bus::Envelope {
///     id: "msg:1".into(),
///     source: relaycord_bus::Source::Gateway,
///     event_type: "MESSAGE_CREATE".into(),
///     shard: Some(0),
///     seq: Some(1),
///     guild_id: None,
///     received_at: relaycord_bus::envelope::now_rfc3339().into(),
///     occurred_at: None,
///     data: &data,
/// };
/// ```
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[non_exhaustive]
#[schemars(
    title = "Relaycord envelope",
    description = "The body of every event Relaycord publishes (docs/bus.md, \"Envelope\"). \
        Consumers must ignore fields they do not know: new fields are added in minor releases.",
    transform = crate::contract::per_source_rules
)]
pub struct Envelope<'a> {
    /// The event's identity: two different Discord events never share it, the same event
    /// seen twice always has it. Also the `Nats-Msg-Id` header, the http sink's `webhook-id`
    /// and the AMQP message id. Opaque: compare it, do not parse it.
    #[serde(borrow)]
    #[schemars(
        with = "String",
        length(min = 1),
        regex(pattern = r"^[A-Za-z0-9:._+-]+$")
    )]
    pub id: std::borrow::Cow<'a, str>,
    pub source: Source,
    /// Discord's event type (`MESSAGE_CREATE`, `INTERACTION_CREATE`, `ENTITLEMENT_CREATE`, …),
    /// also the subject's event type token and the `Relaycord-Type` header.
    #[serde(rename = "type", borrow)]
    #[schemars(
        with = "String",
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Z0-9_]+$")
    )]
    pub event_type: std::borrow::Cow<'a, str>,
    /// The gateway shard that read the event; null unless `source` is `gateway`.
    pub shard: Option<u32>,
    /// The shard session's sequence number of the dispatch; null unless `source` is `gateway`.
    pub seq: Option<u64>,
    /// The guild the event is about (a decimal snowflake, also the subject's guild token), or
    /// null for events outside a guild.
    #[serde(borrow)]
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]{1,20}$"))]
    pub guild_id: Option<std::borrow::Cow<'a, str>>,
    /// When Relaycord received the event: RFC 3339 with milliseconds, UTC.
    #[serde(borrow)]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub received_at: std::borrow::Cow<'a, str>,
    /// When Discord says the event occurred, as Discord wrote it: webhook events'
    /// `event.timestamp`. Absent from gateway and interaction envelopes.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub occurred_at: Option<std::borrow::Cow<'a, str>>,
    /// Discord's payload byte for byte, never re-serialized: the gateway dispatch's `d`, the
    /// interaction as POSTed, or a webhook event's `event.data` (null when Discord sent none).
    /// Left open here: its types are Discord's, documented at
    /// https://discord.com/developers/docs and published as types by discord-api-types
    /// (TypeScript) and twilight-model (Rust), among others.
    #[serde(borrow)]
    #[schemars(with = "serde_json::Value")]
    pub data: &'a RawValue,
}

impl<'a> Envelope<'a> {
    /// A gateway dispatch read now: `id` is its [`crate::dedupe::gateway_key`], `seq`
    /// the gateway's sequence number on `shard`.
    pub fn gateway(
        id: &'a str,
        event_type: &'a str,
        shard: u32,
        seq: u64,
        guild_id: Option<&'a str>,
        data: &'a RawValue,
    ) -> Self {
        Self {
            id: id.into(),
            source: Source::Gateway,
            event_type: event_type.into(),
            shard: Some(shard),
            seq: Some(seq),
            guild_id: guild_id.map(Into::into),
            received_at: now_rfc3339().into(),
            occurred_at: None,
            data,
        }
    }

    /// An interaction received now over HTTP: `INTERACTION_CREATE`, without shard or
    /// seq; `id` is its `ix:<id>` key ([`crate::interaction::InteractionKeys`]).
    pub fn interaction(id: &'a str, guild_id: Option<&'a str>, data: &'a RawValue) -> Self {
        Self {
            id: id.into(),
            source: Source::Interaction,
            event_type: "INTERACTION_CREATE".into(),
            shard: None,
            seq: None,
            guild_id: guild_id.map(Into::into),
            received_at: now_rfc3339().into(),
            occurred_at: None,
            data,
        }
    }

    /// A webhook event received now: no shard or seq; `occurred_at` is Discord's
    /// `event.timestamp`, `id` its `wh:` key ([`crate::webhook_event`]).
    pub fn webhook(
        id: &'a str,
        event_type: &'a str,
        guild_id: Option<&'a str>,
        occurred_at: &'a str,
        data: &'a RawValue,
    ) -> Self {
        Self {
            id: id.into(),
            source: Source::Webhook,
            event_type: event_type.into(),
            shard: None,
            seq: None,
            guild_id: guild_id.map(Into::into),
            received_at: now_rfc3339().into(),
            occurred_at: Some(occurred_at.into()),
            data,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        // Room for the whole envelope at once: serde_json's own start (128 bytes) would be
        // grown, and copied, about once per doubling of a typical event's size.
        let mut buffer = Vec::with_capacity(self.reserved_len());
        // Serializing a struct of strings, integers and a RawValue cannot fail.
        serde_json::to_writer(&mut buffer, self).expect("envelope serializes");
        Bytes::from(buffer)
    }

    /// What [`Self::to_bytes`] reserves: the payload and strings, and room for the rest.
    fn reserved_len(&self) -> usize {
        self.data.get().len()
            + self.id.len()
            + self.event_type.len()
            + self.received_at.len()
            + self.guild_id.as_ref().map_or(0, |g| g.len())
            + self.occurred_at.as_ref().map_or(0, |o| o.len())
            + ENVELOPE_OVERHEAD
    }

    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// `received_at` parsed back, for end-to-end latency.
    pub fn received_at_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.received_at).ok()
    }
}

/// An envelope's bytes beside its strings and `data`: field names, quotes, shard and seq
/// (about 130 bytes), with room for escapes.
const ENVELOPE_OVERHEAD: usize = 192;

/// The current time in the envelope's `received_at` format.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_survive_a_round_trip() {
        let raw = r#"{"content":"caf\u00e9 \"q\" \\ 🔥","n":1.50,"big":12345678901234567890}"#;
        let data = RawValue::from_string(raw.to_owned()).unwrap();
        let env = Envelope {
            id: "msg:1".into(),
            source: Source::Gateway,
            event_type: "MESSAGE_CREATE".into(),
            shard: Some(3),
            seq: Some(42),
            guild_id: Some("81384788765712384".into()),
            received_at: now_rfc3339().into(),
            occurred_at: None,
            data: &data,
        };
        let bytes = env.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(raw), "payload re-serialized: {text}");
        assert!(text.starts_with(r#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":3,"seq":42,"guild_id":"81384788765712384","received_at":""#));

        let back = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(back.data.get(), raw);
        assert_eq!(back.id, "msg:1");
        let age = SystemTime::now()
            .duration_since(back.received_at_time().unwrap())
            .unwrap();
        assert!(age.as_secs() < 60);
    }

    /// The buffer `to_bytes` reserves holds the largest envelope of each source without
    /// growing: every integer at its widest, every optional field set. The strings are
    /// longer than the overhead's slack, so one left out of the count fails the test.
    #[test]
    fn the_reserved_room_holds_the_widest_envelopes() {
        let data = RawValue::from_string(format!(r#"{{"a":"{}"}}"#, "x".repeat(500))).unwrap();
        let (id, event_type) = ("i".repeat(100), "T".repeat(100));
        for source in [Source::Gateway, Source::Interaction, Source::Webhook] {
            let env = Envelope {
                id: id.as_str().into(),
                source,
                event_type: event_type.as_str().into(),
                shard: Some(u32::MAX),
                seq: Some(u64::MAX),
                guild_id: Some("18446744073709551615".into()),
                received_at: now_rfc3339().into(),
                occurred_at: Some("2026-12-07T07:00:00.000000+00:00".into()),
                data: &data,
            };
            let (len, reserved) = (env.to_bytes().len(), env.reserved_len());
            assert!(
                len <= reserved,
                "{source:?}: {len} bytes, {reserved} reserved"
            );
        }
    }

    #[test]
    fn source_names_are_the_serialized_ones() {
        for source in [Source::Gateway, Source::Interaction, Source::Webhook] {
            assert_eq!(
                serde_json::to_value(source).unwrap(),
                serde_json::json!(source.as_str())
            );
        }
    }
}
