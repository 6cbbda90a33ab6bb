//! The `relaycord` binary's library half: config loading, role wiring and, behind the
//! default `dev` feature, the all-in-one demo. Test fixtures live in `relaycord-testkit`.

pub mod config;
pub mod contract;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
mod dev_webhooks;
pub mod interactions;
pub mod nats_client;
pub mod roles;
pub mod telemetry;
pub mod traces;
