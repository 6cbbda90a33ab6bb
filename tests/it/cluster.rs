//! A three-node NATS cluster with replicated streams: killing the node that leads the
//! gateway stream mid-stream loses no event between the simulator and the receiver.

use std::collections::HashSet;
use std::time::Duration;

use prometheus::Registry;
use relaycord::config::Config;
use relaycord::nats_server::NatsServer;
use relaycord::roles;
use relaycord_sim::GenerateSpec;
use tokio_util::sync::CancellationToken;

use crate::support::{sim_and_receiver, stack_config};

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

fn start_cluster() -> Vec<NatsServer> {
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = cluster_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    cluster_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let name = format!("n{i}");
            let cluster = format!("nats://127.0.0.1:{port}");
            NatsServer::start_with(&[
                "-n",
                &name,
                "--cluster_name",
                "relaycord-test",
                "--cluster",
                &cluster,
                "--routes",
                &routes,
            ])
            .expect("start a cluster node")
        })
        .collect()
}

/// JetStream answers once the cluster has elected a meta leader; until then setting up
/// the streams fails, so retry that for a while.
async fn connect_when_ready(config: &Config) -> async_nats::jetstream::Context {
    let mut last = None;
    for _ in 0..60 {
        match roles::connect(config, "test").await {
            Ok(js) => return js,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the cluster never offered JetStream: {:#}", last.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_nothing() {
    let mut nodes = start_cluster();
    let shutdown = CancellationToken::new();
    let (sim, receiver) = sim_and_receiver(2, 8, &shutdown).await;
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let config = stack_config(urls.join(","), &sim, receiver.url(), |c| {
        c.nats.stream_replicas = 3;
    });

    let js = connect_when_ready(&config).await;
    let registry = Registry::new();
    let ingest = tokio::spawn({
        let (config, js, registry, stop) = (
            config.clone(),
            js.clone(),
            registry.clone(),
            shutdown.clone(),
        );
        async move { roles::run_ingest(&config, js, &registry, &Default::default(), stop).await }
    });
    let sinks = tokio::spawn({
        let (config, registry, stop) = (config.clone(), registry.clone(), shutdown.clone());
        let js = connect_when_ready(&config).await;
        async move { roles::run_sinks(&config, &[], js, &registry, stop).await }
    });
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
    nodes[index].kill();

    assert_eq!(generator.finished().await, 3_000);
    let generated: HashSet<String> =
        relaycord::dev::expected_ids(&sim.sent(), Some(&relaycord::dev::GENERATED_TYPES));
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

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let _ = ingest.await;
        let _ = sinks.await;
    })
    .await;
}
