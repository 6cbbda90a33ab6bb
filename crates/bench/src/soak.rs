//! `relaycord-bench soak`: the full soak (docs/reliability.md), by hand. The engine is the
//! test kit's, which the end-to-end suite runs in its light size.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use relaycord_testkit::soak;

#[derive(clap::Args)]
pub struct Options {
    /// Gateway events the simulator generates.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Seed of the fault schedule (default: the time, printed); replays the same faults.
    #[arg(long)]
    seed: Option<u64>,
    /// Events per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Faults continue after generation until every kind ran this often.
    #[arg(long, default_value_t = 50)]
    min_faults_per_kind: u32,
    /// Signed interactions sent during generation (default: one per 100 events).
    #[arg(long)]
    interactions: Option<u64>,
    /// Of every this many receiver requests three fail (500, timeout, 429 + Retry-After).
    #[arg(long, default_value_t = 30)]
    flaky_period: u64,
    /// Seconds everything may take to arrive after the last fault.
    #[arg(long, default_value_t = 1800)]
    settle_secs: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "soak.json")]
    json: PathBuf,
    /// Config and logs of every process (default: a new directory under /tmp, kept).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(relaycord: &std::path::Path, options: &Options) -> anyhow::Result<()> {
    let seed = options.seed.unwrap_or_else(soak::random_seed);
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("relaycord-soak-{seed}")),
    };
    let engine = soak::Options {
        events: options.events,
        seed,
        rate: options.rate,
        min_per_kind: options.min_faults_per_kind,
        interactions: options.interactions.unwrap_or(options.events / 100),
        flaky_period: options.flaky_period,
        settle: Duration::from_secs(options.settle_secs),
        relaycord: relaycord.to_owned(),
        dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let report = runtime.block_on(soak::run(&engine));
    soak::write_json(&report, &options.json)
        .with_context(|| format!("write {}", options.json.display()))?;
    println!("{}", report.table());
    println!(
        "report: {}; logs: {}",
        options.json.display(),
        engine.dir.display()
    );
    if report.lost > 0 || report.json["settled"] != true {
        bail!(
            "seed {seed}: {} lost (settled: {})",
            report.lost,
            report.json["settled"]
        );
    }
    Ok(())
}
