//! One event as the driver hands it to a sink: read from the message at most once.
//!
//! The filter, the dedupe id, key templates, the discord sink's message templates and the
//! end-to-end latency all look into the same envelope. [`Body`] parses it on first use
//! and keeps the result, borrowing from the message's bytes, so a delivery parses the
//! envelope once (or never, when nothing asks) and copies none of its strings.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use relaycord_bus::Envelope;
use serde::Deserialize;
use serde_json::value::RawValue;

/// One event handed to a sink.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Envelope id, the dedupe key (`Nats-Msg-Id`); receivers dedupe on it.
    pub id: &'a str,
    pub event_type: &'a str,
    /// 1 on the first delivery, then 2, 3...
    pub attempt: u32,
    pub body: &'a Body<'a>,
    /// Its lane and place in it, when the sink delivers in order; sent as headers.
    pub lane: Option<&'a crate::ordering::LaneMark>,
    /// The replay delivering it again (`relaycord replay`), sent as `Relaycord-Replay`.
    pub replay: Option<&'a str>,
}

impl Event<'_> {
    /// The headers that describe this delivery (not the event): its lane and place in it,
    /// and the replay it is part of. Every sink type with headers sends them.
    pub fn delivery_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = self.lane.map(|l| l.headers()).unwrap_or_default();
        if let Some(replay) = self.replay {
            out.push((crate::replay::HEADER, replay.to_owned()));
        }
        out
    }
}

/// The envelope bytes exactly as they are on the bus, and what has been read from them.
#[derive(Debug)]
pub struct Body<'a> {
    /// Sent on as they are: receivers get the envelope byte for byte.
    pub bytes: &'a Bytes,
    envelope: OnceLock<Result<Envelope<'a>, serde_json::Error>>,
    channel_id: OnceLock<Option<Cow<'a, str>>>,
    author: OnceLock<Author<'a>>,
}

/// Who caused an event, as far as its `data` says: the message's `author`, the reacting
/// or typing `user_id`, the member's or presence's `user`, and a webhook's `webhook_id`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Author<'a> {
    /// Every id found; a webhook message lists the webhook's id (author and webhook_id).
    pub ids: Vec<Cow<'a, str>>,
    /// A bot user (`bot: true`) or a webhook posted it.
    pub bot: bool,
}

impl<'a> Body<'a> {
    /// Nothing is parsed until asked for.
    pub fn new(bytes: &'a Bytes) -> Self {
        Self {
            bytes,
            envelope: OnceLock::new(),
            channel_id: OnceLock::new(),
            author: OnceLock::new(),
        }
    }

    /// The parsed envelope, or why the bytes are not one.
    pub fn envelope(&self) -> Result<&Envelope<'a>, &serde_json::Error> {
        self.envelope
            .get_or_init(|| Envelope::from_slice(self.bytes))
            .as_ref()
    }

    /// `data.channel_id`. Also read from a payload that is not a whole envelope but has
    /// a `data` object, as the channel filter always has.
    pub fn channel_id(&self) -> Option<&str> {
        self.channel_id
            .get_or_init(|| channel_id(self.data()?))
            .as_deref()
    }
}

impl<'a> Body<'a> {
    /// The envelope's `data`, or that of a payload shaped like one.
    fn data(&self) -> Option<&'a RawValue> {
        match self.envelope() {
            Ok(envelope) => Some(envelope.data),
            Err(_) => data_only(self.bytes),
        }
    }

    /// Who caused the event; empty when `data` names nobody (or is not JSON).
    pub fn author(&self) -> &Author<'a> {
        self.author
            .get_or_init(|| self.data().map(author).unwrap_or_default())
    }
}

fn author(data: &RawValue) -> Author<'_> {
    #[derive(Deserialize)]
    struct User<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[serde(default)]
        bot: Option<bool>,
    }
    #[derive(Deserialize)]
    struct Member<'a> {
        #[serde(borrow, default)]
        user: Option<User<'a>>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow, default)]
        author: Option<User<'a>>,
        #[serde(borrow, default)]
        user: Option<User<'a>>,
        #[serde(borrow, default)]
        member: Option<Member<'a>>,
        #[serde(borrow, default)]
        user_id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        webhook_id: Option<Cow<'a, str>>,
    }
    let Ok(data) = serde_json::from_str::<Data<'_>>(data.get()) else {
        return Author::default();
    };
    let users = [data.author, data.user, data.member.and_then(|m| m.user)];
    let mut found = Author {
        bot: data.webhook_id.is_some(),
        ..Author::default()
    };
    for user in users.into_iter().flatten() {
        found.bot |= user.bot == Some(true);
        found.ids.extend(user.id);
    }
    found.ids.extend(data.user_id);
    found.ids.extend(data.webhook_id);
    found.ids.sort();
    found.ids.dedup();
    found
}

/// `data` of something shaped like an envelope; every other field is skipped unparsed.
fn data_only(bytes: &[u8]) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct Env<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    serde_json::from_slice::<Env<'_>>(bytes)
        .ok()
        .map(|e| e.data)
}

fn channel_id(data: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        channel_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Data<'_>>(data.get())
        .ok()?
        .channel_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_channel_are_read_from_the_bytes() {
        let bytes = Bytes::from_static(
            br#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":0,"seq":1,"guild_id":"1","received_at":"2026-11-23T12:00:00.000Z","data":{"channel_id":"290926798999357250"}}"#,
        );
        let body = Body::new(&bytes);
        assert_eq!(body.envelope().unwrap().id, "msg:1");
        assert_eq!(body.channel_id(), Some("290926798999357250"));

        let partial = Bytes::from_static(br#"{"data":{"channel_id":"10"}}"#);
        let body = Body::new(&partial);
        assert!(body.envelope().is_err());
        assert_eq!(body.channel_id(), Some("10"));

        let not_json = Bytes::from_static(b"not json");
        assert_eq!(Body::new(&not_json).channel_id(), None);
    }

    #[test]
    fn authors_are_read_wherever_discord_puts_them() {
        let ids = |json: &'static str| {
            let bytes = Bytes::from_static(json.as_bytes());
            let body = Body::new(&bytes);
            let a = body.author();
            (
                a.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                a.bot,
            )
        };
        assert_eq!(
            ids(r#"{"data":{"author":{"id":"1","username":"Mason"},"content":"x"}}"#),
            (vec!["1".to_owned()], false)
        );
        assert_eq!(
            ids(r#"{"data":{"author":{"id":"2","bot":true}}}"#),
            (vec!["2".to_owned()], true)
        );
        assert_eq!(
            ids(r#"{"data":{"author":{"id":"3","bot":true},"webhook_id":"3"}}"#),
            (vec!["3".to_owned()], true),
            "a webhook message"
        );
        assert_eq!(
            ids(r#"{"data":{"user_id":"4","member":{"user":{"id":"4","bot":false}}}}"#),
            (vec!["4".to_owned()], false),
            "a reaction"
        );
        assert_eq!(
            ids(r#"{"data":{"user":{"id":"5","bot":true}}}"#),
            (vec!["5".to_owned()], true)
        );
        assert_eq!(ids(r#"{"data":{"guild_id":"1"}}"#), (vec![], false));
        assert_eq!(ids("not json"), (vec![], false));
    }
}
