//! Idempotent JetStream setup: every role calls [`ensure_streams`] at start, so the
//! order in which processes come up does not matter.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::error::{BusError, BusErrorKind};
use crate::subject::Subjects;

/// Name of the dead-letter stream, shared by every sink.
pub const DLQ_STREAM: &str = "RELAYCORD_DLQ";

/// Retention settings of the streams Relaycord owns.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// How long events are kept (Limits retention: every consumer sees every event).
    pub max_age: Duration,
    /// Size cap per stream; -1 for none. Oldest events are discarded first.
    pub max_bytes: i64,
    /// How long a `Nats-Msg-Id` is remembered. Must cover the longest resume
    /// (Discord replays after a reconnect) plus a lease takeover. The server keeps every
    /// id of the window in memory: about 100 bytes per event.
    pub duplicate_window: Duration,
    /// Dead letters are kept longer than events so an operator can replay them.
    pub dlq_max_age: Duration,
    /// Dead letters kept per sink (`max_msgs_per_subject`); the oldest go first, so one
    /// failing sink cannot crowd out the others' letters. -1 for none.
    pub dlq_max_msgs_per_sink: i64,
    /// Size cap of the whole DLQ; the oldest letters go first. -1 for none.
    pub dlq_max_bytes: i64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(300),
            dlq_max_age: Duration::from_secs(14 * 24 * 3600),
            dlq_max_msgs_per_sink: 100_000,
            dlq_max_bytes: 1 << 30,
        }
    }
}

/// The stream names derived from a subject prefix, so bots sharing a NATS account do
/// not collide: prefix `discord` gives `DISCORD_GATEWAY` and `DISCORD_INTERACTIONS`.
///
/// `<STEM>_GATEWAY` is the *events* stream: it holds both of Discord's event sources,
/// gateway dispatches (`<prefix>.gateway.>`) and webhook events (`<prefix>.webhooks.>`),
/// so that a sink's one consumer selects from both and a subscriber sees them in one
/// order, with one retention (docs/bus.md). Its name predates webhook events.
pub fn gateway_stream(subjects: &Subjects) -> String {
    format!("{}_GATEWAY", stream_stem(subjects))
}

pub fn interactions_stream(subjects: &Subjects) -> String {
    format!("{}_INTERACTIONS", stream_stem(subjects))
}

/// The upper-case stem of stream and bucket names: prefix `acme.bot-2` gives `ACME_BOT_2`.
pub fn stream_stem(subjects: &Subjects) -> String {
    subjects
        .prefix()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates or updates the gateway, interactions and dead-letter streams.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> Result<(), BusError> {
    let base = stream::Config {
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        max_bytes: settings.max_bytes,
        duplicate_window: settings.duplicate_window,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let streams = [
        stream::Config {
            name: gateway_stream(subjects),
            subjects: vec![subjects.gateway_all(), subjects.webhooks_all()],
            max_age: settings.max_age,
            ..base.clone()
        },
        stream::Config {
            name: interactions_stream(subjects),
            subjects: vec![subjects.interactions_all()],
            max_age: settings.max_age,
            ..base.clone()
        },
        stream::Config {
            name: DLQ_STREAM.to_owned(),
            subjects: vec!["relaycord.dlq.>".to_owned()],
            max_age: settings.dlq_max_age,
            max_messages_per_subject: settings.dlq_max_msgs_per_sink,
            max_bytes: settings.dlq_max_bytes,
            ..base
        },
    ];
    for config in streams {
        let name = config.name.clone();
        create_or_update(js, config).await.map_err(|e| {
            let kind = match e.kind() {
                jetstream::context::CreateStreamErrorKind::JetStreamUnavailable
                | jetstream::context::CreateStreamErrorKind::TimedOut => {
                    BusErrorKind::JetStreamUnavailable
                }
                _ => BusErrorKind::Setup,
            };
            BusError::with_source(kind, format!("cannot create or update stream {name}"), e)
        })?;
    }
    Ok(())
}

/// Creates the stream, or updates it when it exists with another configuration; tolerant
/// of other processes doing the same at the same moment.
///
/// Create first, update only when the server says the stream exists with another
/// configuration. async-nats's `create_or_update_stream` does the opposite (update, then
/// create when not found), so every process start sends an update, and nats-server before
/// 2.9.15 registers a new stream before its storage exists: an update from a second
/// process arriving in that window dereferences the missing store and the server exits
/// (`updateWithAdvisory`, stream.go:1602 in 2.9.10; reproduced by `tests/it/stream_setup.rs`
/// with async-nats's call, and seen in the suite as a test's nats-server dying while two
/// ingest replicas started). A create of an identical stream is answered with the
/// existing one, so replicas starting together never update. When two creates race, the
/// loser may be told the subjects overlap (2.9) although the stream it wanted now exists;
/// the next attempt's create then succeeds.
pub async fn create_or_update(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    let mut attempt: u64 = 0;
    loop {
        let result = match js.create_stream(config.clone()).await {
            Ok(stream) => Ok(stream.cached_info().clone()),
            Err(e) if exists_with_another_config(&e) => js.update_stream(&config).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(info) => return Ok(info),
            Err(e)
                if attempt < 4
                    && e.kind()
                        != jetstream::context::CreateStreamErrorKind::JetStreamUnavailable =>
            {
                attempt += 1;
                tracing::debug!(stream = %config.name, error = %e, attempt, "stream setup raced; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn exists_with_another_config(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_prefix() {
        assert_eq!(gateway_stream(&Subjects::default()), "DISCORD_GATEWAY");
        assert_eq!(
            interactions_stream(&Subjects::new("acme.bot-2")),
            "ACME_BOT_2_INTERACTIONS"
        );
    }
}
