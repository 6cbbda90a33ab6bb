//! Counting: every event the simulator created, per sink, delivered or dead-lettered;
//! duplicates with the fault that preceded them; the longest end-to-end time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};

use super::faults::{Kind, Record};

/// Calls `f` with every message of `stream` on `filter` (headers only), in order.
pub async fn for_each_message(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    mut f: impl FnMut(&jetstream::Message),
) -> Result<(), async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            headers_only: true,
            filter_subject: filter.to_owned(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let mut pending = consumer.cached_info().num_pending;
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            f(&message?);
            pending = pending.saturating_sub(1);
        }
    }
    Ok(())
}

fn header(message: &jetstream::Message, name: &str) -> Option<String> {
    Some(message.headers.as_ref()?.get(name)?.to_string())
}

/// Every copy of each id stored on `filter` of `stream`, with when it was stored.
pub async fn stored_times(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<HashMap<String, Vec<SystemTime>>, async_nats::Error> {
    let mut out: HashMap<String, Vec<SystemTime>> = HashMap::new();
    for_each_message(js, stream, filter, |message| {
        if let (Some(id), Ok(info)) = (header(message, "Nats-Msg-Id"), message.info()) {
            out.entry(id)
                .or_default()
                .push(SystemTime::from(info.published));
        }
    })
    .await?;
    Ok(out)
}

/// The dead letters of `sink`: event id → reason.
pub async fn dead_letters(
    js: &jetstream::Context,
    sink: &str,
) -> Result<HashMap<String, String>, async_nats::Error> {
    let mut out = HashMap::new();
    for_each_message(js, "RELAYCORD_DLQ", &format!("relaycord.dlq.{sink}"), |m| {
        if let Some(id) = header(m, "Relaycord-Id") {
            let reason = header(m, "Relaycord-Dlq-Reason").unwrap_or_default();
            out.insert(id, reason);
        }
    })
    .await?;
    Ok(out)
}

/// Faults after which a sink may deliver an event twice (docs/bus.md, "Sinks are
/// at-least-once"): a sink process killed or paused past `ack_wait` after the receiver
/// took the event but before the ack, or a NATS node dying with the ack in flight.
fn may_duplicate(kind: Kind, target: &str) -> bool {
    match kind {
        Kind::Kill | Kind::Pause => target.starts_with("sink"),
        Kind::NatsKill => true,
        _ => false,
    }
}

/// How far back a fault can explain a duplicate: a paused sink resumes and its stale
/// delivery lands up to a pause plus a retry later.
const EXPLAINS_FOR: Duration = Duration::from_secs(60);

/// What one sink got.
pub struct SinkCount {
    pub delivered: usize,
    pub dead_lettered: usize,
    pub lost: Vec<String>,
    pub duplicates: Vec<Value>,
    pub unexplained_duplicates: usize,
    pub redeliveries: Option<u64>,
    pub max_latency: Duration,
    pub max_latency_id: String,
}

impl SinkCount {
    /// `expected` id → when created; `got` id → every arrival; `dlq` id → reason.
    pub fn new(
        expected: &HashMap<String, SystemTime>,
        got: &HashMap<String, Vec<SystemTime>>,
        dlq: &HashMap<String, String>,
        faults: &[Record],
        start: SystemTime,
    ) -> Self {
        let mut count = Self {
            delivered: 0,
            dead_lettered: 0,
            lost: Vec::new(),
            duplicates: Vec::new(),
            unexplained_duplicates: 0,
            redeliveries: None,
            max_latency: Duration::ZERO,
            max_latency_id: String::new(),
        };
        for (id, created) in expected {
            match got.get(id) {
                Some(times) => {
                    count.delivered += 1;
                    let first = times.iter().min().expect("at least one arrival");
                    let latency = first.duration_since(*created).unwrap_or_default();
                    if latency > count.max_latency {
                        count.max_latency = latency;
                        count.max_latency_id = id.clone();
                    }
                }
                None if dlq.contains_key(id) => count.dead_lettered += 1,
                None => count.lost.push(id.clone()),
            }
        }
        count.lost.sort();
        for (id, times) in got.iter().filter(|(_, t)| t.len() > 1) {
            let mut times = times.clone();
            times.sort();
            let second = times[1];
            let nearest = faults.iter().rev().find(|f| f.started <= second);
            let explained = faults.iter().rev().any(|f| {
                f.started <= second
                    && second.duration_since(f.started).unwrap_or_default() <= EXPLAINS_FOR
                    && may_duplicate(f.kind, &f.target)
            });
            if !explained {
                count.unexplained_duplicates += 1;
            }
            count.duplicates.push(json!({
                "id": id,
                "copies": times.len(),
                "second_at_s": secs(second.duration_since(start).unwrap_or_default()),
                "nearest_fault": nearest.map(|f| format!("{} {} at {:.1}s", f.kind.name(), f.target, f.at.as_secs_f64())),
                "explained": explained,
            }));
        }
        count
    }

    pub fn to_json(&self) -> Value {
        json!({
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost.len(),
            "lost_ids": &self.lost[..self.lost.len().min(50)],
            "duplicates": self.duplicates.len(),
            "unexplained_duplicates": self.unexplained_duplicates,
            "duplicate_ids": &self.duplicates[..self.duplicates.len().min(200)],
            "redeliveries": self.redeliveries,
            "max_latency_s": secs(self.max_latency),
            "max_latency_id": self.max_latency_id,
        })
    }
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Faults per kind, every kind listed.
pub fn per_kind(faults: &[Record]) -> BTreeMap<&'static str, usize> {
    Kind::ALL
        .iter()
        .map(|k| (k.name(), faults.iter().filter(|f| f.kind == *k).count()))
        .collect()
}
