//! Lane records: how far each lane got, in the KV bucket `relaycord-lanes-<sink>`.
//!
//! A record is the stream sequence of the lane's last settled event (delivered,
//! dead-lettered or skipped), the lane sequence it used, and the dead letters since the
//! last delivery. It gives every delivery its `Relaycord-Lane-Seq` across replicas and
//! restarts, and it is the ordered sink's dedupe: a lane settles its events in stream
//! order, so an event at or below the record's stream sequence is done, whichever
//! incarnation of the partition sees it again.
//!
//! Only the partition's owner writes its lanes' records, so it keeps them in memory while
//! a lane is busy and reads the bucket once when the lane wakes up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use relaycord_bus::subject::sanitize_token;

use crate::error::{SinkError, SinkErrorKind};

/// How long a record is kept when the stream keeps events forever (`max_age` 0).
const KEEP_WITHOUT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneRecord {
    /// Stream sequence of the last settled event; 0: none yet.
    pub stream_seq: u64,
    /// Lane sequence of the last delivered or dead-lettered event.
    pub lane_seq: u64,
    /// Dead letters since the last delivery.
    pub gap: u64,
}

impl LaneRecord {
    fn encode(self) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            self.stream_seq, self.lane_seq, self.gap
        ))
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ').map(str::parse::<u64>);
        let record = Self {
            stream_seq: parts.next()?.ok()?,
            lane_seq: parts.next()?.ok()?,
            gap: parts.next()?.ok()?,
        };
        parts.next().is_none().then_some(record)
    }

    /// After the event at `stream_seq` was delivered.
    pub fn delivered(self, stream_seq: u64) -> Self {
        Self {
            stream_seq,
            lane_seq: self.lane_seq + 1,
            gap: 0,
        }
    }

    /// After the event at `stream_seq` was dead-lettered: its number is used, and the
    /// next delivery reports the gap.
    pub fn dead_lettered(self, stream_seq: u64) -> Self {
        Self {
            stream_seq,
            lane_seq: self.lane_seq + 1,
            gap: self.gap + 1,
        }
    }

    /// After the sink skipped the event (not for this destination): no number used.
    pub fn skipped(self, stream_seq: u64) -> Self {
        Self { stream_seq, ..self }
    }
}

pub struct Records {
    store: kv::Store,
    /// The busy lanes' records; a lane's entry goes when the lane falls idle.
    cache: Mutex<HashMap<String, LaneRecord>>,
}

impl Records {
    /// `relaycord-lanes-<sink>`.
    pub fn bucket(sink: &str) -> String {
        format!("relaycord-lanes-{}", sanitize_token(sink))
    }

    /// Opens (creating when needed) the bucket; a record lives as long as the stream
    /// keeps events (a lane silent for longer starts again at 1).
    pub async fn open(
        js: &jetstream::Context,
        sink: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<kv::Store, SinkError> {
        let keep = if max_age.is_zero() {
            KEEP_WITHOUT_MAX_AGE
        } else {
            max_age
        };
        relaycord_bus::kv::ensure_bucket(js, &Self::bucket(sink), keep, replicas)
            .await
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Bus, "cannot open the lanes bucket", e)
            })
    }

    /// A fresh view of the bucket, for one incarnation of a partition.
    pub fn new(store: kv::Store) -> Self {
        Self {
            store,
            cache: Mutex::default(),
        }
    }

    /// KV keys allow `[-/_=.A-Za-z0-9]`; channel ids come from payloads, so the lane
    /// key is encoded.
    fn key(lane: &str) -> String {
        URL_SAFE_NO_PAD.encode(lane)
    }

    /// The lane's record. When it cannot be read the lane is held (retried by the
    /// caller): guessing would number deliveries wrongly or repeat settled events.
    pub async fn get(&self, lane: &str) -> Result<LaneRecord, String> {
        if let Some(record) = self.cache.lock().expect("not poisoned").get(lane) {
            return Ok(*record);
        }
        let record = match self.store.get(Self::key(lane)).await {
            Ok(Some(bytes)) => LaneRecord::decode(&bytes).unwrap_or_default(),
            Ok(None) => LaneRecord::default(),
            Err(error) => return Err(format!("cannot read the lane's record: {error}")),
        };
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(lane.to_owned(), record);
        Ok(record)
    }

    /// Writes the lane's record. A failed write is logged: memory stays right for this
    /// owner, and a later write of the lane carries it; only a takeover before that may
    /// repeat the event (with the same lane sequence, so the receiver sees a repeat).
    pub async fn put(&self, lane: &str, record: LaneRecord) {
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(lane.to_owned(), record);
        if let Err(error) = self.store.put(Self::key(lane), record.encode()).await {
            tracing::warn!(%lane, %error, "cannot write the lane's record; a takeover may repeat its last event");
        }
    }

    /// The lane fell idle: its next event reads the bucket again.
    pub fn forget(&self, lane: &str) {
        self.cache.lock().expect("not poisoned").remove(lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_advance() {
        let r = LaneRecord::default().delivered(5);
        assert_eq!((r.stream_seq, r.lane_seq, r.gap), (5, 1, 0));
        let r = r.dead_lettered(9).dead_lettered(12);
        assert_eq!((r.stream_seq, r.lane_seq, r.gap), (12, 3, 2));
        let r = r.skipped(13);
        assert_eq!((r.stream_seq, r.lane_seq, r.gap), (13, 3, 2));
        let r = r.delivered(20);
        assert_eq!((r.stream_seq, r.lane_seq, r.gap), (20, 4, 0));
        assert_eq!(LaneRecord::decode(&r.encode()), Some(r));
        assert_eq!(LaneRecord::decode(b"1 2"), None);
        assert_eq!(LaneRecord::decode(b"1 2 3 4"), None);
        assert_eq!(LaneRecord::decode(b"x 2 3"), None);
    }

    #[test]
    fn keys_are_valid_kv_keys() {
        for lane in ["channel:1", "guild:none", "channel:a b.c*>"] {
            let key = Records::key(lane);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)),
                "{key}"
            );
        }
    }
}
