//! Interactions throughput and latency, as a ratio against a baseline measured in the
//! same run. Ignored by default; run it with:
//!
//! ```sh
//! cargo test --release -p relaycord --test it interactions_bench -- --ignored --nocapture
//! ```
//!
//! Every server measured is its own process, as deployed, so that the load generator (this
//! process) and the server share the 2 CPUs through the OS scheduler only, not one tokio
//! runtime; and so that each one's CPU time can be read from `/proc`:
//! 1. baseline: a bare axum handler answering a constant body (the HTTP stack's ceiling),
//!    served by this test binary re-run as a child (`baseline_server` below);
//! 2. `relaycord interactions` (the release binary as a child), route with a configured
//!    response: verify + publish (JetStream ack) + answer;
//! 3. the same process, route to a NATS handler (in this process, on its own connection,
//!    queue group): verify + publish + claim + request/reply round trip + `answered` record.
//!
//! The load is the same for all three: pre-signed requests, each a distinct interaction,
//! sent over keep-alive HTTP/1.1 connections (bare hyper, one request in flight per
//! connection) by `BENCH_CONCURRENCY` clients (default 64), `BENCH_REQUESTS` (default
//! 20000) per row. `BENCH_ROUNDS` (default 3) alternates the rows and keeps each row's
//! median round, so that a burst of the machine's other work does not decide a ratio.
//! Besides req/s and p50/p99 it prints each row's CPU seconds per process and the requests
//! per CPU-second of the server: the per-core figure of the scale notes (docs/benchmarks.md).
//! `BENCH_RELAYCORD_BIN=path/to/relaycord` measures another build of the binary instead;
//! `BENCH_RELAYCORD_BEFORE=path/to/relaycord` measures one *as well*, in the same run: a second
//! process against the same nats-server whose rows alternate with this build's, so that a
//! before/after comparison sees the same machine load (the figure that matters on a shared
//! machine is CPU per request, printed in µs for the server and nats-server).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request};
use hyper_util::rt::TokioIo;
use relaycord_sim::{SignedRequest, SimConfig};
use relaycord_testkit::{Stack, nats_handler, start_sim};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const PONG: &str = r#"{"type":4,"data":{"content":"pong"}}"#;
const PATH: &str = "/interactions";
/// Set in the environment of this binary re-run as the baseline server.
const BASELINE_ENV: &str = "RELAYCORD_BENCH_BASELINE";

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// CPU seconds used during the row by the server, nats-server and the load generator.
    cpu: [f64; 3],
}

/// A request as sent: the body and Discord's two signature headers.
struct Prepared {
    body: Bytes,
    signature: HeaderValue,
    timestamp: HeaderValue,
}

fn prepare(request: SignedRequest) -> Prepared {
    let header = |v: Option<String>| HeaderValue::from_str(&v.expect("signed")).unwrap();
    Prepared {
        body: Bytes::from(request.body),
        signature: header(request.signature),
        timestamp: header(request.timestamp),
    }
}

/// One keep-alive connection sending requests (taken from `next`) one at a time until
/// none are left; returns each one's latency.
async fn client(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    next: Arc<AtomicUsize>,
    expected: Arc<serde_json::Value>,
) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let expected_bytes = expected.to_string();
    let mut latencies = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = requests.get(i) else {
            return latencies;
        };
        let http = Request::post(PATH)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("x-signature-ed25519", request.signature.clone())
            .header("x-signature-timestamp", request.timestamp.clone())
            .body(Body::from(request.body.clone()))
            .unwrap();
        let sent = Instant::now();
        sender.ready().await.expect("connection open");
        let response = sender.send_request(http).await.expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
            .await
            .expect("body");
        latencies.push(sent.elapsed());
        assert_eq!(status, 200, "{body:?}");
        // So that a row measures the path it names: a deferral or an apology would not.
        if body != expected_bytes.as_bytes() {
            let got: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(&got, &*expected, "not the answer this row measures");
        }
    }
}

/// Sends every request with `concurrency` connections; each must be answered 200 with
/// `expected`.
async fn load(
    addr: SocketAddr,
    requests: Vec<SignedRequest>,
    concurrency: usize,
    expected: &serde_json::Value,
    pids: [u32; 3],
) -> Run {
    let count = requests.len();
    let requests = Arc::new(requests.into_iter().map(prepare).collect::<Vec<_>>());
    let next = Arc::new(AtomicUsize::new(0));
    let expected = Arc::new(expected.clone());
    let cpu_before = pids.map(cpu_seconds);
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(client(
                addr,
                Arc::clone(&requests),
                Arc::clone(&next),
                Arc::clone(&expected),
            ))
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for c in clients {
        latencies.extend(c.await.expect("client"));
    }
    let elapsed = started.elapsed();
    let cpu_after = pids.map(cpu_seconds);
    latencies.sort();
    Run {
        rps: count as f64 / elapsed.as_secs_f64(),
        p50: latencies[count / 2],
        p99: latencies[count * 99 / 100],
        cpu: [0, 1, 2].map(|i| cpu_after[i] - cpu_before[i]),
    }
}

/// User + system CPU seconds of a process so far; NaN once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    relaycord_testkit::proc::cpu_seconds(pid).unwrap_or(f64::NAN)
}

/// The nats-server child of this process (the stack's).
fn nats_server_pid() -> u32 {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            stat.contains("(nats-server)") && parent == Some(me.as_str())
        })
        .expect("the stack's nats-server is a child of this process")
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measured row: a server, the command its requests carry, and its rounds.
struct Row {
    label: String,
    addr: SocketAddr,
    /// The server, nats-server and this process (the load generator).
    pids: [u32; 3],
    command: &'static str,
    runs: Vec<Run>,
}

impl Row {
    fn new(label: &str, server: &Server, nats: u32, command: &'static str) -> Self {
        Self {
            label: label.to_owned(),
            addr: server.addr,
            pids: [server.pid(), nats, std::process::id()],
            command,
            runs: Vec::new(),
        }
    }
}

/// The median over rounds of `f`, and its spread (lowest, highest).
fn median_by(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    spread(runs, f).1
}

fn spread(runs: &[Run], f: impl Fn(&Run) -> f64) -> (f64, f64, f64) {
    let mut values: Vec<f64> = runs.iter().map(f).collect();
    values.sort_by(f64::total_cmp);
    (
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    )
}

fn print_row(row: &Row, baseline_rps: f64, requests: usize) {
    let per_request = |i: usize| move |r: &Run| r.cpu[i] / requests as f64 * 1e6;
    let (s_lo, server, s_hi) = spread(&row.runs, per_request(0));
    let (n_lo, nats, n_hi) = spread(&row.runs, per_request(1));
    let rps = median_by(&row.runs, |r| r.rps);
    let p50 = median_by(&row.runs, |r| r.p50.as_secs_f64() * 1e3);
    let p99 = median_by(&row.runs, |r| r.p99.as_secs_f64() * 1e3);
    let generator = median_by(&row.runs, per_request(2));
    println!(
        "{:<52} {rps:>7.0} req/s ({:>4.2} of baseline)  p50 {p50:>6.2} ms  p99 {p99:>6.2} ms  \
         CPU µs/req: server {server:.1} ({s_lo:.1}–{s_hi:.1}), nats {nats:.1} ({n_lo:.1}–{n_hi:.1}), \
         load {generator:.1}",
        row.label,
        rps / baseline_rps,
    );
}

/// A child process killed when dropped, with where it listens.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// This test binary again, serving the baseline in its own process.
async fn spawn_baseline() -> Server {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "interactions_bench::baseline_server",
            "--exact",
            "--ignored",
        ])
        .args(["--nocapture", "--test-threads", "1"])
        .env(BASELINE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("re-run this test binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        // libtest may print the test's name first on the same line.
        if let Some((_, addr)) = line.split_once("baseline listening on ") {
            let addr = addr.parse().unwrap();
            return Server { child, addr };
        }
    }
    panic!("the baseline server did not start");
}

/// Not a test: the baseline server when run by [`spawn_baseline`] (returns at once
/// otherwise). A multi-thread runtime with one worker per CPU, as `relaycord` has.
#[test]
#[ignore = "the baseline of interactions_bench, run as its child process"]
fn baseline_server() {
    if std::env::var_os(BASELINE_ENV).is_none() {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let echo = axum::Router::new().route(PATH, axum::routing::post(|| async { PONG }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("baseline listening on {}", listener.local_addr().unwrap());
        axum::serve(listener, echo).await.unwrap();
    });
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `relaycord interactions` with the two routes measured, against the stack's NATS.
async fn spawn_relaycord(
    stack: &Stack,
    dir: &tempfile::TempDir,
    binary: std::ffi::OsString,
    prefix: &str,
) -> Server {
    let (addr, metrics) = (free_addr(), free_addr());
    let path = dir.path().join(format!("relaycord-{}.toml", addr.port()));
    let toml = format!(
        r#"
[nats]
url = "{nats}"
subject_prefix = "{prefix}"
[discord]
public_key = "{key}"
api_base = "{api}"
[interactions]
listen = "{addr}"
metrics_listen = "{metrics}"
[[interactions.routes]]
command = "fixed"
response = {{ type = 4, data = {{ content = "pong" }} }}
[[interactions.routes]]
command = "ping"
handler = {{ nats = "relaycord.handlers.ping" }}
"#,
        nats = stack.config.nats.url,
        key = stack.config.discord.public_key,
        api = stack.config.discord.api_base,
    );
    std::fs::write(&path, toml).unwrap();
    let child = Command::new(binary)
        .arg("--config")
        .arg(&path)
        .arg("interactions")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the relaycord binary");
    let url = format!("http://{addr}{PATH}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http.get(&url).send().await.is_ok_and(|r| r.status() == 405) {
        assert!(
            Instant::now() < deadline,
            "relaycord interactions did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server { child, addr }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with --ignored --nocapture (see the module docs)"]
async fn interactions_bench() {
    let n = env("BENCH_REQUESTS", 20_000);
    let concurrency = env("BENCH_CONCURRENCY", 64);
    let rounds = env("BENCH_ROUNDS", 3).max(1);

    let baseline_server = spawn_baseline().await;
    let sim = start_sim(SimConfig::default()).await;
    let discord = sim.interactions();
    let sign = |name: &str, n: usize| -> Vec<SignedRequest> {
        (0..n)
            .map(|_| discord.signed(&discord.command(name)))
            .collect()
    };
    let stack = Stack::builder().simulator(sim).start().await;
    let version = {
        let client = async_nats::connect(stack.nats_url()).await.unwrap();
        client.server_info().version
    };
    let dir = tempfile::tempdir().unwrap();
    // Another build of the binary with BENCH_RELAYCORD_BIN (not RELAYCORD_…: that prefix is
    // the config's); BENCH_RELAYCORD_BEFORE adds one measured alongside.
    let binary = std::env::var_os("BENCH_RELAYCORD_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_relaycord").into());
    let prefix = stack.config.nats.subject_prefix.clone();
    let relaycord = spawn_relaycord(&stack, &dir, binary, &prefix).await;
    // Its own prefix, so its own streams, buckets and late-reply worker: neither process
    // reads the other's replies (that CPU would land on the wrong row).
    let before = match std::env::var_os("BENCH_RELAYCORD_BEFORE") {
        Some(binary) => Some(spawn_relaycord(&stack, &dir, binary, "before").await),
        None => None,
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

    let nats = nats_server_pid();
    // Every row answers the same message: the constant, the route's response, the handler's.
    let pong: serde_json::Value = serde_json::from_str(PONG).unwrap();
    let mut rows = vec![Row::new(
        "baseline: bare axum, constant answer",
        &baseline_server,
        nats,
        "fixed",
    )];
    let builds = [(before.as_ref(), "before: "), (Some(&relaycord), "")];
    for (command, path) in [
        ("fixed", "verify + publish + configured response"),
        ("ping", "verify + publish + NATS handler round trip"),
    ] {
        for (server, build) in builds {
            if let Some(server) = server {
                rows.push(Row::new(&format!("{build}{path}"), server, nats, command));
            }
        }
    }
    // Warm up every path (connections, caches, pools, the streams' first blocks).
    for row in &rows {
        load(
            row.addr,
            sign(row.command, 1000),
            concurrency,
            &pong,
            row.pids,
        )
        .await;
    }
    for _ in 0..rounds {
        for row in &mut rows {
            let requests = sign(row.command, n);
            let run = load(row.addr, requests, concurrency, &pong, row.pids).await;
            row.runs.push(run);
        }
    }

    println!();
    println!(
        "interactions bench: {n} requests per row, {concurrency} keep-alive clients, median of \
         {rounds} rounds, nats-server {version}, {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let baseline_rps = median_by(&rows[0].runs, |r| r.rps);
    for row in &rows {
        print_row(row, baseline_rps, n);
    }
    // How often the late-reply worker read each handler reply: more than once means it
    // read the reply before the owner's `answered` record and put it back (nak).
    let js = async_nats::jetstream::new(handler_client.clone());
    let replies = js
        .get_stream(relaycord_interactions::replies::replies_stream(
            &relaycord_bus::Subjects::default(),
        ))
        .await
        .unwrap();
    let mut consumer = replies
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            relaycord_interactions::LATE_REPLIES_CONSUMER,
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    println!(
        "late-reply worker: {} deliveries of {} stored replies ({} redelivered, {} pending)",
        info.delivered.consumer_sequence,
        info.delivered.stream_sequence,
        info.num_redelivered,
        info.num_ack_pending + info.num_pending as usize,
    );
    drop(relaycord);
    drop(before);
    drop(baseline_server);
    stack.stop().await;
}
