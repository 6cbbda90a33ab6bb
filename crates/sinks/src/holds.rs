//! Holds: the times an event went back to the stream untried.
//!
//! JetStream counts every redelivery, and a nak is one, whether or not the event was
//! tried. A paused sink naks what it pulled just before pausing, and a stopping worker
//! naks what its last pull brought; with a flapping receiver or frequent restarts the
//! count alone would spend an event's attempts without trying it, and it would be
//! dead-lettered as if the worker had died on its last attempt. So each such nak is
//! written down, per stream message, in the KV bucket `relaycord-held-<sink>`, and an
//! event's attempts are its deliveries minus its holds.
//!
//! Only redeliveries look the count up (a first delivery has never been held), and only
//! holds write it, so a healthy sink pays nothing. When the bucket cannot be read or
//! written, a hold counts as an attempt, as it did before: the event may be
//! dead-lettered early, never tried more than `max_attempts` times nor lost.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use relaycord_bus::subject::sanitize_token;

use crate::error::{SinkError, SinkErrorKind};

/// How long a count is kept when the stream keeps events forever (`max_age` 0). A
/// count that expired under a message still in the stream makes its holds count as
/// attempts again.
const KEEP_WITHOUT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone)]
pub struct Holds {
    store: kv::Store,
}

impl Holds {
    /// `relaycord-held-<sink>`.
    pub fn bucket(sink: &str) -> String {
        format!("relaycord-held-{}", sanitize_token(sink))
    }

    /// Opens (creating when needed) the sink's bucket; a count lives as long as the
    /// stream keeps the message it counts (`max_age`).
    pub async fn open(
        js: &jetstream::Context,
        sink: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<Self, SinkError> {
        let keep = if max_age.is_zero() {
            KEEP_WITHOUT_MAX_AGE
        } else {
            max_age
        };
        let store = relaycord_bus::kv::ensure_bucket(js, &Self::bucket(sink), keep, replicas)
            .await
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Bus, "cannot open the holds bucket", e)
            })?;
        Ok(Self { store })
    }

    /// How often the stream message `seq` was held; 0 when unknown.
    pub async fn count(&self, seq: u64) -> u32 {
        match self.store.get(seq.to_string()).await {
            Ok(Some(value)) => std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            Ok(None) => 0,
            Err(error) => {
                tracing::warn!(seq, %error, "cannot read the holds count; holds count as attempts");
                0
            }
        }
    }

    /// Records one more hold of `seq`, held `before` times until now. One worker holds
    /// a message at a time, so there is no concurrent writer to race.
    pub async fn add(&self, seq: u64, before: u32) {
        let value = Bytes::from((before + 1).to_string());
        if let Err(error) = self.store.put(seq.to_string(), value).await {
            tracing::warn!(seq, %error, "cannot record a hold; it counts as an attempt");
        }
    }
}
