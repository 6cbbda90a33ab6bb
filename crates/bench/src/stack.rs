//! The Relaycord processes the benchmarks start: `relaycord sim`, `relaycord ingest` and
//! `relaycord sink`, each a child with its log in the run's log directory.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procs::{self, Reaped};

/// Where a run's children write their logs.
pub struct Logs(pub PathBuf);

impl Logs {
    /// `dir`, or a new directory under the system temp dir.
    pub fn new(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("relaycord-bench-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn file(&self, name: &str) -> anyhow::Result<File> {
        let path = self.0.join(format!("{name}.log"));
        File::create(&path).with_context(|| format!("create {}", path.display()))
    }
}

/// `relaycord sim` as a benchmark runs it.
pub struct Sim {
    pub shards: u32,
    /// Events per second once every shard is ready; 0: as fast as possible.
    pub rate: f64,
    /// How many to generate; `None`: none (only READY and GUILD_CREATE).
    pub events: Option<u64>,
    /// `--stamp`: number and send time in every generated payload.
    pub stamp: bool,
}

impl Sim {
    pub fn spawn(&self, binary: &Path, log: File) -> anyhow::Result<(Reaped, SocketAddr)> {
        let addr = procs::free_port()?;
        let mut command = Command::new(binary);
        command
            .arg("sim")
            .args(["--listen", &addr.to_string()])
            .args(["--shards", &self.shards.to_string()])
            // Every shard its own identify bucket: startup is not paced by Discord's
            // identify rate, which is not what any of the benchmarks measure.
            .args([
                "--max-concurrency",
                &self.shards.min(u32::from(u16::MAX)).to_string(),
            ])
            .args(["--session-start-limit", &(self.shards * 2 + 10).to_string()]);
        if let Some(events) = self.events {
            command
                .args(["--events", &events.to_string()])
                .args(["--rate", &self.rate.to_string()]);
        }
        if self.stamp {
            command.arg("--stamp");
        }
        let mut child = Reaped(
            command
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("spawn relaycord sim")?,
        );
        procs::wait_listening(&mut child.0, addr, Duration::from_secs(20))?;
        Ok((child, addr))
    }
}

/// `relaycord ingest` (leased mode, as deployed) on the simulator at `sim`; returns it and
/// its metrics address once that listens.
pub fn spawn_ingest(
    binary: &Path,
    nats_url: &str,
    sim: SocketAddr,
    log: File,
) -> anyhow::Result<(Reaped, SocketAddr)> {
    let metrics = procs::free_port()?;
    let mut child = Reaped(
        Command::new(binary)
            .arg("ingest")
            .env_remove("RELAYCORD_CONFIG")
            .env("RELAYCORD_NATS__URL", nats_url)
            .env("DISCORD_TOKEN", "sim-token")
            .env("RELAYCORD_DISCORD__API_BASE", format!("http://{sim}/api"))
            .env("RELAYCORD_INGEST__METRICS_LISTEN", metrics.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn relaycord ingest")?,
    );
    procs::wait_listening(&mut child.0, metrics, Duration::from_secs(20))?;
    Ok((child, metrics))
}

/// The signing secret of the benchmarks' HTTP sinks (Standard Webhooks format).
pub const SIGNING_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// One HTTP sink of `relaycord sink`, as a benchmark configures it.
pub struct HttpSink<'a> {
    /// Consumer name: a new name starts at the beginning of the stream, with its own
    /// dedupe bucket.
    pub name: &'a str,
    pub url: &'a str,
    pub dedupe: bool,
    pub concurrency: u32,
}

impl HttpSink<'_> {
    /// Writes its config file (signed with [`SIGNING_SECRET`]) and starts `relaycord sink`
    /// on it; returns once the sink's metrics endpoint listens.
    pub fn spawn(&self, binary: &Path, nats_url: &str, logs: &Logs) -> anyhow::Result<Reaped> {
        let config = logs.0.join(format!("sink-{}.toml", self.name));
        std::fs::write(
            &config,
            format!(
                "[nats]\nurl = {nats_url:?}\n\n[[sinks]]\nname = {name:?}\ntype = \"http\"\nurl = {url:?}\nsecret = {SIGNING_SECRET:?}\ndedupe = {dedupe}\nconcurrency = {concurrency}\n",
                name = self.name,
                url = self.url,
                dedupe = self.dedupe,
                concurrency = self.concurrency,
            ),
        )?;
        let metrics = procs::free_port()?;
        let mut child = Reaped(
            Command::new(binary)
                .arg("--config")
                .arg(&config)
                .args(["sink", "--name", self.name])
                .args(["--metrics-listen", &metrics.to_string()])
                .env_remove("RELAYCORD_CONFIG")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logs.file(&format!("sink-{}", self.name))?)
                .spawn()
                .context("spawn relaycord sink")?,
        );
        procs::wait_listening(&mut child.0, metrics, Duration::from_secs(20))?;
        Ok(child)
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `timeout` or as soon as
/// `alive` reports a child gone.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
