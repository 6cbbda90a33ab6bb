//! The end-to-end tests' one harness. A test describes the [`Stack`] it needs (NATS,
//! simulator, which roles run, a config patch) and gets every handle back; the fixtures
//! tests share live here too, so that no test file imports another's.
//!
//! Everything binds loopback ports chosen by the OS and keeps the listener it bound:
//! nats-server picks its own port (see [`NatsServer`]), and our own servers are handed
//! a bound [`tokio::net::TcpListener`].

mod bus;
mod interactions;
mod metrics;
mod sinks;
pub mod soak;
mod stack;
mod test_receiver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use bus::{Stored, decision, stored, stored_in, stream_ids};
pub use interactions::{
    HoldingProxy, error_chain, nats_handler, nats_route, post_chunked, send_to,
    shaped_signature_headers,
};
pub use metrics::{metric, metric_with, scrape, sum_metric, sum_metric_with};
pub use relaycord_devkit::{
    GENERATED_TYPES, NatsCluster, NatsServer, Receiver, dedupe_id, expected_ids, is_published,
    log_excerpt, proc,
};
pub use sinks::{
    RecordingSink, RefusingSink, Running, http_config, http_config_with, http_sink, outcome_count,
    relaycord, relaycord_with_env, run_driver, run_driver_on, run_sink, spawn_sink, test_config,
    write_config,
};
pub use stack::{Stack, StackBuilder, assert_sim_clean, start_sim};
pub use test_receiver::{Accepted, TestReceiver, wait_accepted};

/// The webhook secret of every HTTP sink and receiver in the suite.
pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Polls `condition` until it holds or `timeout` passes; the condition may await
/// (a stream's state, a scrape), so wait loops need not be written by hand.
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition().await
}

/// The `relaycord` binary built with the tests. Only integration tests see
/// `CARGO_BIN_EXE_relaycord`; the kit finds it where Cargo puts it, next to the test
/// executable's `deps` directory.
pub fn relaycord_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_relaycord") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("relaycord")
}
