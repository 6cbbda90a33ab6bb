//! A shard's backpressure is its own: a full window pauses that shard's reads, and never
//! makes one shard wait for another's acks.

use std::time::Duration;

use async_nats::jetstream;
use prometheus::Registry;
use relaycord::roles;
use relaycord::telemetry::Health;
use relaycord_ingest::ShardCount;
use relaycord_sim::SimConfig;
use relaycord_testkit::{Stack, eventually};

const SHARDS: u32 = 2;
const WINDOW: usize = 16;
const EVENTS: u64 = 2_000;

/// async-nats bounds unacknowledged publishes per JetStream context (and its clones), 5,000
/// by default, and `send_publish` waits for a permit. Shards sharing that bound, with more
/// shards × window than it allows, could each wait for a permit held by acks in the other
/// shards' windows, which nobody polls meanwhile: every shard stalled for good. Here the
/// context handed to ingest allows fewer than one window, the small-scale equivalent of
/// 20 shards × 256 against 5,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_publish_past_a_shared_ack_bound_smaller_than_their_windows() {
    let stack = Stack::builder()
        .sim_config(SimConfig {
            shards: SHARDS,
            ..SimConfig::default()
        })
        .start()
        .await;
    let mut config = stack.config.clone();
    config.ingest.window = WINDOW;
    config.ingest.shards = format!("0-{}", SHARDS - 1);
    config.ingest.shard_count = ShardCount::Number(SHARDS);
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(4)
        .build(stack.client.clone());
    let shutdown = stack.shutdown.child_token();
    let ingest = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            roles::run_ingest(&config, js, &Registry::new(), &Health::default(), shutdown).await
        }
    });
    stack.ready().await;
    assert_eq!(stack.burst(EVENTS).finished().await, EVENTS);
    let expected = stack.expected().len() as u64;
    let all_in = eventually(Duration::from_secs(60), async || {
        stack.stream_messages().await >= expected
    })
    .await;
    assert!(
        all_in,
        "ingest stalled: {} of {expected} events on the bus",
        stack.stream_messages().await
    );
    stack.assert_nothing_missing().await;
    shutdown.cancel();
    ingest.await.unwrap().unwrap();
    stack.stop().await;
}
