//! An unmodified twilight-gateway `Shard` against the simulator, over real sockets.

mod common;

use common::{
    Client, PATIENCE, Received, assert_received_everything, poll_once, sent_on, shard,
    shard_with_queue, start,
};
use relaycord_sim::{GenerateSpec, STAMP_FIELD, SimConfig, SimError};
use std::collections::HashSet;
use std::time::Duration;
use twilight_gateway::ShardId;
use twilight_gateway::queue::InMemoryQueue;

const TOKEN: &str = "sim-token";

fn generated(received: &Received) -> usize {
    [
        "MESSAGE_CREATE",
        "MESSAGE_REACTION_ADD",
        "GUILD_MEMBER_ADD",
        "PRESENCE_UPDATE",
    ]
    .iter()
    .map(|t| received.count(t))
    .sum()
}

/// A queue that lets identifies through at once, for tests that re-identify on purpose.
fn unthrottled() -> InMemoryQueue {
    InMemoryQueue::new(0, 1000, Duration::from_secs(86_400), 1000)
}

#[tokio::test]
async fn twilight_identifies_receives_and_resumes_after_reconnect_without_gaps() {
    common::init_tracing();
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard(&sim, ShardId::ONE, TOKEN));
    sim.wait_ready(PATIENCE).await.unwrap();

    let generator = sim.generate(GenerateSpec {
        count: Some(400),
        rate_per_sec: 2000.0,
        ..GenerateSpec::default()
    });
    client
        .until("READY and 50 events", |r| generated(r) >= 50)
        .await;
    let first = &client.received.dispatches[0];
    assert_eq!((first.seq, first.event_type.as_str()), (1, "READY"));
    assert_eq!(client.received.count("GUILD_CREATE"), sim.guild_ids().len());

    sim.request_reconnect(0);
    // Made while the shard has no live connection: only the RESUME replay can deliver these.
    for _ in 0..5 {
        sim.duplicate_last(0).unwrap();
    }
    assert_eq!(generator.finished().await, 400);
    sim.wait_ready(PATIENCE).await.unwrap();

    let logged = sent_on(&sim, 0);
    let last = logged.last().unwrap().seq;
    client
        .until("every logged seq", |r| r.last_seq() >= last)
        .await;
    assert_received_everything(&client.received, &logged);
    assert!(client.received.ops.contains(&7), "RECONNECT was sent");
    assert_eq!(client.received.count("RESUMED"), 1);
    assert_eq!(
        logged
            .iter()
            .map(|d| &d.session_id)
            .collect::<HashSet<_>>()
            .len(),
        1
    );

    let stats = sim.stats();
    assert_eq!(
        (stats.identifies, stats.resumes, stats.failed_resumes),
        (1, 1, 0)
    );
    assert!(stats.replayed >= 5, "{stats:?}");
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.dispatches, logged.len() as u64);
    assert_eq!(stats.session_start_remaining, 999);
}

/// With `stamp`, every generated event carries its number and send time through a real
/// client (which still parses it); connection-level and guild dispatches carry none.
#[tokio::test]
async fn stamped_events_carry_their_number_and_send_time() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard(&sim, ShardId::ONE, TOKEN));
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    let before = now_us();
    let generator = sim.generate(GenerateSpec {
        count: Some(100),
        rate_per_sec: 0.0,
        stamp: true,
        ..GenerateSpec::default()
    });
    assert_eq!(generator.finished().await, 100);
    client.until("every event", |r| generated(r) >= 100).await;
    let after = now_us();

    let mut numbers = Vec::new();
    for dispatch in &client.received.dispatches {
        let d: serde_json::Value = serde_json::from_str(&dispatch.data).unwrap();
        match dispatch.event_type.as_str() {
            "READY" | "GUILD_CREATE" => assert!(d.get(STAMP_FIELD).is_none(), "{d}"),
            _ => {
                let sent = d[STAMP_FIELD]["sent_unix_us"].as_u64().unwrap();
                assert!(
                    (before..=after).contains(&sent),
                    "{sent} not in {before}..={after}"
                );
                numbers.push(d[STAMP_FIELD]["n"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(numbers, (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn dropped_connection_resumes_with_replay() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard(&sim, ShardId::ONE, TOKEN));
    let generator = sim.generate(GenerateSpec {
        count: Some(300),
        rate_per_sec: 3000.0,
        ..GenerateSpec::default()
    });
    client.until("some events", |r| generated(r) >= 30).await;

    sim.drop_connection(0);
    for _ in 0..5 {
        sim.duplicate_last(0).unwrap();
    }
    assert_eq!(generator.finished().await, 300);
    sim.wait_ready(PATIENCE).await.unwrap();

    let logged = sent_on(&sim, 0);
    let last = logged.last().unwrap().seq;
    client
        .until("every logged seq", |r| r.last_seq() >= last)
        .await;
    assert_received_everything(&client.received, &logged);
    let stats = sim.stats();
    assert_eq!((stats.identifies, stats.resumes), (1, 1));
    assert!(stats.replayed >= 5, "{stats:?}");
}

/// A client that stops reading (backpressure) also stops heartbeating: the simulator closes
/// it with 4000 and keeps the session, and the client gets everything back by resuming.
#[tokio::test]
async fn stalled_client_is_closed_and_resumes_with_replay() {
    let sim = start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    let mut shard = shard(&sim, ShardId::ONE, TOKEN);
    let mut received = Received::default();
    while received.count("GUILD_CREATE") < sim.guild_ids().len() {
        poll_once(&mut shard, &mut received).await;
    }
    for _ in 0..3 {
        sim.duplicate_last(0).unwrap();
    }

    // Stop polling for well over the heartbeat timeout (1.5 * 200 ms + 1 s); the simulator
    // must give up on the connection by itself.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        matches!(sim.send_raw(0, "{}".into()), Err(SimError::NotConnected(0))),
        "the stalled connection should have been closed"
    );
    for _ in 0..3 {
        sim.duplicate_last(0).unwrap();
    }

    let logged = sent_on(&sim, 0);
    let last = logged.last().unwrap().seq;
    while received.last_seq() < last {
        poll_once(&mut shard, &mut received).await;
    }
    assert_received_everything(&received, &logged);
    let stats = sim.stats();
    assert_eq!((stats.identifies, stats.resumes), (1, 1));
    assert!(stats.replayed >= 3);
}

#[tokio::test]
async fn bad_token_is_closed_with_4004() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard(&sim, ShardId::ONE, "not-the-token"));
    client.until("the stream to end", |r| r.ended).await;
    assert_eq!(client.received.closes, [Some(4004)]);
    assert_eq!(sim.stats().identifies, 0);
    assert!(sim.sent().is_empty());
}

#[tokio::test]
async fn shards_receive_only_their_guilds() {
    let sim = start(SimConfig {
        shards: 3,
        guilds: 7,
        ..SimConfig::default()
    })
    .await;
    // One queue for all shards, like a real bot; max_concurrency 16 lets them start together.
    let queue = InMemoryQueue::new(16, 1000, Duration::from_secs(86_400), 1000);
    let mut clients: Vec<Client> = (0..3)
        .map(|id| {
            Client::spawn(shard_with_queue(
                &sim,
                ShardId::new(id, 3),
                TOKEN,
                queue.clone(),
            ))
        })
        .collect();
    sim.wait_ready(PATIENCE).await.unwrap();
    let generator = sim.generate(GenerateSpec {
        count: Some(300),
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    });
    assert_eq!(generator.finished().await, 300);

    for (id, client) in (0u32..).zip(&mut clients) {
        let logged = sent_on(&sim, id);
        let last = logged.last().unwrap().seq;
        client
            .until("every logged seq", |r| r.last_seq() >= last)
            .await;
        assert_received_everything(&client.received, &logged);
        // Round-robin over 7 guilds: 100 events per shard for 2-3 guilds each.
        assert!(generated(&client.received) >= 80, "shard {id}");
        // Discord's rule, spelled out here rather than trusting the simulator's own helper.
        for guild_id in logged.iter().filter_map(|d| d.guild_id) {
            assert_eq!(
                (guild_id >> 22) % 3,
                u64::from(id),
                "guild {guild_id} on shard {id}"
            );
        }
        assert!(
            client.received.count("GUILD_CREATE") >= 2,
            "shard {id} owns guilds"
        );
    }
    for guild_id in sim.guild_ids() {
        assert_eq!(
            u64::from(sim.shard_of_guild(guild_id)),
            (guild_id >> 22) % 3
        );
    }
    let stats = sim.stats();
    assert_eq!((stats.identifies, stats.identify_violations), (3, 0));
}

#[tokio::test]
async fn invalid_session_resumable_resumes_and_not_resumable_reidentifies() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard_with_queue(&sim, ShardId::ONE, TOKEN, unthrottled()));
    sim.wait_ready(PATIENCE).await.unwrap();

    sim.invalidate_session(0, true);
    sim.wait_ready(PATIENCE).await.unwrap();
    client.until("RESUMED", |r| r.count("RESUMED") == 1).await;
    assert_eq!((sim.stats().identifies, sim.stats().resumes), (1, 1));

    sim.invalidate_session(0, false);
    assert!(matches!(
        sim.dispatch(0, "X", &raw("{}")),
        Err(SimError::NoSession(0))
    ));
    client
        .until("a second READY", |r| r.count("READY") == 2)
        .await;
    sim.wait_ready(PATIENCE).await.unwrap();
    let sessions: HashSet<String> = sim.sent().into_iter().map(|d| d.session_id).collect();
    assert_eq!(sessions.len(), 2);
    let stats = sim.stats();
    assert_eq!((stats.identifies, stats.resumes), (2, 1));
    // The unthrottled queue identified twice within 5 s in the same bucket.
    assert_eq!(stats.identify_violations, 1);
    // The new session starts over at seq 1.
    let second_ready = client
        .received
        .dispatches
        .iter()
        .rposition(|d| d.event_type == "READY");
    assert_eq!(client.received.dispatches[second_ready.unwrap()].seq, 1);
}

#[tokio::test]
async fn close_4009_discards_the_session_so_the_resume_fails() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard_with_queue(&sim, ShardId::ONE, TOKEN, unthrottled()));
    sim.wait_ready(PATIENCE).await.unwrap();

    sim.close(0, 4009);
    // Twilight resumes after 4009, gets INVALID_SESSION, then identifies again.
    client
        .until("a second READY", |r| r.count("READY") == 2)
        .await;
    assert_eq!(client.received.closes.first(), Some(&Some(4009)));
    assert!(client.received.ops.contains(&9));
    let stats = sim.stats();
    assert_eq!(
        (stats.identifies, stats.resumes, stats.failed_resumes),
        (2, 0, 1)
    );
}

#[tokio::test]
async fn duplicates_keep_the_payload_with_a_new_seq() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::spawn(shard(&sim, ShardId::ONE, TOKEN));
    sim.generate(GenerateSpec {
        count: Some(1),
        ..GenerateSpec::default()
    })
    .finished()
    .await;
    let seq = sim.duplicate_last(0).unwrap();
    client.until("the duplicate", |r| r.last_seq() == seq).await;
    let [.., original, duplicate] = &client.received.dispatches[..] else {
        panic!("too few dispatches");
    };
    assert_eq!(
        (original.seq + 1, &original.data, &original.event_type),
        (duplicate.seq, &duplicate.data, &duplicate.event_type)
    );
}

#[tokio::test]
async fn control_api_reports_misuse() {
    let sim = start(SimConfig::default()).await;
    assert!(matches!(
        sim.dispatch(5, "X", &raw("{}")),
        Err(SimError::NoSuchShard(5))
    ));
    assert!(matches!(
        sim.dispatch(0, "X", &raw("{}")),
        Err(SimError::NoSession(0))
    ));
    assert!(matches!(
        sim.send_raw(0, "x".into()),
        Err(SimError::NotConnected(0))
    ));
    assert!(matches!(
        sim.wait_ready(Duration::from_millis(50)).await,
        Err(SimError::Timeout(_))
    ));
    // Fault injection without a connection is a no-op, not a panic.
    sim.request_reconnect(0);
    sim.drop_connection(0);
    sim.close(0, 4000);
    sim.invalidate_session(9, false);
}

#[tokio::test]
async fn generator_is_paced_exact_and_stoppable() {
    let sim = start(SimConfig::default()).await;
    let _client = Client::spawn(shard(&sim, ShardId::ONE, TOKEN));
    sim.wait_ready(PATIENCE).await.unwrap();

    let started = std::time::Instant::now();
    let paced = sim.generate(GenerateSpec {
        count: Some(40),
        rate_per_sec: 100.0,
        ..GenerateSpec::default()
    });
    assert_eq!(paced.finished().await, 40);
    // 40 events at 100/s: the 40th is due after 390 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "{:?}",
        started.elapsed()
    );

    let endless = sim.generate(GenerateSpec {
        count: None,
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    });
    while endless.generated() < 1000 {
        tokio::task::yield_now().await;
    }
    endless.stop();
    let made = endless.finished().await;
    let generated_logged = sim
        .sent()
        .iter()
        .filter(|d| !matches!(d.event_type.as_str(), "READY" | "GUILD_CREATE"))
        .count();
    assert_eq!(generated_logged as u64, 40 + made);
}

fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_owned()).unwrap()
}

/// A zombie connection stays open but goes silent (no HEARTBEAT_ACK, no dispatches): twilight
/// must notice by itself, reconnect and resume, and gets what was made meanwhile by replay.
#[tokio::test]
async fn zombie_connection_is_detected_by_twilight_and_resumed() {
    let sim = start(SimConfig {
        heartbeat_interval: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::spawn(shard(&sim, ShardId::ONE, TOKEN));
    sim.wait_ready(PATIENCE).await.unwrap();
    client
        .until("GUILD_CREATEs", |r| {
            r.count("GUILD_CREATE") == sim.guild_ids().len()
        })
        .await;

    sim.set_zombie(0, true).unwrap();
    assert!(matches!(
        sim.send_raw(0, "{}".into()),
        Err(SimError::NotConnected(0))
    ));
    // Made while the connection is a zombie: only a RESUME replay can deliver these.
    for _ in 0..5 {
        sim.duplicate_last(0).unwrap();
    }
    // Twilight reconnects and resumes; while the shard is still a zombie its new connection
    // is silent as well, so wait for one such attempt before healing the shard.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sim.stats().resumes == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.set_zombie(0, false).unwrap();
    sim.wait_ready(PATIENCE).await.unwrap();

    let logged = sent_on(&sim, 0);
    let last = logged.last().unwrap().seq;
    client
        .until("every logged seq", |r| r.last_seq() >= last)
        .await;
    // Silent connections deliver nothing, so the replay fills the gap exactly once.
    assert_received_everything(&client.received, &logged);
    let stats = sim.stats();
    assert_eq!(stats.identifies, 1, "{stats:?}");
    assert!(stats.heartbeats_unacked >= 1, "{stats:?}");
    assert!(stats.replayed >= 5, "{stats:?}");
}
