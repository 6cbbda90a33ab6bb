//! Ingest throughput against its ceiling. Not part of the normal run (it only prints figures):
//!
//! ```text
//! scripts/bench.sh ingest
//! cargo test --release -p relaycord --test it ingest_bench -- --ignored --nocapture
//! RELAYCORD_BENCH_INGEST=path/to/relaycord ...   # another build of the ingest process
//! RELAYCORD_BENCH_BEFORE=path/to/old/relaycord ... # and an older one in the same rounds
//! RELAYCORD_BENCH_ROUNDS=3 ...                     # rounds (default 5)
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
/// This bench's environment settings, which its children must not see.
const BENCH_SETTINGS: [&str; 3] = [
    "RELAYCORD_BENCH_INGEST",
    "RELAYCORD_BENCH_BEFORE",
    "RELAYCORD_BENCH_ROUNDS",
];

/// A child process and the lines it writes to stderr.
struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    fn spawn(command: &mut Command) -> Self {
        // relaycord reads every RELAYCORD_* variable as a config key and refuses unknown
        // ones: the bench's own settings made the ingest under test exit at start.
        for setting in BENCH_SETTINGS {
            command.env_remove(setting);
        }
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

/// One round of ingest, by CPU µs per event of each process.
struct Round {
    events_per_second: f64,
    ingest: f64,
    simulator: f64,
    server: f64,
}

/// Ends with the last lines a process wrote, when it exits before it should: an ingest
/// build that refuses this bench's flags or settings otherwise waits out `PATIENCE` and
/// prints no figures at all.
async fn exited(process: &mut Process, name: &str) {
    let status = process.child.wait().await;
    let mut lines = Vec::new();
    while let Ok(line) = process.lines.try_recv() {
        lines.push(line);
    }
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    panic!("{name} exited ({status:?}) during the round; its last lines:\n{tail}")
}

/// One round of ingest with the ingest process run from `ingest_bin`.
async fn ingest_round(
    nats: &NatsServer,
    js: &jetstream::Context,
    ingest_bin: &std::path::Path,
) -> Round {
    let bin = relaycord_testkit::relaycord_bin();
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
    let mut ingest = Process::spawn(
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
    tokio::select! {
        _ = sim.line("all shards ready: generating") => {}
        () = exited(&mut ingest, "ingest") => {}
    }
    let (started, cpu) = (Instant::now(), ingest.cpu_seconds());
    let (sim_cpu, server_cpu) = (sim.cpu_seconds(), nats_cpu(nats));
    let expected = u64::from(GUILDS) + EVENTS;
    tokio::select! {
        () = wait_stream(js, "DISCORD_GATEWAY", expected) => {}
        () = exited(&mut ingest, "ingest") => {}
    }
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
    Round {
        events_per_second: EVENTS as f64 / elapsed.as_secs_f64(),
        ingest: us(cpu),
        simulator: us(sim_cpu),
        server: us(server_cpu),
    }
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

/// "median (min–max)" of one figure over the rounds.
fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.1} ({min:.1}–{max:.1})", median(v.to_vec()))
}

/// The rounds of one ingest build.
#[derive(Default)]
struct Build {
    rounds: Vec<Round>,
    ratios: Vec<f64>,
}

impl Build {
    fn summary(&self, name: &str) -> String {
        let of = |f: fn(&Round) -> f64| spread(&self.rounds.iter().map(f).collect::<Vec<_>>());
        format!(
            "{name}: CPU µs per event, median (min–max) of {} rounds: ingest {}, simulator {}, nats-server {}; {} events/s; ratio to the bare publish {:.2}",
            self.rounds.len(),
            of(|r| r.ingest),
            of(|r| r.simulator),
            of(|r| r.server),
            median(self.rounds.iter().map(|r| r.events_per_second).collect()).round(),
            median(self.ratios.clone()),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn ingest_bench() {
    // RELAYCORD_BENCH_INGEST replaces the ingest build; RELAYCORD_BENCH_BEFORE adds
    // another one, run in every round next to it (order alternating), so that a change is
    // measured against its parent in the same run on a shared machine.
    let bin = relaycord_testkit::relaycord_bin();
    let ingest_bin: std::path::PathBuf =
        std::env::var_os("RELAYCORD_BENCH_INGEST").map_or(bin, Into::into);
    let before_bin = std::env::var_os("RELAYCORD_BENCH_BEFORE").map(std::path::PathBuf::from);
    let rounds = std::env::var("RELAYCORD_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS);
    let (mut after, mut before) = (Build::default(), Build::default());
    let (mut path_cpu, mut bare_cpu): (Vec<Cpu>, Vec<Cpu>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut builds = vec![(&ingest_bin, &mut after, "ingest")];
        if let Some(before_bin) = &before_bin {
            let entry = (before_bin, &mut before, "before");
            if round % 2 == 0 {
                builds.insert(0, entry);
            } else {
                builds.push(entry);
            }
        }
        for (bin, build, name) in builds {
            let nats = NatsServer::start().expect("start nats-server");
            let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
            let path = ingest_round(&nats, &js, bin).await;
            let (bare, bare_us) = baseline_round(&nats, &js).await;
            let ratio = path.events_per_second / bare;
            println!(
                "round {round} {name}: {:.0} events/s, bare publish {bare:.0}/s, ratio {ratio:.2}; CPU µs per event: ingest {:.1}, simulator {:.1}, nats-server {:.1}; bare publisher {:.1}, nats-server {:.1}",
                path.events_per_second,
                path.ingest,
                path.simulator,
                path.server,
                bare_us.0,
                bare_us.1
            );
            if name == "ingest" {
                path_cpu.push((path.ingest + path.simulator, path.server));
                bare_cpu.push(bare_us);
            }
            build.ratios.push(ratio);
            build.rounds.push(path);
        }
    }
    println!(
        "{} ({EVENTS} events, {SHARDS} shards, window {WINDOW} per shard, simulator and ingest in their own processes)",
        after.summary(&ingest_bin.display().to_string())
    );
    if let Some(before_bin) = &before_bin {
        println!("{}", before.summary(&before_bin.display().to_string()));
    }
    // On one machine every process shares the same cores: the ratio of the CPU each
    // path spends per event is the most the ingest path could reach against the baseline.
    let total = |v: &[Cpu]| median(v.iter().map(|(a, b)| a + b).collect());
    let (path, bare) = (total(&path_cpu), total(&bare_cpu));
    println!(
        "CPU µs per event (medians): ingest path (ingest + simulator + nats-server) {path:.1}, bare publish (publisher + nats-server) {bare:.1}; ratio the CPU allows {:.2}",
        bare / path
    );
}
