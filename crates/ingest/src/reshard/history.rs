//! What the old generation published during a reshard, read back from the gateway stream.
//!
//! The stream is the old generation's own log: nothing extra is written on the hot path,
//! and it survives any replica's death. A new shard reads it once, at the switch, from
//! the reshard's start to the end.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use relaycord_bus::{Envelope, Subjects, dedupe};
use serde_json::value::RawValue;

use super::align::Digest;
use crate::error::{IngestError, IngestErrorKind};

/// The gateway stream's last sequence now (0 when empty).
pub(crate) async fn last_sequence(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<u64, IngestError> {
    let name = relaycord_bus::streams::gateway_stream(subjects);
    let mut stream = js.get_stream(&name).await.map_err(|e| {
        IngestError::with_source(
            IngestErrorKind::Bus,
            format!("cannot open stream {name}"),
            e,
        )
    })?;
    let info = stream.info().await.map_err(|e| {
        IngestError::with_source(
            IngestErrorKind::Bus,
            format!("cannot read stream {name}"),
            e,
        )
    })?;
    Ok(info.state.last_sequence)
}

/// The alignment key of an event: its guild, or `none`.
pub(crate) fn guild_key(guild_id: Option<&str>) -> String {
    guild_id.unwrap_or("none").to_owned()
}

/// Where an event is on the stream and when ingest read it (`received_at`, Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub seq: u64,
    pub received_ms: u64,
}

/// The old generation's events read within this long after the new shard read a guild's
/// GUILD_CREATE are left out of the comparison: one of them may have been sent to the old
/// session before the new one joined (its publish racing the GUILD_CREATE's), and such an
/// event is the one thing that can make the new shard skip an event nobody published.
/// Leaving out ones that came after the join costs nothing: the comparison finds the rest
/// in the middle of what the new shard holds. The margin also absorbs clock differences
/// between the replicas (`received_at` is each one's wall clock).
pub(crate) const JOIN_MARGIN_MS: u64 = 1_000;

/// What one new shard needs from the stream, per guild key.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// The old generation's events that need aligning, oldest first.
    pub old: HashMap<String, Vec<(At, Digest)>>,
    /// This shard's own GUILD_CREATE per guild: where it joined.
    pub joined: HashMap<String, At>,
}

impl Published {
    /// The old generation's events of `guild` surely sent after this shard joined it.
    pub fn since_joined(&self, guild: &str) -> Vec<Digest> {
        let joined = self.joined.get(guild).copied().unwrap_or(At {
            seq: 0,
            received_ms: 0,
        });
        self.old
            .get(guild)
            .map(|events| {
                events
                    .iter()
                    .filter(|(at, _)| {
                        at.seq > joined.seq && at.received_ms > joined.received_ms + JOIN_MARGIN_MS
                    })
                    .map(|(_, d)| *d)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `received_at` (RFC 3339, as ingest writes it) in Unix milliseconds; 0 if unreadable,
/// which only ever makes an event count as early.
fn unix_ms(received_at: &str) -> u64 {
    humantime::parse_rfc3339(received_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which events a new shard compares: its own guilds'; for guild-less events (DMs,
/// events about the bot user), those old shard `id % old_count` published, as both it and
/// this shard receive the ones Discord sends every shard (and shard 0 the DMs).
pub(crate) struct Scope<'a> {
    pub id: u32,
    pub count: u32,
    pub old_count: u32,
    /// This shard's session, as it appears in its keys.
    pub session_token: &'a str,
    /// Its siblings' sessions in the new generation: not the old generation's events.
    pub exclude: &'a std::collections::HashSet<String>,
}

impl Scope<'_> {
    fn covers(&self, guild_id: Option<&str>, shard: Option<u32>) -> bool {
        match guild_id.and_then(|g| g.parse::<u64>().ok()) {
            Some(guild) => (guild >> 22) % u64::from(self.count.max(1)) == u64::from(self.id),
            None => shard == Some(self.id % self.old_count.max(1)),
        }
    }
}

/// Reads the gateway stream after `start_seq` up to its current end.
///
/// Kept: this shard's own GUILD_CREATEs (where it joined each guild), and the events of
/// its guilds published under another session's `s:` id — the old generation's — except
/// GUILD_CREATE, which every session has its own of. `msg:`/`ix:`/`join:` events need no
/// aligning: their ids are the same from both generations.
pub(crate) async fn read(
    js: &jetstream::Context,
    subjects: &Subjects,
    start_seq: u64,
    scope: &Scope<'_>,
) -> Result<Published, IngestError> {
    fn bus<E: std::error::Error + Send + Sync + 'static>(
        what: String,
    ) -> impl FnOnce(E) -> IngestError {
        move |e| IngestError::with_source(IngestErrorKind::Bus, what, e)
    }
    let name = relaycord_bus::streams::gateway_stream(subjects);
    let end = last_sequence(js, subjects).await?;
    let mut published = Published::default();
    if end <= start_seq {
        return Ok(published);
    }
    let stream = js
        .get_stream(&name)
        .await
        .map_err(bus(format!("cannot open stream {name}")))?;
    let reader = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start_seq + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(bus(format!("cannot read stream {name}")))?;
    let mut at = start_seq;
    while at < end {
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(bus(format!("cannot read stream {name}")))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| {
                IngestError::new(IngestErrorKind::Bus, format!("reading stream {name}: {e}"))
            })?;
            got += 1;
            let seq = message.info().map(|i| i.stream_sequence).unwrap_or(at + 1);
            at = at.max(seq);
            if let Ok(envelope) = Envelope::from_slice(&message.payload) {
                keep(&mut published, scope, seq, &envelope);
            }
        }
        if got == 0 {
            // Messages removed by the stream's limits leave holes; nothing more is coming.
            break;
        }
    }
    Ok(published)
}

fn keep(published: &mut Published, scope: &Scope<'_>, seq: u64, envelope: &Envelope<'_>) {
    let guild = envelope.guild_id.as_deref();
    if !scope.covers(guild, envelope.shard) {
        return;
    }
    let Some(session) = dedupe::session_of_key(&envelope.id) else {
        return;
    };
    let key = guild_key(guild);
    let at = At {
        seq,
        received_ms: unix_ms(&envelope.received_at),
    };
    if session == scope.session_token {
        if envelope.event_type == "GUILD_CREATE" {
            published.joined.entry(key).or_insert(at);
        }
        return;
    }
    if envelope.event_type == "GUILD_CREATE" || scope.exclude.contains(session) {
        return;
    }
    published
        .old
        .entry(key)
        .or_default()
        .push((at, digest(&envelope.event_type, envelope.data)));
}

/// The digest both generations' copies of one event share.
pub(crate) fn digest(event_type: &str, data: &RawValue) -> Digest {
    dedupe::content_digest(event_type, &[data.get().as_bytes()])
}
