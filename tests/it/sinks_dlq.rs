//! `relaycord dlq show` and `purge` on dead letters of a permanent failure (404); purge
//! never touches another sink's dead letters.

use std::time::Duration;

use std::collections::HashSet;

use relaycord_bus::{StreamSettings, Subjects, subject};
use relaycord_sinks::{SinkConfig, dlq, driver};

use relaycord_testkit::TestReceiver;
use relaycord_testkit::{
    RecordingSink, RefusingSink, Stack, eventually, http_config, relaycord, run_driver, run_sink,
    test_config, write_config,
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_shown_and_purged() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    // A path the receiver does not serve: 404 is permanent, dead-lettered at once.
    let url = rx.url.replace("/events", "/gone");
    let ids = bus.messages(0, 3).await;
    let sink = run_sink(&bus, &http_config("gone", &url));
    bus.wait_settled("gone").await;
    sink.stop().await;
    let letters = dlq::list(&bus.js, "gone").await.unwrap();
    assert_eq!(letters.len(), 3);
    assert!(
        letters
            .iter()
            .all(|l| l.attempts == 1 && l.status == Some(404))
    );

    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[[sinks]]\nname = \"gone\"\ntype = \"http\"\nurl = \"{url}\"\n");
    let path = write_config(dir.path(), "c.toml", &bus, &toml);
    let path = path.to_str().unwrap();
    let seq = letters[0].seq.to_string();
    let (ok, shown, err) = relaycord(&["--config", path, "dlq", "show", &seq]).await;
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["id"], letters[0].id);
    assert_eq!(shown["status"], 404);
    assert_eq!(
        shown["envelope"]["id"], letters[0].id,
        "the original envelope"
    );
    assert!(ids.contains(&letters[0].id));

    // Sequences are global to the DLQ stream: another sink's letter is refused by
    // `purge --sink gone`, and nothing is deleted.
    let foreign = bus
        .js
        .publish(subject::dlq("other"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
        .to_string();
    let (ok, _, err) = relaycord(&[
        "--config", path, "dlq", "purge", "--sink", "gone", "--seq", &seq, "--seq", &foreign,
    ])
    .await;
    assert!(!ok, "purged another sink's dead letter: {err}");
    assert!(err.contains("not a dead letter of sink \"gone\""), "{err}");
    assert_eq!(dlq::list(&bus.js, "other").await.unwrap().len(), 1);
    assert_eq!(dlq::list(&bus.js, "gone").await.unwrap().len(), 3);

    let (ok, _, err) = relaycord(&[
        "--config", path, "dlq", "purge", "--sink", "gone", "--seq", &seq,
    ])
    .await;
    assert!(ok && err.contains("purged 1"), "{err}");
    assert_eq!(dlq::list(&bus.js, "gone").await.unwrap().len(), 2);
    let (ok, _, err) = relaycord(&["--config", path, "dlq", "purge", "--sink", "gone"]).await;
    assert!(ok && err.contains("purged 2"), "{err}");
    assert!(dlq::list(&bus.js, "gone").await.unwrap().is_empty());
    assert_eq!(dlq::list(&bus.js, "other").await.unwrap().len(), 1);
}

/// A letter replayed (so deleted) whose stream message fails again later (here: the
/// consumer is reset and reads it anew) is stored again, not dropped by the DLQ's
/// duplicate window as a copy of the first letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_letter_that_fails_again_is_stored_again() {
    let bus = Stack::builder().start().await;
    let ids = bus.messages(0, 1).await;
    let config = test_config("again");
    let run = run_driver(&bus, &config, RefusingSink);
    bus.wait_settled("again").await;
    run.stop().await;
    let letters = dlq::list(&bus.js, "again").await.unwrap();
    assert_eq!(letters.len(), 1);
    let replayed = dlq::replay(&bus.js, &RecordingSink::open(), None, &letters)
        .await
        .unwrap();
    assert_eq!(replayed, vec![(letters[0].seq, dlq::Replayed::Delivered)]);
    assert!(dlq::list(&bus.js, "again").await.unwrap().is_empty());

    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    stream.delete_consumer("relaycord-again").await.unwrap();
    let run = run_driver(&bus, &config, RefusingSink);
    bus.wait_settled("again").await;
    assert_eq!(run.outcome("dead_lettered"), 1.0);
    run.stop().await;
    let letters = dlq::list(&bus.js, "again").await.unwrap();
    assert_eq!(
        letters.iter().map(|l| &l.id).collect::<Vec<_>>(),
        vec![&ids[0]],
        "stored again"
    );
}

/// While the DLQ cannot take a dead letter (its stream is gone), the worker keeps the
/// message and retries in place: failures spend none of the consumer's deliveries, so
/// far more of them than `max_deliver` pass without the message being given up. A
/// stopping worker releases it; once the DLQ is back, the next worker stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_for_an_unavailable_dlq() {
    const N: u64 = 2;
    let bus = Stack::builder().start().await;
    let ids = bus.messages(0, N).await;
    bus.js.delete_stream("RELAYCORD_DLQ").await.unwrap();
    let config = SinkConfig {
        max_attempts: 1,
        ack_wait: Duration::from_secs(1),
        ..test_config("nodlq")
    };
    let max_deliver = u64::from(config.max_attempts + driver::DEAD_LETTER_DELIVERIES);
    let run = run_driver(&bus, &config, RefusingSink);
    let failures = (N * (max_deliver + 1)) as f64;
    assert!(
        eventually(WAIT, async || run.outcome("dead_letter_failed") >= failures).await,
        "{} failures to store",
        run.outcome("dead_letter_failed")
    );
    assert_eq!(run.outcome("dead_lettered"), 0.0);
    tokio::time::timeout(WAIT, run.stop())
        .await
        .expect("shutdown is not held up by the DLQ retries");

    relaycord_bus::ensure_streams(&bus.js, &Subjects::default(), &StreamSettings::default())
        .await
        .unwrap();
    let run = run_driver(&bus, &config, RefusingSink);
    bus.wait_settled("nodlq").await;
    run.stop().await;
    let letters = dlq::list(&bus.js, "nodlq").await.unwrap();
    let stored: HashSet<String> = letters.into_iter().map(|l| l.id).collect();
    assert_eq!(stored, ids.into_iter().collect());
}

/// A dead letter that cannot fit the server's max_payload (the envelope fit, its DLQ
/// headers do not) is abandoned loudly and terminated, not retried forever, and the
/// worker goes on with the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_over_max_payload_is_abandoned_and_the_sink_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 16384\n").unwrap();
    let bus = Stack::builder()
        .nats_args(&["-c", conf.to_str().unwrap()])
        .start()
        .await;
    let big = format!(r#"{{"content":"{}"}}"#, "x".repeat(16_384 - 400));
    bus.publish("msg:big", "MESSAGE_CREATE", "1", &big).await;
    bus.publish("msg:small", "MESSAGE_CREATE", "1", r#"{"content":"hi"}"#)
        .await;

    let run = relaycord_testkit::run_driver(
        &bus,
        &relaycord_testkit::test_config("toolarge"),
        relaycord_testkit::RefusingSink,
    );
    assert!(
        relaycord_testkit::eventually(Duration::from_secs(30), async || {
            run.outcome("abandoned") == 1.0 && run.outcome("dead_lettered") == 1.0
        })
        .await,
        "abandoned {}, dead-lettered {}",
        run.outcome("abandoned"),
        run.outcome("dead_lettered")
    );
    let letters = dlq::list(&bus.js, "toolarge").await.unwrap();
    let ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["msg:small"]);
    run.stop().await;
}

/// The DLQ keeps at most `nats.dlq_max_msgs_per_sink` letters per sink, dropping the
/// oldest (before, it had no size cap at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_keeps_the_newest_letters_up_to_its_cap() {
    let bus = Stack::builder()
        .config(|c| c.nats.dlq_max_msgs_per_sink = 3)
        .start()
        .await;
    let ids = bus.messages(0, 8).await;
    let config = SinkConfig {
        concurrency: 1,
        pause: relaycord_sinks::pause::PauseConfig {
            after: 0,
            ..Default::default()
        },
        ..test_config("capped")
    };
    let run = run_driver(&bus, &config, RefusingSink);
    assert!(eventually(WAIT, async || run.outcome("dead_lettered") == 8.0).await);
    run.stop().await;
    let kept: Vec<String> = dlq::list(&bus.js, "capped")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let info = bus.js.get_stream("RELAYCORD_DLQ").await.unwrap();
    let config = &info.cached_info().config;
    assert_eq!(config.max_messages_per_subject, 3);
    assert_eq!(config.max_bytes, StreamSettings::default().dlq_max_bytes);
    assert_eq!(kept, ids[5..], "the newest are kept");
}
