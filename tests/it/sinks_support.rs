//! Fixtures of the sink tests: a bare bus (nats-server + streams, no ingest), events
//! published straight to it, an in-process sink that records and can be held, and a
//! driver started on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use prometheus::Registry;
use relaycord::nats_server::NatsServer;
use relaycord_bus::{Envelope, Source, StreamSettings, Subjects, envelope::now_rfc3339, headers};
use relaycord_sinks::http::HttpSinkConfig;
use relaycord_sinks::retry::Backoff;
use relaycord_sinks::{Driver, Event, Outcome, Sink, SinkConfig, SinkKind, SinkMetrics};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::support::{eventually, metric};

/// A nats-server child with Relaycord's streams, nothing else running.
pub struct Bus {
    pub nats: NatsServer,
    pub js: jetstream::Context,
}

impl Bus {
    pub async fn start() -> Bus {
        let nats = NatsServer::start().expect("start nats-server (scripts/setup.sh installs it)");
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        relaycord_bus::ensure_streams(&js, &Subjects::default(), &StreamSettings::default())
            .await
            .unwrap();
        Bus { nats, js }
    }

    /// Publishes one gateway event as ingest would; returns its id.
    pub async fn publish(&self, id: &str, event_type: &str, guild: &str, data: &str) -> String {
        let data = RawValue::from_string(data.to_owned()).unwrap();
        let envelope = Envelope {
            id: id.into(),
            source: Source::Gateway,
            event_type: event_type.into(),
            shard: Some(0),
            seq: Some(1),
            guild_id: Some(guild.into()),
            received_at: now_rfc3339().into(),
            data: &data,
        };
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, id);
        h.insert(headers::TYPE, event_type);
        let subject = Subjects::default().gateway(event_type, Some(guild));
        let publish = PublishMessage::build()
            .payload(envelope.to_bytes())
            .headers(h);
        self.js
            .send_publish(subject, publish)
            .await
            .unwrap()
            .await
            .unwrap();
        id.to_owned()
    }

    /// `n` MESSAGE_CREATEs `msg:<base+i>` in guild 1 / channel 10; returns their ids.
    pub async fn messages(&self, base: u64, n: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for i in base..base + n {
            let data = format!(
                r#"{{"id":"{i}","channel_id":"10","guild_id":"1","content":"event {i}","author":{{"id":"2","username":"u"}}}}"#
            );
            ids.push(
                self.publish(&format!("msg:{i}"), "MESSAGE_CREATE", "1", &data)
                    .await,
            );
        }
        ids
    }

    /// Waits until the sink's consumer has handed out and seen acked every message.
    pub async fn wait_settled(&self, sink: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let stream = self.js.get_stream("DISCORD_GATEWAY").await.unwrap();
        let name = Driver::<RecordingSink>::consumer_name(sink);
        loop {
            // The consumer may not exist yet: the sink creates it when it starts.
            let state = stream
                .consumer_info(&name)
                .await
                .map(|i| (i.num_pending, i.num_ack_pending));
            if matches!(state, Ok((0, 0))) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "consumer of {sink} never settled: {state:?} (pending, unacked)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
    crate::support::metric_with(registry, "relaycord_sink_deliveries_total", &[&label])
}

pub fn run_driver<S: Sink>(bus: &Bus, config: &SinkConfig, sink: S) -> Running {
    run_driver_on(bus.js.clone(), config, sink)
}

/// Writes a config file with this bus and the given `[[sinks]]` TOML; returns its path.
pub fn write_config(
    dir: &std::path::Path,
    file: &str,
    bus: &Bus,
    sinks: &str,
) -> std::path::PathBuf {
    let path = dir.join(file);
    let text = format!("[nats]\nurl = \"{}\"\n\n{sinks}", bus.nats.url());
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the `relaycord` binary to completion; returns (success, stdout, stderr).
pub async fn relaycord(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycord"))
        .args(args)
        // Configs under test hold every secret they mean to.
        .env_remove("DISCORD_TOKEN")
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
    http_config_with(name, url, crate::support::SECRET, Duration::from_secs(5))
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
pub fn run_sink(bus: &Bus, config: &SinkConfig) -> Running {
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
