//! IDENTIFY and RESUME: the checks Discord makes, session creation, and replay.

use super::generations::{MAX_SHARD_COUNT, ShardKey};
use super::{ConnHandle, Session, Shared, lock};
use crate::config::SimConfig;
use crate::payloads;
use crate::protocol::close;
use crate::snowflake;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Identifies per bucket are limited to one per this period (Discord's rule).
const IDENTIFY_PERIOD: Duration = Duration::from_secs(5);

/// Discord's identify limits: `session_start_limit`, and one IDENTIFY per 5 s per bucket.
#[derive(Debug)]
pub(super) struct IdentifyLimits {
    last_by_bucket: Vec<Option<Instant>>,
    remaining: u32,
    reset_at: Instant,
}

impl IdentifyLimits {
    pub(super) fn new(config: &SimConfig) -> Self {
        Self {
            last_by_bucket: vec![None; usize::from(config.max_concurrency.max(1))],
            remaining: config.session_start_limit,
            reset_at: Instant::now() + config.session_start_reset_after,
        }
    }
}

impl IdentifyLimits {
    /// Restores the full limit once the reset time has passed.
    fn refill(&mut self, config: &SimConfig, now: Instant) {
        if now >= self.reset_at {
            self.remaining = config.session_start_limit;
            self.reset_at = now + config.session_start_reset_after;
        }
    }
}

/// The slot and session a connection identified or resumed into.
#[derive(Clone, Debug)]
pub(crate) struct Bound {
    pub key: ShardKey,
    pub session_id: Arc<str>,
}

/// Why a RESUME was refused.
#[derive(Debug)]
pub(crate) enum ResumeRefused {
    /// Answer INVALID_SESSION (`d: false`).
    InvalidSession,
    /// Close the connection with this code.
    Close(u16),
}

impl Shared {
    /// IDENTIFY: checks, then a new session whose READY and GUILD_CREATEs are queued on `conn`.
    /// `Err` is the close code to answer with.
    pub fn identify(
        &self,
        conn: &ConnHandle,
        token: &str,
        shard: Option<[u32; 2]>,
    ) -> Result<Bound, u16> {
        if !self.token_matches(token) {
            return Err(close::AUTHENTICATION_FAILED);
        }
        // Like Discord, an unsharded bot may leave `shard` out.
        let [shard, count] = shard.unwrap_or([0, 1]);
        if shard >= count || count > MAX_SHARD_COUNT {
            return Err(close::INVALID_SHARD);
        }
        // Any count the bot's size allows is accepted: during a reshard both counts run.
        if count < self.min_shards() {
            return Err(close::SHARDING_REQUIRED);
        }
        self.take_session_start(shard)?;

        let key = ShardKey { count, shard };
        let session_id: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
        let generation = self.generation_or_insert(count);
        let mut slot = generation.slot(shard).expect("shard was checked");
        if let Some(old) = slot.conn.take().filter(|old| old.id != conn.id) {
            // One live connection per slot: the newer one wins.
            old.close(close::UNKNOWN_ERROR);
        }
        slot.session = Some(Session {
            id: Arc::clone(&session_id),
            log: Vec::new(),
        });
        // A zombie shard takes the identify but the connection hears nothing more: READY
        // and the rest wait in the session log for a RESUME on a healthy connection.
        if self.is_zombie(key) {
            conn.zombie.store(true, Relaxed);
        } else {
            slot.conn = Some(conn.clone());
        }
        self.counters.identifies.fetch_add(1, Relaxed);

        let guilds = &generation.guilds_by_shard[shard as usize];
        let guild_ids: Vec<u64> = guilds.iter().map(|&i| self.world.guilds[i].id).collect();
        let ready = payloads::ready(
            &self.world,
            [shard, count],
            &session_id,
            &self.gateway_url(),
            &guild_ids,
        );
        self.append(&mut slot, key, "READY".into(), ready.into(), None, None)
            .expect("session was just created");
        let now = snowflake::unix_ms();
        for &index in guilds {
            let guild = &self.world.guilds[index];
            let data = payloads::guild_create(&self.world, guild, now);
            self.append(
                &mut slot,
                key,
                "GUILD_CREATE".into(),
                data.into(),
                Some(guild.id),
                None,
            )
            .expect("session was just created");
        }
        drop(slot);
        self.changed.notify_waiters();
        Ok(Bound { key, session_id })
    }

    /// Spends one session start; counts (but allows) identifies faster than the bucket's limit.
    fn take_session_start(&self, shard: u32) -> Result<(), u16> {
        let mut limits = lock(&self.limits);
        let now = Instant::now();
        limits.refill(&self.config, now);
        // Discord's answer to an exhausted limit is not documented; 4008 (rate limited) is
        // the closest code, and it lets a client retry later instead of giving up for good.
        let Some(remaining) = limits.remaining.checked_sub(1) else {
            self.counters.session_start_exhausted.fetch_add(1, Relaxed);
            return Err(close::RATE_LIMITED);
        };
        limits.remaining = remaining;
        let bucket = shard as usize % limits.last_by_bucket.len();
        let last = limits.last_by_bucket[bucket].replace(now);
        if last.is_some_and(|last| now - last < IDENTIFY_PERIOD) {
            self.counters.identify_violations.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// RESUME: replays everything after `seq` on `conn`, then RESUMED.
    pub fn resume(
        &self,
        conn: &ConnHandle,
        token: &str,
        session_id: &str,
        seq: u64,
    ) -> Result<Bound, ResumeRefused> {
        let result = self.try_resume(conn, token, session_id, seq);
        if result.is_err() {
            self.counters.failed_resumes.fetch_add(1, Relaxed);
        }
        result
    }

    fn try_resume(
        &self,
        conn: &ConnHandle,
        token: &str,
        session_id: &str,
        seq: u64,
    ) -> Result<Bound, ResumeRefused> {
        if !self.token_matches(token) {
            return Err(ResumeRefused::InvalidSession);
        }
        // RESUME carries no shard: find the session over every count (there are few shards;
        // each lock is brief).
        let generations = self.all_generations();
        let (generation, shard) = generations
            .iter()
            .flat_map(|g| (0..g.count).map(move |shard| (g, shard)))
            .find(|(g, shard)| {
                g.slot(*shard)
                    .is_ok_and(|slot| slot.session.as_ref().is_some_and(|s| &*s.id == session_id))
            })
            .ok_or(ResumeRefused::InvalidSession)?;
        let key = ShardKey {
            count: generation.count,
            shard,
        };
        let mut slot = generation.slot(shard).expect("shard exists");
        // The session may have been replaced between the scan and this lock.
        let Some(session) = slot.session.as_ref().filter(|s| &*s.id == session_id) else {
            return Err(ResumeRefused::InvalidSession);
        };
        let session_id = Arc::clone(&session.id);
        let missed = usize::try_from(seq)
            .ok()
            .and_then(|seq| session.log.get(seq..));
        let Some(missed) = missed else {
            // A seq the session never reached: Discord closes with 4007 and forgets it.
            slot.session = None;
            drop(slot);
            self.changed.notify_waiters();
            return Err(ResumeRefused::Close(close::INVALID_SEQ));
        };
        let zombie = self.is_zombie(key);
        if !zombie {
            for entry in missed {
                conn.send(entry.frame());
            }
            self.counters
                .replayed
                .fetch_add(missed.len() as u64, Relaxed);
        }
        if let Some(old) = slot.conn.take().filter(|old| old.id != conn.id) {
            old.close(close::UNKNOWN_ERROR);
        }
        // As for identify: a zombie shard's new connection stays silent, the session and
        // its log stay resumable.
        if zombie {
            conn.zombie.store(true, Relaxed);
        } else {
            slot.conn = Some(conn.clone());
        }
        self.append(&mut slot, key, "RESUMED".into(), "{}".into(), None, None)
            .expect("session exists");
        self.counters.resumes.fetch_add(1, Relaxed);
        drop(slot);
        self.changed.notify_waiters();
        Ok(Bound { key, session_id })
    }

    /// `(remaining, reset_after)`, as `/gateway/bot` reports them.
    pub fn session_start_limit(&self) -> (u32, Duration) {
        let mut limits = lock(&self.limits);
        let now = Instant::now();
        // A client waiting for the reset asks here, not by identifying: refill on reads too.
        limits.refill(&self.config, now);
        (
            limits.remaining,
            limits.reset_at.saturating_duration_since(now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(config: SimConfig) -> Shared {
        Shared::new(config, ([127, 0, 0, 1], 1).into())
    }

    fn identify(sim: &Shared, shard: Option<[u32; 2]>) -> Result<Bound, u16> {
        let (conn, _rx) = sim.new_connection(crate::Compression::None);
        sim.identify(&conn, "sim-token", shard)
    }

    #[test]
    fn shard_outside_its_count_is_closed_with_4010() {
        let sim = shared(SimConfig::default());
        assert_eq!(
            identify(&sim, Some([2, 2])).err(),
            Some(close::INVALID_SHARD)
        );
        assert_eq!(
            identify(&sim, Some([0, 0])).err(),
            Some(close::INVALID_SHARD)
        );
        let too_many = Some([0, MAX_SHARD_COUNT + 1]);
        assert_eq!(identify(&sim, too_many).err(), Some(close::INVALID_SHARD));
        assert_eq!(sim.counters.identifies.load(Relaxed), 0);
    }

    /// Any count from the minimum up is a session of its own; fewer shards than the guilds
    /// need is 4011, with or without `shard`.
    #[test]
    fn counts_from_the_minimum_up_are_accepted() {
        let sim = shared(SimConfig {
            guilds: 8,
            ..SimConfig::default()
        });
        for shard in [None, Some([0, 1]), Some([1, 2]), Some([3, 4])] {
            identify(&sim, shard).unwrap();
        }
        assert_eq!(sim.live_sessions().len(), 4 - 1); // [0, 1] replaced the unsharded one
        sim.set_max_guilds_per_shard(3);
        assert_eq!(sim.min_shards(), 3);
        assert_eq!(identify(&sim, None).err(), Some(close::SHARDING_REQUIRED));
        assert_eq!(
            identify(&sim, Some([1, 2])).err(),
            Some(close::SHARDING_REQUIRED)
        );
        assert!(identify(&sim, Some([2, 3])).is_ok());
    }

    #[test]
    fn identify_violations_are_counted_per_bucket() {
        let sim = shared(SimConfig {
            shards: 6,
            max_concurrency: 2,
            ..SimConfig::default()
        });
        let violations = || sim.counters.identify_violations.load(Relaxed);
        // Buckets 0 and 1: one identify each within the period is allowed.
        sim.take_session_start(0).unwrap();
        sim.take_session_start(1).unwrap();
        assert_eq!(violations(), 0);
        // Shard 2 is bucket 0 again, shard 5 bucket 1: both too soon.
        sim.take_session_start(2).unwrap();
        assert_eq!(violations(), 1);
        sim.take_session_start(5).unwrap();
        assert_eq!(violations(), 2);
    }

    #[test]
    fn identify_after_the_period_is_no_violation() {
        let sim = shared(SimConfig {
            shards: 2,
            max_concurrency: 1,
            ..SimConfig::default()
        });
        sim.take_session_start(0).unwrap();
        // Pretend the bucket's last identify was a period ago.
        lock(&sim.limits).last_by_bucket[0] = Instant::now().checked_sub(IDENTIFY_PERIOD);
        sim.take_session_start(1).unwrap();
        assert_eq!(sim.counters.identify_violations.load(Relaxed), 0);
    }

    #[test]
    fn exhausted_session_starts_close_with_4008_until_the_reset() {
        let sim = shared(SimConfig {
            shards: 4,
            session_start_limit: 2,
            ..SimConfig::default()
        });
        sim.take_session_start(0).unwrap();
        sim.take_session_start(1).unwrap();
        assert_eq!(sim.session_start_limit().0, 0);
        assert_eq!(sim.take_session_start(2), Err(close::RATE_LIMITED));
        assert_eq!(sim.counters.session_start_exhausted.load(Relaxed), 1);
        assert_eq!(sim.counters.identify_violations.load(Relaxed), 0);

        lock(&sim.limits).reset_at = Instant::now();
        // What `/gateway/bot` reports refills as well, without an identify first.
        assert_eq!(sim.session_start_limit().0, 2);
        sim.take_session_start(2).unwrap();
        assert_eq!(sim.session_start_limit().0, 1);
    }
}
