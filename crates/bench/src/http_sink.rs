//! HTTP sink deliveries/s against the receiver's own ceiling, in one run.
//!
//! A stream is pre-filled with N stamped events (`relaycord sim` → `relaycord ingest`, both
//! stopped once the stream holds them all). Then, in alternating rounds:
//! - ceiling: `wrk` POSTs a request the sink really sent (headers, signature and body as
//!   captured by the receiver) to the receiver, with the sink's concurrency;
//! - `relaycord sink` (HTTP, signed, dedupe on, then off) delivers the stream into the same
//!   receiver under a new consumer name; deliveries/s = N / (time from the first request
//!   reaching the receiver to the N-th distinct event).
//!
//! Each phase also reports its CPU time per request, process by process (`/proc/<pid>/stat`
//! of the sink, nats-server and the receiver; wrk's from the shell's `times`): on a machine
//! where every process shares the same cores, the ratio of the two totals is the most the
//! sink path could reach against the ceiling, whatever its concurrency.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use relaycord_devkit::NatsServer;

use crate::procs;
use crate::receiver::{ReceiverProc, Sample, Stats};
use crate::stack::{self, HttpSink, Logs, Sim};

#[derive(clap::Args)]
pub struct Options {
    /// Events in the pre-filled stream, delivered by every sink round.
    #[arg(long, default_value_t = 30_000)]
    events: u64,
    /// The sink's `concurrency`, and wrk's connection count.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Rounds of (ceiling, dedupe on, dedupe off); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    /// wrk's threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    /// Another `relaycord` binary (the commit before a change) whose sink runs the same
    /// dedupe-on and -off rounds, alternating with the measured one in each round.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Where the children's logs go (default: a new directory under the system temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

pub fn run(binary: &Path, options: &Options) -> anyhow::Result<()> {
    let logs = Logs::new(options.log_dir.clone())?;
    eprintln!("logs in {}", logs.0.display());
    let nats = NatsServer::start()?;
    let receiver = ReceiverProc::spawn(&logs)?;
    prefill(binary, &nats, options.events, &logs)?;

    // A warm-up delivery, not counted: it fills the page cache and gives wrk a request
    // exactly as the sink sends it.
    let warm = deliver(binary, &nats, &receiver, options, "warm", true, &logs)?;
    eprintln!(
        "warm-up (dedupe on, not counted): {:.0} deliveries/s",
        warm.per_second
    );
    let sample = receiver
        .sample()?
        .context("the receiver saw no stamped request")?;
    let script = logs.0.join("post.lua");
    std::fs::write(&script, wrk_script(&sample))?;

    let (mut ceiling, mut on, mut off) = (Vec::new(), Vec::new(), Vec::new());
    let (mut on_cpu, mut off_cpu) = (Vec::new(), Vec::new());
    let (mut base_on_us, mut base_off_us) = (Vec::new(), Vec::new());
    let (mut ceiling_us, mut on_us, mut off_us) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds {
        receiver.reset(0)?;
        let receiver_before = procs::cpu_seconds(receiver.pid())?;
        let (per_second, wrk_cpu) = wrk(&receiver.url(), &script, options)?;
        let receiver_cpu = procs::cpu_seconds(receiver.pid())? - receiver_before;
        ceiling.push(per_second);
        let requests = receiver.stats()?.requests;
        ceiling_us.push(
            Budget {
                receiver: receiver_cpu,
                load: wrk_cpu,
                ..Budget::default()
            }
            .per_request_us(requests as f64),
        );
        eprintln!(
            "round {round}: receiver ceiling (wrk) {:.0} req/s ({requests} requests counted by the receiver)",
            ceiling[round]
        );
        let round_on = deliver(
            binary,
            &nats,
            &receiver,
            options,
            &format!("on{round}"),
            true,
            &logs,
        )?;
        let round_off = deliver(
            binary,
            &nats,
            &receiver,
            options,
            &format!("off{round}"),
            false,
            &logs,
        )?;
        if let Some(baseline) = &options.baseline {
            for (dedupe, into) in [(true, &mut base_on_us), (false, &mut base_off_us)] {
                let name = format!("base{}{round}", if dedupe { "on" } else { "off" });
                let r = deliver(baseline, &nats, &receiver, options, &name, dedupe, &logs)?;
                eprintln!(
                    "round {round}: baseline sink, dedupe {dedupe}: {:.0}/s, sink {:.1} µs, nats-server {:.1} µs per delivery",
                    r.per_second, r.budget_us.sink, r.budget_us.nats
                );
                into.push(r.budget_us);
            }
        }
        eprintln!(
            "round {round}: sink, dedupe on: sink {:.1} µs, nats-server {:.1} µs; off: sink {:.1} µs, nats-server {:.1} µs per delivery",
            round_on.budget_us.sink,
            round_on.budget_us.nats,
            round_off.budget_us.sink,
            round_off.budget_us.nats
        );
        on.push(round_on.per_second);
        on_cpu.push(round_on.per_cpu_second);
        on_us.push(round_on.budget_us);
        off.push(round_off.per_second);
        off_cpu.push(round_off.per_cpu_second);
        off_us.push(round_off.budget_us);
        eprintln!(
            "round {round}: sink dedupe on {:.0}/s, dedupe off {:.0}/s",
            on[round], off[round]
        );
    }
    let spread = |rounds: &[Budget], f: fn(&Budget) -> f64| {
        let values: Vec<f64> = rounds.iter().map(f).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{min:.1}–{max:.1}")
    };
    let mut spreads = vec![
        ("relaycord sink, dedupe on", on_us.clone()),
        ("relaycord sink, dedupe off", off_us.clone()),
    ];
    if options.baseline.is_some() {
        spreads.push(("baseline sink, dedupe on", base_on_us.clone()));
        spreads.push(("baseline sink, dedupe off", base_off_us.clone()));
    }
    let (ceiling, on, off) = (median(ceiling), median(on), median(off));
    let (on_cpu, off_cpu) = (median(on_cpu), median(off_cpu));
    let (ceiling_us, on_us, off_us) = (
        Budget::median(&ceiling_us),
        Budget::median(&on_us),
        Budget::median(&off_us),
    );
    println!();
    println!(
        "HTTP sink vs receiver ceiling: {} events, concurrency {}, signed, median of {} rounds",
        options.events, options.concurrency, options.rounds
    );
    println!("| what | per second | ratio to the ceiling | per sink CPU-second |");
    println!("|---|---:|---:|---:|");
    println!(
        "| receiver ceiling (wrk, {} connections) | {ceiling:.0} req/s | 1.00 | |",
        options.concurrency
    );
    println!(
        "| relaycord sink, dedupe on | {on:.0} deliveries/s | {:.2} | {on_cpu:.0} |",
        on / ceiling
    );
    println!(
        "| relaycord sink, dedupe off | {off:.0} deliveries/s | {:.2} | {off_cpu:.0} |",
        off / ceiling
    );
    println!();
    println!(
        "CPU µs per request (medians), and the ratio the CPU alone allows (ceiling total / path total):"
    );
    println!("| what | sink | nats-server | receiver | wrk | total | CPU-bound ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = vec![
        ("receiver ceiling (wrk)", ceiling_us),
        ("relaycord sink, dedupe on", on_us),
        ("relaycord sink, dedupe off", off_us),
    ];
    if options.baseline.is_some() {
        rows.push(("baseline sink, dedupe on", Budget::median(&base_on_us)));
        rows.push(("baseline sink, dedupe off", Budget::median(&base_off_us)));
    }
    for (what, b) in rows {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            b.sink,
            b.nats,
            b.receiver,
            b.load,
            b.total(),
            ceiling_us.total() / b.total()
        );
    }
    println!();
    println!("Spread over the rounds, CPU µs per delivery (min–max):");
    println!("| what | sink | nats-server |");
    println!("|---|---:|---:|");
    for (what, rounds) in spreads {
        println!(
            "| {what} | {} | {} |",
            spread(&rounds, |b| b.sink),
            spread(&rounds, |b| b.nats)
        );
    }
    Ok(())
}

/// CPU time of each process in one phase: seconds, or µs per request once divided.
#[derive(Clone, Copy, Default)]
struct Budget {
    sink: f64,
    nats: f64,
    receiver: f64,
    /// The load generator (wrk), in the ceiling phase.
    load: f64,
}

impl Budget {
    fn per_request_us(self, requests: f64) -> Self {
        let us = |seconds: f64| seconds * 1e6 / requests.max(1.0);
        Self {
            sink: us(self.sink),
            nats: us(self.nats),
            receiver: us(self.receiver),
            load: us(self.load),
        }
    }

    fn total(self) -> f64 {
        self.sink + self.nats + self.receiver + self.load
    }

    /// Each process's median over the rounds.
    fn median(rounds: &[Self]) -> Self {
        let of = |f: fn(&Self) -> f64| median(rounds.iter().map(f).collect());
        Self {
            sink: of(|b| b.sink),
            nats: of(|b| b.nats),
            receiver: of(|b| b.receiver),
            load: of(|b| b.load),
        }
    }
}

/// Fills the stream through the real gateway path, then stops ingest and the simulator so
/// they take no CPU from the rounds.
fn prefill(binary: &Path, nats: &NatsServer, events: u64, logs: &Logs) -> anyhow::Result<()> {
    let sim = Sim {
        shards: 1,
        rate: 0.0,
        events: Some(events),
        stamp: true,
    };
    let (mut sim, sim_addr) = sim.spawn(binary, logs.file("prefill-sim")?)?;
    let (mut ingest, metrics) =
        stack::spawn_ingest(binary, &nats.url(), sim_addr, logs.file("prefill-ingest")?)?;
    // Published = acked by JetStream; the guilds' GUILD_CREATEs come on top of the events,
    // so wait for the count to reach N and then stop moving.
    let mut last = (0.0, std::time::Instant::now());
    stack::wait_for(
        "ingest to publish every event",
        Duration::from_secs(600),
        || {
            sim.check_running("relaycord sim")?;
            ingest.check_running("relaycord ingest")
        },
        || {
            let text = procs::scrape(metrics)?;
            let published = procs::metric_sum(&text, "relaycord_publish_total")
                - procs::metric_sum(&text, "relaycord_publish_duplicates_total");
            if published != last.0 {
                last = (published, std::time::Instant::now());
            }
            let settled = last.1.elapsed() > Duration::from_secs(1);
            Ok((published >= events as f64 && settled).then_some(published))
        },
    )
    .map(|published| eprintln!("stream pre-filled: {published} messages"))
}

/// What one sink round measured.
struct Round {
    /// Of the N stamped events, first request at the receiver → N-th distinct event.
    per_second: f64,
    /// N over the sink process's whole CPU time (its start included).
    per_cpu_second: f64,
    /// CPU µs per delivery of the sink, nats-server and the receiver over the round.
    budget_us: Budget,
}

/// One sink round under consumer `name`: deliveries/s of the N stamped events.
fn deliver(
    binary: &Path,
    nats: &NatsServer,
    receiver: &ReceiverProc,
    options: &Options,
    name: &str,
    dedupe: bool,
    logs: &Logs,
) -> anyhow::Result<Round> {
    receiver.reset(0)?;
    let nats_pid = nats.pid().context("nats-server is not running")?;
    let (nats_before, receiver_before) = (
        procs::cpu_seconds(nats_pid)?,
        procs::cpu_seconds(receiver.pid())?,
    );
    let url = receiver.url();
    let mut sink = HttpSink {
        name,
        url: &url,
        dedupe,
        concurrency: options.concurrency,
    }
    .spawn(binary, &nats.url(), logs)?;
    let stats: Stats = stack::wait_for(
        "the sink to deliver every event",
        Duration::from_secs(900),
        || sink.check_running("relaycord sink"),
        || {
            let stats = receiver.stats()?;
            Ok((stats.distinct >= options.events).then_some(stats))
        },
    )?;
    let cpu = procs::cpu_seconds(sink.pid())?;
    let budget = Budget {
        sink: cpu,
        nats: procs::cpu_seconds(nats_pid)? - nats_before,
        receiver: procs::cpu_seconds(receiver.pid())? - receiver_before,
        load: 0.0,
    };
    let (Some(first), Some(last)) = (stats.first_arrival_unix_us, stats.last_new_unix_us) else {
        bail!("the receiver recorded no arrival times");
    };
    let events = options.events as f64;
    Ok(Round {
        per_second: events / ((last - first) as f64 / 1e6),
        per_cpu_second: events / cpu,
        budget_us: budget.per_request_us(events),
    })
}

/// wrk's `Requests/sec` against the receiver and the CPU seconds wrk used, failing on any
/// non-2xx answer. wrk runs under bash so that `times` can report its CPU time once it
/// has been reaped.
fn wrk(url: &str, script: &Path, options: &Options) -> anyhow::Result<(f64, f64)> {
    let output = Command::new("bash")
        .args(["-c", r#"wrk "$@"; rc=$?; times >&2; exit $rc"#, "wrk"])
        .args(["-t", &options.wrk_threads.to_string()])
        .args(["-c", &options.concurrency.to_string()])
        .args(["-d", &format!("{}s", options.wrk_seconds)])
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk; scripts/bench.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!(
            "wrk failed or saw errors:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let per_second = text
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let times = String::from_utf8_lossy(&output.stderr);
    let cpu = children_cpu_seconds(&times)
        .with_context(|| format!("no CPU times from bash's `times`:\n{times}"))?;
    Ok((per_second, cpu))
}

/// User + system seconds of the shell's children, the second line of bash's `times`
/// (`0m1.250s 0m0.500s`).
fn children_cpu_seconds(times: &str) -> Option<f64> {
    let seconds = |field: &str| -> Option<f64> {
        let (minutes, rest) = field.split_once('m')?;
        Some(minutes.parse::<f64>().ok()? * 60.0 + rest.strip_suffix('s')?.parse::<f64>().ok()?)
    };
    let line = times.lines().next_back()?;
    let mut fields = line.split_whitespace();
    Some(seconds(fields.next()?)? + seconds(fields.next()?)?)
}

/// A wrk Lua script POSTing `sample` as it was received.
fn wrk_script(sample: &Sample) -> String {
    let mut script = String::from("wrk.method = \"POST\"\n");
    script.push_str(&format!("wrk.body = {}\n", lua_string(&sample.body)));
    for (name, value) in &sample.headers {
        script.push_str(&format!(
            "wrk.headers[ {} ] = {}\n",
            lua_string(name),
            lua_string(value)
        ));
    }
    script
}

/// A Lua long string holding `text` verbatim (no escape is interpreted inside one).
fn lua_string(text: &str) -> String {
    let mut level = String::new();
    while text.contains(&format!("]{level}]")) {
        level.push('=');
    }
    // Lua drops a newline right after the opening bracket: give it one to drop.
    let skipped = if text.starts_with('\n') { "\n" } else { "" };
    format!("[{level}[{skipped}{text}]{level}]")
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_strings_hold_any_text() {
        assert_eq!(lua_string("a\"b"), "[[a\"b]]");
        assert_eq!(lua_string("x]]y"), "[=[x]]y]=]");
        assert_eq!(lua_string("]]]=]"), "[==[]]]=]]==]");
        assert_eq!(lua_string("\nx"), "[[\n\nx]]");
    }

    #[test]
    fn wrk_cpu_time_is_the_childrens_line_of_times() {
        let times = "0m0.004s 0m0.002s\n1m2.500s 0m0.250s\n";
        assert_eq!(children_cpu_seconds(times), Some(62.75));
        assert_eq!(children_cpu_seconds("no times here"), None);
    }

    #[test]
    fn median_of_three_is_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
