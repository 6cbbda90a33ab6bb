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

/// Every key of `store`, or `None` when listing fails or takes longer than `timeout`.
///
/// Listing runs a consumer over the bucket; when entries expire while it runs (leases,
/// membership), it may wait for an idle heartbeat to learn it is done, and a loop that
/// lists on every tick must never wait on it for good.
pub async fn list_keys(
    store: &kv::Store,
    timeout: Duration,
) -> Option<std::collections::HashSet<String>> {
    use futures::TryStreamExt;
    let listing = async {
        let keys = store.keys().await.ok()?;
        keys.try_collect().await.ok()
    };
    tokio::time::timeout(timeout, listing).await.ok().flatten()
}
