//! Dead letters: what a sink could not deliver, kept on `relaycord.dlq.<sink>` in the
//! `RELAYCORD_DLQ` stream with the original envelope as payload, and the tools to list,
//! replay and purge them.
//!
//! Replay delivers each dead letter directly through the same sink (same URL, headers,
//! secret, templates), with the same dedupe id, and deletes it from the DLQ only once the
//! destination accepted it. It runs in the operator's process and reports each outcome at
//! once, instead of pushing letters back into a stream where they could fail again unseen.

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use relaycord_bus::{OutgoingMessage, headers as bus_headers, streams::DLQ_STREAM, subject};

use crate::dedupe::Dedupe;
use crate::error::{SinkError, SinkErrorKind, bus};
use crate::{Body, Event, Outcome, Sink};

/// Headers of a dead letter, beside the original `Relaycord-Type`.
pub mod headers {
    pub const SINK: &str = "Relaycord-Sink";
    pub const ID: &str = "Relaycord-Id";
    pub const REASON: &str = "Relaycord-Dlq-Reason";
    pub const STATUS: &str = "Relaycord-Dlq-Status";
    pub const ATTEMPTS: &str = "Relaycord-Dlq-Attempts";
}

/// What the driver writes beside the envelope.
pub(crate) struct DeadLetterInfo<'a> {
    pub sink: &'a str,
    pub id: &'a str,
    pub event_type: Option<&'a str>,
    pub reason: &'a str,
    pub status: Option<u16>,
    pub attempts: u32,
    /// Sequence of the failed message in its stream: with the sink, it names the letter.
    pub source_seq: Option<u64>,
}

impl DeadLetterInfo<'_> {
    /// The letter's `Nats-Msg-Id`: `dlq:<sink>:<stream seq>:<envelope id>`. A worker that
    /// dies between storing the letter and terminating the message stores it again on
    /// the redelivery; the same id lets the DLQ stream drop that copy. It names the
    /// stream message, not only the event, so the same event published again (a new
    /// message) is a new letter; attempts are left out, since they differ between the
    /// two tries.
    fn msg_id(&self) -> String {
        let seq = self.source_seq.map_or("-".to_owned(), |s| s.to_string());
        format!("dlq:{}:{seq}:{}", self.sink, self.id)
    }
}

/// Why a dead letter was not stored.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// NATS unreachable, no ack, …: trying again can succeed.
    Unavailable(String),
    /// The letter cannot fit the server's max_payload even with a shortened reason:
    /// no retry will ever store it.
    TooLarge { bytes: usize, max_payload: usize },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(error) => f.write_str(error),
            Self::TooLarge { bytes, max_payload } => write!(
                f,
                "{bytes} bytes with its headers, over the server's max_payload of {max_payload}"
            ),
        }
    }
}

/// Stores a dead letter and waits for the stream's ack.
pub(crate) async fn publish(
    js: &jetstream::Context,
    info: &DeadLetterInfo<'_>,
    payload: Bytes,
) -> Result<(), StoreError> {
    let subject = subject::dlq(info.sink);
    let ack = send(js, &subject, info, payload.clone(), Some(&info.msg_id())).await?;
    if ack.duplicate && !stored(js, ack.sequence, &subject).await {
        // The DLQ already saw this id but the letter is gone: it was replayed or purged,
        // and the same stream message failed again (its consumer was reset and read it
        // anew). Dropping it as a duplicate would lose it, so store it without the id;
        // a crash right here can at worst store it twice.
        tracing::info!(
            sink = info.sink,
            id = info.id,
            "dead letter replayed or purged before; storing it again"
        );
        send(js, &subject, info, payload, None).await?;
    }
    Ok(())
}

/// Whether the DLQ still holds the letter at `seq` on `subject`. A lookup error counts
/// as "no": a second copy is better than a lost letter.
async fn stored(js: &jetstream::Context, seq: u64, subject: &str) -> bool {
    let Ok(stream) = js.get_stream(DLQ_STREAM).await else {
        return false;
    };
    stream
        .get_raw_message(seq)
        .await
        .is_ok_and(|m| m.subject.as_str() == subject)
}

async fn send(
    js: &jetstream::Context,
    subject: &str,
    info: &DeadLetterInfo<'_>,
    payload: Bytes,
    msg_id: Option<&str>,
) -> Result<jetstream::publish::PublishAck, StoreError> {
    // The envelope came from a stream of the same server, so it fits alone; the headers
    // can push it over. The reason is the one header of any length: shorten it first.
    let max_payload = js.client().server_info().max_payload;
    let fixed = subject.len() + 256 + msg_id.map_or(0, str::len) + info.sink.len() + info.id.len();
    let room = max_payload.saturating_sub(payload.len() + fixed);
    if room == 0 {
        return Err(StoreError::TooLarge {
            bytes: payload.len() + fixed,
            max_payload,
        });
    }
    let reason = one_line(info.reason);
    let mut cut = room.min(reason.len());
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason[..cut];
    let mut letter = OutgoingMessage::envelope_bytes(subject, payload, msg_id, info.event_type)
        .header(headers::SINK, info.sink)
        .header(headers::ID, info.id)
        .header(headers::REASON, reason)
        .header(headers::ATTEMPTS, &info.attempts.to_string());
    if let Some(status) = info.status {
        letter = letter.header(headers::STATUS, &status.to_string());
    }
    letter
        .publish(js)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// One stored dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Sequence in `RELAYCORD_DLQ`: what `show`, `replay --seq` and `purge --seq` take.
    pub seq: u64,
    pub stored_at: SystemTime,
    pub id: String,
    pub event_type: String,
    pub reason: String,
    pub status: Option<u16>,
    pub attempts: u32,
    /// The original envelope, byte for byte.
    pub payload: Bytes,
    /// Where the event was in its stream, when the driver stored the letter: replays
    /// deliver letters in this order, the events' own.
    pub source_seq: Option<u64>,
}

impl DeadLetter {
    fn from_parts(
        seq: u64,
        stored_at: SystemTime,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Self {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        Self {
            seq,
            stored_at,
            id: get(headers::ID),
            event_type: get(bus_headers::TYPE),
            reason: get(headers::REASON),
            status: get(headers::STATUS).parse().ok(),
            attempts: get(headers::ATTEMPTS).parse().unwrap_or(0),
            source_seq: source_seq(&get(bus_headers::MSG_ID), &get(headers::SINK)),
            payload,
        }
    }
}

/// The stream sequence in a letter's `Nats-Msg-Id` ([`DeadLetterInfo::msg_id`]).
fn source_seq(msg_id: &str, sink: &str) -> Option<u64> {
    let rest = msg_id
        .strip_prefix("dlq:")?
        .strip_prefix(sink)?
        .strip_prefix(':')?;
    rest.split(':').next()?.parse().ok()
}

/// A replayed letter is its own copy: a second replay of it (say, after its deletion
/// failed) is skipped, whatever the original stream sequence was.
fn replay_copy(letter: &DeadLetter) -> String {
    format!("dlq{}", letter.seq)
}

async fn dlq_stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, SinkError> {
    js.get_stream(DLQ_STREAM)
        .await
        .map_err(|e| bus(format!("stream {DLQ_STREAM} is not available"), e))
}

/// Dead letters stored on `subject` (a sink's, or `relaycord.dlq.>`).
pub async fn count(js: &jetstream::Context, subject: &str) -> Result<u64, SinkError> {
    let stream = dlq_stream(js).await?;
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(subject)
        .await
        .map_err(|e| bus("cannot read the DLQ's subjects", e))?
        .try_collect()
        .await
        .map_err(|e| bus("cannot read the DLQ's subjects", e))?;
    Ok(counts.iter().map(|(_, n)| *n as u64).sum())
}

/// Every dead letter of `sink`, oldest first.
pub async fn list(js: &jetstream::Context, sink: &str) -> Result<Vec<DeadLetter>, SinkError> {
    let subject = subject::dlq(sink);
    let total = count(js, &subject).await?;
    if total == 0 {
        return Ok(Vec::new());
    }
    let stream = dlq_stream(js).await?;
    // An ordered consumer reads the subject once, without touching any durable state.
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.into(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| bus("cannot read the DLQ", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| bus("cannot read the DLQ", e))?;
    let mut letters = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|e| bus("reading the DLQ timed out", e))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| bus("cannot read the DLQ", e))?;
        let (seq, published, pending) = {
            let info = message
                .info()
                .map_err(|e| bus("DLQ message without metadata", e))?;
            (info.stream_sequence, info.published, info.pending)
        };
        letters.push(DeadLetter::from_parts(
            seq,
            published.into(),
            message.headers.as_ref(),
            message.payload.clone(),
        ));
        if pending == 0 {
            break;
        }
    }
    Ok(letters)
}

/// One dead letter by its DLQ sequence.
pub async fn get(js: &jetstream::Context, seq: u64) -> Result<DeadLetter, SinkError> {
    let stream = dlq_stream(js).await?;
    let m = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| bus(format!("no dead letter with sequence {seq}"), e))?;
    Ok(DeadLetter::from_parts(
        m.sequence,
        m.time.into(),
        Some(&m.headers),
        m.payload,
    ))
}

/// Deletes the given dead letters (all of the sink's when `seqs` is empty); returns how
/// many were removed. Fails without deleting anything when a sequence is not one of the
/// sink's dead letters.
pub async fn purge(js: &jetstream::Context, sink: &str, seqs: &[u64]) -> Result<u64, SinkError> {
    let stream = dlq_stream(js).await?;
    if seqs.is_empty() {
        let purged = stream
            .purge()
            .filter(subject::dlq(sink))
            .await
            .map_err(|e| bus("cannot purge the DLQ", e))?;
        return Ok(purged.purged);
    }
    // A sequence is global to RELAYCORD_DLQ: check that each one is this sink's before
    // deleting any, so a typo cannot remove another sink's dead letter (or half a list).
    let own = subject::dlq(sink);
    for seq in seqs {
        let found = stream
            .get_raw_message(*seq)
            .await
            .map(|m| m.subject.to_string());
        match found {
            Ok(subject) if subject == *own => {}
            Ok(other) => {
                return Err(SinkError::new(
                    SinkErrorKind::Config,
                    format!(
                        "dead letter {seq} is on {other}, not {own}: not a dead letter of sink {sink:?}, nothing purged (see `relaycord dlq list --sink {sink}`)"
                    ),
                ));
            }
            Err(e) => {
                return Err(bus(
                    format!(
                        "no dead letter with sequence {seq}, nothing purged (see `relaycord dlq list --sink {sink}`)"
                    ),
                    e,
                ));
            }
        }
    }
    let mut removed = 0;
    for seq in seqs {
        if stream
            .delete_message(*seq)
            .await
            .map_err(|e| bus(format!("cannot delete dead letter {seq}"), e))?
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// What became of one replayed dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    Delivered,
    /// The dedupe bucket says it was delivered since: removed without sending.
    AlreadyDelivered,
    /// Still failing; it stays in the DLQ.
    Failed(String),
    /// The sink would not send it (e.g. its own message): removed without sending.
    Skipped(String),
}

/// Delivers `letters` through `sink` one by one (in DLQ order), deleting each that the
/// destination accepts; the others stay. Returns each letter's outcome.
pub async fn replay<S: Sink>(
    js: &jetstream::Context,
    sink: &S,
    dedupe: Option<&Dedupe>,
    letters: &[DeadLetter],
) -> Result<Vec<(u64, Replayed)>, SinkError> {
    let stream = dlq_stream(js).await?;
    let mut results = Vec::with_capacity(letters.len());
    for letter in letters {
        let already = match dedupe {
            Some(d) => d.delivered(&letter.id, &replay_copy(letter)).await,
            None => false,
        };
        let outcome = if already {
            Replayed::AlreadyDelivered
        } else {
            let body = Body::new(&letter.payload);
            let event = Event {
                id: &letter.id,
                event_type: &letter.event_type,
                attempt: letter.attempts + 1,
                body: &body,
                lane: None,
                replay: None,
            };
            match sink.deliver(&event).await {
                Outcome::Delivered => {
                    if let Some(d) = dedupe {
                        d.record(&letter.id, &replay_copy(letter)).await;
                    }
                    Replayed::Delivered
                }
                Outcome::Skipped { reason } => Replayed::Skipped(reason),
                Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => {
                    Replayed::Failed(reason)
                }
            }
        };
        if !matches!(outcome, Replayed::Failed(_)) {
            stream.delete_message(letter.seq).await.map_err(|e| {
                bus(
                    format!("delivered, but cannot delete dead letter {}", letter.seq),
                    e,
                )
            })?;
        }
        results.push((letter.seq, outcome));
    }
    Ok(results)
}

/// Header values cannot hold line breaks; reasons come from receivers and errors.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_ids_name_the_stream_message_not_the_attempt() {
        let info = |attempts, source_seq| DeadLetterInfo {
            sink: "hook",
            id: "msg:1",
            event_type: None,
            reason: "",
            status: None,
            attempts,
            source_seq,
        };
        assert_eq!(info(3, Some(42)).msg_id(), "dlq:hook:42:msg:1");
        assert_eq!(info(3, Some(42)).msg_id(), info(5, Some(42)).msg_id());
        assert_ne!(info(3, Some(42)).msg_id(), info(3, Some(43)).msg_id());
    }

    #[test]
    fn reasons_fit_in_a_header() {
        assert_eq!(one_line("a\r\nb"), "a  b");
        assert_eq!(one_line(&"x".repeat(600)).len(), 500);
    }

    #[test]
    fn letters_read_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(headers::ID, "msg:1");
        h.insert(headers::REASON, "HTTP 500");
        h.insert(headers::STATUS, "500");
        h.insert(headers::ATTEMPTS, "3");
        h.insert(bus_headers::TYPE, "MESSAGE_CREATE");
        let l = DeadLetter::from_parts(
            7,
            SystemTime::UNIX_EPOCH,
            Some(&h),
            Bytes::from_static(b"{}"),
        );
        assert_eq!(
            (l.seq, l.id.as_str(), l.status, l.attempts),
            (7, "msg:1", Some(500), 3)
        );
        assert_eq!(l.event_type, "MESSAGE_CREATE");
        assert_eq!(l.source_seq, None, "no Nats-Msg-Id");
        h.insert(headers::SINK, "my:hook");
        h.insert(bus_headers::MSG_ID, "dlq:my:hook:42:msg:1");
        let l = DeadLetter::from_parts(7, SystemTime::UNIX_EPOCH, Some(&h), Bytes::new());
        assert_eq!(l.source_seq, Some(42));
        let bare = DeadLetter::from_parts(1, SystemTime::UNIX_EPOCH, None, Bytes::new());
        assert_eq!((bare.status, bare.attempts), (None, 0));
    }
}
