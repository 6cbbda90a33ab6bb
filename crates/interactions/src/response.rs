//! Interaction responses: the ones Relaycord writes itself (PONG, deferrals), the
//! checks a handler's reply must pass before it is sent to Discord, and how a late reply
//! becomes a follow-up request.
//!
//! A handler's reply is passed on byte for byte once checked: only `type` and the shape
//! of `data` are read, the content is Discord's to validate.

use bytes::Bytes;
use relaycord_bus::interaction::Kind;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Interaction callback types (Discord's "Interaction Callback Type").
pub mod callback {
    pub const PONG: u64 = 1;
    pub const CHANNEL_MESSAGE: u64 = 4;
    pub const DEFERRED_CHANNEL_MESSAGE: u64 = 5;
    pub const DEFERRED_UPDATE_MESSAGE: u64 = 6;
    pub const UPDATE_MESSAGE: u64 = 7;
    pub const AUTOCOMPLETE_RESULT: u64 = 8;
    pub const MODAL: u64 = 9;
    pub const PREMIUM_REQUIRED: u64 = 10;
    pub const LAUNCH_ACTIVITY: u64 = 12;
}

/// Message flag: only the invoking user sees the message.
const EPHEMERAL: u64 = 1 << 6;

pub fn pong() -> Bytes {
    Bytes::from_static(br#"{"type":1}"#)
}

/// What Relaycord answers when the handler is late or there is none: "thinking…" (type 5)
/// for commands and modal submits, a silent acknowledgement (type 6) for components, and
/// no suggestions for autocomplete (which cannot be deferred).
pub fn deferral(kind: Kind, ephemeral: bool) -> Bytes {
    match kind {
        Kind::Component => Bytes::from_static(br#"{"type":6}"#),
        Kind::Autocomplete => Bytes::from_static(br#"{"type":8,"data":{"choices":[]}}"#),
        Kind::Ping => pong(),
        Kind::Command | Kind::Modal if ephemeral => {
            Bytes::from(format!(r#"{{"type":5,"data":{{"flags":{EPHEMERAL}}}}}"#))
        }
        Kind::Command | Kind::Modal => Bytes::from_static(br#"{"type":5}"#),
    }
}

/// Why a handler's reply cannot be sent to Discord.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReply {
    #[error("reply is not a JSON object with an integer `type`: {0}")]
    Shape(String),
    #[error("response type {0} is not allowed for {1} interactions")]
    TypeNotAllowed(u64, Kind),
    #[error("response type {0} needs a `data` object")]
    MissingData(u64),
    #[error("response type {0} cannot be sent after a deferral")]
    NotDeliverableLate(u64),
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: u64,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Checks a reply for an interaction of `kind`; returns its callback type.
pub fn validate(kind: Kind, reply: &[u8]) -> Result<u64, InvalidReply> {
    let parsed = parse(reply)?;
    let allowed: &[u64] = {
        use callback::*;
        match kind {
            Kind::Ping => &[PONG],
            Kind::Command => &[
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                MODAL,
                PREMIUM_REQUIRED,
                LAUNCH_ACTIVITY,
            ],
            Kind::Component => &[
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                DEFERRED_UPDATE_MESSAGE,
                UPDATE_MESSAGE,
                MODAL,
                PREMIUM_REQUIRED,
                LAUNCH_ACTIVITY,
            ],
            Kind::Modal => &[
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                DEFERRED_UPDATE_MESSAGE,
                UPDATE_MESSAGE,
                PREMIUM_REQUIRED,
            ],
            Kind::Autocomplete => &[AUTOCOMPLETE_RESULT],
        }
    };
    if !allowed.contains(&parsed.kind) {
        return Err(InvalidReply::TypeNotAllowed(parsed.kind, kind));
    }
    let needs_data = matches!(
        parsed.kind,
        callback::CHANNEL_MESSAGE | callback::AUTOCOMPLETE_RESULT | callback::MODAL
    );
    if needs_data && parsed.data.is_none() {
        return Err(InvalidReply::MissingData(parsed.kind));
    }
    Ok(parsed.kind)
}

fn parse(reply: &[u8]) -> Result<Reply<'_>, InvalidReply> {
    // serde would also read a struct from an array (`[4]`); a response is an object.
    if reply.trim_ascii_start().first() != Some(&b'{') {
        return Err(InvalidReply::Shape("not a JSON object".to_owned()));
    }
    let parsed: Reply<'_> =
        serde_json::from_slice(reply).map_err(|e| InvalidReply::Shape(e.to_string()))?;
    if let Some(data) = parsed.data
        && !data.get().trim_start().starts_with('{')
    {
        return Err(InvalidReply::Shape("`data` is not an object".to_owned()));
    }
    Ok(parsed)
}

/// The REST call that delivers a late reply after Relaycord's deferral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    /// `PATCH /webhooks/{app}/{token}/messages/@original` with this message body: turns the
    /// "thinking…" message into the reply, or (components) edits the clicked message.
    EditOriginal(Bytes),
    /// `POST /webhooks/{app}/{token}`: a new message (a component's type-4 reply, whose
    /// deferral created no message to edit).
    Create(Bytes),
    /// The handler itself deferred (type 5 or 6): nothing to send.
    Nothing,
}

/// Maps a late (already validated or not) reply for an interaction of `kind` onto the
/// follow-up that delivers it.
pub fn follow_up(kind: Kind, reply: &[u8]) -> Result<FollowUp, InvalidReply> {
    let reply_type = validate(kind, reply)?;
    let data = || {
        parse(reply).ok().and_then(|r| r.data).map_or_else(
            || Bytes::from_static(b"{}"),
            |d| Bytes::copy_from_slice(d.get().as_bytes()),
        )
    };
    use callback::*;
    match (kind, reply_type) {
        (_, DEFERRED_CHANNEL_MESSAGE | DEFERRED_UPDATE_MESSAGE) => Ok(FollowUp::Nothing),
        (Kind::Component, CHANNEL_MESSAGE) => Ok(FollowUp::Create(data())),
        (Kind::Command | Kind::Modal | Kind::Component, CHANNEL_MESSAGE | UPDATE_MESSAGE) => {
            Ok(FollowUp::EditOriginal(data()))
        }
        (_, other) => Err(InvalidReply::NotDeliverableLate(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferrals_follow_the_interaction_kind() {
        assert_eq!(&deferral(Kind::Command, false)[..], br#"{"type":5}"#);
        assert_eq!(
            &deferral(Kind::Modal, true)[..],
            br#"{"type":5,"data":{"flags":64}}"#
        );
        assert_eq!(&deferral(Kind::Component, true)[..], br#"{"type":6}"#);
        assert_eq!(
            &deferral(Kind::Autocomplete, false)[..],
            br#"{"type":8,"data":{"choices":[]}}"#
        );
        for kind in [
            Kind::Command,
            Kind::Modal,
            Kind::Component,
            Kind::Autocomplete,
        ] {
            // Relaycord's own answers must pass the checks it applies to handlers.
            validate(kind, &deferral(kind, false)).unwrap();
        }
    }

    #[test]
    fn replies_are_checked_against_the_kind() {
        let message = br#"{"type":4,"data":{"content":"pong"}}"#;
        assert_eq!(validate(Kind::Command, message), Ok(4));
        assert_eq!(
            validate(Kind::Command, br#"{"type":7,"data":{}}"#),
            Err(InvalidReply::TypeNotAllowed(7, Kind::Command))
        );
        assert_eq!(
            validate(Kind::Autocomplete, message),
            Err(InvalidReply::TypeNotAllowed(4, Kind::Autocomplete))
        );
        assert_eq!(
            validate(Kind::Command, br#"{"type":4}"#),
            Err(InvalidReply::MissingData(4))
        );
        for bad in [
            &b"pong"[..],
            b"[4]",
            br#"{"type":"4"}"#,
            br#"{"type":4,"data":"x"}"#,
        ] {
            assert!(matches!(
                validate(Kind::Command, bad),
                Err(InvalidReply::Shape(_))
            ));
        }
    }

    #[test]
    fn late_replies_map_to_the_right_follow_up() {
        let data = br#"{"content":"done","embeds":[]}"#;
        let reply = |t: u64| {
            format!(
                r#"{{"type":{t},"data":{}}}"#,
                std::str::from_utf8(data).unwrap()
            )
        };
        assert_eq!(
            follow_up(Kind::Command, reply(4).as_bytes()),
            Ok(FollowUp::EditOriginal(Bytes::from_static(data)))
        );
        assert_eq!(
            follow_up(Kind::Component, reply(4).as_bytes()),
            Ok(FollowUp::Create(Bytes::from_static(data)))
        );
        assert_eq!(
            follow_up(Kind::Component, reply(7).as_bytes()),
            Ok(FollowUp::EditOriginal(Bytes::from_static(data)))
        );
        assert_eq!(
            follow_up(Kind::Command, br#"{"type":5}"#),
            Ok(FollowUp::Nothing)
        );
        assert_eq!(
            follow_up(Kind::Command, reply(9).as_bytes()),
            Err(InvalidReply::NotDeliverableLate(9))
        );
        assert_eq!(
            follow_up(Kind::Autocomplete, reply(8).as_bytes()),
            Err(InvalidReply::NotDeliverableLate(8))
        );
    }
}
