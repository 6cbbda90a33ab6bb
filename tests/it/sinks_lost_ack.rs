//! Sink-side dedupe against real lost acks: a `relaycord sink` process reaches NATS
//! through a proxy that drops every JetStream ack it sends, so each event it delivers
//! (receiver answered 2xx, id recorded in the dedupe KV) stays unacked; then it is
//! killed with SIGKILL. The next worker gets every event again. With dedupe on the
//! receiver still sees each id once; with dedupe off it sees each one at least twice,
//! which shows the redelivery really happened.
//!
//! Dropping acks (rather than racing a kill between the KV write and the ack) is what
//! makes this deterministic: every delivery of the first worker is a lost-ack case.
//! The same proxy loses the term after a dead letter is stored, as a crash there would.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relaycord_sinks::SinkConfig;
use relaycord_sinks::dedupe::Dedupe;
use relaycord_sinks::dlq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use relaycord_testkit::{
    RecordingSink, RefusingSink, SECRET, Stack, TestReceiver, eventually, run_driver_on,
    spawn_sink, test_config, wait_accepted,
};

const WAIT: Duration = Duration::from_secs(60);
const EVENTS: u64 = 50;

/// A loopback TCP proxy to nats-server that forwards everything except the client's
/// publishes to `$JS.ACK.*` (acks, naks, in-progress), which it counts and drops.
struct AckDroppingProxy {
    url: String,
    dropped: Arc<AtomicU64>,
}

impl AckDroppingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, Arc::clone(&counter)));
            }
        });
        Self { url, dropped }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

async fn pipe(client: TcpStream, server: TcpStream, dropped: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = tokio::io::copy(&mut server_read, &mut client_write);
    let up = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some((len, ack)) = next_frame(&buf) {
                if ack {
                    dropped.fetch_add(1, Ordering::SeqCst);
                } else {
                    server_write.write_all(&buf[..len]).await?;
                }
                buf.drain(..len);
            }
            let n = client_read.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    // Either side closing (the sink killed) ends the connection.
    tokio::select! { _ = down => {}, _ = up => {} }
}

/// The length of the first complete client-protocol frame in `buf`, and whether it is a
/// JetStream ack. `PUB subj [reply] size` and `HPUB subj [reply] hdr total` carry a
/// payload of their last argument's size plus CRLF; other operations are one line.
fn next_frame(buf: &[u8]) -> Option<(usize, bool)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut words = line.split_ascii_whitespace();
    let op = words.next().unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    let mut len = line_end + 2;
    let mut ack = false;
    if op == "PUB" || op == "HPUB" {
        let size: usize = args.last()?.parse().ok()?;
        len += size + 2;
        ack = args.first().is_some_and(|s| s.starts_with("$JS.ACK."));
    }
    (buf.len() >= len).then_some((len, ack))
}

fn sink_toml(nats_url: &str, name: &str, url: &str, dedupe: bool) -> String {
    format!(
        r#"[nats]
url = "{nats_url}"

[[sinks]]
name = "{name}"
type = "http"
url = "{url}"
secret = "{SECRET}"
dedupe = {dedupe}
concurrency = 8
max_attempts = 100
ack_wait = "2s"
backoff = {{ initial = "50ms", max = "500ms" }}
"#
    )
}

/// Delivers every event through a worker whose acks are all lost, kills it with SIGKILL,
/// lets a second (normal) worker take the redeliveries; returns what the receiver saw.
async fn lost_acks_then_kill_9(name: &str, dedupe: bool) -> HashMap<String, u32> {
    let bus = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start(Duration::ZERO).await;
    let ids = bus.messages(0, EVENTS).await;
    let proxy = AckDroppingProxy::start(bus.nats().addr()).await;

    let write = |file: &str, nats_url: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, sink_toml(nats_url, name, &rx.url, dedupe)).unwrap();
        path
    };
    let lossy = write("lossy.toml", &proxy.url);
    let direct = write("direct.toml", &bus.nats_url());

    let mut first = spawn_sink(&lossy, dir.path(), "lossy");
    wait_accepted(&rx, ids.len()).await;
    if dedupe {
        // Every copy recorded: from here on, a kill is exactly "after the KV write,
        // before the ack reached the server". The stream was empty and each publish
        // awaited its ack, so the i-th id is at sequence i + 1.
        let dedupe = Dedupe::existing(&bus.js, name).await.expect("the bucket");
        let recorded = || async {
            let mut n = 0;
            for (i, id) in ids.iter().enumerate() {
                n += usize::from(dedupe.delivered_copy(id, i as u64 + 1).await);
            }
            n
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while recorded().await < ids.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "copies never recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        eventually(WAIT, async || proxy.dropped() >= EVENTS).await,
        "acks dropped: {}",
        proxy.dropped()
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let consumer = format!("relaycord-{name}");
    let acked = stream.consumer_info(&consumer).await.unwrap().ack_floor;
    assert_eq!(acked.stream_sequence, 0, "no ack reached the server");

    let _second = spawn_sink(&direct, dir.path(), "direct");
    bus.wait_settled(name).await;
    let info = stream.consumer_info(&consumer).await.unwrap();
    assert!(
        info.delivered.consumer_sequence >= 2 * EVENTS,
        "every event was redelivered: {} deliveries",
        info.delivered.consumer_sequence
    );
    let seen = rx.accepted();
    let lost: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_absorbs_redeliveries_after_lost_acks_and_kill_9() {
    let seen = lost_acks_then_kill_9("lostack", true).await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

/// The control: the same run without dedupe repeats every event, so the test above
/// would fail if dedupe did nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dedupe_lost_acks_repeat_every_event() {
    let seen = lost_acks_then_kill_9("lostack-off", false).await;
    let once: Vec<_> = seen.iter().filter(|(_, n)| **n < 2).collect();
    assert!(once.is_empty(), "not repeated: {once:?}");
}

/// A worker whose terms are lost (as if it died between storing a dead letter and
/// terminating the message) dead-letters each redelivery again: the letter's
/// `Nats-Msg-Id` makes the DLQ keep one per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_term_does_not_store_a_dead_letter_twice() {
    const N: usize = 10;
    let bus = Stack::builder().start().await;
    bus.messages(0, N as u64).await;
    let proxy = AckDroppingProxy::start(bus.nats().addr()).await;
    let js = async_nats::jetstream::new(async_nats::connect(&proxy.url).await.unwrap());
    let config = SinkConfig {
        max_attempts: 1,
        ack_wait: Duration::from_secs(1),
        ..test_config("lostterm")
    };
    let run = run_driver_on(js, &config, RefusingSink);
    // Every event has a letter, and at least N more dead-letterings happened (the
    // redeliveries): without the letter id, the DLQ would hold them all.
    let distinct = || async {
        let letters = dlq::list(&bus.js, "lostterm").await.unwrap();
        letters
            .iter()
            .map(|l| l.id.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while distinct().await < N || run.outcome("dead_lettered") < 2.0 * N as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered {} times, {} terms dropped",
            run.outcome("dead_lettered"),
            proxy.dropped()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.stop().await;
    let letters = dlq::list(&bus.js, "lostterm").await.unwrap();
    assert_eq!(letters.len(), N, "one dead letter per event");
}

/// An event delivered on its last attempt whose ack was lost is a duplicate on the
/// redelivery, not a dead letter: dedupe is checked before the attempts are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_event_is_not_dead_lettered_after_a_lost_ack() {
    const N: usize = 10;
    let bus = Stack::builder().start().await;
    bus.messages(0, N as u64).await;
    let proxy = AckDroppingProxy::start(bus.nats().addr()).await;
    let js = async_nats::jetstream::new(async_nats::connect(&proxy.url).await.unwrap());
    let config = SinkConfig {
        max_attempts: 1,
        ack_wait: Duration::from_secs(1),
        ..test_config("lastack")
    };
    let sink = RecordingSink::open();
    let run = run_driver_on(js, &config, sink.clone());
    // Every event redelivered once after its last (only) attempt, and handled.
    let handled = || run.outcome("duplicate") + run.outcome("dead_lettered");
    assert!(
        eventually(WAIT, async || handled() >= N as f64).await,
        "{} redeliveries handled",
        handled()
    );
    run.stop().await;
    assert_eq!(sink.delivered().len(), N);
    let letters: Vec<String> = dlq::list(&bus.js, "lastack")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert!(
        letters.is_empty(),
        "delivered, then dead-lettered: {letters:?}"
    );
}

#[test]
fn frames_are_split_and_acks_recognised() {
    let wire = b"PING\r\nPUB $JS.ACK.S.C.1.2.3.4.5 4\r\n+ACK\r\nHPUB $KV.b.k _INBOX.x 12 14\r\nNATS/1.0\r\n\r\nab\r\nPUB a 10\r\n0123";
    let (len, ack) = next_frame(wire).unwrap();
    assert_eq!((&wire[..len], ack), (&b"PING\r\n"[..], false));
    let rest = &wire[len..];
    let (len, ack) = next_frame(rest).unwrap();
    assert!(ack && rest[..len].ends_with(b"+ACK\r\n"));
    let rest = &rest[len..];
    let (len, ack) = next_frame(rest).unwrap();
    assert!(!ack && rest[..len].ends_with(b"ab\r\n"));
    assert_eq!(next_frame(&rest[len..]), None, "incomplete payload");
}
