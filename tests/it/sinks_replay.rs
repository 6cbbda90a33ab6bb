//! `relaycord replay`: a time range delivered again to one sink only, with the original
//! ids and `Relaycord-Replay`, while live traffic goes on; a killed replay continues where
//! its checkpoint stands; `--only failed` takes exactly the dead letters of a window.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use relaycord_sinks::replay::CHECKPOINT_EVERY;
use relaycord_sinks::retry::Backoff;
use relaycord_sinks::{SinkConfig, dlq};
use relaycord_testkit::{
    SECRET, Stack, TestReceiver, eventually, http_config, relaycord, relaycord_bin, run_sink,
    wait_accepted,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const WAIT: Duration = Duration::from_secs(60);

/// The config file the `relaycord replay` process reads: the same sinks as `sinks`.
fn config_file(dir: &Path, bus: &Stack, sinks: &[&SinkConfig]) -> PathBuf {
    let mut toml = format!("[nats]\nurl = \"{}\"\n", bus.nats_url());
    for sink in sinks {
        let relaycord_sinks::SinkKind::Http(http) = &sink.kind else {
            panic!("http sinks only")
        };
        toml += &format!(
            "\n[[sinks]]\nname = \"{}\"\ntype = \"http\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nmax_attempts = {}\npause = {{ after = {} }}\nbackoff = {{ initial = \"{}ms\", max = \"{}ms\" }}\nevents = {:?}\n",
            sink.name,
            http.url,
            sink.max_attempts,
            sink.pause.after,
            sink.backoff.initial.as_millis(),
            sink.backoff.max.as_millis(),
            sink.events,
        );
    }
    let path = dir.join("relaycord.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A replay of sink `hook` from `since`, then `extra`: the arguments, and the directory
/// holding their config file (`sinks`), which must outlive the runs.
fn replay_of_hook(
    bus: &Stack,
    sinks: &[&SinkConfig],
    since: SystemTime,
    extra: &[&str],
) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), bus, sinks);
    let mut args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "replay",
        "--sink",
        "hook",
    ]
    .map(str::to_owned)
    .into();
    args.extend(["--since".to_owned(), rfc3339(since)]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    (dir, args)
}

fn fast(mut sink: SinkConfig, max_attempts: u32) -> SinkConfig {
    sink.max_attempts = max_attempts;
    sink.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
    };
    sink
}

fn rfc3339(time: SystemTime) -> String {
    OffsetDateTime::from(time).format(&Rfc3339).unwrap()
}

/// A time strictly between the events published before and after it.
async fn mark() -> SystemTime {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    now
}

/// Ids the receiver accepted from a replay, in the order accepted.
fn replayed(rx: &TestReceiver) -> Vec<String> {
    rx.log()
        .into_iter()
        .filter(|a| a.replay.is_some())
        .map(|a| a.id)
        .collect()
}

/// How many dead letters sink `hook` has.
async fn letters(bus: &Stack) -> usize {
    dlq::list(&bus.js, "hook").await.unwrap().len()
}

fn ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("msg:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_goes_again_to_one_sink_once_with_its_ids_while_live_traffic_flows() {
    let bus = Stack::builder().start().await;
    let (rx, other_rx) = (
        TestReceiver::start(Duration::ZERO).await,
        TestReceiver::start(Duration::ZERO).await,
    );
    // Two types: several consumer filter subjects on 2.10+, the in-process filter on 2.9.
    let mut hook = fast(http_config("hook", &rx.url), 3);
    hook.events = vec!["MESSAGE_CREATE".into(), "MESSAGE_UPDATE".into()];
    let other = fast(http_config("other", &other_rx.url), 3);
    let live = [run_sink(&bus, &hook), run_sink(&bus, &other)];
    bus.messages(0, 100).await;
    let since = mark().await;
    bus.messages(1000, 300).await;
    for i in 0..50 {
        let data = r#"{"channel_id":"10","user_id":"2"}"#;
        bus.publish(&format!("typing:{i}"), "TYPING_START", "1", data)
            .await;
    }
    let until = mark().await;
    bus.messages(2000, 100).await;
    wait_accepted(&rx, 500).await;
    wait_accepted(&other_rx, 550).await;

    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &bus, &[&hook, &other]);
    let config = config.to_str().unwrap();
    let (since, until) = (rfc3339(since), rfc3339(until));
    let replay = [
        "--config", config, "replay", "--sink", "hook", "--since", &since, "--until", &until,
    ];
    let dry: Vec<&str> = replay.iter().copied().chain(["--dry-run"]).collect();
    let (ok, _, err) = relaycord(&dry).await;
    assert!(
        ok && err.contains("dry run: 300 events would be sent"),
        "{err}"
    );
    assert!(replayed(&rx).is_empty(), "a dry run sent something");

    // Live events published while the replay runs reach both sinks as usual.
    let live_traffic = async {
        for i in 0..10 {
            bus.messages(3000 + i * 20, 20).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((ok, _, err), ()) = tokio::join!(relaycord(&replay), live_traffic);
    assert!(ok && err.contains("sent 300, skipped 0, failed 0"), "{err}");
    assert_eq!(replayed(&rx), ids(1000..1300), "the range, once, in order");
    assert!(
        replayed(&other_rx).is_empty(),
        "another sink got the replay"
    );
    wait_accepted(&rx, 700).await;
    wait_accepted(&other_rx, 750).await;
    let accepted = rx.accepted();
    for id in ids(3000..3200) {
        assert_eq!(accepted.get(&id), Some(&1), "live event {id}");
    }
    let first_id = rx.log().into_iter().find_map(|a| a.replay).unwrap();
    assert!(first_id.starts_with("hook."), "{first_id}");

    // Without --until, under live traffic that stops only once the replay is over: the
    // replay ends at the stream's end as it was when it started (an endless one would
    // hang here). A finished replay kept no checkpoint: this is a new one, with a new id.
    let open_ended = [
        "--config", config, "replay", "--sink", "hook", "--since", &since,
    ];
    let over = std::sync::atomic::AtomicBool::new(false);
    let replay_run = async {
        let out = relaycord(&open_ended).await;
        over.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    };
    let traffic = async {
        let mut base = 5000;
        while !over.load(std::sync::atomic::Ordering::SeqCst) {
            bus.messages(base, 10).await;
            base += 10;
        }
        base - 5000
    };
    let run = async { tokio::join!(replay_run, traffic) };
    let ((ok, _, err), during) = tokio::time::timeout(WAIT, run)
        .await
        .expect("a replay without --until never ended under live traffic");
    assert!(ok, "{err}");
    let second: Vec<_> = rx
        .log()
        .into_iter()
        .filter(|a| a.replay.as_ref().is_some_and(|r| *r != first_id))
        .map(|a| a.id)
        .collect();
    let expected: Vec<String> = [ids(1000..1300), ids(2000..2100), ids(3000..3200)].concat();
    assert_eq!(
        second[..expected.len()],
        expected[..],
        "the second replay: the range, then what came after, in stream order"
    );
    assert!(
        second[expected.len()..]
            .iter()
            .all(|id| id.starts_with("msg:5")),
        "only live traffic of the replay's first moments may follow"
    );
    // Nothing was republished onto the gateway subjects: only the test published.
    let mut stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored, 100 + 300 + 50 + 100 + 200 + during);
    for running in live {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replay_run_again_sends_the_rest_not_everything() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    let hook = fast(http_config("hook", &rx.url), 3);
    let since = mark().await;
    bus.messages(0, 2000).await;
    let (_dir, args) = replay_of_hook(&bus, &[&hook], since, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut first = tokio::process::Command::new(relaycord_bin())
        .args(&args)
        .args(["--rate", "500"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        eventually(WAIT, async || replayed(&rx).len() >= 800).await,
        "the first run sent {}",
        replayed(&rx).len()
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before = replayed(&rx).len();
    assert!(before < 2000, "the first run finished before it was killed");

    let started = std::time::Instant::now();
    let (ok, _, err) = relaycord(&args).await;
    let took = started.elapsed();
    assert!(
        ok && err.contains("continued the replay started at"),
        "{err}"
    );
    let all = replayed(&rx);
    let mut times: HashMap<&str, u32> = HashMap::new();
    for id in &all {
        *times.entry(id.as_str()).or_default() += 1;
    }
    for id in ids(0..2000) {
        assert!(times.contains_key(id.as_str()), "{id} never replayed");
    }
    let again = all.len() - before;
    let resent = all.len() - 2000;
    println!(
        "first run: {before} sent; second: {again} in {:.2} s (process start included), of which {resent} resent",
        took.as_secs_f64()
    );
    assert!(
        resent as u64 <= CHECKPOINT_EVERY,
        "the second run resent {resent} events, more than one checkpoint interval"
    );
    assert!(again < 2000, "the second run started over: {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_delivers_exactly_the_dead_letters_of_the_window() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    let mut hook = fast(http_config("hook", &rx.url), 2);
    // Dead-letter the whole outage instead of pausing the sink (docs/sinks.md).
    hook.pause.after = 0;
    let live = run_sink(&bus, &hook);
    // Before the window: five events the receiver refuses for good (dead-lettered too).
    rx.refuse(ids(0..5));
    bus.messages(0, 50).await;
    wait_accepted(&rx, 45).await;

    let since = mark().await;
    rx.set_down(true).await;
    bus.messages(1000, 150).await;
    assert!(
        eventually(WAIT, async || letters(&bus).await == 155).await,
        "the window's events were not all dead-lettered"
    );
    let until = mark().await;
    rx.set_down(false).await;
    rx.accept_all_again();
    bus.messages(2000, 50).await;
    wait_accepted(&rx, 95).await;

    let until = rfc3339(until);
    let (_dir, args) = replay_of_hook(
        &bus,
        &[&hook],
        since,
        &["--until", &until, "--only", "failed"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = relaycord(&args).await;
    assert!(ok && err.contains("sent 150, skipped 0, failed 0"), "{err}");
    assert_eq!(
        replayed(&rx),
        ids(1000..1150),
        "exactly the window's dead letters"
    );
    let mut left: Vec<String> = dlq::list(&bus.js, "hook")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    left.sort();
    assert_eq!(left, ids(0..5), "the letters outside the window stay");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_removes_the_letters_it_delivers_and_stores_one_per_failure() {
    let bus = Stack::builder().start().await;
    let rx = TestReceiver::start(Duration::ZERO).await;
    let mut hook = fast(http_config("hook", &rx.url), 2);
    hook.pause.after = 0;
    let live = run_sink(&bus, &hook);
    let since = mark().await;
    // The live sink dead-letters msg:0..2 (refused for good, 400).
    rx.refuse(ids(0..3));
    bus.messages(0, 20).await;
    assert!(
        eventually(WAIT, async || letters(&bus).await == 3).await,
        "the refused events were not dead-lettered"
    );
    wait_accepted(&rx, 17).await;
    live.stop().await;

    // Now msg:1 and msg:5 are refused: msg:1 keeps its one letter, msg:5 gets one.
    rx.accept_all_again();
    rx.refuse([ids(1..2), ids(5..6)].concat());
    let (_dir, args) = replay_of_hook(&bus, &[&hook], since, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = relaycord(&args).await;
    assert!(!ok, "a replay with failures exits 1: {err}");
    assert!(err.contains("sent 18, skipped 0, failed 2"), "{err}");
    let mut letters: Vec<(String, String)> = dlq::list(&bus.js, "hook")
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.reason))
        .collect();
    letters.sort();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, "msg:1");
    assert!(!letters[0].1.starts_with("replay:"), "{letters:?}");
    assert_eq!(letters[1].0, "msg:5");
    assert!(letters[1].1.starts_with("replay: "), "{letters:?}");
}
