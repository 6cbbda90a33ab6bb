//! Ingest never stays quietly stuck: a static shard fenced by its own lost KV reply keeps
//! running, one fenced by another writer is started again (and is unready meanwhile), a
//! publish that cannot succeed is named and fails readiness, a fatal close records what
//! reached the bus, and a slow handover lets no other lease lapse.

use std::time::Duration;

use async_nats::jetstream;
use prometheus::Registry;
use relaycord::config::Config;
use relaycord::roles;
use relaycord::telemetry::Health;
use relaycord_bus::Secret;
use relaycord_ingest::ShardCount;
use relaycord_sim::SimConfig;
use relaycord_testkit::{
    GENERATED_TYPES, Stack, eventually, expected_ids, metric_with, stored_in, stream_ids,
};
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for things that take seconds; reached only when a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn sim(shards: u32) -> SimConfig {
    SimConfig {
        shards,
        guilds: shards * 3,
        ..SimConfig::default()
    }
}

/// `ingest.shards = "0-<shards-1>"`: static mode, no leases.
fn static_range(shards: u32) -> impl FnOnce(&mut Config) + Send + 'static {
    move |c: &mut Config| {
        c.ingest.shards = format!("0-{}", shards - 1);
        c.ingest.shard_count = ShardCount::Number(shards);
    }
}

/// Ingest run in-process as `relaycord ingest` runs it, with its own readiness and
/// metrics so that a test can watch them (and run two replicas side by side).
struct Ingest {
    health: Health,
    registry: Registry,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Ingest {
    fn spawn(stack: &Stack, edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = stack.config.clone();
        edit(&mut config);
        let health = Health::default();
        health.set_ready(true);
        let registry = Registry::new();
        let shutdown = stack.shutdown.child_token();
        let task = tokio::spawn({
            let (js, health, registry, shutdown) = (
                stack.js.clone(),
                health.clone(),
                registry.clone(),
                shutdown.clone(),
            );
            async move { roles::run_ingest(&config, js, &registry, &health, shutdown).await }
        });
        Self {
            health,
            registry,
            shutdown,
            task,
        }
    }

    fn unready_naming(&self, words: &[&str]) -> bool {
        self.health
            .readiness()
            .is_err_and(|e| words.iter().all(|w| e.contains(w)))
    }

    /// `relaycord_shard_up{shard="<id>",…}` as exposed; `None` when the series is absent.
    fn shard_up(&self, id: u32) -> Option<f64> {
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut text,
        )
        .unwrap();
        let series = format!("relaycord_shard_up{{shard=\"{id}\",");
        String::from_utf8(text)
            .unwrap()
            .lines()
            .filter(|line| line.starts_with(&series))
            .find_map(|line| line.rsplit_once("} ")?.1.parse().ok())
    }

    fn errors(&self, kind: &str) -> f64 {
        metric_with(
            &self.registry,
            "relaycord_publish_errors_total",
            &[&format!("kind=\"{kind}\"")],
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .unwrap()
            .expect("ingest stops without error");
    }
}

async fn wait_generated(generator: &relaycord_sim::GeneratorHandle, n: u64) {
    let reached = eventually(PATIENCE, async || generator.generated() >= n).await;
    assert!(reached, "the generator stalled");
}

/// A nats-server config whose one user may publish anywhere but to `denied`.
fn nats_config_denying(dir: &std::path::Path, denied: &str) -> String {
    let path = dir.join("nats.conf");
    std::fs::write(
        &path,
        format!(
            r#"authorization {{
  users = [
    {{ user: "relay", password: "pw-4c1d", permissions: {{
        publish: {{ allow: [">"], deny: ["{denied}"] }},
        subscribe: {{ allow: [">"] }} }} }}
  ]
}}
"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn as_relay(c: &mut Config) {
    c.nats.user = "relay".into();
    c.nats.password = Secret::new("pw-4c1d");
}

/// The session record as stored for shard `id` of `count`.
async fn stored_session(js: &jetstream::Context, id: u32, count: u32) -> serde_json::Value {
    let sessions = js.get_key_value("DISCORD_SESSIONS").await.unwrap();
    let value = sessions
        .get(format!("s.{count}.{id}"))
        .await
        .unwrap()
        .expect("the shard has a session record");
    serde_json::from_slice(&value).expect("a session record, not a claim placeholder")
}

/// A static shard's save whose KV reply was lost moved the record's revision without the
/// shard knowing; its next save finds the revision moved. Played here by writing the
/// record back as it stands (same claim, new revision): the shard must see its own write
/// and keep its connection, not take itself for fenced and end for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_shard_takes_its_own_save_with_a_lost_reply_for_its_own() {
    let h = Stack::builder()
        .sim_config(sim(2))
        .config(static_range(2))
        .ingest_unready()
        .start()
        .await;
    h.ready().await;
    let generator = h.stream(2000, 400.0);
    wait_generated(&generator, 400).await;

    let sessions = h.js.get_key_value("DISCORD_SESSIONS").await.unwrap();
    let entry = sessions
        .entry("s.2.0")
        .await
        .unwrap()
        .expect("shard 0 saved its session");
    sessions.put("s.2.0", entry.value).await.unwrap();

    generator.finished().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(
        (stats.connections, stats.resumes),
        (2, 0),
        "shard 0 kept running on its first connection: {stats:?}"
    );
    h.stop_expecting_failed_resumes(0).await;
}

/// Another writer takes a static shard's record: the shard is fenced and ends. Nobody
/// else would start it in static mode, so this process does — and while the shard it
/// owns is not running, it is down: `/readyz` names it and `relaycord_shard_up` is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_static_shard_is_started_again_and_unready_meanwhile() {
    let h = Stack::builder()
        .sim_config(sim(2))
        .config(static_range(2))
        .start()
        .await;
    let ingest = Ingest::spawn(&h, |c| {
        c.ingest.unhealthy_after = Duration::from_millis(200);
    });
    h.ready().await;
    let ready = eventually(PATIENCE, async || ingest.health.readiness().is_ok()).await;
    assert!(ready, "{:?}", ingest.health.readiness());
    let generator = h.stream(2000, 400.0);
    wait_generated(&generator, 400).await;

    let mut record = stored_session(&h.js, 0, 2).await;
    record["claim"] = "another-process".into();
    let sessions = h.js.get_key_value("DISCORD_SESSIONS").await.unwrap();
    sessions
        .put("s.2.0", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();

    let noticed = eventually(PATIENCE, async || {
        ingest.unready_naming(&["[0/2]"]) && ingest.shard_up(0) == Some(0.0)
    })
    .await;
    assert!(
        noticed,
        "fenced shard 0 not reported down: readiness {:?}, shard_up {:?}",
        ingest.health.readiness(),
        ingest.shard_up(0)
    );
    let back = eventually(PATIENCE, async || {
        ingest.health.readiness().is_ok() && ingest.shard_up(0) == Some(1.0)
    })
    .await;
    assert!(back, "shard 0 not started again: {:?}", h.sim.stats());

    generator.finished().await;
    h.assert_nothing_missing().await;
    let stats = h.sim.stats();
    assert_eq!(stats.identifies, 2, "resumed, not re-identified: {stats:?}");
    assert!(stats.resumes >= 1, "{stats:?}");
    ingest.stop().await;
    h.stop_expecting_failed_resumes(0).await;
}

/// No stream covers the events' subjects (the gateway stream was deleted): the publishes
/// are retried, counted as `no_stream`, and `/readyz` fails once the oldest has waited
/// past `ingest.max_unacked_age`. Restoring the stream brings every event through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_without_a_stream_are_named_and_fail_readiness_until_it_is_back() {
    let h = Stack::builder().sim_config(sim(2)).start().await;
    let ingest = Ingest::spawn(&h, |c| c.ingest.max_unacked_age = Duration::from_secs(2));
    h.ready().await;
    let ready = eventually(PATIENCE, async || ingest.health.readiness().is_ok()).await;
    assert!(ready, "{:?}", ingest.health.readiness());

    h.js.delete_stream("DISCORD_GATEWAY").await.unwrap();
    let generator = h.burst(100);
    let noticed = eventually(PATIENCE, async || {
        ingest.errors("no_stream") > 0.0 && ingest.unready_naming(&["unacknowledged"])
    })
    .await;
    assert!(
        noticed,
        "no_stream errors {}, readiness {:?}",
        ingest.errors("no_stream"),
        ingest.health.readiness()
    );
    assert_eq!(ingest.errors("permission"), 0.0);

    relaycord_bus::ensure_streams(&h.js, &h.config.nats.subjects(), &h.config.nats.streams())
        .await
        .unwrap();
    generator.finished().await;
    let expected = expected_ids(&h.sim.sent(), Some(&GENERATED_TYPES));
    assert_eq!(expected.len(), 100);
    let all_in = eventually(PATIENCE, async || {
        let on_bus = stream_ids(&h.js, "DISCORD_GATEWAY").await;
        expected.iter().all(|id| on_bus.contains_key(id))
    })
    .await;
    assert!(
        all_in,
        "events held back were not published once the stream was back"
    );
    let ready = eventually(PATIENCE, async || ingest.health.readiness().is_ok()).await;
    assert!(ready, "{:?}", ingest.health.readiness());
    ingest.stop().await;
}

/// The NATS user may not publish to one event's subject: the server drops the publish
/// and says so only asynchronously. The error is told from a slow server (kind
/// `permission`) and `/readyz` names the shard holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_user_may_not_make_is_named_and_fails_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let conf = nats_config_denying(dir.path(), "discord.gateway.RELAYCORD_DENIED.>");
    let h = Stack::builder()
        .nats_args(&["-c", &conf])
        .sim_config(sim(2))
        .config(as_relay)
        .start()
        .await;
    let ingest = Ingest::spawn(&h, |c| c.ingest.max_unacked_age = Duration::from_secs(2));
    h.ready().await;

    let data = RawValue::from_string("{}".to_owned()).unwrap();
    h.sim.dispatch(0, "RELAYCORD_DENIED", &data).unwrap();
    let noticed = eventually(PATIENCE, async || {
        ingest.errors("permission") > 0.0 && ingest.unready_naming(&["[0/2]", "unacknowledged"])
    })
    .await;
    assert!(
        noticed,
        "permission errors {}, timeouts {}, readiness {:?}",
        ingest.errors("permission"),
        ingest.errors("timeout"),
        ingest.health.readiness()
    );
    // Still retried: nothing read is dropped. The stop gives up on it after the drain.
    ingest.stop().await;
}

/// The highest seq of shard `shard`'s envelopes in the gateway stream.
async fn max_seq_on_bus(js: &jetstream::Context, shard: u64) -> u64 {
    stored_in(js, "DISCORD_GATEWAY")
        .await
        .iter()
        .filter(|s| s.envelope["shard"].as_u64() == Some(shard))
        .filter_map(|s| s.envelope["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// A fatal close (4004) mid-stream ends ingest, but first the shard drains its window and
/// records the position: once the token is fixed, the next start resumes right after the
/// last event that reached the bus, not from the last periodic save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_close_records_everything_that_reached_the_bus() {
    let h = Stack::builder()
        .sim_config(sim(2))
        .config(static_range(2))
        .start()
        .await;
    let ingest = Ingest::spawn(&h, |_| {});
    h.ready().await;
    let generator = h.stream(100_000, 1000.0);
    wait_generated(&generator, 1000).await;

    h.sim.close(1, 4004);
    let ended = tokio::time::timeout(PATIENCE, ingest.task)
        .await
        .expect("ingest stops after a fatal close")
        .unwrap();
    generator.stop();
    let error = format!("{:#}", ended.expect_err("a fatal close is an error"));
    assert!(error.contains("4004"), "{error}");

    let on_bus = max_seq_on_bus(&h.js, 1).await;
    let recorded = stored_session(&h.js, 1, 2).await["seq"].as_u64().unwrap();
    assert!(on_bus > 0);
    assert!(
        recorded >= on_bus,
        "shard 1 recorded seq {recorded}, but events up to seq {on_bus} were on the bus"
    );
}

/// Replica `a` hands two of its four shards over to `b`, one of them (shard 3) holding a
/// publish that is never acknowledged, so its drain lasts the whole drain timeout (10 s,
/// more than the 3 s lease TTL). Meanwhile the leases of the shards `a` keeps must keep
/// being renewed: none may lapse and be taken by `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handover_lets_no_other_lease_lapse() {
    let dir = tempfile::tempdir().unwrap();
    let conf = nats_config_denying(dir.path(), "discord.gateway.RELAYCORD_STUCK.>");
    let h = Stack::builder()
        .nats_args(&["-c", &conf])
        .sim_config(sim(4))
        .config(|c| {
            as_relay(c);
            c.ingest.lease_ttl = Duration::from_secs(3);
        })
        .start()
        .await;
    let a = Ingest::spawn(&h, |c| c.ingest.replica_id = "a".into());
    h.ready().await;
    // Only shards with a recorded session are handed over.
    let recorded = eventually(PATIENCE, async || {
        let mut all = true;
        for id in 0..4 {
            let sessions = h.js.get_key_value("DISCORD_SESSIONS").await.unwrap();
            all &= sessions
                .get(format!("s.4.{id}"))
                .await
                .ok()
                .flatten()
                .is_some_and(|v| !v.is_empty());
        }
        all
    })
    .await;
    assert!(recorded, "not every shard recorded its session");

    let data = RawValue::from_string("{}".to_owned()).unwrap();
    h.sim.dispatch(3, "RELAYCORD_STUCK", &data).unwrap();
    let stuck = eventually(PATIENCE, async || {
        metric_with(&a.registry, "relaycord_publish_inflight", &["shard=\"3\""]) >= 1.0
    })
    .await;
    assert!(stuck, "shard 3's publish is not waiting");

    let b = Ingest::spawn(&h, |c| c.ingest.replica_id = "b".into());
    let leases = h.js.get_key_value("DISCORD_LEASES").await.unwrap();
    let owner = async |id: u32| {
        leases
            .get(format!("s.4.{id}"))
            .await
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut samples = 0;
    // Shard 3 reaches b only once a's drain of it has given up on the stuck publish.
    while owner(3).await.as_deref() != Some("b") {
        for id in [0, 1] {
            let held = owner(id).await;
            assert_eq!(
                held.as_deref(),
                Some("a"),
                "shard {id}'s lease lapsed while shard 3 drained (sample {samples})"
            );
        }
        samples += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "shard 3 never handed over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 0);
    a.stop().await;
    b.stop().await;
}
