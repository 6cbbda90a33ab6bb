//! `replay --only failed`: the sink's dead letters whose events were received in the
//! range, delivered again in their events' stream order. Each one the receiver accepts
//! leaves the DLQ; one that fails again stays. So the DLQ is this mode's checkpoint: a
//! second run takes what is still there. The stored checkpoint only pins the range a
//! relative `--since` resolved to, while a run is unfinished.

use std::time::SystemTime;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, Store};
use super::{Delivered, Report, Request, Sender, Target, Ticker};
use crate::dlq::{self, DeadLetter};
use crate::error::{SinkError, SinkErrorKind};
use crate::{Body, Sink};

pub(super) async fn run<S: Sink>(
    js: &jetstream::Context,
    target: &Target<'_, S>,
    request: &Request,
    shutdown: &CancellationToken,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report, SinkError> {
    let replicas = match js.get_stream(relaycord_bus::streams::DLQ_STREAM).await {
        Ok(mut stream) => stream.info().await.map_or(1, |i| i.config.num_replicas),
        Err(_) => 1,
    };
    let store = Store::open(js, request.key.clone(), replicas).await?;
    let fresh = Checkpoint::new(request.since, request.until, 0);
    let (state, earlier) = store.begin(request, fresh).await?;
    let mut report = Report {
        earlier,
        since: Some(state.since()),
        until: Some(state.until()),
        ..Default::default()
    };
    let mut letters = dlq::list(js, target.name).await?;
    letters.retain(|l| in_range(l, state.since(), state.until()));
    // In the events' stream order, not the order they failed in: lanes keep theirs.
    letters.sort_by_key(|l| (l.source_seq.unwrap_or(u64::MAX), l.seq));
    let replay_id = state.replay_id(&request.key);
    let mut sender = Sender::new(target, &replay_id, request.rate, shutdown);
    let mut ticker = Ticker::new();
    for copies in letters.chunk_by(same_event) {
        report.matched += 1;
        if request.dry_run {
            continue;
        }
        let letter = &copies[0];
        let body = Body::new(&letter.payload);
        let Some(delivered) = sender.send(&letter.id, &letter.event_type, &body).await else {
            report.stopped = Some("interrupted".to_owned());
            break;
        };
        match delivered {
            Delivered::Failed { reason, .. } => {
                tracing::info!(sink = target.name, id = letter.id, %reason, "dead letter failed its replay; it stays");
                report.failed += 1;
            }
            done => {
                match done {
                    Delivered::Sent => report.sent += 1,
                    _ => report.skipped += 1,
                }
                // A crash right here leaves the letter, to be sent again next time.
                let seqs: Vec<u64> = copies.iter().map(|l| l.seq).collect();
                dlq::purge(js, target.name, &seqs).await.map_err(|e| {
                    SinkError::new(
                        SinkErrorKind::Bus,
                        format!(
                            "dead letter {} was delivered but cannot be removed from the DLQ ({e}); run the same command again to continue",
                            letter.seq
                        ),
                    )
                })?;
            }
        }
        if let Some(reason) = sender.receiver_down() {
            report.stopped = Some(reason);
            break;
        }
        if ticker.due() {
            progress(&report);
        }
    }
    if !request.dry_run && report.stopped.is_none() {
        store.clear().await?;
    }
    Ok(report)
}

/// Two letters of one event: a replay that failed on an event stored a second letter
/// when the first had left the DLQ's duplicate window. Sent once, removed together.
fn same_event(a: &DeadLetter, b: &DeadLetter) -> bool {
    a.source_seq.is_some() && a.source_seq == b.source_seq && a.id == b.id
}

/// Whether the letter's event was received in `since..=until`: the envelope's own time,
/// or when the letter was stored if its payload is not an envelope.
fn in_range(letter: &DeadLetter, since: SystemTime, until: SystemTime) -> bool {
    let received = Body::new(&letter.payload)
        .envelope()
        .ok()
        .and_then(|e| e.received_at_time())
        .unwrap_or(letter.stored_at);
    since <= received && received <= until
}
