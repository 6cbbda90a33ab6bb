//! The one place that lists every sink type at run time.
//!
//! `relaycord config check`, the running driver and the DLQ replay all build an
//! [`AnySink`] from a [`SinkKind`] and use it through [`Sink`], so none of them names a
//! sink type. A new type is its folder, a variant in `SinkKind` and in `AnySink` (with
//! its arm in the two matches below) and its section in docs/sinks.md.

use async_nats::jetstream;
use relaycord_bus::Subjects;

use crate::amqp::AmqpSink;
use crate::discord::DiscordSink;
use crate::error::SinkError;
use crate::http::HttpSink;
use crate::nats::NatsSink;
use crate::{Event, Outcome, Sink, SinkKind};

/// What a sink may take from the bus it runs on, given at build time.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildContext<'a> {
    /// The bus's JetStream context and subjects; `None` when a config is only checked.
    /// The nats sink publishes on this connection unless it has a `url` of its own,
    /// and refuses subjects that would feed its output back into Relaycord.
    pub bus: Option<(&'a jetstream::Context, &'a Subjects)>,
}

impl<'a> BuildContext<'a> {
    /// For sinks that will run (or replay) on this bus.
    pub fn on_bus(js: &'a jetstream::Context, subjects: &'a Subjects) -> Self {
        Self {
            bus: Some((js, subjects)),
        }
    }
}

/// A built sink of any type.
pub enum AnySink {
    Http(HttpSink),
    Amqp(AmqpSink),
    Nats(NatsSink),
    /// Boxed: by far the largest (templates, limiter, identity).
    Discord(Box<DiscordSink>),
}

impl SinkKind {
    /// Validates the type's config and builds the sink; errors name the key
    /// (`sinks.<name>.<key>`) and the fix.
    pub fn build(&self, name: &str, context: &BuildContext<'_>) -> Result<AnySink, SinkError> {
        Ok(match self {
            Self::Http(c) => AnySink::Http(HttpSink::build(name, c)?),
            Self::Amqp(c) => AnySink::Amqp(AmqpSink::build(name, c)?),
            Self::Nats(c) => AnySink::Nats(NatsSink::build(name, c, context)?),
            Self::Discord(c) => AnySink::Discord(Box::new(DiscordSink::build(name, c)?)),
        })
    }
}

impl Sink for AnySink {
    async fn deliver(&self, event: &Event<'_>) -> Outcome {
        match self {
            Self::Http(s) => s.deliver(event).await,
            Self::Amqp(s) => s.deliver(event).await,
            Self::Nats(s) => s.deliver(event).await,
            Self::Discord(s) => s.deliver(event).await,
        }
    }
}
