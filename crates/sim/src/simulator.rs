//! The public handle: start/stop, fault injection, and the proof log.

use crate::SimError;
use crate::config::SimConfig;
use crate::generator::{self, GenerateSpec, GeneratorHandle};
use crate::rest;
use crate::state::Shared;
use crate::stats::{LiveSession, SentDispatch, SimStats};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::DropGuard;

/// A running simulated Discord (REST and gateway on one port).
///
/// Cheap to clone. The server stops when the last clone is dropped or on [`Simulator::shutdown`].
///
/// Methods taking a bare `shard` act on that shard of the initial count (`config.shards`);
/// the `_in` variants take the shard count too, for sessions of a reshard.
#[derive(Clone, Debug)]
pub struct Simulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    _stop_on_drop: DropGuard,
}

impl Simulator {
    /// Starts serving on `listener` in a spawned task (REST + gateway on the same port).
    ///
    /// # Errors
    ///
    /// If the listener has no local address, or `config.shards` is 0.
    pub async fn start(listener: TcpListener, config: SimConfig) -> io::Result<Self> {
        if config.shards == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SimConfig::shards must be at least 1",
            ));
        }
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, connectable(local_addr)));
        shared.rest.attach_gateway(&shared);
        let app = rest::router(Arc::clone(&shared));
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "simulator server failed");
            }
        });
        tracing::debug!(%local_addr, "discord simulator listening");
        Ok(Self {
            inner: Arc::new(Inner {
                _stop_on_drop: shared.shutdown.clone().drop_guard(),
                shared,
                local_addr,
            }),
        })
    }

    /// Serves until `shutdown` resolves (for the `relaycord sim` CLI).
    ///
    /// # Errors
    ///
    /// As [`Simulator::start`].
    pub async fn run(
        listener: TcpListener,
        config: SimConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let sim = Self::start(listener, config).await?;
        tracing::info!(
            api = %sim.api_base(),
            gateway = %sim.gateway_url(),
            shards = sim.config().shards,
            "discord simulator running"
        );
        shutdown.await;
        sim.shutdown();
        Ok(())
    }

    /// Stops serving and drops every gateway connection (also done when the last handle drops).
    pub fn shutdown(&self) {
        self.shared().shutdown.cancel();
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// `http://127.0.0.1:PORT/api` (REST base, without version).
    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.shared().addr)
    }

    /// `ws://127.0.0.1:PORT`, without a trailing slash: clients append `/?v=10&encoding=json`.
    /// Also sent as READY's `resume_gateway_url`.
    pub fn gateway_url(&self) -> String {
        self.shared().gateway_url()
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared().config
    }

    /// `(guild_id >> 22) % shards`, for the initial shard count `config.shards`.
    pub fn shard_of_guild(&self, guild_id: u64) -> u32 {
        self.shared().shard_of_guild(guild_id)
    }

    /// The shard count `/gateway/bot` recommends: `config.shards` until changed.
    pub fn recommended_shards(&self) -> u32 {
        self.shared().recommended_shards()
    }

    /// Changes what `/gateway/bot` recommends (at least 1), as Discord does when a bot grows.
    /// Sessions already running keep their count; IDENTIFY still accepts any count from
    /// [`Simulator::min_shards`] up.
    pub fn set_recommended_shards(&self, shards: u32) {
        self.shared().set_recommended_shards(shards);
    }

    /// Guilds one shard may hold (`config.max_guilds_per_shard` until changed).
    pub fn max_guilds_per_shard(&self) -> u32 {
        self.shared().max_guilds_per_shard()
    }

    /// Changes the guilds one shard may hold (at least 1), so that a count that was enough
    /// becomes too small: later IDENTIFYs with fewer than [`Simulator::min_shards`] shards are
    /// closed with 4011. Running sessions are left alone and may still RESUME.
    pub fn set_max_guilds_per_shard(&self, guilds: u32) {
        self.shared().set_max_guilds_per_shard(guilds);
    }

    /// The fewest shards IDENTIFY accepts: `ceil(guilds / max_guilds_per_shard)`, at least 1.
    pub fn min_shards(&self) -> u32 {
        self.shared().min_shards()
    }

    /// Every slot that has a session, of every shard count, connected or not (a session
    /// without a connection still logs its guilds' events for a RESUME). Sorted by shard
    /// count, then shard.
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        self.shared().live_sessions()
    }

    /// The simulated guilds' ids (deterministic for a given config).
    pub fn guild_ids(&self) -> Vec<u64> {
        self.shared().world.guilds.iter().map(|g| g.id).collect()
    }

    /// Waits until every shard of the initial count has an identified session with a live
    /// connection.
    ///
    /// # Errors
    ///
    /// [`SimError::Timeout`] if that does not happen within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), SimError> {
        tokio::time::timeout(timeout, self.shared().wait_until(Shared::all_ready))
            .await
            .map_err(|_| SimError::Timeout(timeout))
    }

    /// Starts the event generator in a spawned task. It first waits until all shards of the
    /// initial count are ready. Each event goes to every session covering its guild, whatever
    /// their shard counts, in the same order for all of them; an event whose guild no session
    /// covers waits for one.
    pub fn generate(&self, spec: GenerateSpec) -> GeneratorHandle {
        generator::spawn(Arc::clone(&self.inner.shared), spec)
    }

    /// Injects one dispatch on `shard`: appended to the shard's session log (and the proof log)
    /// and sent if the shard is connected, else delivered by the next RESUME. The `guild_id`
    /// recorded in the proof log is read from `d`; routing is the caller's choice. Returns the seq.
    ///
    /// # Errors
    ///
    /// [`SimError::NoSuchShard`], or [`SimError::NoSession`] if the shard never identified or
    /// its session was invalidated.
    pub fn dispatch(&self, shard: u32, event_type: &str, d: &RawValue) -> Result<u64, SimError> {
        self.shared()
            .dispatch(shard, event_type, d.get().to_owned(), guild_id_of(d))
    }

    /// Injects one guild dispatch on every session covering `guild_id`, of every shard count,
    /// routed as generated events are (and ordered with them). Logged with `event: None`: it
    /// is scripted, not generated. Returns `(shard_count, shard, seq)` per session reached.
    ///
    /// # Errors
    ///
    /// [`SimError::NotCovered`] if no session covers the guild (nothing is sent).
    pub fn dispatch_guild(
        &self,
        event_type: &str,
        d: &RawValue,
        guild_id: u64,
    ) -> Result<Vec<(u32, u32, u64)>, SimError> {
        let sent =
            self.shared()
                .dispatch_guild(&event_type.into(), &d.get().into(), guild_id, None);
        if sent.is_empty() {
            return Err(SimError::NotCovered(guild_id));
        }
        Ok(sent
            .into_iter()
            .map(|(key, seq)| (key.count, key.shard, seq))
            .collect())
    }

    /// Sends an arbitrary text frame on the shard's live connection (malformed-input tests).
    /// Not logged as a dispatch.
    ///
    /// # Errors
    ///
    /// [`SimError::NoSuchShard`], or [`SimError::NotConnected`] without a live connection.
    pub fn send_raw(&self, shard: u32, frame: String) -> Result<(), SimError> {
        self.shared().send_raw(shard, frame)
    }

    /// Sends the shard's last dispatch again, same payload, new seq (Discord sometimes
    /// duplicates dispatches). READY and RESUMED are never duplicated.
    ///
    /// # Errors
    ///
    /// [`SimError::NoSuchShard`], [`SimError::NoSession`], or [`SimError::NothingToDuplicate`].
    pub fn duplicate_last(&self, shard: u32) -> Result<u64, SimError> {
        self.shared().duplicate_last(shard)
    }

    /// Sends RECONNECT (op 7) and closes with 4000; the session stays resumable.
    pub fn request_reconnect(&self, shard: u32) {
        self.shared()
            .request_reconnect(self.shared().shards(), shard);
    }

    /// [`Simulator::request_reconnect`] for a shard of any shard count.
    pub fn request_reconnect_in(&self, shard_count: u32, shard: u32) {
        self.shared().request_reconnect(shard_count, shard);
    }

    /// Sends INVALID_SESSION (op 9) with `d = resumable`; if not resumable the session is
    /// discarded. The connection stays open for the client to act on.
    pub fn invalidate_session(&self, shard: u32, resumable: bool) {
        self.shared().invalidate_session(shard, resumable);
    }

    /// Closes the shard's connection with `code`. The session is discarded for codes after
    /// which Discord requires a new session or forbids reconnecting (4004, 4007, 4009–4014)
    /// and kept resumable otherwise.
    pub fn close(&self, shard: u32, code: u16) {
        self.shared().close(self.shared().shards(), shard, code);
    }

    /// [`Simulator::close`] for a shard of any shard count.
    pub fn close_in(&self, shard_count: u32, shard: u32, code: u16) {
        self.shared().close(shard_count, shard, code);
    }

    /// Makes the shard's connection a zombie (`true`), as a half-dead TCP connection would
    /// be: it stays open, but nothing reaches the client any more (no HEARTBEAT_ACK, no
    /// dispatches: they wait in the session log) and the simulator does not close it. The
    /// client has to notice the missing ACKs, reconnect and RESUME. Connections binding to
    /// the shard while it is a zombie become zombies too, until `set_zombie(shard, false)`;
    /// connections already dead stay dead. `stats().heartbeats_unacked` counts the ACKs
    /// withheld.
    ///
    /// # Errors
    ///
    /// [`SimError::NoSuchShard`].
    pub fn set_zombie(&self, shard: u32, zombie: bool) -> Result<(), SimError> {
        self.shared().set_zombie(shard, zombie)
    }

    /// Drops the shard's TCP connection without a close frame; the session stays resumable.
    pub fn drop_connection(&self, shard: u32) {
        self.shared().drop_connection(self.shared().shards(), shard);
    }

    /// [`Simulator::drop_connection`] for a shard of any shard count.
    pub fn drop_connection_in(&self, shard_count: u32, shard: u32) {
        self.shared().drop_connection(shard_count, shard);
    }

    /// Every dispatch created, in order per session: the proof log. A guild event covered by
    /// sessions of several shard counts appears once per session, with the same `event`.
    pub fn sent(&self) -> Vec<SentDispatch> {
        self.shared().sent()
    }

    pub fn stats(&self) -> SimStats {
        self.shared().stats()
    }
}

/// A listener on 0.0.0.0/[::] is reached through loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `d.guild_id`, as Discord sends it (a string) or as a number.
fn guild_id_of(d: &RawValue) -> Option<u64> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Str(String),
        Num(u64),
    }
    #[derive(Deserialize)]
    struct WithGuild {
        guild_id: Option<Id>,
    }
    match serde_json::from_str::<WithGuild>(d.get()).ok()?.guild_id? {
        Id::Str(id) => id.parse().ok(),
        Id::Num(id) => Some(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guild_id_is_read_from_d() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(
            guild_id_of(&raw(r#"{"guild_id":"81384788765712384"}"#)),
            Some(81384788765712384)
        );
        assert_eq!(guild_id_of(&raw(r#"{"guild_id":42,"x":[1]}"#)), Some(42));
        assert_eq!(guild_id_of(&raw(r#"{"channel_id":"1"}"#)), None);
        assert_eq!(guild_id_of(&raw("[1,2]")), None);
        assert_eq!(guild_id_of(&raw("null")), None);
    }
}
