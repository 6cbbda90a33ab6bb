//! Ordered delivery (`ordering = "channel"`), end to end: a receiver checks the order of
//! every channel while it fails 30 % of its answers and sink replicas are killed with
//! SIGKILL; the same run with `ordering = "none"` shows the disorder the check catches.
//! Smaller runs in this process show a dead letter's gap and a blocked lane.

use std::collections::HashMap;
use std::time::Duration;

use relaycord_sinks::SinkConfig;
use relaycord_sinks::dlq;
use relaycord_sinks::ordering::{OnFailure, Ordering};
use relaycord_testkit::{
    Accepted, SECRET, Stack, TestReceiver, eventually, http_sink, metric_with, run_sink, spawn_sink,
};

/// Events of the big run: `CHANNELS` channels, `PER_CHANNEL` events each, interleaved.
const CHANNELS: u64 = 200;
const PER_CHANNEL: u64 = 100;
const WAIT: Duration = Duration::from_secs(600);

/// `ord:<channel>:<k>`, the k-th event of channel `1000 + channel`.
fn id(channel: u64, k: u64) -> String {
    format!("ord:{}:{k}", 1000 + channel)
}

fn parse(id: &str) -> (u64, u64) {
    let mut parts = id.split(':').skip(1).map(|p| p.parse::<u64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

async fn publish(bus: &Stack, channel: u64, k: u64) {
    let c = 1000 + channel;
    let data = format!(
        r#"{{"id":"{k}","channel_id":"{c}","guild_id":"1","content":"event {k} of {c}","author":{{"id":"2","username":"u"}}}}"#
    );
    bus.publish(&id(channel, k), "MESSAGE_CREATE", "1", &data)
        .await;
}

/// Deliveries that came after a later event of their channel had been accepted
/// (a repeat of the last one is not out of order).
fn out_of_order(log: &[Accepted]) -> Vec<String> {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut late = Vec::new();
    for accepted in log {
        let (channel, k) = parse(&accepted.id);
        let seen = last.entry(channel).or_insert(k);
        if k < *seen {
            late.push(format!("{} after {}", accepted.id, *seen));
        }
        *seen = (*seen).max(k);
    }
    late
}

fn toml(nats_url: &str, url: &str, ordering: &str) -> String {
    format!(
        r#"[nats]
url = "{nats_url}"

[[sinks]]
name = "ordered"
type = "http"
url = "{url}"
secret = "{SECRET}"
timeout = "1s"
ordering = "{ordering}"
on_failure = "block"
partitions = 4
concurrency = 32
max_attempts = 1000
ack_wait = "3s"
backoff = {{ initial = "10ms", max = "200ms" }}
"#
    )
}

/// Every event through two `relaycord sink` replicas while the receiver fails 30 % of
/// its answers; each replica is killed with SIGKILL once, mid-run, and started again.
/// Returns what the receiver accepted, in order.
async fn run(ordering: &str) -> Vec<Accepted> {
    let bus = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start(Duration::ZERO).await;
    rx.set_fail_percent(30);
    for k in 0..PER_CHANNEL {
        for channel in 0..CHANNELS {
            publish(&bus, channel, k).await;
        }
    }
    let total = (CHANNELS * PER_CHANNEL) as usize;
    let config = dir.path().join("sink.toml");
    std::fs::write(&config, toml(&bus.nats_url(), &rx.url, ordering)).unwrap();
    let mut a = spawn_sink(&config, dir.path(), "a1");
    let mut b = spawn_sink(&config, dir.path(), "b1");
    for (share, victim, log) in [(5, &mut a, "a2"), (2, &mut b, "b2")] {
        // Kill when a fifth, then half, of the events have arrived.
        assert!(
            eventually(WAIT, async || rx.distinct() >= total / share).await,
            "{} of {total} delivered before the kill",
            rx.distinct()
        );
        victim.start_kill().unwrap();
        victim.wait().await.unwrap();
        *victim = spawn_sink(&config, dir.path(), log);
    }
    assert!(
        eventually(WAIT, async || rx.distinct() >= total).await,
        "{} of {total} delivered",
        rx.distinct()
    );
    let log = rx.log();
    assert!(rx.requests() > log.len() as u64, "some answers failed");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_order_holds_through_failures_and_kill_9() {
    let log = run("channel").await;
    let late = out_of_order(&log);
    assert!(
        late.is_empty(),
        "{} out of order: {:?}",
        late.len(),
        &late[..late.len().min(20)]
    );
    // The lane headers: the channel, and the event's place in it (no dead letters, so
    // the k-th event is number k + 1); a repeat carries the same number again.
    for accepted in &log {
        let (channel, k) = parse(&accepted.id);
        assert_eq!(
            accepted.lane.as_deref(),
            Some(format!("channel:{channel}").as_str())
        );
        assert_eq!(accepted.lane_seq, Some(k + 1), "{accepted:?}");
        assert_eq!(accepted.lane_gap, None, "{accepted:?}");
    }
    let repeats = log.len() - (CHANNELS * PER_CHANNEL) as usize;
    eprintln!(
        "ordered: {} deliveries, {repeats} repeats after the kills",
        log.len()
    );
}

/// The control: without ordering the same run delivers out of order, so the check
/// above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ordering_the_same_run_is_out_of_order() {
    let log = run("none").await;
    let late = out_of_order(&log);
    eprintln!(
        "unordered: {} of {} deliveries out of order",
        late.len(),
        log.len()
    );
    assert!(!late.is_empty(), "retries reorder an unordered sink");
    assert!(log.iter().all(|a| a.lane.is_none() && a.lane_seq.is_none()));
}

fn ordered(name: &str, url: &str, on_failure: OnFailure) -> SinkConfig {
    SinkConfig {
        ordering: Some(Ordering::Channel),
        on_failure,
        max_attempts: 2,
        partitions: 2,
        ack_wait: Duration::from_secs(2),
        ..http_sink(name, url.to_owned())
    }
}

/// `on_failure = "dead_letter"`: an event refused for good goes to the DLQ and its lane
/// goes on; the next delivery names the gap, and the lane's numbers skip the lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_event_leaves_a_gap_and_the_lane_goes_on() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    rx.refuse([id(0, 1)]);
    for k in 0..4 {
        publish(&bus, 0, k).await;
    }
    let running = run_sink(&bus, &ordered("gap", &rx.url, OnFailure::DeadLetter));
    assert!(eventually(WAIT, async || rx.distinct() >= 3).await);
    let log = rx.log();
    let seen: Vec<(String, Option<u64>, Option<u64>)> = log
        .iter()
        .map(|a| (a.id.clone(), a.lane_seq, a.lane_gap))
        .collect();
    assert_eq!(
        seen,
        [
            (id(0, 0), Some(1), None),
            (id(0, 2), Some(3), Some(1)),
            (id(0, 3), Some(4), None)
        ]
    );
    let letters = dlq::list(&bus.js, "gap").await.unwrap();
    assert_eq!(
        letters.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        [id(0, 1)]
    );
    running.stop().await;
}

/// `on_failure = "block"`: an event refused for good holds its own lane, past
/// `max_attempts`, while other lanes deliver; once accepted, the lane goes on in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_lane_holds_only_itself() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    rx.refuse([id(0, 0)]);
    for k in 0..5 {
        for channel in 0..3 {
            publish(&bus, channel, k).await;
        }
    }
    let running = run_sink(&bus, &ordered("block", &rx.url, OnFailure::Block));
    // The other channels all get through while channel 0's first event is refused again
    // and again, beyond max_attempts (2).
    assert!(
        eventually(WAIT, async || rx.distinct() >= 10
            && rx.arrivals(&id(0, 0)).len() >= 4)
        .await
    );
    let blocked = || metric_with(&running.registry, "relaycord_sink_lanes_blocked", &[]);
    assert!(
        eventually(WAIT, async || blocked() == 1.0).await,
        "lanes blocked: {}",
        blocked()
    );
    assert!(
        rx.log().iter().all(|a| parse(&a.id).0 != 1000),
        "nothing of the blocked lane was delivered"
    );
    assert!(dlq::list(&bus.js, "block").await.unwrap().is_empty());
    rx.accept_all_again();
    assert!(eventually(WAIT, async || rx.distinct() >= 15).await);
    let lane: Vec<String> = rx
        .log()
        .into_iter()
        .filter(|a| parse(&a.id).0 == 1000)
        .map(|a| a.id)
        .collect();
    assert_eq!(lane, (0..5).map(|k| id(0, k)).collect::<Vec<_>>());
    assert!(eventually(WAIT, async || blocked() == 0.0).await);
    running.stop().await;
}
