//! Webhook events (issue 19): Discord's third event source, over HTTP, on the bus.
//!
//! The simulator plays Discord: it signs each event with the application's key, checks
//! the URL with a PING, and retries an event until it gets a 204. A separate client in
//! Python (tests/py/webhook_events_client.py, PyNaCl and the standard library) plays it
//! again without any of the project's code.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use relaycord_sim::{Forgery, RetryPolicy, SimInteraction, SimWebhookEvent, WebhookEvents};
use relaycord_testkit::{Stack, eventually, metric_with, stored_in};

/// Faster than Discord's (1 s doubling for 10 minutes), the same shape.
const RETRIES: RetryPolicy = RetryPolicy {
    first_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    give_up_after: Duration::from_secs(90),
};

const PATIENCE: Duration = Duration::from_secs(60);

/// Webhook event types the receiving sink selects, as a user would.
const TYPES: [&str; 4] = [
    "APPLICATION_AUTHORIZED",
    "APPLICATION_DEAUTHORIZED",
    "ENTITLEMENT_CREATE",
    "ENTITLEMENT_UPDATE",
];

fn webhook_count(stack: &Stack, outcome: &str) -> f64 {
    let outcome = format!("outcome=\"{outcome}\"");
    metric_with(
        &stack.registry,
        "relaycord_webhook_events_total",
        &[&outcome],
    )
}

/// Stored webhook events by id, from the events stream.
async fn stored_webhook_events(stack: &Stack) -> Vec<relaycord_testkit::Stored> {
    stored_in(&stack.js, "DISCORD_GATEWAY")
        .await
        .into_iter()
        .filter(|s| s.subject.starts_with("discord.webhooks."))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pings_get_204_and_forged_stale_or_oversized_requests_are_refused() {
    let stack = Stack::builder().interactions(Vec::new()).start().await;
    let url = stack.webhook_events_url();
    let events = stack.sim.webhook_events();

    // The Developer Portal's check of the URL: PING → 204, a bad signature → 401.
    assert_eq!(events.verify_url(&url).await, (204, 401));
    let ping = stack.post(&url, &events.signed(&events.ping_body())).await;
    assert_eq!(ping, (204, bytes::Bytes::new()), "204 with an empty body");

    let event = events.deauthorized("111178765189277770");
    let as_request = SimInteraction {
        id: String::new(),
        token: String::new(),
        body: event.body.clone(),
    };
    for forgery in Forgery::ALL {
        let request = stack.discord.forged(&as_request, forgery);
        let (status, _) = stack.post(&url, &request).await;
        let expected = if forgery == Forgery::MalformedBody {
            400
        } else {
            401
        };
        assert_eq!(status, expected, "{forgery:?}");
    }
    let max_body = stack.config.interactions.max_body;
    let oversized = format!(r#"{{"type":1,"pad":"{}"}}"#, "x".repeat(max_body));
    let (status, _) = stack.post(&url, &events.signed(&oversized)).await;
    assert_eq!(status, 413, "larger than interactions.max_body");
    for malformed in [
        r#"{"version":1,"type":1}"#,
        r#"{"version":1,"type":7}"#,
        r#"{"version":1,"type":1,"event":{"type":"a.>","timestamp":"t"}}"#,
    ] {
        let (status, _) = stack.post(&url, &events.signed(malformed)).await;
        assert_eq!(status, 400, "{malformed}");
    }

    // Sent to the interactions path by mistake, a webhook event (`"type": 1`) reads as an
    // interaction PING: answered with a PONG, not the 204 Discord needs, and not stored.
    // This is why the two have separate paths.
    let (status, _) = stack.send(&events.signed(&event.body)).await;
    assert_eq!(status, 200, "an interaction PONG");

    assert!(
        stored_webhook_events(&stack).await.is_empty(),
        "nothing refused was stored"
    );
    let rejected = Forgery::ALL.len() + 1 + 3 + 1; // + the portal's probe
    assert_eq!(webhook_count(&stack, "rejected"), rejected as f64);
    assert_eq!(webhook_count(&stack, "pong"), 2.0);
}

/// The whole promise: 500 events, some delivered twice as Discord does after a lost 204,
/// one sent while NATS is down and retried until it is stored; each is stored exactly once
/// and reaches the HTTP sink that selected these types.
#[tokio::test(flavor = "multi_thread")]
async fn every_webhook_event_is_stored_once_and_delivered_through_retries_and_an_outage() {
    let mut stack = Stack::builder()
        .interactions(Vec::new())
        .sinks()
        .config(|config| {
            config.sinks[0].events = TYPES.iter().map(|t| (*t).to_owned()).collect();
        })
        .start()
        .await;
    let url = stack.webhook_events_url();
    let events = stack.sim.webhook_events();
    assert_eq!(events.verify_url(&url).await, (204, 401));

    // NATS down: the event gets 503 (or no answer in 3 s), and Discord's retries carry
    // it over the outage.
    let outage_event = events.authorized("53908232506183680", Some("290926798626357999"));
    stack.nats_mut().stop();
    let delivery = tokio::spawn({
        let (events, url, event) = (events.clone(), url.clone(), outage_event.clone());
        async move { events.deliver(&url, &event, RETRIES).await }
    });
    assert!(
        eventually(PATIENCE, async || webhook_count(&stack, "failed") >= 1.0).await,
        "the event was refused while NATS was down"
    );
    stack.nats_mut().restart().unwrap();
    let delivery = delivery.await.unwrap();
    assert!(delivery.acknowledged(), "{delivery:?}");
    assert_ne!(delivery.statuses[0], 204, "{delivery:?}");
    println!(
        "the event sent during the outage: attempts {:?}",
        delivery.statuses
    );

    let mut sent = vec![outage_event];
    sent.extend((1..500).map(|i| build(&events, i)));
    let resent = send_all(&events, &url, &sent).await;

    let stored = stored_webhook_events(&stack).await;
    assert_each_stored_once(&stored, &sent);
    assert_eq!(webhook_count(&stack, "stored"), 500.0);
    assert!(webhook_count(&stack, "duplicate") >= resent as f64);

    let ids: HashSet<String> = stored.iter().map(|s| s.msg_id.clone()).collect();
    let delivered = eventually(PATIENCE, async || {
        let seen = stack.receiver.seen();
        ids.iter().all(|id| seen.contains_key(id))
    })
    .await;
    let seen = stack.receiver.seen();
    let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    if !delivered {
        let diagnosis = stack.sink_diagnosis("receiver").await;
        panic!("{missing} of 500 never reached the HTTP sink\n{diagnosis}");
    }
    let duplicates: u32 = ids.iter().map(|id| seen[id] - 1).sum();
    println!(
        "500 webhook events: stored 500, delivered 500, {resent} sent twice, {duplicates} delivered twice"
    );
    assert_eq!(duplicates, 0, "the sink's dedupe holds");
}

/// Event `i` of the 500: installs to servers and to accounts, removals, purchases.
fn build(events: &WebhookEvents, i: usize) -> SimWebhookEvent {
    let user = (111_178_765_189_277_770 + i as u64).to_string();
    let guild = (290_926_798_626_357_000 + (i % 7) as u64).to_string();
    match i % 4 {
        0 => events.authorized(&user, Some(&guild)),
        1 => events.authorized(&user, None),
        2 => events.deauthorized(&user),
        _ => {
            let change = if i % 8 == 3 { "CREATE" } else { "UPDATE" };
            let entitlement = (1_234_505_980_407_808_000 + i as u64).to_string();
            events.entitlement(change, &entitlement, &user, Some(&guild))
        }
    }
}

/// Delivers every event, 16 at a time, every tenth one twice (Discord's retry after a
/// 204 it did not see); returns how many were sent twice.
async fn send_all(events: &WebhookEvents, url: &str, sent: &[SimWebhookEvent]) -> usize {
    use futures::StreamExt;
    let twice = |i: usize| i % 10 == 5;
    let deliveries = futures::stream::iter(sent.iter().enumerate())
        .map(|(i, event)| async move {
            let first = events.deliver(url, event, RETRIES).await;
            let second = twice(i).then_some(());
            if second.is_some() {
                assert!(events.deliver(url, event, RETRIES).await.acknowledged());
            }
            first
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(deliveries.iter().all(|d| d.acknowledged()));
    (0..sent.len()).filter(|&i| twice(i)).count()
}

/// Each sent event is on the stream exactly once, under its type's subject, with
/// Discord's timestamp and bytes, and no two stored events share an id.
fn assert_each_stored_once(stored: &[relaycord_testkit::Stored], sent: &[SimWebhookEvent]) {
    let by_timestamp: HashMap<&str, &SimWebhookEvent> =
        sent.iter().map(|e| (e.timestamp.as_str(), e)).collect();
    assert_eq!(
        by_timestamp.len(),
        sent.len(),
        "the simulator's timestamps are unique"
    );
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in stored {
        let at = s.envelope["occurred_at"].as_str().expect("occurred_at");
        let event = by_timestamp
            .get(at)
            .unwrap_or_else(|| panic!("not sent: {s:?}"));
        *counts.entry(at).or_default() += 1;
        let guild = event.guild_id.as_deref().unwrap_or("none");
        assert_eq!(
            s.subject,
            format!("discord.webhooks.{}.{guild}", event.event_type)
        );
        assert_eq!(s.envelope["source"], "webhook");
        assert_eq!(s.envelope["id"], s.msg_id.as_str());
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        let data: serde_json::Value = serde_json::from_str(&s.raw_data).unwrap();
        assert_eq!(data, body["event"]["data"], "Discord's data, unchanged");
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(counts.len(), sent.len(), "every event stored");
    let ids: HashSet<&str> = stored.iter().map(|s| s.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len());
}

/// The same scenario from a client in Python that signs with PyNaCl and speaks HTTP with
/// the standard library: its statuses are checked by the script, what was stored here.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_client_signing_with_pynacl_gets_the_same_results() {
    let seed = hex_seed();
    let public_key = python(&["public-key", &seed]).await;
    let stack = Stack::builder()
        .interactions(Vec::new())
        .sinks()
        .config(move |config| config.discord.public_key = public_key.trim().to_owned())
        .start()
        .await;
    let url = stack.webhook_events_url();
    let report = python(&["run", &url, &seed, "60"]).await;
    let report: serde_json::Value = serde_json::from_str(&report).expect("the client's report");
    println!(
        "Python client: sent {} events, {} requests refused as it expected",
        report["events"].as_array().map_or(0, Vec::len),
        report["refused"]
    );
    let sent: Vec<SimWebhookEvent> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| SimWebhookEvent {
            event_type: e["type"].as_str().unwrap().to_owned(),
            timestamp: e["timestamp"].as_str().unwrap().to_owned(),
            guild_id: e["guild_id"].as_str().map(str::to_owned),
            body: e["body"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(sent.len(), 60);
    let stored = stored_webhook_events(&stack).await;
    assert_each_stored_once(&stored, &sent);
    let ids: HashSet<String> = stored.iter().map(|s| s.msg_id.clone()).collect();
    assert!(
        eventually(PATIENCE, async || {
            let seen = stack.receiver.seen();
            ids.iter().all(|id| seen.contains_key(id))
        })
        .await,
        "every event the Python client sent reached the HTTP sink"
    );
}

fn hex_seed() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs the client off the runtime's threads (it talks to the endpoint they serve).
async fn python(args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/py/webhook_events_client.py"
    );
    let mut command = Command::new("python3");
    command.arg(script).args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("python3 must be installed (scripts/setup.sh --tests)");
    assert!(
        output.status.success(),
        "the Python client failed (pip install pynacl, or scripts/setup.sh --tests):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Discord retries for up to 10 minutes, longer than JetStream remembers ids by default
/// (5 minutes): a retry that comes after the stream forgot the event's id is still not
/// stored again, because the ids of stored events are kept in a KV bucket for 15 minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_the_stream_forgot_the_id_is_not_stored_again() {
    let stack = Stack::builder()
        .interactions(Vec::new())
        .config(|config| config.nats.duplicate_window = Duration::from_secs(10))
        .start()
        .await;
    let url = stack.webhook_events_url();
    let events = stack.sim.webhook_events();
    let event = events.authorized("53908232506183680", None);
    assert!(events.deliver(&url, &event, RETRIES).await.acknowledged());

    // A probe id published with the event tells when the stream has forgotten it: once
    // JetStream takes the probe again, the event's id is gone from its window too.
    let probe = || async {
        let message = relaycord_bus::OutgoingMessage::envelope_bytes(
            "discord.webhooks.PROBE.none",
            bytes::Bytes::from_static(
                br#"{"id":"probe","source":"webhook","type":"PROBE","shard":null,"seq":null,"guild_id":null,"received_at":"","data":null}"#,
            ),
            Some("probe"),
            None,
        );
        message.publish(&stack.js).await.unwrap()
    };
    assert!(!probe().await.duplicate);
    assert!(
        eventually(Duration::from_secs(60), async || !probe().await.duplicate).await,
        "the stream never forgot the probe"
    );

    let retry = events.deliver(&url, &event, RETRIES).await;
    assert!(retry.acknowledged(), "{retry:?}");
    let stored: Vec<_> = stored_webhook_events(&stack)
        .await
        .into_iter()
        .filter(|s| !s.subject.contains(".PROBE."))
        .collect();
    assert_eq!(stored.len(), 1, "the retry was stored again: {stored:?}");
    assert_eq!(webhook_count(&stack, "duplicate"), 1.0);
}

/// docs/webhook-events.md's example, end to end: a user adds the app to a server, and a
/// Discord sink that selected `APPLICATION_AUTHORIZED` posts a welcome into a channel
/// (the simulator's REST side records the message as Discord would receive it).
#[tokio::test(flavor = "multi_thread")]
async fn a_user_installs_the_app_and_a_channel_says_welcome() {
    let stack = Stack::builder().interactions(Vec::new()).start().await;
    let sim = &stack.sim;
    let mut welcome = relaycord_sinks::SinkConfig::new(
        "welcome",
        relaycord_sinks::SinkKind::Discord(relaycord_sinks::discord::DiscordSinkConfig {
            templates: [(
                "APPLICATION_AUTHORIZED".to_owned(),
                relaycord_sinks::discord::MessageTemplate {
                    content: Some("Welcome, {{ data.user.username }}! Thanks for adding me to {{ data.guild.name }}.".into()),
                    embeds: Vec::new(),
                },
            )]
            .into(),
            ..relaycord_sinks::discord::DiscordSinkConfig::channel(
                "290926798999357250",
                &sim.config().token,
                sim.api_base(),
            )
        }),
    );
    welcome.events = vec!["APPLICATION_AUTHORIZED".into()];
    let sink = relaycord_testkit::run_sink(&stack, &welcome);

    let events = sim.webhook_events();
    let install = events.authorized("53908232506183680", Some("290926798626357999"));
    let removal = events.deauthorized("53908232506183680");
    for event in [&install, &removal] {
        let delivery = events
            .deliver(&stack.webhook_events_url(), event, RETRIES)
            .await;
        assert!(delivery.acknowledged(), "{delivery:?}");
    }
    let rest = sim.discord_rest();
    assert!(
        eventually(PATIENCE, async || !rest.posted().is_empty()).await,
        "no message was posted"
    );
    stack.wait_settled("welcome").await;
    sink.stop().await;
    let posted = rest.posted();
    assert_eq!(posted.len(), 1, "only the install was selected: {posted:?}");
    assert_eq!(posted[0].route, "channel:290926798999357250");
    assert_eq!(
        posted[0].body["content"],
        "Welcome, user3680! Thanks for adding me to Simulated Guild."
    );
}
