//! The fault schedule: drawn from a seeded RNG, so a seed replays the same faults in the
//! same order with the same targets and durations, and run one at a time (so never two
//! NATS nodes are down together, and every fault is healed before the next).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use relaycord_devkit::NatsCluster;
use relaycord_sim::Simulator;
use tokio::runtime::Handle;

use super::procs::Procs;
use crate::TestReceiver;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of a Relaycord process, restarted after `hold`.
    Kill,
    /// kill -9 of one NATS node, restarted after `hold`.
    NatsKill,
    /// SIGSTOP of a Relaycord process for `hold` (longer than the lease TTL and ack_wait).
    Pause,
    /// The HTTP receiver refuses connections for `hold`.
    ReceiverDown,
    /// The simulator sends RECONNECT (op 7) or drops a shard's TCP connection.
    Reconnect,
    /// The simulator sends a resumable INVALID_SESSION (op 9).
    InvalidSession,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Kill,
        Kind::NatsKill,
        Kind::Pause,
        Kind::ReceiverDown,
        Kind::Reconnect,
        Kind::InvalidSession,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::NatsKill => "nats_kill",
            Kind::Pause => "pause",
            Kind::ReceiverDown => "receiver_down",
            Kind::Reconnect => "gateway_reconnect",
            Kind::InvalidSession => "gateway_invalid_session",
        }
    }
}

/// One drawn fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    /// Index of the role, node or shard it hits.
    pub target: usize,
    /// RECONNECT (0) or a dropped connection (1).
    pub variant: u8,
    pub hold: Duration,
    /// Quiet time before it.
    pub gap: Duration,
}

/// The durations the faults are sized against.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_ttl: Duration,
    pub ack_wait: Duration,
}

pub struct Schedule {
    rng: StdRng,
    /// The kinds left in the current round: each round is every kind once, shuffled, so
    /// every kind comes up as often as the others.
    round: Vec<Kind>,
    roles: usize,
    nodes: usize,
    shards: u32,
    timing: Timing,
}

impl Schedule {
    pub fn new(seed: u64, roles: usize, nodes: usize, shards: u32, timing: Timing) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            round: Vec::new(),
            roles,
            nodes,
            shards,
            timing,
        }
    }

    fn ms(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(range))
    }

    pub fn next_fault(&mut self) -> Fault {
        if self.round.is_empty() {
            self.round = Kind::ALL.to_vec();
            self.round.shuffle(&mut self.rng);
        }
        let kind = self.round.pop().expect("refilled above");
        let gap = self.ms(300..1500);
        let longer_than = self.timing.lease_ttl.max(self.timing.ack_wait);
        let (target, hold) = match kind {
            Kind::Kill => (self.rng.random_range(0..self.roles), self.ms(100..2000)),
            Kind::NatsKill => (self.rng.random_range(0..self.nodes), self.ms(1000..5000)),
            Kind::Pause => (
                self.rng.random_range(0..self.roles),
                longer_than + self.ms(500..2500),
            ),
            Kind::ReceiverDown => (0, self.ms(1000..5000)),
            Kind::Reconnect | Kind::InvalidSession => (
                self.rng.random_range(0..self.shards) as usize,
                Duration::ZERO,
            ),
        };
        let variant = self.rng.random_range(0..2);
        Fault {
            kind,
            target,
            variant,
            hold,
            gap,
        }
    }
}

/// A fault as it happened.
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    pub target: String,
    /// Since the soak started.
    pub at: Duration,
    pub started: SystemTime,
    pub hold: Duration,
}

/// What the faults act on.
pub struct World {
    pub procs: Arc<Mutex<Procs>>,
    pub cluster: Arc<Mutex<NatsCluster>>,
    pub sim: Simulator,
    pub receiver: TestReceiver,
    pub runtime: Handle,
    pub start: Instant,
}

/// When to stop drawing faults.
pub struct Bounds {
    /// Set once the generator is done.
    pub generated: Arc<AtomicBool>,
    /// Keep going (even after generation) until every kind ran this often.
    pub min_per_kind: u32,
    /// Never more than this many.
    pub max_faults: usize,
}

/// Runs faults one after another on this (blocking) thread until `bounds` says stop.
pub fn run(world: &World, mut schedule: Schedule, bounds: &Bounds) -> Vec<Record> {
    let mut log = Vec::new();
    let mut per_kind: HashMap<Kind, u32> = HashMap::new();
    loop {
        let enough = Kind::ALL
            .iter()
            .all(|k| per_kind.get(k).copied().unwrap_or(0) >= bounds.min_per_kind);
        if (enough && bounds.generated.load(Ordering::SeqCst)) || log.len() >= bounds.max_faults {
            return log;
        }
        let fault = schedule.next_fault();
        std::thread::sleep(fault.gap);
        world
            .procs
            .lock()
            .unwrap()
            .restart_exited()
            .expect("restart a role");
        let record = inject(world, &fault);
        eprintln!(
            "soak: fault {:>4} at {:>7.1}s {:<24} {:<14} for {:?}",
            log.len() + 1,
            record.at.as_secs_f64(),
            record.kind.name(),
            record.target,
            record.hold
        );
        *per_kind.entry(fault.kind).or_default() += 1;
        log.push(record);
        heal(world, &fault);
    }
}

fn inject(world: &World, fault: &Fault) -> Record {
    let target = match fault.kind {
        Kind::Kill | Kind::Pause => world.procs.lock().unwrap().roles[fault.target].name.clone(),
        Kind::NatsKill => format!("n{}", fault.target),
        Kind::ReceiverDown => "receiver".to_owned(),
        Kind::Reconnect if fault.variant == 0 => format!("shard {} (op 7)", fault.target),
        Kind::Reconnect => format!("shard {} (tcp drop)", fault.target),
        Kind::InvalidSession => format!("shard {}", fault.target),
    };
    let record = Record {
        kind: fault.kind,
        target,
        at: world.start.elapsed(),
        started: SystemTime::now(),
        hold: fault.hold,
    };
    let shard = fault.target as u32;
    match fault.kind {
        Kind::Kill => world.procs.lock().unwrap().kill(fault.target),
        Kind::NatsKill => world.cluster.lock().unwrap().nodes[fault.target].kill(),
        Kind::Pause => world.procs.lock().unwrap().signal(fault.target, "STOP"),
        Kind::ReceiverDown => world.runtime.block_on(world.receiver.set_down(true)),
        Kind::Reconnect if fault.variant == 0 => world.sim.request_reconnect(shard),
        Kind::Reconnect => world.sim.drop_connection(shard),
        Kind::InvalidSession => world.sim.invalidate_session(shard, true),
    }
    record
}

fn heal(world: &World, fault: &Fault) {
    std::thread::sleep(fault.hold);
    match fault.kind {
        Kind::Kill => world
            .procs
            .lock()
            .unwrap()
            .start(fault.target)
            .expect("restart a role"),
        Kind::NatsKill => {
            // Not retried: a retry would kill a node still recovering its store.
            let mut cluster = world.cluster.lock().unwrap();
            if let Err(error) = cluster.nodes[fault.target].restart() {
                panic!("nats node n{} did not come back: {error}", fault.target);
            }
        }
        Kind::Pause => world.procs.lock().unwrap().signal(fault.target, "CONT"),
        Kind::ReceiverDown => world.runtime.block_on(world.receiver.set_down(false)),
        Kind::Reconnect | Kind::InvalidSession => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            lease_ttl: Duration::from_secs(3),
            ack_wait: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_seed_replays_the_same_schedule_and_rounds_cover_every_kind() {
        let draw = |seed| {
            let mut schedule = Schedule::new(seed, 6, 3, 8, timing());
            (0..60)
                .map(|_| {
                    let f = schedule.next_fault();
                    (f.kind, f.target, f.variant, f.hold, f.gap)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        for round in draw(7).chunks(Kind::ALL.len()) {
            let mut kinds: Vec<Kind> = round.iter().map(|f| f.0).collect();
            kinds.sort();
            assert_eq!(kinds, Kind::ALL.to_vec());
        }
    }

    #[test]
    fn pauses_outlast_the_lease_and_ack_wait() {
        let mut schedule = Schedule::new(1, 6, 3, 8, timing());
        for _ in 0..200 {
            let f = schedule.next_fault();
            if f.kind == Kind::Pause {
                assert!(f.hold > Duration::from_secs(3), "{f:?}");
            }
            if f.kind == Kind::NatsKill {
                assert!(f.target < 3);
            }
        }
    }
}
