#![doc = include_str!("../README.md")]

mod compression;
mod config;
mod discord_rest;
mod gateway;
mod generator;
mod interactions;
mod payloads;
mod protocol;
mod rest;
mod simulator;
mod snowflake;
mod state;
mod stats;
mod webhook_events;
mod world;

pub use compression::Compression;
pub use config::SimConfig;
pub use discord_rest::{DiscordRest, PostedMessage, RateLimitScope, RestCounts, RestLimits};
pub use generator::{EventMix, GenerateSpec, GeneratorHandle, STAMP_FIELD};
pub use interactions::{
    APPLICATION_ID, Forgery, Interactions, RestCall, RestCallKind, SignedRequest, SimInteraction,
};
pub use simulator::Simulator;
pub use stats::{CompressionCounts, LiveSession, SentDispatch, SimStats};
pub use webhook_events::{Delivery, RetryPolicy, SimWebhookEvent, WebhookEvents, new_user_id};

use std::time::Duration;

/// Errors of the simulator's control API.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("shard {0} does not exist")]
    NoSuchShard(u32),
    #[error("shard {0} has no session (never identified, or invalidated)")]
    NoSession(u32),
    #[error("shard {0} has no live connection")]
    NotConnected(u32),
    #[error("shard {0} has no dispatch to duplicate")]
    NothingToDuplicate(u32),
    #[error("no session covers guild {0}")]
    NotCovered(u64),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}
