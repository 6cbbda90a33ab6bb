//! The nats sink: republishing to another server's stream with `Nats-Msg-Id`, and to
//! core subjects on the bus's own server.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use relaycord_bus::Secret;
use relaycord_sinks::nats::NatsSinkConfig;
use relaycord_sinks::{SinkConfig, SinkKind};
use relaycord_testkit::NatsServer;

use relaycord_testkit::{Stack, run_sink};

fn nats_sink(name: &str, config: NatsSinkConfig) -> SinkConfig {
    SinkConfig {
        concurrency: 8,
        ..SinkConfig::new(name, SinkKind::Nats(config))
    }
}

/// (subject, Nats-Msg-Id, envelope id) of every message in `stream`.
async fn stored(js: &jetstream::Context, stream: &str) -> Vec<(String, String, String)> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut info = stream.clone();
    let total = info.info().await.unwrap().state.messages as usize;
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.unwrap();
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .unwrap();
        let env: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        out.push((
            m.subject.to_string(),
            msg_id.to_string(),
            env["id"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

/// Events land in a stream on another server under the templated subject, with
/// `Nats-Msg-Id` = the event id; delivering them all again (consumer and dedupe reset)
/// adds nothing, because the target stream drops the repeated ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishes_to_another_server_with_msg_id() {
    let bus = Stack::builder().start().await;
    let other = NatsServer::start().unwrap();
    let other_js = jetstream::new(async_nats::connect(other.url()).await.unwrap());
    other_js
        .create_stream(stream::Config {
            name: "RELAYED".into(),
            subjects: vec!["relay.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: HashSet<String> = bus.messages(0, 50).await.into_iter().collect();
    let config = nats_sink(
        "relay",
        NatsSinkConfig {
            url: Secret::new(other.url()),
            ..NatsSinkConfig::new("relay.{type}.{guild_id}")
        },
    );
    let sink = run_sink(&bus, &config);
    bus.wait_settled("relay").await;
    sink.stop().await;
    let first = stored(&other_js, "RELAYED").await;
    assert_eq!(first.len(), ids.len());
    for (subject, msg_id, id) in &first {
        assert_eq!(subject, "relay.MESSAGE_CREATE.1");
        assert_eq!(msg_id, id);
    }
    assert_eq!(
        first
            .iter()
            .map(|(_, _, id)| id.clone())
            .collect::<HashSet<_>>(),
        ids
    );

    // Deliver everything again, sink-side dedupe off: the target's window absorbs it.
    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    stream.delete_consumer("relaycord-relay").await.unwrap();
    let again = run_sink(
        &bus,
        &SinkConfig {
            dedupe: false,
            ..config
        },
    );
    bus.wait_settled("relay").await;
    assert_eq!(again.outcome("delivered"), ids.len() as f64);
    again.stop().await;
    let mut info = other_js.get_stream("RELAYED").await.unwrap();
    assert_eq!(info.info().await.unwrap().state.messages, ids.len() as u64);
}

/// Core publishing on the bus's own server reaches plain subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_publish_on_the_same_server() {
    let bus = Stack::builder().start().await;
    let client = async_nats::connect(bus.nats_url()).await.unwrap();
    let mut sub = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    let ids: HashSet<String> = bus.messages(0, 20).await.into_iter().collect();
    let sink = run_sink(
        &bus,
        &nats_sink(
            "mirror",
            NatsSinkConfig {
                jetstream: false,
                ..NatsSinkConfig::new("mirror.{sink}.{type}")
            },
        ),
    );
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.subject.as_str(), "mirror.mirror.MESSAGE_CREATE");
        seen.insert(m.headers.unwrap().get("Nats-Msg-Id").unwrap().to_string());
    }
    sink.stop().await;
    assert_eq!(seen, ids);
}

/// A subject inside Relaycord's own subjects on the same server would loop: refused at
/// start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_back_into_the_bus_are_refused() {
    let bus = Stack::builder().start().await;
    let sink = run_sink(
        &bus,
        &nats_sink(
            "loop",
            NatsSinkConfig::new("discord.gateway.{type}.{guild_id}"),
        ),
    );
    let error = sink.task.await.unwrap().unwrap_err().to_string();
    assert!(
        error.contains("sinks.loop.subject") && error.contains("loop"),
        "{error}"
    );
}
