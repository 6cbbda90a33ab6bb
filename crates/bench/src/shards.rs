//! Shard density: how much resident memory one more gateway shard costs an ingest process.
//!
//! For each shard count, a fresh stack of real processes: a nats-server child, `relaycord
//! sim` with that many shards, and `relaycord ingest` (leased mode, as deployed) holding all
//! of them. Once `relaycord_shard_up` sums to N on ingest's /metrics and a settle period has
//! passed, ingest's VmRSS is sampled. The 1-shard run of the same invocation is the
//! baseline: per shard = (RSS(N) − RSS(1)) / (N − 1), which removes the process's fixed
//! cost (runtime, NATS client, buffers) from the figure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use relaycord_devkit::NatsServer;

use crate::procs;
use crate::stack::{self, Logs, Sim};

#[derive(clap::Args)]
pub struct Options {
    /// Shard counts to measure (comma-separated); a 1-shard baseline is always run first.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    shards: Vec<u32>,
    /// Seconds to wait after every shard is up before sampling, so startup buffers settle.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// RSS samples, one second apart; the median is reported.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Seconds allowed for all shards to come up.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Where the children's logs go (default: a new directory under the system temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// One measured run.
struct Run {
    shards: u32,
    up_after: Duration,
    rss: u64,
}

pub fn run(binary: &Path, options: &Options) -> anyhow::Result<()> {
    if options.shards.iter().any(|&n| n < 2) {
        bail!("--shards: counts must be at least 2 (1 is the baseline, always measured)");
    }
    let logs = Logs::new(options.log_dir.clone())?;
    eprintln!(
        "relaycord: {}; logs in {}",
        binary.display(),
        logs.0.display()
    );

    let baseline = measure(binary, 1, options, &logs)?;
    let mut runs = Vec::new();
    for &n in &options.shards {
        runs.push(measure(binary, n, options, &logs)?);
    }

    println!("| shards | all up after | ingest RSS | RSS per shard above the 1-shard baseline |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| 1 | {:.1} s | {:.1} MiB | (baseline) |",
        baseline.up_after.as_secs_f64(),
        mib(baseline.rss)
    );
    for run in &runs {
        let per_shard = (run.rss as f64 - baseline.rss as f64) / f64::from(run.shards - 1);
        println!(
            "| {} | {:.1} s | {:.1} MiB | {:.1} KiB |",
            run.shards,
            run.up_after.as_secs_f64(),
            mib(run.rss),
            per_shard / 1024.0
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn measure(binary: &Path, shards: u32, options: &Options, logs: &Logs) -> anyhow::Result<Run> {
    eprintln!("== {shards} shard(s)");
    let nats = NatsServer::start()?;
    let sim = Sim {
        shards,
        rate: 0.0,
        events: None,
        stamp: false,
    };
    let (sim, sim_addr) = sim.spawn(binary, logs.file(&format!("sim-{shards}"))?)?;
    let started = Instant::now();
    let (mut ingest, metrics_addr) = stack::spawn_ingest(
        binary,
        &nats.url(),
        sim_addr,
        logs.file(&format!("ingest-{shards}"))?,
    )?;
    let deadline = started + Duration::from_secs(options.timeout);
    let up_after = loop {
        let up = procs::scrape(metrics_addr).map(|t| procs::metric_sum(&t, "relaycord_shard_up"));
        if matches!(up, Ok(up) if up >= f64::from(shards)) {
            break started.elapsed();
        }
        if let Some(status) = ingest.0.try_wait()? {
            bail!("ingest exited with {status}; see {}", logs.0.display());
        }
        if Instant::now() > deadline {
            bail!(
                "only {up:?} of {shards} shards up after {}s",
                options.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("   all {shards} up after {:.1} s", up_after.as_secs_f64());

    std::thread::sleep(Duration::from_secs(options.settle));
    let pid = ingest.pid();
    let mut samples = Vec::with_capacity(options.samples.max(1));
    for i in 0..options.samples.max(1) {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        samples.push(procs::rss_bytes(pid)?);
    }
    // Still all up: a shard that dropped meanwhile would make the sample meaningless.
    let up = procs::metric_sum(&procs::scrape(metrics_addr)?, "relaycord_shard_up");
    if up < f64::from(shards) {
        bail!("{up} of {shards} shards up while sampling");
    }
    samples.sort_unstable();
    let rss = samples[samples.len() / 2];
    eprintln!("   ingest RSS {:.1} MiB (samples {samples:?})", mib(rss));
    // For information: the simulator's own cost (one compression context per connection).
    if let Ok(sim_rss) = procs::rss_bytes(sim.pid()) {
        eprintln!("   simulator RSS {:.1} MiB", mib(sim_rss));
    }
    drop(ingest);
    drop(sim);
    Ok(Run {
        shards,
        up_after,
        rss,
    })
}
