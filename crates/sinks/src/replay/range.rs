//! Replaying every event of a time range: an ordered consumer over the events stream,
//! from the first event at `since` (or just after the checkpoint) to the last one at
//! `until`, or the stream's end when the replay first ran, whichever comes first.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint, Store};
use super::{CHECKPOINT_EVERY, Delivered, Report, Request, SAVE_EVERY, Sender, Target, Ticker};
use crate::error::{SinkError, SinkErrorKind};
use crate::filter::type_and_guild;
use crate::worker::event_id;
use crate::{Body, Sink};

/// How long the stream may stay silent while events of the range are still pending.
const STALL: Duration = Duration::from_secs(30);

pub(super) async fn run<S: Sink>(
    js: &jetstream::Context,
    target: &Target<'_, S>,
    request: &Request,
    shutdown: &CancellationToken,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report, SinkError> {
    let settings = target.settings;
    let mut stream = js
        .get_stream(&settings.stream)
        .await
        .map_err(|e| bus(format!("stream {} is not available", settings.stream), e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| bus(format!("cannot read stream {}", settings.stream), e))?;
    let (replicas, last_seq) = (info.config.num_replicas, info.state.last_sequence);
    let store = Store::open(js, request.key.clone(), replicas).await?;
    if request.fresh && !request.dry_run {
        store.clear().await?;
    }
    let earlier = match request.fresh {
        true => None,
        false => store.load().await?,
    };
    let mut state = earlier.clone().unwrap_or(Checkpoint {
        since_ms: checkpoint::millis(request.since),
        until_ms: checkpoint::millis(request.until),
        end_seq: last_seq,
        ..Default::default()
    });
    let mut report = Report {
        earlier: earlier.clone(),
        since: Some(state.since()),
        until: Some(state.until()),
        ..Default::default()
    };
    if state.complete {
        return Ok(report);
    }
    let deliver_policy = match state.done_seq {
        0 => DeliverPolicy::ByStartTime {
            start_time: state.since().into(),
        },
        done => DeliverPolicy::ByStartSequence {
            start_sequence: done + 1,
        },
    };
    let (filter_subject, filter_subjects) = crate::driver::filters(js, &settings.subjects);
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| bus("cannot read the events stream", e))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| bus("cannot read the events stream", e))?;
    let mut sender = Sender::new(target, request, shutdown);
    let mut ticker = Ticker::new();
    let (mut unsaved, mut saved) = (0, Instant::now());
    while pending > 0 {
        let next = tokio::select! {
            next = tokio::time::timeout(STALL, messages.next()) => next,
            () = shutdown.cancelled() => {
                report.stopped = Some("interrupted".to_owned());
                break;
            }
        };
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(bus("cannot read the events stream", e)),
            Ok(None) => break,
            Err(_) => return Err(bus("reading the events stream stalled", "timed out")),
        };
        let (seq, published, left) = {
            let info = message
                .info()
                .map_err(|e| bus("an events stream message without metadata", e))?;
            (info.stream_sequence, info.published, info.pending)
        };
        pending = left;
        if seq > state.end_seq || SystemTime::from(published) > state.until() {
            break;
        }
        match replay_one(js, target, &mut sender, &message, seq, request.dry_run).await? {
            None => {
                report.stopped = Some("interrupted".to_owned());
                break;
            }
            Some(counted) => count(&mut report, &mut state, counted),
        }
        state.done_seq = seq;
        unsaved += 1;
        if let Some(reason) = sender.receiver_down() {
            report.stopped = Some(reason);
            break;
        }
        if !request.dry_run && (unsaved >= CHECKPOINT_EVERY || saved.elapsed() >= SAVE_EVERY) {
            store.save(&state).await?;
            (unsaved, saved) = (0, Instant::now());
        }
        if ticker.due() {
            progress(&report);
        }
    }
    if request.dry_run {
        return Ok(report);
    }
    state.complete = report.stopped.is_none();
    store.save(&state).await?;
    Ok(report)
}

/// What one event counted as; `None` when the replay stopped before it was done.
enum Counted {
    Filtered,
    Matched(Option<Delivered>),
}

async fn replay_one<S: Sink>(
    js: &jetstream::Context,
    target: &Target<'_, S>,
    sender: &mut Sender<'_, S>,
    message: &Message,
    seq: u64,
    dry_run: bool,
) -> Result<Option<Counted>, SinkError> {
    let body = Body::new(&message.payload);
    if !target.settings.filter.accepts(&message.subject, &body) {
        return Ok(Some(Counted::Filtered));
    }
    let Some(id) = event_id(message, &body) else {
        // Not an envelope: the live sink dead-lettered it already; nothing to send.
        return Ok(Some(Counted::Filtered));
    };
    if dry_run {
        return Ok(Some(Counted::Matched(None)));
    }
    let event_type = type_and_guild(&message.subject).0;
    let Some(delivered) = sender.send(id, event_type, &body).await else {
        return Ok(None);
    };
    if let Delivered::Failed {
        reason,
        status,
        attempts,
    } = &delivered
    {
        let failure = (reason.as_str(), *status, *attempts);
        let payload = message.payload.clone();
        super::dead_letter(js, target.name, seq, id, event_type, payload, failure).await?;
    }
    Ok(Some(Counted::Matched(Some(delivered))))
}

fn count(report: &mut Report, state: &mut Checkpoint, counted: Counted) {
    match counted {
        Counted::Filtered => report.filtered += 1,
        Counted::Matched(delivered) => {
            report.matched += 1;
            match delivered {
                None => {}
                Some(Delivered::Sent) => {
                    report.sent += 1;
                    state.sent += 1;
                }
                Some(Delivered::Skipped) => {
                    report.skipped += 1;
                    state.skipped += 1;
                }
                Some(Delivered::Failed { .. }) => {
                    report.failed += 1;
                    state.failed += 1;
                }
            }
        }
    }
}

fn bus(
    context: impl Into<String>,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> SinkError {
    SinkError::with_source(SinkErrorKind::Bus, context, e)
}
