//! Identify pacing shared by every replica: a twilight [`Queue`] backed by NATS KV.
//!
//! Discord allows one IDENTIFY per rate-limit bucket (`shard_id % max_concurrency`)
//! every 5 seconds for the whole bot, not per process. A slot is the KV key
//! `b.<bucket>`, created atomically by the identifying replica in a bucket whose
//! entries expire after 5 s: while the key exists nobody else can create it, and JetStream
//! never expires an entry early, so the interval holds across processes.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use relaycord_bus::Secret;
use tokio::sync::{Mutex, oneshot};
use twilight_gateway::queue::Queue;

use crate::discovery::{SessionStartLimit, gateway_bot};

#[derive(Clone)]
pub struct KvQueue {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    owner: String,
    max_concurrency: u16,
    limit: Mutex<SessionStartLimit>,
    http: reqwest::Client,
    api_base: String,
    token: Secret,
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
    pub fn new(
        kv: kv::Store,
        owner: String,
        limit: SessionStartLimit,
        http: reqwest::Client,
        api_base: String,
        token: Secret,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kv,
                owner,
                max_concurrency: limit.max_concurrency.max(1),
                limit: Mutex::new(limit),
                http,
                api_base,
                token,
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
        loop {
            // The shard was dropped (stopped or handed over) while waiting.
            if tx.is_closed() {
                return;
            }
            self.wait_for_session_start().await;
            match self.kv.create(&key, Bytes::from(self.owner.clone())).await {
                Ok(_) => {
                    let mut limit = self.limit.lock().await;
                    limit.remaining = limit.remaining.saturating_sub(1);
                    drop(limit);
                    tracing::debug!(shard, bucket, "identify slot granted");
                    let _ = tx.send(());
                    return;
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Someone identified in this bucket less than 5 s ago.
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

    /// Respects `session_start_limit.remaining`: when the local count runs out, asks
    /// Discord again (other replicas spend the same budget) and waits for the reset.
    async fn wait_for_session_start(&self) {
        let mut limit = self.limit.lock().await;
        while limit.remaining == 0 {
            match gateway_bot(&self.http, &self.api_base, &self.token).await {
                Ok(bot) if bot.session_start_limit.remaining > 0 => {
                    *limit = bot.session_start_limit
                }
                Ok(bot) => {
                    let wait = bot.session_start_limit.reset_after();
                    tracing::warn!(
                        ?wait,
                        "no session starts left today; waiting for Discord's reset"
                    );
                    tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot refresh session_start_limit; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
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
