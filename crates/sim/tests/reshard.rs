//! Resharding: sessions of several shard counts side by side, as Discord runs them while a
//! bot moves to a new count. Unmodified twilight shards on both generations.

mod common;

use common::{Client, PATIENCE, Received, assert_received_everything, poll_once, shard_with_queue};
use relaycord_sim::{GenerateSpec, SentDispatch, SimConfig, Simulator};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use twilight_gateway::queue::InMemoryQueue;
use twilight_gateway::{CloseFrame, ShardId};

const TOKEN: &str = "sim-token";

/// Identifies at once: shards of two counts share buckets, and the 5 s spacing is not what
/// these tests are about.
fn unthrottled() -> InMemoryQueue {
    InMemoryQueue::new(0, 1000, Duration::from_secs(86_400), 1000)
}

fn spawn(sim: &Simulator, shard: u32, count: u32) -> Client {
    Client::spawn(shard_with_queue(
        sim,
        ShardId::new(shard, count),
        TOKEN,
        unthrottled(),
    ))
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn connected(sim: &Simulator) -> usize {
    sim.live_sessions().iter().filter(|s| s.connected).count()
}

/// `(shard_count, shard, event)` of one proof-log entry.
type SessionEvent = (u32, u32, Option<u64>);

fn is_generated(dispatch: &SentDispatch) -> bool {
    !matches!(dispatch.event_type.as_str(), "READY" | "GUILD_CREATE")
}

/// Both generations get every event of their guilds, each guild's events in one order, and
/// the proof log shows each event once per covering session. Two generators and scripted
/// dispatches run at once, so the order is not just the order of one producer.
#[tokio::test]
async fn both_generations_receive_every_event_of_their_guilds_in_one_order() {
    common::init_tracing();
    let sim = common::start(SimConfig {
        shards: 2,
        guilds: 8,
        ..SimConfig::default()
    })
    .await;
    let keys: Vec<(u32, u32)> = [(2, 0), (2, 1), (4, 0), (4, 1), (4, 2), (4, 3)].into();
    let mut clients: Vec<Client> = keys
        .iter()
        .map(|&(count, shard)| spawn(&sim, shard, count))
        .collect();
    wait_for("six connected sessions", || connected(&sim) == 6).await;

    let spec = GenerateSpec {
        count: Some(300),
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    };
    let (a, b) = (sim.generate(spec.clone()), sim.generate(spec));
    let guilds = sim.guild_ids();
    for i in 0..40 {
        let guild = guilds[i % guilds.len()];
        // Only `guild_id` is required; the extra field makes each one distinct.
        let d = format!(r#"{{"guild_id":"{guild}","scripted":{i}}}"#);
        let d = serde_json::value::RawValue::from_string(d).unwrap();
        let sent = sim
            .dispatch_guild("GUILD_INTEGRATIONS_UPDATE", &d, guild)
            .unwrap();
        assert_eq!(sent.len(), 2, "one session per generation");
        tokio::task::yield_now().await;
    }
    assert_eq!((a.finished().await, b.finished().await), (300, 300));

    let sent = sim.sent();
    for (client, &(count, shard)) in clients.iter_mut().zip(&keys) {
        let logged: Vec<SentDispatch> = sent
            .iter()
            .filter(|d| (d.shard_count, d.shard) == (count, shard))
            .cloned()
            .collect();
        let last = logged.last().unwrap().seq;
        client
            .until("every logged seq", |r| r.last_seq() >= last)
            .await;
        assert_received_everything(&client.received, &logged);
        // Discord's rule under the session's own count.
        for guild in logged.iter().filter_map(|d| d.guild_id) {
            assert_eq!((guild >> 22) % u64::from(count), u64::from(shard));
        }
        assert!(client.received.count("GUILD_CREATE") >= 2);
    }

    // Per guild, the same dispatches in the same order under both counts.
    let mut by_guild: BTreeMap<(u64, u32), Vec<&str>> = BTreeMap::new();
    for d in sent.iter().filter(|d| is_generated(d)) {
        let guild = d.guild_id.unwrap();
        by_guild
            .entry((guild, d.shard_count))
            .or_default()
            .push(&d.data);
    }
    for &guild in &guilds {
        let (old, new) = (&by_guild[&(guild, 2)], &by_guild[&(guild, 4)]);
        assert_eq!(old, new, "guild {guild}");
        assert!(old.len() >= 70, "{} events for guild {guild}", old.len());
    }

    // Each event went to exactly its two covering sessions, once each.
    let mut sessions_of: HashMap<&str, Vec<SessionEvent>> = HashMap::new();
    for d in sent.iter().filter(|d| is_generated(d)) {
        sessions_of
            .entry(&d.data)
            .or_default()
            .push((d.shard_count, d.shard, d.event));
    }
    assert_eq!(sessions_of.len(), 600 + 40, "every event is distinct");
    let mut numbers: BTreeMap<u64, usize> = BTreeMap::new();
    for (data, sessions) in &sessions_of {
        let guild = sent
            .iter()
            .find(|d| d.data == *data)
            .unwrap()
            .guild_id
            .unwrap();
        let event = sessions[0].2;
        let expected: HashSet<_> = [(2, (guild >> 22) % 2), (4, (guild >> 22) % 4)]
            .into_iter()
            .map(|(count, shard)| (count, shard as u32, event))
            .collect();
        assert_eq!(sessions.len(), 2, "{data}");
        assert_eq!(sessions.iter().copied().collect::<HashSet<_>>(), expected);
        if let Some(n) = event {
            *numbers.entry(n).or_default() += sessions.len();
        }
    }
    // Two generators numbering 0..300, each event logged on two sessions.
    assert_eq!(numbers.len(), 300);
    assert!(numbers.values().all(|&n| n == 4));
}

#[tokio::test]
async fn too_few_shards_for_the_guilds_is_closed_with_4011() {
    let sim = common::start(SimConfig::default()).await;
    let mut old = spawn(&sim, 0, 1);
    sim.wait_ready(PATIENCE).await.unwrap();
    old.until("READY", |r| r.count("READY") == 1).await;

    // 8 guilds at 4 per shard: one shard is no longer enough.
    sim.set_max_guilds_per_shard(4);
    assert_eq!(sim.min_shards(), 2);
    let mut refused = spawn(&sim, 0, 1);
    refused.until("the stream to end", |r| r.ended).await;
    assert_eq!(refused.received.closes, [Some(4011)]);

    // The running session is left alone; two shards are accepted.
    let mut new = spawn(&sim, 1, 2);
    new.until("READY", |r| r.count("READY") == 1).await;
    let live: Vec<_> = sim
        .live_sessions()
        .into_iter()
        .map(|s| (s.shard_count, s.shard, s.connected))
        .collect();
    assert_eq!(live, [(1, 0, true), (2, 1, true)]);
    assert_eq!(sim.stats().identifies, 2);
}

/// A session its client closed with 1000 is over: later events of its guilds go only to the
/// sessions still running.
#[tokio::test]
async fn a_session_closed_with_1000_receives_nothing_more() {
    let sim = common::start(SimConfig::default()).await;
    let mut old = spawn(&sim, 0, 1);
    let mut new = shard_with_queue(&sim, ShardId::new(0, 2), TOKEN, unthrottled());
    let mut received = Received::default();
    while received.count("GUILD_CREATE") < 4 {
        poll_once(&mut new, &mut received).await;
    }
    let spec = GenerateSpec {
        count: Some(100),
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    };
    assert_eq!(sim.generate(spec.clone()).finished().await, 100);
    let session = sim
        .live_sessions()
        .into_iter()
        .find(|s| s.shard_count == 2)
        .unwrap()
        .session_id;

    new.close(CloseFrame::NORMAL);
    while received.closes.is_empty() {
        poll_once(&mut new, &mut received).await;
    }
    assert_eq!(received.closes, [Some(1000)]);
    wait_for("the session to end", || {
        sim.live_sessions().iter().all(|s| s.shard_count != 2)
    })
    .await;
    assert_eq!(sim.generate(spec).finished().await, 100);

    let sent = sim.sent();
    let events_of = |session_id: &str| {
        sent.iter()
            .filter(|d| d.session_id == session_id)
            .filter_map(|d| d.event)
            .collect::<Vec<_>>()
    };
    // Shard 0 of 2 owns half of the 8 guilds the generator goes round.
    assert_eq!(events_of(&session).len(), 50);
    let old_session = &sim.live_sessions()[0].session_id;
    assert_eq!(events_of(old_session).len(), 200);
    old.until("all 200 events", |r| r.last_seq() >= 1 + 8 + 200)
        .await;
    drop(new);
}

/// RESUME finds a session of any count, and replays what its guilds got meanwhile.
#[tokio::test]
async fn a_session_of_another_count_resumes_with_replay() {
    let sim = common::start(SimConfig::default()).await;
    let _old = spawn(&sim, 0, 1);
    let mut new = spawn(&sim, 1, 2);
    wait_for("two connected sessions", || connected(&sim) == 2).await;

    sim.drop_connection_in(2, 1);
    // Made while the count-2 session has no connection: only the replay delivers these.
    assert_eq!(
        sim.generate(GenerateSpec {
            count: Some(40),
            rate_per_sec: 0.0,
            ..GenerateSpec::default()
        })
        .finished()
        .await,
        40
    );
    wait_for("the resume", || connected(&sim) == 2).await;
    let logged: Vec<SentDispatch> = sim
        .sent()
        .into_iter()
        .filter(|d| (d.shard_count, d.shard) == (2, 1))
        .collect();
    let last = logged.last().unwrap().seq;
    new.until("every logged seq", |r| r.last_seq() >= last)
        .await;
    assert_received_everything(&new.received, &logged);
    assert_eq!(new.received.count("RESUMED"), 1);
    assert_eq!(logged.iter().filter(|d| d.event.is_some()).count(), 20);
    assert_eq!(sim.stats().resumes, 1);
}
