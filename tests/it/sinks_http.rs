//! The HTTP sink against receivers that misbehave, and against an independent
//! Standard Webhooks implementation (the `standardwebhooks` PyPI package).

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use relaycord_sinks::SinkConfig;
use relaycord_sinks::dlq;
use relaycord_sinks::pause::PauseConfig;
use relaycord_sinks::retry::Backoff;
use tokio::io::{AsyncBufReadExt, BufReader};

use relaycord_testkit::SECRET;
use relaycord_testkit::TestReceiver;
use relaycord_testkit::{
    Stack, eventually, http_config, http_config_with, outcome_count, relaycord, run_sink,
    write_config,
};

/// A receiver failing half its requests (500s, hangs past the timeout, 429 with
/// Retry-After) and some ids always: every event ends up delivered once or
/// dead-lettered, none lost; once the receiver recovers, `relaycord dlq replay`
/// delivers the dead letters with their original ids and empties the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_receiver_loses_nothing_and_dead_letters_replay() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    rx.set_flaky(true);
    let ids = bus.messages(0, 120).await;
    let doomed: HashSet<String> = ids.iter().step_by(10).cloned().collect();
    rx.doom(doomed.clone());
    let config = SinkConfig {
        max_attempts: 3,
        concurrency: 16,
        backoff: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(2),
        },
        ..http_config_with("flaky", &rx.url, SECRET, Duration::from_millis(500))
    };
    let sink = run_sink(&bus, &config);
    bus.wait_settled("flaky").await;
    assert!(sink.outcome("retried") > 0.0);
    assert!(
        rx.requests() > ids.len() as u64 * 3 / 2,
        "half the requests failed: {} requests for {} events",
        rx.requests(),
        ids.len()
    );
    sink.stop().await;

    let accepted = rx.accepted();
    let dead: Vec<String> = dlq::list(&bus.js, "flaky")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    let dead_set: HashSet<String> = dead.iter().cloned().collect();
    assert_eq!(dead.len(), dead_set.len(), "one dead letter per event");
    assert!(
        doomed.is_subset(&dead_set),
        "ids failing every time are dead-lettered"
    );
    for id in &ids {
        let delivered = accepted.get(id).copied().unwrap_or(0);
        let dead = dead_set.contains(id);
        assert!(
            (delivered == 1 && !dead) || (delivered == 0 && dead),
            "{id}: delivered {delivered} time(s), dead-lettered: {dead}"
        );
    }
    assert_eq!(rx.bad_signatures(), 0);

    // The receiver recovers: the operator lists and replays the dead letters.
    rx.set_flaky(false);
    let dir = tempfile::tempdir().unwrap();
    let sink_toml = format!(
        "[[sinks]]\nname = \"flaky\"\ntype = \"http\"\nurl = \"{}\"\nsecret = \"{}\"\n",
        rx.url, SECRET
    );
    let path = write_config(dir.path(), "relaycord.toml", &bus, &sink_toml);
    let path = path.to_str().unwrap();
    let (ok, listed, err) =
        relaycord(&["--config", path, "dlq", "list", "--sink", "flaky", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(listed.lines().count(), dead.len(), "{listed}");
    assert!(listed.contains("attempts exhausted"), "{listed}");
    let (ok, out, err) = relaycord(&["--config", path, "dlq", "replay", "--sink", "flaky"]).await;
    assert!(ok, "replay failed: {out}\n{err}");
    let accepted = rx.accepted();
    for id in &ids {
        assert_eq!(accepted.get(id), Some(&1), "{id} after replay");
    }
    assert_eq!(dlq::count(&bus.js, "relaycord.dlq.flaky").await.unwrap(), 0);
    let (ok, listed, _) = relaycord(&["--config", path, "dlq", "list", "--sink", "flaky"]).await;
    assert!(ok && listed.is_empty(), "{listed}");
}

/// Every request the sink sends verifies with the reference Standard Webhooks library;
/// a sink with another secret is refused by it (so the check can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standardwebhooks_library_verifies_requests() {
    let bus = Stack::builder().start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/py/verify_webhooks.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .args([script, "--secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    let url = first.strip_prefix("listening ").unwrap_or_else(|| {
        panic!("verifier did not start ({first:?}); install it with: pip install standardwebhooks (scripts/setup.sh --tests does)")
    });
    let ids = bus.messages(0, 50).await;
    let good = run_sink(&bus, &http_config("verified", url));
    let mut verified = HashSet::new();
    while verified.len() < ids.len() {
        let v = next_request(&mut lines, "a request per event").await;
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["id"], v["envelope_id"], "webhook-id is the envelope id");
        verified.insert(v["id"].as_str().unwrap().to_owned());
    }
    good.stop().await;
    assert_eq!(verified, ids.iter().cloned().collect());

    // Its own path: a request of the good sink still in flight when it stopped (a retry
    // after a slow answer, say) can print after this point and must not count here.
    let wrong_url = format!("{url}-wrong-secret");
    let wrong = SinkConfig {
        max_attempts: 1,
        ..http_config_with(
            "wrong-secret",
            &wrong_url,
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            Duration::from_secs(5),
        )
    };
    let bad = run_sink(&bus, &wrong);
    let v = loop {
        let v = next_request(&mut lines, "a request from the wrong-secret sink").await;
        if v["path"] == "/events-wrong-secret" {
            break v;
        }
        assert_eq!(v["path"], "/events", "{v}");
    };
    assert_eq!(v["ok"], false, "{v}");
    bad.stop().await;
}

/// The verifier's next line: one request it checked.
async fn next_request(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 30 s"))
        .unwrap()
        .expect("the verifier is running");
    serde_json::from_str(&line).unwrap()
}

/// A 429 with `Retry-After: 2` is nak'ed with that delay (the backoff drawn here is at
/// most 10 ms), and JetStream honours it: each event's next request comes no earlier
/// than two seconds after the refused one. Only a lower bound is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_delays_the_redelivery() {
    const RETRY_AFTER: Duration = Duration::from_secs(2);
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    rx.set_retry_after_first(RETRY_AFTER.as_secs());
    let ids = bus.messages(0, 5).await;
    let config = SinkConfig {
        backoff: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(10),
        },
        ..http_config("patient", &rx.url)
    };
    let sink = run_sink(&bus, &config);
    bus.wait_settled("patient").await;
    assert_eq!(sink.outcome("retried"), ids.len() as f64);
    sink.stop().await;
    for id in &ids {
        let arrivals = rx.arrivals(id);
        assert_eq!(arrivals.len(), 2, "{id}: refused once, then accepted");
        let waited = arrivals[1] - arrivals[0];
        assert!(
            waited >= RETRY_AFTER,
            "{id}: redelivered after {waited:?}, before Retry-After"
        );
    }
}

/// A receiver answering 400 to everything, and an HTTP sink `name` into it that pauses
/// after `after` failed events and probes every 200 ms to 1 s.
async fn refusing_receiver_and_pausing_sink(
    name: &'static str,
    concurrency: usize,
    after: u32,
) -> (TestReceiver, Stack) {
    let rx = TestReceiver::start(Duration::ZERO).await;
    rx.set_refusing(true);
    let url = rx.url.clone();
    let bus = Stack::builder()
        .sinks()
        .config(move |c| {
            c.sinks = vec![SinkConfig {
                concurrency,
                pause: PauseConfig {
                    after,
                    probe_interval: Duration::from_millis(200),
                    probe_max_interval: Duration::from_secs(1),
                },
                ..http_config(name, &url)
            }];
        })
        .start()
        .await;
    (rx, bus)
}

/// A receiver answering 400 to everything (a route removed, a secret rotated) no longer
/// dead-letters the whole stream: after `pause.after` failed events in a row the sink
/// pauses with no more dead letters than that, `/readyz` and `relaycord_sink_paused`
/// say why, and the other events stay in the stream while probes fail. Once the
/// receiver accepts again, a probe resumes the sink and every other event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_everything_pauses_the_sink() {
    const N: u64 = 60;
    const AFTER: u32 = 5;
    const WAIT: Duration = Duration::from_secs(60);
    let (rx, bus) = refusing_receiver_and_pausing_sink("refused", 4, AFTER).await;
    let ids = bus.messages(0, N).await;
    let paused = || bus.metric_with("relaycord_sink_paused", &["sink=\"refused\""]);
    assert!(
        eventually(WAIT, async || paused() == 1.0).await,
        "not paused; {} dead letters",
        dlq::count(&bus.js, "relaycord.dlq.refused").await.unwrap()
    );
    let why = bus.health.readiness().unwrap_err();
    assert!(
        why.contains("sink refused paused") && why.contains("400"),
        "{why}"
    );
    // Probes keep failing; nothing more is dead-lettered meanwhile.
    let probes = || outcome_count(&bus.registry, "probe_failed");
    assert!(eventually(WAIT, async || probes() >= 3.0).await);
    let dead: HashSet<String> = dlq::list(&bus.js, "refused")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(dead.len(), AFTER as usize, "dead letters while paused");
    assert!(rx.accepted().is_empty());

    rx.set_refusing(false);
    let delivered = || rx.accepted().len() + dead.len();
    assert!(
        eventually(WAIT, async || delivered() == N as usize).await,
        "{} of {N} delivered or dead",
        delivered()
    );
    let accepted = rx.accepted();
    for id in &ids {
        let times = accepted.get(id).copied().unwrap_or(0);
        assert!(
            (times == 1) != dead.contains(id),
            "{id}: delivered {times} time(s), dead-lettered: {}",
            dead.contains(id)
        );
    }
    assert_eq!(paused(), 0.0);
    assert_eq!(bus.health.readiness(), Ok(()));
    assert_eq!(
        dlq::count(&bus.js, "relaycord.dlq.refused").await.unwrap(),
        AFTER as u64
    );
}

/// The probe of a paused sink is refused for good (this one event is bad, not the
/// receiver): the probe lets it go and tries another event, the sink resumes and delivers
/// the rest, and the bad event ends in the dead letters. A probe that kept retrying it
/// would hold the sink paused forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_refused_for_good_lets_its_event_go_and_the_sink_resumes() {
    const N: u64 = 30;
    const AFTER: u32 = 3;
    const WAIT: Duration = Duration::from_secs(60);
    let (rx, bus) = refusing_receiver_and_pausing_sink("picky", 2, AFTER).await;
    let ids = bus.messages(0, N).await;
    let paused = || bus.metric_with("relaycord_sink_paused", &["sink=\"picky\""]);
    assert!(
        eventually(WAIT, async || paused() == 1.0).await,
        "not paused"
    );
    // The receiver recovers, except for the next event it sees: the probe's.
    rx.refuse_next_for_good();
    rx.set_refusing(false);
    let settled = async || {
        let dead = dlq::count(&bus.js, "relaycord.dlq.picky").await.unwrap() as usize;
        rx.accepted().len() + dead == N as usize
    };
    assert!(
        eventually(WAIT, settled).await,
        "stuck: {} delivered, paused {}, refused for good {:?}",
        rx.accepted().len(),
        paused(),
        rx.refused_for_good()
    );
    let refused = rx.refused_for_good();
    assert_eq!(refused.len(), 1);
    let dead: HashSet<String> = dlq::list(&bus.js, "picky")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert!(refused.is_subset(&dead), "{refused:?} not in {dead:?}");
    let accepted = rx.accepted();
    for id in &ids {
        assert!(
            accepted.get(id) == Some(&1) || dead.contains(id),
            "{id}: neither delivered once nor dead-lettered"
        );
    }
    assert_eq!(paused(), 0.0);
}
