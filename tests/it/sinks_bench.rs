//! What sink-side dedupe costs. Not part of the normal run (it only prints figures):
//!
//! ```text
//! cargo test --release -p relaycord --test it sinks_bench -- --ignored --nocapture
//! ```
//!
//! The sink itself does nothing, so the figures are the driver's own ceiling: with dedupe
//! each event adds a KV lookup and a KV write to its ack.

use std::time::{Duration, Instant};

use relaycord_testkit::{RecordingSink, Stack, eventually, run_driver, test_config};

const EVENTS: u64 = 5_000;

async fn events_per_second(bus: &Stack, name: &str, dedupe: bool) -> f64 {
    let config = relaycord_sinks::SinkConfig {
        dedupe,
        concurrency: 64,
        ..test_config(name)
    };
    let sink = RecordingSink::open();
    let started = Instant::now();
    let run = run_driver(bus, &config, sink.clone());
    assert!(
        eventually(Duration::from_secs(300), async || sink.delivered().len()
            as u64
            >= EVENTS)
        .await
    );
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    run.stop().await;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn sinks_bench_dedupe_cost() {
    let bus = Stack::builder().start().await;
    bus.messages(0, EVENTS).await;
    let mut off = Vec::new();
    let mut on = Vec::new();
    // Alternate so that warm-up and page cache favour neither side.
    for round in 0..3 {
        off.push(events_per_second(&bus, &format!("off{round}"), false).await);
        on.push(events_per_second(&bus, &format!("on{round}"), true).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "dedupe off: {off:.0} events/s, dedupe on: {on:.0} events/s, ratio on/off = {:.2} ({EVENTS} events, concurrency 64, no-op sink, median of 3)",
        on / off
    );
}

/// What ordering costs the HTTP sink, in one run: the same 20,000 events in 200 channels
/// delivered by the real HTTP sink (signed, defaults otherwise: dedupe on for `none`, lane
/// records and 4 partitions for `channel`) into a local receiver that accepts at once.
///
/// ```text
/// cargo test --release -p relaycord --test it sinks_bench_ordering -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn sinks_bench_ordering_cost() {
    use relaycord_sinks::ordering::Ordering;
    use relaycord_testkit::{TestReceiver, http_config, run_sink};

    const CHANNELS: u64 = 200;
    const TOTAL: u64 = 20_000;
    let bus = Stack::builder().start().await;
    for i in 0..TOTAL {
        let channel = 1000 + i % CHANNELS;
        let data =
            format!(r#"{{"id":"{i}","channel_id":"{channel}","guild_id":"1","content":"x"}}"#);
        bus.publish(&format!("bench:{i}"), "MESSAGE_CREATE", "1", &data)
            .await;
    }
    let rate = async |name: String, ordering: Ordering| {
        let rx = TestReceiver::start(Duration::ZERO).await;
        let config = relaycord_sinks::SinkConfig {
            ordering: Some(ordering),
            concurrency: 64,
            ..http_config(&name, &rx.url)
        };
        let started = Instant::now();
        let run = run_sink(&bus, &config);
        assert!(
            eventually(Duration::from_secs(600), async || rx.distinct() as u64
                >= TOTAL)
            .await
        );
        let rate = TOTAL as f64 / started.elapsed().as_secs_f64();
        run.stop().await;
        rate
    };
    let (mut none, mut channel) = (Vec::new(), Vec::new());
    for round in 0..3 {
        none.push(rate(format!("none{round}"), Ordering::None).await);
        channel.push(rate(format!("channel{round}"), Ordering::Channel).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (none, channel) = (median(&mut none), median(&mut channel));
    println!(
        "http sink, {TOTAL} events in {CHANNELS} channels, concurrency 64: ordering none {none:.0} events/s, channel {channel:.0} events/s, ratio channel/none = {:.2} (median of 3)",
        channel / none
    );
}
