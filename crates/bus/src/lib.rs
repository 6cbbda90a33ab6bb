#![doc = include_str!("../README.md")]

pub mod backoff;
pub mod config;
pub mod contract;
pub mod dedupe;
pub mod denials;
pub mod dispatch;
pub mod envelope;
pub mod error;
pub mod interaction;
pub mod invalid_requests;
pub mod kv;
pub mod message;
pub mod redact;
pub mod secret;
pub mod streams;
pub mod subject;
pub mod trace;
pub mod webhook_event;

/// Installs ring as the process-wide rustls provider unless one is installed already.
///
/// Several dependencies enable different rustls providers, so rustls cannot pick one by
/// itself; every role calls this before it builds an HTTP or websocket client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use config::{ConfigError, DISCORD_API_BASE, DiscordConfig, NatsConfig, Shared};
pub use dispatch::{Dispatch, MalformedDispatch};
pub use envelope::{Envelope, Source};
pub use error::{BusError, BusErrorKind};
pub use invalid_requests::InvalidRequests;
pub use message::OutgoingMessage;
pub use secret::Secret;
pub use streams::{StreamSettings, ensure_streams};
pub use subject::Subjects;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "discord";

/// Headers set on every published event, beside `Nats-Msg-Id` (= envelope id); the
/// message itself is built by [`OutgoingMessage`].
pub mod headers {
    pub const TYPE: &str = "Relaycord-Type";
    pub const SHARD: &str = "Relaycord-Shard";
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// W3C trace context, set only while tracing is on (see [`crate::trace`]).
    pub const TRACEPARENT: &str = crate::trace::TRACEPARENT;
}
