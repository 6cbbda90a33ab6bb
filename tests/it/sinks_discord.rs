//! The discord sink against the simulator's REST side: Discord's rate-limit headers,
//! 429s, message limits and mention rules, recorded as received.

use std::time::Duration;

use relaycord_sim::{DiscordRest, RateLimitScope, RestLimits, SimConfig, Simulator};
use relaycord_sinks::discord::DiscordSinkConfig;
use relaycord_sinks::discord::templates::TRUNCATED;
use relaycord_sinks::retry::Backoff;
use relaycord_sinks::{SinkConfig, SinkKind, dlq};
use tokio::net::TcpListener;

use relaycord_testkit::{Stack, eventually, metric_with, run_sink};

fn discord_sink(name: &str, config: DiscordSinkConfig) -> SinkConfig {
    SinkConfig {
        concurrency: 16,
        max_attempts: 20,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        },
        ..SinkConfig::new(name, SinkKind::Discord(config))
    }
}

/// MESSAGE_CREATEs in `channels` (round robin) whose texts try to ping everyone, a
/// user and a role, and one over Discord's 2000 characters.
async fn hostile_messages(bus: &Stack, n: u64, channels: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let channel = channels[i as usize % channels.len()];
        let content = match i % 4 {
            0 => "hello @everyone and @here".to_owned(),
            1 => "ping <@80351110224678912> and <@!80351110224678912>".to_owned(),
            2 => "role <@&41771983423143936>".to_owned(),
            _ => "x".repeat(3000),
        };
        let data = serde_json::json!({
            "id": (1000 + i).to_string(),
            "channel_id": channel,
            "guild_id": "1",
            "content": content,
            "author": {"id": "53908099506183680", "username": "Mason"},
        });
        ids.push(
            bus.publish(
                &format!("msg:{}", 1000 + i),
                "MESSAGE_CREATE",
                "1",
                &data.to_string(),
            )
            .await,
        );
    }
    ids
}

fn assert_safe_and_within_limits(rest: &DiscordRest) {
    for posted in rest.posted() {
        assert_eq!(posted.status, 200, "{posted:?}");
        assert!(!posted.would_mention, "would ping: {:?}", posted.body);
        assert_eq!(
            posted.body["allowed_mentions"],
            serde_json::json!({"parse": []})
        );
        let content = posted.body["content"].as_str().unwrap();
        assert!(content.chars().count() <= 2000);
        if content.contains("xxxxxxxxxx") {
            assert!(content.ends_with(TRUNCATED), "cut visibly");
        }
    }
}

/// Bot mode through the simulator: each event posted once into its own channel,
/// with a nonce, within the per-channel limits (5 per second here) read from the
/// X-RateLimit headers, so (almost) no 429; nothing pings anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_messages_respect_route_limits_and_never_mention() {
    let sim = Simulator::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig::default(),
    )
    .await
    .unwrap();
    let rest = sim.discord_rest();
    rest.set_limits(RestLimits {
        channel: (5, Duration::from_secs(1)),
        ..RestLimits::default()
    });
    let bus = Stack::builder().start().await;
    let ids = hostile_messages(&bus, 40, &["290926798999357250", "290926798999357251"]).await;
    let config = DiscordSinkConfig::channel("{channel_id}", &sim.config().token, sim.api_base());
    let sink = run_sink(&bus, &discord_sink("to-channels", config));
    bus.wait_settled("to-channels").await;
    sink.stop().await;

    let counts = rest.counts();
    println!("discord bot mode: {counts:?}");
    assert_eq!(counts.created, ids.len() as u64, "each event posted once");
    assert!(counts.rate_limited <= 1, "429s: {}", counts.rate_limited);
    assert_safe_and_within_limits(&rest);
    for posted in rest.posted() {
        assert_eq!(posted.body["enforce_nonce"], true);
        assert_eq!(posted.body["nonce"].as_str().unwrap().len(), 25);
    }
}

/// Many channels at once: the bot's global limit (50/s) binds, and the sink's pacing
/// keeps it from being hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_requests_stay_under_the_global_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    let rest = DiscordRest::start(listener, "bot-token");
    rest.set_limits(RestLimits {
        channel: (100, Duration::from_secs(1)),
        ..RestLimits::default()
    });
    let bus = Stack::builder().start().await;
    let channels: Vec<String> = (0..12)
        .map(|c| (290926798999357250u64 + c).to_string())
        .collect();
    let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
    let ids = hostile_messages(&bus, 150, &channels).await;
    let config = DiscordSinkConfig::channel("{channel_id}", "bot-token", base);
    let sink = run_sink(
        &bus,
        &SinkConfig {
            concurrency: 64,
            ..discord_sink("global", config)
        },
    );
    bus.wait_settled("global").await;
    sink.stop().await;
    let counts = rest.counts();
    println!("discord global limit: {counts:?}");
    assert_eq!(counts.created, ids.len() as u64);
    assert!(
        counts.global_rate_limited <= 1,
        "global 429s: {}",
        counts.global_rate_limited
    );
    assert_safe_and_within_limits(&rest);
}

/// Webhook mode: `?wait=true`, the configured name, the webhook's own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_messages_respect_limits() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rest = DiscordRest::start(listener, "unused");
    rest.set_limits(RestLimits {
        webhook: (5, Duration::from_secs(1)),
        ..RestLimits::default()
    });
    let bus = Stack::builder().start().await;
    let ids = hostile_messages(&bus, 20, &["290926798999357250"]).await;
    let config = DiscordSinkConfig {
        username: Some("Relaycord".into()),
        ..DiscordSinkConfig::webhook(format!(
            "http://{addr}/api/v10/webhooks/223704706495545344/3d89bb7572e0fb30d8128367b3b1b44fecd1726de135cbe28a41f8b2f777c372ba2939e72279b94526ff5d1bd4358d65cf11"
        ))
    };
    let sink = run_sink(&bus, &discord_sink("hook", config));
    bus.wait_settled("hook").await;
    sink.stop().await;
    let counts = rest.counts();
    assert_eq!(counts.created, ids.len() as u64);
    assert!(counts.rate_limited <= 1, "429s: {}", counts.rate_limited);
    assert_safe_and_within_limits(&rest);
    assert!(
        rest.posted()
            .iter()
            .all(|p| p.body["username"] == "Relaycord")
    );
}

/// A webhook that is gone (404) is tried once: every later event is dead-lettered
/// without a request, since each refused request counts toward Discord's ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webhook_is_tried_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rest = DiscordRest::start(listener, "unused");
    rest.set_missing("223704706495545344");
    let bus = Stack::builder().start().await;
    let ids = hostile_messages(&bus, 10, &["290926798999357250"]).await;
    let config = DiscordSinkConfig::webhook(format!(
        "http://{addr}/api/v10/webhooks/223704706495545344/token"
    ));
    let sink = run_sink(&bus, &discord_sink("gone", config));
    bus.wait_settled("gone").await;
    sink.stop().await;
    assert_eq!(rest.counts().requests, 1);
    let letters = dlq::list(&bus.js, "gone").await.unwrap();
    assert_eq!(letters.len(), ids.len());
    assert!(
        letters.iter().all(|l| l.reason.contains("Unknown Webhook")),
        "{letters:?}"
    );
}

/// A refused bot token (401) stops the whole sink after one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_sink_after_one_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    let rest = DiscordRest::start(listener, "the-real-token");
    let bus = Stack::builder().start().await;
    let ids = hostile_messages(&bus, 10, &["290926798999357250", "290926798999357251"]).await;
    let config = DiscordSinkConfig::channel("{channel_id}", "a-revoked-token", base);
    let sink = run_sink(&bus, &discord_sink("revoked", config));
    bus.wait_settled("revoked").await;
    sink.stop().await;
    assert_eq!(rest.counts().requests, 1, "{:?}", rest.counts());
    assert_eq!(rest.counts().created, 0);
    let letters = dlq::list(&bus.js, "revoked").await.unwrap();
    assert_eq!(letters.len(), ids.len());
    assert!(
        letters.iter().all(|l| l.reason.contains("401")),
        "{letters:?}"
    );
}

/// A user's MESSAGE_CREATE in the first simulated guild's first channel, through the
/// simulator's gateway (ingest publishes it).
fn user_says_hello(bus: &Stack) {
    let guild = bus.sim.guild_ids()[0];
    let d = serde_json::json!({
        "id": "1400000000000000001",
        "channel_id": (guild + 1).to_string(),
        "guild_id": guild.to_string(),
        "author": {"id": "53908099506183680", "username": "mason", "discriminator": "0",
                   "global_name": "Mason", "avatar": null, "public_flags": 0},
        "content": "hello",
        "timestamp": "2026-11-30T12:00:00.000000+00:00",
        "edited_timestamp": null, "tts": false, "mention_everyone": false, "mentions": [],
        "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0,
        "flags": 0, "components": [],
    });
    let d = serde_json::value::RawValue::from_string(d.to_string()).unwrap();
    bus.sim
        .dispatch(bus.sim.shard_of_guild(guild), "MESSAGE_CREATE", &d)
        .unwrap();
}

/// MESSAGE_CREATEs the simulator dispatched for messages posted through its REST side.
fn echoes(bus: &Stack) -> usize {
    bus.sim
        .sent()
        .iter()
        .filter(|d| d.event_type == "MESSAGE_CREATE" && d.data.contains(r#""bot":true"#))
        .count()
}

/// Relays MESSAGE_CREATE with `config` until the relayed message came back and was
/// handled (skipped, or posted again); returns the messages created.
async fn relay_hello(bus: &Stack, name: &str, config: DiscordSinkConfig) -> u64 {
    let rest = bus.sim.discord_rest();
    let sink = run_sink(
        bus,
        &SinkConfig {
            events: vec!["MESSAGE_CREATE".into()],
            ..discord_sink(name, config)
        },
    );
    user_says_hello(bus);
    assert!(
        eventually(LOOP_WAIT, async || rest.counts().created >= 2
            || sink.outcome("skipped") >= 1.0)
        .await,
        "the relayed message never came back: {:?}",
        rest.counts()
    );
    let created = rest.counts().created;
    assert_eq!(sink.outcome("delivered"), 1.0);
    assert!(
        echoes(bus) >= 1,
        "the simulator dispatched the posted message"
    );
    sink.stop().await;
    created
}

const LOOP_WAIT: Duration = Duration::from_secs(60);

/// Relaying MESSAGE_CREATE into a channel the bot sees: the bot's own message comes back
/// on the gateway (authored by the bot user, learnt from GET /users/@me since the
/// simulator's token is not a real one) and is skipped, not posted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_relaying_messages_does_not_feed_on_itself() {
    let bus = Stack::builder().ingest().start().await;
    let config =
        DiscordSinkConfig::channel("{channel_id}", &bus.sim.config().token, bus.sim.api_base());
    let created = relay_hello(&bus, "echo-bot", config).await;
    assert_eq!(created, 1, "the sink posted its own message again");
    bus.stop().await;
}

/// The same through an incoming webhook: its messages carry `webhook_id`, the id in
/// the webhook URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_relaying_messages_does_not_feed_on_itself() {
    let bus = Stack::builder().ingest().start().await;
    let url = format!(
        "{}/v10/webhooks/223704706495545344/hook-token",
        bus.sim.api_base()
    );
    let created = relay_hello(&bus, "echo-hook", DiscordSinkConfig::webhook(url)).await;
    assert_eq!(created, 1, "the sink posted its own message again");
    bus.stop().await;
}

/// What the two tests above guard against: with `skip_own_messages = false` (and
/// before it existed) the sink posts its own message again, and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_its_own_messages_loops() {
    let bus = Stack::builder().ingest().start().await;
    let rest = bus.sim.discord_rest();
    let config = DiscordSinkConfig {
        skip_own_messages: false,
        ..DiscordSinkConfig::channel("{channel_id}", &bus.sim.config().token, bus.sim.api_base())
    };
    let sink = run_sink(
        &bus,
        &SinkConfig {
            events: vec!["MESSAGE_CREATE".into()],
            ..discord_sink("loop", config)
        },
    );
    user_says_hello(&bus);
    assert!(
        eventually(LOOP_WAIT, async || rest.counts().created >= 4).await,
        "no loop: {:?}",
        rest.counts()
    );
    sink.stop().await;
    bus.stop().await;
}

/// Discord answers 429s (`retry_after` in the body, `Retry-After`, `X-RateLimit-Scope`):
/// the sink sends nothing on the route (anywhere, when global) before the wait is over,
/// delivers every event, and counts the 429s toward Discord's invalid-request limit in
/// the process-wide metric (the shared-scope one is not Discord's to count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_retry_after_and_count_as_invalid_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    let rest = DiscordRest::start(listener, "bot-token");
    let wait = Duration::from_millis(700);
    rest.rate_limit_next(3, wait, RateLimitScope::User);
    rest.rate_limit_next(1, wait, RateLimitScope::Global);
    rest.rate_limit_next(1, wait, RateLimitScope::Shared);
    // The counter is the process's: other tests in this binary may add to it, never
    // take from it.
    let invalid = |registry: &prometheus::Registry| {
        metric_with(
            registry,
            "relaycord_discord_invalid_requests_total",
            &[r#"status="429""#],
        )
    };
    let before = {
        let registry = prometheus::Registry::new();
        relaycord_bus::InvalidRequests::register(&registry).unwrap();
        invalid(&registry)
    };
    let bus = Stack::builder().start().await;
    // One channel: a single request in flight at a time, so any request the simulator
    // sees before a wait is over was sent early (with two, one could be in flight when
    // the other's global 429 comes back).
    rest.set_limits(RestLimits {
        channel: (100, Duration::from_secs(1)),
        ..RestLimits::default()
    });
    let ids = hostile_messages(&bus, 20, &["290926798999357250"]).await;
    let config = DiscordSinkConfig::channel("{channel_id}", "bot-token", base);
    let sink = run_sink(&bus, &discord_sink("limited", config));
    bus.wait_settled("limited").await;
    let counts = rest.counts();
    println!("discord injected 429s: {counts:?}");
    assert_eq!(counts.created, ids.len() as u64, "every event delivered");
    assert!(counts.rate_limited >= 5, "{counts:?}");
    assert_eq!(counts.early, 0, "a request came before retry_after passed");
    assert!(
        invalid(&sink.registry) - before >= 4.0,
        "the 429s are counted: {} then {}",
        before,
        invalid(&sink.registry)
    );
    assert!(
        metric_with(
            &sink.registry,
            "relaycord_discord_invalid_requests_window",
            &[]
        ) >= 4.0
    );
    sink.stop().await;
    assert_safe_and_within_limits(&rest);
}
