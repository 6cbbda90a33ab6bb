//! Deterministic dedupe keys: the envelope `id` and the `Nats-Msg-Id` header.
//!
//! A key depends only on the event's content, so a RESUME replay, a dispatch Discord
//! sends twice and two replicas briefly owning one shard all produce the same key, and
//! JetStream's duplicate window keeps one copy. Keys are printable ASCII so they fit
//! unchanged into NATS headers, HTTP headers (`webhook-id`) and AMQP message ids.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::dispatch::Dispatch;
use crate::subject::is_snowflake;

/// The dedupe key of a gateway dispatch.
///
/// Events with identity in their payload get readable keys; everything else gets a
/// hash of the event type and the exact `d` bytes. When an expected field is missing or
/// malformed the hash is used too, so a key is never built from untrusted text.
pub fn gateway_key(dispatch: &Dispatch<'_>) -> String {
    identity_key(dispatch)
        .unwrap_or_else(|| content_hash_key(&dispatch.event_type, dispatch.data.get()))
}

/// The dedupe key of an interaction, the same whether it came over HTTP or the gateway.
pub fn interaction_key(interaction_id: &str) -> String {
    format!("ix:{interaction_id}")
}

fn snowflake<'a>(value: &'a Option<std::borrow::Cow<'_, str>>) -> Option<&'a str> {
    value.as_deref().filter(|s| is_snowflake(s))
}

fn identity_key(d: &Dispatch<'_>) -> Option<String> {
    let k = &d.keys;
    match d.event_type.as_ref() {
        "MESSAGE_CREATE" => Some(format!("msg:{}", snowflake(&k.id)?)),
        "MESSAGE_UPDATE" => {
            let edited = k.edited_timestamp.as_deref().filter(|t| is_timestamp(t))?;
            Some(format!("msgupd:{}:{edited}", snowflake(&k.id)?))
        }
        "INTERACTION_CREATE" => Some(interaction_key(snowflake(&k.id)?)),
        "GUILD_MEMBER_ADD" => {
            let user = k.user.as_ref()?.id.as_deref().filter(|s| is_snowflake(s))?;
            let joined = k.joined_at.as_deref().filter(|t| is_timestamp(t))?;
            Some(format!("join:{}:{user}:{joined}", snowflake(&k.guild_id)?))
        }
        "MESSAGE_REACTION_ADD" | "MESSAGE_REACTION_REMOVE" => {
            let action = if d.event_type == "MESSAGE_REACTION_ADD" {
                "add"
            } else {
                "remove"
            };
            let emoji = k.emoji.as_ref()?;
            let emoji = match (emoji.id.as_deref(), emoji.name.as_deref()) {
                (Some(id), _) if is_snowflake(id) => id.to_owned(),
                (_, Some(name)) if !name.is_empty() => percent_encode(name),
                _ => return None,
            };
            Some(format!(
                "react:{action}:{}:{}:{emoji}",
                snowflake(&k.message_id)?,
                snowflake(&k.user_id)?
            ))
        }
        _ => None,
    }
}

/// `h:<TYPE>:<128-bit hex>` over the type and the raw payload bytes.
pub fn content_hash_key(event_type: &str, raw_data: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(event_type.as_bytes());
    hasher.update([0]);
    hasher.update(raw_data.as_bytes());
    let digest = hasher.finalize();
    format!("h:{event_type}:{}", hex::encode(&digest[..16]))
}

/// ISO 8601 timestamps as Discord sends them: digits and `-:.+TZ` only.
fn is_timestamp(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 40
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'+' | b'T' | b'Z'))
}

/// Unicode emoji become `%F0%9F%91%8D`-style text: ASCII-only and unambiguous.
fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, KEEP_UNRESERVED).to_string()
}

/// Everything but ASCII letters, digits, `_` and `-` is written `%XX` (upper case).
const KEEP_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'-');

#[cfg(test)]
mod tests {
    use super::*;

    fn key(frame: &str) -> String {
        gateway_key(&Dispatch::parse(frame).unwrap().unwrap())
    }

    // Payload shapes follow Discord's documented examples (discord/discord-api-docs,
    // CC BY-SA 4.0), trimmed to the fields that matter here.
    #[test]
    fn message_create_is_keyed_by_message_id() {
        let frame = r#"{"op":0,"s":5,"t":"MESSAGE_CREATE","d":{"reactions":[{"count":1,"me":false,"emoji":{"id":null,"name":"🔥"}}],"attachments":[],"tts":false,"embeds":[],"timestamp":"2017-07-11T17:27:07.299000+00:00","mention_everyone":false,"id":"334385199974967042","pinned":false,"edited_timestamp":null,"author":{"username":"Mason","discriminator":"9999","id":"53908099506183680","avatar":"a_bab14f271d565501444b2ca3be944b25"},"mention_roles":[],"content":"Supa Hot","channel_id":"290926798999357250","mentions":[],"type":0,"guild_id":"290926798626357250"}}"#;
        assert_eq!(key(frame), "msg:334385199974967042");
        // The nested emoji of an existing reaction must not be mistaken for the key.
        let replayed = frame.replace(r#""s":5"#, r#""s":99"#);
        assert_eq!(
            key(&replayed),
            "msg:334385199974967042",
            "seq is not part of the key"
        );
    }

    #[test]
    fn message_update_includes_edit_time_or_falls_back_to_hash() {
        let edited = r#"{"op":0,"s":1,"t":"MESSAGE_UPDATE","d":{"id":"334385199974967042","channel_id":"290926798999357250","edited_timestamp":"2017-07-11T17:28:07.299000+00:00","content":"Supa Hot!"}}"#;
        assert_eq!(
            key(edited),
            "msgupd:334385199974967042:2017-07-11T17:28:07.299000+00:00"
        );
        // Embed unfurls arrive as updates without an edit time: two distinct unfurls
        // must not collapse into one key.
        let a = key(
            r#"{"op":0,"s":1,"t":"MESSAGE_UPDATE","d":{"id":"1","edited_timestamp":null,"embeds":[1]}}"#,
        );
        let b = key(
            r#"{"op":0,"s":2,"t":"MESSAGE_UPDATE","d":{"id":"1","edited_timestamp":null,"embeds":[2]}}"#,
        );
        assert!(a.starts_with("h:MESSAGE_UPDATE:"));
        assert_ne!(a, b);
    }

    #[test]
    fn reactions_key_on_message_user_and_emoji() {
        let unicode = r#"{"op":0,"s":1,"t":"MESSAGE_REACTION_ADD","d":{"user_id":"53908099506183680","channel_id":"290926798999357250","message_id":"334385199974967042","guild_id":"290926798626357250","emoji":{"id":null,"name":"🔥"}}}"#;
        assert_eq!(
            key(unicode),
            "react:add:334385199974967042:53908099506183680:%F0%9F%94%A5"
        );
        let custom = r#"{"op":0,"s":1,"t":"MESSAGE_REACTION_REMOVE","d":{"user_id":"1","message_id":"2","emoji":{"id":"41771983429993937","name":"LUL"}}}"#;
        assert_eq!(key(custom), "react:remove:2:1:41771983429993937");
    }

    #[test]
    fn member_add_keys_on_guild_user_and_join_time() {
        let frame = r#"{"op":0,"s":1,"t":"GUILD_MEMBER_ADD","d":{"user":{"id":"80351110224678912","username":"Nelly"},"nick":"NOT API SUPPORT","roles":[],"joined_at":"2015-04-26T06:26:56.936000+00:00","deaf":false,"mute":false,"guild_id":"197038439483310086"}}"#;
        assert_eq!(
            key(frame),
            "join:197038439483310086:80351110224678912:2015-04-26T06:26:56.936000+00:00"
        );
    }

    #[test]
    fn interactions_share_the_http_key() {
        let frame = r#"{"op":0,"s":1,"t":"INTERACTION_CREATE","d":{"id":"786008729715212338","type":2,"token":"x"}}"#;
        assert_eq!(key(frame), interaction_key("786008729715212338"));
    }

    #[test]
    fn other_events_hash_type_and_exact_bytes() {
        let a = key(
            r#"{"op":0,"s":1,"t":"PRESENCE_UPDATE","d":{"user":{"id":"1"},"status":"online"}}"#,
        );
        let same = key(
            r#"{"op":0,"s":7,"t":"PRESENCE_UPDATE","d":{"user":{"id":"1"},"status":"online"}}"#,
        );
        let other =
            key(r#"{"op":0,"s":1,"t":"PRESENCE_UPDATE","d":{"user":{"id":"1"},"status":"idle"}}"#);
        let other_type =
            key(r#"{"op":0,"s":1,"t":"TYPING_START","d":{"user":{"id":"1"},"status":"online"}}"#);
        assert_eq!(a, same);
        assert_ne!(a, other);
        assert_ne!(a, other_type);
        assert_eq!(a.len(), "h:PRESENCE_UPDATE:".len() + 32);
    }

    /// Keys are ids on the bus contract: these exact bytes must never change.
    #[test]
    fn encodings_are_pinned() {
        assert_eq!(percent_encode("🔥"), "%F0%9F%94%A5");
        assert_eq!(percent_encode("aZ09_-"), "aZ09_-");
        assert_eq!(
            percent_encode("a.b c:d%e/f~g*h>"),
            "a%2Eb%20c%3Ad%25e%2Ff%7Eg%2Ah%3E"
        );
        assert_eq!(percent_encode("é\u{0}\n"), "%C3%A9%00%0A");
        assert_eq!(percent_encode(""), "");
        assert_eq!(
            content_hash_key("PRESENCE_UPDATE", r#"{"user":{"id":"1"}}"#),
            "h:PRESENCE_UPDATE:a950a474275b7d1f4635e7ceac4db903"
        );
    }

    #[test]
    fn hostile_fields_fall_back_to_the_hash() {
        let k = key(r#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"id":"1\r\nX-Evil: 1"}}"#);
        assert!(k.starts_with("h:MESSAGE_CREATE:"), "{k}");
        let k = key(
            r#"{"op":0,"s":1,"t":"GUILD_MEMBER_ADD","d":{"user":{"id":"1"},"guild_id":"2","joined_at":"x y"}}"#,
        );
        assert!(k.starts_with("h:GUILD_MEMBER_ADD:"), "{k}");
        assert!(k.is_ascii());
    }
}
