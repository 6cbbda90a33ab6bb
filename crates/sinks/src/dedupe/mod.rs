//! Sink-side dedupe: a KV bucket of the copies a sink has delivered.
//!
//! JetStream redelivers a message whose ack was lost (worker killed after the receiver's
//! 2xx, connection dropped before the ack reached the server). The driver looks the copy
//! up before delivering and records it after a successful delivery, so such a redelivery
//! is acked without reaching the receiver again. It cannot cover a crash between the
//! receiver's 2xx and the record: those few (at most the deliveries in flight at the
//! crash) reach the receiver twice, which dedupes on `webhook-id` / message id.
//!
//! The live path records copies in block records written by group commit
//! ([`recorder`], [`block`]); a replayed dead letter, and every copy recorded before
//! those existed, has a key of its own ([`Dedupe::key`]). A live lookup reads both.
//!
//! Only a redelivery needs the lookup. A first delivery (JetStream's `delivered` = 1)
//! repeats an earlier one only when the consumer lost its state since (deleted and
//! created again), and then the earlier copy was recorded before the consumer existed. So
//! first deliveries skip the lookup while the bucket is known to hold no record with a
//! copy older than the consumer's `created` ([`Dedupe::check_consumer`]: a record's
//! timestamp is its last write, and a generation takes copies for at most
//! [`GENERATION_SPAN`]); a pull error, or a consumer
//! created anew, turns the lookups back on until the old records have expired.

mod block;
mod recorder;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind};
use async_nats::jetstream::{self, kv};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use relaycord_bus::subject::sanitize_token;

use crate::error::{SinkError, SinkErrorKind};
use recorder::Recorder;
pub use recorder::{BLOCKS_KEPT, GENERATION_SPAN};

/// How much later than the consumer's `created` the oldest record must be to be the
/// consumer's own: the two times may come from different servers' clocks.
const CLOCK_MARGIN_MS: i128 = 2_000;

/// How much older than its record's timestamp (its last write) a copy in it can be: a
/// generation's span, or the copy's wait for a write in flight if longer (at most a
/// JetStream request's timeout, 10 s in Relaycord: taken as one more span), plus its write.
fn copy_age_bound_ms() -> i128 {
    2 * i128::try_from(GENERATION_SPAN.as_millis()).unwrap_or(i128::MAX / 4)
}

/// Whether a bucket of `messages` records, the oldest written at `oldest` (unix ns), can
/// hold only copies recorded after a consumer created at `created` (unix ns).
fn only_copies_after(messages: u64, oldest: i128, created: i64) -> bool {
    let margin_ms = (oldest - i128::from(created)) / 1_000_000;
    messages == 0 || margin_ms > CLOCK_MARGIN_MS + copy_age_bound_ms()
}

#[derive(Clone)]
pub struct Dedupe {
    store: kv::Store,
    first_deliveries: Arc<FirstDeliveries>,
    /// Writes the block records; `None` when opened only to look up (replay tool).
    recorder: Option<Recorder>,
}

/// Whether first deliveries may skip the lookup, for which consumer incarnation (its
/// `created`, in unix ns) that was shown, and until when a failed pull keeps every
/// delivery looked up.
#[derive(Default)]
struct FirstDeliveries {
    skip: AtomicBool,
    verified_for: AtomicI64,
    doubt_until: Mutex<Option<Instant>>,
}

impl Dedupe {
    /// `relaycord-delivered-<sink>`.
    pub fn bucket(sink: &str) -> String {
        format!("relaycord-delivered-{}", sanitize_token(sink))
    }

    /// Opens (creating when needed) the sink's bucket. Ids expire after `window`, which
    /// must cover the time a lost ack takes to come back as a redelivery (ack_wait).
    pub async fn open(
        js: &jetstream::Context,
        sink: &str,
        window: Duration,
        replicas: usize,
    ) -> Result<Self, SinkError> {
        let store = relaycord_bus::kv::ensure_bucket(js, &Self::bucket(sink), window, replicas)
            .await
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Bus, "cannot open the dedupe bucket", e)
            })?;
        Ok(Self {
            recorder: Some(Recorder::start(store.clone())),
            store,
            first_deliveries: Arc::default(),
        })
    }

    /// The sink's bucket if it exists, without changing its settings (the replay tool
    /// uses this; the driver owns the bucket's configuration).
    pub async fn existing(js: &jetstream::Context, sink: &str) -> Option<Self> {
        js.get_key_value(Self::bucket(sink))
            .await
            .ok()
            .map(|store| Self {
                store,
                first_deliveries: Arc::default(),
                recorder: None,
            })
    }

    /// The key of one stored copy of an event: its id and which copy (`copy`: the stream
    /// sequence, or the dead letter's). A redelivery of that copy (a lost ack) has the
    /// same key and is skipped; the same id stored anew after the stream's duplicate
    /// window (a reaction added, removed and added again) is a new copy and is delivered,
    /// however long this bucket remembers. KV keys allow `[-/_=.A-Za-z0-9]`; ids contain
    /// `:` and `%`, so they are encoded.
    pub fn key(id: &str, copy: &str) -> String {
        format!("{}.{copy}", URL_SAFE_NO_PAD.encode(id))
    }

    /// Whether this copy of `id` was delivered. A lookup error counts as "not delivered":
    /// a possible duplicate is better than holding every delivery while the KV is
    /// unreachable.
    pub async fn delivered(&self, id: &str, copy: &str) -> bool {
        self.own_key(id, copy).await.unwrap_or_else(|error| {
            tracing::warn!(%id, %error, "dedupe lookup failed; delivering anyway");
            false
        })
    }

    async fn own_key(&self, id: &str, copy: &str) -> Result<bool, String> {
        let found = self.store.get(Self::key(id, copy)).await;
        found
            .map(|value| value.is_some())
            .map_err(|e| e.to_string())
    }

    /// Whether the copy of `id` at stream sequence `seq` was delivered: its block's
    /// records (one per process and generation that recorded in the block), and the key of
    /// its own an earlier version wrote, read at the same time. An error counts as "not
    /// delivered", as in [`Self::delivered`].
    pub async fn delivered_copy(&self, id: &str, seq: u64) -> bool {
        let copy = seq.to_string();
        let (in_blocks, own_key) =
            tokio::join!(self.in_block_records(id, seq), self.own_key(id, &copy));
        match (in_blocks, own_key) {
            (Ok(true), _) | (_, Ok(true)) => true,
            (Ok(false), Ok(false)) => false,
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%id, %error, "dedupe lookup failed; delivering anyway");
                false
            }
        }
    }

    async fn in_block_records(&self, id: &str, seq: u64) -> Result<bool, String> {
        let (block, offset) = block::locate(seq);
        let hash = block::id_hash(id);
        let prefix = format!("{}{}", self.store.prefix, recorder::block_prefix(block));
        let filter = format!("{prefix}>");
        let mut from = 1;
        while let Some(record) = self.next_message(&filter, from).await? {
            // A server that ignored the filter must not make another block's record match.
            if record.subject.starts_with(&prefix) && block::contains(&record.payload, offset, hash)
            {
                return Ok(true);
            }
            from = record.sequence + 1;
        }
        Ok(false)
    }

    /// The bucket's first message under `filter` from sequence `from` on: a direct get,
    /// which any replica answers, when the bucket allows it (Relaycord's do), else a get
    /// from the stream's leader.
    async fn next_message(&self, filter: &str, from: u64) -> Result<Option<StreamMessage>, String> {
        let stream = &self.store.stream;
        if stream.cached_info().config.allow_direct {
            match stream.direct_get_next_for_subject(filter, Some(from)).await {
                Ok(message) => Ok(Some(message)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let get = stream.raw_message_builder().sequence(from);
            match get.next_by_subject(filter).send().await {
                Ok(message) => Ok(Some(message)),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    /// Records the copy of `id` at stream sequence `seq` in its block's record, written
    /// together with the other copies delivered meanwhile; returns once it is stored or
    /// could not be (the writer logs that once per block; a redelivery of such a copy
    /// would reach the receiver again). A bucket opened with [`Self::existing`] has no
    /// writer: the copy gets a key of its own, as a replayed dead letter's does.
    pub async fn record_copy(&self, id: &str, seq: u64) {
        match &self.recorder {
            Some(recorder) => {
                if !recorder.record(seq, id).await {
                    tracing::debug!(%id, "delivery not recorded; a redelivery would repeat it");
                }
            }
            None => self.record(id, &seq.to_string()).await,
        }
    }

    /// Whether a delivery that is the consumer's `delivered`-th needs the lookup.
    pub fn must_look_up(&self, delivered: i64) -> bool {
        delivered > 1 || !self.first_deliveries.skip.load(Ordering::Acquire)
    }

    /// Lookups for every delivery for `hold` (the sink's `ack_wait`): a pull failed, so
    /// the consumer may have been deleted and created again, or its server restarted and
    /// lost the delivery state it had not yet written (its redeliveries then come as
    /// first deliveries of the same incarnation, right after the server is back).
    pub fn doubt(&self, hold: Duration) {
        let first = &self.first_deliveries;
        first.skip.store(false, Ordering::Release);
        *first.doubt_until.lock().expect("not poisoned") = Some(Instant::now() + hold);
    }

    /// Lets first deliveries skip the lookup when no record in the bucket can be older
    /// than the consumer (created at `created`, unix ns, read from the server just now).
    /// Shown once per consumer incarnation: records written since are its own.
    pub async fn check_consumer(&self, js: &jetstream::Context, created: i64) {
        let first = &self.first_deliveries;
        let doubted = *first.doubt_until.lock().expect("not poisoned");
        if doubted.is_some_and(|until| Instant::now() < until) {
            return;
        }
        if first.verified_for.load(Ordering::Acquire) == created {
            first.skip.store(true, Ordering::Release);
            return;
        }
        let clear = match js.get_stream(&self.store.stream_name).await {
            Ok(stream) => {
                let state = &stream.cached_info().state;
                let oldest = state.first_timestamp.unix_timestamp_nanos();
                only_copies_after(state.messages, oldest, created)
            }
            Err(_) => false,
        };
        if clear {
            first.verified_for.store(created, Ordering::Release);
        }
        first.skip.store(clear, Ordering::Release);
    }

    pub async fn record(&self, id: &str, copy: &str) {
        if let Err(error) = self.store.put(Self::key(id, copy), Bytes::new()).await {
            tracing::warn!(%id, %error, "cannot record the delivery; a redelivery would repeat it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_deliveries_skip_lookups_only_when_every_copy_is_younger_than_the_consumer() {
        let created = 1_000_000_000_000_000_000;
        let after = |ms: i128| i128::from(created) + ms * 1_000_000;
        // 2 s of clock margin and 2 × 10 s of copy age: 22 s.
        assert!(only_copies_after(0, 0, created), "an empty bucket");
        assert!(only_copies_after(5, after(22_001), created));
        assert!(!only_copies_after(5, after(21_999), created));
        assert!(
            !only_copies_after(5, after(-60_000), created),
            "older records"
        );
    }

    #[test]
    fn keys_are_valid_kv_keys_and_distinct() {
        let ids = [
            "msg:334385199974967042",
            "react:add:2:1:%F0%9F%94%A5",
            "h:PRESENCE_UPDATE:00ff",
            "join:1:2:2015-04-26T06:26:56.936000+00:00",
        ];
        let keys: std::collections::HashSet<String> =
            ids.iter().map(|i| Dedupe::key(i, "42")).collect();
        assert_eq!(keys.len(), ids.len());
        assert_ne!(
            Dedupe::key(ids[0], "42"),
            Dedupe::key(ids[0], "43"),
            "copies differ"
        );
        for key in keys {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)),
                "{key}"
            );
        }
        assert_eq!(Dedupe::bucket("my sink"), "relaycord-delivered-my_sink");
    }
}
