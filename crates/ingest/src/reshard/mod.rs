//! Resharding without a gap: a new generation of shards runs beside the old one.
//!
//! The plan lives in one KV entry (`plan`) that every replica reads and changes only by
//! compare-and-set, so any replica can move a reshard on and a replica killed in the
//! middle leaves nothing half-decided:
//!
//! 1. **overlap** — the new generation (`to` shards, leases `s.<to>.<id>`) identifies
//!    through the shared identify queue while the old one keeps publishing. A new shard
//!    holds its events back ([`standby`]) and reports `ready.<to>.<id>` once READY and
//!    every guild's GUILD_CREATE are on the bus.
//! 2. **switching** — once every new shard is ready, each old shard stops reading, drains
//!    its publishes, ends its session (close 1000) and reports `stopped.<count>.<id>`.
//!    Once every old shard has, each new shard reads what the old generation published
//!    since the reshard began, finds per guild where it stopped ([`align`]), records that
//!    cut (`cut.<to>.<id>`), publishes the rest of what it held, and reports
//!    `aligned.<to>.<id>`.
//! 3. **done** — once every new shard is aligned, the plan's count becomes `to`.
//!
//! A replica dying at any point only delays a step: its leases expire, another replica
//! resumes its shards' sessions and redoes what the KV entries say is not done yet.

pub(crate) mod align;
pub(crate) mod history;
pub(crate) mod shard;
pub(crate) mod standby;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{IngestError, IngestErrorKind};

/// The generation plan: the live shard count and the reshard in progress, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The generation that is live (the old one during a reshard).
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard: Option<Reshard>,
}

/// A reshard in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshard {
    /// The new generation's shard count.
    pub to: u32,
    pub phase: Phase,
    /// The gateway stream's last sequence before the new generation identified: what the
    /// old generation published from here on is compared at the switch.
    pub start_seq: u64,
    /// Unix milliseconds.
    pub started_at: u64,
    /// `command`, `recommended` (Discord's `/gateway/bot`) or `close 4011`.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Overlap,
    Switching,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overlap => "overlap",
            Self::Switching => "switching",
        }
    }
}

impl Plan {
    /// Every shard count that should be running now.
    pub fn generations(&self) -> Vec<u32> {
        let mut counts = vec![self.count];
        counts.extend(self.reshard.as_ref().map(|r| r.to));
        counts
    }
}

/// Per-shard progress of a reshard, as KV keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// A new shard is READY with every guild's GUILD_CREATE on the bus.
    Ready,
    /// An old shard has drained and ended its session.
    Stopped,
    /// A new shard has published what it held back and is live.
    Aligned,
    /// A new shard's per-guild cut (JSON), written before it publishes what it held.
    Cut,
}

impl Mark {
    fn prefix(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Stopped => "stopped",
            Self::Aligned => "aligned",
            Self::Cut => "cut",
        }
    }

    pub fn key(self, count: u32, id: u32) -> String {
        format!("{}.{count}.{id}", self.prefix())
    }
}

const PLAN_KEY: &str = "plan";

/// Where one new shard's held events end per guild: events of the guild with a seq at or
/// below the cut were published by the old generation. Kept so that a replica resuming
/// the shard after a crash mid-publish skips the same ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cut {
    pub session_id: String,
    /// Guild id (or `none`) → the last seq of that guild the old generation published.
    pub through: BTreeMap<String, u64>,
}

/// The reshard bucket: the plan and every shard's marks. No expiry: a plan must outlive
/// any outage.
#[derive(Clone)]
pub struct Generations {
    kv: kv::Store,
}

fn bus_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> IngestError {
    IngestError::with_source(IngestErrorKind::Bus, what.to_owned(), e)
}

impl Generations {
    pub async fn ensure(
        js: &jetstream::Context,
        subjects: &relaycord_bus::Subjects,
        replicas: usize,
    ) -> Result<Self, IngestError> {
        let name = format!(
            "{}_GENERATIONS",
            relaycord_bus::streams::stream_stem(subjects)
        );
        let kv = relaycord_bus::kv::ensure_bucket(js, &name, Duration::ZERO, replicas)
            .await
            .map_err(|e| bus_error("cannot set up the generations bucket", e))?;
        Ok(Self { kv })
    }

    /// The plan and its revision; `None` before any ingest has run.
    pub async fn plan(&self) -> Result<Option<(Plan, u64)>, IngestError> {
        let entry = self
            .kv
            .entry(PLAN_KEY)
            .await
            .map_err(|e| bus_error("cannot read the generation plan", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let plan = serde_json::from_slice(&entry.value).map_err(|e| {
            IngestError::with_source(
                IngestErrorKind::Bus,
                "the generation plan in KV is unreadable",
                e,
            )
        })?;
        Ok(Some((plan, entry.revision)))
    }

    /// The plan, created with `count` shards if there is none yet.
    pub async fn plan_or_init(&self, count: u32) -> Result<(Plan, u64), IngestError> {
        loop {
            if let Some(found) = self.plan().await? {
                return Ok(found);
            }
            let plan = Plan {
                count,
                reshard: None,
            };
            match self.kv.create(PLAN_KEY, encode(&plan)).await {
                Ok(revision) => return Ok((plan, revision)),
                // Another replica created it first: read theirs.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(bus_error("cannot create the generation plan", e)),
            }
        }
    }

    /// Replaces the plan at `revision`; `Ok(false)` if someone else changed it first.
    pub async fn replace(&self, plan: &Plan, revision: u64) -> Result<bool, IngestError> {
        match self.kv.update(PLAN_KEY, encode(plan), revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(bus_error("cannot update the generation plan", e)),
        }
    }

    pub(crate) async fn mark(
        &self,
        mark: Mark,
        count: u32,
        id: u32,
        value: Bytes,
    ) -> Result<(), IngestError> {
        self.kv
            .put(mark.key(count, id), value)
            .await
            .map(drop)
            .map_err(|e| bus_error("cannot record reshard progress", e))
    }

    pub(crate) async fn get(
        &self,
        mark: Mark,
        count: u32,
        id: u32,
    ) -> Result<Option<Bytes>, IngestError> {
        self.kv
            .get(mark.key(count, id))
            .await
            .map_err(|e| bus_error("cannot read reshard progress", e))
    }

    /// The shard ids of `count` that carry `mark`.
    pub(crate) async fn marked(&self, mark: Mark, count: u32) -> Result<Vec<u32>, IngestError> {
        let prefix = format!("{}.{count}.", mark.prefix());
        let keys = relaycord_bus::kv::list_keys(&self.kv, Duration::from_secs(5))
            .await
            .ok_or_else(|| {
                IngestError::new(IngestErrorKind::Bus, "cannot list reshard progress")
            })?;
        let mut ids: Vec<u32> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Forgets every mark of `count`'s shards (a finished or abandoned generation).
    pub(crate) async fn clear(&self, count: u32) -> Result<(), IngestError> {
        for mark in [Mark::Ready, Mark::Stopped, Mark::Aligned, Mark::Cut] {
            for id in self.marked(mark, count).await? {
                let _ = self.kv.purge(mark.key(count, id)).await;
            }
        }
        Ok(())
    }
}

fn encode(plan: &Plan) -> Bytes {
    Bytes::from(serde_json::to_vec(plan).expect("a plan serializes"))
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a reshard was not started.
#[derive(Debug, thiserror::Error)]
pub enum RefusedReshard {
    #[error(
        "a reshard to {to} shards is already in progress ({phase}); wait for it to finish (`relaycord reshard status`)"
    )]
    InProgress { to: u32, phase: &'static str },
    #[error("the bot already runs {0} shards")]
    Unchanged(u32),
    #[error(
        "{needed} identifies are needed but Discord allows only {remaining} more until its limit resets in {reset_after:?}; retry after the reset"
    )]
    Budget {
        needed: u32,
        remaining: u32,
        reset_after: Duration,
    },
    #[error("the shard count must be at least 1")]
    Zero,
    #[error("no reshard is in progress")]
    NotInProgress,
    #[error(
        "the reshard is switching (old shards are ending their sessions): it can only finish now"
    )]
    Switching,
    #[error(transparent)]
    Bus(#[from] IngestError),
}

/// Starts a reshard to `to` shards, unless one is in progress or the remaining session
/// starts (`remaining`, from `/gateway/bot`) cannot pay for the new generation's identifies.
pub async fn begin(
    generations: &Generations,
    js: &jetstream::Context,
    subjects: &relaycord_bus::Subjects,
    to: u32,
    limit: &crate::SessionStartLimit,
    reason: &str,
) -> Result<Plan, RefusedReshard> {
    if to == 0 {
        return Err(RefusedReshard::Zero);
    }
    if to > limit.remaining {
        return Err(RefusedReshard::Budget {
            needed: to,
            remaining: limit.remaining,
            reset_after: limit.reset_after(),
        });
    }
    let Some((plan, revision)) = generations.plan().await? else {
        return Err(RefusedReshard::Bus(IngestError::new(
            IngestErrorKind::Config,
            "no generation plan yet: start ingest once before resharding",
        )));
    };
    if let Some(reshard) = &plan.reshard {
        return Err(RefusedReshard::InProgress {
            to: reshard.to,
            phase: reshard.phase.as_str(),
        });
    }
    if plan.count == to {
        return Err(RefusedReshard::Unchanged(to));
    }
    let start_seq = history::last_sequence(js, subjects).await?;
    // Marks of an earlier reshard to the same count would look like progress, and its
    // sessions (a cancelled reshard, an earlier generation of this count) would be resumed
    // and replay events from long before this reshard.
    generations.clear(to).await?;
    forget_sessions(js, subjects, to).await?;
    let next = Plan {
        count: plan.count,
        reshard: Some(Reshard {
            to,
            phase: Phase::Overlap,
            start_seq,
            started_at: unix_ms(),
            reason: reason.to_owned(),
        }),
    };
    if generations.replace(&next, revision).await? {
        tracing::info!(from = plan.count, to, reason, start_seq, "reshard started");
        Ok(next)
    } else {
        // Someone changed the plan meanwhile: report what it is now.
        Box::pin(begin(generations, js, subjects, to, limit, reason)).await
    }
}

/// Purges the session records of `count`'s shards.
async fn forget_sessions(
    js: &jetstream::Context,
    subjects: &relaycord_bus::Subjects,
    count: u32,
) -> Result<(), IngestError> {
    let name = format!("{}_SESSIONS", relaycord_bus::streams::stream_stem(subjects));
    let Ok(sessions) = js.get_key_value(&name).await else {
        return Ok(());
    };
    let keys = relaycord_bus::kv::list_keys(&sessions, Duration::from_secs(10))
        .await
        .ok_or_else(|| IngestError::new(IngestErrorKind::Bus, "cannot list sessions"))?;
    let prefix = format!("s.{count}.");
    for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
        sessions
            .purge(key)
            .await
            .map_err(|e| bus_error("cannot forget an old session", e))?;
    }
    Ok(())
}

/// Abandons a reshard still in its overlap: the new generation's shards stop (nothing of
/// theirs was published but what the old generation also has) and the old one goes on.
/// Once switching, old shards have ended their sessions: the reshard can only finish.
pub async fn cancel(generations: &Generations) -> Result<Plan, RefusedReshard> {
    let Some((plan, revision)) = generations.plan().await? else {
        return Err(RefusedReshard::NotInProgress);
    };
    let Some(reshard) = &plan.reshard else {
        return Err(RefusedReshard::NotInProgress);
    };
    if reshard.phase != Phase::Overlap {
        return Err(RefusedReshard::Switching);
    }
    let back = Plan {
        count: plan.count,
        reshard: None,
    };
    if !generations.replace(&back, revision).await? {
        return Box::pin(cancel(generations)).await;
    }
    generations.clear(reshard.to).await?;
    tracing::info!(from = plan.count, to = reshard.to, "reshard cancelled");
    Ok(back)
}

/// What `relaycord reshard status` prints.
pub async fn status(generations: &Generations) -> Result<String, IngestError> {
    let Some((plan, _)) = generations.plan().await? else {
        return Ok("no generation plan yet (ingest has not run against this NATS)".to_owned());
    };
    let Some(reshard) = &plan.reshard else {
        return Ok(format!("{} shards, no reshard in progress", plan.count));
    };
    let ready = generations.marked(Mark::Ready, reshard.to).await?.len();
    let stopped = generations.marked(Mark::Stopped, plan.count).await?.len();
    let aligned = generations.marked(Mark::Aligned, reshard.to).await?.len();
    let elapsed = Duration::from_millis(unix_ms().saturating_sub(reshard.started_at));
    Ok(format!(
        "resharding {} → {} shards ({}), phase {}, for {}s\n  new shards ready: {ready}/{}\n  old shards stopped: {stopped}/{}\n  new shards aligned and live: {aligned}/{}",
        plan.count,
        reshard.to,
        reshard.reason,
        reshard.phase.as_str(),
        elapsed.as_secs(),
        reshard.to,
        plan.count,
        reshard.to,
    ))
}
