//! The one driver every sink runs under.
//!
//! It owns the durable pull consumer, the concurrency limit, in-progress acks, the
//! mapping of [`Outcome`]s onto JetStream acks, dead-lettering, dedupe and metrics. A
//! sink only classifies attempts.
//!
//! | outcome                          | JetStream                                   |
//! |----------------------------------|---------------------------------------------|
//! | `Delivered`                      | ack                                         |
//! | `Retry`, attempts left           | nak with delay (backoff, or Retry-After)    |
//! | `Retry` exhausted, `Permanent`   | publish to `relaycord.dlq.<sink>`, then term |
//!
//! JetStream's consumer `BackOff` list applies only to ack timeouts, not naks, so the
//! delay is computed here and sent with the nak.
//!
//! The driver pulls only as many messages as it has free delivery slots, so everything it
//! holds is being delivered: on shutdown it finishes those and naks whatever the last pull
//! still brings, instead of leaving it to the ack timeout.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use relaycord_bus::subject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dedupe::Dedupe;
use crate::error::{SinkError, SinkErrorKind};
use crate::holds::Holds;
use crate::metrics::DeliveryHandles;
use crate::ordering::Ordering;
use crate::pause::Breaker;
use crate::worker::Worker;
use crate::{Sink, SinkMetrics};

pub use crate::dlq::headers as dlq_headers;
pub use crate::settings::DriverSettings;

/// How long one pull request waits on the server for messages. It bounds how long a
/// shutdown waits for the last pull to end.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// How often consumer and dead-letter gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

pub struct Driver<S> {
    sink: Arc<S>,
    js: jetstream::Context,
    settings: Arc<DriverSettings>,
    metrics: SinkMetrics,
}

impl<S: Sink> Driver<S> {
    pub fn new(
        sink: S,
        js: jetstream::Context,
        settings: DriverSettings,
        metrics: SinkMetrics,
    ) -> Self {
        Self {
            sink: Arc::new(sink),
            js,
            settings: Arc::new(settings),
            metrics,
        }
    }

    /// The durable consumer name, shared by every replica of this sink.
    pub fn consumer_name(sink: &str) -> String {
        format!("relaycord-{}", subject::sanitize_token(sink))
    }

    /// Creates (or updates) the durable consumer. Idempotent.
    pub async fn ensure_consumer(&self) -> Result<jetstream::consumer::PullConsumer, SinkError> {
        let s = &self.settings;
        let stream = self.js.get_stream(&s.stream).await.map_err(|e| {
            SinkError::with_source(
                SinkErrorKind::Bus,
                format!("stream {} is not available", s.stream),
                e,
            )
        })?;
        let name = Self::consumer_name(&s.name);
        let config = consumer_config(&self.js, s, name.clone());
        stream.create_consumer(config).await.map_err(|e| {
            SinkError::with_source(
                SinkErrorKind::Bus,
                format!("cannot create consumer {name} on {}", s.stream),
                e,
            )
        })
    }

    /// The stream's replicas and `max_age`, which the sink's buckets follow.
    pub(crate) async fn stream_shape(&self) -> (usize, Duration) {
        match self.js.get_stream(&self.settings.stream).await {
            Ok(mut stream) => stream.info().await.map_or((1, Duration::ZERO), |i| {
                (i.config.num_replicas, i.config.max_age)
            }),
            Err(_) => (1, Duration::ZERO),
        }
    }

    /// Opens the dedupe bucket, replicated like the stream it protects.
    async fn open_dedupe(&self, replicas: usize) -> Result<Option<Dedupe>, SinkError> {
        let Some(window) = self.settings.dedupe_window else {
            return Ok(None);
        };
        Dedupe::open(&self.js, &self.settings.name, window, replicas)
            .await
            .map(Some)
    }

    /// Delivers until `shutdown` fires, then finishes in-flight deliveries and releases
    /// (naks) anything pulled but not started.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SinkError> {
        let ordered = self.settings.ordering != Ordering::None;
        let (replicas, max_age) = self.stream_shape().await;
        let worker = Arc::new(Worker {
            sink: Arc::clone(&self.sink),
            js: self.js.clone(),
            settings: Arc::clone(&self.settings),
            metrics: self.metrics.clone(),
            handles: DeliveryHandles::new(&self.metrics, &self.settings.name),
            // An ordered sink's lane records do dedupe's work (see crate::lanes).
            dedupe: match ordered {
                true => None,
                false => self.open_dedupe(replicas).await?,
            },
            holds: Holds::open(&self.js, &self.settings.name, max_age, replicas).await?,
            shutdown: shutdown.clone(),
            breaker: Breaker::new(
                &self.settings.name,
                self.settings.pause,
                self.metrics
                    .paused
                    .with_label_values(&[&self.settings.name]),
                self.metrics.paused_sinks.clone(),
            ),
        });
        // Every sink shows the lane gauges (0 when unordered), so one dashboard and one
        // alert cover every sink.
        let label = [self.settings.name.as_str()];
        self.metrics.lanes_active.with_label_values(&label).set(0);
        self.metrics.lanes_blocked.with_label_values(&label).set(0);
        self.metrics
            .lane_oldest_wait
            .with_label_values(&label)
            .set(0.0);
        self.metrics
            .partitions_owned
            .with_label_values(&label)
            .set(0);
        if ordered {
            let shape = (replicas, max_age);
            return crate::lanes::run(worker, self.metrics, shape, shutdown).await;
        }
        let consumer = self.ensure_consumer().await?;
        if let Some(dedupe) = &worker.dedupe {
            dedupe
                .check_consumer(&self.js, created(consumer.cached_info()))
                .await;
        }
        let s = Arc::clone(&self.settings);
        tracing::info!(sink = %s.name, stream = %s.stream, subjects = ?s.subjects, dedupe = s.dedupe_window.is_some(), "sink started");
        let gauges = tokio::spawn(refresh_gauges(
            consumer.clone(),
            self.js.clone(),
            Arc::clone(&s),
            self.metrics.clone(),
            worker.dedupe.clone(),
        ));

        let permits = Arc::new(Semaphore::new(s.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut leftover = None;
        'pull: loop {
            while let Some(done) = tasks.try_join_next() {
                reap(&s.name, done, &self.metrics);
            }
            if worker.breaker.is_paused() {
                // Paused: one event at a time, held by the probe until the receiver
                // takes it; the rest stays in the stream.
                probe(&consumer, &worker, &shutdown).await;
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                () = worker.breaker.until_paused() => continue,
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let mut slots: Vec<OwnedSemaphorePermit> = vec![first];
            while let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
                slots.push(p);
            }
            let batch = consumer
                .batch()
                .max_messages(slots.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(sink = %s.name, %error, "pull request failed");
                    doubt(&worker);
                    pause(&shutdown).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    // Once stopping, nothing new starts, even if a message is ready too.
                    biased;
                    () = shutdown.cancelled() => {
                        leftover = Some(batch);
                        break 'pull;
                    }
                    // Paused while waiting: the rest of this pull is nak'd by the workers.
                    () = worker.breaker.until_paused() => {
                        leftover_paused(&mut batch, &worker).await;
                        break;
                    }
                    next = batch.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        // The server sends at most `max_messages`, one slot each.
                        let permit = slots.pop();
                        let worker = Arc::clone(&worker);
                        let span = delivery_span(&s.name, &message);
                        tasks.spawn(async move {
                            worker.handle(message).instrument(span).await;
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => {
                        // Missed replies and server errors are transient: pull again.
                        tracing::warn!(sink = %s.name, %error, "pulling messages failed");
                        doubt(&worker);
                        pause(&shutdown).await;
                        break;
                    }
                    None => break,
                }
            }
        }
        let release = async {
            if let Some(mut batch) = leftover {
                while let Some(Ok(message)) = batch.next().await {
                    worker.release(&message).await;
                }
            }
        };
        let finish = async {
            while let Some(done) = tasks.join_next().await {
                reap(&s.name, done, &self.metrics);
            }
        };
        tokio::join!(release, finish);
        gauges.abort();
        // Acks are buffered by the client: send them before the process may exit.
        if let Err(error) = self.js.client().flush().await {
            tracing::warn!(sink = %s.name, %error, "cannot flush the last acks");
        }
        tracing::info!(sink = %s.name, "sink stopped");
        Ok(())
    }
}

/// A delivery task's end. The sink's own panics are caught around the attempt (and the
/// message nak'd); one anywhere else in the driver is said here rather than dropped, and
/// its message comes back after ack_wait.
fn reap(sink: &str, done: Result<(), tokio::task::JoinError>, metrics: &SinkMetrics) {
    if let Err(error) = done
        && error.is_panic()
    {
        let panic = error.into_panic();
        let panic = crate::worker::panic_message(&*panic);
        tracing::error!(%sink, %panic, "a delivery task panicked; its message is redelivered after ack_wait");
        metrics
            .deliveries
            .with_label_values(&[sink, "panicked"])
            .inc();
    }
}

/// One attempt's span (when tracing is on), a child of the publisher's span found in the
/// message's `traceparent`; the sink's own requests and any dead letter carry it on.
fn delivery_span(sink: &str, message: &jetstream::Message) -> tracing::Span {
    let span = relaycord_bus::span!(
        "sink.deliver",
        otel.kind = "consumer",
        sink,
        subject = %message.subject,
        outcome = tracing::field::Empty
    );
    relaycord_bus::trace::continue_from(&span, message.headers.as_ref());
    span
}

/// Deliveries beyond `max_attempts` a message was once allowed for dead-lettering
/// (`max_deliver` was `max_attempts` + this). Kept for the tests that show far more
/// failed stores than that pass without the message being given up.
pub const DEAD_LETTER_DELIVERIES: u32 = 5;

/// The consumer's `max_deliver`: unlimited. The worker bounds real attempts itself
/// (deliveries minus holds, see [`crate::holds`]) and dead-letters after
/// `max_attempts`; a server-side bound would also count holds and stops, and a message
/// past it is never handed out again: neither delivered nor dead-lettered, only lost.
const MAX_DELIVER: i64 = -1;

/// Pulls one message for a paused sink and probes with it until it is delivered or the
/// worker stops.
async fn probe<S: Sink>(
    consumer: &jetstream::consumer::PullConsumer,
    worker: &Worker<S>,
    shutdown: &CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = worker.breaker.until_probe() => {}
    }
    if !worker.breaker.is_paused() {
        return;
    }
    let batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await;
    let mut batch = match batch {
        Ok(batch) => batch,
        Err(error) => {
            tracing::warn!(sink = %worker.settings.name, %error, "pull request failed");
            pause(shutdown).await;
            return;
        }
    };
    let next = tokio::select! {
        () = shutdown.cancelled() => {
            leftover_paused(&mut batch, worker).await;
            return;
        }
        next = batch.next() => next,
    };
    match next {
        Some(Ok(message)) => worker.probe(message).await,
        Some(Err(error)) => {
            tracing::warn!(sink = %worker.settings.name, %error, "pulling messages failed");
            pause(shutdown).await;
        }
        None => {}
    }
}

/// Gives back, untried, what the rest of a pull brings after the sink paused.
async fn leftover_paused<S: Sink>(batch: &mut pull::Batch, worker: &Worker<S>) {
    while let Some(Ok(message)) = batch.next().await {
        worker.release(&message).await;
    }
}

/// A failed pull may mean the consumer was deleted (and maybe created again, its acks
/// forgotten) or its server restarted: every delivery is looked up for `ack_wait`
/// ([`Dedupe::doubt`]).
fn doubt<S>(worker: &Worker<S>) {
    if let Some(dedupe) = &worker.dedupe {
        dedupe.doubt(worker.settings.ack_wait);
    }
}

/// A consumer's creation time in unix ns, which tells its incarnations apart.
fn created(info: &jetstream::consumer::Info) -> i64 {
    i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// A short wait before pulling again after an error, cut short by shutdown.
async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

/// Keeps the pending and dead-letter gauges current.
async fn refresh_gauges(
    mut consumer: jetstream::consumer::PullConsumer,
    js: jetstream::Context,
    settings: Arc<DriverSettings>,
    metrics: SinkMetrics,
    dedupe: Option<Dedupe>,
) {
    let label = [settings.name.as_str()];
    let dlq_subject = subject::dlq(&settings.name);
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        tick.tick().await;
        let info = consumer.info().await;
        if let Some(dedupe) = &dedupe {
            match &info {
                Ok(info) => dedupe.check_consumer(&js, created(info)).await,
                Err(_) => dedupe.doubt(settings.ack_wait),
            }
        }
        if let Ok(info) = info {
            metrics
                .consumer_pending
                .with_label_values(&label)
                .set(info.num_pending as i64);
            metrics
                .consumer_ack_pending
                .with_label_values(&label)
                .set(info.num_ack_pending as i64);
        }
        if let Ok(count) = crate::dlq::count(&js, &dlq_subject).await {
            metrics
                .dead_letters
                .with_label_values(&label)
                .set(count as i64);
        }
        if let Ok(mut dlq) = js.get_stream(relaycord_bus::streams::DLQ_STREAM).await
            && let Ok(info) = dlq.info().await
        {
            metrics.dlq_bytes.set(info.state.bytes as i64);
            metrics.dlq_max_bytes.set(info.config.max_bytes);
            metrics
                .dead_letters_max
                .set(info.config.max_messages_per_subject);
        }
    }
}

/// The sink's consumer `name`: explicit acks, unlimited deliveries, the sink's filter
/// subjects as far as the server can take them.
pub(crate) fn consumer_config(
    js: &jetstream::Context,
    s: &DriverSettings,
    name: String,
) -> pull::Config {
    let mut config = pull::Config {
        durable_name: Some(name),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        max_deliver: MAX_DELIVER,
        max_ack_pending: (s.concurrency as i64 * 4).max(256),
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    };
    (config.filter_subject, config.filter_subjects) = filters(js, &s.subjects);
    config
}

/// A consumer's `filter_subject` and `filter_subjects` for a sink's filter subjects.
pub(crate) fn filters(js: &jetstream::Context, subjects: &[String]) -> (String, Vec<String>) {
    match subjects {
        [] => Default::default(),
        [one] => (one.clone(), Vec::new()),
        many if server_at_least(js, 2, 10) => (String::new(), many.to_vec()),
        // nats-server 2.9 allows one filter per consumer: read everything, and let
        // the in-process filter skip what this sink does not want.
        _ => Default::default(),
    }
}

fn server_at_least(js: &jetstream::Context, major: u64, minor: u64) -> bool {
    let version = js.client().server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
