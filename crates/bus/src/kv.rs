//! KV buckets that also work on nats-server 2.9.
//!
//! async-nats creates buckets through an account-info request whose 2.9 answer it cannot
//! parse, so Relaycord creates the bucket's stream itself (the same stream config a KV
//! bucket has) and then opens it as a KV store.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::error::{BusError, BusErrorKind};

/// Creates or updates bucket `name` (history 1) and opens it.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        // The server refuses a duplicate window longer than max_age.
        duplicate_window: max_age.min(Duration::from_secs(120)),
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    crate::streams::create_or_update(js, config)
        .await
        .map_err(|e| {
            BusError::with_source(
                BusErrorKind::Setup,
                format!("cannot create KV bucket {name}"),
                e,
            )
        })?;
    js.get_key_value(name).await.map_err(|e| {
        BusError::with_source(
            BusErrorKind::Setup,
            format!("cannot open KV bucket {name}"),
            e,
        )
    })
}
