//! Interactions throughput and latency, as a ratio against a baseline measured in the
//! same run. Ignored by default; run it with:
//!
//! ```sh
//! cargo test --release -p relaycord --test it interactions_bench -- --ignored --nocapture
//! ```
//!
//! Three servers get the same load (pre-signed requests, each a distinct interaction,
//! over keep-alive HTTP/1.1 connections from a fixed number of concurrent clients):
//! 1. baseline: a bare axum handler answering a constant body (the HTTP stack's ceiling);
//! 2. Relaycord, route with a configured response: verify + publish (JetStream ack) + answer;
//! 3. Relaycord, route to a NATS handler (another connection, queue group): verify +
//!    publish + request/reply round trip + decision record.
//!
//! `BENCH_REQUESTS` (default 20000) and `BENCH_CONCURRENCY` (64) tune it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use relaycord_interactions::RouteConfig;
use relaycord_sim::{SignedRequest, SimConfig};
use relaycord_testkit::{Stack, nats_handler, nats_route, send_to, start_sim};
use serde_json::json;
use tokio::net::TcpListener;

const PONG: &str = r#"{"type":4,"data":{"content":"pong"}}"#;

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Sends `requests`; each must be answered 200 with `expected` (so that a row measures
/// the path it names: a deferral or an apology in the handler row would not).
async fn load(
    url: &str,
    requests: Vec<SignedRequest>,
    concurrency: usize,
    expected: &serde_json::Value,
) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let count = requests.len();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(requests)
        .map(|request| {
            let http = http.clone();
            async move {
                let sent = Instant::now();
                let (status, body) = send_to(&http, url, &request).await.expect("response");
                assert_eq!(status, 200);
                let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                assert_eq!(&body, expected, "not the answer this row measures");
                sent.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    latencies.sort();
    Run {
        rps: count as f64 / elapsed.as_secs_f64(),
        p50: latencies[count / 2],
        p99: latencies[count * 99 / 100],
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(label: &str, run: &Run, baseline: &Run) {
    println!(
        "{label:<44} {:>9.0} req/s  ({:>5.2} of baseline)  p50 {:>7.2} ms  p99 {:>7.2} ms",
        run.rps,
        run.rps / baseline.rps,
        run.p50.as_secs_f64() * 1e3,
        run.p99.as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with --ignored --nocapture (see the module docs)"]
async fn interactions_bench() {
    let n = env("BENCH_REQUESTS", 20_000);
    let concurrency = env("BENCH_CONCURRENCY", 64);

    // 1. Baseline: bare axum, constant answer, same client and load.
    let echo = axum::Router::new().route("/interactions", axum::routing::post(|| async { PONG }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_url = format!("http://{}/interactions", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, echo).await });

    let sim = start_sim(SimConfig::default()).await;
    let discord = sim.interactions();
    let sign = |name: &str, n: usize| -> Vec<SignedRequest> {
        (0..n)
            .map(|_| discord.signed(&discord.command(name)))
            .collect()
    };
    let routes = vec![
        RouteConfig {
            command: Some("fixed".into()),
            response: Some(json!({"type": 4, "data": {"content": "pong"}})),
            ..RouteConfig::default()
        },
        nats_route("ping", "relaycord.handlers.ping"),
    ];
    let stack = Stack::builder()
        .simulator(sim)
        .interactions(routes)
        .start()
        .await;
    let version = {
        let client = async_nats::connect(stack.nats_url()).await.unwrap();
        client.server_info().version
    };
    // The handler runs on its own connection, as a separate service would.
    let handler_client = async_nats::connect(stack.nats_url()).await.unwrap();
    let _handler = nats_handler(
        &handler_client,
        "relaycord.handlers.ping",
        Duration::ZERO,
        PONG,
    )
    .await;

    // Every row answers the same message: the constant, the route's response, the handler's.
    let pong: serde_json::Value = serde_json::from_str(PONG).unwrap();
    // Warm up every path (connections, JIT-free but caches and pools).
    load(&echo_url, sign("fixed", 500), concurrency, &pong).await;
    load(&stack.url, sign("fixed", 500), concurrency, &pong).await;
    load(&stack.url, sign("ping", 500), concurrency, &pong).await;

    let baseline = load(&echo_url, sign("fixed", n), concurrency, &pong).await;
    let fixed = load(&stack.url, sign("fixed", n), concurrency, &pong).await;
    let handled = load(&stack.url, sign("ping", n), concurrency, &pong).await;

    println!();
    println!(
        "interactions bench: {n} requests per row, {concurrency} concurrent keep-alive clients, nats-server {version}, {} CPUs",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    row("baseline: bare axum, constant answer", &baseline, &baseline);
    row("verify + publish + configured response", &fixed, &baseline);
    row(
        "verify + publish + NATS handler round trip",
        &handled,
        &baseline,
    );
    stack.stop().await;
}
