//! Ingest throughput against its ceiling. Not part of the normal run (it only prints figures):
//!
//! ```text
//! scripts/bench.sh ingest
//! cargo test --release -p relaycord --test it ingest_bench -- --ignored --nocapture
//! RELAYCORD_BENCH_INGEST=path/to/relaycord ...   # another build of the ingest process
//! ```
//!
//! Each round starts a fresh nats-server, a `relaycord sim` process sending N events as fast
//! as it can over 4 shards once all are connected, and a `relaycord ingest` process holding
//! them (static range, window 256 per shard). Ingest parses each frame, builds its envelope
//! and dedupe id and publishes it with its window of acks outstanding per shard. The clock
//! starts when the simulator starts generating and stops when the stream holds all N (and
//! the READY-time GUILD_CREATEs). The ingest process's CPU time (utime + stime) over that
//! interval gives events per ingest CPU-second.
//!
//! Baseline, same server, same round: the envelopes ingest just stored (same subjects
//! under another stream, same payload bytes and headers) published straight from async-nats
//! in this process, one task per shard with the same window — what the bus alone takes.
//! Rounds alternate ingest and baseline; the figure is the median of the rounds' ratios.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use futures::StreamExt;
use relaycord_testkit::{NatsServer, proc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const EVENTS: u64 = 50_000;
const SHARDS: u32 = 4;
const GUILDS: u32 = 8;
/// `ingest.window`'s default.
const WINDOW: usize = 256;
const ROUNDS: usize = 5;
const PATIENCE: Duration = Duration::from_secs(600);

/// A child process and the lines it writes to stderr.
struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn relaycord");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Waits for a line containing `needle` and returns it.
    async fn line(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("process ended before writing {needle:?}"),
                Err(_) => panic!("no {needle:?} in time"),
            }
        }
    }

    /// utime + stime so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        proc::cpu_seconds(self.child.id().expect("running")).expect("the child runs")
    }

    /// SIGTERM (a clean stop, which also lets a profiler wrapping ingest write its
    /// data), SIGKILL if it is still running 15 s later.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            self.child.start_kill().unwrap();
            self.child.wait().await.unwrap();
        }
    }
}

/// nats-server's CPU seconds so far.
fn nats_cpu(nats: &NatsServer) -> f64 {
    proc::cpu_seconds(nats.pid().expect("nats-server runs")).expect("nats-server runs")
}

/// This process's CPU seconds so far (the bare publisher's).
fn own_cpu() -> f64 {
    proc::own_cpu_seconds().expect("/proc/self/stat is readable")
}

/// CPU µs per event over one phase: (producer side, nats-server).
type Cpu = (f64, f64);

async fn stream_messages(js: &jetstream::Context, name: &str) -> Option<u64> {
    let mut stream = js.get_stream(name).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

async fn wait_stream(js: &jetstream::Context, name: &str, messages: u64) {
    let deadline = Instant::now() + PATIENCE;
    while stream_messages(js, name).await.unwrap_or(0) < messages {
        assert!(Instant::now() < deadline, "{name} never reached {messages}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One round of ingest: (events/s, events per ingest CPU-second, CPU µs per event of
/// ingest + simulator and of nats-server).
async fn ingest_round(nats: &NatsServer, js: &jetstream::Context) -> (f64, f64, Cpu) {
    let bin = relaycord_testkit::relaycord_bin();
    let ingest_bin = std::env::var_os("RELAYCORD_BENCH_INGEST").map_or(bin.clone(), Into::into);
    let mut sim = Process::spawn(
        Command::new(&bin)
            .args(["sim", "--listen", "127.0.0.1:0", "--rate", "0"])
            .args([
                "--shards",
                &SHARDS.to_string(),
                "--guilds",
                &GUILDS.to_string(),
            ])
            .args(["--events", &EVENTS.to_string()])
            .env("RUST_LOG", "warn"),
    );
    let banner = sim.line("api_base = ").await;
    let api_base = banner
        .split("api_base = ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_owned();
    let ingest = Process::spawn(
        Command::new(ingest_bin)
            .args(["ingest", "--shards", &format!("0-{}", SHARDS - 1)])
            .args(["--shard-count", &SHARDS.to_string()])
            .env("RELAYCORD_NATS__URL", nats.url())
            .env("DISCORD_TOKEN", "sim-token")
            .env("RELAYCORD_DISCORD__API_BASE", api_base)
            .env("RELAYCORD_INGEST__METRICS_LISTEN", "127.0.0.1:0")
            .env("RELAYCORD_INGEST__WINDOW", WINDOW.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
    );
    sim.line("all shards ready: generating").await;
    let (started, cpu) = (Instant::now(), ingest.cpu_seconds());
    let (sim_cpu, server_cpu) = (sim.cpu_seconds(), nats_cpu(nats));
    let expected = u64::from(GUILDS) + EVENTS;
    wait_stream(js, "DISCORD_GATEWAY", expected).await;
    let (elapsed, cpu) = (started.elapsed(), ingest.cpu_seconds() - cpu);
    let sim_cpu = sim.cpu_seconds() - sim_cpu;
    let server_cpu = nats_cpu(nats) - server_cpu;
    let us = |seconds: f64| seconds * 1e6 / EVENTS as f64;
    sim.line("generated ").await;
    assert_eq!(
        stream_messages(js, "DISCORD_GATEWAY").await,
        Some(expected),
        "the stream holds exactly the GUILD_CREATEs and the generated events"
    );
    ingest.stop().await;
    sim.stop().await;
    (
        EVENTS as f64 / elapsed.as_secs_f64(),
        EVENTS as f64 / cpu.max(f64::EPSILON),
        (us(cpu + sim_cpu), us(server_cpu)),
    )
}

/// Every message of the gateway stream, as (subject, publish), split by shard.
async fn stored_by_shard(js: &jetstream::Context) -> Vec<Vec<(String, PublishMessage)>> {
    let mut stream = js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut per_shard = vec![Vec::new(); SHARDS as usize];
    for _ in 0..count {
        let message = messages.next().await.unwrap().unwrap();
        let headers = message.headers.clone().unwrap();
        let shard: usize = headers
            .get("Relaycord-Shard")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let subject = format!("bench.{}", message.subject);
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers);
        per_shard[shard].push((subject, publish));
    }
    per_shard
}

/// One shard's envelopes published with at most `WINDOW` acks outstanding.
async fn publish_windowed(js: jetstream::Context, batch: Vec<(String, PublishMessage)>) {
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for (subject, publish) in batch {
        if in_flight.len() == WINDOW {
            in_flight.pop_front().unwrap().await.unwrap();
        }
        in_flight.push_back(js.send_publish(subject, publish).await.unwrap());
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
}

/// The same envelopes straight from async-nats: events/s, and CPU µs per event of this
/// (publishing) process and of nats-server.
async fn baseline_round(nats: &NatsServer, js: &jetstream::Context) -> (f64, Cpu) {
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let batches = stored_by_shard(js).await;
    let total: usize = batches.iter().map(Vec::len).sum();
    let started = Instant::now();
    let (publisher_cpu, server_cpu) = (own_cpu(), nats_cpu(nats));
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| tokio::spawn(publish_windowed(js.clone(), batch)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    wait_stream(js, "BENCH", total as u64).await;
    let elapsed = started.elapsed();
    let us = |seconds: f64| seconds * 1e6 / total as f64;
    let cpu = (
        us(own_cpu() - publisher_cpu),
        us(nats_cpu(nats) - server_cpu),
    );
    (total as f64 / elapsed.as_secs_f64(), cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn ingest_bench() {
    let (mut ingest, mut per_cpu, mut baseline, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut path_cpu, mut bare_cpu): (Vec<Cpu>, Vec<Cpu>) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let nats = NatsServer::start().expect("start nats-server");
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let (rate, cpu, path) = ingest_round(&nats, &js).await;
        let (bare, bare_us) = baseline_round(&nats, &js).await;
        println!(
            "round {round}: ingest {rate:.0} events/s ({cpu:.0} per ingest CPU-second), bare publish {bare:.0}/s, ratio {:.2}; CPU µs per event: ingest + simulator {:.1}, nats-server {:.1}; bare publisher {:.1}, nats-server {:.1}",
            rate / bare,
            path.0,
            path.1,
            bare_us.0,
            bare_us.1
        );
        path_cpu.push(path);
        bare_cpu.push(bare_us);
        ingest.push(rate);
        per_cpu.push(cpu);
        baseline.push(bare);
        ratios.push(rate / bare);
    }
    let (ingest, per_cpu, baseline) = (median(ingest), median(per_cpu), median(baseline));
    // Each round's ratio pairs two runs seconds apart: steadier than the ratio of the
    // medians on a machine whose load changes from round to round.
    println!(
        "ingest: {ingest:.0} events/s, bare JetStream publish: {baseline:.0} events/s (medians); ratio = {:.2} (median of the rounds' ratios); {per_cpu:.0} events per ingest CPU-second ({EVENTS} events, {SHARDS} shards, window {WINDOW} per shard, simulator and ingest in their own processes, {ROUNDS} rounds)",
        median(ratios)
    );
    // On one machine every process shares the same cores: the ratio of the CPU each
    // path spends per event is the most the ingest path could reach against the baseline.
    let total = |v: &[Cpu]| median(v.iter().map(|(a, b)| a + b).collect());
    let (path, bare) = (total(&path_cpu), total(&bare_cpu));
    println!(
        "CPU µs per event (medians): ingest path (ingest + simulator + nats-server) {path:.1}, bare publish (publisher + nats-server) {bare:.1}; ratio the CPU allows {:.2}",
        bare / path
    );
}
