//! `replay --only failed`: the sink's dead letters whose events were received in the
//! range, delivered again in their events' stream order. Each one the receiver
//! accepts leaves the DLQ; one that fails again stays. So the DLQ is this mode's
//! checkpoint: a second run takes exactly what is still there. The stored checkpoint only
//! pins the range a relative `--since` resolved to on the first run.

use std::time::SystemTime;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint, Store};
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
    let earlier = match request.fresh {
        true => None,
        false => store.load().await?,
    };
    let state = earlier.clone().unwrap_or(Checkpoint {
        since_ms: checkpoint::millis(request.since),
        until_ms: checkpoint::millis(request.until),
        ..Default::default()
    });
    if earlier.is_none() && !request.dry_run {
        store.save(&state).await?;
    }
    let mut report = Report {
        earlier,
        since: Some(state.since()),
        until: Some(state.until()),
        ..Default::default()
    };
    let mut letters = dlq::list(js, target.name).await?;
    // In the events' stream order, not the order they failed in: lanes keep theirs.
    letters.sort_by_key(|l| (l.source_seq.unwrap_or(u64::MAX), l.seq));
    let (since, until) = (state.since(), state.until());
    let mut sender = Sender::new(target, request, shutdown);
    let mut ticker = Ticker::new();
    for letter in letters {
        if !in_range(&letter, since, until) {
            continue;
        }
        report.matched += 1;
        if request.dry_run {
            continue;
        }
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
                dlq::purge(js, target.name, &[letter.seq])
                    .await
                    .map_err(|e| {
                        SinkError::new(
                            SinkErrorKind::Bus,
                            format!(
                                "dead letter {} was delivered but cannot be removed from the DLQ: {e}",
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
    Ok(report)
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
