//! Parsing of gateway dispatch frames: only what routing and dedupe need.
//!
//! The hot path never builds a model of the event. [`Dispatch::parse`] borrows the
//! event type and the raw `d` straight out of the frame, and [`Keys`] picks the handful
//! of id fields the subject and the dedupe key are made of. The payload itself is
//! carried to the bus byte for byte.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::subject::{is_event_type, is_snowflake};

/// Gateway opcode of a dispatch.
pub const OP_DISPATCH: u8 = 0;

/// Why a gateway frame could not be turned into an envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedDispatch {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("dispatch has no event type (`t`)")]
    MissingType,
    #[error("dispatch has no sequence number (`s`)")]
    MissingSeq,
    #[error("dispatch has no payload (`d`)")]
    MissingData,
    #[error("event type {0:?} is not a valid subject token")]
    BadType(String),
}

/// The outer frame `{"op","t","s","d"}` of a gateway message.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    op: u8,
    #[serde(borrow, default)]
    t: Option<Cow<'a, str>>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

/// One dispatch (op 0) with its payload still raw.
#[derive(Debug)]
pub struct Dispatch<'a> {
    pub event_type: Cow<'a, str>,
    pub seq: u64,
    pub data: &'a RawValue,
    pub keys: Keys<'a>,
}

impl<'a> Dispatch<'a> {
    /// Parses a gateway text frame. Returns `Ok(None)` for frames that are not
    /// dispatches (heartbeat ACKs, HELLO, RECONNECT...), which ingest ignores.
    pub fn parse(frame: &'a str) -> Result<Option<Self>, MalformedDispatch> {
        let frame: Frame<'a> =
            serde_json::from_str(frame).map_err(|e| MalformedDispatch::Json(e.to_string()))?;
        if frame.op != OP_DISPATCH {
            return Ok(None);
        }
        let event_type = frame.t.ok_or(MalformedDispatch::MissingType)?;
        if !is_event_type(&event_type) {
            return Err(MalformedDispatch::BadType(event_type.into_owned()));
        }
        let seq = frame.s.ok_or(MalformedDispatch::MissingSeq)?;
        let data = frame.d.ok_or(MalformedDispatch::MissingData)?;
        // A payload that is not an object (or is one we cannot read keys from) still
        // gets published: its dedupe key falls back to a content hash.
        let keys = serde_json::from_str::<Keys<'a>>(data.get()).unwrap_or_default();
        Ok(Some(Self {
            event_type,
            seq,
            data,
            keys,
        }))
    }

    /// The guild the event is about, when it names one with a well-formed snowflake.
    ///
    /// Most events carry it in `d.guild_id`; the guild events themselves (GUILD_CREATE,
    /// GUILD_UPDATE, GUILD_DELETE) *are* a guild, so theirs is `d.id`. Both end up in the
    /// same subject token, so a per-guild subscriber or sink filter sees them all.
    pub fn guild_id(&self) -> Option<&str> {
        let id = match self.event_type.as_ref() {
            "GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE" => &self.keys.id,
            _ => &self.keys.guild_id,
        };
        id.as_deref().filter(|id| is_snowflake(id))
    }
}

/// The fields of `d` that subjects and dedupe keys are built from. Everything else is
/// skipped by the parser without being allocated.
#[derive(Debug, Default, Deserialize)]
pub struct Keys<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub guild_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub joined_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub user: Option<UserKey<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UserKey<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dispatch_without_touching_payload() {
        let frame = r#"{"op":0,"s":42,"t":"MESSAGE_CREATE","d":{"id":"1","guild_id":"81384788765712384","content":"h\u00e9 \"x\"","nested":{"guild_id":"9"}}}"#;
        let d = Dispatch::parse(frame).unwrap().unwrap();
        assert_eq!(d.event_type, "MESSAGE_CREATE");
        assert_eq!(d.seq, 42);
        assert_eq!(d.guild_id(), Some("81384788765712384"));
        assert_eq!(
            d.data.get(),
            r#"{"id":"1","guild_id":"81384788765712384","content":"h\u00e9 \"x\"","nested":{"guild_id":"9"}}"#
        );
    }

    #[test]
    fn non_dispatch_frames_are_skipped() {
        assert!(Dispatch::parse(r#"{"op":11,"d":null}"#).unwrap().is_none());
        assert!(
            Dispatch::parse(r#"{"op":10,"d":{"heartbeat_interval":41250}}"#)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_dispatches_are_errors() {
        assert!(matches!(
            Dispatch::parse("{not json"),
            Err(MalformedDispatch::Json(_))
        ));
        assert_eq!(
            Dispatch::parse(r#"{"op":0,"s":1,"d":{}}"#).unwrap_err(),
            MalformedDispatch::MissingType
        );
        assert_eq!(
            Dispatch::parse(r#"{"op":0,"t":"X","d":{}}"#).unwrap_err(),
            MalformedDispatch::MissingSeq
        );
        assert_eq!(
            Dispatch::parse(r#"{"op":0,"t":"X","s":1}"#).unwrap_err(),
            MalformedDispatch::MissingData
        );
        assert!(matches!(
            Dispatch::parse(r#"{"op":0,"t":"A.>","s":1,"d":{}}"#),
            Err(MalformedDispatch::BadType(_))
        ));
    }

    #[test]
    fn odd_payloads_still_parse() {
        let d = Dispatch::parse(r#"{"op":0,"t":"X","s":1,"d":[1,2]}"#)
            .unwrap()
            .unwrap();
        assert!(d.keys.id.is_none());
        let d = Dispatch::parse(r#"{"op":0,"t":"X","s":1,"d":{"guild_id":"a.b"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(d.guild_id(), None, "a non-snowflake guild id is not routed");
    }

    // Discord's documented "Example Guild" and "Example Unavailable Guild"
    // (discord/discord-api-docs, CC BY-SA 4.0): the `d` of GUILD_CREATE / GUILD_UPDATE and
    // of GUILD_DELETE.
    const EXAMPLE_GUILD: &str = r#"{"id":"197038439483310086","name":"Discord Testers","icon":"f64c482b807da4f539cff778d174971c","description":"The official place to report Discord Bugs!","splash":null,"discovery_splash":null,"features":["ANIMATED_ICON","VERIFIED","NEWS","VANITY_URL","DISCOVERABLE","MORE_EMOJI","INVITE_SPLASH","BANNER","COMMUNITY"],"emojis":[],"banner":"9b6439a7de04f1d26af92f84ac9e1e4a","owner_id":"73193882359173120","application_id":null,"region":null,"afk_channel_id":null,"afk_timeout":300,"system_channel_id":null,"widget_enabled":true,"widget_channel_id":null,"verification_level":3,"roles":[],"default_message_notifications":1,"mfa_level":1,"explicit_content_filter":2,"max_presences":40000,"max_members":250000,"vanity_url_code":"discord-testers","premium_tier":3,"premium_subscription_count":33,"system_channel_flags":0,"preferred_locale":"en-US","rules_channel_id":"441688182833020939","public_updates_channel_id":"281283303326089216","safety_alerts_channel_id":"281283303326089216"}"#;
    const UNAVAILABLE_GUILD: &str = r#"{"id":"41771983423143937","unavailable":true}"#;

    #[test]
    fn guild_events_are_routed_by_their_own_id() {
        let frame = |t: &str, d: &str| format!(r#"{{"op":0,"s":7,"t":"{t}","d":{d}}}"#);
        for t in ["GUILD_CREATE", "GUILD_UPDATE"] {
            let raw = frame(t, EXAMPLE_GUILD);
            let d = Dispatch::parse(&raw).unwrap().unwrap();
            assert_eq!(d.guild_id(), Some("197038439483310086"), "{t}");
        }
        let raw = frame("GUILD_DELETE", UNAVAILABLE_GUILD);
        let d = Dispatch::parse(&raw).unwrap().unwrap();
        assert_eq!(d.guild_id(), Some("41771983423143937"));
        // Any other event's `d.id` is not a guild.
        let raw = frame("CHANNEL_CREATE", r#"{"id":"41771983423143937"}"#);
        let d = Dispatch::parse(&raw).unwrap().unwrap();
        assert_eq!(d.guild_id(), None);
    }
}
