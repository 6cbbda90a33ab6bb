//! Ingest's `/readyz` and `/healthz`, served by the same wiring as `relaycord ingest`:
//! a shard kept without a session past `ingest.unhealthy_after` makes the process
//! unready (not unhealthy: restarting would not bring Discord back) until it recovers;
//! once ingest has stopped, `/healthz` fails.

use std::time::{Duration, Instant};

use prometheus::Registry;
use relaycord::roles;
use relaycord::telemetry::{self, Health};
use relaycord_sim::SimConfig;
use relaycord_testkit::Stack;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Upper bound for things that take seconds; reached only when a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Polls `path` until it answers `status`; panics with the last answer after PATIENCE.
async fn wait_status(port: u16, path: &str, status: u16, why: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (got, body) = get(port, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status} ({why}); last {got} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_shard_is_down_past_the_threshold_and_recovers() {
    let stack = Stack::builder()
        .sim_config(SimConfig {
            shards: 2,
            guilds: 6,
            // A zombie connection is noticed after one heartbeat interval.
            heartbeat_interval: Duration::from_millis(500),
            ..SimConfig::default()
        })
        .config(|c| {
            c.ingest.lease_ttl = Duration::from_secs(3);
            c.ingest.unhealthy_after = Duration::from_secs(1);
        })
        .start()
        .await;
    let (sim, config) = (&stack.sim, stack.config.clone());

    // As `relaycord ingest` does, with the endpoint outliving ingest so that its end
    // can be observed.
    let health = Health::default();
    let registry = Registry::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server_stop = CancellationToken::new();
    telemetry::serve_metrics(
        listener,
        registry.clone(),
        health.clone(),
        server_stop.clone(),
    );
    let js = stack.js.clone();
    health.set_ready(true);
    let shutdown = CancellationToken::new();
    let ingest = tokio::spawn({
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move { roles::run_ingest(&config, js, &registry, &health, shutdown).await }
    });

    if let Err(error) = sim.wait_ready(PATIENCE).await {
        panic!("shards not ready: {error}; {:?}", sim.stats());
    }
    wait_status(port, "/readyz", 200, "both shards have a session").await;
    assert_eq!(get(port, "/healthz").await.0, 200);

    // Shard 0 loses its session: every connection it makes stays silent, so twilight
    // keeps giving up on it and resuming again.
    sim.set_zombie(0, true).unwrap();
    let body = wait_status(port, "/readyz", 503, "shard 0 down for over 1 s").await;
    // Shard 0 of 2: during a reshard, shard 0 of another count could be meant.
    assert!(body.contains("[0/2]"), "names shard 0 only: {body:?}");
    let (live, body) = get(port, "/healthz").await;
    assert_eq!(
        live, 200,
        "a shard without a session is not a wedged process: {body}"
    );

    sim.set_zombie(0, false).unwrap();
    wait_status(port, "/readyz", 200, "shard 0 resumed").await;
    assert_eq!(get(port, "/healthz").await.0, 200);
    assert_eq!(
        sim.stats().identifies,
        2,
        "shard 0 resumed: {:?}",
        sim.stats()
    );

    shutdown.cancel();
    ingest
        .await
        .expect("ingest task")
        .expect("ingest stops cleanly");
    let (live, body) = get(port, "/healthz").await;
    assert_eq!(live, 503, "ingest has ended: {body}");
    assert!(body.contains("ingest has stopped"), "{body}");
    server_stop.cancel();
}
