//! Shared simulator state: one slot per shard (its session and live connection), the proof
//! log of every dispatch, identify limits and counters.
//!
//! Every change to a shard happens under that shard's lock, and a dispatch is appended to the
//! session log *and* queued on the live connection in the same critical section. That is what
//! makes resume exact: a dispatch is either in the log before a RESUME replays it, or queued
//! after the replay and the RESUMED that follows it, never lost in between.

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
use session::IdentifyLimits;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    shard: u32,
    session_id: Arc<str>,
    seq: u64,
    event_type: Box<str>,
    data: Box<str>,
    guild_id: Option<u64>,
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
    /// Indices into `world.guilds` per shard.
    guilds_by_shard: Vec<Vec<usize>>,
    slots: Box<[Mutex<Slot>]>,
    /// Shards whose connections get no HEARTBEAT_ACK ([`crate::Simulator::set_zombie`]).
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

impl Shared {
    pub fn new(config: SimConfig, addr: SocketAddr) -> Self {
        let shards = config.shards.max(1);
        let world = World::new(&snowflake::guild_ids(config.guilds, shards));
        let mut guilds_by_shard = vec![Vec::new(); shards as usize];
        for (index, guild) in world.guilds.iter().enumerate() {
            guilds_by_shard[shard_of(guild.id, shards) as usize].push(index);
        }
        let rest = DiscordRest::new(&config.token);
        Self {
            interactions: Interactions::new(rest.clone()),
            rest,
            limits: Mutex::new(IdentifyLimits::new(&config)),
            slots: (0..shards).map(|_| Mutex::default()).collect(),
            zombies: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            guilds_by_shard,
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

    pub fn shards(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn shard_of_guild(&self, guild_id: u64) -> u32 {
        shard_of(guild_id, self.shards())
    }

    pub fn gateway_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn slot(&self, shard: u32) -> Result<MutexGuard<'_, Slot>, SimError> {
        let slot = self
            .slots
            .get(shard as usize)
            .ok_or(SimError::NoSuchShard(shard))?;
        Ok(lock(slot))
    }

    /// Runs `f` on a shard's slot, then wakes waiters (the change may make something ready).
    fn change<R>(&self, shard: u32, f: impl FnOnce(&mut Slot) -> R) -> Result<R, SimError> {
        let result = f(&mut *self.slot(shard)?);
        self.changed.notify_waiters();
        Ok(result)
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

    /// Whether connections binding to `shard` now become zombies. Read under the shard's
    /// lock, so it cannot race with [`Self::set_zombie`].
    fn is_zombie(&self, shard: u32) -> bool {
        self.zombies
            .get(shard as usize)
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
            self.change(shard, |slot| {
                if let Some(conn) = slot.conn.take() {
                    conn.zombie.store(true, Relaxed);
                }
            })?;
        }
        Ok(())
    }

    /// Appends a dispatch to the shard's session (and the proof log) and queues it on the live
    /// connection, if any.
    fn append(
        &self,
        slot: &mut Slot,
        shard: u32,
        event_type: Box<str>,
        data: Box<str>,
        guild_id: Option<u64>,
    ) -> Result<u64, SimError> {
        let session = slot.session.as_mut().ok_or(SimError::NoSession(shard))?;
        let seq = session.log.len() as u64 + 1;
        let entry = Arc::new(Entry {
            shard,
            session_id: Arc::clone(&session.id),
            seq,
            event_type,
            data,
            guild_id,
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

    pub fn dispatch(
        &self,
        shard: u32,
        event_type: &str,
        data: String,
        guild_id: Option<u64>,
    ) -> Result<u64, SimError> {
        let mut slot = self.slot(shard)?;
        self.append(&mut slot, shard, event_type.into(), data.into(), guild_id)
    }

    /// Like [`Self::dispatch`], but hands `data` back if the shard has no session.
    pub fn dispatch_or_return(
        &self,
        shard: u32,
        event_type: &str,
        data: String,
        guild_id: u64,
    ) -> Result<u64, String> {
        let Ok(mut slot) = self.slot(shard) else {
            return Err(data);
        };
        if slot.session.is_none() {
            return Err(data);
        }
        let seq = self.append(
            &mut slot,
            shard,
            event_type.into(),
            data.into(),
            Some(guild_id),
        );
        Ok(seq.expect("the shard has a session"))
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
        let (event_type, data, guild_id) =
            (last.event_type.clone(), last.data.clone(), last.guild_id);
        self.append(&mut slot, shard, event_type, data, guild_id)
    }

    pub fn send_raw(&self, shard: u32, frame: String) -> Result<(), SimError> {
        let slot = self.slot(shard)?;
        let conn = slot.conn.as_ref().ok_or(SimError::NotConnected(shard))?;
        conn.send(frame);
        Ok(())
    }

    /// Takes the live connection off the shard (later dispatches only go to the session log)
    /// and hands it to `f`.
    fn detach_with(&self, shard: u32, f: impl FnOnce(ConnHandle)) {
        let _ = self.change(shard, |slot| slot.conn.take().map(f));
    }

    pub fn request_reconnect(&self, shard: u32) {
        self.detach_with(shard, |conn| {
            conn.send(protocol::reconnect());
            // Twilight closes by itself on op 7; closing too covers clients that wait.
            conn.close(close::UNKNOWN_ERROR);
        });
    }

    pub fn invalidate_session(&self, shard: u32, resumable: bool) {
        let _ = self.change(shard, |slot| {
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

    pub fn close(&self, shard: u32, code: u16) {
        let _ = self.change(shard, |slot| {
            if protocol::close_invalidates_session(code) {
                slot.session = None;
            }
            if let Some(conn) = slot.conn.take() {
                conn.close(code);
            }
        });
    }

    pub fn drop_connection(&self, shard: u32) {
        self.detach_with(shard, |conn| conn.kill.cancel());
    }

    /// Called by a connection that ends or stops serving its shard.
    pub fn detach(&self, bound: &Bound, conn_id: u64) {
        let _ = self.change(bound.shard, |slot| {
            if slot.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                slot.conn = None;
            }
        });
    }

    /// Forgets the session (the client closed with 1000/1001, which ends it on Discord).
    pub fn end_session(&self, bound: &Bound) {
        let _ = self.change(bound.shard, |slot| {
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
        self.slot(bound.shard)
            .is_ok_and(|slot| slot.conn.as_ref().is_some_and(|c| c.id == conn_id))
    }

    pub fn has_session(&self, shard: u32) -> bool {
        self.slot(shard).is_ok_and(|slot| slot.session.is_some())
    }

    /// Every shard has a session and a live connection.
    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|slot| {
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
                shard: e.shard,
                session_id: e.session_id.to_string(),
                seq: e.seq,
                event_type: e.event_type.to_string(),
                data: e.data.to_string(),
                guild_id: e.guild_id,
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
