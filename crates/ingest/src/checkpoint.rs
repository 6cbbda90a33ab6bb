//! A shard's resume point in KV: the session it is on and the acked seq below which every
//! dispatch is on the bus (the [`crate::window::AckWindow`]'s, never twilight's).
//!
//! Kept apart from the connection loop because it is where ownership is decided: a save
//! that finds another process's write means the shard is no longer ours.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

use crate::error::IngestError;
use crate::stop::Stop;
use crate::store::{SaveError, SessionRecord, SessionStore};

/// How often the acked position is written to KV. Resuming from a slightly older seq
/// only replays events the bus already has (and dedupes), so this trades a KV write
/// per event for a second of replay.
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How often an unchanged position is written again. The sessions bucket forgets an entry
/// a day after its last write; a shard with no events for that long would otherwise find
/// its own record gone, take that for another owner's doing (fencing), stop and identify
/// again. Rewriting it keeps the record as alive as the session.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// Another process wrote this shard's record: it owns the shard now.
#[derive(Debug)]
pub(crate) struct Fenced;

/// The current session and what of it is recorded in KV.
pub(crate) struct Checkpoint {
    store: SessionStore,
    shard: u32,
    session_id: Option<String>,
    saved: Option<(String, u64)>,
    /// When the record was last written (or read, at the claim).
    saved_at: Instant,
    refresh: Duration,
}

impl Checkpoint {
    /// Claims shard `shard`'s record; returns the checkpoint and the session to resume, if any.
    pub async fn claim(
        sessions: kv::Store,
        shard: u32,
        shard_count: u32,
    ) -> Result<(Self, Option<SessionRecord>), IngestError> {
        let (store, record) = SessionStore::claim(sessions, shard, shard_count).await?;
        let checkpoint = Self {
            store,
            shard,
            session_id: record.as_ref().map(|r| r.session_id.clone()),
            saved: record.as_ref().map(|r| (r.session_id.clone(), r.seq)),
            saved_at: Instant::now(),
            refresh: REFRESH_INTERVAL,
        };
        Ok((checkpoint, record))
    }

    /// READY: acks from now on belong to this session.
    pub fn new_session(&mut self, session_id: Option<&str>) {
        self.session_id = session_id.map(str::to_owned);
    }

    /// Whether the current session is not in KV yet. Such a session is saved at once, not
    /// on the next tick: until its id is in KV, a crash leaves the next owner nothing to
    /// resume, and whatever Discord sent on it would be lost.
    pub fn is_unrecorded(&self) -> bool {
        let recorded = self.saved.as_ref().map(|(session, _)| session);
        self.session_id.is_some() && recorded != self.session_id.as_ref()
    }

    /// Saves the position, and marks the shard resumable once a record exists. A save
    /// that could not reach NATS is retried on the next call.
    pub async fn checkpoint(
        &mut self,
        acked_seq: u64,
        resume_url: Option<&str>,
        stop: &Stop,
    ) -> Result<(), Fenced> {
        if self.save(acked_seq, resume_url).await == Err(SaveError::Fenced) {
            tracing::warn!(
                shard = self.shard,
                "another process wrote this shard's session; stopping the shard"
            );
            return Err(Fenced);
        }
        if self.saved.is_some() {
            stop.set_resumable();
        }
        Ok(())
    }

    /// Writes the position when it moved.
    pub async fn save(
        &mut self,
        acked_seq: u64,
        resume_url: Option<&str>,
    ) -> Result<(), SaveError> {
        let Some(session_id) = self.session_id.clone() else {
            return Ok(());
        };
        let current = (session_id, acked_seq);
        if self.saved.as_ref() == Some(&current) && self.saved_at.elapsed() < self.refresh {
            return Ok(());
        }
        let record = SessionRecord {
            session_id: current.0.clone(),
            seq: current.1,
            resume_url: resume_url.map(str::to_owned),
        };
        match self.store.save(&record).await {
            Ok(()) => {
                self.saved = Some(current);
                self.saved_at = Instant::now();
                Ok(())
            }
            Err(SaveError::Unavailable) => {
                tracing::debug!(
                    shard = self.shard,
                    "session not saved (NATS unavailable); retrying"
                );
                Err(SaveError::Unavailable)
            }
            Err(SaveError::Fenced) => Err(SaveError::Fenced),
        }
    }
}

/// Whether a `resume_url` read back from the sessions bucket may receive the bot token.
///
/// Anyone who can write that bucket could otherwise point the next RESUME, token
/// included, at a host of their choosing. Accepted: the configured gateway's own host
/// (the simulator, a gateway proxy) and Discord's gateway domain `*.discord.gg`, over a
/// websocket scheme no weaker than the configured one's.
pub(crate) fn trusted_resume_url(resume_url: &str, gateway_url: &str) -> bool {
    let (Ok(resume), Ok(gateway)) = (
        reqwest::Url::parse(resume_url),
        reqwest::Url::parse(gateway_url),
    ) else {
        return false;
    };
    let scheme_ok = match resume.scheme() {
        "wss" => true,
        "ws" => gateway.scheme() == "ws",
        _ => false,
    };
    let host_ok = match (resume.host_str(), gateway.host_str()) {
        (Some(host), _) if host == "discord.gg" || host.ends_with(".discord.gg") => true,
        (Some(host), Some(configured)) => {
            host == configured && resume.port_or_known_default() == gateway.port_or_known_default()
        }
        _ => false,
    };
    scheme_ok && host_ok && resume.username().is_empty() && resume.password().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard with no events keeps its record alive past the bucket's max_age (a day in
    /// production, a second here), instead of finding it gone and fencing itself.
    #[tokio::test]
    async fn a_quiet_session_keeps_its_record() {
        let nats = relaycord_devkit::NatsServer::start().unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let kv = relaycord_bus::kv::ensure_bucket(&js, "QUIET_SESSIONS", Duration::from_secs(1), 1)
            .await
            .unwrap();
        let (mut checkpoint, none) = Checkpoint::claim(kv.clone(), 0, 1).await.unwrap();
        assert!(none.is_none());
        checkpoint.refresh = Duration::from_millis(300);
        checkpoint.new_session(Some("quiet"));
        let stop = Stop::default();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            checkpoint
                .checkpoint(7, None, &stop)
                .await
                .expect("never fenced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, record) = SessionStore::load(kv, 0, 1).await.unwrap();
        assert_eq!(
            record.map(|r| (r.session_id, r.seq)),
            Some(("quiet".into(), 7))
        );
    }

    #[test]
    fn only_the_configured_gateway_or_discord_may_resume() {
        let discord = "wss://gateway.discord.gg";
        assert!(trusted_resume_url(
            "wss://gateway-us-east1-b.discord.gg",
            discord
        ));
        assert!(trusted_resume_url(
            "wss://gateway.discord.gg/?v=10",
            discord
        ));
        assert!(!trusted_resume_url(
            "wss://evil.example/discord.gg",
            discord
        ));
        assert!(!trusted_resume_url(
            "wss://discord.gg.evil.example",
            discord
        ));
        assert!(
            !trusted_resume_url("ws://gateway.discord.gg", discord),
            "no downgrade"
        );
        assert!(!trusted_resume_url("wss://u:p@gateway.discord.gg", discord));
        assert!(!trusted_resume_url("not a url", discord));
        let sim = "ws://127.0.0.1:8990";
        assert!(trusted_resume_url("ws://127.0.0.1:8990", sim));
        assert!(
            !trusted_resume_url("ws://127.0.0.1:8991", sim),
            "another port"
        );
        assert!(!trusted_resume_url("ws://10.0.0.1:8990", sim));
    }
}
