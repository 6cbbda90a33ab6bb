//! End-to-end latency, gateway → HTTP receiver, at fixed event rates.
//!
//! Per rate, a fresh set of processes on loopback: nats-server, `relaycord sim --stamp`
//! generating at that rate on 1 shard, `relaycord ingest`, `relaycord sink` (HTTP, signed,
//! dedupe on: the default) and the receiver, which records `arrival − sent_unix_us` of
//! every event's first delivery in an HDR histogram. Both instants are CLOCK_REALTIME of
//! the same host, so they compare across processes. The stamp is taken when the simulator
//! makes the event, just before it is queued for the websocket, so the figure also includes
//! the simulator's own queueing and compression.

use std::path::{Path, PathBuf};
use std::time::Duration;

use relaycord_devkit::NatsServer;

use crate::receiver::{ReceiverProc, Stats};
use crate::stack::{self, HttpSink, Logs, Sim};

#[derive(clap::Args)]
pub struct Options {
    /// Rates to measure, events/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rates: Vec<u32>,
    /// Seconds of measured traffic per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of traffic first, not recorded (connections and caches warm up).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// The sink's `concurrency`.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Run the sink with `dedupe = false` (no KV lookup and write per delivery), to see
    /// what dedupe adds to the latency.
    #[arg(long)]
    no_dedupe: bool,
    /// Where the children's logs go (default: a new directory under the system temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

struct Measured {
    rate: u32,
    expected: u64,
    stats: Stats,
}

pub fn run(binary: &Path, options: &Options) -> anyhow::Result<()> {
    let logs = Logs::new(options.log_dir.clone())?;
    eprintln!("logs in {}", logs.0.display());
    let mut receiver = ReceiverProc::spawn(&logs)?;
    let mut results = Vec::new();
    for &rate in &options.rates {
        results.push(measure(binary, &mut receiver, rate, options, &logs)?);
    }
    println!();
    println!(
        "End-to-end latency, simulator → ingest → NATS → HTTP sink (signed, dedupe {}) → receiver, 1 shard, {} s per rate after {} s of warm-up",
        if options.no_dedupe { "off" } else { "on" },
        options.seconds,
        options.warmup_seconds
    );
    println!(
        "| offered rate | events counted | generated at | delivered at | rate achieved | p50 | p99 | p99.9 | max |"
    );
    println!("|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for m in &results {
        let s = &m.stats;
        let span = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(from), Some(to)) if to > from => s.distinct as f64 / ((to - from) as f64 / 1e6),
            _ => 0.0,
        };
        let generated = span(s.first_sent_unix_us, s.last_sent_unix_us);
        let delivered = span(s.first_sent_unix_us, s.last_new_unix_us);
        // Within 5 %: the token bucket and the last event's own latency blur the edges.
        let achieved = s.distinct == m.expected && delivered >= 0.95 * f64::from(m.rate);
        let lost = m.expected - s.distinct.min(m.expected);
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        println!(
            "| {}/s | {}{} | {generated:.0}/s | {delivered:.0}/s | {} | {} | {} | {} | {} |",
            m.rate,
            s.distinct,
            if lost > 0 {
                format!(" ({lost} missing)")
            } else {
                String::new()
            },
            if achieved { "yes" } else { "NO" },
            ms(s.latency_us.p50),
            ms(s.latency_us.p99),
            ms(s.latency_us.p999),
            ms(s.latency_us.max),
        );
    }
    Ok(())
}

fn measure(
    binary: &Path,
    receiver: &mut ReceiverProc,
    rate: u32,
    options: &Options,
    logs: &Logs,
) -> anyhow::Result<Measured> {
    let warmup = u64::from(rate) * options.warmup_seconds;
    let expected = u64::from(rate) * options.seconds;
    eprintln!("== {rate} events/s: {warmup} warm-up events, then {expected} measured");
    let nats = NatsServer::start()?;
    receiver.reset(warmup)?;
    let sim = Sim {
        shards: 1,
        rate: f64::from(rate),
        events: Some(warmup + expected),
        stamp: true,
    };
    let (mut sim, sim_addr) = sim.spawn(binary, logs.file(&format!("latency-sim-{rate}"))?)?;
    let url = receiver.url();
    // The sink first, so it is consuming before the first event is published.
    let mut sink = HttpSink {
        name: &format!("latency{rate}"),
        url: &url,
        dedupe: !options.no_dedupe,
        concurrency: options.concurrency,
    }
    .spawn(binary, &nats.url(), logs)?;
    let (mut ingest, _) = stack::spawn_ingest(
        binary,
        &nats.url(),
        sim_addr,
        logs.file(&format!("latency-ingest-{rate}"))?,
    )?;
    let total = Duration::from_secs(options.warmup_seconds + options.seconds);
    let stats = receiver.wait_distinct(
        expected,
        Duration::from_secs(20),
        total * 20 + Duration::from_secs(120),
        &mut sink,
    )?;
    ingest.check_running("relaycord ingest")?;
    sim.check_running("relaycord sim")?;
    eprintln!(
        "   {} events, p50 {} µs, p99 {} µs, max {} µs",
        stats.distinct, stats.latency_us.p50, stats.latency_us.p99, stats.latency_us.max
    );
    Ok(Measured {
        rate,
        expected,
        stats,
    })
}
