//! Ingest never loses an event: ingest processes killed with SIGKILL, replicas taking over
//! each other's shards, NATS stopped mid-stream. Every test counts every dispatch the
//! simulator logged against the ids stored in the stream.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use relaycord_bus::Subjects;
use relaycord_ingest::store::{Buckets, SaveError, SessionRecord, SessionStore};
use relaycord_sim::{GenerateSpec, GeneratorHandle, SimConfig, Simulator};
use relaycord_testkit::{NatsServer, Stack, assert_sim_clean, scrape};
use tokio::process::{Child, Command};

/// `relaycord ingest` as a child process, configured through the environment. Its
/// logs go to `<dir>/<replica>.log` for post-mortems.
fn spawn_ingest_with(stack: &Stack, replica: &str, log_dir: &Path, args: &[&str]) -> Child {
    spawn_ingest(stack, replica, log_dir, args, &[])
}

/// As [`spawn_ingest_with`], with more environment (`RELAYCORD_INGEST__…` overrides).
pub(crate) fn spawn_ingest(
    stack: &Stack,
    replica: &str,
    log_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let log = std::fs::File::create(log_dir.join(format!("{replica}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_relaycord"))
        .arg("ingest")
        .args(args)
        .env("RELAYCORD_NATS__URL", stack.nats_url())
        .env("DISCORD_TOKEN", &stack.sim.config().token)
        .env("RELAYCORD_DISCORD__API_BASE", stack.sim.api_base())
        // Port 0: each child binds its own and logs it (`Replicas::metrics_port`).
        .env("RELAYCORD_INGEST__METRICS_LISTEN", "127.0.0.1:0")
        .env("RELAYCORD_INGEST__LEASE_TTL", "3s")
        .env("RELAYCORD_INGEST__REPLICA_ID", replica)
        // async-nats's connector says why a connection attempt failed (its event only
        // says "IO error"): a few lines per attempt.
        .env(
            "RUST_LOG",
            "info,relaycord_ingest=debug,async_nats::connector=debug",
        )
        // Ingest's own default unless a test sets it, whatever the runner's environment.
        .env_remove("TOKIO_WORKER_THREADS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relaycord ingest")
}

async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

/// Waits until the stream holds every id the simulator logged; returns what is missing.
async fn wait_on_bus(
    js: &jetstream::Context,
    sim: &Simulator,
    timeout: Duration,
) -> (Vec<String>, HashMap<String, u32>) {
    let expected: HashSet<String> = relaycord_testkit::expected_ids(&sim.sent(), None);
    let deadline = Instant::now() + timeout;
    loop {
        let ids = relaycord_testkit::stream_ids(js, "DISCORD_GATEWAY").await;
        let missing: Vec<String> = expected
            .iter()
            .filter(|id| !ids.contains_key(*id))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return (missing, ids);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first 10 and last 15 lines of every file in `dir` (the children's logs): how each
/// child started, and how it ended.
pub(crate) fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // The first lines too: whether a child ever connected is told at its start.
        out.push_str(&format!(
            "--- {}\n{}\n",
            entry.path().display(),
            relaycord_testkit::log_excerpt(&text, 10, 15)
        ));
    }
    out
}

/// Starts a stack (nats-server and the simulator; ingest runs as child processes).
async fn start(config: SimConfig) -> Stack {
    Stack::builder().sim_config(config).start().await
}

async fn with_shards(shards: u32) -> Stack {
    start(SimConfig {
        shards,
        guilds: shards * 2,
        ..SimConfig::default()
    })
    .await
}

/// What these tests do with a stack: `relaycord ingest` children logging into the
/// stack's directory, and checks against the simulator's proof log.
pub(crate) trait Replicas {
    fn ingest(&self, replica: &str) -> Child;
    fn ingest_with(&self, replica: &str, args: &[&str]) -> Child;
    async fn metrics_port(&self, replica: &str) -> u16;
    async fn children_ready(&self);
    fn endless(&self, rate_per_sec: f64) -> GeneratorHandle;
    async fn assert_all_on_bus(&self, what: &str);
}

impl Replicas for Stack {
    fn ingest(&self, replica: &str) -> Child {
        spawn_ingest_with(self, replica, self.dir(), &[])
    }

    fn ingest_with(&self, replica: &str, args: &[&str]) -> Child {
        spawn_ingest_with(self, replica, self.dir(), args)
    }

    /// The port a child bound for its metrics (it asks for port 0 and logs the address).
    async fn metrics_port(&self, replica: &str) -> u16 {
        const MARK: &str = "metrics endpoint on http://127.0.0.1:";
        let log = self.dir().join(format!("{replica}.log"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(at) = text.find(MARK) {
                let digits: String = text[at + MARK.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                return digits.parse().expect("a port number");
            }
            assert!(
                Instant::now() < deadline,
                "{replica} never logged its metrics address:\n{}",
                log_tail(self.dir())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn children_ready(&self) {
        if let Err(error) = self.sim.wait_ready(Duration::from_secs(60)).await {
            panic!(
                "shards not ready: {error}\n{}\n{}",
                log_tail(self.dir()),
                self.nats_diagnosis()
            );
        }
    }

    /// Starts a steady stream of simulated events.
    fn endless(&self, rate_per_sec: f64) -> GeneratorHandle {
        self.sim.generate(GenerateSpec {
            count: None,
            rate_per_sec,
            ..GenerateSpec::default()
        })
    }

    /// Asserts that the stream holds every dispatch the simulator logged, each once, and
    /// nothing else: a replay or a second owner added no message of its own.
    async fn assert_all_on_bus(&self, what: &str) {
        let (missing, ids) = wait_on_bus(&self.js, &self.sim, Duration::from_secs(90)).await;
        assert!(
            missing.is_empty(),
            "{} events missing {what}:\n{}",
            missing.len(),
            log_tail(self.dir())
        );
        assert!(ids.values().all(|n| *n == 1), "each event is stored once");
        let expected = relaycord_testkit::expected_ids(&self.sim.sent(), None);
        let extra: Vec<&String> = ids.keys().filter(|id| !expected.contains(*id)).collect();
        assert!(
            extra.is_empty(),
            "{} messages on the bus {what} name no event the simulator sent, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(5)]
        );
    }
}

/// Upper bound for things that take seconds; reached only when a test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until the generator has produced `more` events beyond what it had, so a fault
/// lands mid-stream and events keep coming after it.
pub(crate) async fn wait_generated(generator: &GeneratorHandle, more: u64) {
    let target = generator.generated() + more;
    let deadline = Instant::now() + PATIENCE;
    while generator.generated() < target {
        assert!(Instant::now() < deadline, "the generator stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `(leases held, shards up)` summed over the replicas serving metrics on `ports`;
/// `None` if one of them does not answer.
async fn shares(ports: &[u16]) -> Option<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for &port in ports {
        out.push((
            scrape(port, "relaycord_shard_leases_held").await?,
            scrape(port, "relaycord_shard_up").await?,
        ));
    }
    Some(out)
}

/// Waits until the replicas on `ports` hold and run all `shards` between them, each
/// holding at least one; returns the per-replica shares, or panics after `timeout`.
/// Waits until the sessions bucket holds a record for `shards` shards.
async fn wait_sessions_recorded(fx: &Stack, shards: usize) {
    use futures::TryStreamExt;
    let js = fx.js.clone();
    let bucket = js.get_key_value("DISCORD_SESSIONS").await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let keys: std::collections::HashSet<String> =
            bucket.keys().await.unwrap().try_collect().await.unwrap();
        if keys.len() >= shards {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {shards} sessions recorded",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_spread(fx: &Stack, ports: &[u16], shards: f64, timeout: Duration) -> Vec<(f64, f64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = shares(ports).await;
        if let Some(s) = &now
            && s.iter().all(|(held, _)| *held > 0.0)
            && s.iter().map(|(held, _)| held).sum::<f64>() == shards
            && s.iter().map(|(_, up)| up).sum::<f64>() == shards
        {
            return now.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "shards not spread within {timeout:?}: {now:?}\n{}",
            log_tail(fx.dir())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILL of the only ingest mid-stream, then a restart: the new process resumes the
/// stored sessions (no new IDENTIFY) and the stream ends up with every event, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_resumes_without_loss() {
    let fx = with_shards(2).await;
    let mut ingest = fx.ingest("solo");
    fx.children_ready().await;
    let generator = fx.endless(400.0);
    wait_generated(&generator, 600).await;

    ingest.start_kill().unwrap();
    ingest.wait().await.unwrap();
    // Events keep coming while no process is connected; Discord keeps them in the session.
    wait_generated(&generator, 400).await;
    let _restarted = fx.ingest("solo");
    fx.children_ready().await;
    wait_generated(&generator, 400).await;
    generator.stop();

    fx.assert_all_on_bus("after kill -9").await;
    let stats = fx.sim.stats();
    assert_eq!(
        stats.identifies, 2,
        "the restarted process resumed instead of identifying: {stats:?}"
    );
    assert!(stats.resumes >= 2, "{stats:?}");
    assert!(
        stats.replayed > 0,
        "events dispatched while no process was connected came back by replay: {stats:?}"
    );
    assert_sim_clean(&fx.sim, 0);
}

/// A RESUME replays what the bus already has (the process died after publishing, before
/// its last save): every replayed dispatch is recognised by its id and stored 0 times
/// more, including the byte-identical reaction of a toggle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replay_stores_nothing_twice() {
    let fx = with_shards(1).await;
    let mut ingest = fx.ingest("solo");
    fx.children_ready().await;
    let guild = fx.sim.guild_ids()[0];
    let add = format!(
        r#"{{"user_id":"53908099506183680","channel_id":"290926798999357250","message_id":"334385199974967042","guild_id":"{guild}","emoji":{{"id":null,"name":"🔥"}}}}"#
    );
    for t in [
        "MESSAGE_REACTION_ADD",
        "MESSAGE_REACTION_REMOVE",
        "MESSAGE_REACTION_ADD",
    ] {
        let d = serde_json::value::RawValue::from_string(add.clone()).unwrap();
        fx.sim.dispatch(0, t, &d).unwrap();
    }
    fx.stream(200, 0.0).finished().await;
    fx.assert_all_on_bus("before the replay").await;
    let stored = fx.stream_messages().await;

    ingest.start_kill().unwrap();
    ingest.wait().await.unwrap();
    // As if the process had died right after READY's save: the next owner resumes from
    // there and Discord replays every dispatch since.
    let buckets = Buckets::ensure(&fx.js, &Subjects::default(), 1, Duration::from_secs(3))
        .await
        .unwrap();
    let (mut store, record) = SessionStore::claim(buckets.sessions.clone(), 0, 1)
        .await
        .unwrap();
    let record = record.expect("the killed process saved its session");
    store
        .save(&SessionRecord { seq: 1, ..record })
        .await
        .unwrap();
    let replayed_before = fx.sim.stats().replayed;

    let _restarted = fx.ingest("again");
    let port = fx.metrics_port("again").await;
    fx.children_ready().await;
    let sent = fx
        .sim
        .sent()
        .iter()
        .filter(|d| relaycord_testkit::is_published(d))
        .count();
    let deadline = Instant::now() + PATIENCE;
    while scrape(port, "relaycord_publish_duplicates_total").await < Some(sent as f64) {
        assert!(
            Instant::now() < deadline,
            "replay not published:\n{}",
            log_tail(fx.dir())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = fx.sim.stats();
    assert_eq!(stats.replayed - replayed_before, sent as u64, "{stats:?}");
    assert_eq!(stats.identifies, 1, "resumed, not identified: {stats:?}");
    assert_eq!(
        fx.stream_messages().await,
        stored,
        "the replay stored nothing"
    );
    fx.assert_all_on_bus("after the replay").await;
    assert_sim_clean(&fx.sim, 0);
}

/// Three replicas share 16 shards; one that holds shards is killed; the survivors own and
/// run all of them again within the lease TTL plus a generous resume allowance, nothing is
/// lost, and no bucket ever identified faster than max_concurrency allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_take_over_a_killed_one() {
    const LEASE_TTL: Duration = Duration::from_secs(3); // RELAYCORD_INGEST__LEASE_TTL
    // Resuming 16 shards takes well under a second; the rest is room for a loaded
    // 2-core machine, so only a takeover that waits for something else fails.
    const RESUME_ALLOWANCE: Duration = Duration::from_secs(30);
    let fx = start(SimConfig {
        shards: 16,
        guilds: 32,
        max_concurrency: 4,
        ..SimConfig::default()
    })
    .await;
    let _a = fx.ingest_with("replica-a", &[]);
    let mut b = fx.ingest_with("replica-b", &[]);
    let _c = fx.ingest_with("replica-c", &[]);
    let ports = [
        fx.metrics_port("replica-a").await,
        fx.metrics_port("replica-b").await,
        fx.metrics_port("replica-c").await,
    ];
    fx.children_ready().await;
    let generator = fx.endless(300.0);
    // The replicas settle on their shares (6/6/4) before the kill: b must hold shards,
    // or killing it proves nothing.
    let before = wait_spread(&fx, &ports, 16.0, PATIENCE).await;
    let b_held = before[1].0;
    assert!(
        b_held >= 1.0,
        "replica-b holds shards before the kill: {before:?}"
    );
    // Sessions are recorded as soon as READY is through the window; a session killed
    // before its record exists cannot be resumed by anyone (docs/ingest.md), so the
    // kill comes once every shard's session is recorded.
    wait_sessions_recorded(&fx, 16).await;

    b.start_kill().unwrap();
    b.wait().await.unwrap();
    let killed = Instant::now();
    let survivors = [ports[0], ports[2]];
    let after = wait_spread(&fx, &survivors, 16.0, LEASE_TTL + RESUME_ALLOWANCE).await;
    let takeover = killed.elapsed();
    fx.children_ready().await;
    wait_generated(&generator, 300).await;
    generator.stop();

    fx.assert_all_on_bus("after a replica died").await;
    let stats = fx.sim.stats();
    assert_eq!(
        stats.identifies, 16,
        "handovers and takeovers resumed instead of identifying: {stats:?}"
    );
    assert_sim_clean(&fx.sim, 0);
    eprintln!(
        "takeover of {b_held} shards after kill -9: {takeover:?} (lease TTL {LEASE_TTL:?}); shares {before:?} -> {after:?}"
    );
}

/// nats-server stopped for 30 s mid-stream and started again: ingest stops reading while
/// the bus is down and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_for_30_seconds_loses_nothing() {
    let mut fx = start(SimConfig {
        shards: 2,
        guilds: 4,
        // Discord's 41.25 s interval outlasts a 30 s outage, and the connection would
        // survive it. With 5 s the simulator closes a connection 8.5 s after its last
        // heartbeat, and ingest sends none while it is not reading: every shard's
        // connection drops during the outage, and resuming afterwards is what is tested.
        heartbeat_interval: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let _ingest = fx.ingest("solo");
    fx.children_ready().await;
    let generator = fx.endless(100.0);
    wait_generated(&generator, 200).await;
    let connections = fx.sim.stats().connections;

    fx.nats_mut().stop();
    let during = generator.generated();
    tokio::time::sleep(Duration::from_secs(30)).await;
    fx.nats_mut().restart().unwrap();
    fx.children_ready().await;
    wait_generated(&generator, 300).await;
    generator.stop();
    assert!(
        generator.generated() > during + 2000,
        "events were generated during the outage"
    );
    fx.assert_all_on_bus("after the NATS outage").await;
    let stats = fx.sim.stats();
    assert!(
        stats.connections >= connections + 2 && stats.resumes >= 2,
        "both shards' connections were dropped during the outage and resumed: {stats:?}"
    );
    assert_eq!(stats.identifies, 2, "resumed, not re-identified: {stats:?}");
    assert_sim_clean(&fx.sim, 0);
}

/// A second replica joining takes its share: the first hands shards over (drain, save,
/// RESUME close, release), the second resumes them. No identify, nothing lost, and both
/// report ready with their shards up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_takes_its_share_by_clean_handover() {
    let fx = with_shards(8).await;
    let _a = fx.ingest_with("first", &[]);
    let pa = fx.metrics_port("first").await;
    fx.children_ready().await;
    let generator = fx.endless(300.0);
    wait_generated(&generator, 600).await;

    let _b = fx.ingest_with("second", &[]);
    let pb = fx.metrics_port("second").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = (
            scrape(pa, "relaycord_shard_leases_held").await,
            scrape(pb, "relaycord_shard_leases_held").await,
        );
        let up = (
            scrape(pa, "relaycord_shard_up").await,
            scrape(pb, "relaycord_shard_up").await,
        );
        if held == (Some(4.0), Some(4.0)) && up == (Some(4.0), Some(4.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced: held {held:?}, up {up:?}\n{}",
            log_tail(fx.dir())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_generated(&generator, 300).await;
    generator.stop();

    fx.assert_all_on_bus("across the handover").await;
    let stats = fx.sim.stats();
    assert_eq!(stats.identifies, 8, "handed-over shards resumed: {stats:?}");
    assert!(stats.resumes >= 4, "{stats:?}");
    relaycord_bus::install_crypto_provider();
    for port in [pa, pb] {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "replica on {port} is ready");
    }
    assert_sim_clean(&fx.sim, 0);
}

/// Static assignment (StatefulSet ordinals): two processes with fixed ranges cover the
/// shard set between them, without leases. One runs on ingest's default single worker
/// thread, the other on three (`TOKIO_WORKER_THREADS`): both carry their share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_shard_ranges_split_the_work() {
    let fx = with_shards(4).await;
    let _low = fx.ingest_with("low", &["--shards", "0-1", "--shard-count", "4"]);
    let _high = spawn_ingest(
        &fx,
        "high",
        fx.dir(),
        &["--shards", "2-3", "--shard-count", "4"],
        &[("TOKIO_WORKER_THREADS", "3")],
    );
    fx.children_ready().await;
    fx.sim
        .generate(GenerateSpec {
            count: Some(2000),
            rate_per_sec: 0.0,
            ..GenerateSpec::default()
        })
        .finished()
        .await;
    fx.assert_all_on_bus("with static ranges").await;
    assert_eq!(fx.sim.stats().identifies, 4);
    for (replica, workers) in [("low", 1), ("high", 3)] {
        let log = std::fs::read_to_string(fx.dir().join(format!("{replica}.log"))).unwrap();
        let line = log
            .lines()
            .find(|line| line.contains("runtime worker threads"))
            .unwrap_or_else(|| panic!("{replica} logged no worker count:\n{log}"));
        assert!(
            line.ends_with(&format!(" workers={workers}")),
            "{replica}: expected {workers} worker threads: {line}"
        );
    }
    assert_sim_clean(&fx.sim, 0);
}

/// `session_start_limit.remaining` is one budget for the deployment, not one per replica:
/// two replicas, one shard each, 3 session starts. After the 2 initial identifies, shard
/// 0's re-identify spends the last start; shard 1's, on the other replica, must wait for
/// Discord's reset instead of identifying (which the simulator refuses with 4008 and
/// counts). A per-replica count would let each replica spend the budget it read at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_start_limit_is_shared_by_the_replicas() {
    let fx = start(SimConfig {
        shards: 2,
        guilds: 4,
        session_start_limit: 3,
        // Long enough for both re-identifies to be asked before the refill.
        session_start_reset_after: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let _a = fx.ingest_with("one", &[]);
    let _b = fx.ingest_with("two", &[]);
    let ports = [fx.metrics_port("one").await, fx.metrics_port("two").await];
    fx.children_ready().await;
    let spread = wait_spread(&fx, &ports, 2.0, PATIENCE).await;
    assert_eq!(spread, vec![(1.0, 1.0), (1.0, 1.0)], "one shard each");

    fx.sim.invalidate_session(0, false);
    fx.children_ready().await;
    let stats = fx.sim.stats();
    assert_eq!(
        (stats.identifies, stats.session_start_remaining),
        (3, 0),
        "shard 0 spent the last start before the reset: {stats:?}"
    );
    fx.sim.invalidate_session(1, false);
    let generator = fx.sim.generate(GenerateSpec {
        count: Some(300),
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    });
    fx.children_ready().await;
    generator.finished().await;
    let stats = fx.sim.stats();
    assert_eq!(stats.identifies, 4, "{stats:?}");
    fx.assert_all_on_bus("after waiting for the session start reset")
        .await;
    // Checks session_start_exhausted == 0: nobody identified with none left.
    assert_sim_clean(&fx.sim, 0);
}

/// Fencing at the session record: once a new owner has claimed a shard's record, a late
/// save by the previous owner (cut off, not yet aware its lease is gone) is refused and
/// the new owner's saves go through. Without the claim the stale save would land first
/// and fence the rightful owner instead.
#[tokio::test]
async fn a_previous_owners_late_save_is_fenced_by_the_new_owners_claim() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let buckets = Buckets::ensure(&js, &Subjects::default(), 1, Duration::from_secs(3))
        .await
        .unwrap();
    let record = |session: &str, seq| SessionRecord {
        session_id: session.to_owned(),
        seq,
        resume_url: None,
    };
    let claim = |id| SessionStore::claim(buckets.sessions.clone(), id, 2);

    // Shard 0 has a saved session when the new owner claims it.
    let (mut old, none) = claim(0).await.unwrap();
    assert_eq!(none, None);
    old.save(&record("a", 10)).await.unwrap();
    let (mut new, loaded) = claim(0).await.unwrap();
    assert_eq!(loaded, Some(record("a", 10)));
    assert_eq!(old.save(&record("a", 12)).await, Err(SaveError::Fenced));
    new.save(&record("a", 11)).await.unwrap();
    let (_, latest) = SessionStore::load(buckets.sessions.clone(), 0, 2)
        .await
        .unwrap();
    assert_eq!(
        latest,
        Some(record("a", 11)),
        "the new owner's record stands"
    );

    // Shard 1: the previous owner never saved before the takeover.
    let (mut old, _) = claim(1).await.unwrap();
    let (mut new, loaded) = claim(1).await.unwrap();
    assert_eq!(loaded, None, "a claim placeholder is not a session");
    assert_eq!(old.save(&record("b", 3)).await, Err(SaveError::Fenced));
    new.save(&record("c", 1)).await.unwrap();
}

/// A save whose reply was lost (a timeout, a leader election) moved the record's
/// revision without the writer learning it. Its next save must recognise its own write
/// by the claim stored in the record and go on; a write under another claim still fences.
#[tokio::test]
async fn a_save_whose_reply_was_lost_is_recognised_as_our_own() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let buckets = Buckets::ensure(&js, &Subjects::default(), 1, Duration::from_secs(3))
        .await
        .unwrap();
    let record = |seq| SessionRecord {
        session_id: "a".to_owned(),
        seq,
        resume_url: None,
    };
    let (mut store, _) = SessionStore::claim(buckets.sessions.clone(), 0, 1)
        .await
        .unwrap();
    store.save(&record(5)).await.unwrap();
    // Our save of seq 7 landed, but its reply never came back.
    let landed = buckets.sessions.entry("s.1.0").await.unwrap().unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&landed.value).unwrap();
    value["seq"] = 7.into();
    buckets
        .sessions
        .put("s.1.0", serde_json::to_vec(&value).unwrap().into())
        .await
        .unwrap();
    store
        .save(&record(9))
        .await
        .expect("our own write is not a fence");
    let (_, latest) = SessionStore::load(buckets.sessions.clone(), 0, 1)
        .await
        .unwrap();
    assert_eq!(latest, Some(record(9)));

    value["claim"] = "another-process".into();
    buckets
        .sessions
        .put("s.1.0", serde_json::to_vec(&value).unwrap().into())
        .await
        .unwrap();
    assert_eq!(store.save(&record(11)).await, Err(SaveError::Fenced));
}
