//! Ingest throughput against its ceiling. Not part of the normal run (it only prints figures):
//!
//! ```text
//! cargo test --release -p relaycord --test it ingest_bench -- --ignored --nocapture
//! ```
//!
//! Ingest: the simulator sends N events as fast as it can over 4 shards; ingest parses each,
//! builds its envelope and dedupe id and publishes it, waiting for JetStream's ack with its
//! window in flight per shard. The clock stops when the stream holds all N.
//! Baseline, same process, same server, same run: the same N envelopes (same sizes, ids
//! and headers) published straight from async-nats with the same in-flight window per shard —
//! what the bus alone can take. The ratio is what ingest keeps of that ceiling; it includes
//! the in-process simulator's own cost of framing and sending, which a real deployment does
//! not pay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use relaycord_bus::{Envelope, OutgoingMessage, Source};
use relaycord_sim::SentDispatch;
use serde_json::value::RawValue;

use relaycord_testkit::Stack;

const EVENTS: u64 = 20_000;
const SHARDS: u32 = 4;
/// `ingest.window`'s default.
const WINDOW: usize = 256;

async fn wait_stream(js: &jetstream::Context, name: &str, messages: u64) {
    let mut stream = js.get_stream(name).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while stream.info().await.unwrap().state.messages < messages {
        assert!(Instant::now() < deadline, "{name} never reached {messages}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One shard's envelopes published with at most `WINDOW` acks outstanding.
async fn publish_windowed(js: jetstream::Context, batch: Vec<OutgoingMessage>) {
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for message in batch {
        if in_flight.len() == WINDOW {
            in_flight.pop_front().unwrap().await.unwrap();
        }
        let (subject, publish) = message.into_parts();
        in_flight.push_back(js.send_publish(subject, publish).await.unwrap());
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
}

fn envelopes(sent: &[SentDispatch]) -> Vec<Vec<OutgoingMessage>> {
    let mut per_shard = vec![Vec::new(); SHARDS as usize];
    for d in sent {
        let data = RawValue::from_string(d.data.clone()).unwrap();
        let id = format!("bench:{}:{}", d.shard, d.seq);
        let guild = d.guild_id.map(|g| g.to_string());
        let envelope = Envelope {
            id: id.as_str().into(),
            source: Source::Gateway,
            event_type: d.event_type.as_str().into(),
            shard: Some(d.shard),
            seq: Some(d.seq),
            guild_id: guild.as_deref().map(Into::into),
            received_at: relaycord_bus::envelope::now_rfc3339().into(),
            data: &data,
        };
        let subject = format!(
            "bench.{}.{}",
            d.event_type,
            guild.as_deref().unwrap_or("none")
        );
        per_shard[d.shard as usize].push(OutgoingMessage::event(subject, &envelope));
    }
    per_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn ingest_bench() {
    let stack = Stack::builder().shards(SHARDS).ingest().start().await;
    let js = stack.js.clone();
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut ingest = Vec::new();
    let mut baseline = Vec::new();
    // Alternate so that warm-up and the page cache favour neither side.
    for _round in 0..3 {
        let before_log = stack.sim.sent().len();
        let before = stack.stream_messages().await;
        let started = Instant::now();
        let generated = stack.burst(EVENTS).finished().await;
        assert_eq!(generated, EVENTS);
        wait_stream(&js, "DISCORD_GATEWAY", before + EVENTS).await;
        ingest.push(EVENTS as f64 / started.elapsed().as_secs_f64());

        let batches = envelopes(&stack.sim.sent()[before_log..]);
        let before = js
            .get_stream("BENCH")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        let started = Instant::now();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batch| tokio::spawn(publish_windowed(js.clone(), batch)))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        wait_stream(&js, "BENCH", before + EVENTS).await;
        baseline.push(EVENTS as f64 / started.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ingest, baseline) = (median(&mut ingest), median(&mut baseline));
    println!(
        "ingest: {ingest:.0} events/s, raw JetStream publish: {baseline:.0} events/s, ratio = {:.2} ({EVENTS} events, {SHARDS} shards, window {WINDOW} per shard, median of 3)",
        ingest / baseline
    );
    stack.stop().await;
}
