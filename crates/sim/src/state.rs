//! Shared simulator state: one slot (session and live connection) per shard of every shard
//! count a client identified with, the proof log of every dispatch, identify limits and
//! counters.
//!
//! Every change to a slot happens under that slot's lock, and a dispatch is appended to the
//! session log *and* queued on the live connection in the same critical section. That is what
//! makes resume exact: a dispatch is either in the log before a RESUME replays it, or queued
//! after the replay and the RESUMED that follows it, never lost in between.
//!
//! Lock order: `route`, then `generations`, then a slot, then the proof log.

mod generations;
mod session;

pub(crate) use session::{Bound, ResumeRefused};

use crate::SimError;
use crate::compression::Compression;
use crate::config::SimConfig;
use crate::discord_rest::DiscordRest;
use crate::interactions::Interactions;
use crate::payloads::Uniques;
use crate::protocol::{self, close};
use crate::snowflake;
use crate::stats::{Counters, SentDispatch, SimStats};
use crate::world::World;
use generations::{Generation, ShardKey};
use session::IdentifyLimits;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::SystemTime;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What the shard side asks a connection task to write.
#[derive(Debug)]
pub(crate) enum Outbound {
    Frame(String),
    Close(u16),
}

/// A live connection, as the shard it serves sees it.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// Cancelled to drop the TCP connection without a close frame.
    pub kill: CancellationToken,
    /// Set when the connection became a zombie: it no longer answers heartbeats, and it
    /// is off its shard, so nothing reaches it any more.
    pub zombie: Arc<AtomicBool>,
}

impl ConnHandle {
    // Send errors mean the connection task has ended; the session log still has everything,
    // so there is nothing to do about them.
    pub fn send(&self, frame: String) {
        let _ = self.tx.send(Outbound::Frame(frame));
    }

    pub fn close(&self, code: u16) {
        let _ = self.tx.send(Outbound::Close(code));
    }
}

#[derive(Debug)]
struct Entry {
    key: ShardKey,
    session_id: Arc<str>,
    seq: u64,
    // Shared: one guild event goes to every session covering the guild.
    event_type: Arc<str>,
    data: Arc<str>,
    guild_id: Option<u64>,
    /// The generator's event number.
    event: Option<u64>,
    created_at: SystemTime,
}

impl Entry {
    fn frame(&self) -> String {
        protocol::dispatch(&self.event_type, self.seq, &self.data)
    }
}

#[derive(Debug)]
struct Session {
    id: Arc<str>,
    /// Every dispatch of the session; `log[i].seq == i + 1`.
    log: Vec<Arc<Entry>>,
}

#[derive(Debug, Default)]
struct Slot {
    session: Option<Session>,
    conn: Option<ConnHandle>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    pub addr: SocketAddr,
    pub world: World,
    pub uniques: Uniques,
    pub shutdown: CancellationToken,
    /// The REST sides beside the gateway: message posting, and interactions.
    pub rest: DiscordRest,
    pub interactions: Interactions,
    /// The generation of `config.shards`, which the shard-numbered control methods act on.
    initial: Arc<Generation>,
    /// Every shard count a client identified with (and the initial one), never removed.
    generations: RwLock<BTreeMap<u32, Arc<Generation>>>,
    /// Held while one guild event is appended to every session covering the guild, so two
    /// sessions sharing a guild see its events in the same order.
    route: Mutex<()>,
    /// What `/gateway/bot` reports as `shards`.
    recommended_shards: AtomicU32,
    max_guilds_per_shard: AtomicU32,
    /// Initial-count shards whose connections get no HEARTBEAT_ACK
    /// ([`crate::Simulator::set_zombie`]).
    zombies: Box<[AtomicBool]>,
    /// The proof log. Lock order: a slot, then this.
    log: Mutex<Vec<Arc<Entry>>>,
    limits: Mutex<IdentifyLimits>,
    counters: Counters,
    /// Woken on every change of a session or live connection.
    changed: Notify,
    next_conn_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves the state consistent enough for a simulator.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: SimConfig, addr: SocketAddr) -> Self {
        let shards = config.shards.max(1);
        let world = World::new(&snowflake::guild_ids(config.guilds, shards));
        let initial = Arc::new(Generation::new(shards, &world));
        let rest = DiscordRest::new(&config.token);
        Self {
            interactions: Interactions::new(rest.clone()),
            rest,
            limits: Mutex::new(IdentifyLimits::new(&config)),
            generations: RwLock::new(BTreeMap::from([(shards, Arc::clone(&initial))])),
            initial,
            route: Mutex::default(),
            recommended_shards: AtomicU32::new(shards),
            max_guilds_per_shard: AtomicU32::new(config.max_guilds_per_shard.max(1)),
            zombies: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            world,
            uniques: Uniques::default(),
            config,
            addr,
            shutdown: CancellationToken::new(),
            log: Mutex::default(),
            counters: Counters::default(),
            changed: Notify::new(),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// The initial shard count, `config.shards`.
    pub fn shards(&self) -> u32 {
        self.initial.count
    }

    pub fn shard_of_guild(&self, guild_id: u64) -> u32 {
        shard_of(guild_id, self.shards())
    }

    pub fn gateway_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// A slot of the initial shard count.
    fn slot(&self, shard: u32) -> Result<MutexGuard<'_, Slot>, SimError> {
        self.initial.slot(shard)
    }

    /// Runs `f` on a slot of any shard count.
    fn with_slot<R>(&self, key: ShardKey, f: impl FnOnce(&mut Slot) -> R) -> Result<R, SimError> {
        let generation = self
            .generation(key.count)
            .ok_or(SimError::NoSuchShard(key.shard))?;
        let mut slot = generation.slot(key.shard)?;
        Ok(f(&mut slot))
    }

    /// Runs `f` on a slot, then wakes waiters (the change may make something ready).
    fn change<R>(&self, key: ShardKey, f: impl FnOnce(&mut Slot) -> R) -> Result<R, SimError> {
        let result = self.with_slot(key, f);
        self.changed.notify_waiters();
        result
    }

    fn initial_key(&self, shard: u32) -> ShardKey {
        ShardKey {
            count: self.initial.count,
            shard,
        }
    }

    /// Discord accepts the token with or without the `Bot ` prefix in IDENTIFY/RESUME.
    fn token_matches(&self, token: &str) -> bool {
        token.strip_prefix("Bot ").unwrap_or(token) == self.config.token
    }

    /// Registers a new websocket connection; the receiver feeds its writer.
    pub fn new_connection(
        &self,
        compression: Compression,
    ) -> (ConnHandle, mpsc::UnboundedReceiver<Outbound>) {
        self.counters.count_connection(compression);
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ConnHandle {
            id: self.next_conn_id.fetch_add(1, Relaxed),
            tx,
            // A child of the shutdown token, so stopping the simulator drops every connection.
            kill: self.shutdown.child_token(),
            zombie: Arc::default(),
        };
        (handle, rx)
    }

    /// Counts a heartbeat; false when it must go unanswered (a zombie connection).
    pub fn heartbeat(&self, conn: &ConnHandle) -> bool {
        self.counters.heartbeats.fetch_add(1, Relaxed);
        let zombie = conn.zombie.load(Relaxed);
        if zombie {
            self.counters.heartbeats_unacked.fetch_add(1, Relaxed);
        }
        !zombie
    }

    /// Whether connections binding to the slot now become zombies. Read under the slot's
    /// lock, so it cannot race with [`Self::set_zombie`].
    fn is_zombie(&self, key: ShardKey) -> bool {
        key.count == self.initial.count
            && self
                .zombies
                .get(key.shard as usize)
                .is_some_and(|z| z.load(Relaxed))
    }

    /// Turns the shard's live connection (and those binding to it until cleared) into a
    /// zombie: taken off the shard, so dispatches wait in the session log, and silent.
    pub fn set_zombie(&self, shard: u32, zombie: bool) -> Result<(), SimError> {
        self.zombies
            .get(shard as usize)
            .ok_or(SimError::NoSuchShard(shard))?
            .store(zombie, Relaxed);
        if zombie {
            self.change(self.initial_key(shard), |slot| {
                if let Some(conn) = slot.conn.take() {
                    conn.zombie.store(true, Relaxed);
                }
            })?;
        }
        Ok(())
    }

    /// Appends a dispatch to the slot's session (and the proof log) and queues it on the live
    /// connection, if any.
    fn append(
        &self,
        slot: &mut Slot,
        key: ShardKey,
        event_type: Arc<str>,
        data: Arc<str>,
        guild_id: Option<u64>,
        event: Option<u64>,
    ) -> Result<u64, SimError> {
        let session = slot
            .session
            .as_mut()
            .ok_or(SimError::NoSession(key.shard))?;
        let seq = session.log.len() as u64 + 1;
        let entry = Arc::new(Entry {
            key,
            session_id: Arc::clone(&session.id),
            seq,
            event_type,
            data,
            guild_id,
            event,
            created_at: SystemTime::now(),
        });
        if let Some(conn) = &slot.conn {
            conn.send(entry.frame());
        }
        session.log.push(Arc::clone(&entry));
        lock(&self.log).push(entry);
        self.counters.dispatches.fetch_add(1, Relaxed);
        Ok(seq)
    }

    /// One dispatch on a slot of the initial shard count.
    pub fn dispatch(
        &self,
        shard: u32,
        event_type: &str,
        data: String,
        guild_id: Option<u64>,
    ) -> Result<u64, SimError> {
        let mut slot = self.slot(shard)?;
        let key = self.initial_key(shard);
        self.append(
            &mut slot,
            key,
            event_type.into(),
            data.into(),
            guild_id,
            None,
        )
    }

    pub fn duplicate_last(&self, shard: u32) -> Result<u64, SimError> {
        let mut slot = self.slot(shard)?;
        let session = slot.session.as_ref().ok_or(SimError::NoSession(shard))?;
        // READY/RESUMED change a client's session state; duplicating them is not what Discord does.
        let last = session
            .log
            .iter()
            .rev()
            .find(|e| !matches!(&*e.event_type, "READY" | "RESUMED"))
            .ok_or(SimError::NothingToDuplicate(shard))?;
        // Same event number too: a duplicate is the same event, sent twice.
        let (event_type, data, guild_id, event) = (
            Arc::clone(&last.event_type),
            Arc::clone(&last.data),
            last.guild_id,
            last.event,
        );
        let key = self.initial_key(shard);
        self.append(&mut slot, key, event_type, data, guild_id, event)
    }

    pub fn send_raw(&self, shard: u32, frame: String) -> Result<(), SimError> {
        let slot = self.slot(shard)?;
        let conn = slot.conn.as_ref().ok_or(SimError::NotConnected(shard))?;
        conn.send(frame);
        Ok(())
    }

    /// Takes the live connection off the slot (later dispatches only go to the session log)
    /// and hands it to `f`.
    fn detach_with(&self, key: ShardKey, f: impl FnOnce(ConnHandle)) {
        let _ = self.change(key, |slot| slot.conn.take().map(f));
    }

    pub fn request_reconnect(&self, count: u32, shard: u32) {
        self.detach_with(ShardKey { count, shard }, |conn| {
            conn.send(protocol::reconnect());
            // Twilight closes by itself on op 7; closing too covers clients that wait.
            conn.close(close::UNKNOWN_ERROR);
        });
    }

    pub fn invalidate_session(&self, shard: u32, resumable: bool) {
        let _ = self.change(self.initial_key(shard), |slot| {
            if !resumable {
                slot.session = None;
            }
            // The connection stays open: the client decides whether to RESUME/IDENTIFY on
            // it or reconnect, as with Discord.
            if let Some(conn) = slot.conn.take() {
                conn.send(protocol::invalid_session(resumable));
            }
        });
    }

    pub fn close(&self, count: u32, shard: u32, code: u16) {
        let _ = self.change(ShardKey { count, shard }, |slot| {
            if protocol::close_invalidates_session(code) {
                slot.session = None;
            }
            if let Some(conn) = slot.conn.take() {
                conn.close(code);
            }
        });
    }

    pub fn drop_connection(&self, count: u32, shard: u32) {
        self.detach_with(ShardKey { count, shard }, |conn| conn.kill.cancel());
    }

    /// Called by a connection that ends or stops serving its slot.
    pub fn detach(&self, bound: &Bound, conn_id: u64) {
        let _ = self.change(bound.key, |slot| {
            if slot.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                slot.conn = None;
            }
        });
    }

    /// Forgets the session (the client closed with 1000/1001, which ends it on Discord).
    pub fn end_session(&self, bound: &Bound) {
        let _ = self.change(bound.key, |slot| {
            if slot
                .session
                .as_ref()
                .is_some_and(|s| s.id == bound.session_id)
            {
                slot.session = None;
            }
        });
    }

    pub fn is_attached(&self, bound: &Bound, conn_id: u64) -> bool {
        self.with_slot(bound.key, |slot| {
            slot.conn.as_ref().is_some_and(|c| c.id == conn_id)
        })
        .unwrap_or(false)
    }

    /// Every shard of the initial count has a session and a live connection.
    pub fn all_ready(&self) -> bool {
        self.initial.slots.iter().all(|slot| {
            let slot = lock(slot);
            slot.session.is_some() && slot.conn.is_some()
        })
    }

    /// Resolves once `condition` holds (checked after every session/connection change).
    pub async fn wait_until(&self, condition: impl Fn(&Self) -> bool) {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a change between the check and the await is seen.
            notified.as_mut().enable();
            if condition(self) {
                return;
            }
            notified.await;
        }
    }

    pub fn sent(&self) -> Vec<SentDispatch> {
        lock(&self.log)
            .iter()
            .map(|e| SentDispatch {
                shard: e.key.shard,
                shard_count: e.key.count,
                session_id: e.session_id.to_string(),
                seq: e.seq,
                event_type: e.event_type.to_string(),
                data: e.data.to_string(),
                guild_id: e.guild_id,
                event: e.event,
                created_at: e.created_at,
            })
            .collect()
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot(self.session_start_limit().0)
    }
}

/// Discord's routing rule: `(guild_id >> 22) % shards`.
pub(crate) fn shard_of(guild_id: u64, shards: u32) -> u32 {
    ((guild_id >> 22) % u64::from(shards.max(1))) as u32
}
