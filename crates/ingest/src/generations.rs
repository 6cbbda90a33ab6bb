//! The supervisor of leased mode: one [`Coordinator`] per shard generation the plan asks
//! for, and the plan's transitions (see [`crate::reshard`]).
//!
//! Every replica runs this loop. Each reads the plan, runs the generations in it, and
//! tries the next transition with compare-and-set; the first to succeed moves the reshard
//! on, the others see the new plan on their next read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaycord_bus::Subjects;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
use crate::error::{IngestError, IngestErrorKind};
use crate::reshard::{self, Generations, Mark, Phase, Plan};
use crate::shard::ShardContext;
use crate::store::Buckets;

/// How often the plan is read.
const TICK: Duration = Duration::from_secs(1);

/// How long every new shard must have been ready before the old generation stops. The
/// switch compares what the old generation published after each new shard joined a
/// guild, leaving out its first second (`reshard::history::JOIN_MARGIN_MS`); an overlap
/// shorter than that would leave nothing to compare, and the new shard would publish the
/// whole overlap again.
const SETTLE: Duration = Duration::from_millis(3 * crate::reshard::history::JOIN_MARGIN_MS);

/// The plan as shards see it, with the old generation's shards that have stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// `None`: static mode, no generations.
    pub plan: Option<Plan>,
    pub stopped: BTreeSet<u32>,
}

/// What a shard of a given generation does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Publishes everything.
    Live,
    /// New generation before the switch: holds back what needs aligning.
    Standby,
    /// Old generation at the switch, or a generation no longer in the plan: drain, end
    /// the session, report stopped.
    Retire,
}

impl View {
    pub fn role(&self, count: u32) -> Role {
        let Some(plan) = &self.plan else {
            return Role::Live;
        };
        match &plan.reshard {
            Some(r) if r.to == count => Role::Standby,
            Some(r) if plan.count == count && r.phase == Phase::Switching => Role::Retire,
            _ if plan.count == count => Role::Live,
            _ => Role::Retire,
        }
    }

    /// The reshard is switching and every old shard has stopped: new shards may align.
    pub fn may_align(&self) -> bool {
        self.plan.as_ref().is_some_and(|plan| {
            plan.reshard
                .as_ref()
                .is_some_and(|r| r.phase == Phase::Switching)
                && self.stopped.len() as u32 >= plan.count
        })
    }
}

/// Something a shard tells the supervisor.
#[derive(Debug)]
pub(crate) enum Notice {
    /// Discord closed an identify with 4011: this count is too small.
    ShardingRequired { count: u32 },
}

/// Why the supervisor looks at Discord's recommended shard count.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// `shard_count = "auto"`: the periodic check.
    Recommended,
    /// A 4011 close: this count is too small, whatever Discord recommends.
    ShardingRequired,
}

impl Trigger {
    /// The plan's `reason`.
    fn reason(self) -> &'static str {
        match self {
            Self::Recommended => "recommended",
            Self::ShardingRequired => "close 4011",
        }
    }
}

/// What the supervisor needs besides the shards' context.
pub(crate) struct Supervisor {
    pub template: Arc<ShardContext>,
    pub buckets: Buckets,
    pub generations: Generations,
    pub replica: String,
    pub lease_ttl: Duration,
    pub subjects: Subjects,
    /// `Some(interval)` when `shard_count = "auto"`: re-read Discord's recommendation.
    pub auto_check: Option<Duration>,
    pub view: watch::Sender<View>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
    pub http: reqwest::Client,
    pub api_base: String,
    /// When this replica first saw every new shard ready (reset by any other state).
    pub all_ready_since: std::sync::Mutex<Option<Instant>>,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), IngestError>>,
}

impl Supervisor {
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        let mut last_check = Instant::now();
        let result = loop {
            match self.refresh().await {
                Ok(plan) => {
                    for count in plan.generations() {
                        running.entry(count).or_insert_with(|| self.spawn(count));
                    }
                    // A generation gone from the plan has retired all its shards; its
                    // coordinator only holds the lock on nothing now.
                    let gone: Vec<u32> = running
                        .keys()
                        .copied()
                        .filter(|c| !plan.generations().contains(c))
                        .collect();
                    for count in gone {
                        let old = running.remove(&count).expect("listed above");
                        old.stop.cancel();
                        let _ = old.task.await;
                    }
                    if let Some(every) = self.auto_check
                        && last_check.elapsed() >= every
                    {
                        last_check = Instant::now();
                        self.check_recommendation(&plan, Trigger::Recommended).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read the generation plan; retrying"),
            }
            if let Some(error) = take_failure(&mut running).await {
                break Err(error);
            }
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(TICK) => {}
                Some(notice) = self.notices.recv() => self.on_notice(notice).await,
            }
        };
        for generation in running.values() {
            generation.stop.cancel();
        }
        for (_, generation) in running {
            let _ = generation.task.await;
        }
        let _ = self.buckets.members.delete(&self.replica).await;
        self.template.metrics.leases.set(0);
        result
    }

    fn spawn(&self, count: u32) -> Running {
        let ctx = Arc::new(ShardContext {
            shard_count: count,
            ..(*self.template).clone()
        });
        let stop = CancellationToken::new();
        let coordinator = Coordinator::new(
            ctx,
            self.buckets.clone(),
            self.replica.clone(),
            0..count,
            self.lease_ttl,
        );
        tracing::info!(shard_count = count, "running a generation of shards");
        Running {
            task: tokio::spawn(coordinator.run_leased(stop.clone())),
            stop,
        }
    }

    /// Reads the plan, publishes it to the shards, and tries its next transition.
    async fn refresh(&self) -> Result<Plan, IngestError> {
        let (plan, revision) =
            self.generations.plan().await?.ok_or_else(|| {
                IngestError::new(IngestErrorKind::Bus, "the generation plan is gone")
            })?;
        let stopped: BTreeSet<u32> = match &plan.reshard {
            Some(r) if r.phase == Phase::Switching => self
                .generations
                .marked(Mark::Stopped, plan.count)
                .await?
                .into_iter()
                .collect(),
            _ => BTreeSet::new(),
        };
        let view = View {
            plan: Some(plan.clone()),
            stopped,
        };
        self.show(&view);
        self.view.send_if_modified(|current| {
            let changed = *current != view;
            *current = view.clone();
            changed
        });
        self.advance(&view, revision).await?;
        Ok(plan)
    }

    fn show(&self, view: &View) {
        let metrics = &self.template.metrics;
        let Some(plan) = &view.plan else { return };
        metrics.shard_count.set(i64::from(plan.count));
        let reshard = plan.reshard.as_ref();
        metrics
            .reshard_in_progress
            .set(i64::from(reshard.is_some()));
        metrics
            .reshard_target
            .set(reshard.map_or(0, |r| i64::from(r.to)));
        metrics
            .reshard_started
            .set(reshard.map_or(0.0, |r| r.started_at as f64 / 1000.0));
    }

    /// Overlap → switching once every new shard is ready; switching → done once every old
    /// shard has stopped and every new one is aligned.
    async fn advance(&self, view: &View, revision: u64) -> Result<(), IngestError> {
        let Some(plan) = &view.plan else {
            return Ok(());
        };
        let Some(reshard) = &plan.reshard else {
            return Ok(());
        };
        let all = |ids: Vec<u32>, count: u32| ids.len() as u32 >= count;
        match reshard.phase {
            Phase::Overlap => {
                let ready = all(
                    self.generations.marked(Mark::Ready, reshard.to).await?,
                    reshard.to,
                );
                let settled = {
                    let mut since = self.all_ready_since.lock().expect("lock");
                    match (ready, *since) {
                        (false, _) => {
                            *since = None;
                            false
                        }
                        (true, None) => {
                            *since = Some(Instant::now());
                            false
                        }
                        (true, Some(at)) => at.elapsed() >= SETTLE,
                    }
                };
                if settled {
                    let mut next = plan.clone();
                    next.reshard.as_mut().expect("checked").phase = Phase::Switching;
                    if self.generations.replace(&next, revision).await? {
                        tracing::info!(
                            from = plan.count,
                            to = reshard.to,
                            "every new shard is ready: switching"
                        );
                        *self.all_ready_since.lock().expect("lock") = None;
                    }
                }
            }
            Phase::Switching => {
                if view.may_align()
                    && all(
                        self.generations.marked(Mark::Aligned, reshard.to).await?,
                        reshard.to,
                    )
                {
                    let done = Plan {
                        count: reshard.to,
                        reshard: None,
                    };
                    if self.generations.replace(&done, revision).await? {
                        let took = reshard::unix_ms().saturating_sub(reshard.started_at);
                        tracing::info!(
                            from = plan.count,
                            to = reshard.to,
                            took_ms = took,
                            "reshard complete; the old generation is closed"
                        );
                        self.generations.clear(plan.count).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_notice(&self, notice: Notice) {
        match notice {
            Notice::ShardingRequired { count } => {
                let Ok(Some((plan, _))) = self.generations.plan().await else {
                    return;
                };
                if plan.count == count && plan.reshard.is_none() {
                    self.check_recommendation(&plan, Trigger::ShardingRequired)
                        .await;
                }
            }
        }
    }

    /// Starts a reshard when Discord recommends more shards than run (or, after a 4011,
    /// to its recommendation or at least twice the count).
    async fn check_recommendation(&self, plan: &Plan, trigger: Trigger) {
        if plan.reshard.is_some() {
            return;
        }
        let bot = match crate::gateway_bot(&self.http, &self.api_base, &self.template.token).await {
            Ok(bot) => bot,
            Err(error) => {
                tracing::warn!(%error, "cannot read Discord's recommended shard count");
                return;
            }
        };
        let to = match trigger {
            Trigger::Recommended if bot.shards > plan.count => bot.shards,
            Trigger::Recommended => return,
            Trigger::ShardingRequired => bot.shards.max(plan.count.saturating_mul(2)),
        };
        let reason = trigger.reason();
        let js = &self.template.js;
        match reshard::begin(
            &self.generations,
            js,
            &self.subjects,
            to,
            &bot.session_start_limit,
            reason,
        )
        .await
        {
            Ok(_) => {}
            Err(reshard::RefusedReshard::InProgress { .. }) => {}
            Err(error) => tracing::error!(
                from = plan.count,
                to,
                reason,
                %error,
                "cannot reshard"
            ),
        }
    }
}

/// The error of a generation whose coordinator ended by itself (bad token...).
async fn take_failure(running: &mut BTreeMap<u32, Running>) -> Option<IngestError> {
    let ended: Vec<u32> = running
        .iter()
        .filter(|(_, r)| r.task.is_finished())
        .map(|(c, _)| *c)
        .collect();
    for count in ended {
        let generation = running.remove(&count).expect("listed above");
        match generation.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Some(error),
            Err(panic) => {
                return Some(IngestError::with_source(
                    IngestErrorKind::FatalClose,
                    format!("the coordinator of {count} shards panicked"),
                    panic,
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshard::Reshard;

    fn view(count: u32, reshard: Option<(u32, Phase)>, stopped: &[u32]) -> View {
        View {
            plan: Some(Plan {
                count,
                reshard: reshard.map(|(to, phase)| Reshard {
                    to,
                    phase,
                    start_seq: 0,
                    started_at: 0,
                    reason: "command".into(),
                }),
            }),
            stopped: stopped.iter().copied().collect(),
        }
    }

    #[test]
    fn roles_follow_the_plan() {
        assert_eq!(View::default().role(2), Role::Live, "static mode");
        assert_eq!(view(2, None, &[]).role(2), Role::Live);
        assert_eq!(view(2, None, &[]).role(4), Role::Retire, "not in the plan");
        let overlap = view(2, Some((4, Phase::Overlap)), &[]);
        assert_eq!(overlap.role(2), Role::Live);
        assert_eq!(overlap.role(4), Role::Standby);
        assert!(!overlap.may_align());
        let switching = view(2, Some((4, Phase::Switching)), &[0]);
        assert_eq!(switching.role(2), Role::Retire);
        assert!(!switching.may_align(), "old shard 1 still runs");
        assert!(view(2, Some((4, Phase::Switching)), &[0, 1]).may_align());
    }
}
