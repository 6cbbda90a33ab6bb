//! `relaycord sink` as real child processes: killed with SIGKILL mid-delivery, run as
//! two replicas of one sink, and beside an independent sink on the same events.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use relaycord_testkit::{
    SECRET, Stack, TestReceiver, eventually, spawn_sink, wait_accepted, write_config,
};

const WAIT: Duration = Duration::from_secs(60);

fn sink_toml(name: &str, url: &str, replica: &str, concurrency: usize) -> String {
    format!(
        r#"[[sinks]]
name = "{name}"
type = "http"
url = "{url}"
secret = "{SECRET}"
headers = {{ "x-replica" = "{replica}" }}
concurrency = {concurrency}
max_attempts = 100
ack_wait = "2s"
backoff = {{ initial = "50ms", max = "500ms" }}
"#
    )
}

fn assert_each_once(rx: &TestReceiver, ids: &[String]) {
    let accepted = rx.accepted();
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let lost: Vec<_> = ids
        .iter()
        .filter(|id| !accepted.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
}

/// SIGKILL while every delivery slot is inside a request: those deliveries are
/// redelivered to the next worker, nothing is lost, and nothing is repeated. The held
/// requests are refused, so no lost-ack duplicate arises here: `sinks_lost_ack` covers
/// the case dedupe exists for (receiver said 2xx, id recorded, ack lost, kill -9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_nothing_and_repeats_nothing() {
    let bus = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start(Duration::from_millis(2)).await;
    let ids = bus.messages(0, 300).await;
    let config = write_config(
        dir.path(),
        "sink.toml",
        &bus,
        &sink_toml("crash", &rx.url, "a", 8),
    );
    let mut first = spawn_sink(&config, dir.path(), "first");
    wait_accepted(&rx, 100).await;
    rx.set_hold(true);
    assert!(
        eventually(WAIT, async || rx.held() == 8).await,
        "all 8 slots inside a request: {}",
        rx.held()
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before = rx.accepted().len();
    assert!(before >= 100 && before < ids.len());
    rx.set_hold(false);

    let _second = spawn_sink(&config, dir.path(), "second");
    wait_accepted(&rx, ids.len()).await;
    bus.wait_settled("crash").await;
    assert_each_once(&rx, &ids);
}

/// Two replicas of one sink share its consumer and split the events (each delivered
/// once); a third sink on the same events, whose receiver holds every request, neither
/// slows them down nor loses anything: it catches up once its receiver answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_work_and_sinks_are_independent() {
    let bus = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let fast = TestReceiver::start(Duration::from_millis(2)).await;
    let slow = TestReceiver::start(Duration::ZERO).await;
    slow.set_hold(true);
    let mut children = Vec::new();
    for replica in ["a", "b"] {
        let toml = sink_toml("split", &fast.url, replica, 4);
        let config = write_config(dir.path(), &format!("{replica}.toml"), &bus, &toml);
        children.push(spawn_sink(&config, dir.path(), replica));
    }
    let toml = sink_toml("slow", &slow.url, "c", 4);
    let config = write_config(dir.path(), "c.toml", &bus, &toml);
    children.push(spawn_sink(&config, dir.path(), "c"));

    // Both replicas are pulling before the first event exists.
    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting = stream
            .consumer_info("relaycord-split")
            .await
            .map_or(0, |i| i.num_waiting);
        if waiting >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "replicas never pulled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ids = bus.messages(0, 300).await;
    wait_accepted(&fast, ids.len()).await;
    bus.wait_settled("split").await;
    assert_each_once(&fast, &ids);
    let shares = fast.by_replica();
    assert!(
        shares.get("a").copied().unwrap_or(0) > 0 && shares.get("b").copied().unwrap_or(0) > 0,
        "both replicas delivered: {shares:?}"
    );
    assert_eq!(shares.values().sum::<u64>(), ids.len() as u64);
    assert!(
        slow.accepted().is_empty(),
        "the slow sink is still held, and the others did not wait for it"
    );

    slow.set_hold(false);
    wait_accepted(&slow, ids.len()).await;
    bus.wait_settled("slow").await;
    assert_each_once(&slow, &ids);
    let distinct: HashSet<_> = slow.by_replica().into_keys().collect();
    assert_eq!(distinct, HashSet::from(["c".to_owned()]));
}
