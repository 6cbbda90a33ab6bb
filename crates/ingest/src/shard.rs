//! One gateway shard pumped into JetStream.
//!
//! The loop reads a frame, publishes its envelope ([`crate::publish`]) and keeps the
//! acknowledgement in an ordered window. When the window is full it stops reading the
//! shard: that is the backpressure. Nothing already read is dropped: a failed publish is
//! retried with the same `Nats-Msg-Id` until JetStream acknowledges it.
//!
//! Acks are consumed in read order ([`AckWindow`]), so the acked seq is contiguous: every
//! dispatch at or below it is on the bus. That seq — not twilight's, which advances on receipt — is
//! what the session record in KV holds ([`crate::checkpoint`]), and what a restarted or new
//! owner resumes from.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::traits::TimeoutProvider;
use futures::stream::StreamExt;
use relaycord_bus::{Dispatch, Secret, Subjects};
use twilight_gateway::{
    CloseFrame, Config, ConfigBuilder, Intents, Message, Session, Shard, ShardId,
    error::ReceiveMessageErrorType,
};

use tokio::sync::{mpsc, watch};

use crate::checkpoint::{self, Checkpoint, SAVE_INTERVAL};
use crate::error::{IngestError, IngestErrorKind};
use crate::generations::{Notice, Role, View};
use crate::health::{ShardHealth, ShardRef};
use crate::metrics::IngestMetrics;
use crate::publish::{Alerts, Publisher};
use crate::queue::KvQueue;
use crate::reshard::Generations;
use crate::reshard::shard::{GatewaySession, Generation, Handoff, Sorted};
use crate::stop::Stop;
use crate::window::AckWindow;

/// What every shard task of one generation shares.
#[derive(Clone)]
pub(crate) struct ShardContext {
    pub js: jetstream::Context,
    pub sessions: async_nats::jetstream::kv::Store,
    pub subjects: Subjects,
    pub window: usize,
    pub metrics: IngestMetrics,
    pub health: ShardHealth,
    pub token: Secret,
    pub intents: Intents,
    pub gateway_url: String,
    pub queue: KvQueue,
    pub shard_count: u32,
    pub alerts: Arc<Alerts>,
    /// The gateway configuration every shard starts from, built once: twilight's
    /// `ConfigBuilder::new` builds a rustls client config (root store, session cache) each
    /// time, and clones of one config share it. Most of it is never touched, so resident
    /// memory barely moved (docs/benchmarks.md, "Shard density"); it is still one
    /// allocation per process instead of one per shard.
    pub gateway_config: OnceLock<Config<KvQueue>>,
    /// The reshard bucket, the plan as the supervisor last read it (static mode: no plan,
    /// every shard live), and the supervisor's ear.
    pub generations: Option<Generations>,
    pub view: watch::Receiver<View>,
    pub notices: mpsc::UnboundedSender<Notice>,
}

impl ShardContext {
    /// The configuration shared by this context's shards, before a session's own resume
    /// state is added.
    fn gateway_config(&self) -> &Config<KvQueue> {
        self.gateway_config.get_or_init(|| {
            ConfigBuilder::new(self.token.expose().to_owned(), self.intents)
                .queue(self.queue.clone())
                .proxy_url(self.gateway_url.clone())
                .build()
        })
    }

    /// Records an owned shard as up or down, for `/readyz` and `relaycord_shard_up`. A
    /// shard that is not running but still owned here (waiting to be started again) is
    /// down: only the coordinator, which knows when a shard stops being ours, forgets it.
    pub(crate) fn mark(&self, id: u32, up: bool) {
        if up {
            self.health.up(self.shard_ref(id));
        } else {
            self.health.down(self.shard_ref(id));
        }
        self.metrics
            .shard_up
            .with_label_values(&self.labels(id))
            .set(i64::from(up));
    }

    pub(crate) fn shard_ref(&self, id: u32) -> ShardRef {
        ShardRef::new(id, self.shard_count)
    }

    /// The `shard` and `shard_count` labels of the per-shard gauges.
    pub(crate) fn labels(&self, id: u32) -> [String; 2] {
        [id.to_string(), self.shard_count.to_string()]
    }

    /// The shard's loop has ended: it is down, and its loop's gauges go.
    fn ended(&self, id: u32) {
        self.mark(id, false);
        self.health.unacked_since(self.shard_ref(id), None);
        let labels = self.labels(id);
        let labels = [labels[0].as_str(), labels[1].as_str()];
        let _ = self.metrics.inflight.remove_label_values(&labels);
        let _ = self.metrics.oldest_unacked.remove_label_values(&labels);
        let _ = self.metrics.heartbeat_latency.remove_label_values(&labels);
    }

    /// The JetStream context a shard publishes through: the shared client, with a bound
    /// on unacknowledged publishes of the shard's own. async-nats waits in `send_publish`
    /// for a permit of its context; shared by every shard (5,000 by default), more shards
    /// × window than that let a shard wait, inside its loop, for permits held by the acks
    /// of other shards' windows — which nobody polls while those shards wait too. A shard
    /// never holds more than its window of permits (one per entry, retries included, and
    /// reads stop when it is full), so its own bound is never what it waits for.
    pub(crate) fn shard_js(&self) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(self.js.timeout())
            .max_ack_inflight(self.window + 1)
            .build(self.js.client())
    }

    /// Shard `id` is no longer owned here.
    pub(crate) fn forget(&self, id: u32) {
        self.health.forget(self.shard_ref(id));
        let labels = self.labels(id);
        let _ = self
            .metrics
            .shard_up
            .remove_label_values(&[labels[0].as_str(), labels[1].as_str()]);
    }
}

/// How long a stopping shard waits for its outstanding acks before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs shard `id` until `stop` fires (Ok) or it closes fatally or loses ownership (Err).
/// A shard of a generation that is retiring also ends Ok, by itself, once it has drained
/// and ended its session. Whichever way it ends, it is left marked down; the coordinator
/// decides whether it is still owned.
pub(crate) async fn run(id: u32, ctx: Arc<ShardContext>, stop: Stop) -> Result<(), IngestError> {
    ctx.mark(id, false);
    let result = run_session(id, &ctx, stop).await;
    ctx.ended(id);
    result
}

/// Why the loop ended.
enum End {
    /// Asked to stop (handover, shutdown, lease lost).
    Stopped,
    /// Another process wrote the session record.
    Fenced,
    /// The gateway closed the shard for good.
    Fatal(IngestError),
    /// The generation retires: end the session, report the shard stopped.
    Retired,
}

// Every await below but the per-event ones (`frames.handle`, the window) is boxed: an
// async fn's state is as large as its largest await, and these (KV reads and writes, the
// reshard's switch, the close) would otherwise sit in each shard's task for its whole life,
// idle shards included. Boxed, the shard's future went from 14.5 to 6.3 KB (debug build).
async fn run_session(id: u32, ctx: &Arc<ShardContext>, stop: Stop) -> Result<(), IngestError> {
    let mut view = ctx.view.clone();
    let role = view.borrow_and_update().role(ctx.shard_count);
    let handoff = Handoff::new(id, ctx);
    if role == Role::Retire && Box::pin(handoff.is_stopped()).await? {
        return Ok(());
    }
    let (mut checkpoint, record) =
        Box::pin(Checkpoint::claim(ctx.sessions.clone(), id, ctx.shard_count)).await?;
    if role == Role::Retire && record.is_none() {
        // Nothing to resume, nothing left to publish: the new generation has it all.
        Box::pin(handoff.report_stopped()).await?;
        return Ok(());
    }
    let mut builder = ConfigBuilder::from(ctx.gateway_config().clone());
    let mut window = AckWindow::new(0);
    let resumed_session = record.as_ref().map(|r| r.session_id.clone());
    if let Some(record) = record {
        tracing::info!(
            shard = id,
            shard_count = ctx.shard_count,
            seq = record.seq,
            "resuming stored session"
        );
        builder = builder.session(Session::new(record.seq, record.session_id));
        match record.resume_url {
            Some(url) if checkpoint::trusted_resume_url(&url, &ctx.gateway_url) => {
                builder = builder.resume_url(url);
            }
            // Resumed on the configured gateway instead, which Discord accepts.
            Some(url) => tracing::warn!(
                shard = id,
                resume_url = %relaycord_bus::redact::url_origin(&url),
                "stored resume_url is not the configured gateway nor Discord's; ignored"
            ),
            None => {}
        }
        window = AckWindow::new(record.seq);
        stop.set_resumable();
    }
    let mut generation = match role {
        Role::Standby => Box::pin(handoff.standby_state(resumed_session.as_deref())).await?,
        Role::Retire => Generation::Retiring,
        Role::Live => Generation::Live,
    };
    let mut shard = Shard::with_config(ShardId::new(id, ctx.shard_count), builder.build());
    let mut publisher =
        Publisher::new(id, ctx.shard_js(), &ctx.subjects, &ctx.metrics, &ctx.alerts);

    let labels = ctx.labels(id);
    let labels = [labels[0].as_str(), labels[1].as_str()];
    let inflight_gauge = ctx.metrics.inflight.with_label_values(&labels);
    let oldest_gauge = ctx.metrics.oldest_unacked.with_label_values(&labels);
    let latency = ctx.metrics.heartbeat_latency.with_label_values(&labels);
    let mut last_close: Option<u16> = None;
    let mut save_tick = tokio::time::interval(SAVE_INTERVAL);

    let end = loop {
        inflight_gauge.set(window.len() as i64);
        tokio::select! {
            biased;
            () = stop.cancelled() => break End::Stopped,
            Ok(()) = view.changed() => {
                let now = view.borrow_and_update().clone();
                if now.role(ctx.shard_count) == Role::Retire && !matches!(generation, Generation::Retiring) {
                    break End::Retired;
                }
                if now.may_align() && let Generation::Standby(standby) = &mut generation {
                    match Box::pin(handoff.switch_over(standby, GatewaySession::of(&shard), &mut publisher, &mut window, &mut checkpoint)).await {
                        Ok(cut) => generation = Generation::Aligned { cut, mark_at: None },
                        Err(error) => tracing::warn!(shard = id, %error, "cannot switch over yet; retrying"),
                    }
                }
            }
            Some(_) = window.next(), if !window.is_empty() => {
                let acked = generation.resume_point(window.acked_seq());
                if checkpoint.is_unrecorded()
                    && Box::pin(checkpoint.checkpoint(acked, shard.resume_url(), &stop)).await.is_err()
                {
                    break End::Fenced;
                }
            }
            _ = save_tick.tick() => {
                ctx.health.beat(ctx.shard_ref(id));
                let oldest = window.oldest_since();
                ctx.health.unacked_since(ctx.shard_ref(id), oldest.map(tokio::time::Instant::into_std));
                oldest_gauge.set(oldest.map_or(0.0, |at| at.elapsed().as_secs_f64()));
                if let Some(average) = shard.latency().average() {
                    latency.set(average.as_secs_f64());
                }
                if stop.is_lost() {
                    continue;
                }
                let acked = generation.resume_point(window.acked_seq());
                if Box::pin(checkpoint.checkpoint(acked, shard.resume_url(), &stop)).await.is_err() {
                    break End::Fenced;
                }
                if let Err(error) = Box::pin(handoff.progress(&mut generation, window.acked_seq())).await {
                    tracing::warn!(shard = id, %error, "cannot record reshard progress; retrying");
                }
                // A switch that failed (NATS down) is tried again here.
                let may_align = view.borrow().may_align();
                if may_align
                    && let Generation::Standby(standby) = &mut generation
                    && let Ok(cut) = Box::pin(handoff.switch_over(standby, GatewaySession::of(&shard), &mut publisher, &mut window, &mut checkpoint)).await
                {
                    generation = Generation::Aligned { cut, mark_at: None };
                }
            }
            item = shard.next(), if window.len() < ctx.window && !generation.is_full() => match item {
                Some(Ok(Message::Text(frame))) => {
                    let session_id = shard.session().map(Session::id);
                    let frames = Frame { shard_id: id, ctx, session_id };
                    match frames.handle(&frame, &mut publisher, &mut checkpoint, &mut window, &mut generation).await {
                        Flow::Continue => {}
                        Flow::Retire => break End::Retired,
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    ctx.mark(id, false);
                    last_close = frame.as_ref().map(|f| f.code);
                    tracing::info!(shard = id, code = ?last_close, acked_seq = window.acked_seq(), "gateway connection closed");
                }
                Some(Err(error)) => match error.kind() {
                    ReceiveMessageErrorType::Deserializing { event } => {
                        ctx.metrics.malformed.inc();
                        tracing::warn!(shard = id, frame = %truncate(event, 200), %error, "skipping malformed gateway frame");
                    }
                    _ => {
                        // A failed or zombie connection: no session until twilight has
                        // reconnected and READY or RESUMED arrives.
                        ctx.mark(id, false);
                        tracing::warn!(shard = id, %error, "gateway connection failed; reconnecting");
                    }
                },
                None => break End::Fatal(fatal_close(id, last_close)),
            },
        }
    };

    // A clean stop publishes everything it read, records the position, then closes with
    // the RESUME code so that Discord keeps the session for whoever resumes it next. A
    // shard that is no longer the owner (lease lost, or fenced) drains and closes the same
    // way — its publishes are deduped — but leaves the record to the new owner. A fatal
    // close drains and records too (there is no connection left to close): once the cause
    // is fixed, the next start resumes right after what reached the bus. A retiring shard
    // drains, records, and ends its session for good (close 1000): Discord stops sending
    // it anything, and the new generation publishes what follows.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while window.next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            shard = id,
            pending = window.len(),
            acked_seq = window.acked_seq(),
            "stopping with unacknowledged publishes; the next owner resumes before them"
        );
    }
    let acked_seq = generation.resume_point(window.acked_seq());
    drop(window);
    if let Generation::Standby(standby) = &generation {
        // Left to Discord's replay for whoever resumes the session next.
        ctx.metrics.reshard_held.sub(standby.held() as i64);
    }
    let fenced = matches!(end, End::Fenced);
    let owner = !fenced && !stop.is_lost();
    let saved = if owner {
        Box::pin(checkpoint.save(acked_seq, shard.resume_url()))
            .await
            .is_ok()
    } else {
        false
    };
    // The view too: a shard fenced before it saw the switch still belongs to a retiring
    // generation.
    let retiring = matches!(generation, Generation::Retiring)
        || matches!(end, End::Retired)
        || view.borrow().role(ctx.shard_count) == Role::Retire;
    match end {
        End::Fatal(error) if retiring && owner => {
            // The old generation's session is gone either way; the new one covers its guilds.
            tracing::info!(shard = id, acked_seq, %error, "retiring shard closed by the gateway");
            Box::pin(handoff.report_stopped()).await?;
            return Ok(());
        }
        End::Fatal(error) => {
            tracing::info!(
                shard = id,
                acked_seq,
                "shard closed by the gateway for good"
            );
            if error.kind() == IngestErrorKind::ShardingRequired {
                let _ = ctx.notices.send(Notice::ShardingRequired {
                    count: ctx.shard_count,
                });
            }
            return Err(error);
        }
        End::Retired if owner && drained.is_ok() && saved => {
            Box::pin(close(&mut shard, CloseFrame::NORMAL)).await;
            Box::pin(handoff.report_stopped()).await?;
            tracing::info!(
                shard = id,
                shard_count = ctx.shard_count,
                acked_seq,
                "shard retired: session ended"
            );
            return Ok(());
        }
        End::Retired => {
            // Not everything is on the bus (or recorded): leave the session resumable; the
            // next start of this shard resumes it and retires again.
            Box::pin(close(&mut shard, CloseFrame::RESUME)).await;
            return Err(IngestError::new(
                IngestErrorKind::Bus,
                format!("shard {id}: could not drain before retiring; trying again"),
            ));
        }
        End::Stopped | End::Fenced => {}
    }
    // Two owners of one retiring shard (a lease that expired under load): the other one
    // retired the session and reported it stopped, but its close 1000 may have reached a
    // connection Discord had already replaced by this one's resume. Nobody resumes a
    // stopped shard's session, so this one ends it for good instead of leaving it open.
    // Fenced, this one learns of the other owner before that owner has retired the
    // shard (a resume is all it takes to fence), so it waits a little for the report.
    let patience = if owner {
        Duration::ZERO
    } else {
        RETIRED_ELSEWHERE_WAIT
    };
    // Not the owner while a reshard is under way: this shard's view may be a second behind
    // the plan (a replica whose lease lapsed was likely stalled), so the plan is read again
    // while waiting.
    let reshard_under_way = view
        .borrow()
        .plan
        .as_ref()
        .is_some_and(|plan| plan.reshard.is_some());
    let frame = if (retiring || (!owner && reshard_under_way))
        && Box::pin(retired_elsewhere(
            id,
            &handoff,
            &view,
            ctx.shard_count,
            patience,
        ))
        .await
    {
        tracing::info!(
            shard = id,
            "the shard was retired by another owner; ending its session"
        );
        CloseFrame::NORMAL
    } else {
        CloseFrame::RESUME
    };
    Box::pin(close(&mut shard, frame)).await;
    tracing::info!(shard = id, acked_seq, owner, "shard stopped");
    if fenced {
        return Err(IngestError::new(
            IngestErrorKind::LostOwnership,
            format!("shard {id}: another process now owns this shard's session"),
        ));
    }
    Ok(())
}

/// How long a fenced shard of a retiring generation waits for the new owner to report
/// the shard stopped: that owner resumes, publishes the replay and retires within a few
/// seconds when the bus is healthy.
const RETIRED_ELSEWHERE_WAIT: Duration = Duration::from_secs(5);

/// Whether another owner ended this shard's session within `patience`: by the latest plan
/// its generation retires and the shard is reported stopped, or the generation has left
/// the plan (the reshard ended, or was cancelled, and its marks are cleared). A shard of the
/// new generation is not retired by anyone: its next owner resumes it.
async fn retired_elsewhere(
    id: u32,
    handoff: &Handoff<'_>,
    view: &watch::Receiver<View>,
    count: u32,
    patience: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    // A KV read cannot hold the shard's end much past the deadline.
    let reads_until = deadline + Duration::from_secs(2);
    loop {
        let (role, left_the_plan, marked) = {
            let now = view.borrow();
            let left_the_plan = now.plan.as_ref().is_some_and(|plan| {
                plan.count != count && plan.reshard.as_ref().is_none_or(|r| r.to != count)
            });
            (now.role(count), left_the_plan, now.stopped.contains(&id))
        };
        if left_the_plan {
            return true;
        }
        match role {
            Role::Standby => return false,
            Role::Retire if marked => return true,
            Role::Retire => {
                let stopped = tokio::time::timeout_at(reads_until, handoff.is_stopped()).await;
                if matches!(stopped, Ok(Ok(true))) {
                    return true;
                }
            }
            Role::Live => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `frame` as the close frame and waits for the gateway's answer (up to 2 s): the
/// RESUME code leaves the session resumable, NORMAL ends it.
async fn close(shard: &mut Shard<KvQueue>, frame: CloseFrame<'static>) {
    shard.close(frame);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(item) = shard.next().await {
            if matches!(item, Ok(Message::Close(_))) {
                break;
            }
        }
    })
    .await;
}

/// What the loop does after a frame.
enum Flow {
    Continue,
    Retire,
}

/// One frame's handling: the shard, its context and its session at the time.
struct Frame<'a> {
    shard_id: u32,
    ctx: &'a ShardContext,
    session_id: Option<&'a str>,
}

impl Frame<'_> {
    /// Parses one frame; for a dispatch, publishes it (or holds it, in standby) and puts
    /// its ack in the window.
    async fn handle(
        &self,
        frame: &str,
        publisher: &mut Publisher,
        checkpoint: &mut Checkpoint,
        window: &mut AckWindow,
        generation: &mut Generation,
    ) -> Flow {
        let (shard_id, ctx) = (self.shard_id, self.ctx);
        let dispatch = match Dispatch::parse(frame) {
            Ok(Some(dispatch)) => dispatch,
            Ok(None) => return Flow::Continue,
            Err(error) => {
                ctx.metrics.malformed.inc();
                tracing::warn!(shard = shard_id, frame = %truncate(frame, 200), %error, "skipping malformed dispatch");
                return Flow::Continue;
            }
        };
        let seq = dispatch.seq;
        publisher.count(&dispatch.event_type);
        // Session lifecycle events describe the connection, not the guilds: not published,
        // but they take part in the seq order, so they pass through the window as done.
        match dispatch.event_type.as_ref() {
            "READY" => {
                if matches!(generation, Generation::Retiring) {
                    // The session to finish is gone; this new one has nothing to publish
                    // that the new generation does not.
                    return Flow::Retire;
                }
                // A new session: acks of the previous one no longer move the resume point.
                window.new_session();
                checkpoint.new_session(self.session_id);
                let discarded = generation.on_ready(&dispatch);
                ctx.metrics.reshard_held.sub(discarded as i64);
                ctx.mark(shard_id, true);
                ctx.metrics.sessions.with_label_values(&["identify"]).inc();
                window.push_done(seq);
            }
            "RESUMED" => {
                ctx.mark(shard_id, true);
                ctx.metrics.sessions.with_label_values(&["resume"]).inc();
                window.push_done(seq);
                generation.on_resumed(seq);
                if matches!(generation, Generation::Retiring) {
                    // The replay before RESUMED is in the window: drain it, then retire.
                    return Flow::Retire;
                }
            }
            _ => {
                let id = relaycord_bus::dedupe::gateway_key(&dispatch, self.session_id);
                match generation.on_dispatch(&dispatch, frame, &id) {
                    Sorted::Publish => publisher.publish(&dispatch, id, window).await,
                    Sorted::Held => ctx.metrics.reshard_held.inc(),
                    Sorted::AlreadyPublished => {
                        ctx.metrics.reshard_skipped.inc();
                        window.push_done(seq);
                    }
                }
            }
        }
        Flow::Continue
    }
}

fn fatal_close(shard: u32, code: Option<u16>) -> IngestError {
    let (kind, reason) = match code {
        Some(4004) => (
            IngestErrorKind::Unauthorized,
            "authentication failed: the bot token is invalid (discord.token / DISCORD_TOKEN)",
        ),
        Some(4010) => (
            IngestErrorKind::FatalClose,
            "invalid shard: shard id or count does not match what Discord expects (ingest.shards / ingest.shard_count)",
        ),
        Some(4011) => (
            IngestErrorKind::ShardingRequired,
            "sharding required: the bot is in too many guilds for this shard count; in leased mode ingest reshards by itself (ingest.shard_count, `relaycord reshard --to N`)",
        ),
        Some(4012) => (IngestErrorKind::FatalClose, "invalid API version"),
        Some(4013) => (
            IngestErrorKind::FatalClose,
            "invalid intents (discord.intents)",
        ),
        Some(4014) => (
            IngestErrorKind::FatalClose,
            "disallowed intents: enable the privileged intents in the Developer Portal or remove them from discord.intents",
        ),
        _ => (
            IngestErrorKind::FatalClose,
            "the gateway closed the shard and it cannot reconnect",
        ),
    };
    IngestError::new(
        kind,
        format!(
            "shard {shard} stopped (close code {}): {reason}",
            code.map_or("none".to_owned(), |c| c.to_string())
        ),
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_close_names_the_fix() {
        let e = fatal_close(3, Some(4004));
        assert_eq!(e.kind(), IngestErrorKind::Unauthorized);
        assert!(e.to_string().contains("DISCORD_TOKEN"), "{e}");
        assert!(
            fatal_close(0, Some(4014))
                .to_string()
                .contains("privileged intents")
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
