//! What `relaycord dev` and the test kit (`relaycord-testkit`) both run on loopback: a
//! nats-server child, a webhook receiver, and the ids the simulator's events should
//! arrive under. Its own crate so that the binary can use it behind its `dev` feature
//! without depending on the test kit, which depends on the binary's library.

pub mod nats_server;
pub mod proc;
pub mod receiver;
mod sim;

pub use nats_server::{INSTALL_HINT, NatsCluster, NatsServer, NatsServerError};
pub use receiver::Receiver;
pub use sim::{GENERATED_TYPES, dedupe_id, expected_ids, is_published};
