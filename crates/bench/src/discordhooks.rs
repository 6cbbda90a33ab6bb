//! Gateway → HTTP receiver events/s: Relaycord against discordhooks, in alternating rounds.
//!
//! discordhooks (bench/discordhooks: the published code on @discordjs/ws and
//! @discordjs/rest) POSTs every dispatch to one endpoint. Each round starts a fresh
//! `relaycord sim --stamp` (1 shard, N events as fast as possible once the shard is ready)
//! and points one bridge at it and at the same receiver process:
//! - Relaycord: fresh nats-server, `relaycord sink` (HTTP, signed, dedupe on: the
//!   defaults), `relaycord ingest`;
//! - discordhooks: `node index.js`.
//!
//! events/s = distinct events counted / (arrival of the last new one − send time of the
//! first), both CLOCK_REALTIME on this host. A bridge that stops delivering (nothing new for
//! `--idle` seconds, or its process exits) ends its round; the events never counted are
//! reported as lost.
//!
//! Each round also reports the bridge's CPU time per event: `relaycord ingest`, `relaycord
//! sink` and nats-server together, against the node process (the simulator and the
//! receiver are the same for both and left out).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use relaycord_devkit::NatsServer;

use crate::http_sink::median;
use crate::procs::Reaped;
use crate::receiver::{ReceiverProc, Stats};
use crate::stack::{self, HttpSink, Logs, Sim};

#[derive(clap::Args)]
pub struct Options {
    /// Events per round.
    #[arg(long, default_value_t = 30_000)]
    events: u64,
    /// Rounds of (Relaycord, discordhooks); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The discordhooks checkout with its node_modules (`npm ci` done).
    #[arg(long, default_value = "bench/discordhooks")]
    discordhooks: PathBuf,
    /// The relaycord sink's `concurrency`.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Seconds without a new event after which a round ends.
    #[arg(long, default_value_t = 15)]
    idle: u64,
    /// Where the children's logs go (default: a new directory under the system temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// One round of one bridge.
struct Round {
    rate: f64,
    lost: u64,
    /// The bridge's processes' CPU µs per distinct event delivered.
    cpu_us: f64,
    note: String,
}

pub fn run(binary: &Path, options: &Options) -> anyhow::Result<()> {
    let script = options.discordhooks.join("index.js");
    if !options.discordhooks.join("node_modules").is_dir() || !script.is_file() {
        bail!(
            "{} has no index.js or node_modules: run `npm ci` there (scripts/bench.sh does)",
            options.discordhooks.display()
        );
    }
    let logs = Logs::new(options.log_dir.clone())?;
    eprintln!("logs in {}", logs.0.display());
    let mut receiver = ReceiverProc::spawn(&logs)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        let r = relaycord(binary, &mut receiver, options, round, &logs)?;
        eprintln!(
            "round {round}: relaycord {:.0} events/s, {} lost, {:.0} CPU µs per event{}",
            r.rate, r.lost, r.cpu_us, r.note
        );
        ours.push(r);
        let d = discordhooks(binary, &mut receiver, options, round, &logs)?;
        eprintln!(
            "round {round}: discordhooks {:.0} events/s, {} lost, {:.0} CPU µs per event{}",
            d.rate, d.lost, d.cpu_us, d.note
        );
        theirs.push(d);
    }
    let ours_rate = median(ours.iter().map(|r| r.rate).collect());
    let theirs_rate = median(theirs.iter().map(|r| r.rate).collect());
    let ours_cpu = median(ours.iter().map(|r| r.cpu_us).collect());
    let theirs_cpu = median(theirs.iter().map(|r| r.cpu_us).collect());
    let lost = |rounds: &[Round]| {
        rounds
            .iter()
            .map(|r| r.lost.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!(
        "Gateway → HTTP receiver, {} events per round, 1 shard, as fast as possible, median of {} rounds",
        options.events, options.rounds
    );
    println!(
        "| bridge | events/s | lost per round | ratio to discordhooks | bridge CPU µs per event |"
    );
    println!("|---|---:|---|---:|---:|");
    println!(
        "| relaycord (sim → ingest → JetStream → HTTP sink, signed, dedupe on; zstd-stream) | {ours_rate:.0} | {} | {:.1}× | {ours_cpu:.0} (ingest + sink + nats-server) |",
        lost(&ours),
        ours_rate / theirs_rate
    );
    println!(
        "| discordhooks (@discordjs/ws 1.x, no transport compression) | {theirs_rate:.0} | {} | 1.0× | {theirs_cpu:.0} (node) |",
        lost(&theirs)
    );
    Ok(())
}

fn fresh_sim(
    binary: &Path,
    events: u64,
    logs: &Logs,
    name: &str,
) -> anyhow::Result<(Reaped, std::net::SocketAddr)> {
    Sim {
        shards: 1,
        rate: 0.0,
        events: Some(events),
        stamp: true,
    }
    .spawn(binary, logs.file(name)?)
}

fn relaycord(
    binary: &Path,
    receiver: &mut ReceiverProc,
    options: &Options,
    round: usize,
    logs: &Logs,
) -> anyhow::Result<Round> {
    let nats = NatsServer::start()?;
    receiver.reset(0)?;
    let (mut sim, sim_addr) = fresh_sim(
        binary,
        options.events,
        logs,
        &format!("relaycord-sim-{round}"),
    )?;
    let url = receiver.url();
    let mut sink = HttpSink {
        name: &format!("e2e{round}"),
        url: &url,
        dedupe: true,
        concurrency: options.concurrency,
    }
    .spawn(binary, &nats.url(), logs)?;
    let (mut ingest, _) = stack::spawn_ingest(
        binary,
        &nats.url(),
        sim_addr,
        logs.file(&format!("relaycord-ingest-{round}"))?,
    )?;
    let stats = receiver.wait_distinct(
        options.events,
        Duration::from_secs(options.idle),
        Duration::from_secs(900),
        &mut sink,
    )?;
    let cpu = crate::procs::cpu_seconds(ingest.pid())?
        + crate::procs::cpu_seconds(sink.pid())?
        + crate::procs::cpu_seconds(nats.pid().context("nats-server is not running")?)?;
    let mut note = String::new();
    for (child, what) in [
        (&mut sink, "sink"),
        (&mut ingest, "ingest"),
        (&mut sim, "sim"),
    ] {
        if let Err(error) = child.check_running(what) {
            note.push_str(&format!("; {error}"));
        }
    }
    Ok(outcome(&stats, options.events, cpu, note))
}

fn discordhooks(
    binary: &Path,
    receiver: &mut ReceiverProc,
    options: &Options,
    round: usize,
    logs: &Logs,
) -> anyhow::Result<Round> {
    receiver.reset(0)?;
    let (_sim, sim_addr) = fresh_sim(
        binary,
        options.events,
        logs,
        &format!("discordhooks-sim-{round}"),
    )?;
    // Its two console lines per event go to a file, as a service's stdout would.
    let log = logs.file(&format!("discordhooks-{round}"))?;
    let mut node = Reaped(
        Command::new("node")
            .arg("index.js")
            .current_dir(&options.discordhooks)
            .env("DISCORD_TOKEN", "sim-token")
            .env("DISCORD_API", format!("http://{sim_addr}/api"))
            .env("ENDPOINT", receiver.url())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn node (discordhooks)")?,
    );
    let stats = receiver.wait_distinct(
        options.events,
        Duration::from_secs(options.idle),
        Duration::from_secs(900),
        &mut node,
    )?;
    let (cpu, note) = match node.0.try_wait()? {
        Some(status) => (
            f64::NAN,
            format!("; discordhooks exited with {status} (see its log)"),
        ),
        None => (crate::procs::cpu_seconds(node.pid())?, String::new()),
    };
    Ok(outcome(&stats, options.events, cpu, note))
}

fn outcome(stats: &Stats, events: u64, cpu_seconds: f64, note: String) -> Round {
    let rate = match (stats.first_sent_unix_us, stats.last_new_unix_us) {
        (Some(first), Some(last)) if last > first => {
            stats.distinct as f64 / ((last - first) as f64 / 1e6)
        }
        _ => 0.0,
    };
    Round {
        rate,
        lost: events - stats.distinct.min(events),
        cpu_us: cpu_seconds * 1e6 / stats.distinct.max(1) as f64,
        note,
    }
}
