//! Shard counts side by side, as during a reshard: one generation of slots per count, and
//! guild events routed to every session whose `(shard, count)` covers the guild.

use super::{Shared, Slot, lock, read, shard_of};
use crate::SimError;
use crate::stats::LiveSession;
use crate::world::World;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The largest shard count IDENTIFY accepts (4010 above it): each count allocates a slot per
/// shard, and a simulated bot never needs more.
pub(super) const MAX_SHARD_COUNT: u32 = 1 << 16;

/// A slot's address: which shard of which shard count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShardKey {
    pub count: u32,
    pub shard: u32,
}

/// The slots of one shard count.
#[derive(Debug)]
pub(crate) struct Generation {
    pub count: u32,
    pub slots: Box<[Mutex<Slot>]>,
    /// Indices into `world.guilds` per shard.
    pub guilds_by_shard: Vec<Vec<usize>>,
}

impl Generation {
    pub fn new(count: u32, world: &World) -> Self {
        let mut guilds_by_shard = vec![Vec::new(); count as usize];
        for (index, guild) in world.guilds.iter().enumerate() {
            guilds_by_shard[shard_of(guild.id, count) as usize].push(index);
        }
        Self {
            count,
            slots: (0..count).map(|_| Mutex::default()).collect(),
            guilds_by_shard,
        }
    }

    pub fn slot(&self, shard: u32) -> Result<MutexGuard<'_, Slot>, SimError> {
        let slot = self
            .slots
            .get(shard as usize)
            .ok_or(SimError::NoSuchShard(shard))?;
        Ok(lock(slot))
    }
}

impl Shared {
    pub(super) fn generation(&self, count: u32) -> Option<Arc<Generation>> {
        read(&self.generations).get(&count).cloned()
    }

    pub(super) fn generation_or_insert(&self, count: u32) -> Arc<Generation> {
        if let Some(generation) = self.generation(count) {
            return generation;
        }
        let mut generations = self
            .generations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            generations
                .entry(count)
                .or_insert_with(|| Arc::new(Generation::new(count, &self.world))),
        )
    }

    pub(super) fn all_generations(&self) -> Vec<Arc<Generation>> {
        read(&self.generations).values().cloned().collect()
    }

    pub fn recommended_shards(&self) -> u32 {
        self.recommended_shards.load(Relaxed)
    }

    pub fn set_recommended_shards(&self, shards: u32) {
        self.recommended_shards.store(shards.max(1), Relaxed);
    }

    pub fn max_guilds_per_shard(&self) -> u32 {
        self.max_guilds_per_shard.load(Relaxed)
    }

    pub fn set_max_guilds_per_shard(&self, guilds: u32) {
        self.max_guilds_per_shard.store(guilds.max(1), Relaxed);
    }

    /// The fewest shards IDENTIFY accepts: `ceil(guilds / max_guilds_per_shard)`.
    pub fn min_shards(&self) -> u32 {
        let guilds = u32::try_from(self.world.guilds.len()).unwrap_or(u32::MAX);
        guilds.div_ceil(self.max_guilds_per_shard()).max(1)
    }

    /// Appends one guild event to every session covering the guild, as Discord dispatches to
    /// each live session whose own shard count routes the guild to it. All of it happens under
    /// the route lock, so sessions sharing a guild log its events in one order. Returns the
    /// slots and seqs it went to: none when no session covers the guild.
    pub fn dispatch_guild(
        &self,
        event_type: &Arc<str>,
        data: &Arc<str>,
        guild_id: u64,
        event: Option<u64>,
    ) -> Vec<(ShardKey, u64)> {
        let _route = lock(&self.route);
        let generations = read(&self.generations);
        let mut sent = Vec::new();
        for generation in generations.values() {
            let key = ShardKey {
                count: generation.count,
                shard: shard_of(guild_id, generation.count),
            };
            let mut slot = lock(&generation.slots[key.shard as usize]);
            if slot.session.is_some() {
                let seq = self.append(
                    &mut slot,
                    key,
                    Arc::clone(event_type),
                    Arc::clone(data),
                    Some(guild_id),
                    event,
                );
                sent.push((key, seq.expect("the slot has a session")));
            }
        }
        sent
    }

    /// Whether some session would receive an event of the guild.
    pub fn covers(&self, guild_id: u64) -> bool {
        read(&self.generations).values().any(|generation| {
            let shard = shard_of(guild_id, generation.count);
            lock(&generation.slots[shard as usize]).session.is_some()
        })
    }

    /// Slots with a session, by shard count then shard.
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        let mut live = Vec::new();
        for generation in self.all_generations() {
            for (shard, slot) in (0..).zip(&generation.slots) {
                let slot = lock(slot);
                if let Some(session) = &slot.session {
                    live.push(LiveSession {
                        shard_count: generation.count,
                        shard,
                        session_id: session.id.to_string(),
                        connected: slot.conn.is_some(),
                    });
                }
            }
        }
        live
    }
}
