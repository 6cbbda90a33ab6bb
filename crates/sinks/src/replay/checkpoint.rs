//! Where a range replay stands, kept in the KV bucket `RELAYCORD_REPLAY` so that a replay
//! stopped halfway (killed, a lost connection, Ctrl-C) continues where it was when run
//! again with the same arguments, instead of sending the whole range a second time.
//!
//! The key names the command as written: the sink, `--since` and `--until` as typed and
//! `--only`. A relative `--since 2h` is resolved once, on the first run, and the resolved
//! range is stored, so the second run replays the same events, not a range two hours
//! before the second run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{SinkError, SinkErrorKind};

/// The bucket of every sink's replay checkpoints.
pub const BUCKET: &str = "RELAYCORD_REPLAY";

/// A checkpoint outlives any replay worth continuing; an older one is started afresh.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The stored state of one replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The resolved range, in milliseconds since the epoch.
    pub since_ms: u64,
    pub until_ms: u64,
    /// The last stream sequence the replay may read: the stream's end when it first ran,
    /// so events published meanwhile (live traffic) never make it endless.
    pub end_seq: u64,
    /// Every event up to this stream sequence is done (sent, skipped or failed).
    pub done_seq: u64,
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
    /// When the first run of this replay started: with the key, the replay's id.
    pub started_ms: u64,
}

impl Checkpoint {
    /// The state of a replay that has not run before.
    pub fn new(since: SystemTime, until: SystemTime, end_seq: u64) -> Self {
        Self {
            since_ms: millis(since),
            // Rounded up: `until` is included, down to its last nanosecond.
            until_ms: millis(until + Duration::from_nanos(999_999)),
            end_seq,
            started_ms: millis(SystemTime::now()),
            ..Default::default()
        }
    }

    /// What every delivery of this replay carries in `Relaycord-Replay`: the same for its
    /// continuations, another for a new replay of the same command.
    pub fn replay_id(&self, key: &str) -> String {
        format!("{key}.{}", self.started_ms)
    }

    pub fn since(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.since_ms)
    }

    pub fn until(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.until_ms)
    }
}

/// Milliseconds since the epoch; times before it count as the epoch.
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The checkpoints' bucket and one replay's key in it.
pub struct Store {
    store: kv::Store,
    key: String,
}

impl Store {
    pub async fn open(
        js: &jetstream::Context,
        key: String,
        replicas: usize,
    ) -> Result<Self, SinkError> {
        let store = relaycord_bus::kv::ensure_bucket(js, BUCKET, KEEP, replicas)
            .await
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Bus, "cannot open the replay checkpoints", e)
            })?;
        Ok(Self { store, key })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored checkpoint, if this replay ran before.
    pub async fn load(&self) -> Result<Option<Checkpoint>, SinkError> {
        let value = self.store.get(&self.key).await.map_err(|e| {
            SinkError::with_source(SinkErrorKind::Bus, "cannot read the replay checkpoint", e)
        })?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        let value = Bytes::from(serde_json::to_vec(checkpoint).expect("a checkpoint serializes"));
        self.store.put(&self.key, value).await.map_err(|e| {
            SinkError::with_source(SinkErrorKind::Bus, "cannot write the replay checkpoint", e)
        })?;
        Ok(())
    }

    /// The state to run from: the stored one when an earlier run of the same command
    /// stopped before the end (unless `--fresh`), else `new`, saved at once (unless a dry
    /// run) so that a run killed in its first second keeps the range a relative time
    /// resolved to. Returns it with the earlier run's state.
    pub async fn begin(
        &self,
        request: &super::Request,
        new: Checkpoint,
    ) -> Result<(Checkpoint, Option<Checkpoint>), SinkError> {
        if request.fresh && !request.dry_run {
            self.clear().await?;
        }
        let earlier = match request.fresh {
            true => None,
            false => self.load().await?,
        };
        let state = earlier.clone().unwrap_or(new);
        if earlier.is_none() && !request.dry_run {
            self.save(&state).await?;
        }
        Ok((state, earlier))
    }

    /// Forgets the checkpoint: the next run starts over (`--fresh`, or a finished run).
    pub async fn clear(&self) -> Result<(), SinkError> {
        self.store.purge(&self.key).await.map_err(|e| {
            SinkError::with_source(SinkErrorKind::Bus, "cannot clear the replay checkpoint", e)
        })
    }
}

/// The key of one replay command: readable (the sink's name leads) and a KV-safe digest of
/// the rest, so two ranges of one sink never share a checkpoint.
pub fn key(sink: &str, since: &str, until: Option<&str>, only_failed: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        sink,
        since,
        until.unwrap_or("now"),
        if only_failed { "failed" } else { "all" },
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hex::encode(&hash.finalize()[..8]);
    format!("{}.{digest}", relaycord_bus::subject::sanitize_token(sink))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_every_argument_and_are_stable() {
        let k = key("hook", "2h", None, false);
        assert!(k.starts_with("hook."), "{k}");
        assert_eq!(k, key("hook", "2h", None, false));
        for other in [
            key("hook2", "2h", None, false),
            key("hook", "3h", None, false),
            key("hook", "2h", Some("1h"), false),
            key("hook", "2h", None, true),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn checkpoints_round_trip_their_range() {
        let since = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let until = since + Duration::from_micros(2_500);
        let c = Checkpoint::new(since, until, 7);
        assert_eq!(c.since(), since);
        assert!(c.until() >= until, "until is rounded up, never cut");
        assert_eq!(c.until(), since + Duration::from_millis(3));
        assert_ne!(
            c.replay_id("k"),
            Checkpoint {
                started_ms: 1,
                ..c.clone()
            }
            .replay_id("k")
        );
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(serde_json::from_slice::<Checkpoint>(&json).unwrap(), c);
    }
}
