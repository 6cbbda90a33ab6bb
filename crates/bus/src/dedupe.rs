//! Event identity: the envelope `id` and the `Nats-Msg-Id` header.
//!
//! The rule (docs/bus.md): two different Discord events never share an id; the same event
//! seen twice always does. Content alone cannot keep the first half — a reaction added,
//! removed and added again is two byte-identical `MESSAGE_REACTION_ADD`s — so an event is
//! named by *where it happened*: the gateway session and its seq. A RESUME replays the same
//! `(session, seq)`, and a new owner of a shard resumes the session it took over, so both
//! land on the same id.
//!
//! Events that carry an id naming exactly one occurrence (a message's creation, an
//! interaction, a member's join) keep a readable key: Discord sends them to every session
//! that covers the guild, and the key makes two sessions' copies one message without
//! anything else. The remaining cross-session case — two shard generations during a
//! reshard — is aligned by ingest (see `relaycord_ingest`'s reshard module), not by keys.
//!
//! Keys are printable ASCII so they fit unchanged into NATS headers, HTTP headers
//! (`webhook-id`) and AMQP message ids.

use sha2::{Digest, Sha256};

use crate::dispatch::Dispatch;
use crate::subject::is_snowflake;

/// The dedupe key of a gateway dispatch received on gateway session `session_id`.
///
/// `msg:`, `ix:` and `join:` keys for the events that name their one occurrence; every
/// other event is `s:<session>:<seq>`. A dispatch without a known session (never the case
/// after READY) falls back to a hash of its type, seq and bytes.
pub fn gateway_key(dispatch: &Dispatch<'_>, session_id: Option<&str>) -> String {
    if let Some(key) = occurrence_key(dispatch) {
        return key;
    }
    match session_id {
        Some(session) => format!("s:{}:{}", session_token(session), dispatch.seq),
        None => {
            let seq = dispatch.seq.to_string();
            content_hash_key(
                &dispatch.event_type,
                &[seq.as_bytes(), dispatch.data.get().as_bytes()],
            )
        }
    }
}

/// The dedupe key of an interaction, the same whether it came over HTTP or the gateway.
pub fn interaction_key(interaction_id: &str) -> String {
    format!("ix:{interaction_id}")
}

/// Whether `key` names one occurrence across sessions (`msg:`, `ix:`, `join:`): such an
/// event needs no alignment between two sessions that both saw it.
pub fn is_occurrence_key(key: &str) -> bool {
    ["msg:", "ix:", "join:"].iter().any(|p| key.starts_with(p))
}

/// The session a `s:<session>:<seq>` key was made on, as it appears in the key.
pub fn session_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("s:")?.rsplit_once(':').map(|(s, _)| s)
}

/// The form of a session id inside a key: Discord's ids (32 hex digits) as they are,
/// anything else hashed so a key is never built from arbitrary text.
pub fn session_token(session_id: &str) -> std::borrow::Cow<'_, str> {
    let plain = !session_id.is_empty()
        && session_id.len() <= 64
        && session_id.bytes().all(|b| b.is_ascii_alphanumeric());
    if plain {
        session_id.into()
    } else {
        let digest = Sha256::digest(session_id.as_bytes());
        format!("x{}", hex::encode(&digest[..16])).into()
    }
}

fn snowflake<'a>(value: &'a Option<std::borrow::Cow<'_, str>>) -> Option<&'a str> {
    value.as_deref().filter(|s| is_snowflake(s))
}

/// Keys of events whose payload names the one occurrence they are. Anything Discord can
/// send twice as two events (updates, reactions, presences, deletes of re-creatable
/// things) is deliberately absent.
fn occurrence_key(d: &Dispatch<'_>) -> Option<String> {
    let k = &d.keys;
    match d.event_type.as_ref() {
        "MESSAGE_CREATE" => Some(format!("msg:{}", snowflake(&k.id)?)),
        "INTERACTION_CREATE" => Some(interaction_key(snowflake(&k.id)?)),
        // A user who leaves and joins again has a new `joined_at`.
        "GUILD_MEMBER_ADD" => {
            let user = k.user.as_ref()?.id.as_deref().filter(|s| is_snowflake(s))?;
            let joined = k.joined_at.as_deref().filter(|t| is_timestamp(t))?;
            Some(format!("join:{}:{user}:{joined}", snowflake(&k.guild_id)?))
        }
        _ => None,
    }
}

/// `h:<TYPE>:<128-bit hex>` over the type and `parts`, each preceded by a 0 byte.
pub fn content_hash_key(event_type: &str, parts: &[&[u8]]) -> String {
    format!(
        "h:{event_type}:{}",
        hex::encode(content_digest(event_type, parts))
    )
}

/// The first 128 bits of SHA-256 over the type and `parts`, each preceded by a 0 byte:
/// what ingest compares to align two sessions' copies of an event.
pub fn content_digest(event_type: &str, parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(event_type.as_bytes());
    for part in parts {
        hasher.update([0]);
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// ISO 8601 timestamps as Discord sends them: digits and `-:.+TZ` only.
fn is_timestamp(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 40
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'+' | b'T' | b'Z'))
}

#[cfg(test)]
mod tests;
