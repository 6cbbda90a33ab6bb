//! A shard's dispatches onto the bus: nothing already read is dropped, a failed publish
//! is retried with the same `Nats-Msg-Id` until JetStream acknowledges it, and only an
//! event the server can never take (over its max_payload) is skipped, loudly.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use relaycord_bus::backoff::Exponential;
use relaycord_bus::interaction::InteractionKeys;
use relaycord_bus::{
    Dispatch, Envelope, OutgoingMessage, Source, Subjects, dedupe, envelope::now_rfc3339,
};
use tracing::Instrument;

use crate::metrics::IngestMetrics;
use crate::shard::ShardContext;
use crate::window::AckWindow;

/// 100 ms, 200 ms, ... 5 s. No jitter needed: each shard retries its own window, and the
/// server, not contention, is what is down.
const RETRY: Exponential = Exponential::new(Duration::from_millis(100), Duration::from_secs(5));

/// Sends the publish of `dispatch` (read as `seq` on shard `shard_id`) and puts its ack in
/// the window.
pub(crate) async fn publish(
    shard_id: u32,
    dispatch: &Dispatch<'_>,
    ctx: &ShardContext,
    window: &mut AckWindow,
) {
    let received = Instant::now();
    let event_type = dispatch.event_type.as_ref();
    let seq = dispatch.seq;
    let id = dedupe::gateway_key(dispatch);
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
    // Traces (when on): the dispatch read from the gateway, and its publish until the ack,
    // whose context the message carries to every consumer.
    let receive = relaycord_bus::span!(
        "gateway.receive",
        otel.kind = "consumer",
        shard = shard_id,
        seq,
        event_type
    );
    let publishing = relaycord_bus::span!(parent: &receive, "publish", otel.kind = "producer", %id);
    let (subject, message) = publishing.in_scope(|| {
        OutgoingMessage::event(subject_of(dispatch, &ctx.subjects), &envelope).into_parts()
    });

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
    let acked = async move {
        let ack = publish_acked(&js, subject, message, first.ok(), &metrics).await;
        metrics.published.inc();
        if ack.duplicate {
            metrics.duplicates.inc();
        }
        metrics
            .publish_latency
            .observe(received.elapsed().as_secs_f64());
    };
    window.push(seq, acked.instrument(publishing));
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

/// The wait after `attempt` failed retries (0 = the first publish failed).
fn retry_delay(attempt: u32) -> Duration {
    RETRY.delay(attempt.saturating_add(1))
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
}
