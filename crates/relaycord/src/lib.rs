//! The `relaycord` binary's library half: config loading, role wiring, the dev demo and
//! the fixtures (child nats-server, local receiver) that tests share with the demo.

pub mod config;
pub mod dev;
pub mod interactions;
pub mod nats_client;
pub mod nats_server;
pub mod receiver;
pub mod roles;
pub mod telemetry;
