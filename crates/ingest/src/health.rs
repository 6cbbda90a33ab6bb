//! Shard health for `/readyz` and `/healthz`.
//!
//! Readiness: a process is ready while none of its shards has been without a session
//! (or, owned but not running, waiting to be started again) for longer than a threshold,
//! and none has held a publish unacknowledged for longer than another. Liveness: the ingest loop is running and no shard's loop
//! has stopped turning (while NATS is connected: a loop waiting on a NATS outage is
//! backpressure, not a wedge, and a restart would not help).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One shard of one generation: during a reshard a process may run shard 1 of 2 and
/// shard 1 of 4 side by side.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardRef {
    pub count: u32,
    pub id: u32,
}

impl ShardRef {
    pub fn new(id: u32, count: u32) -> Self {
        Self { count, id }
    }
}

impl std::fmt::Debug for ShardRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.id, self.count)
    }
}

/// What is known of one owned shard.
#[derive(Clone, Copy)]
struct Entry {
    /// Since when it has been without a session (`None`: up).
    down_since: Option<Instant>,
    /// When its loop last turned.
    beat: Instant,
    /// When its oldest publish still awaiting JetStream's ack was read (`None`: none).
    unacked_since: Option<Instant>,
}

#[derive(Clone, Default)]
pub struct ShardHealth {
    shards: Arc<Mutex<HashMap<ShardRef, Entry>>>,
    /// Set once `relaycord_ingest::run` has returned (or was dropped).
    ended: Arc<AtomicBool>,
    /// The NATS client, to tell a wedged loop from one waiting for NATS to come back.
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl ShardHealth {
    pub(crate) fn up(&self, id: ShardRef) {
        let now = Instant::now();
        self.lock()
            .entry(id)
            .and_modify(|e| {
                e.down_since = None;
                e.beat = now;
            })
            .or_insert(Entry {
                down_since: None,
                beat: now,
                unacked_since: None,
            });
    }

    /// Marks `id` down, keeping the earliest time it went down.
    pub(crate) fn down(&self, id: ShardRef) {
        let now = Instant::now();
        self.lock()
            .entry(id)
            .and_modify(|e| {
                e.down_since.get_or_insert(now);
                e.beat = now;
            })
            .or_insert(Entry {
                down_since: Some(now),
                beat: now,
                unacked_since: None,
            });
    }

    /// When shard `id`'s oldest unacknowledged publish was read (`None`: all acked).
    pub(crate) fn unacked_since(&self, id: ShardRef, since: Option<Instant>) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.unacked_since = since;
        }
    }

    /// The shard's loop is turning.
    pub(crate) fn beat(&self, id: ShardRef) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.beat = Instant::now();
        }
    }

    /// The shard is no longer owned here.
    pub(crate) fn forget(&self, id: ShardRef) {
        self.lock().remove(&id);
    }

    pub(crate) fn set_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    pub(crate) fn set_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Shards down for longer than `threshold`.
    pub fn down_longer_than(&self, threshold: Duration) -> Vec<ShardRef> {
        self.down_at(Instant::now(), threshold)
    }

    /// For `/readyz`: `Err` (naming the shards) when an owned shard has been without a
    /// session (or not running) for longer than `threshold`, or has held a publish
    /// unacknowledged for longer than `max_unacked_age`.
    pub fn readiness(&self, threshold: Duration, max_unacked_age: Duration) -> Result<(), String> {
        let now = Instant::now();
        if let down @ [_, ..] = self.down_at(now, threshold).as_slice() {
            return Err(format!(
                "shards {down:?} have had no gateway session for over {threshold:?}"
            ));
        }
        match self.unacked_at(now, max_unacked_age).as_slice() {
            [] => Ok(()),
            stuck => Err(format!(
                "shards {stuck:?} have a publish unacknowledged by JetStream for over \
                 {max_unacked_age:?} (see relaycord_publish_errors_total and the error log)"
            )),
        }
    }

    /// `Err` (with the reason) when ingest has stopped, or when a shard's loop has not
    /// turned for longer than `stall` while NATS is connected.
    pub fn liveness(&self, stall: Duration) -> Result<(), String> {
        if self.ended.load(Ordering::SeqCst) {
            return Err("ingest has stopped".to_owned());
        }
        let nats_up = self.nats.get().is_none_or(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        });
        if !nats_up {
            return Ok(());
        }
        match self.stalled_at(Instant::now(), stall).as_slice() {
            [] => Ok(()),
            ids => Err(format!(
                "shards {ids:?}: loop stalled for over {stall:?} with NATS connected"
            )),
        }
    }

    /// Shards owned by this process.
    pub fn owned(&self) -> usize {
        self.lock().len()
    }

    fn down_at(&self, now: Instant, threshold: Duration) -> Vec<ShardRef> {
        self.select(|e| {
            e.down_since
                .is_some_and(|s| now.duration_since(s) > threshold)
        })
    }

    fn unacked_at(&self, now: Instant, threshold: Duration) -> Vec<ShardRef> {
        self.select(|e| {
            e.unacked_since
                .is_some_and(|s| now.duration_since(s) > threshold)
        })
    }

    fn stalled_at(&self, now: Instant, threshold: Duration) -> Vec<ShardRef> {
        self.select(|e| now.duration_since(e.beat) > threshold)
    }

    fn select(&self, keep: impl Fn(&Entry) -> bool) -> Vec<ShardRef> {
        let mut ids: Vec<ShardRef> = self
            .lock()
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShardRef, Entry>> {
        self.shards.lock().expect("health lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn s(id: u32) -> ShardRef {
        ShardRef::new(id, 8)
    }

    #[test]
    fn down_time_is_kept_from_the_first_failure() {
        let h = ShardHealth::default();
        h.down(s(1));
        h.up(s(2));
        let later = Instant::now() + 5 * S;
        h.down(s(1));
        assert_eq!(h.down_at(later, 2 * S), vec![s(1)]);
        h.up(s(1));
        assert!(h.down_at(later, Duration::ZERO).is_empty());
        h.forget(s(1));
        assert_eq!(h.owned(), 1);
    }

    #[test]
    fn an_old_unacked_publish_fails_readiness_and_up_keeps_it() {
        let h = ShardHealth::default();
        h.up(s(3));
        let read = Instant::now();
        h.unacked_since(s(3), Some(read));
        h.up(s(3));
        let later = read + 5 * S;
        assert_eq!(h.unacked_at(later, 2 * S), vec![s(3)], "kept across up()");
        assert!(h.unacked_at(later, 10 * S).is_empty());
        h.unacked_since(s(3), None);
        assert!(h.unacked_at(later, Duration::ZERO).is_empty());
        h.unacked_since(s(3), read.checked_sub(120 * S));
        let e = h.readiness(Duration::from_secs(60), 60 * S).unwrap_err();
        assert!(e.contains("[3/8]") && e.contains("unacknowledged"), "{e}");
    }

    #[test]
    fn a_loop_that_stops_beating_is_stalled_and_a_down_shard_is_not() {
        let h = ShardHealth::default();
        h.up(s(1));
        h.down(s(2));
        let later = Instant::now() + 5 * S;
        assert_eq!(h.stalled_at(later, 2 * S), vec![s(1), s(2)]);
        h.beat(s(2));
        assert_eq!(
            h.stalled_at(Instant::now() + S, 2 * S),
            Vec::<ShardRef>::new(),
            "beating: alive, even though shard 2 has no session"
        );
        h.beat(s(7)); // not owned: ignored
        assert_eq!(h.owned(), 2);
        assert!(h.liveness(Duration::from_secs(3600)).is_ok());
        h.forget(s(1));
        h.forget(s(2));
        assert!(
            h.liveness(Duration::ZERO).is_ok(),
            "no shards, nothing stalled"
        );
        h.set_ended();
        assert_eq!(
            h.liveness(Duration::from_secs(3600)).unwrap_err(),
            "ingest has stopped"
        );
    }
}
