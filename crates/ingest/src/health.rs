//! Shard liveness for `/readyz`: a process is ready while none of its shards has been
//! without a session for longer than a threshold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct ShardHealth {
    /// Owned shards → since when they have been down (`None`: up).
    shards: Arc<Mutex<HashMap<u32, Option<Instant>>>>,
}

impl ShardHealth {
    pub(crate) fn up(&self, id: u32) {
        self.lock().insert(id, None);
    }

    /// Marks `id` down, keeping the earliest time it went down.
    pub(crate) fn down(&self, id: u32) {
        self.lock()
            .entry(id)
            .and_modify(|since| {
                since.get_or_insert_with(Instant::now);
            })
            .or_insert_with(|| Some(Instant::now()));
    }

    /// The shard is no longer owned here.
    pub(crate) fn forget(&self, id: u32) {
        self.lock().remove(&id);
    }

    /// Shards down for longer than `threshold`.
    pub fn down_longer_than(&self, threshold: Duration) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .lock()
            .iter()
            .filter(|(_, since)| since.is_some_and(|s| s.elapsed() > threshold))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Shards owned by this process.
    pub fn owned(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Option<Instant>>> {
        self.shards.lock().expect("health lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_time_is_kept_from_the_first_failure() {
        let h = ShardHealth::default();
        h.down(1);
        h.up(2);
        std::thread::sleep(Duration::from_millis(20));
        h.down(1);
        assert_eq!(h.down_longer_than(Duration::from_millis(10)), vec![1]);
        h.up(1);
        assert!(h.down_longer_than(Duration::ZERO).is_empty());
        h.forget(1);
        assert_eq!(h.owned(), 1);
    }
}
