//! Discord's webhook events: what Discord POSTs to an application's *Webhook Events URL*
//! (`APPLICATION_AUTHORIZED`, `ENTITLEMENT_CREATE`, …), read from a verified body.
//!
//! ```json
//! {"version":1,"application_id":"1234560123453231555","type":1,
//!  "event":{"type":"APPLICATION_AUTHORIZED","timestamp":"2024-10-18T14:42:53.064834",
//!           "data":{"integration_type":0,"user":{…},"scopes":[…],"guild":{"id":"…",…}}}}
//! ```
//!
//! Such an event carries no id of its own, and Discord retries one it saw no 204 for (with
//! backoff, for up to 10 minutes). Its identity is therefore its content: the application,
//! the type, Discord's `timestamp` (microseconds) and the data. A retry is the same event
//! and gets the same key; two events differ at least in their timestamps.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::dedupe;
use crate::envelope::Envelope;
#[cfg(test)]
use crate::envelope::Source;
use crate::subject::{Subjects, is_event_type, is_snowflake};

/// Event types Discord sends as webhook events (discord-api-docs, "Webhook Events"). Any
/// SCREAMING_SNAKE_CASE type is *stored*, so a new one reaches subscribers and unfiltered
/// sinks without a release; a sink's `events` filter selects the ones listed here.
pub const KNOWN_TYPES: [&str; 12] = [
    "APPLICATION_AUTHORIZED",
    "APPLICATION_DEAUTHORIZED",
    "ENTITLEMENT_CREATE",
    "ENTITLEMENT_UPDATE",
    "ENTITLEMENT_DELETE",
    "QUEST_USER_ENROLLMENT",
    "LOBBY_MESSAGE_CREATE",
    "LOBBY_MESSAGE_UPDATE",
    "LOBBY_MESSAGE_DELETE",
    "GAME_DIRECT_MESSAGE_CREATE",
    "GAME_DIRECT_MESSAGE_UPDATE",
    "GAME_DIRECT_MESSAGE_DELETE",
];

/// Which sources send `event_type`: `(gateway, webhooks)`. Entitlements come both ways;
/// the other webhook types only as webhook events; everything else over the gateway.
pub fn sources(event_type: &str) -> (bool, bool) {
    let webhook = KNOWN_TYPES.contains(&event_type);
    (!webhook || event_type.starts_with("ENTITLEMENT_"), webhook)
}

/// Why a verified body is not a webhook event Relaycord can store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedWebhookEvent {
    #[error("webhook event is not valid JSON: {0}")]
    Json(String),
    #[error("unknown webhook type {0} (0 is PING, 1 an event)")]
    UnknownType(u64),
    #[error("webhook event of type 1 has no `event`")]
    MissingEvent,
    #[error("webhook event type {0:?} is not an event name")]
    BadEventType(String),
}

/// A webhook request's body: a PING (sent when the URL is saved) or an event.
#[derive(Debug)]
pub enum WebhookBody<'a> {
    Ping,
    Event(WebhookEvent<'a>),
}

/// One webhook event, borrowing Discord's bytes.
#[derive(Debug)]
pub struct WebhookEvent<'a> {
    /// `event.type`, checked to be an event name (it becomes a subject token).
    pub event_type: Cow<'a, str>,
    /// `event.timestamp`, as Discord wrote it: when the event occurred.
    pub timestamp: Cow<'a, str>,
    /// `data.guild_id` (entitlements) or `data.guild.id` (an authorization to a server).
    pub guild_id: Option<Cow<'a, str>>,
    /// `event.data` byte for byte; `null` when Discord sent none.
    pub data: &'a RawValue,
    key: String,
}

impl<'a> WebhookBody<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, MalformedWebhookEvent> {
        let outer: Outer<'a> =
            serde_json::from_str(raw).map_err(|e| MalformedWebhookEvent::Json(e.to_string()))?;
        match outer.kind {
            0 => return Ok(Self::Ping),
            1 => {}
            other => return Err(MalformedWebhookEvent::UnknownType(other)),
        }
        let event = outer.event.ok_or(MalformedWebhookEvent::MissingEvent)?;
        if !is_event_type(&event.event_type) {
            return Err(MalformedWebhookEvent::BadEventType(
                event.event_type.chars().take(64).collect(),
            ));
        }
        let data = event.data.unwrap_or(RawValue::NULL);
        let guild_id = guild_of(data);
        let key = key(
            outer.application_id.as_deref().unwrap_or_default(),
            &event.event_type,
            &event.timestamp,
            data,
        );
        Ok(Self::Event(WebhookEvent {
            event_type: event.event_type,
            timestamp: event.timestamp,
            guild_id,
            data,
            key,
        }))
    }
}

impl<'a> WebhookEvent<'a> {
    /// `<prefix>.webhooks.<EVENT_TYPE>.<guild_id|none>`.
    pub fn subject(&self, subjects: &Subjects) -> crate::subject::BusSubject {
        subjects.webhook(&self.event_type, self.guild_id.as_deref())
    }

    /// `wh:<EVENT_TYPE>:<digest>`: the envelope id and `Nats-Msg-Id`.
    pub fn dedupe_key(&self) -> &str {
        &self.key
    }

    /// The envelope published for this event, received now.
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope::webhook(
            &self.key,
            &self.event_type,
            self.guild_id.as_deref(),
            &self.timestamp,
            self.data,
        )
    }
}

/// The key of a webhook event. The data is hashed in a canonical form (keys sorted, no
/// whitespace), so a retry Discord happened to serialize differently is still the same
/// event; a body that is not JSON cannot get here (it was parsed above).
fn key(application_id: &str, event_type: &str, timestamp: &str, data: &RawValue) -> String {
    let canonical = serde_json::from_str::<serde_json::Value>(data.get())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| data.get().to_owned());
    let digest = dedupe::content_digest(
        event_type,
        &[
            application_id.as_bytes(),
            timestamp.as_bytes(),
            canonical.as_bytes(),
        ],
    );
    format!("wh:{event_type}:{}", hex::encode(digest))
}

fn guild_of(data: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Guild<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        guild_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        guild: Option<Guild<'a>>,
    }
    let data: Data<'_> = serde_json::from_str(data.get()).ok()?;
    data.guild_id
        .or(data.guild.and_then(|g| g.id))
        .filter(|g| is_snowflake(g))
}

#[derive(Deserialize)]
struct Outer<'a> {
    #[serde(rename = "type")]
    kind: u64,
    #[serde(borrow)]
    application_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Event<'a>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTHORIZED: &str = r#"{"version":1,"application_id":"1234560123453231555","type":1,"event":{"type":"APPLICATION_AUTHORIZED","timestamp":"2024-10-18T14:42:53.064834","data":{"integration_type":0,"scopes":["applications.commands"],"user":{"id":"111178765189277770","username":"nelly"},"guild":{"id":"290926798626357999","name":"Test"}}}}"#;

    fn event(raw: &str) -> WebhookEvent<'_> {
        match WebhookBody::parse(raw).unwrap() {
            WebhookBody::Event(event) => event,
            WebhookBody::Ping => panic!("not an event"),
        }
    }

    #[test]
    fn an_event_has_its_type_guild_subject_and_bytes() {
        let e = event(AUTHORIZED);
        assert_eq!(e.event_type, "APPLICATION_AUTHORIZED");
        assert_eq!(e.guild_id.as_deref(), Some("290926798626357999"));
        assert_eq!(
            e.subject(&Subjects::default()),
            "discord.webhooks.APPLICATION_AUTHORIZED.290926798626357999"
        );
        assert!(e.data.get().starts_with(r#"{"integration_type":0,"#));
        assert!(e.dedupe_key().starts_with("wh:APPLICATION_AUTHORIZED:"));
        let bytes = e.envelope().to_bytes();
        let back = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(back.source, Source::Webhook);
        assert_eq!(
            back.occurred_at.as_deref(),
            Some("2024-10-18T14:42:53.064834")
        );
        assert_eq!(back.data.get(), e.data.get());
    }

    #[test]
    fn entitlements_carry_their_guild_and_user_installs_have_none() {
        let entitlement = r#"{"version":1,"application_id":"1","type":1,"event":{"type":"ENTITLEMENT_CREATE","timestamp":"2024-10-18T18:41:21.109604","data":{"id":"1234505980407808808","guild_id":"42","sku_id":"1","type":4}}}"#;
        assert_eq!(event(entitlement).guild_id.as_deref(), Some("42"));
        let user_install = r#"{"version":1,"application_id":"1","type":1,"event":{"type":"APPLICATION_DEAUTHORIZED","timestamp":"2024-10-18T14:42:53.064834","data":{"user":{"id":"5"}}}}"#;
        let e = event(user_install);
        assert_eq!(e.guild_id, None);
        assert_eq!(
            e.subject(&Subjects::new("bot2")),
            "bot2.webhooks.APPLICATION_DEAUTHORIZED.none"
        );
        let no_data = r#"{"version":1,"application_id":"1","type":1,"event":{"type":"QUEST_USER_ENROLLMENT","timestamp":"t"}}"#;
        assert_eq!(event(no_data).data.get(), "null");
    }

    #[test]
    fn a_retry_is_the_same_event_and_a_new_occurrence_is_not() {
        let reserialized = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(AUTHORIZED).unwrap(),
        )
        .unwrap();
        assert_ne!(reserialized, AUTHORIZED);
        assert_eq!(event(AUTHORIZED).key, event(&reserialized).key);
        // The same user installs again a microsecond later: another event.
        let again = AUTHORIZED.replace("53.064834", "53.064835");
        assert_ne!(event(AUTHORIZED).key, event(&again).key);
        let other_guild = AUTHORIZED.replace("290926798626357999", "290926798626357998");
        assert_ne!(event(AUTHORIZED).key, event(&other_guild).key);
        let other_type = AUTHORIZED.replace("APPLICATION_AUTHORIZED", "APPLICATION_DEAUTHORIZED");
        assert_ne!(event(AUTHORIZED).key, event(&other_type).key);
    }

    #[test]
    fn pings_and_mistakes() {
        assert!(matches!(
            WebhookBody::parse(r#"{"version":1,"application_id":"1","type":0}"#),
            Ok(WebhookBody::Ping)
        ));
        assert_eq!(
            WebhookBody::parse(r#"{"type":1}"#).unwrap_err(),
            MalformedWebhookEvent::MissingEvent
        );
        assert_eq!(
            WebhookBody::parse(r#"{"type":2}"#).unwrap_err(),
            MalformedWebhookEvent::UnknownType(2)
        );
        assert!(matches!(
            WebhookBody::parse(r#"{"type":1,"event":{"type":"a.b>","timestamp":"t"}}"#),
            Err(MalformedWebhookEvent::BadEventType(_))
        ));
        assert!(matches!(
            WebhookBody::parse("{"),
            Err(MalformedWebhookEvent::Json(_))
        ));
    }
}
