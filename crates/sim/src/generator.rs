//! The scripted event generator: paced, weighted, routed by guild to every session covering it.

use crate::payloads::{self, EventKind};
use crate::state::Shared;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Events made between yields when running unpaced, so other tasks (the connections
/// delivering these events) keep running on a busy runtime.
const UNPACED_BATCH: u64 = 256;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateSpec {
    /// How many events; `None` generates until stopped.
    pub count: Option<u64>,
    /// Events per second; `0`, negative, NaN or infinite means as fast as possible.
    pub rate_per_sec: f64,
    pub mix: EventMix,
    /// Adds [`STAMP_FIELD`] to every generated payload: the event's number and the wall-clock
    /// time it was made, so a receiver downstream can measure end-to-end latency and count
    /// distinct events without knowing how they were wrapped on the way. Off by default.
    pub stamp: bool,
}

impl Default for GenerateSpec {
    /// 100 events per second until stopped, default mix.
    fn default() -> Self {
        Self {
            count: None,
            rate_per_sec: 100.0,
            mix: EventMix::default(),
            stamp: false,
        }
    }
}

/// Relative weights of the generated event types. All zero means the default mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMix {
    pub message_create: u32,
    pub reaction_add: u32,
    pub member_add: u32,
    pub presence_update: u32,
}

impl Default for EventMix {
    /// 70 % MESSAGE_CREATE, 15 % MESSAGE_REACTION_ADD, 10 % GUILD_MEMBER_ADD, 5 % PRESENCE_UPDATE.
    fn default() -> Self {
        Self {
            message_create: 70,
            reaction_add: 15,
            member_add: 10,
            presence_update: 5,
        }
    }
}

impl EventMix {
    fn weights(self) -> [(EventKind, u64); 4] {
        let mix = if self == Self::default() || self.total() == 0 {
            Self::default()
        } else {
            self
        };
        [
            (EventKind::MessageCreate, mix.message_create.into()),
            (EventKind::ReactionAdd, mix.reaction_add.into()),
            (EventKind::MemberAdd, mix.member_add.into()),
            (EventKind::PresenceUpdate, mix.presence_update.into()),
        ]
    }

    fn total(self) -> u64 {
        [
            self.message_create,
            self.reaction_add,
            self.member_add,
            self.presence_update,
        ]
        .into_iter()
        .map(u64::from)
        .sum()
    }
}

fn pick(weights: &[(EventKind, u64); 4], rng: &mut impl Rng) -> EventKind {
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for &(kind, weight) in weights {
        if roll < weight {
            return kind;
        }
        roll -= weight;
    }
    unreachable!("roll < total")
}

/// A running generator. Dropping the handle leaves it running (until the simulator stops).
#[derive(Debug)]
pub struct GeneratorHandle {
    task: JoinHandle<u64>,
    stop: CancellationToken,
    generated: Arc<AtomicU64>,
}

impl GeneratorHandle {
    /// Waits for the generator to finish (its `count` reached, or stopped) and returns how many
    /// events it generated.
    pub async fn finished(self) -> u64 {
        match self.task.await {
            Ok(generated) => generated,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => self.generated.load(Relaxed),
        }
    }

    /// Asks the generator to stop after the event in progress.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Events generated so far.
    pub fn generated(&self) -> u64 {
        self.generated.load(Relaxed)
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, spec: GenerateSpec) -> GeneratorHandle {
    // A child of the shutdown token: the generator also ends with the simulator.
    let stop = shared.shutdown.child_token();
    let generated = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run(shared, spec, stop.clone(), Arc::clone(&generated)));
    GeneratorHandle {
        task,
        stop,
        generated,
    }
}

async fn run(
    shared: Arc<Shared>,
    spec: GenerateSpec,
    stop: CancellationToken,
    generated: Arc<AtomicU64>,
) -> u64 {
    tokio::select! {
        () = shared.wait_until(Shared::all_ready) => {}
        () = stop.cancelled() => return 0,
    }
    let target = spec.count.unwrap_or(u64::MAX);
    let rate = Some(spec.rate_per_sec).filter(|r| r.is_finite() && *r > 0.0);
    let weights = spec.mix.weights();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let start = Instant::now();
    let mut made = 0;
    while made < target && !stop.is_cancelled() {
        // Token bucket: everything due by now is made in one go; if the generator fell
        // behind (a shard without a session), it catches up so the average rate holds.
        let due = match rate {
            Some(rate) => {
                let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                if due <= made {
                    let next_at = start + Duration::from_secs_f64(made as f64 / rate);
                    tokio::select! {
                        () = tokio::time::sleep_until(next_at) => {}
                        () = stop.cancelled() => break,
                    }
                    continue;
                }
                due
            }
            None => made + UNPACED_BATCH,
        };
        let batch_end = due.min(target);
        while made < batch_end {
            // Round-robin over guilds: every shard gets its share, even for small counts.
            let guild = &shared.world.guilds[(made % shared.world.guilds.len() as u64) as usize];
            let kind = pick(&weights, &mut rng);
            let mut data = payloads::event(kind, &shared.world, guild, &shared.uniques, &mut rng);
            if spec.stamp {
                // Taken just before the frame is queued for the connection's writer, so
                // the measured latency includes the simulator's own queueing and compression.
                stamp(&mut data, made, unix_micros());
            }
            let event_type: Arc<str> = kind.event_type().into();
            if !deliver(&shared, &stop, &event_type, data.into(), guild.id, made).await {
                return made;
            }
            made += 1;
            generated.store(made, Relaxed);
        }
        tokio::task::yield_now().await;
    }
    made
}

/// Key of the stamp [`GenerateSpec::stamp`] adds as the last field of `d`:
/// `"relaycord_sim":{"n":<event number from 0>,"sent_unix_us":<CLOCK_REALTIME µs>}`. Clients
/// ignore unknown fields, as they must for Discord's own additions; consumers that forward
/// `d` unchanged (ingest, discordhooks) carry it through, and a receiver finds it with a byte
/// search for this key.
pub const STAMP_FIELD: &str = "relaycord_sim";

/// Appends the stamp to a JSON object.
fn stamp(data: &mut String, n: u64, sent_unix_us: u64) {
    debug_assert!(data.ends_with('}'), "payloads are JSON objects");
    data.pop();
    if !data.ends_with('{') {
        data.push(',');
    }
    use std::fmt::Write;
    let _ = write!(
        data,
        r#""{STAMP_FIELD}":{{"n":{n},"sent_unix_us":{sent_unix_us}}}}}"#
    );
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Dispatches event number `n` to every session covering its guild, waiting for one to
/// exist if none does (after a non-resumable invalidation, until the client identifies again),
/// so `count` stays exact. Returns false if stopped first.
async fn deliver(
    shared: &Shared,
    stop: &CancellationToken,
    event_type: &Arc<str>,
    data: Arc<str>,
    guild_id: u64,
    n: u64,
) -> bool {
    loop {
        if !shared
            .dispatch_guild(event_type, &data, guild_id, Some(n))
            .is_empty()
        {
            return true;
        }
        tokio::select! {
            () = shared.wait_until(|s| s.covers(guild_id)) => {}
            () = stop.cancelled() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_follows_weights() {
        let mut rng = SmallRng::seed_from_u64(3);
        let weights = EventMix {
            message_create: 1,
            reaction_add: 0,
            member_add: 3,
            presence_update: 0,
        }
        .weights();
        let picks: Vec<_> = (0..4000).map(|_| pick(&weights, &mut rng)).collect();
        let members = picks.iter().filter(|k| **k == EventKind::MemberAdd).count();
        assert!(
            picks
                .iter()
                .all(|k| matches!(k, EventKind::MessageCreate | EventKind::MemberAdd))
        );
        assert!((2800..3200).contains(&members), "{members}");
    }

    #[test]
    fn stamp_is_the_last_field_and_keeps_the_rest() {
        let mut data = r#"{"id":"1","content":"a } brace"}"#.to_owned();
        stamp(&mut data, 7, 1_700_000_000_123_456);
        let value: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(value["id"], "1");
        assert_eq!(value["content"], "a } brace");
        assert_eq!(value[STAMP_FIELD]["n"], 7);
        assert_eq!(
            value[STAMP_FIELD]["sent_unix_us"],
            1_700_000_000_123_456_u64
        );
        let mut empty = "{}".to_owned();
        stamp(&mut empty, 0, 1);
        assert_eq!(empty, r#"{"relaycord_sim":{"n":0,"sent_unix_us":1}}"#);
    }

    #[test]
    fn all_zero_mix_falls_back_to_default() {
        let zero = EventMix {
            message_create: 0,
            reaction_add: 0,
            member_add: 0,
            presence_update: 0,
        };
        assert_eq!(zero.weights(), EventMix::default().weights());
    }
}
