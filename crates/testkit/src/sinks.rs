//! Sinks under test: in-process drivers around recording or refusing sinks, configured
//! sinks run in this process, and `relaycord` processes.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use prometheus::Registry;
use relaycord_bus::{Secret, Subjects};
use relaycord_sinks::http::HttpSinkConfig;
use relaycord_sinks::retry::Backoff;
use relaycord_sinks::{Driver, Event, Outcome, Sink, SinkConfig, SinkKind, SinkMetrics};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{SECRET, Stack, metric};

/// The HTTP sink a [`Stack`] runs: patient retries, signed with [`SECRET`].
pub fn http_sink(name: &str, url: String) -> SinkConfig {
    SinkConfig {
        max_attempts: 1000,
        concurrency: 32,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..SinkConfig::new(
            name,
            SinkKind::Http(HttpSinkConfig {
                url,
                secret: Some(Secret::new(SECRET)),
                headers: Default::default(),
                timeout: Duration::from_secs(5),
            }),
        )
    }
}

/// `relaycord sink` with its log in `dir/<log>.log` for post-mortems.
pub fn spawn_sink(config: &Path, dir: &Path, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{log}.log"))).unwrap();
    Command::new(crate::relaycord_bin())
        .arg("--config")
        .arg(config)
        .args(["sink", "--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relaycord sink")
}

/// A sink config for in-process tests: fast retries; the kind is never built.
pub fn test_config(name: &str) -> SinkConfig {
    SinkConfig {
        max_attempts: 3,
        concurrency: 4,
        backoff: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        ..SinkConfig::new(
            name,
            SinkKind::Http(HttpSinkConfig {
                url: "http://127.0.0.1:9/unused".to_owned(),
                secret: None,
                headers: Default::default(),
                timeout: Duration::from_secs(5),
            }),
        )
    }
}

/// Records every delivery; while closed, deliveries wait (the gate) so tests can hold
/// them in flight.
#[derive(Clone, Default)]
pub struct RecordingSink {
    inner: Arc<RecordingInner>,
}

#[derive(Default)]
struct RecordingInner {
    delivered: Mutex<Vec<String>>,
    gate: Option<Semaphore>,
    waiting: AtomicUsize,
}

impl RecordingSink {
    pub fn open() -> Self {
        Self::default()
    }

    /// Every delivery waits until [`RecordingSink::release_all`].
    pub fn closed() -> Self {
        Self {
            inner: Arc::new(RecordingInner {
                gate: Some(Semaphore::new(0)),
                ..RecordingInner::default()
            }),
        }
    }

    pub fn release_all(&self) {
        if let Some(gate) = &self.inner.gate {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Deliveries currently held at the gate.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    pub fn delivered(&self) -> Vec<String> {
        self.inner.delivered.lock().unwrap().clone()
    }
}

impl Sink for RecordingSink {
    async fn deliver(&self, event: &Event<'_>) -> Outcome {
        if let Some(gate) = &self.inner.gate {
            self.inner.waiting.fetch_add(1, Ordering::SeqCst);
            let permit = gate.acquire().await.unwrap();
            permit.forget();
            self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner
            .delivered
            .lock()
            .unwrap()
            .push(event.id.to_owned());
        Outcome::Delivered
    }
}

/// A driver running in this process.
pub struct Running {
    pub registry: Registry,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), relaycord_sinks::SinkError>>,
}

impl Running {
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.registry, name)
    }

    /// `relaycord_sink_deliveries_total{outcome=...}`.
    pub fn outcome(&self, outcome: &str) -> f64 {
        outcome_count(&self.registry, outcome)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub fn outcome_count(registry: &Registry, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    crate::metric_with(registry, "relaycord_sink_deliveries_total", &[&label])
}

pub fn run_driver<S: Sink>(bus: &Stack, config: &SinkConfig, sink: S) -> Running {
    run_driver_on(bus.js.clone(), config, sink)
}

/// Writes a config file with this bus and the given `[[sinks]]` TOML; returns its path.
pub fn write_config(
    dir: &std::path::Path,
    file: &str,
    bus: &Stack,
    sinks: &str,
) -> std::path::PathBuf {
    let path = dir.join(file);
    let text = format!("[nats]\nurl = \"{}\"\n\n{sinks}", bus.nats_url());
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the `relaycord` binary to completion; returns (success, stdout, stderr).
pub async fn relaycord(args: &[&str]) -> (bool, String, String) {
    relaycord_with_env(args, &[]).await
}

/// [`relaycord`] with these environment variables set (the test's own `DISCORD_TOKEN`
/// is never inherited: configs under test hold every secret they mean to).
pub async fn relaycord_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(crate::relaycord_bin())
        .args(args)
        .env_remove("DISCORD_TOKEN")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run relaycord");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP sink signed with the suite's secret.
pub fn http_config(name: &str, url: &str) -> SinkConfig {
    http_config_with(name, url, crate::SECRET, Duration::from_secs(5))
}

pub fn http_config_with(name: &str, url: &str, secret: &str, timeout: Duration) -> SinkConfig {
    SinkConfig::new(
        name,
        SinkKind::Http(HttpSinkConfig {
            url: url.to_owned(),
            secret: Some(relaycord_bus::Secret::new(secret)),
            headers: Default::default(),
            timeout,
        }),
    )
}

/// Runs a configured sink (the real one, built from its config) in this process.
pub fn run_sink(bus: &Stack, config: &SinkConfig) -> Running {
    let registry = Registry::new();
    let metrics = SinkMetrics::new(&registry).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (config, js, shutdown) = (config.clone(), bus.js.clone(), shutdown.clone());
        async move {
            config
                .run(js, &Subjects::default(), metrics, shutdown)
                .await
        }
    });
    Running {
        registry,
        shutdown,
        task,
    }
}

/// Refuses every delivery as a permanent failure: each event is dead-lettered at once.
#[derive(Clone, Default)]
pub struct RefusingSink;

impl Sink for RefusingSink {
    async fn deliver(&self, _: &Event<'_>) -> Outcome {
        Outcome::Permanent {
            reason: "refused by the test".to_owned(),
            status: Some(410),
        }
    }
}

/// [`run_driver`] on another connection (e.g. through a proxy).
pub fn run_driver_on<S: Sink>(js: jetstream::Context, config: &SinkConfig, sink: S) -> Running {
    let registry = Registry::new();
    let metrics = SinkMetrics::new(&registry).unwrap();
    let shutdown = CancellationToken::new();
    let settings = config.driver_settings(&Subjects::default());
    let task = tokio::spawn(Driver::new(sink, js, settings, metrics).run(shutdown.clone()));
    Running {
        registry,
        shutdown,
        task,
    }
}
