//! One gateway shard pumped into JetStream.
//!
//! The loop reads a frame, publishes its envelope and keeps the acknowledgement in an
//! ordered window. When the window is full it stops reading the shard: that is the
//! backpressure. Nothing already read is dropped: a failed publish is retried with
//! the same `Nats-Msg-Id` until JetStream acknowledges it.
//!
//! Acks are consumed in read order ([`AckWindow`]), so the acked seq is contiguous: every
//! dispatch at or below it is on the bus. That seq — not twilight's, which advances on receipt — is
//! what the session record in KV holds, and what a restarted or new owner resumes from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use futures::stream::StreamExt;
use relaycord_bus::interaction::InteractionKeys;
use relaycord_bus::{
    Dispatch, Envelope, Secret, Source, Subjects, dedupe, envelope::now_rfc3339, headers,
};
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Intents, Message, Session, Shard, ShardId,
    error::ReceiveMessageErrorType,
};

use crate::error::{IngestError, IngestErrorKind};
use crate::health::ShardHealth;
use crate::metrics::IngestMetrics;
use crate::queue::KvQueue;
use crate::stop::Stop;
use crate::store::{SaveError, SessionRecord, SessionStore};
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
}

impl ShardContext {
    /// Records a shard as up, down, or (None) no longer owned here, for `/readyz` and
    /// `relaycord_shard_up`.
    fn mark(&self, id: u32, up: Option<bool>) {
        let label = id.to_string();
        match up {
            Some(true) => {
                self.health.up(id);
                self.metrics.shard_up.with_label_values(&[&label]).set(1);
            }
            Some(false) => {
                self.health.down(id);
                self.metrics.shard_up.with_label_values(&[&label]).set(0);
            }
            None => {
                self.health.forget(id);
                let _ = self.metrics.shard_up.remove_label_values(&[&label]);
                let _ = self.metrics.inflight.remove_label_values(&[&label]);
                let _ = self
                    .metrics
                    .heartbeat_latency
                    .remove_label_values(&[&label]);
            }
        }
    }
}

/// How long a stopping shard waits for its outstanding acks before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the acked position is written to KV. Resuming from a slightly older seq
/// only replays events the bus already has (and dedupes), so this trades a KV write
/// per event for a second of replay.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The current session and what of it is recorded in KV; its contiguous acked seq is
/// the window's.
struct Position {
    session_id: Option<String>,
    saved: Option<(String, u64)>,
}

/// Runs shard `id` until `stop` fires (Ok) or it closes fatally or loses ownership (Err).
pub(crate) async fn run(id: u32, ctx: Arc<ShardContext>, stop: Stop) -> Result<(), IngestError> {
    let (mut store, record) =
        SessionStore::claim(ctx.sessions.clone(), id, ctx.shard_count).await?;
    let mut builder = ConfigBuilder::new(ctx.token.expose().to_owned(), ctx.intents)
        .queue(ctx.queue.clone())
        .proxy_url(ctx.gateway_url.clone());
    let mut pos = Position {
        session_id: None,
        saved: None,
    };
    let mut window = AckWindow::new(0);
    if let Some(record) = record {
        tracing::info!(shard = id, seq = record.seq, "resuming stored session");
        builder = builder.session(Session::new(record.seq, record.session_id.clone()));
        if let Some(url) = record.resume_url {
            builder = builder.resume_url(url);
        }
        window = AckWindow::new(record.seq);
        pos.saved = Some((record.session_id.clone(), record.seq));
        pos.session_id = Some(record.session_id);
    }
    if pos.saved.is_some() {
        stop.set_resumable();
    }
    let mut shard = Shard::with_config(ShardId::new(id, ctx.shard_count), builder.build());

    let label = id.to_string();
    let inflight_gauge = ctx.metrics.inflight.with_label_values(&[&label]);
    let latency = ctx.metrics.heartbeat_latency.with_label_values(&[&label]);
    let mut last_close: Option<u16> = None;
    let mut save_tick = tokio::time::interval(SAVE_INTERVAL);
    // Set when a save finds another process's write: the record is no longer ours.
    let mut fenced = false;
    ctx.mark(id, Some(false));

    loop {
        inflight_gauge.set(window.len() as i64);
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = window.next(), if !window.is_empty() => {
                // A session nobody has recorded yet is saved at once, not on the next
                // tick: until its id is in KV, a crash leaves the next owner nothing to
                // resume, and whatever Discord sent on it would be lost.
                let recorded = pos.saved.as_ref().map(|(session, _)| session);
                if pos.session_id.is_some()
                    && recorded != pos.session_id.as_ref()
                    && checkpoint(&mut store, &mut pos, window.acked_seq(), shard.resume_url(), id, &stop).await.is_err()
                {
                    fenced = true;
                    break;
                }
            }
            _ = save_tick.tick() => {
                ctx.health.beat(id);
                if let Some(average) = shard.latency().average() {
                    latency.set(average.as_secs_f64());
                }
                if stop.is_lost() {
                    continue;
                }
                if checkpoint(&mut store, &mut pos, window.acked_seq(), shard.resume_url(), id, &stop).await.is_err() {
                    fenced = true;
                    break;
                }
            }
            item = shard.next(), if window.len() < ctx.window => match item {
                Some(Ok(Message::Text(frame))) => {
                    let session_id = shard.session().map(Session::id);
                    handle_frame(id, &frame, &ctx, session_id, &mut pos, &mut window).await;
                }
                Some(Ok(Message::Close(frame))) => {
                    ctx.mark(id, Some(false));
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
                        ctx.mark(id, Some(false));
                        tracing::warn!(shard = id, %error, "gateway connection failed; reconnecting");
                    }
                },
                None => {
                    ctx.mark(id, None);
                    return Err(fatal_close(id, last_close));
                }
            },
        }
    }

    // A clean stop publishes everything it read, records the position, then closes with
    // the RESUME code so that Discord keeps the session for whoever resumes it next. A
    // shard that is no longer the owner (lease lost, or fenced) drains and closes the same
    // way — its publishes are deduped — but leaves the record to the new owner.
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
    inflight_gauge.set(0);
    let owner = !fenced && !stop.is_lost();
    if owner {
        let _ = save(&mut store, &mut pos, acked_seq, shard.resume_url(), id).await;
    }
    close(&mut shard).await;
    ctx.mark(id, None);
    tracing::info!(shard = id, acked_seq, owner, "shard stopped");
    if fenced {
        return Err(IngestError::new(
            IngestErrorKind::LostOwnership,
            format!("shard {id}: another process now owns this shard's session"),
        ));
    }
    Ok(())
}

/// Saves the position; `Err` means another process wrote the record: the shard is no
/// longer ours and must stop. Marks the shard resumable once a record exists.
async fn checkpoint(
    store: &mut SessionStore,
    pos: &mut Position,
    acked_seq: u64,
    resume_url: Option<&str>,
    id: u32,
    stop: &Stop,
) -> Result<(), ()> {
    if save(store, pos, acked_seq, resume_url, id).await == Err(SaveError::Fenced) {
        tracing::warn!(
            shard = id,
            "another process wrote this shard's session; stopping the shard"
        );
        return Err(());
    }
    if pos.saved.is_some() {
        stop.set_resumable();
    }
    Ok(())
}

/// Writes the position when it moved. A fenced write means another process took over.
async fn save(
    store: &mut SessionStore,
    pos: &mut Position,
    acked_seq: u64,
    resume_url: Option<&str>,
    id: u32,
) -> Result<(), SaveError> {
    let Some(session_id) = pos.session_id.clone() else {
        return Ok(());
    };
    let current = (session_id, acked_seq);
    if pos.saved.as_ref() == Some(&current) {
        return Ok(());
    }
    let record = SessionRecord {
        session_id: current.0.clone(),
        seq: current.1,
        resume_url: resume_url.map(str::to_owned),
    };
    match store.save(&record).await {
        Ok(()) => {
            pos.saved = Some(current);
            Ok(())
        }
        Err(SaveError::Unavailable) => {
            tracing::debug!(shard = id, "session not saved (NATS unavailable); retrying");
            Err(SaveError::Unavailable)
        }
        Err(SaveError::Fenced) => Err(SaveError::Fenced),
    }
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
    session_id: Option<&str>,
    pos: &mut Position,
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
    let event_type = dispatch.event_type.as_ref();
    let seq = dispatch.seq;
    ctx.metrics.events.with_label_values(&[event_type]).inc();
    // Session lifecycle events describe the connection, not the guilds: not published,
    // but they take part in the seq order, so they pass through the window as done.
    match event_type {
        "READY" => {
            // A new session: acks of the previous one no longer move the resume point.
            window.new_session();
            pos.session_id = session_id.map(str::to_owned);
            ctx.mark(shard_id, Some(true));
            ctx.metrics.sessions.with_label_values(&["identify"]).inc();
            window.push_done(seq);
            return;
        }
        "RESUMED" => {
            ctx.mark(shard_id, Some(true));
            ctx.metrics.sessions.with_label_values(&["resume"]).inc();
            window.push_done(seq);
            return;
        }
        _ => {}
    }

    let received = Instant::now();
    let id = dedupe::gateway_key(&dispatch);
    let subject = subject_of(&dispatch, &ctx.subjects);
    let envelope = Envelope {
        id: id.as_str().into(),
        source: Source::Gateway,
        event_type: event_type.into(),
        shard: Some(shard_id),
        seq: Some(seq),
        guild_id: dispatch.guild_id().map(Into::into),
        received_at: now_rfc3339().into(),
        data: dispatch.data,
    };
    let message = PublishMessage::build()
        .payload(envelope.to_bytes())
        .message_id(&id)
        .header(headers::TYPE, event_type)
        .header(headers::SHARD, shard_id.to_string().as_str());

    // Sending here, in read order, keeps a shard's events in gateway order on the
    // stream whenever no publish has to be retried.
    let first = ctx.js.send_publish(subject.clone(), message.clone()).await;
    // The client refuses a message over the server's max_payload before sending it, and
    // would on every retry: retrying would wedge the shard's window for good. Skipping
    // it loses one event, loudly.
    if let Err(error) = &first
        && error.kind() == PublishErrorKind::MaxPayloadExceeded
    {
        ctx.metrics.oversized.inc();
        tracing::error!(
            shard = shard_id,
            %id,
            event_type,
            %error,
            "event larger than the NATS server's max_payload: skipped; raise max_payload in \
             the nats-server config (e.g. `max_payload: 8MB`) to carry it"
        );
        window.push_done(seq);
        return;
    }
    let js = ctx.js.clone();
    let metrics = ctx.metrics.clone();
    window.push(seq, async move {
        let ack = publish_acked(&js, subject, message, first.ok(), &metrics).await;
        metrics.published.inc();
        if ack.duplicate {
            metrics.duplicates.inc();
        }
        metrics
            .publish_latency
            .observe(received.elapsed().as_secs_f64());
    });
}

/// Gateway events go to `<prefix>.gateway.<TYPE>.<guild>`. Interactions delivered over
/// the gateway go where the HTTP endpoint puts them, `<prefix>.interactions.<kind>.<name>`
/// with the same `ix:<id>` key, so consumers need not care how Discord delivered them.
fn subject_of(dispatch: &Dispatch<'_>, subjects: &Subjects) -> String {
    if dispatch.event_type == "INTERACTION_CREATE" {
        match InteractionKeys::parse(dispatch.data.get()) {
            Ok(keys) => return keys.subject(subjects),
            Err(error) => {
                tracing::warn!(%error, "unroutable INTERACTION_CREATE; publishing it as a gateway event")
            }
        }
    }
    subjects.gateway(&dispatch.event_type, dispatch.guild_id())
}

/// Retries a publish until JetStream acknowledges it. Retrying with the same
/// `Nats-Msg-Id` is safe: if an earlier attempt did land, the server reports a duplicate.
async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    message: PublishMessage,
    mut first: Option<PublishAckFuture>,
    metrics: &IngestMetrics,
) -> jetstream::publish::PublishAck {
    let mut attempt: u32 = 0;
    loop {
        let result = match first.take() {
            Some(ack) => ack.await.map_err(|e| e.to_string()),
            None => match js.send_publish(subject.clone(), message.clone()).await {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        match result {
            Ok(ack) => return ack,
            Err(error) => {
                metrics.publish_errors.inc();
                let delay = retry_delay(attempt);
                if attempt == 0 {
                    tracing::warn!(%subject, %error, "publish not acknowledged; retrying until it is");
                } else {
                    tracing::debug!(%subject, %error, attempt, ?delay, "publish retry failed");
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Capped exponential backoff: 100 ms, 200 ms, ... 5 s. No jitter needed: each shard
/// retries its own window, and the server, not contention, is what is down.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
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
    fn backoff_is_capped() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(3), Duration::from_millis(800));
        assert_eq!(retry_delay(40), Duration::from_secs(5));
    }

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
