//! Ids of the webhook events already stored, shared by every replica: Discord retries an
//! event for longer than JetStream's default duplicate window, so the stream alone would
//! store a late retry again.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use relaycord_bus::Subjects;

use crate::error::{InteractionsError, InteractionsErrorKind};

/// Discord retries an unacknowledged webhook event for up to 10 minutes; ids are
/// remembered a little longer.
pub const SEEN_FOR: Duration = Duration::from_secs(15 * 60);

/// Ids of the webhook events already stored, shared by every replica.
#[derive(Clone)]
pub(crate) struct Seen {
    store: kv::Store,
}

impl Seen {
    /// `<STEM>_WEBHOOK_EVENTS`, replicated like the streams.
    pub fn bucket(subjects: &Subjects) -> String {
        format!(
            "{}_WEBHOOK_EVENTS",
            relaycord_bus::streams::stream_stem(subjects)
        )
    }

    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
    ) -> Result<Self, InteractionsError> {
        let store =
            relaycord_bus::kv::ensure_bucket(js, &Self::bucket(subjects), SEEN_FOR, replicas)
                .await
                .map_err(|e| {
                    InteractionsError::with_source(
                        InteractionsErrorKind::Setup,
                        "webhook events bucket",
                        e,
                    )
                })?;
        Ok(Self { store })
    }

    /// A KV key for an event id: its digest (the id's `:` is not a key character).
    fn key(id: &str) -> &str {
        id.rsplit(':').next().unwrap_or(id)
    }

    /// Whether `id` was stored before; `false` when the bucket cannot say (then the
    /// stream's own dedupe is all there is).
    pub async fn contains(&self, id: &str) -> bool {
        matches!(self.store.get(Self::key(id)).await, Ok(Some(_)))
    }

    pub async fn insert(&self, id: &str, stream_seq: u64) {
        let value = stream_seq.to_string().into_bytes().into();
        if let Err(error) = self.store.put(Self::key(id), value).await {
            tracing::warn!(%error, id, "cannot record a stored webhook event; a retry after the duplicate window would be stored again");
        }
    }
}
