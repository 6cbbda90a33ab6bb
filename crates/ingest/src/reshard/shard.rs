//! A shard's part in a reshard, kept out of the connection loop: what it does with a
//! dispatch in each state, the marks it leaves in KV, and the switch itself.

use std::collections::HashSet;

use relaycord_bus::{Dispatch, dedupe};
use twilight_gateway::Shard;

use super::history::{self, Scope};
use super::standby::{Standby, Standing};
use super::{Cut, Mark};
use crate::checkpoint::Checkpoint;
use crate::error::{IngestError, IngestErrorKind};
use crate::publish::Publisher;
use crate::queue::KvQueue;
use crate::shard::ShardContext;
use crate::store::SessionStore;
use crate::window::AckWindow;

/// Where a shard stands in the generations' lifecycle.
pub(crate) enum Generation {
    /// Publishes everything.
    Live,
    /// A new shard before the switch.
    Standby(Standby),
    /// A new shard after its switch, in the session the cut was made on: replayed events
    /// at or below the cut were published by the old generation. `mark_at`: the seq
    /// after which it may report itself aligned (a replica that resumed it mid-switch).
    Aligned { cut: Cut, mark_at: Option<u64> },
    /// An old shard finishing: drains and ends its session.
    Retiring,
}

/// What to do with one dispatch.
pub(crate) enum Sorted {
    Publish,
    Held,
    AlreadyPublished,
}

impl Generation {
    /// The highest seq the session record may hold.
    pub fn resume_point(&self, acked_seq: u64) -> u64 {
        match self {
            Self::Standby(standby) => standby.resume_point(acked_seq),
            _ => acked_seq,
        }
    }

    /// Whether reading must pause: too much held back.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Standby(standby) if standby.is_full())
    }

    /// READY: a new session. Returns how many held events it discards (the previous
    /// session's, which the old generation, still running, publishes).
    pub fn on_ready(&mut self, dispatch: &Dispatch<'_>) -> usize {
        match self {
            Self::Standby(standby) => {
                let discarded = standby.held();
                standby.on_ready(dispatch);
                return discarded;
            }
            // A new session after the switch: the cut was about the previous one.
            Self::Aligned { mark_at, .. } => {
                let at = dispatch.seq;
                let mark_at = mark_at.unwrap_or(at);
                *self = Self::Aligned {
                    cut: Cut::default(),
                    mark_at: Some(mark_at),
                };
            }
            Self::Live | Self::Retiring => {}
        }
        0
    }

    pub fn on_resumed(&mut self, seq: u64) {
        match self {
            Self::Standby(standby) => standby.on_resumed(seq),
            Self::Aligned { mark_at, .. } if mark_at.is_none() => *mark_at = Some(seq),
            _ => {}
        }
    }

    pub fn on_dispatch(&mut self, dispatch: &Dispatch<'_>, frame: &str, id: &str) -> Sorted {
        match self {
            Self::Standby(standby) => match standby.on_dispatch(dispatch, frame, id) {
                Standing::Publish => Sorted::Publish,
                Standing::Held => Sorted::Held,
            },
            Self::Aligned { cut, .. }
                if !dedupe::is_occurrence_key(id)
                    && dispatch.event_type != "GUILD_CREATE"
                    && cut.covers(dispatch.guild_id(), dispatch.seq) =>
            {
                Sorted::AlreadyPublished
            }
            _ => Sorted::Publish,
        }
    }
}

/// The shard's gateway session, as the switch needs it (the `Shard` itself is not `Sync`).
pub(crate) struct GatewaySession {
    pub session_id: Option<String>,
    pub resume_url: Option<String>,
}

impl GatewaySession {
    pub fn of(shard: &Shard<KvQueue>) -> Self {
        Self {
            session_id: shard.session().map(|s| s.id().to_owned()),
            resume_url: shard.resume_url().map(str::to_owned),
        }
    }
}

/// One shard's view of the reshard bucket.
pub(crate) struct Handoff<'a> {
    id: u32,
    ctx: &'a ShardContext,
}

impl<'a> Handoff<'a> {
    pub fn new(id: u32, ctx: &'a ShardContext) -> Self {
        Self { id, ctx }
    }

    async fn get(&self, mark: Mark) -> Result<Option<bytes::Bytes>, IngestError> {
        match &self.ctx.generations {
            Some(generations) => generations.get(mark, self.ctx.shard_count, self.id).await,
            None => Ok(None),
        }
    }

    async fn put(&self, mark: Mark, value: bytes::Bytes) -> Result<(), IngestError> {
        match &self.ctx.generations {
            Some(generations) => {
                generations
                    .mark(mark, self.ctx.shard_count, self.id, value)
                    .await
            }
            None => Ok(()),
        }
    }

    pub async fn is_stopped(&self) -> Result<bool, IngestError> {
        Ok(self.get(Mark::Stopped).await?.is_some())
    }

    pub async fn report_stopped(&self) -> Result<(), IngestError> {
        self.put(Mark::Stopped, bytes::Bytes::new()).await
    }

    /// The state a new shard starts in: live once aligned; after its cut (a replica died
    /// mid-switch) applying that cut to the replay; otherwise holding back.
    pub async fn standby_state(&self, resumed: Option<&str>) -> Result<Generation, IngestError> {
        if self.get(Mark::Aligned).await?.is_some() {
            return Ok(Generation::Live);
        }
        if let Some(raw) = self.get(Mark::Cut).await? {
            let cut: Cut = serde_json::from_slice(&raw).unwrap_or_default();
            let cut = if resumed == Some(cut.session_id.as_str()) {
                cut
            } else {
                Cut::default()
            };
            return Ok(Generation::Aligned { cut, mark_at: None });
        }
        Ok(Generation::Standby(Standby::default()))
    }

    /// Leaves the marks the state calls for: ready (standby), aligned (resumed after its
    /// cut, once the replay is on the bus).
    pub async fn progress(
        &self,
        generation: &mut Generation,
        acked_seq: u64,
    ) -> Result<(), IngestError> {
        match generation {
            Generation::Standby(standby) => {
                if !standby.ready_to_report(acked_seq) {
                    return Ok(());
                }
                self.put(Mark::Ready, bytes::Bytes::new()).await?;
                tracing::info!(
                    shard = self.id,
                    shard_count = self.ctx.shard_count,
                    "new-generation shard ready"
                );
            }
            Generation::Aligned {
                mark_at: Some(at), ..
            } if acked_seq >= *at => {
                self.put(Mark::Aligned, bytes::Bytes::new()).await?;
                *generation = Generation::Live;
            }
            _ => {}
        }
        Ok(())
    }

    /// The switch: reads what the old generation published, works out per guild where it
    /// stopped, records that cut, publishes the rest of what was held, waits for every
    /// ack, saves the position and reports the shard aligned. On an error nothing held is
    /// lost: the caller keeps the standby state and tries again.
    pub async fn switch_over(
        &self,
        standby: &mut Standby,
        gateway: GatewaySession,
        publisher: &mut Publisher,
        window: &mut AckWindow,
        checkpoint: &mut Checkpoint,
    ) -> Result<Cut, IngestError> {
        let ctx = self.ctx;
        let view = ctx.view.borrow().clone();
        let plan = view.plan.as_ref();
        let (Some(plan), Some(reshard)) = (plan, plan.and_then(|p| p.reshard.as_ref())) else {
            return Err(IngestError::new(
                IngestErrorKind::Bus,
                "no reshard in progress",
            ));
        };
        let session_id = gateway
            .session_id
            .ok_or_else(|| IngestError::new(IngestErrorKind::Bus, "no gateway session yet"))?;
        let token = dedupe::session_token(&session_id).into_owned();
        let scope = Scope {
            id: self.id,
            count: ctx.shard_count,
            old_count: plan.count,
            session_token: &token,
            exclude: &self.new_generation_sessions().await,
        };
        let published = history::read(&ctx.js, &ctx.subjects, reshard.start_seq, &scope).await?;
        let cut = standby.cut(&session_id, &published);
        self.put(Mark::Cut, cut.encode()).await?;
        let held = standby.take_held();
        ctx.metrics.reshard_held.sub(held.len() as i64);
        let (mut sent, mut skipped) = (0u64, 0u64);
        for event in held {
            while window.len() >= ctx.window {
                window.next().await;
            }
            let Ok(Some(dispatch)) = Dispatch::parse(&event.frame) else {
                window.push_done(event.seq);
                continue;
            };
            if cut.covers(dispatch.guild_id(), event.seq) {
                ctx.metrics.reshard_skipped.inc();
                skipped += 1;
                window.push_done(event.seq);
            } else {
                sent += 1;
                publisher
                    .publish(
                        &dispatch,
                        dedupe::gateway_key(&dispatch, Some(&session_id)),
                        window,
                    )
                    .await;
            }
        }
        while window.next().await.is_some() {}
        let _ = checkpoint
            .save(window.acked_seq(), gateway.resume_url.as_deref())
            .await;
        self.put(Mark::Aligned, bytes::Bytes::new()).await?;
        tracing::info!(
            shard = self.id,
            shard_count = ctx.shard_count,
            published = sent,
            already_published = skipped,
            guilds_cut = cut.through.len(),
            "switched over: held events published, shard live"
        );
        Ok(cut)
    }

    /// The sessions of this shard's siblings in the new generation, as they appear in keys:
    /// their guild-less events are not the old generation's.
    async fn new_generation_sessions(&self) -> HashSet<String> {
        let mut tokens = HashSet::new();
        for other in (0..self.ctx.shard_count).filter(|o| *o != self.id) {
            if let Ok((_, Some(record))) =
                SessionStore::load(self.ctx.sessions.clone(), other, self.ctx.shard_count).await
            {
                tokens.insert(dedupe::session_token(&record.session_id).into_owned());
            }
        }
        tokens
    }
}
