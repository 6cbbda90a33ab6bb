//! A three-node NATS cluster with replicated streams: killing the node that leads the
//! gateway stream mid-stream loses no event between the simulator and the receiver.

use std::collections::HashSet;
use std::time::Duration;

use relaycord_sim::{GenerateSpec, SimConfig};
use relaycord_testkit::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_nothing() {
    let mut stack = Stack::builder()
        .cluster(3)
        .sim_config(SimConfig {
            shards: 2,
            guilds: 8,
            ..SimConfig::default()
        })
        .config(|c| c.nats.stream_replicas = 3)
        .ingest_unready()
        .sinks()
        .start()
        .await;
    let sim = &stack.sim;
    let receiver = stack.receiver.clone();
    let js = stack.js.clone();
    sim.wait_ready(Duration::from_secs(60))
        .await
        .expect("all shards identified");

    let generator = sim.generate(GenerateSpec {
        count: Some(3_000),
        rate_per_sec: 300.0,
        ..GenerateSpec::default()
    });
    // A third of the way in, kill -9 the node leading the gateway stream, so both the
    // stream and the sink's consumer have to fail over while events keep coming.
    let wait_for = |n: usize| {
        let receiver = &receiver;
        async move {
            while receiver.distinct() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait_for(1_000))
        .await
        .expect("the first thousand events arrived");
    let mut stream = js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let cluster = info
        .cluster
        .expect("a replicated stream reports its cluster");
    assert_eq!(cluster.replicas.len(), 2, "the stream has three replicas");
    let leader = cluster.leader.expect("the stream has a leader");
    let index: usize = leader.trim_start_matches('n').parse().unwrap();
    stack.node_mut(index).kill();

    assert_eq!(generator.finished().await, 3_000);
    let sim = &stack.sim;
    let generated: HashSet<String> =
        relaycord_testkit::expected_ids(&sim.sent(), Some(&relaycord_testkit::GENERATED_TYPES));
    assert_eq!(generated.len(), 3_000);
    let all_arrived = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let seen = receiver.seen();
            if generated.iter().all(|id| seen.contains_key(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let seen = receiver.seen();
    let missing: Vec<&String> = generated
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        all_arrived.is_ok() && missing.is_empty(),
        "{} of 3000 events missing after killing stream leader {leader}, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // Dropping the stack cancels the roles; their results after a failover are not
    // what this test checks.
    drop(stack);
}
