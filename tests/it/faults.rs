//! Gateway faults injected by the simulator and handled by ingest: zombie connections,
//! RECONNECT, INVALID_SESSION, every close code 4000–4014, identify pacing and the session
//! start limit. Each test counts every dispatch the simulator logged against the ids stored
//! in the gateway stream (0 missing), or, for the fatal close codes, checks that ingest stops
//! with an error naming the cause instead of reconnecting.

use std::time::Duration;

use relaycord_ingest::{IngestError, IngestErrorKind};
use relaycord_sim::SimConfig;
use relaycord_testkit::{Stack, eventually, metric};

/// Upper bound for things that take seconds; reached only when a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// nats-server, the simulator with a test's own [`SimConfig`], and ingest (leased mode)
/// run in-process through the same wiring as `relaycord ingest`, so its result is visible.
/// Short lease ticks: the leased coordinator claims shards (and reports a fatal shard
/// error) within a few hundred milliseconds.
async fn start(sim_config: SimConfig) -> Stack {
    start_with(sim_config, Duration::from_secs(3)).await
}

async fn start_with(sim_config: SimConfig, lease_ttl: Duration) -> Stack {
    Stack::builder()
        .sim_config(sim_config)
        .config(move |c| c.ingest.lease_ttl = lease_ttl)
        .ingest_unready()
        .start()
        .await
}

fn sim_config(shards: u32) -> SimConfig {
    SimConfig {
        shards,
        guilds: shards * 3,
        ..SimConfig::default()
    }
}

/// A zombie connection (open, but no HEARTBEAT_ACK and nothing else) is only found by the
/// client's heartbeat check: twilight must give up on it, reconnect and resume, and the
/// replay brings what was dispatched meanwhile.
#[tokio::test]
async fn zombie_connection_is_detected_and_resumed() {
    let h = start(SimConfig {
        // Twilight declares a zombie when a heartbeat interval passes without anything
        // received after a heartbeat: short, so the test takes seconds.
        heartbeat_interval: Duration::from_millis(500),
        ..sim_config(2)
    })
    .await;
    h.ready().await;
    let generator = h.stream(1500, 300.0);
    while generator.generated() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.sim.set_zombie(0, true).unwrap();
    // Healed once twilight has given up on the zombie and resumed at least once (that new
    // connection was silent too); the next attempt resumes for good.
    let resumed = eventually(PATIENCE, async || h.sim.stats().resumes >= 1).await;
    h.sim.set_zombie(0, false).unwrap();
    assert!(resumed, "no RESUME after the zombie: {:?}", h.sim.stats());
    generator.finished().await;
    h.ready().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(stats.identifies, 2, "resumed, not re-identified: {stats:?}");
    assert!(stats.heartbeats_unacked >= 1, "{stats:?}");
    h.stop_expecting_failed_resumes(0).await;
}

/// RECONNECT (op 7) on every shard mid-stream: each resumes; nothing is lost.
#[tokio::test]
async fn reconnect_request_resumes_every_shard() {
    let h = start(sim_config(3)).await;
    h.ready().await;
    let generator = h.stream(1500, 500.0);
    while generator.generated() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for shard in 0..3 {
        h.sim.request_reconnect(shard);
    }
    generator.finished().await;
    h.ready().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(
        (stats.identifies, stats.failed_resumes),
        (3, 0),
        "{stats:?}"
    );
    assert!(stats.resumes >= 3, "{stats:?}");
    h.stop_expecting_failed_resumes(0).await;
}

/// INVALID_SESSION `d: true` resumes; `d: false` identifies a new session. Events of the
/// discarded session that were sent before it ended are on the bus.
#[tokio::test]
async fn invalid_session_resumable_and_not() {
    let h = start(sim_config(2)).await;
    h.ready().await;
    let generator = h.stream(1500, 500.0);
    while generator.generated() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.sim.invalidate_session(0, true);
    h.sim.invalidate_session(1, false);
    generator.finished().await;
    h.ready().await;
    h.burst(200).finished().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(stats.identifies, 3, "only shard 1 re-identified: {stats:?}");
    assert!(stats.resumes >= 1, "{stats:?}");
    assert_eq!(
        (stats.identify_violations, stats.session_start_exhausted),
        (0, 0)
    );
    h.stop_expecting_failed_resumes(0).await;
}

/// Close codes after which Discord lets a client reconnect: 4000–4009 (4006 is unassigned;
/// twilight treats unknown codes as reconnectable). 4007 and 4009 discard the session, so
/// those shards identify again; the others resume. One shard per code, all at once.
const RECONNECTABLE: [u16; 9] = [4000, 4001, 4002, 4003, 4005, 4006, 4007, 4008, 4009];

#[tokio::test]
async fn reconnectable_close_codes_end_with_every_shard_running_and_nothing_missing() {
    let shards = RECONNECTABLE.len() as u32;
    let h = start(sim_config(shards)).await;
    h.ready().await;
    let generator = h.stream(3000, 1000.0);
    while generator.generated() < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (shard, code) in (0..).zip(RECONNECTABLE) {
        h.sim.close(shard, code);
    }
    generator.finished().await;
    h.ready().await;
    h.burst(500).finished().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(
        stats.identifies,
        u64::from(shards) + 2,
        "only the 4007 and 4009 shards identified again: {stats:?}"
    );
    assert!(stats.resumes >= u64::from(shards) - 2, "{stats:?}");
    assert_eq!(
        (stats.identify_violations, stats.session_start_exhausted),
        (0, 0)
    );
    assert_eq!(metric(&h.registry, "relaycord_shard_up"), f64::from(shards));
    // 4007 and 4009 discard the session on Discord's side, but twilight tries a RESUME
    // first: exactly those two fail (INVALID_SESSION), then the shards identify.
    h.stop_expecting_failed_resumes(2).await;
}

/// Close codes that must stop the shard for good, with the words the error must contain
/// (the cause, and where to fix it). 4011 stops only static shard ranges (below); in
/// leased mode it reshards (`reshard::close_4011_reshards_instead_of_stopping`).
const FATAL: [(u16, IngestErrorKind, &str); 5] = [
    (4004, IngestErrorKind::Unauthorized, "DISCORD_TOKEN"),
    (4010, IngestErrorKind::FatalClose, "invalid shard"),
    (4012, IngestErrorKind::FatalClose, "API version"),
    (4013, IngestErrorKind::FatalClose, "intents"),
    (4014, IngestErrorKind::FatalClose, "privileged intents"),
];

/// Each fatal code stops ingest with an error naming it, after exactly one connection per
/// shard: no reconnect loop. The codes run side by side, each against its own stack.
#[tokio::test]
async fn fatal_close_codes_stop_ingest_with_an_error_naming_the_cause() {
    let runs = FATAL.map(|(code, kind, words)| async move {
        let h = start(sim_config(2)).await;
        h.ready().await;
        h.burst(100).finished().await;
        h.sim.close(1, code);
        let sim = h.sim.clone();
        let error = h.ingest_failure().await;
        let stats = sim.stats();
        (code, kind, words, error, stats)
    });
    for (code, kind, words, error, stats) in futures::future::join_all(runs).await {
        let ingest = error
            .downcast_ref::<IngestError>()
            .unwrap_or_else(|| panic!("{code}: not an ingest error: {error:#}"));
        let text = format!("{error:#}");
        assert_eq!(ingest.kind(), kind, "{code}: {text}");
        assert!(text.contains(&code.to_string()), "{code}: {text}");
        assert!(
            text.to_lowercase().contains(&words.to_lowercase()),
            "{code}: {text}"
        );
        // One connection per shard, and the closed one never came back.
        assert_eq!(stats.connections, 2, "{code}: reconnected: {stats:?}");
    }
}

/// A static shard range has a fixed count: 4011 stops it with an error naming the cause
/// and the way out (a count that fits, or leased mode, which reshards by itself).
#[tokio::test]
async fn close_4011_stops_a_static_range_naming_the_fix() {
    let h = Stack::builder()
        .sim_config(sim_config(2))
        .config(|c| {
            c.ingest.shards = "0-1".into();
            c.ingest.shard_count = relaycord::config::ShardCount::Number(2);
        })
        .ingest_unready()
        .start()
        .await;
    h.ready().await;
    h.sim.close(1, 4011);
    let error = h.ingest_failure().await;
    let ingest = error
        .downcast_ref::<IngestError>()
        .expect("an ingest error");
    assert_eq!(
        ingest.kind(),
        IngestErrorKind::ShardingRequired,
        "{error:#}"
    );
    let text = format!("{error:#}");
    assert!(
        text.contains("4011")
            && text.contains("sharding required")
            && text.contains("relaycord reshard"),
        "{text}"
    );
}

/// Identify pacing: with max_concurrency 2, four shards start in two rounds five seconds
/// apart, and re-identifying all of them (non-resumable INVALID_SESSION) is paced as well.
/// The simulator counts every pair of identifies in one bucket less than 5 s apart.
#[tokio::test]
async fn identifies_respect_max_concurrency() {
    let h = start(SimConfig {
        max_concurrency: 2,
        ..sim_config(4)
    })
    .await;
    h.ready().await;
    h.burst(300).finished().await;
    for shard in 0..4 {
        h.sim.invalidate_session(shard, false);
    }
    h.ready().await;
    h.burst(300).finished().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(stats.identifies, 8, "{stats:?}");
    assert_eq!(stats.identify_violations, 0, "{stats:?}");
    h.stop_expecting_failed_resumes(0).await;
}

/// `session_start_limit.remaining` is respected: with 3 session starts for 2 shards, the
/// third re-identify waits for the limit's reset instead of identifying (which the simulator
/// would refuse with 4008 and count), then the shard comes back and nothing is missing.
#[tokio::test]
async fn session_start_limit_is_respected() {
    let h = start(SimConfig {
        session_start_limit: 3,
        // Long enough for both re-identifies to be asked before the refill.
        session_start_reset_after: Duration::from_secs(12),
        ..sim_config(2)
    })
    .await;
    h.ready().await;
    // The budget's gauges follow what the shared budget holds, for the dashboards and
    // the RelaycordSessionStartBudgetLow alert.
    assert_eq!(metric(&h.registry, "relaycord_session_start_total"), 3.0);
    assert_eq!(
        metric(&h.registry, "relaycord_session_start_remaining"),
        1.0
    );
    // Discord's reset time: the simulator's window of 12 s began before these identifies.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let reset = metric(
        &h.registry,
        "relaycord_session_start_reset_timestamp_seconds",
    );
    assert!(
        reset <= now + 12.0 && reset > now - 60.0,
        "reset at {reset}, now {now}"
    );
    assert_eq!(
        metric(&h.registry, "relaycord_publish_window_size"),
        relaycord_ingest::IngestSection::default().window as f64
    );
    // Spends the last session start.
    h.sim.invalidate_session(0, false);
    h.ready().await;
    assert_eq!(h.sim.stats().session_start_remaining, 0);
    assert_eq!(
        metric(&h.registry, "relaycord_session_start_remaining"),
        0.0
    );
    // Nothing left: shard 1 has to wait for the reset.
    h.sim.invalidate_session(1, false);
    let generator = h.burst(300);
    h.ready().await;
    generator.finished().await;
    let stats = h.sim.stats();
    assert_eq!(
        stats.session_start_exhausted, 0,
        "identified with none left: {stats:?}"
    );
    // The 4th identify came after the simulator refilled the limit; one made before would
    // have been refused with 4008 and counted above.
    assert_eq!(stats.identifies, 4, "{stats:?}");
    assert_eq!(
        metric(&h.registry, "relaycord_session_start_remaining"),
        f64::from(stats.session_start_remaining)
    );
    h.assert_nothing_missing().await;
    h.stop_expecting_failed_resumes(0).await;
}

/// A shard whose session record another process wrote (it is fenced) drains, closes with
/// the RESUME code and releases its lease at once: it is claimed again and resumed well
/// within the lease TTL (60 s here) instead of sitting unowned until the lease expires.
#[tokio::test]
async fn a_fenced_shard_releases_its_lease_and_is_resumed_at_once() {
    let h = start_with(sim_config(2), Duration::from_secs(60)).await;
    h.ready().await;
    let generator = h.stream(3000, 300.0);
    while generator.generated() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another writer (under its own claim: the same record written back under shard 0's
    // claim would be taken for its own save): the record's revision moves past the one
    // shard 0 holds, so its next save (within a second, events are flowing) is fenced.
    let sessions = h.js.get_key_value("DISCORD_SESSIONS").await.unwrap();
    let entry = sessions
        .entry("s.2.0")
        .await
        .unwrap()
        .expect("shard 0 has saved its session");
    let mut record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    record["claim"] = "another-process".into();
    sessions
        .put("s.2.0", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    // Half the TTL: a lease left to expire could not be claimed again in time.
    let resumed = eventually(Duration::from_secs(30), async || h.sim.stats().resumes >= 1).await;
    assert!(resumed, "fenced shard not resumed: {:?}", h.sim.stats());
    generator.finished().await;
    h.ready().await;
    h.assert_nothing_missing().await;
    assert_eq!(h.sim.stats().identifies, 2, "resumed, not re-identified");
    h.stop_expecting_failed_resumes(0).await;
}
