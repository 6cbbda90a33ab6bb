//! The walking skeleton: simulated Discord → ingest → JetStream → HTTP sink → receiver.

use std::time::Duration;

use relaycord_sim::GenerateSpec;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

use relaycord_testkit::{SECRET, Stack, eventually};

/// 10,000 events over 4 shards: every dispatch the simulator logged reaches the
/// receiver, the stream holds each exactly once, and signatures verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_four_shards_all_arrive() {
    let stack = Stack::builder().shards(4).ingest().sinks().start().await;
    let generated = stack
        .sim
        .generate(GenerateSpec {
            count: Some(10_000),
            rate_per_sec: 0.0,
            ..GenerateSpec::default()
        })
        .finished()
        .await;
    assert_eq!(generated, 10_000);

    // Every generated event has its own dedupe id: a collision would hide a loss.
    let generated_ids = relaycord_testkit::expected_ids(
        &stack.sim.sent(),
        Some(&relaycord_testkit::GENERATED_TYPES),
    );
    assert_eq!(generated_ids.len(), 10_000, "distinct generated event ids");
    let expected = stack.expected();
    assert!(expected.is_superset(&generated_ids));
    let missing = stack
        .wait_delivered(&expected, Duration::from_secs(120))
        .await;
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );

    assert_eq!(
        stack.stream_messages().await,
        expected.len() as u64,
        "the stream holds each event once"
    );
    assert_eq!(
        stack.receiver.rejected(),
        0,
        "every request carried a valid Standard Webhooks signature"
    );
    let per_shard: std::collections::HashSet<u32> = stack
        .sim
        .sent()
        .iter()
        .filter(|d| relaycord_testkit::GENERATED_TYPES.contains(&d.event_type.as_str()))
        .map(|d| d.shard)
        .collect();
    assert_eq!(
        per_shard.len(),
        4,
        "events were spread over all four shards"
    );
    stack.stop().await;
}

/// A dispatch Discord sends twice (same payload, new seq) is stored once on the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_dispatch_reaches_the_bus_once() {
    let stack = Stack::builder().shards(1).ingest().sinks().start().await;
    let guild = stack.sim.guild_ids()[0];
    let d = RawValue::from_string(format!(
        r#"{{"id":"334385199974967042","channel_id":"290926798999357250","guild_id":"{guild}","content":"Supa Hot","author":{{"id":"53908099506183680","username":"Mason"}},"timestamp":"2017-07-11T17:27:07.299000+00:00","edited_timestamp":null,"attachments":[],"embeds":[],"mentions":[],"mention_roles":[],"pinned":false,"mention_everyone":false,"tts":false,"type":0}}"#
    ))
    .unwrap();
    stack.sim.dispatch(0, "MESSAGE_CREATE", &d).unwrap();
    stack.sim.duplicate_last(0).unwrap();
    let expected = stack.expected();
    assert!(
        stack
            .wait_delivered(&expected, Duration::from_secs(30))
            .await
            .is_empty()
    );
    assert!(
        eventually(Duration::from_secs(10), async || stack
            .metric("relaycord_publish_total")
            >= expected.len() as f64 + 1.0)
        .await
    );
    assert_eq!(stack.metric("relaycord_publish_duplicates_total"), 1.0);
    assert_eq!(stack.stream_messages().await, expected.len() as u64);
    assert_eq!(stack.receiver.seen()["msg:334385199974967042"], 1);
    stack.stop().await;
}

/// Frames that are not valid dispatches are counted and skipped; ingest keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_dispatches_are_counted_and_never_crash_ingest() {
    let stack = Stack::builder().shards(1).ingest().sinks().start().await;
    for frame in [
        "{this is not json",
        r#"{"op":0,"t":"MESSAGE_CREATE","d":{"id":"1"}}"#,
        r#"{"op":0,"t":"BAD.TYPE>","s":999,"d":{}}"#,
        r#"{"op":0,"s":1000,"d":{}}"#,
    ] {
        stack.sim.send_raw(0, frame.to_owned()).unwrap();
    }
    stack
        .sim
        .generate(GenerateSpec {
            count: Some(100),
            rate_per_sec: 0.0,
            ..GenerateSpec::default()
        })
        .finished()
        .await;
    let expected = stack.expected();
    let missing = stack
        .wait_delivered(&expected, Duration::from_secs(60))
        .await;
    assert!(
        missing.is_empty(),
        "missing after malformed frames: {missing:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || stack
            .metric("relaycord_gateway_malformed_total")
            >= 4.0)
        .await,
        "malformed frames counted: {}",
        stack.metric("relaycord_gateway_malformed_total")
    );
    stack.stop().await;
}

/// The sink's URL refuses connections at first: events are retried, not lost, and all
/// arrive once a receiver listens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_sink_is_retried_until_it_comes_up() {
    // A socket bound but not listening: connections to it are refused, and no other
    // process can take the port before the receiver starts listening on it.
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = reserved.local_addr().unwrap().as_socket().unwrap();
    let stack = Stack::builder()
        .shards(2)
        .sink_url(format!("http://{addr}/events"))
        .ingest()
        .sinks()
        .start()
        .await;
    stack
        .sim
        .generate(GenerateSpec {
            count: Some(200),
            rate_per_sec: 0.0,
            ..GenerateSpec::default()
        })
        .finished()
        .await;
    assert!(
        eventually(Duration::from_secs(30), async || relaycord_testkit::metric(
            &stack.registry,
            "relaycord_sink_deliveries_total"
        ) >= 50.0)
        .await,
        "deliveries were attempted and retried"
    );
    assert_eq!(stack.receiver.distinct(), 0);

    let key = relaycord_sinks::http::SigningKey::parse(SECRET).unwrap();
    let late = relaycord_testkit::Receiver::start(
        {
            reserved.listen(128).unwrap();
            let listener: std::net::TcpListener = reserved.into();
            listener.set_nonblocking(true).unwrap();
            TcpListener::from_std(listener).unwrap()
        },
        Some(key),
        false,
        stack.shutdown.clone(),
    )
    .unwrap();
    let expected = stack.expected();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while late.seen().len() < expected.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = late.seen();
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events lost while the receiver was down",
        missing.len()
    );
    assert!(
        stack.metric("relaycord_sink_deliveries_total") > expected.len() as f64,
        "retries happened"
    );
    stack.stop().await;
}

/// An INTERACTION_CREATE that arrives over the gateway (a bot without an endpoint URL)
/// lands where the HTTP endpoint puts interactions: same subject, same `ix:<id>` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_interactions_land_on_interaction_subjects() {
    let stack = Stack::builder().shards(1).ingest().start().await;
    let mut sub = async_nats::connect(stack.nats_url())
        .await
        .unwrap()
        .subscribe("discord.interactions.>")
        .await
        .unwrap();
    // Discord's documented example interaction (discord/discord-api-docs, CC BY-SA 4.0).
    let d = RawValue::from_string(
        r#"{"type":2,"token":"A_UNIQUE_TOKEN","id":"786008729715212338","guild_id":"290926798626357999","application_id":"775799577604522054","channel_id":"645027906669510667","data":{"options":[{"type":3,"name":"cardname","value":"The Gitrog Monster"}],"type":1,"name":"cardsearch","id":"771825006014889984"}}"#.to_owned(),
    )
    .unwrap();
    stack.sim.dispatch(0, "INTERACTION_CREATE", &d).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut sub))
        .await
        .expect("published")
        .unwrap();
    assert_eq!(
        message.subject.as_str(),
        "discord.interactions.command.cardsearch"
    );
    let id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(id.as_deref(), Some("ix:786008729715212338"));
    let envelope: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(envelope["type"], "INTERACTION_CREATE");
    assert_eq!(envelope["data"]["data"]["name"], "cardsearch");
    stack.stop().await;
}

/// A dispatch larger than the server's max_payload cannot be stored: it is counted and
/// skipped, loudly, and the shard goes on (a retry loop would wedge it for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_over_max_payload_is_counted_and_the_shard_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 16384\n").unwrap();
    let stack = Stack::builder()
        .shards(1)
        .nats_args(&["-c", conf.to_str().unwrap()])
        .ingest()
        .sinks()
        .start()
        .await;
    let guild = stack.sim.guild_ids()[0];
    let message = |id: u64, content: &str| {
        RawValue::from_string(format!(
            r#"{{"id":"{id}","channel_id":"290926798999357250","guild_id":"{guild}","content":"{content}","author":{{"id":"53908099506183680","username":"Mason"}},"timestamp":"2017-07-11T17:27:07.299000+00:00","edited_timestamp":null,"attachments":[],"embeds":[],"mentions":[],"mention_roles":[],"pinned":false,"mention_everyone":false,"tts":false,"type":0}}"#
        ))
        .unwrap()
    };
    stack
        .sim
        .dispatch(0, "MESSAGE_CREATE", &message(1001, &"x".repeat(20_000)))
        .unwrap();
    stack
        .sim
        .dispatch(0, "MESSAGE_CREATE", &message(1002, "after the big one"))
        .unwrap();
    let after: std::collections::HashSet<String> = ["msg:1002".to_owned()].into();
    assert!(
        stack
            .wait_delivered(&after, Duration::from_secs(30))
            .await
            .is_empty(),
        "the event after the oversized one arrived"
    );
    assert_eq!(stack.metric("relaycord_publish_oversized_total"), 1.0);
    assert!(!stack.receiver.seen().contains_key("msg:1001"));
    stack.stop().await;
}
