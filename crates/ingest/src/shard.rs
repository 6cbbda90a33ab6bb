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

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::traits::TimeoutProvider;
use futures::stream::StreamExt;
use relaycord_bus::{Dispatch, Secret, Subjects};
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Intents, Message, Session, Shard, ShardId,
    error::ReceiveMessageErrorType,
};

use crate::checkpoint::{self, Checkpoint, SAVE_INTERVAL};
use crate::error::{IngestError, IngestErrorKind};
use crate::health::ShardHealth;
use crate::metrics::IngestMetrics;
use crate::publish::{Alerts, Publisher};
use crate::queue::KvQueue;
use crate::stop::Stop;
use crate::window::AckWindow;

/// What every shard task shares.
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
}

impl ShardContext {
    /// Records an owned shard as up or down, for `/readyz` and `relaycord_shard_up`. A
    /// shard that is not running but still owned here (waiting to be started again) is
    /// down: only the coordinator, which knows when a shard stops being ours, forgets it.
    pub(crate) fn mark(&self, id: u32, up: bool) {
        let label = id.to_string();
        if up {
            self.health.up(id);
        } else {
            self.health.down(id);
        }
        self.metrics
            .shard_up
            .with_label_values(&[&label])
            .set(i64::from(up));
    }

    /// The shard's loop has ended: it is down, and its loop's gauges go.
    fn ended(&self, id: u32) {
        self.mark(id, false);
        self.health.unacked_since(id, None);
        let label = id.to_string();
        let _ = self.metrics.inflight.remove_label_values(&[&label]);
        let _ = self.metrics.oldest_unacked.remove_label_values(&[&label]);
        let _ = self
            .metrics
            .heartbeat_latency
            .remove_label_values(&[&label]);
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
        self.health.forget(id);
        let _ = self
            .metrics
            .shard_up
            .remove_label_values(&[&id.to_string()]);
    }
}

/// How long a stopping shard waits for its outstanding acks before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs shard `id` until `stop` fires (Ok) or it closes fatally or loses ownership (Err).
/// Whichever way it ends, it is left marked down; the coordinator decides whether it is
/// still owned.
pub(crate) async fn run(id: u32, ctx: Arc<ShardContext>, stop: Stop) -> Result<(), IngestError> {
    ctx.mark(id, false);
    let result = run_session(id, &ctx, stop).await;
    ctx.ended(id);
    result
}

async fn run_session(id: u32, ctx: &Arc<ShardContext>, stop: Stop) -> Result<(), IngestError> {
    let (mut checkpoint, record) =
        Checkpoint::claim(ctx.sessions.clone(), id, ctx.shard_count).await?;
    let mut builder = ConfigBuilder::new(ctx.token.expose().to_owned(), ctx.intents)
        .queue(ctx.queue.clone())
        .proxy_url(ctx.gateway_url.clone());
    let mut window = AckWindow::new(0);
    if let Some(record) = record {
        tracing::info!(shard = id, seq = record.seq, "resuming stored session");
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
    let mut shard = Shard::with_config(ShardId::new(id, ctx.shard_count), builder.build());
    let mut publisher = Publisher::new(id, ctx);

    let label = id.to_string();
    let inflight_gauge = ctx.metrics.inflight.with_label_values(&[&label]);
    let oldest_gauge = ctx.metrics.oldest_unacked.with_label_values(&[&label]);
    let latency = ctx.metrics.heartbeat_latency.with_label_values(&[&label]);
    let mut last_close: Option<u16> = None;
    let mut save_tick = tokio::time::interval(SAVE_INTERVAL);
    // Set when a save finds another process's write: the record is no longer ours.
    let mut fenced = false;
    // Set when the gateway closed the shard for good (bad token, disallowed intents...).
    let mut fatal = None;

    loop {
        inflight_gauge.set(window.len() as i64);
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = window.next(), if !window.is_empty() => {
                if checkpoint.is_unrecorded()
                    && checkpoint.checkpoint(window.acked_seq(), shard.resume_url(), &stop).await.is_err()
                {
                    fenced = true;
                    break;
                }
            }
            _ = save_tick.tick() => {
                ctx.health.beat(id);
                let oldest = window.oldest_since();
                ctx.health.unacked_since(id, oldest.map(tokio::time::Instant::into_std));
                oldest_gauge.set(oldest.map_or(0.0, |at| at.elapsed().as_secs_f64()));
                if let Some(average) = shard.latency().average() {
                    latency.set(average.as_secs_f64());
                }
                if stop.is_lost() {
                    continue;
                }
                if checkpoint.checkpoint(window.acked_seq(), shard.resume_url(), &stop).await.is_err() {
                    fenced = true;
                    break;
                }
            }
            item = shard.next(), if window.len() < ctx.window => match item {
                Some(Ok(Message::Text(frame))) => {
                    let session_id = shard.session().map(Session::id);
                    handle_frame(id, &frame, ctx, &mut publisher, session_id, &mut checkpoint, &mut window).await;
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
                None => {
                    fatal = Some(fatal_close(id, last_close));
                    break;
                }
            },
        }
    }

    // A clean stop publishes everything it read, records the position, then closes with
    // the RESUME code so that Discord keeps the session for whoever resumes it next. A
    // shard that is no longer the owner (lease lost, or fenced) drains and closes the same
    // way — its publishes are deduped — but leaves the record to the new owner. A fatal
    // close drains and records too (there is no connection left to close): once the cause
    // is fixed, the next start resumes right after what reached the bus.
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
    let acked_seq = window.acked_seq();
    drop(window);
    let owner = !fenced && !stop.is_lost();
    if owner {
        let _ = checkpoint.save(acked_seq, shard.resume_url()).await;
    }
    if let Some(error) = fatal {
        tracing::info!(
            shard = id,
            acked_seq,
            "shard closed by the gateway for good"
        );
        return Err(error);
    }
    close(&mut shard).await;
    tracing::info!(shard = id, acked_seq, owner, "shard stopped");
    if fenced {
        return Err(IngestError::new(
            IngestErrorKind::LostOwnership,
            format!("shard {id}: another process now owns this shard's session"),
        ));
    }
    Ok(())
}

/// Sends the RESUME close frame and waits for the gateway's answer (up to 2 s), so the
/// session is left resumable rather than cut.
async fn close(shard: &mut Shard<KvQueue>) {
    shard.close(CloseFrame::RESUME);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(item) = shard.next().await {
            if matches!(item, Ok(Message::Close(_))) {
                break;
            }
        }
    })
    .await;
}

/// Parses one frame; for a dispatch, sends its publish and puts its ack in the window.
async fn handle_frame(
    shard_id: u32,
    frame: &str,
    ctx: &ShardContext,
    publisher: &mut Publisher,
    session_id: Option<&str>,
    checkpoint: &mut Checkpoint,
    window: &mut AckWindow,
) {
    let dispatch = match Dispatch::parse(frame) {
        Ok(Some(dispatch)) => dispatch,
        Ok(None) => return,
        Err(error) => {
            ctx.metrics.malformed.inc();
            tracing::warn!(shard = shard_id, frame = %truncate(frame, 200), %error, "skipping malformed dispatch");
            return;
        }
    };
    let seq = dispatch.seq;
    publisher.count(&dispatch.event_type);
    // Session lifecycle events describe the connection, not the guilds: not published,
    // but they take part in the seq order, so they pass through the window as done.
    match dispatch.event_type.as_ref() {
        "READY" => {
            // A new session: acks of the previous one no longer move the resume point.
            window.new_session();
            checkpoint.new_session(session_id);
            ctx.mark(shard_id, true);
            ctx.metrics.sessions.with_label_values(&["identify"]).inc();
            window.push_done(seq);
        }
        "RESUMED" => {
            ctx.mark(shard_id, true);
            ctx.metrics.sessions.with_label_values(&["resume"]).inc();
            window.push_done(seq);
        }
        _ => publisher.publish(&dispatch, window).await,
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
            IngestErrorKind::FatalClose,
            "sharding required: the bot is in too many guilds for this shard count (ingest.shard_count)",
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
