//! Ordered delivery: keyed lanes, split into partitions that the sink's replicas share.
//!
//! JetStream hands a shared consumer's messages to whichever replica pulls, and has no
//! per-key limit of messages in flight, so order per lane cannot come from the consumer
//! alone. Instead the lanes are hashed into `partitions`; each partition is delivered
//! by exactly one replica at a time, which holds a lease on it in the KV bucket
//! `relaycord-lane-owners-<sink>` (renewed every third of `ack_wait`, expiring after
//! `ack_wait`). Replicas register there too, and each holds its share,
//! `ceil(partitions / replicas)`: a new replica takes partitions that an overloaded one
//! hands over, a dead one's leases expire and the others take them. Inside a partition
//! ([`partition`]) every lane has at most one event in flight, and later events wait,
//! unacked, in its queue ([`board`]); a failed event is retried in place ([`lane`]),
//! never nak'd behind its successors. How a new owner continues without reordering:
//! see [`partition::incarnate`].

mod board;
mod lane;
mod partition;
mod records;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use relaycord_bus::subject::sanitize_token;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{SinkError, SinkErrorKind};
use crate::worker::Worker;
use crate::{Sink, SinkMetrics};
use board::{Board, Snapshot};
use lane::LaneContext;
use records::Records;

/// How long listing the owners bucket may take before a tick gives up on it.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// `relaycord-lane-owners-<sink>`: `member.<replica>` and `partition.<n>` leases.
pub fn owners_bucket(sink: &str) -> String {
    format!("relaycord-lane-owners-{}", sanitize_token(sink))
}

/// A partition this replica holds.
struct Owned<S> {
    revision: u64,
    renewed: Instant,
    ctx: Arc<LaneContext<S>>,
    task: JoinHandle<()>,
    /// Handed over (or shutting down): the lease is deleted once the task ends.
    releasing: bool,
}

struct Coordinator<S> {
    worker: Arc<Worker<S>>,
    metrics: SinkMetrics,
    owners: kv::Store,
    records: kv::Store,
    replica: String,
    ttl: Duration,
    shutdown: CancellationToken,
    running: HashMap<u32, Owned<S>>,
    /// Attempts in flight in this process, over all its partitions (`concurrency`).
    attempts: Arc<Semaphore>,
}

/// Runs an ordered sink until `shutdown`, then lets its partitions finish the attempts
/// in flight and hands their leases back at once.
pub(crate) async fn run<S: Sink>(
    worker: Arc<Worker<S>>,
    metrics: SinkMetrics,
    (replicas, max_age): (usize, Duration),
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    let s = Arc::clone(&worker.settings);
    let ttl = s.ack_wait;
    let owners =
        relaycord_bus::kv::ensure_bucket(&worker.js, &owners_bucket(&s.name), ttl, replicas)
            .await
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Bus, "cannot open the lane owners bucket", e)
            })?;
    let records = Records::open(&worker.js, &s.name, max_age, replicas).await?;
    let mut coordinator = Coordinator {
        worker,
        metrics,
        owners,
        records,
        replica: replica_id(),
        ttl,
        shutdown: shutdown.clone(),
        running: HashMap::new(),
        attempts: Arc::new(Semaphore::new(s.concurrency.max(1))),
    };
    tracing::info!(sink = %s.name, ordering = ?s.ordering, on_failure = ?s.on_failure, partitions = s.partitions, replica = %coordinator.replica, "ordered sink started");
    let period = (ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = gauges.tick() => coordinator.gauges(),
            _ = tick.tick() => coordinator.tick().await,
        }
    }
    for owned in coordinator.running.values_mut() {
        owned.ctx.stop.cancel();
        owned.releasing = true;
    }
    let mut last_renewal = Instant::now();
    while !coordinator.running.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        coordinator.reap().await;
        if last_renewal.elapsed() >= period {
            coordinator.renew().await;
            last_renewal = Instant::now();
        }
    }
    let _ = coordinator
        .owners
        .delete(member_key(&coordinator.replica))
        .await;
    coordinator.gauges();
    if let Err(error) = coordinator.worker.js.client().flush().await {
        tracing::warn!(sink = %s.name, %error, "cannot flush the last acks");
    }
    tracing::info!(sink = %s.name, "sink stopped");
    Ok(())
}

impl<S: Sink> Coordinator<S> {
    fn name(&self) -> &str {
        &self.worker.settings.name
    }

    async fn tick(&mut self) {
        self.reap().await;
        if let Err(error) = self
            .owners
            .put(member_key(&self.replica), Bytes::new())
            .await
        {
            tracing::warn!(sink = %self.name(), %error, "cannot renew membership (NATS unavailable?)");
        }
        self.renew().await;
        self.rebalance().await;
    }

    /// Forgets partitions whose task ended; a handed-over one's lease is deleted so the
    /// next owner need not wait for it to expire.
    async fn reap(&mut self) {
        let ended: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for index in ended {
            let owned = self.running.remove(&index).expect("listed above");
            if owned.releasing {
                let _ = self.owners.delete(partition_key(index)).await;
                tracing::info!(sink = %self.name(), partition = index, "partition handed over");
            }
        }
    }

    /// Renews every lease. A lease someone else holds now, or one not renewed for two
    /// thirds of its life, stops its partition before another replica may take it.
    async fn renew(&mut self) {
        let replica = Bytes::from(self.replica.clone());
        for (index, owned) in &mut self.running {
            let renewed = self
                .owners
                .update(partition_key(*index), replica.clone(), owned.revision)
                .await;
            match renewed {
                Ok(revision) => {
                    owned.revision = revision;
                    owned.renewed = Instant::now();
                }
                Err(error) => {
                    let lost = error.kind() == kv::UpdateErrorKind::WrongLastRevision;
                    if lost || owned.renewed.elapsed() > self.ttl * 2 / 3 {
                        tracing::warn!(sink = %self.worker.settings.name, partition = index, %error, "partition lease lost; stopping it");
                        owned.ctx.stop.cancel();
                    }
                }
            }
        }
    }

    /// Hands over one partition when holding more than the share, claims free ones
    /// when holding fewer.
    async fn rebalance(&mut self) {
        let Some(keys) = relaycord_bus::kv::list_keys(&self.owners, LIST_TIMEOUT).await else {
            return;
        };
        let members = keys.iter().filter(|k| k.starts_with("member.")).count();
        let partitions = self.worker.settings.partitions;
        let share = partitions.div_ceil(members.max(1) as u32) as usize;
        let active: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, o)| !o.releasing && !o.ctx.stop.is_cancelled())
            .map(|(p, _)| *p)
            .collect();
        if active.len() > share {
            let index = *active.iter().max().expect("more than the share");
            tracing::info!(sink = %self.name(), partition = index, share, members, "handing partition over");
            let owned = self.running.get_mut(&index).expect("running");
            owned.releasing = true;
            owned.ctx.stop.cancel();
            return;
        }
        // Start at a replica-specific offset, so replicas claiming at the same moment
        // mostly try different partitions.
        let offset = self
            .replica
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let mut holding = active.len();
        for i in 0..partitions {
            if holding >= share {
                break;
            }
            let index = offset.wrapping_add(i) % partitions;
            if self.running.contains_key(&index) || keys.contains(&partition_key(index)) {
                continue;
            }
            let claim = self
                .owners
                .create(partition_key(index), Bytes::from(self.replica.clone()))
                .await;
            if let Ok(revision) = claim {
                holding += 1;
                self.start(index, revision).await;
            }
        }
    }

    async fn start(&mut self, index: u32, revision: u64) {
        let s = &self.worker.settings;
        let consumer = match partition::incarnate(&self.worker.js, s, index, revision).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(sink = %s.name, partition = index, %error, "cannot take the partition; handing it back");
                let _ = self.owners.delete(partition_key(index)).await;
                return;
            }
        };
        let ctx = Arc::new(LaneContext {
            worker: Arc::clone(&self.worker),
            board: Board::default(),
            records: Records::new(self.records.clone()),
            attempts: Arc::clone(&self.attempts),
            stop: self.shutdown.child_token(),
        });
        let task = tokio::spawn(partition::run(Arc::clone(&ctx), consumer, index));
        self.running.insert(
            index,
            Owned {
                revision,
                renewed: Instant::now(),
                ctx,
                task,
                releasing: false,
            },
        );
    }

    fn gauges(&self) {
        let label = [self.name()];
        let total = self.running.values().map(|o| o.ctx.board.snapshot()).fold(
            Snapshot::default(),
            |a, b| Snapshot {
                active: a.active + b.active,
                blocked: a.blocked + b.blocked,
                oldest: a.oldest.max(b.oldest),
            },
        );
        let m = &self.metrics;
        m.lanes_active
            .with_label_values(&label)
            .set(total.active as i64);
        m.lanes_blocked
            .with_label_values(&label)
            .set(total.blocked as i64);
        m.lane_oldest_wait
            .with_label_values(&label)
            .set(total.oldest.as_secs_f64());
        m.partitions_owned
            .with_label_values(&label)
            .set(self.running.values().filter(|o| !o.releasing).count() as i64);
    }
}

fn partition_key(index: u32) -> String {
    format!("partition.{index}")
}

fn member_key(replica: &str) -> String {
    format!("member.{replica}")
}

/// `$HOSTNAME-<pid>-<random>`, in the characters KV keys allow: two drivers of one sink
/// in one process are two replicas too.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sink".to_owned());
    let raw = format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    );
    raw.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}
