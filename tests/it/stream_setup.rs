//! Streams and buckets set up by several processes at the same moment (replicas starting
//! together) leave the nats-server up: nats-server before 2.9.15 exits when an update of a
//! stream arrives while another client's create of it is still setting up its storage
//! (see `relaycord_bus::streams::create_or_update`).

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use relaycord_testkit::NatsServer;

/// Separate connections: one connection's API requests are handled one after another.
const CLIENTS: usize = 8;
/// On 2.9.10 the reproduction below failed in each of 8 runs: the server died within
/// 1–78 rounds (once a client's setup lost a race first).
const ROUNDS: usize = 200;

async fn clients(url: &str) -> Vec<jetstream::Context> {
    let mut all = Vec::new();
    for _ in 0..CLIENTS {
        all.push(jetstream::new(async_nats::connect(url).await.unwrap()));
    }
    all
}

/// Runs `setup` from every client at once for each round's new name; fails with the
/// server's panic if it dies.
async fn race<F, Fut>(setup: F)
where
    F: Fn(jetstream::Context, String) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let nats = NatsServer::start().unwrap();
    let js = clients(&nats.url()).await;
    for round in 0..ROUNDS {
        let name = format!("race-{round}");
        let tasks: Vec<_> = js
            .iter()
            .map(|js| tokio::spawn(setup(js.clone(), name.clone())))
            .collect();
        let mut done = 0;
        for task in tasks {
            let outcome = tokio::time::timeout(Duration::from_secs(15), task).await;
            done += usize::from(matches!(outcome, Ok(Ok(true))));
        }
        if std::net::TcpStream::connect(nats.addr()).is_err() {
            let log = std::fs::read_to_string(nats.log_path()).unwrap_or_default();
            let at = log.find("panic").unwrap_or(0);
            let end = (at + 1500).min(log.len());
            panic!("nats-server died in round {round}:\n{}", &log[at..end]);
        }
        assert_eq!(
            done, CLIENTS,
            "every client's setup succeeded in round {round}"
        );
    }
}

fn kv_like(name: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: name.to_uppercase(),
        subjects: vec![format!("race.{name}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_streams_set_up_by_many_replicas_at_once_leave_the_server_up() {
    race(|js, name| async move {
        let bucket = relaycord_bus::kv::ensure_bucket(&js, &name, Duration::from_secs(60), 1);
        let stream = relaycord_bus::streams::create_or_update(&js, kv_like(&name));
        bucket.await.is_ok() && stream.await.is_ok()
    })
    .await;
}

/// The reproduction, with async-nats's own `create_or_update_stream`: on nats-server
/// 2.9.10 it fails ("nats-server died in round N", the panic in `updateWithAdvisory`);
/// on 2.15.1 it passes. Run it with `NATS_SERVER_BIN=/usr/sbin/nats-server cargo test -p
/// relaycord --test it stream_setup -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails on nats-server before 2.9.15: the server bug Relaycord's setup avoids"]
async fn async_nats_update_then_create_from_many_clients() {
    race(|js, name| async move { js.create_or_update_stream(kv_like(&name)).await.is_ok() }).await;
}
