//! What the driver and each of its workers read: one sink's consumer, filter and retry
//! settings. Apart from both, so that the worker (one message) does not depend on the
//! driver (the pull loop that owns the workers).

use std::time::Duration;

use crate::filter::Filter;
use crate::ordering::{OnFailure, Ordering};
use crate::pause::PauseConfig;
use crate::retry::Backoff;

/// How the driver consumes and retries for one sink.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Sink name; the durable consumer is `relaycord-<name>`.
    pub name: String,
    /// Stream to consume (e.g. `DISCORD_GATEWAY`).
    pub stream: String,
    /// Consumer filter subjects; empty reads the whole stream.
    pub subjects: Vec<String>,
    /// Applied in process to every message (also covers what the consumer's filter could
    /// not express, e.g. channels, or several subjects on nats-server 2.9).
    pub filter: Filter,
    /// Delivery attempts before dead-lettering.
    pub max_attempts: u32,
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// How long JetStream waits for an ack before redelivering; in-progress acks are
    /// sent every half of it while a delivery is running.
    pub ack_wait: Duration,
    pub backoff: Backoff,
    /// Sink-side dedupe window; `None` disables dedupe.
    pub dedupe_window: Option<Duration>,
    /// When to pause after a run of failures, and how to probe.
    pub pause: PauseConfig,
    /// Which events are delivered one after another ([`crate::lanes`]).
    pub ordering: Ordering,
    /// What an ordered lane does with an event it cannot deliver.
    pub on_failure: OnFailure,
    /// How many parts the lanes are split into between replicas (ordered sinks only).
    pub partitions: u32,
}
