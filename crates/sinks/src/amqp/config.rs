//! `type = "amqp"` sink configuration.

use std::time::Duration;

use relaycord_bus::Secret;
use schemars::JsonSchema;
use serde::Deserialize;

/// Publishes each envelope to a RabbitMQ (AMQP 0-9-1) exchange, persistent, with
/// publisher confirms and `message_id` = the event id.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    /// `amqp://user:password@host:5672/vhost` (`%2f` is the default vhost) or `amqps://`.
    /// A secret: it usually holds a password.
    pub url: Secret,
    /// Exchange to publish to. Empty: the default exchange (routing key = queue name).
    pub exchange: String,
    /// `direct`, `fanout`, `topic` or `headers`; used when declaring the exchange.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Declare the exchange (durable) on connect. Turn off when the broker's
    /// permissions do not allow it and the exchange exists already.
    #[serde(default = "default_true")]
    pub declare: bool,
    /// Routing key template, e.g. `"discord.{type}.{guild_id}"`; fields: type, guild_id,
    /// channel_id, id, shard, source, sink.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// Publish as mandatory (the default): an event no queue is bound for comes back
    /// from the broker and the attempt fails (retried, then dead-lettered). `false` lets
    /// the broker confirm and drop it, and it counts as delivered.
    #[serde(default = "default_true")]
    pub mandatory: bool,
    /// Time allowed for connecting, publishing and the broker's confirm.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

impl AmqpSinkConfig {
    /// An amqp sink with defaults for everything but where it publishes.
    pub fn new(url: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url.into()),
            exchange: exchange.into(),
            exchange_type: default_exchange_type(),
            declare: true,
            routing_key: default_routing_key(),
            mandatory: true,
            timeout: default_timeout(),
        }
    }
}

fn default_exchange_type() -> String {
    "topic".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_routing_key() -> String {
    "discord.{type}.{guild_id}".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
