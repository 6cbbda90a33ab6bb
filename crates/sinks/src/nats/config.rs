//! `type = "nats"` sink configuration.

use std::time::Duration;

use relaycord_bus::Secret;
use schemars::JsonSchema;
use serde::Deserialize;

/// Republishes each envelope to a subject template, on the bus's own NATS or another.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://[user:password@]host:4222` of another server or cluster; empty: the
    /// server the bus uses. A secret: it may hold credentials.
    #[serde(default)]
    pub url: Secret,
    /// Subject template, e.g. `"relay.{type}.{guild_id}"`; fields: type, guild_id,
    /// channel_id, id, shard, source, sink. Values are sanitized to single tokens.
    pub subject: String,
    /// Publish through JetStream and wait for the stream's ack, with `Nats-Msg-Id` = the
    /// event id (the target stream drops repeats within its duplicate window). `false`:
    /// a core NATS publish, delivered once the server has it (no stream needed).
    #[serde(default = "default_true")]
    pub jetstream: bool,
    /// Time allowed for one publish (and its ack).
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

impl NatsSinkConfig {
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            url: Secret::default(),
            subject: subject.into(),
            jetstream: true,
            timeout: default_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
