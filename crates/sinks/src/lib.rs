#![doc = include_str!("../README.md")]

pub mod amqp;
mod any;
pub mod config;
pub mod dedupe;
pub mod discord;
pub mod dlq;
pub mod driver;
pub mod error;
mod event;
pub mod filter;
pub mod holds;
pub mod http;
mod lanes;
pub mod metrics;
pub mod nats;
pub mod ordering;
pub mod pause;
pub mod replay;
pub mod response;
pub mod retry;
mod settings;
pub mod template;
pub mod validate;
mod worker;

use std::time::Duration;

pub use any::{AnySink, BuildContext};
pub use config::{SinkConfig, SinkKind};
pub use driver::{Driver, DriverSettings};
pub use error::{SinkError, SinkErrorKind};
pub use event::{Author, Body, Event};
pub use metrics::SinkMetrics;

/// What a sink reports about one delivery attempt. The driver turns it into an ack, a
/// delayed redelivery or a dead letter; sinks never touch JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth trying again, after at least `after` when the receiver said so.
    Retry {
        reason: String,
        status: Option<u16>,
        after: Option<Duration>,
    },
    /// Will fail the same way every time: dead-letter it now.
    Permanent {
        reason: String,
        status: Option<u16>,
    },
    /// Not for this destination after all (e.g. the discord sink's own message coming
    /// back): acked without sending, counted `skipped`.
    Skipped {
        reason: String,
    },
}

/// A destination. Implementations classify each attempt; concurrency, acks, retries,
/// dead letters and metrics belong to the [`Driver`].
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, event: &Event<'_>) -> impl Future<Output = Outcome> + Send;
}
