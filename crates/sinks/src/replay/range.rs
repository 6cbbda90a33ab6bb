//! Replaying every event of a time range: an ordered consumer over the events stream,
//! from the first event stored at `since` (or just after the checkpoint) to the last one
//! stored at `until`, or the stream's end when the replay first ran, whichever comes first.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, Store};
use super::letters::Letters;
use super::{CHECKPOINT_EVERY, Delivered, Report, Request, SAVE_EVERY, Sender, Target, Ticker};
use crate::error::{SinkError, SinkErrorKind, bus};
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
    let store = Store::open(js, request.key.clone(), info.config.num_replicas).await?;
    let fresh = Checkpoint::new(request.since, request.until, info.state.last_sequence);
    let (mut state, earlier) = store.begin(request, fresh).await?;
    let oldest = SystemTime::from(info.state.first_timestamp);
    let mut report = Report {
        earlier,
        since: Some(state.since()),
        until: Some(state.until()),
        // The stream's max_age dropped the start of the range.
        oldest_stored: (info.state.messages > 0 && oldest > state.since()).then_some(oldest),
        ..Default::default()
    };
    let letters = match request.dry_run {
        true => Letters::default(),
        false => Letters::load(js, target.name).await?,
    };
    let replay_id = state.replay_id(&request.key);
    let mut reader = Reader {
        js,
        target,
        sender: Sender::new(target, &replay_id, request.rate, shutdown),
        letters,
        shutdown,
        dry_run: request.dry_run,
    };
    let result = reader
        .read(&mut stream, &store, &mut state, &mut report, progress)
        .await;
    if request.dry_run {
        return result.map(|()| report);
    }
    // A finished replay forgets its checkpoint: the same command run again is a new
    // replay (say, `--since 2h` after the next outage), not a no-op.
    let saved = match (&result, &report.stopped) {
        (Ok(()), None) => store.clear().await,
        _ => store.save(&state).await,
    };
    result.map_err(|e| {
        SinkError::new(
            SinkErrorKind::Bus,
            format!(
                "{e}; every event up to stream sequence {} is done: run the same command again to continue",
                state.done_seq
            ),
        )
    })?;
    saved?;
    Ok(report)
}

struct Reader<'r, S: Sink> {
    js: &'r jetstream::Context,
    target: &'r Target<'r, S>,
    sender: Sender<'r, S>,
    letters: Letters,
    shutdown: &'r CancellationToken,
    dry_run: bool,
}

impl<S: Sink> Reader<'_, S> {
    async fn read(
        &mut self,
        stream: &mut jetstream::stream::Stream,
        store: &Store,
        state: &mut Checkpoint,
        report: &mut Report,
        progress: &mut dyn FnMut(&Report),
    ) -> Result<(), SinkError> {
        let start_after = state.done_seq;
        let deliver_policy = match start_after {
            0 => DeliverPolicy::ByStartTime {
                start_time: state.since().into(),
            },
            done => DeliverPolicy::ByStartSequence {
                start_sequence: done + 1,
            },
        };
        let settings = self.target.settings;
        let (filter_subject, filter_subjects) = crate::driver::filters(self.js, &settings.subjects);
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
        let mut ticker = Ticker::new();
        let (mut unsaved, mut saved) = (0, Instant::now());
        while pending > 0 {
            let next = tokio::select! {
                next = tokio::time::timeout(STALL, messages.next()) => next,
                () = self.shutdown.cancelled() => {
                    report.stopped = Some("interrupted".to_owned());
                    return Ok(());
                }
            };
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(bus("cannot read the events stream", e)),
                Ok(None) => {
                    report.stopped = Some("the events stream ended the read".to_owned());
                    return Ok(());
                }
                Err(_) => {
                    return Err(bus(
                        "reading the events stream stalled (is NATS reachable?)",
                        format!("nothing for {STALL:?}"),
                    ));
                }
            };
            let (seq, published, left) = {
                let info = message
                    .info()
                    .map_err(|e| bus("an events stream message without metadata", e))?;
                (info.stream_sequence, info.published, info.pending)
            };
            pending = left;
            let published = SystemTime::from(published);
            if seq > state.end_seq || published > state.until() {
                return Ok(());
            }
            // An ordered consumer recreated before its first message (a NATS blip) starts
            // over from the stream's beginning: skip what is before the range or done.
            if seq <= start_after || published < state.since() {
                continue;
            }
            let Some(counted) = self.one(&message, seq).await? else {
                report.stopped = Some("interrupted".to_owned());
                return Ok(());
            };
            count(report, state, counted);
            state.done_seq = seq;
            unsaved += 1;
            if let Some(reason) = self.sender.receiver_down() {
                report.stopped = Some(reason);
                return Ok(());
            }
            if !self.dry_run && (unsaved >= CHECKPOINT_EVERY || saved.elapsed() >= SAVE_EVERY) {
                store.save(state).await?;
                (unsaved, saved) = (0, Instant::now());
            }
            if ticker.due() {
                progress(report);
            }
        }
        Ok(())
    }

    /// Replays one event; `None` when the replay stopped before it was done.
    async fn one(&mut self, message: &Message, seq: u64) -> Result<Option<Counted>, SinkError> {
        let body = Body::new(&message.payload);
        if !self.target.settings.filter.accepts(&message.subject, &body) {
            return Ok(Some(Counted::Filtered));
        }
        let Some(id) = event_id(message, &body) else {
            // Not an envelope: the live sink dead-lettered it already; nothing to send.
            return Ok(Some(Counted::Filtered));
        };
        if self.dry_run {
            return Ok(Some(Counted::Matched(None)));
        }
        let event_type = type_and_guild(&message.subject).0;
        let Some(delivered) = self.sender.send(id, event_type, &body).await else {
            return Ok(None);
        };
        let sink = self.target.name;
        match &delivered {
            // The event may also wait in the DLQ from the live sink: delivered now, its
            // letter would only be sent a second time by a later replay of the DLQ.
            Delivered::Sent | Delivered::Skipped => {
                self.letters.settled(self.js, sink, seq).await?
            }
            Delivered::Failed { .. } if self.letters.holds(seq) => {}
            Delivered::Failed {
                reason,
                status,
                attempts,
            } => {
                let failure = (reason.as_str(), *status, *attempts);
                let payload = message.payload.clone();
                super::dead_letter(self.js, sink, seq, id, event_type, payload, failure).await?;
            }
        }
        Ok(Some(Counted::Matched(Some(delivered))))
    }
}

/// What one event counted as.
enum Counted {
    Filtered,
    /// For this sink; `None` in a dry run.
    Matched(Option<Delivered>),
}

fn count(report: &mut Report, state: &mut Checkpoint, counted: Counted) {
    match counted {
        // The consumer's filter subjects leave out most of these on nats-server 2.10+.
        Counted::Filtered => {}
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
