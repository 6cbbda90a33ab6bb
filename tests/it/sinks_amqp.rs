//! The amqp sink against the real RabbitMQ (`AMQP_URL`, default guest@127.0.0.1:5672),
//! read back with pika, across a broker restart (`rabbitmqctl stop_app` / `start_app`).
//! Each run uses its own exchange and queue and deletes them; the broker is left running.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relaycord_sinks::amqp::AmqpSinkConfig;
use relaycord_sinks::retry::Backoff;
use relaycord_sinks::{SinkConfig, SinkKind};

use relaycord_testkit::{Stack, eventually, run_sink};

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker is shared and one test stops it: while it is down, another test's publishes
/// fail for a reason that is not theirs (the unroutable test once saw no return at all).
/// Every test here holds this for its whole run.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

async fn pika(args: &[&str]) -> (bool, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/py/amqp_queue.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python3 must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn rabbitmqctl(action: &str) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", action])
        .status()
        .await
        .expect("rabbitmqctl must be on PATH (scripts/setup.sh --tests installs RabbitMQ)");
    assert!(status.success(), "rabbitmqctl {action} failed");
}

/// Starts the broker's application again even when an assertion fails mid-restart.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
    }
}

/// 200 events, half of them published while RabbitMQ's application is stopped: pika
/// reads every one back from a durable queue, persistent, with `message_id` = the
/// event id and the routing key from the template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_read_back_across_a_broker_restart() {
    let _broker = BROKER.lock().await;
    let url = amqp_url();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let unique = format!("relaycord-test-{}-{nanos}", std::process::id());
    let (ok, out, err) = pika(&[
        "setup",
        "--url",
        &url,
        "--exchange",
        &unique,
        "--queue",
        &unique,
    ])
    .await;
    assert!(
        ok && out.trim() == "ready",
        "RabbitMQ must run at {url} (AMQP_URL) with pika installed; scripts/setup.sh --tests does both: {err}"
    );

    let bus = Stack::builder().start().await;
    let config = SinkConfig {
        max_attempts: 1000,
        concurrency: 8,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        },
        ..SinkConfig::new(
            "amqp",
            SinkKind::Amqp(AmqpSinkConfig {
                routing_key: "discord.{type}.{guild_id}".to_owned(),
                ..AmqpSinkConfig::new(url.clone(), unique.clone())
            }),
        )
    };
    let mut expected: HashSet<String> = bus.messages(0, 100).await.into_iter().collect();
    let sink = run_sink(&bus, &config);
    bus.wait_settled("amqp").await;

    let guard = RestartGuard;
    rabbitmqctl("stop_app").await;
    expected.extend(bus.messages(1000, 100).await);
    assert!(
        eventually(Duration::from_secs(30), async || sink.outcome("retried")
            > 0.0)
        .await,
        "publishing failed while the broker was down"
    );
    rabbitmqctl("start_app").await;
    drop(guard);
    bus.wait_settled("amqp").await;
    sink.stop().await;

    let expect = expected.len().to_string();
    let (ok, out, err) = pika(&[
        "read", "--url", &url, "--queue", &unique, "--expect", &expect,
    ])
    .await;
    let _ = pika(&[
        "cleanup",
        "--url",
        &url,
        "--exchange",
        &unique,
        "--queue",
        &unique,
    ])
    .await;
    assert!(ok, "{err}");
    let mut seen = HashSet::new();
    for line in out.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(m["message_id"], m["envelope_id"], "{line}");
        assert_eq!(m["delivery_mode"], 2, "persistent: {line}");
        assert_eq!(m["routing_key"], "discord.MESSAGE_CREATE.1", "{line}");
        assert_eq!(m["type"], "MESSAGE_CREATE");
        assert_eq!(m["content_type"], "application/json");
        seen.insert(m["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, expected, "{err}");
}

/// An exchange no queue is bound to: RabbitMQ confirms every publish and drops the
/// message. Published as mandatory (the default), each comes back (basic.return) and
/// the attempt fails: nothing is counted delivered, every event ends in the DLQ after
/// `max_attempts`, and each return is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_are_not_delivered_but_dead_lettered() {
    let _broker = BROKER.lock().await;
    let url = amqp_url();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let unique = format!("relaycord-test-unbound-{}-{nanos}", std::process::id());
    let bus = Stack::builder().start().await;
    let config = SinkConfig {
        max_attempts: 2,
        pause: relaycord_sinks::pause::PauseConfig {
            after: 0,
            ..Default::default()
        },
        backoff: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        // The sink declares the exchange; nothing binds a queue to it.
        ..SinkConfig::new(
            "amqp-unbound",
            SinkKind::Amqp(AmqpSinkConfig::new(url.clone(), unique.clone())),
        )
    };
    let ids: HashSet<String> = bus.messages(0, 5).await.into_iter().collect();
    let sink = run_sink(&bus, &config);
    bus.wait_settled("amqp-unbound").await;
    let returned = relaycord_testkit::metric_with(
        &sink.registry,
        "relaycord_sink_amqp_returned_total",
        &["sink=\"amqp-unbound\""],
    );
    let (delivered, dead) = (sink.outcome("delivered"), sink.outcome("dead_lettered"));
    sink.stop().await;
    let _ = pika(&[
        "cleanup",
        "--url",
        &url,
        "--exchange",
        &unique,
        "--queue",
        &unique,
    ])
    .await;
    let letters = relaycord_sinks::dlq::list(&bus.js, "amqp-unbound")
        .await
        .unwrap();
    // Why each event failed, should the counts below be off.
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(delivered, 0.0, "an unroutable event is not delivered");
    assert_eq!(dead, 5.0, "{reasons:?}");
    assert_eq!(
        returned, 10.0,
        "two attempts of five events, each returned; letters: {reasons:?}"
    );
    assert_eq!(
        letters.iter().map(|l| l.id.clone()).collect::<HashSet<_>>(),
        ids
    );
    for letter in &letters {
        assert!(letter.reason.contains("unroutable"), "{}", letter.reason);
        assert_eq!(letter.attempts, 2);
    }
}
