//! What traces cost ingest. Not part of the normal run (it only prints figures):
//!
//! ```text
//! scripts/bench.sh traces
//! cargo test --release -p relaycord --test it traces_bench -- --ignored --nocapture
//! ```
//!
//! A `relaycord ingest` child process (tracing is set up per process) holds 4 simulated
//! shards; the simulator sends N events as fast as it can and the clock stops when the
//! stream holds all N, as in `ingest_bench`. Three modes, each run on a fresh stack
//! (nats-server and simulator) so that none inherits another's stream: tracing off, on with
//! 1 % of traces sampled, on with all sampled. Traced runs export to an OTLP/HTTP endpoint
//! in this process that answers 200 and only counts what it got, so the figure is
//! Relaycord's cost (spans, propagation, batching, protobuf, HTTP), not a collector's.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use relaycord_sim::SimConfig;
use relaycord_testkit::Stack;
use tokio::net::TcpListener;
use tokio::process::Command;

const EVENTS: u64 = 20_000;
const SHARDS: u32 = 4;

/// (label, OTEL_TRACES_SAMPLER_ARG; `None`: tracing off).
const MODES: [(&str, Option<&str>); 3] = [
    ("off", None),
    ("1 % sampled", Some("0.01")),
    ("100 % sampled", Some("1.0")),
];

#[derive(Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
}

async fn otlp_sink() -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    let counts = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            async {}
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Events per second through one ingest process in this mode.
async fn run(sampled: Option<&str>, otlp: &str) -> f64 {
    let stack = Stack::builder()
        .sim_config(SimConfig {
            shards: SHARDS,
            ..SimConfig::default()
        })
        .start()
        .await;
    let mut ingest = Command::new(env!("CARGO_BIN_EXE_relaycord"));
    ingest
        .arg("ingest")
        .env("RELAYCORD_NATS__URL", stack.nats_url())
        .env("DISCORD_TOKEN", &stack.sim.config().token)
        .env("RELAYCORD_DISCORD__API_BASE", stack.sim.api_base())
        .env("RELAYCORD_INGEST__METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if let Some(ratio) = sampled {
        ingest
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", ratio);
    }
    let mut ingest = ingest.spawn().expect("spawn relaycord ingest");
    stack.ready().await;
    // The READY-time events (GUILD_CREATE) are on the stream before the clock starts.
    let mut settled = stack.stream_messages().await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stack.stream_messages().await;
        if now == settled && now > 0 {
            break;
        }
        settled = now;
    }
    let started = Instant::now();
    let generated = stack.burst(EVENTS).finished().await;
    assert_eq!(generated, EVENTS);
    let deadline = Instant::now() + Duration::from_secs(600);
    while stack.stream_messages().await < settled + EVENTS {
        assert!(
            Instant::now() < deadline,
            "the stream never held every event"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    ingest.start_kill().unwrap();
    ingest.wait().await.unwrap();
    stack.stop().await;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn traces_bench() {
    let (otlp, received) = otlp_sink().await;
    let mut rates = vec![Vec::new(); MODES.len()];
    // Alternate so that warm-up and the page cache favour no mode.
    for _round in 0..3 {
        for (i, (_, sampled)) in MODES.iter().enumerate() {
            rates[i].push(run(*sampled, &otlp).await);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rates: Vec<f64> = rates.into_iter().map(median).collect();
    for ((label, _), rate) in MODES.iter().zip(&rates) {
        println!(
            "ingest, tracing {label}: {rate:.0} events/s, ratio to off = {:.2}",
            rate / rates[0]
        );
    }
    println!(
        "({EVENTS} events, {SHARDS} shards, median of 3 rounds; OTLP received {} requests, {:.1} MiB)",
        received.requests.load(Ordering::Relaxed),
        received.bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
    );
}
