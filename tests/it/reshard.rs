//! Resharding without a gap (docs/ingest.md#resharding): a new generation of shards runs
//! beside the old one under load, by command, on Discord's recommendation, after a 4011,
//! and with a replica killed -9 in the middle. Every generated event is counted on the bus
//! by the number the simulator stamped into it: each exactly once, the old generation's
//! sessions ended.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use relaycord_bus::{Envelope, Subjects};
use relaycord_ingest::reshard::{Generations, Plan};
use relaycord_sim::{GenerateSpec, GeneratorHandle, STAMP_FIELD, SimConfig};
use relaycord_testkit::{Stack, scrape};
use tokio::process::{Child, Command};

use crate::durability::{PATIENCE, Replicas, spawn_ingest, wait_generated};

/// Two shards, eight guilds (each shard of 2 and of 4 owns some), identifies paced only
/// by the buckets, as many session starts as the tests need.
async fn two_shards(config: SimConfig) -> Stack {
    Stack::builder()
        .sim_config(SimConfig {
            shards: 2,
            guilds: 8,
            ..config
        })
        .start()
        .await
}

fn ingest(stack: &Stack, replica: &str, env: &[(&str, &str)]) -> Child {
    spawn_ingest(stack, replica, stack.dir(), &[], env)
}

/// `relaycord reshard <args>`: exit status and what it printed.
async fn reshard_command(stack: &Stack, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_relaycord"))
        .arg("reshard")
        .args(args)
        .env("RELAYCORD_NATS__URL", stack.nats_url())
        .env("DISCORD_TOKEN", &stack.sim.config().token)
        .env("RELAYCORD_DISCORD__API_BASE", stack.sim.api_base())
        .output()
        .await
        .expect("run relaycord reshard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn endless_stamped(stack: &Stack, rate_per_sec: f64) -> GeneratorHandle {
    stack.sim.generate(GenerateSpec {
        count: None,
        rate_per_sec,
        stamp: true,
        ..GenerateSpec::default()
    })
}

async fn plan(stack: &Stack) -> Plan {
    let generations = Generations::ensure(&stack.js, &Subjects::default(), 1)
        .await
        .unwrap();
    generations.plan().await.unwrap().expect("a plan").0
}

/// Waits until the plan satisfies `done`.
async fn wait_plan(stack: &Stack, what: &str, done: impl Fn(&Plan) -> bool) -> Plan {
    let deadline = Instant::now() + 2 * PATIENCE;
    loop {
        let plan = plan(stack).await;
        if done(&plan) {
            return plan;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: plan is {plan:?}\n{}",
            reshard_log(stack.dir())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn complete_at(count: u32) -> impl Fn(&Plan) -> bool {
    move |plan| plan.count == count && plan.reshard.is_none()
}

/// How many times each stamped event number is stored in the gateway stream.
async fn stamped(js: &jetstream::Context) -> HashMap<u64, u32> {
    let stream = js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let reader = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pending = reader.cached_info().num_pending;
    let mut counts = HashMap::new();
    while pending > 0 {
        let mut batch = reader
            .fetch()
            .max_messages(5_000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = batch.next().await {
            pending = pending.saturating_sub(1);
            let envelope = Envelope::from_slice(&message.payload).unwrap();
            let data: serde_json::Value = serde_json::from_str(envelope.data.get()).unwrap();
            if let Some(n) = data[STAMP_FIELD]["n"].as_u64() {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Every event the generator made is on the bus exactly once.
async fn assert_every_event_once(stack: &Stack, generated: u64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let counts = stamped(&stack.js).await;
        let missing: Vec<u64> = (0..generated).filter(|n| !counts.contains_key(n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            let twice: Vec<(&u64, &u32)> = counts.iter().filter(|(_, c)| **c > 1).collect();
            assert!(
                missing.is_empty() && twice.is_empty(),
                "{what}: {} of {generated} events missing (e.g. {:?}), {} stored more than once (e.g. {:?})\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                twice.len(),
                &twice[..twice.len().min(5)],
                reshard_log(stack.dir())
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reshard's steps as every replica logged them, for a failure's post-mortem.
fn reshard_log(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.push_str(&format!("--- {}\n", entry.path().display()));
        for line in text.lines().filter(|l| {
            [
                "reshard", "ready", "retired", "switch", "resuming", "lease", "WARN", "ERROR",
            ]
            .iter()
            .any(|w| l.contains(w))
        }) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Only the new generation's sessions are left, all connected.
fn assert_old_generation_closed(stack: &Stack, count: u32) {
    let live = stack.sim.live_sessions();
    assert!(
        live.iter().all(|s| s.shard_count == count) && live.len() == count as usize,
        "sessions left: {live:?}\n{}",
        reshard_log(stack.dir())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_by_command_under_load_loses_nothing() {
    let stack = two_shards(SimConfig::default()).await;
    let _a = ingest(&stack, "a", &[]);
    let _b = ingest(&stack, "b", &[]);
    stack.children_ready().await;
    let generator = endless_stamped(&stack, 500.0);
    wait_generated(&generator, 1_000).await;

    let started = Instant::now();
    let (ok, said) = reshard_command(&stack, &["--to", "4"]).await;
    assert!(ok, "{said}");
    assert!(said.contains("2 → 4"), "{said}");
    let (_, status) = reshard_command(&stack, &["status"]).await;
    assert!(status.contains("resharding 2 → 4"), "{status}");
    wait_plan(&stack, "reshard 2 → 4", complete_at(4)).await;
    let took = started.elapsed();
    wait_generated(&generator, 1_000).await;
    generator.stop();
    let generated = generator.finished().await;

    assert_every_event_once(&stack, generated, "across the reshard").await;
    assert_old_generation_closed(&stack, 4);
    let (_, status) = reshard_command(&stack, &["status"]).await;
    assert!(
        status.contains("4 shards, no reshard in progress"),
        "{status}"
    );
    let port = stack.metrics_port("a").await;
    assert_eq!(scrape(port, "relaycord_shard_count").await, Some(4.0));
    assert_eq!(
        scrape(port, "relaycord_reshard_in_progress").await,
        Some(0.0)
    );
    let mut recognised = 0.0;
    for replica in ["a", "b"] {
        let port = stack.metrics_port(replica).await;
        recognised += scrape(port, "relaycord_reshard_overlap_skipped_total")
            .await
            .unwrap_or(0.0);
    }
    // What docs/ingest.md quotes (run with --nocapture).
    eprintln!(
        "reshard 2 → 4 at 500 events/s: {took:?} from the command to done; {generated} events, \
         each stored once; {recognised} held events recognised as already published"
    );
    let stats = stack.sim.stats();
    assert_eq!(stats.identifies, 2 + 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discords_recommendation_reshards_by_itself() {
    let stack = two_shards(SimConfig::default()).await;
    let _a = ingest(
        &stack,
        "a",
        &[("RELAYCORD_INGEST__RESHARD_CHECK_INTERVAL", "1s")],
    );
    stack.children_ready().await;
    let generator = endless_stamped(&stack, 500.0);
    wait_generated(&generator, 1_000).await;
    stack.sim.set_recommended_shards(4);
    let during = wait_plan(&stack, "a reshard to Discord's count", |p| {
        p.reshard.is_some() || p.count == 4
    })
    .await;
    if let Some(reshard) = &during.reshard {
        assert_eq!((reshard.to, reshard.reason.as_str()), (4, "recommended"));
    }
    wait_plan(&stack, "reshard 2 → 4", complete_at(4)).await;
    wait_generated(&generator, 1_000).await;
    generator.stop();
    let generated = generator.finished().await;
    assert_every_event_once(&stack, generated, "across the automatic reshard").await;
    assert_old_generation_closed(&stack, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_reshard_loses_nothing() {
    let stack = two_shards(SimConfig::default()).await;
    let mut a = ingest(&stack, "a", &[]);
    let _b = ingest(&stack, "b", &[]);
    stack.children_ready().await;
    let generator = endless_stamped(&stack, 500.0);
    wait_generated(&generator, 1_000).await;

    let (ok, said) = reshard_command(&stack, &["--to", "4"]).await;
    assert!(ok, "{said}");
    // Mid-overlap: the new generation is identifying or holding events back.
    wait_generated(&generator, 500).await;
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    wait_generated(&generator, 1_000).await;
    let _a_again = ingest(&stack, "a2", &[]);
    wait_plan(&stack, "reshard 2 → 4 after a kill -9", complete_at(4)).await;
    wait_generated(&generator, 1_000).await;
    generator.stop();
    let generated = generator.finished().await;

    assert_every_event_once(&stack, generated, "across the reshard and the kill").await;
    assert_old_generation_closed(&stack, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4011_reshards_instead_of_stopping() {
    let stack = two_shards(SimConfig::default()).await;
    let mut a = ingest(&stack, "a", &[]);
    stack.children_ready().await;
    let generator = endless_stamped(&stack, 200.0);
    wait_generated(&generator, 500).await;
    // The bot outgrew two shards: Discord closes the next identify with 4011.
    stack.sim.set_max_guilds_per_shard(2);
    stack.sim.invalidate_session(0, false);
    let plan = wait_plan(&stack, "a reshard after 4011", |p| {
        p.count == 4 || p.reshard.is_some()
    })
    .await;
    if let Some(reshard) = &plan.reshard {
        assert_eq!((reshard.to, reshard.reason.as_str()), (4, "close 4011"));
    }
    wait_plan(&stack, "reshard 2 → 4 after 4011", complete_at(4)).await;
    wait_generated(&generator, 500).await;
    generator.stop();
    let generated = generator.finished().await;
    assert_every_event_once(&stack, generated, "across the 4011 reshard").await;
    assert_old_generation_closed(&stack, 4);
    assert!(a.try_wait().unwrap().is_none(), "ingest kept running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_the_identify_budget_cannot_pay_for_is_refused() {
    let stack = two_shards(SimConfig {
        session_start_limit: 4,
        ..SimConfig::default()
    })
    .await;
    let _a = ingest(&stack, "a", &[]);
    stack.children_ready().await;
    let (ok, said) = reshard_command(&stack, &["--to", "4"]).await;
    assert!(!ok, "{said}");
    assert!(
        said.contains("4 identifies are needed but Discord allows only 2 more"),
        "{said}"
    );
    assert_eq!(
        plan(&stack).await,
        Plan {
            count: 2,
            reshard: None
        }
    );
}

/// A reshard cancelled during its overlap leaves the old generation publishing; a second
/// one to the same count starts clean (the cancelled generation's sessions are not
/// resumed) and completes. Every event once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_reshard_leaves_the_old_generation_and_a_later_one_completes() {
    let stack = two_shards(SimConfig::default()).await;
    let _a = ingest(&stack, "a", &[]);
    stack.children_ready().await;
    let generator = endless_stamped(&stack, 300.0);
    wait_generated(&generator, 600).await;

    let (ok, said) = reshard_command(&stack, &["--to", "4"]).await;
    assert!(ok, "{said}");
    let deadline = Instant::now() + PATIENCE;
    while stack
        .sim
        .live_sessions()
        .iter()
        .filter(|s| s.shard_count == 4)
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the new generation never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, said) = reshard_command(&stack, &["cancel"]).await;
    assert!(ok, "{said}");
    assert_eq!(
        plan(&stack).await,
        Plan {
            count: 2,
            reshard: None
        }
    );
    wait_generated(&generator, 600).await;
    let (ok, said) = reshard_command(&stack, &["cancel"]).await;
    assert!(!ok && said.contains("no reshard is in progress"), "{said}");

    let (ok, said) = reshard_command(&stack, &["--to", "4"]).await;
    assert!(ok, "{said}");
    wait_plan(&stack, "the second reshard 2 → 4", complete_at(4)).await;
    wait_generated(&generator, 600).await;
    generator.stop();
    let generated = generator.finished().await;
    assert_every_event_once(
        &stack,
        generated,
        "across a cancelled and a completed reshard",
    )
    .await;
    let stats = stack.sim.stats();
    assert_eq!(
        stats.identifies,
        2 + 4 + 4,
        "the second generation identified afresh: {stats:?}"
    );
}
