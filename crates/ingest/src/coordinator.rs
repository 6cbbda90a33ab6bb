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
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use relaycord_bus::backoff::Exponential;
use relaycord_bus::kv::list_keys;

use crate::error::{IngestError, IngestErrorKind};
use crate::shard::{self, ShardContext};
use crate::stop::Stop;
use crate::store::{Buckets, shard_key};

struct Running {
    stop: Stop,
    task: JoinHandle<Result<(), IngestError>>,
    /// KV revision of our lease (leased mode).
    lease: Option<u64>,
    /// Set once the shard was asked to stop: whether to release its lease when it has.
    stopping: Option<bool>,
    started: Instant,
    /// Restarts in a row, this run included, none of which lasted [`STABLE_RUN`].
    restarts: u32,
}

/// A static shard that ended by itself, waiting to be started again.
struct Restart {
    at: Instant,
    attempt: u32,
}

/// Waits between restarts of a static shard: 1 s, 2 s, 4 s, … 30 s — below the 30 s
/// minimum of the `/healthz` stall, which a shard waiting here never trips.
const RESTART: Exponential = Exponential::new(Duration::from_secs(1), Duration::from_secs(30));

/// A shard that ran this long before ending starts its restarts at the shortest wait again.
const STABLE_RUN: Duration = Duration::from_secs(60);

pub(crate) struct Coordinator {
    ctx: Arc<ShardContext>,
    buckets: Buckets,
    replica: String,
    scope: Range<u32>,
    lease_ttl: Duration,
    running: HashMap<u32, Running>,
    restarts: HashMap<u32, Restart>,
    /// Shards of a retiring generation that have ended their session: never claimed again.
    retired: HashSet<u32>,
    /// Shards closed with 4011 lately, left alone until then (leased mode): claiming them
    /// again at once would spend an identify on every tick until the reshard is up.
    cooling: HashMap<u32, Instant>,
    /// What this coordinator last added to `relaycord_shard_leases_held`, which every
    /// generation's coordinator in the process shares.
    shown_leases: i64,
}

/// The longest a tick waits for a KV listing (members, leases): a loop that renews leases
/// must not hang on one.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shard closed with 4011 is left unclaimed by the replica that saw it.
const SHARDING_REQUIRED_COOLDOWN: Duration = Duration::from_secs(30);

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
            restarts: HashMap::new(),
            retired: HashSet::new(),
            cooling: HashMap::new(),
            shown_leases: 0,
        }
    }

    /// Sets this coordinator's part of `relaycord_shard_leases_held`.
    fn show_leases(&mut self, held: usize) {
        let held = held as i64;
        self.ctx.metrics.leases.add(held - self.shown_leases);
        self.shown_leases = held;
    }

    /// Runs a fixed set of shards until `shutdown` or a fatal error. A shard that ends by
    /// itself (fenced, NATS unreachable while it started) is started again: in static
    /// mode nobody else would.
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
                    self.restart_due();
                }
            }
        };
        for id in std::mem::take(&mut self.restarts).into_keys() {
            self.ctx.forget(id);
        }
        self.stop_all(false).await;
        result
    }

    /// Shares the shards with every other replica through leases until `shutdown`.
    ///
    /// Nothing in this loop waits for a shard to stop: a stopping shard drains on its own
    /// (up to the drain timeout) while the loop keeps renewing every lease, its own
    /// included, and releases its lease once it has ended.
    pub async fn run_leased(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let tick = self.tick();
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
            self.show_leases(self.running.len());
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(tick) => {}
            }
        };
        self.stop_all(true).await;
        // Membership is the supervisor's to withdraw: another generation may still run here.
        self.show_leases(0);
        result
    }

    fn tick(&self) -> Duration {
        (self.lease_ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    fn start(&mut self, id: u32, lease: Option<u64>) {
        self.start_again(id, lease, 0);
    }

    fn start_again(&mut self, id: u32, lease: Option<u64>, restarts: u32) {
        let stop = Stop::default();
        let task = tokio::spawn(shard::run(id, Arc::clone(&self.ctx), stop.clone()));
        self.running.insert(
            id,
            Running {
                stop,
                task,
                lease,
                stopping: None,
                started: Instant::now(),
                restarts,
            },
        );
        self.show_leases(self.running.len() + self.restarts.len());
    }

    /// Asks shard `id` to stop cleanly without waiting for it; [`Self::reap`] releases
    /// its lease (when `release`) once it has ended.
    fn stop(&mut self, id: u32, release: bool) {
        if let Some(running) = self.running.get_mut(&id) {
            running.stop.handover();
            running.stopping.get_or_insert(release);
        }
    }

    /// Shards running here and not on their way out.
    fn active(&self) -> usize {
        self.running
            .values()
            .filter(|r| r.stopping.is_none())
            .count()
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

    /// Stops every shard and waits for them all, draining side by side; leases held
    /// meanwhile (`release`: leased mode) keep being renewed, so a slow drain of one
    /// shard lets no other lease lapse.
    async fn stop_all(&mut self, release: bool) {
        let ids: Vec<u32> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id, release);
        }
        let mut last_renewal = Instant::now();
        while !self.running.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = self.reap().await;
            if release && last_renewal.elapsed() >= self.lease_ttl / 3 {
                self.renew().await;
                last_renewal = Instant::now();
            }
        }
    }

    /// Removes finished shard tasks. A shard asked to stop has its lease released and is
    /// no longer ours. Losing a shard to another owner is normal: in leased mode its lease
    /// goes back to the pool, in static mode it is started again. Any other end of a
    /// shard (bad token, bad intents) stops the process with its error.
    async fn reap(&mut self) -> Result<(), IngestError> {
        let finished: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            let running = self.running.remove(&id).expect("listed above");
            let result = running.task.await;
            if let Some(release) = running.stopping {
                if let Ok(Err(error)) = result {
                    tracing::warn!(shard = id, %error, "shard ended with an error while stopping");
                }
                if release && let Some(revision) = running.lease {
                    self.release(id, revision).await;
                }
                self.ctx.forget(id);
                continue;
            }
            // Fenced (someone else wrote the session record), or NATS failed while the
            // shard was starting. (A shard ends Ok only when asked to stop.)
            let cause = match result {
                // A shard ends Ok by itself only when its generation retires.
                Ok(Ok(())) if running.lease.is_some() => {
                    tracing::info!(
                        shard = id,
                        shard_count = self.ctx.shard_count,
                        "shard retired"
                    );
                    if let Some(revision) = running.lease {
                        self.release(id, revision).await;
                    }
                    self.ctx.forget(id);
                    self.retired.insert(id);
                    continue;
                }
                Ok(Ok(())) => None,
                // Leased mode reshards (the shard told the supervisor); a static range has
                // a fixed count, and the error stops the process.
                Ok(Err(error))
                    if error.kind() == IngestErrorKind::ShardingRequired
                        && running.lease.is_some() =>
                {
                    self.cooling
                        .insert(id, Instant::now() + SHARDING_REQUIRED_COOLDOWN);
                    Some(error)
                }
                Ok(Err(error))
                    if matches!(
                        error.kind(),
                        IngestErrorKind::LostOwnership | IngestErrorKind::Bus
                    ) =>
                {
                    Some(error)
                }
                Ok(Err(error)) => return Err(error),
                Err(panic) => {
                    return Err(IngestError::with_source(
                        IngestErrorKind::FatalClose,
                        format!("shard {id} panicked"),
                        panic,
                    ));
                }
            };
            let cause = cause.map(|e| e.to_string());
            tracing::warn!(shard = id, ?cause, "shard ended; starting it again");
            match running.lease {
                // Freed now, the shard is claimed again (reading the newer record) within
                // a tick — by us or another replica — rather than after the TTL.
                Some(revision) => {
                    self.release(id, revision).await;
                    self.ctx.forget(id);
                }
                None => self.schedule_restart(id, running.started, running.restarts),
            }
        }
        Ok(())
    }

    /// Static mode: the shard stays ours and down (failing readiness past
    /// `ingest.unhealthy_after`) until it runs again.
    fn schedule_restart(&mut self, id: u32, started: Instant, restarts: u32) {
        let attempt = if started.elapsed() >= STABLE_RUN {
            1
        } else {
            restarts.saturating_add(1)
        };
        let wait = RESTART.delay(attempt);
        tracing::info!(shard = id, attempt, ?wait, "restarting the shard");
        self.ctx.mark(id, false);
        self.restarts.insert(
            id,
            Restart {
                at: Instant::now() + wait,
                attempt,
            },
        );
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .restarts
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in self.restarts.keys() {
            // Waiting here is not a wedged loop: /healthz must not restart the process.
            self.ctx.health.beat(self.ctx.shard_ref(*id));
        }
        for id in due {
            let restart = self.restarts.remove(&id).expect("listed above");
            self.start_again(id, None, restart.attempt);
        }
    }

    async fn register(&self) {
        if let Err(error) = self.buckets.members.put(&self.replica, Bytes::new()).await {
            tracing::warn!(%error, "cannot renew membership (NATS unavailable?)");
        }
    }

    /// Renews every lease. A lease someone else now holds means this process was cut
    /// off long enough to lose it: the shard stops without touching the session record
    /// (the new owner's claim also fences any save that slips out before this check).
    ///
    /// A shard already stopping because its lease was lost is skipped: the lease is not
    /// ours, and once its new owner releases it, taking it back here would hold it with
    /// nobody running the shard (the draining shard never releases it) until the TTL.
    async fn renew(&mut self) {
        let mut lost = Vec::new();
        for (id, running) in &mut self.running {
            if running.stopping == Some(false) {
                continue;
            }
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
            if let Some(running) = self.running.get_mut(&id) {
                running.stop.lost();
                running.stopping = Some(false);
            }
        }
    }

    async fn rebalance(&mut self) {
        // A set: `keys()` follows the bucket while it lists, so a member renewing its
        // entry meanwhile shows up twice, and a miscount would hand shards back and forth.
        let Some(members) = list_keys(&self.buckets.members, LIST_TIMEOUT).await else {
            tracing::debug!("cannot list the members; rebalancing on a later tick");
            return;
        };
        let members = members.len();
        let now = Instant::now();
        self.cooling.retain(|_, until| *until > now);
        let stopped = self.ctx.view.borrow().stopped.clone();
        let retiring =
            self.ctx.view.borrow().role(self.ctx.shard_count) == crate::generations::Role::Retire;
        let share = self.scope.len().div_ceil(members.max(1));
        let active = self.active();
        // A retiring generation only finishes: handing a shard over would resume it
        // elsewhere just to end it there.
        if active > share && !retiring {
            // Only shards whose session is saved: the others are handed over on a later
            // tick, once the next owner can resume them (see `Stop::set_resumable`).
            let mut ids: Vec<u32> = self
                .running
                .iter()
                .filter(|(_, r)| r.stopping.is_none() && r.stop.is_resumable())
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            for id in ids.into_iter().rev().take(active - share) {
                tracing::info!(shard = id, share, members, "handing shard over");
                self.stop(id, true);
            }
            return;
        }
        if active == share {
            return;
        }
        let Some(taken) = list_keys(&self.buckets.leases, LIST_TIMEOUT).await else {
            tracing::debug!("cannot list the leases; claiming on a later tick");
            return;
        };
        // Start the search at a replica-specific offset so replicas claiming at the same
        // moment mostly try different shards.
        let offset = self
            .replica
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let len = self.scope.len() as u32;
        for i in 0..len {
            if self.active() >= share {
                break;
            }
            let id = self.scope.start + (offset.wrapping_add(i) % len);
            let key = shard_key(id, self.ctx.shard_count);
            if self.running.contains_key(&id)
                || taken.contains(&key)
                || self.retired.contains(&id)
                || (retiring && stopped.contains(&id))
                // A retiring shard that saw 4011 only has to report itself stopped.
                || (self.cooling.contains_key(&id) && !retiring)
            {
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

#[cfg(test)]
mod tests {
    use async_nats::jetstream;
    use prometheus::Registry;
    use relaycord_bus::{Secret, Subjects};
    use relaycord_devkit::NatsServer;
    use twilight_gateway::Intents;

    use super::*;
    use crate::budget::StartBudget;
    use crate::health::ShardHealth;
    use crate::metrics::IngestMetrics;
    use crate::queue::KvQueue;

    const COUNT: u32 = 2;

    fn context(js: &jetstream::Context, buckets: &Buckets) -> Arc<ShardContext> {
        relaycord_bus::install_crypto_provider();
        let metrics = IngestMetrics::new(&Registry::new()).unwrap();
        let budget = StartBudget {
            kv: buckets.sessions.clone(),
            http: reqwest::Client::new(),
            api_base: "http://127.0.0.1:9/api".into(),
            token: Secret::new("t"),
            metrics: metrics.clone(),
        };
        Arc::new(ShardContext {
            js: js.clone(),
            sessions: buckets.sessions.clone(),
            subjects: Subjects::default(),
            window: 8,
            metrics,
            health: ShardHealth::default(),
            token: Secret::new("t"),
            intents: Intents::empty(),
            gateway_url: "ws://127.0.0.1:9".into(),
            queue: KvQueue::new(buckets.identify.clone(), "a".into(), 1, budget),
            shard_count: COUNT,
            alerts: Arc::default(),
            gateway_config: std::sync::OnceLock::new(),
            generations: None,
            view: tokio::sync::watch::channel(crate::generations::View::default()).1,
            notices: tokio::sync::mpsc::unbounded_channel().0,
        })
    }

    /// A shard entry as `start` makes it, whose task runs until the test ends.
    fn running(lease: u64) -> Running {
        Running {
            stop: Stop::default(),
            task: tokio::spawn(std::future::pending()),
            lease: Some(lease),
            stopping: None,
            started: Instant::now(),
            restarts: 0,
        }
    }

    async fn holder(buckets: &Buckets, id: u32) -> Option<String> {
        let value = buckets.leases.get(shard_key(id, COUNT)).await.unwrap()?;
        Some(String::from_utf8(value.to_vec()).unwrap())
    }

    /// Shard 0's lease is lost to replica b while this process was cut off; b then hands
    /// the shard over (deletes its lease) while shard 0 is still draining here. Renewing
    /// must not take that lease back: the draining shard ends without releasing it, and
    /// the shard would sit unowned until the TTL. Shard 1, being handed over cleanly,
    /// keeps its lease renewed until it has drained.
    #[tokio::test]
    async fn renew_leaves_a_lost_shards_lease_alone() {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let ttl = Duration::from_secs(60);
        let buckets = Buckets::ensure(&js, &Subjects::default(), 1, ttl)
            .await
            .unwrap();
        let mut coordinator = Coordinator::new(
            context(&js, &buckets),
            buckets.clone(),
            "a".into(),
            0..COUNT,
            ttl,
        );
        for id in 0..COUNT {
            let revision = buckets
                .leases
                .create(shard_key(id, COUNT), "a".into())
                .await
                .unwrap();
            coordinator.running.insert(id, running(revision));
        }
        coordinator.stop(1, true);

        let key = shard_key(0, COUNT);
        buckets.leases.purge(&key).await.unwrap();
        buckets.leases.create(&key, "b".into()).await.unwrap();
        coordinator.renew().await;
        let lost = &coordinator.running[&0];
        assert_eq!(lost.stopping, Some(false));
        assert!(lost.stop.is_lost());

        buckets.leases.delete(&key).await.unwrap();
        let handing_over = coordinator.running[&1].lease;
        coordinator.renew().await;
        assert_eq!(
            holder(&buckets, 0).await,
            None,
            "the released lease of a shard lost and draining here was taken back"
        );
        assert_eq!(holder(&buckets, 1).await.as_deref(), Some("a"));
        assert_ne!(
            coordinator.running[&1].lease, handing_over,
            "a shard handed over keeps its lease renewed while it drains"
        );
    }
}
