//! Discord snowflakes: `((unix_ms - DISCORD_EPOCH) << 22) | worker | process | increment`.
//!
//! Real-looking ids matter because consumers derive things from them: the shard of a guild
//! is `(guild_id >> 22) % shards`, and creation times are read from the top bits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First millisecond of 2015, the zero point of Discord snowflakes.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Worker id stamped into every generated id (bits 17..22); any constant works.
const WORKER: u64 = 1;

/// Milliseconds since the Unix epoch, as used by Discord.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Unix milliseconds encoded in a snowflake.
pub fn unix_ms_of(snowflake: u64) -> u64 {
    (snowflake >> 22) + DISCORD_EPOCH_MS
}

/// Builds a snowflake from its parts (low 17 bits: process and increment).
pub fn compose(unix_ms: u64, low_bits: u64) -> u64 {
    (unix_ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | (WORKER << 17) | (low_bits & 0x1_FFFF)
}

/// A strictly increasing counter that follows a clock: each value is the caller's floor
/// (e.g. "now") or the previous value + 1, whichever is larger. Lock-free and shared by every
/// task of one simulator.
#[derive(Debug, Default)]
pub struct Monotonic {
    last: AtomicU64,
}

impl Monotonic {
    pub fn next_at_least(&self, floor: u64) -> u64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = floor.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }
}

/// Hands out unique, monotonic snowflakes carrying the current time.
///
/// When thousands are made in one millisecond the 17 low bits absorb them (131 072 per ms)
/// before ids run slightly ahead of the clock, which is harmless.
#[derive(Debug, Default)]
pub struct Snowflakes(Monotonic);

impl Snowflakes {
    pub fn next(&self) -> u64 {
        self.0.next_at_least(compose(unix_ms(), 0))
    }
}

/// Deterministic guild ids for `count` guilds, spread over `shards` shards and also over any
/// shard count a bot may reshard to.
///
/// Guild `i` is created `i` steps after 2016-01-01 (spread over about five years, like a bot
/// that grew), the steps chosen so that `(id >> 22) % m == i % m` for `m` = `shards` and every
/// `m` up to 16 (and whatever else divides their least common multiple): whichever of those
/// counts a client identifies with, every shard owns a guild when `count` is at least the
/// shard count, and guilds spread evenly.
pub fn guild_ids(count: u32, shards: u32) -> Vec<u64> {
    /// 2016-01-01T00:00:00Z in Unix milliseconds.
    const START_MS: u64 = 1_451_606_400_000;
    const SPAN_MS: u64 = 5 * 365 * 24 * 3600 * 1000;
    /// lcm(1..=16): the power-of-two counts bots reshard between, and the small ones.
    const SMALL_COUNTS_LCM: u64 = 720_720;
    let shards = u64::from(shards.max(1));
    // A huge, odd `shards` would make the lcm outgrow the span; then only `shards` is honoured.
    let modulus = Some(lcm(shards, SMALL_COUNTS_LCM))
        .filter(|&m| m <= SPAN_MS / 4)
        .unwrap_or(shards);
    // `step % modulus == 1` keeps `(id >> 22) ≡ i`; more guilds than the span holds at that
    // spacing are packed one millisecond apart, still unique.
    let step = (SPAN_MS / u64::from(count.max(1)) / modulus) * modulus + 1;
    let first = (START_MS - DISCORD_EPOCH_MS).next_multiple_of(modulus);
    (0..u64::from(count))
        .map(|i| compose(first + i * step + DISCORD_EPOCH_MS, i))
        .collect()
}

fn lcm(a: u64, b: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn snowflakes_are_monotonic_and_unique_across_threads() {
        let ids = Arc::new(Snowflakes::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || (0..50_000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            let ids = thread.join().unwrap();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "not monotonic per thread"
            );
            for id in ids {
                assert!(all.insert(id), "duplicate snowflake {id}");
            }
        }
        assert_eq!(all.len(), 200_000);
    }

    #[test]
    fn snowflakes_carry_the_current_time() {
        let before = unix_ms();
        let id = Snowflakes::default().next();
        let after = unix_ms();
        assert!((before..=after).contains(&unix_ms_of(id)));
    }

    #[test]
    fn guild_ids_cover_every_shard() {
        for shards in [1, 2, 3, 7, 16, 100, 99_991] {
            for count in [shards, shards + 1, 3 * shards + 2] {
                let ids = guild_ids(count, shards);
                assert_covered(&ids, count, shards);
            }
        }
    }

    /// A bot resharding from 1 to 2, 4 or 8 shards finds every shard of each count owning a
    /// guild, whatever count the layout was made for.
    #[test]
    fn guild_ids_cover_every_shard_of_other_counts() {
        for layout in [1, 2, 3, 8] {
            let ids = guild_ids(8, layout);
            for shards in [1, 2, 4, 8] {
                assert_covered(&ids, 8, shards);
            }
        }
        let ids = guild_ids(200_000, 2);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        assert_covered(&ids[..16], 16, 16);
    }

    fn assert_covered(ids: &[u64], count: u32, shards: u32) {
        assert_eq!(ids.len(), count as usize);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        let owned: HashSet<u64> = ids
            .iter()
            .map(|id| (id >> 22) % u64::from(shards))
            .collect();
        assert_eq!(
            owned.len(),
            shards as usize,
            "shards={shards} count={count}"
        );
        // Real-looking: created after 2016, before 2022.
        assert!(
            ids.iter()
                .all(|&id| (1_451_606_400_000..1_640_995_200_000).contains(&unix_ms_of(id)))
        );
    }
}
