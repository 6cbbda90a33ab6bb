//! One partition of an ordered sink: its consumer and the loop that pulls from it into
//! the lanes.
//!
//! Each owner of a partition reads it through a consumer of its own,
//! `relaycord-<sink>-p<partition>-g<generation>` (the generation is the lease's KV
//! revision, so it grows with every owner). The new consumer starts at the previous
//! one's ack floor, which is then deleted: whatever the previous owner left unacked
//! (in flight, waiting in a lane, or acked out of order by another lane) comes again, in
//! stream order, and the lane records skip what was already settled. Deleting it also
//! fences an owner that lost its lease without noticing: its pulls find no consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, Message, consumer::DeliverPolicy};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::board::Held;
use super::lane::{self, LaneContext};
use crate::driver::{Driver, consumer_config};
use crate::error::{SinkError, SinkErrorKind};
use crate::ordering::partition;
use crate::settings::DriverSettings;
use crate::{Body, Sink};

/// How long one pull waits on the server; it bounds how long a stop waits for it.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// A partition consumer's ack wait. Its owner holds events unacked while their lane is
/// busy, however long that is, and a dead owner is replaced through the lease, not the
/// ack wait: a redelivery would only bring an event the owner already holds.
const HOLD_ACK_WAIT: Duration = Duration::from_secs(3600);

/// Events one partition holds at most (waiting in lanes or being delivered): the
/// consumer's `max_ack_pending`. A blocked lane can fill it; then the partition waits.
pub fn window(concurrency: usize) -> usize {
    (concurrency * 16).max(1024)
}

fn prefix(sink: &str, index: u32) -> String {
    format!(
        "{}-p{index}-g",
        Driver::<crate::AnySink>::consumer_name(sink)
    )
}

/// The generation of a consumer named like this partition's, if it is one.
fn generation(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.parse().ok()
}

/// Creates this owner's consumer of partition `index`, starting where the previous
/// incarnation's acks end, and deletes the previous ones.
pub async fn incarnate(
    js: &jetstream::Context,
    s: &DriverSettings,
    index: u32,
    own: u64,
) -> Result<jetstream::consumer::PullConsumer, SinkError> {
    fn bus<E: std::error::Error + Send + Sync + 'static>(
        what: String,
    ) -> impl FnOnce(E) -> SinkError {
        move |e| SinkError::with_source(SinkErrorKind::Bus, what, e)
    }
    let stream = js
        .get_stream(&s.stream)
        .await
        .map_err(bus(format!("stream {} is not available", s.stream)))?;
    let prefix = prefix(&s.name, index);
    let mut older = Vec::new();
    let mut names = stream.consumer_names();
    while let Some(name) = names.next().await {
        let name = name.map_err(bus("cannot list the stream's consumers".to_owned()))?;
        if let Some(generation) = generation(&name, &prefix) {
            older.push((generation, name));
        }
    }
    older.sort_unstable();
    if older.last().is_some_and(|(g, _)| *g >= own) {
        return Err(SinkError::new(
            SinkErrorKind::Bus,
            format!("partition {index} of {} has a newer owner", s.name),
        ));
    }
    // The newest incarnation's floor; before any, the unordered consumer's (a sink
    // switched to ordering goes on where it was); else the stream's beginning.
    let shared = Driver::<crate::AnySink>::consumer_name(&s.name);
    let mut floor = 0;
    for name in older.iter().rev().map(|(_, n)| n).chain([&shared]) {
        if let Ok(info) = stream.consumer_info(name).await {
            floor = info.ack_floor.stream_sequence;
            break;
        }
    }
    let name = format!("{prefix}{own}");
    let mut config = consumer_config(js, s, name.clone());
    config.ack_wait = HOLD_ACK_WAIT;
    config.max_ack_pending = window(s.concurrency) as i64;
    if floor > 0 {
        config.deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: floor + 1,
        };
    }
    let consumer = stream.create_consumer(config).await.map_err(bus(format!(
        "cannot create consumer {name} on {}",
        s.stream
    )))?;
    for (_, old) in older {
        if let Err(error) = stream.delete_consumer(&old).await {
            tracing::warn!(sink = %s.name, consumer = %old, %error, "cannot delete the partition's previous consumer");
        }
    }
    tracing::info!(sink = %s.name, partition = index, consumer = %name, from = floor + 1, "partition taken");
    Ok(consumer)
}

/// Pulls partition `index` into its lanes until the partition stops (or its consumer
/// is gone: another owner took it); then lets the lanes finish their attempts in flight.
pub async fn run<S: Sink>(
    ctx: Arc<LaneContext<S>>,
    consumer: jetstream::consumer::PullConsumer,
    index: u32,
) {
    let s = Arc::clone(&ctx.worker.settings);
    let places = Arc::new(Semaphore::new(window(s.concurrency)));
    let mut lanes = JoinSet::new();
    'pull: loop {
        while let Some(done) = lanes.try_join_next() {
            reap(&s.name, done);
        }
        let first = tokio::select! {
            () = ctx.stop.cancelled() => break,
            place = Arc::clone(&places).acquire_owned() => place.expect("never closed"),
        };
        let mut slots = vec![first];
        while let Ok(place) = Arc::clone(&places).try_acquire_owned() {
            slots.push(place);
        }
        let batch = consumer
            .batch()
            .max_messages(slots.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(sink = %s.name, partition = index, %error, "pull request failed");
                if gone(&consumer).await {
                    break;
                }
                pause(&ctx).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = ctx.stop.cancelled() => break 'pull,
                next = batch.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let Some(place) = slots.pop() else { break };
                    if let Some(lane) = admit(&ctx, index, message, place).await {
                        lanes.spawn(lane::run(Arc::clone(&ctx), lane));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(sink = %s.name, partition = index, %error, "pulling messages failed");
                    if gone(&consumer).await {
                        break 'pull;
                    }
                    pause(&ctx).await;
                    break;
                }
                None => break,
            }
        }
    }
    ctx.stop.cancel();
    while let Some(done) = lanes.join_next().await {
        reap(&s.name, done);
    }
}

/// Puts a pulled event in its lane; the lane's name when the lane was idle and needs a
/// task. Events of other partitions, and those the filter refuses, are acked at once.
async fn admit<S: Sink>(
    ctx: &LaneContext<S>,
    index: u32,
    message: Message,
    place: OwnedSemaphorePermit,
) -> Option<String> {
    let worker = &ctx.worker;
    let s = &worker.settings;
    let Ok(info) = message.info() else {
        worker.ack(&message, AckKind::Ack).await;
        return None;
    };
    let stream_seq = info.stream_sequence;
    let body = Body::new(&message.payload);
    let lane = s.ordering.lane(&message.subject, &body).unwrap_or_default();
    if partition(&lane, s.partitions) != index {
        // Another partition's: every partition reads all of the sink's events.
        worker.ack(&message, AckKind::Ack).await;
        return None;
    }
    if !s.filter.accepts(&message.subject, &body) {
        worker.conclude(&message, AckKind::Ack, "skipped").await;
        return None;
    }
    let held = Held {
        message,
        stream_seq,
        since: Instant::now(),
        _place: place,
    };
    match ctx.board.push(&lane, held) {
        Some(true) => Some(lane),
        // Queued behind the lane's running task, or already held (a redelivery).
        Some(false) | None => None,
    }
}

/// Whether the consumer was deleted (a newer owner took the partition).
async fn gone(consumer: &jetstream::consumer::PullConsumer) -> bool {
    let mut consumer = consumer.clone();
    match consumer.info().await {
        Ok(_) => false,
        Err(error) => error.to_string().contains("not found"),
    }
}

async fn pause<S: Sink>(ctx: &LaneContext<S>) {
    tokio::select! {
        () = ctx.stop.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

fn reap(sink: &str, done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done
        && error.is_panic()
    {
        tracing::error!(%sink, "a lane task panicked; its partition's next owner delivers its events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_belong_to_one_partition_of_one_sink() {
        let p = prefix("hook", 1);
        assert_eq!(p, "relaycord-hook-p1-g");
        assert_eq!(generation("relaycord-hook-p1-g42", &p), Some(42));
        assert_eq!(generation("relaycord-hook-p11-g42", &p), None);
        assert_eq!(generation("relaycord-hook-p1-p1-g42", &p), None);
        assert_eq!(generation("relaycord-hook", &p), None);
        assert_eq!(generation("relaycord-hook-p1-g4x", &p), None);
    }
}
