//! The shared sink driver against a real nats-server: graceful shutdown, sink-side
//! dedupe, filters and the consumer gauges. Sinks here are in-process recorders, so the
//! tests see exactly what the driver handed over.

use std::collections::HashSet;
use std::time::Duration;

use relaycord_testkit::{RecordingSink, Stack, eventually, run_driver, test_config};

const WAIT: Duration = Duration::from_secs(30);

/// Stopping a worker finishes what it is delivering and starts nothing new; what its
/// last pull still brings is released at once (nak), not left to the ack timeout: the
/// next worker delivers the rest, each exactly once, long before that timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_and_releases_the_rest() {
    let bus = Stack::builder().start().await;
    let mut all = bus.messages(0, 2).await;
    let config = relaycord_sinks::SinkConfig {
        // Far beyond WAIT: a message held unacked by the stopped worker would fail the test.
        ack_wait: Duration::from_secs(120),
        ..test_config("graceful")
    };
    let held = RecordingSink::closed();
    let first = run_driver(&bus, &config, held.clone());
    assert!(eventually(WAIT, async || held.waiting() == 2).await);
    // Two slots are free, so a pull for two more is outstanding when the stop comes.
    first.shutdown.cancel();
    all.extend(bus.messages(100, 30).await);
    held.release_all();
    let registry = first.registry.clone();
    first.task.await.unwrap().unwrap();
    assert_eq!(held.delivered().len(), 2, "in-flight finished, nothing new");
    let released = relaycord_testkit::outcome_count(&registry, "released");
    assert!(released <= 2.0, "{released}");

    let open = RecordingSink::open();
    let second = run_driver(&bus, &config, open.clone());
    assert!(
        eventually(WAIT, async || open.delivered().len() >= 30).await,
        "released messages came back before the ack timeout: {} of 30",
        open.delivered().len()
    );
    second.stop().await;
    let mut seen = held.delivered();
    seen.extend(open.delivered());
    assert_eq!(seen.len(), all.len(), "each event exactly once");
    assert_eq!(
        seen.into_iter().collect::<HashSet<_>>(),
        all.into_iter().collect()
    );
}

/// A redelivery of events already delivered (here: the consumer's state lost, as after
/// lost acks) is skipped by sink-side dedupe; with `dedupe = false` it reaches the sink
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_skips_redeliveries_of_delivered_events() {
    let bus = Stack::builder().start().await;
    let ids = bus.messages(0, 20).await;
    let config = test_config("dedupe");
    let sink = RecordingSink::open();
    let run = run_driver(&bus, &config, sink.clone());
    assert!(eventually(WAIT, async || sink.delivered().len() == 20).await);
    run.stop().await;

    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let forget = || async {
        stream
            .delete_consumer("relaycord-dedupe")
            .await
            .expect("delete the consumer: every ack forgotten");
    };
    forget().await;
    let again = RecordingSink::open();
    let run = run_driver(&bus, &config, again.clone());
    assert!(eventually(WAIT, async || run.outcome("duplicate") == 20.0).await);
    run.stop().await;
    assert!(again.delivered().is_empty(), "{:?}", again.delivered());

    forget().await;
    let without = test_config("dedupe");
    let without = relaycord_sinks::SinkConfig {
        dedupe: false,
        ..without
    };
    let repeat = RecordingSink::open();
    let run = run_driver(&bus, &without, repeat.clone());
    assert!(eventually(WAIT, async || repeat.delivered().len() == 20).await);
    run.stop().await;
    assert_eq!(repeat.delivered().len(), ids.len());
}

/// Event types, guilds and channels each narrow what a sink receives; several types use
/// filter_subjects on 2.10+ and the in-process filter on 2.9, with the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_on_types_guilds_and_channels() {
    let bus = Stack::builder().start().await;
    let mut expected = HashSet::new();
    let mut n = 0;
    for ty in ["MESSAGE_CREATE", "MESSAGE_REACTION_ADD", "TYPING_START"] {
        for guild in ["1", "2"] {
            for channel in ["10", "11"] {
                n += 1;
                let data = format!(r#"{{"channel_id":"{channel}","guild_id":"{guild}","n":{n}}}"#);
                let id = bus.publish(&format!("h:{ty}:{n}"), ty, guild, &data).await;
                if ty != "TYPING_START" && guild == "1" && channel == "10" {
                    expected.insert(id);
                }
            }
        }
    }
    bus.publish("h:GUILD_CREATE:x", "GUILD_CREATE", "1", r#"{"id":"1"}"#)
        .await;
    let config = relaycord_sinks::SinkConfig {
        events: vec!["MESSAGE_CREATE".into(), "MESSAGE_REACTION_ADD".into()],
        guilds: vec!["1".into()],
        channels: vec!["10".into()],
        ..test_config("filtered")
    };
    let sink = RecordingSink::open();
    let run = run_driver(&bus, &config, sink.clone());
    assert!(eventually(WAIT, async || sink.delivered().len() >= expected.len()).await);
    bus.wait_settled("filtered").await;
    let skipped = run.outcome("skipped");
    run.stop().await;
    assert_eq!(
        sink.delivered().into_iter().collect::<HashSet<_>>(),
        expected
    );
    assert_eq!(sink.delivered().len(), 2);

    // Which path ran depends on the server (run the suite with NATS_SERVER_BIN set to
    // each): both are checked, neither is skipped.
    let version = bus.js.client().server_info().version;
    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let consumer = stream.consumer_info("relaycord-filtered").await.unwrap();
    let mut filters = consumer.config.filter_subjects.clone();
    filters.sort();
    if filters_several_subjects(&version) {
        assert_eq!(
            filters,
            [
                "discord.gateway.MESSAGE_CREATE.1",
                "discord.gateway.MESSAGE_REACTION_ADD.1"
            ],
            "nats-server {version}: filter_subjects"
        );
        // Only the other channel's two events reach the in-process filter.
        assert_eq!(skipped, 2.0, "nats-server {version}");
    } else {
        assert!(filters.is_empty(), "nats-server {version}: {filters:?}");
        assert_eq!(consumer.config.filter_subject, "", "nats-server {version}");
        // Everything but the two delivered events is read and skipped in process.
        assert_eq!(skipped, (n + 1 - 2) as f64, "nats-server {version}");
    }
}

/// nats-server 2.10 brought consumer `filter_subjects`.
fn filters_several_subjects(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap()) >= (2, 10)
}

/// The pending and in-flight gauges follow the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_gauges_report_pending_and_in_flight() {
    let bus = Stack::builder().start().await;
    bus.messages(0, 10).await;
    let config = relaycord_sinks::SinkConfig {
        concurrency: 2,
        ..test_config("gauges")
    };
    let sink = RecordingSink::closed();
    let run = run_driver(&bus, &config, sink.clone());
    assert!(
        eventually(WAIT, async || run.metric("relaycord_sink_consumer_pending")
            == 8.0
            && run.metric("relaycord_sink_consumer_ack_pending") == 2.0)
        .await,
        "pending {} ack_pending {}",
        run.metric("relaycord_sink_consumer_pending"),
        run.metric("relaycord_sink_consumer_ack_pending")
    );
    sink.release_all();
    assert!(eventually(WAIT, async || sink.delivered().len() == 10).await);
    assert!(
        eventually(WAIT, async || run.metric("relaycord_sink_consumer_pending")
            == 0.0
            && run.metric("relaycord_sink_consumer_ack_pending") == 0.0)
        .await
    );
    run.stop().await;
}

/// Sink-side dedupe never drops a genuine repeat: the same id stored again after the
/// stream's duplicate window (a reaction added, removed and added again) is a new copy
/// of the event and is delivered again, while redeliveries of one copy stay deduped.
/// The wait is real time: it must outlast the nats-server's own 10 s window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_stored_again_after_the_duplicate_window_is_delivered_again() {
    const WINDOW: Duration = Duration::from_secs(10);
    let bus = Stack::builder()
        .config(|c| c.nats.duplicate_window = WINDOW)
        .start()
        .await;
    let id = "react:add:5:6:%F0%9F%94%A5";
    let data = r#"{"user_id":"6","message_id":"5","guild_id":"1","emoji":{"name":"🔥"}}"#;
    bus.publish(id, "MESSAGE_REACTION_ADD", "1", data).await;
    // Inside the window the bus itself drops the repeat.
    bus.publish(id, "MESSAGE_REACTION_ADD", "1", data).await;
    let sink = RecordingSink::open();
    let run = run_driver(&bus, &test_config("repeats"), sink.clone());
    assert!(eventually(WAIT, async || sink.delivered().len() == 1).await);
    tokio::time::sleep(WINDOW + Duration::from_secs(2)).await;
    bus.publish(id, "MESSAGE_REACTION_ADD", "1", data).await;
    assert!(
        eventually(WAIT, async || sink.delivered().len() == 2).await,
        "the reaction added again was not delivered: {:?}",
        sink.delivered()
    );
    run.stop().await;
    assert_eq!(sink.delivered(), vec![id.to_owned(), id.to_owned()]);
}

/// `exclude` drops event types, authors and bots (users with `bot: true`, webhooks)
/// whatever the include filters let through; the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusions_drop_types_authors_and_bots() {
    let bus = Stack::builder().start().await;
    let mut expected = HashSet::new();
    for (n, (ty, author)) in [
        ("MESSAGE_CREATE", r#"{"id":"1"}"#),
        ("MESSAGE_CREATE", r#"{"id":"2"}"#),
        ("MESSAGE_CREATE", r#"{"id":"3","bot":true}"#),
        ("TYPING_START", r#"{"id":"1"}"#),
    ]
    .into_iter()
    .enumerate()
    {
        let data = format!(r#"{{"channel_id":"10","guild_id":"1","author":{author}}}"#);
        let id = bus.publish(&format!("h:{ty}:{n}"), ty, "1", &data).await;
        if n == 0 {
            expected.insert(id);
        }
    }
    let hook = r#"{"channel_id":"10","webhook_id":"4","author":{"id":"4"}}"#;
    bus.publish("h:MESSAGE_CREATE:hook", "MESSAGE_CREATE", "1", hook)
        .await;
    let config = relaycord_sinks::SinkConfig {
        exclude: relaycord_sinks::filter::Exclude {
            events: vec!["TYPING_START".into()],
            authors: vec!["2".into()],
            bots: true,
        },
        ..test_config("excluding")
    };
    let sink = RecordingSink::open();
    let run = run_driver(&bus, &config, sink.clone());
    bus.wait_settled("excluding").await;
    assert_eq!(run.outcome("skipped"), 4.0);
    run.stop().await;
    assert_eq!(
        sink.delivered().into_iter().collect::<HashSet<_>>(),
        expected
    );
}

/// A sink that panics on its first attempt, then records like [`RecordingSink::open`].
#[derive(Clone)]
struct PanicsOnce {
    panicked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    then: RecordingSink,
}

impl relaycord_sinks::Sink for PanicsOnce {
    async fn deliver(&self, event: &relaycord_sinks::Event<'_>) -> relaycord_sinks::Outcome {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("the test sink panics once");
        }
        relaycord_sinks::Sink::deliver(&self.then, event).await
    }
}

/// A panicking sink is logged and counted (outcome `panicked`), and its message is nak'd
/// at once: it is delivered again long before `ack_wait`, not lost in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_panic_is_counted_and_its_event_redelivered_at_once() {
    let bus = Stack::builder().start().await;
    let ids = bus.messages(0, 1).await;
    let config = relaycord_sinks::SinkConfig {
        // Far beyond WAIT: only an immediate nak gets the event delivered in time.
        ack_wait: Duration::from_secs(120),
        ..test_config("panics")
    };
    let sink = PanicsOnce {
        panicked: Default::default(),
        then: RecordingSink::open(),
    };
    let run = run_driver(&bus, &config, sink.clone());
    assert!(
        eventually(WAIT, async || sink.then.delivered().len() == 1).await,
        "the event came back after the panic"
    );
    // The redelivery's "delivered" is counted after the recording sink saw it.
    assert!(
        eventually(WAIT, async || run.outcome("delivered") == 1.0).await,
        "delivered: {}",
        run.outcome("delivered")
    );
    assert_eq!(run.outcome("panicked"), 1.0);
    run.stop().await;
    assert_eq!(sink.then.delivered(), ids);
}

/// A sink that asks for a retry every time and counts its attempts.
#[derive(Clone, Default)]
struct AlwaysRetry {
    attempts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl relaycord_sinks::Sink for AlwaysRetry {
    async fn deliver(&self, _: &relaycord_sinks::Event<'_>) -> relaycord_sinks::Outcome {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        relaycord_sinks::Outcome::Retry {
            reason: "down".to_owned(),
            status: Some(503),
            after: None,
        }
    }
}

/// An event sent back untried (held by a paused sink, released by a stopping worker)
/// ten times, as a flapping receiver or a series of restarts does, more often than
/// `max_attempts` (3) and than the consumer's old `max_deliver` (8): each hold is
/// written down, so it still gets its three real attempts, and the dead letter says
/// so, instead of being dead-lettered untried as "the worker stopped".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_keep_their_attempts() {
    use futures::StreamExt;
    let bus = Stack::builder().start().await;
    let config = test_config("holds");
    // The driver creates its consumer and bucket; nothing is published yet.
    let run = run_driver(&bus, &config, RecordingSink::open());
    bus.wait_settled("holds").await;
    run.stop().await;
    let ids = bus.messages(0, 1).await;

    let stream = bus.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("relaycord-holds").await.unwrap();
    let holds = relaycord_sinks::holds::Holds::open(&bus.js, "holds", Duration::ZERO, 1)
        .await
        .unwrap();
    for held in 0..10 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let message = batch
            .next()
            .await
            .expect("the event comes back after every hold")
            .unwrap();
        let info = message.info().unwrap();
        assert_eq!(info.delivered, i64::from(held) + 1);
        // What a worker does when it gives an event back untried.
        holds.add(info.stream_sequence, held).await;
        message
            .ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await
            .unwrap();
    }

    let sink = AlwaysRetry::default();
    let run = run_driver(&bus, &config, sink.clone());
    assert!(
        eventually(WAIT, async || run.outcome("dead_lettered") == 1.0).await,
        "dead-lettered in the end"
    );
    run.stop().await;
    assert_eq!(
        sink.attempts.load(std::sync::atomic::Ordering::SeqCst),
        config.max_attempts,
        "every attempt made, none spent by the holds"
    );
    let letters = relaycord_sinks::dlq::list(&bus.js, "holds").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, ids[0]);
    assert_eq!(letters[0].attempts, config.max_attempts);
    assert!(
        letters[0].reason.starts_with("attempts exhausted: down"),
        "{}",
        letters[0].reason
    );
}
