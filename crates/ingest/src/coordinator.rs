//! Which shards this process runs.
//!
//! Static: a fixed range (e.g. one per StatefulSet ordinal). Leased: every replica
//! registers in the members bucket and claims shards through leases in NATS KV until it
//! holds its share, `ceil(shards / replicas)`. Leases are renewed; a dead replica's
//! leases expire after the TTL and the others claim them. A replica holding more than
//! its share (because another one joined) hands shards over cleanly: drain, save the
//! session, close with the RESUME code, release the lease; the new owner resumes.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{IngestError, IngestErrorKind};
use crate::shard::{self, ShardContext};
use crate::stop::Stop;
use crate::store::{Buckets, shard_key};

struct Running {
    stop: Stop,
    task: JoinHandle<Result<(), IngestError>>,
    /// KV revision of our lease (leased mode).
    lease: Option<u64>,
}

pub(crate) struct Coordinator {
    ctx: Arc<ShardContext>,
    buckets: Buckets,
    replica: String,
    scope: Range<u32>,
    lease_ttl: Duration,
    running: HashMap<u32, Running>,
}

impl Coordinator {
    pub fn new(
        ctx: Arc<ShardContext>,
        buckets: Buckets,
        replica: String,
        scope: Range<u32>,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            ctx,
            buckets,
            replica,
            scope,
            lease_ttl,
            running: HashMap::new(),
        }
    }

    /// Runs a fixed set of shards until `shutdown` or a fatal error.
    pub async fn run_static(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        for id in self.scope.clone() {
            self.start(id, None);
        }
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Err(error) = self.reap().await {
                        break Err(error);
                    }
                }
            }
        };
        self.stop_all(false).await;
        result
    }

    /// Shares the shards with every other replica through leases until `shutdown`.
    pub async fn run_leased(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let tick = (self.lease_ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
        self.register().await;
        // Replicas that start together see each other before claiming, instead of the
        // first one taking every shard and handing most of them back a second later.
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(tick * 3) => {}
        }
        let mut last_renewal = Instant::now();
        let result = loop {
            if let Err(error) = self.reap().await {
                break Err(error);
            }
            self.register().await;
            if last_renewal.elapsed() >= self.lease_ttl / 3 {
                self.renew().await;
                last_renewal = Instant::now();
            }
            self.rebalance().await;
            self.ctx.metrics.leases.set(self.running.len() as i64);
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(tick) => {}
            }
        };
        self.stop_all(true).await;
        let _ = self.buckets.members.delete(&self.replica).await;
        self.ctx.metrics.leases.set(0);
        result
    }

    fn start(&mut self, id: u32, lease: Option<u64>) {
        let stop = Stop::default();
        let task = tokio::spawn(shard::run(id, Arc::clone(&self.ctx), stop.clone()));
        self.running.insert(id, Running { stop, task, lease });
        self.ctx.metrics.leases.set(self.running.len() as i64);
    }

    /// Stops one shard cleanly and, in leased mode, releases its lease.
    async fn stop(&mut self, id: u32, release: bool) {
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        running.stop.handover();
        if let Ok(Err(error)) = running.task.await {
            tracing::warn!(shard = id, %error, "shard ended with an error while stopping");
        }
        if release && let Some(revision) = running.lease {
            self.release(id, revision).await;
        }
    }

    /// Deletes our lease on `id` if it is still the one we hold (same revision), so the
    /// shard can be claimed again at once instead of after the TTL.
    async fn release(&self, id: u32, revision: u64) {
        let key = shard_key(id, self.ctx.shard_count);
        if let Err(error) = self
            .buckets
            .leases
            .delete_expect_revision(&key, Some(revision))
            .await
        {
            tracing::debug!(shard = id, %error, "lease not released (it expires by itself)");
        }
    }

    async fn stop_all(&mut self, release: bool) {
        let ids: Vec<u32> = self.running.keys().copied().collect();
        for running in self.running.values() {
            running.stop.handover();
        }
        for id in ids {
            self.stop(id, release).await;
        }
    }

    /// Removes finished shard tasks. Losing a shard to another owner is normal; any
    /// other end of a shard (bad token, bad intents) stops the process with its error.
    async fn reap(&mut self) -> Result<(), IngestError> {
        let finished: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            let running = self.running.remove(&id).expect("listed above");
            match running.task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.kind() == IngestErrorKind::LostOwnership => {
                    // Fenced: someone else wrote the session record. If the lease is still
                    // ours, free it now so the shard is claimed again (reading the newer
                    // record) within a tick rather than sitting unowned until the TTL.
                    tracing::info!(shard = id, "shard's session taken over; releasing it");
                    if let Some(revision) = running.lease {
                        self.release(id, revision).await;
                    }
                }
                Ok(Err(error)) if error.kind() == IngestErrorKind::Bus => {
                    // NATS hiccup while the shard was starting (reading its session):
                    // release the shard so it is claimed again — by us or another replica.
                    tracing::warn!(shard = id, %error, "shard could not start; retrying");
                    match running.lease {
                        Some(revision) => self.release(id, revision).await,
                        None => self.start(id, None),
                    }
                }
                Ok(Err(error)) => return Err(error),
                Err(panic) => {
                    return Err(IngestError::with_source(
                        IngestErrorKind::FatalClose,
                        format!("shard {id} panicked"),
                        panic,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn register(&self) {
        if let Err(error) = self.buckets.members.put(&self.replica, Bytes::new()).await {
            tracing::warn!(%error, "cannot renew membership (NATS unavailable?)");
        }
    }

    /// Renews every lease. A lease someone else now holds means this process was cut
    /// off long enough to lose it: the shard stops without touching the session record
    /// (the new owner's claim also fences any save that slips out before this check).
    async fn renew(&mut self) {
        let mut lost = Vec::new();
        for (id, running) in &mut self.running {
            let key = shard_key(*id, self.ctx.shard_count);
            let value = Bytes::from(self.replica.clone());
            let renewed = match running.lease {
                Some(revision) => self
                    .buckets
                    .leases
                    .update(&key, value, revision)
                    .await
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                None => Err(false),
            };
            match renewed {
                Ok(revision) => running.lease = Some(revision),
                Err(true) => {
                    // Expired while NATS was unreachable: take it back if it is free.
                    match self
                        .buckets
                        .leases
                        .create(&key, Bytes::from(self.replica.clone()))
                        .await
                    {
                        Ok(revision) => running.lease = Some(revision),
                        Err(_) => lost.push(*id),
                    }
                }
                Err(false) => tracing::warn!(shard = id, "cannot renew lease (NATS unavailable?)"),
            }
        }
        for id in lost {
            tracing::warn!(
                shard = id,
                "lease lost to another replica; stopping the shard"
            );
            if let Some(running) = self.running.get(&id) {
                running.stop.lost();
            }
            self.stop(id, false).await;
        }
    }

    async fn rebalance(&mut self) {
        // A set: `keys()` follows the bucket while it lists, so a member renewing its
        // entry meanwhile shows up twice, and a miscount would hand shards back and forth.
        let members = match self.buckets.members.keys().await {
            Ok(keys) => keys
                .try_collect::<HashSet<String>>()
                .await
                .map(|k| k.len())
                .unwrap_or(1),
            Err(_) => return,
        };
        let total = self.scope.len();
        let share = total.div_ceil(members.max(1));
        if self.running.len() > share {
            // Only shards whose session is saved: the others are handed over on a later
            // tick, once the next owner can resume them (see `Stop::set_resumable`).
            let mut ids: Vec<u32> = self
                .running
                .iter()
                .filter(|(_, r)| r.stop.is_resumable())
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            for id in ids.into_iter().rev().take(self.running.len() - share) {
                tracing::info!(shard = id, share, members, "handing shard over");
                self.stop(id, true).await;
            }
            return;
        }
        if self.running.len() == share {
            return;
        }
        let taken: HashSet<String> = match self.buckets.leases.keys().await {
            Ok(keys) => match keys.try_collect().await {
                Ok(keys) => keys,
                Err(_) => return,
            },
            Err(_) => return,
        };
        // Start the search at a replica-specific offset so replicas claiming at the same
        // moment mostly try different shards.
        let offset = self
            .replica
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let len = self.scope.len() as u32;
        for i in 0..len {
            if self.running.len() >= share {
                break;
            }
            let id = self.scope.start + (offset.wrapping_add(i) % len);
            let key = shard_key(id, self.ctx.shard_count);
            if self.running.contains_key(&id) || taken.contains(&key) {
                continue;
            }
            if let Ok(revision) = self
                .buckets
                .leases
                .create(&key, Bytes::from(self.replica.clone()))
                .await
            {
                tracing::info!(shard = id, share, members, "lease acquired");
                self.start(id, Some(revision));
            }
        }
    }
}
