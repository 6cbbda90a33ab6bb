//! Identify pacing shared by every replica: a twilight [`Queue`] backed by NATS KV.
//!
//! Discord allows one IDENTIFY per rate-limit bucket (`shard_id % max_concurrency`)
//! every 5 seconds for the whole bot, not per process. A slot is the KV key
//! `b.<bucket>`, created atomically by the identifying replica in a bucket whose
//! entries expire after 5.5 s (5 s plus padding for send jitter, see
//! [`crate::store::IDENTIFY_INTERVAL`]): while the key exists nobody else can create it,
//! and JetStream never expires an entry early, so the interval holds across processes.
//! Before its slot, an identify spends one session start from the deployment-wide
//! budget ([`crate::budget`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::oneshot;
use twilight_gateway::queue::Queue;

use crate::budget::StartBudget;

#[derive(Clone)]
pub struct KvQueue {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    owner: String,
    max_concurrency: u16,
    budget: StartBudget,
}

impl std::fmt::Debug for KvQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvQueue")
            .field("owner", &self.inner.owner)
            .field("max_concurrency", &self.inner.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl KvQueue {
    pub(crate) fn new(
        kv: kv::Store,
        owner: String,
        max_concurrency: u16,
        budget: StartBudget,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kv,
                owner,
                max_concurrency: max_concurrency.max(1),
                budget,
            }),
        }
    }
}

impl Queue for KvQueue {
    fn enqueue(&self, shard: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.wait_turn(shard, tx).await });
        rx
    }
}

impl Inner {
    async fn wait_turn(&self, shard: u32, tx: oneshot::Sender<()>) {
        let bucket = shard % u32::from(self.max_concurrency);
        let key = format!("b.{bucket}");
        // The session start first: waiting for it can take hours, and a rate-limit slot
        // taken before that wait would be long expired when the IDENTIFY goes out.
        self.budget.spend().await;
        loop {
            // The shard was dropped (stopped or handed over) while waiting. The start it
            // reserved is not given back: erring towards fewer identifies is safe.
            if tx.is_closed() {
                return;
            }
            match self.kv.create(&key, Bytes::from(self.owner.clone())).await {
                Ok(_) => {
                    tracing::debug!(shard, bucket, "identify slot granted");
                    let _ = tx.send(());
                    return;
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Someone identified in this bucket less than a slot ago.
                    let jitter = rand_millis(250);
                    tokio::time::sleep(Duration::from_millis(250) + jitter).await;
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "identify slot unavailable (NATS?); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn rand_millis(max: u64) -> Duration {
    // Spreads replicas polling the same slot; no need for a cryptographic source.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(nanos % max.max(1))
}
