//! The lanes of one partition: each lane's queue of events in stream order, with what
//! the gauges report (lanes active, blocked, the oldest waiting event).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use tokio::sync::OwnedSemaphorePermit;

/// An event waiting in its lane, holding one place of the partition's window.
pub struct Held {
    pub message: Message,
    pub stream_seq: u64,
    pub since: Instant,
    pub _place: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Held>,
    /// Since when the event being delivered has waited (it left the queue).
    head_since: Option<Instant>,
    /// The event being delivered failed at least once and waits for another try.
    failing: bool,
}

/// What the gauges show for one partition.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub active: usize,
    pub blocked: usize,
    pub oldest: Duration,
}

#[derive(Default)]
pub struct Board {
    lanes: Mutex<HashMap<String, Lane>>,
    /// Stream sequences held anywhere on the board: a redelivery of one (its ack wait
    /// ran out while its lane was blocked) is already here and is not queued twice.
    held: Mutex<HashSet<u64>>,
}

impl Board {
    /// Queues `held` in `lane`; true when the lane was idle and needs a task to run it.
    /// `None`: the event is already on the board (a redelivery).
    pub fn push(&self, lane: &str, held: Held) -> Option<bool> {
        if !self
            .held
            .lock()
            .expect("not poisoned")
            .insert(held.stream_seq)
        {
            return None;
        }
        let mut lanes = self.lanes.lock().expect("not poisoned");
        let idle = !lanes.contains_key(lane);
        lanes
            .entry(lane.to_owned())
            .or_default()
            .queue
            .push_back(held);
        Some(idle)
    }

    /// The lane's next event, or `None` after removing the lane (it fell idle). Removal
    /// happens under the same lock as [`Board::push`], so an event pushed meanwhile
    /// either is taken here or finds the lane gone and starts a new task.
    pub fn next(&self, lane: &str) -> Option<Held> {
        let mut lanes = self.lanes.lock().expect("not poisoned");
        let entry = lanes.get_mut(lane)?;
        match entry.queue.pop_front() {
            Some(held) => {
                entry.head_since = Some(held.since);
                entry.failing = false;
                Some(held)
            }
            None => {
                lanes.remove(lane);
                None
            }
        }
    }

    /// The event at `stream_seq` is settled (or left for the next owner).
    pub fn done(&self, stream_seq: u64) {
        self.held.lock().expect("not poisoned").remove(&stream_seq);
    }

    pub fn set_failing(&self, lane: &str, failing: bool) {
        if let Some(entry) = self.lanes.lock().expect("not poisoned").get_mut(lane) {
            entry.failing = failing;
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let lanes = self.lanes.lock().expect("not poisoned");
        let oldest = lanes
            .values()
            .filter_map(|l| l.head_since.or_else(|| l.queue.front().map(|h| h.since)))
            .min()
            .map_or(Duration::ZERO, |since| since.elapsed());
        Snapshot {
            active: lanes.len(),
            blocked: lanes.values().filter(|l| l.failing).count(),
            oldest,
        }
    }
}
