//! Handlers answering interactions: in time (their reply is the HTTP response), late
//! (deferral, then a follow-up through the simulator's REST), absent (the configured
//! default), failing, and late after the replica that deferred has died.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use relaycord_interactions::{Handler, RouteConfig};
use relaycord_sim::RestCallKind;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use relaycord_testkit::{Stack, nats_handler, nats_route};

const PONG: &str = r#"{"type":4,"data":{"content":"pong"}}"#;
const LATE: &str = r#"{"type":4,"data":{"content":"late but here","embeds":[]}}"#;

fn deadline(ms: u64) -> impl FnOnce(&mut relaycord::config::Config) + Send + 'static {
    move |c| c.interactions.deadline = Duration::from_millis(ms)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_replying_in_100ms_is_the_response_and_handlers_scale_in_a_queue_group() {
    let stack = Stack::builder()
        .interactions(vec![nats_route("ping", "relaycord.handlers.ping")])
        .start()
        .await;
    // Two handler instances in one queue group: each request is answered once.
    let mut a = nats_handler(
        &stack.client,
        "relaycord.handlers.ping",
        Duration::from_millis(100),
        PONG,
    )
    .await;
    let mut b = nats_handler(
        &stack.client,
        "relaycord.handlers.ping",
        Duration::from_millis(100),
        PONG,
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let command = stack.discord.command("ping");
        let (status, body) = stack.send(&stack.discord.signed(&command)).await;
        assert_eq!((status, std::str::from_utf8(&body).unwrap()), (200, PONG));
        ids.push(command.id);
    }
    let mut seen = Vec::new();
    while let Ok(id) = a.try_recv() {
        seen.push(id);
    }
    while let Ok(id) = b.try_recv() {
        seen.push(id);
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every interaction reached exactly one handler");
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"outcome="answered""#]
        ),
        10.0
    );
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_handler_seconds_count",
            &[r#"result="in_time""#]
        ),
        10.0
    );
    assert!(
        stack.discord.calls().is_empty(),
        "no follow-up for a reply in time"
    );
    stack.stop().await;
}

/// Every in-time reply is also stored on the replies stream and read by the late-reply
/// worker, which must drop it: with the owner's word (owned.rs), at its first delivery,
/// not put back for seconds because it read the record before the owner wrote `answered`.
#[tokio::test(flavor = "multi_thread")]
async fn in_time_replies_are_dropped_by_the_late_worker_at_their_first_delivery() {
    let stack = Stack::builder()
        .interactions(vec![nats_route("ping", "relaycord.handlers.ping")])
        .start()
        .await;
    let _handler = nats_handler(
        &stack.client,
        "relaycord.handlers.ping",
        Duration::ZERO,
        PONG,
    )
    .await;
    const N: u64 = 200;
    let requests: Vec<_> = (0..N)
        .map(|_| stack.discord.signed(&stack.discord.command("ping")))
        .collect();
    // At once, so that the worker reads replies while their owners record `answered`.
    let answers = futures::future::join_all(requests.iter().map(|r| stack.send(r))).await;
    for (status, body) in answers {
        assert_eq!((status, std::str::from_utf8(&body).unwrap()), (200, PONG));
    }
    let replies = stack
        .js
        .get_stream(relaycord_interactions::replies::replies_stream(
            &relaycord_bus::Subjects::default(),
        ))
        .await
        .unwrap();
    let mut consumer = replies
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            relaycord_interactions::LATE_REPLIES_CONSUMER,
        )
        .await
        .unwrap();
    let settled = relaycord_testkit::eventually(Duration::from_secs(20), async || {
        consumer.info().await.unwrap().ack_floor.stream_sequence >= N
    })
    .await;
    let info = consumer.info().await.unwrap();
    assert!(settled, "every reply acked: {info:?}");
    assert_eq!(
        (info.delivered.consumer_sequence, info.num_redelivered),
        (N, 0),
        "each reply delivered once"
    );
    assert!(stack.discord.calls().is_empty(), "no follow-up");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_replying_in_5s_is_deferred_for_then_patched_in() {
    let stack = Stack::builder()
        .interactions(vec![nats_route("slow", "relaycord.handlers.slow")])
        .start()
        .await;
    let mut handler = nats_handler(
        &stack.client,
        "relaycord.handlers.slow",
        Duration::from_secs(5),
        LATE,
    )
    .await;
    let command = stack.discord.command("slow");
    let (status, body) = stack.send(&stack.discord.signed(&command)).await;
    assert_eq!((status, &body[..]), (200, &br#"{"type":5}"#[..]));
    assert_eq!(handler.recv().await.unwrap(), command.id);
    // The deferral came back while the handler was still working (it answers at 5 s).
    assert!(stack.discord.calls().is_empty());

    let call = stack
        .discord
        .wait_call(Duration::from_secs(30), |c| {
            c.interaction_id.as_deref() == Some(&command.id)
        })
        .await
        .expect("the late reply reaches Discord");
    assert_eq!(call.kind, RestCallKind::EditOriginal);
    assert_eq!(call.status, 200);
    assert_eq!(call.body, json!({"content": "late but here", "embeds": []}));
    // Counted once the worker has recorded the delivery, just after Discord saw it.
    let delivered = relaycord_testkit::eventually(Duration::from_secs(10), async || {
        stack.metric_with(
            "relaycord_interactions_late_replies_total",
            &[r#"outcome="delivered""#],
        ) == 1.0
    })
    .await;
    assert!(delivered);
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"outcome="deferred""#]
        ),
        1.0
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_handler_the_configured_default_answers() {
    let routes = vec![
        RouteConfig {
            command: Some("about".into()),
            response: Some(
                json!({"type": 4, "data": {"content": "Relaycord test bot", "flags": 64}}),
            ),
            ..RouteConfig::default()
        },
        RouteConfig {
            component: Some("ack".into()),
            ..RouteConfig::default()
        },
    ];
    let stack = Stack::builder()
        .interactions(routes)
        .config(move |c| {
            c.interactions.default_response =
                Some(json!({"type": 4, "data": {"content": "unknown"}}));
        })
        .start()
        .await;
    let d = &stack.discord;
    let answer = |r: &(u16, bytes::Bytes)| serde_json::from_slice::<Value>(&r.1).unwrap();
    let about = stack.send(&d.signed(&d.command("about"))).await;
    assert_eq!(answer(&about)["data"]["content"], "Relaycord test bot");
    // A route with neither handler nor response defers (a stream consumer follows up).
    let ack = stack.send(&d.signed(&d.component("ack:1"))).await;
    assert_eq!(answer(&ack), json!({"type": 6}));
    // No route at all: the section's default_response.
    let other = stack
        .send(&d.signed(&d.command("nothing-routes-this")))
        .await;
    assert_eq!(answer(&other)["data"]["content"], "unknown");
    assert_eq!(stack.stored().await.len(), 3, "each one is on the bus");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_handlers_get_an_ephemeral_apology() {
    let routes = vec![
        nats_route("nobody", "relaycord.handlers.nobody"),
        nats_route("bad", "relaycord.handlers.bad"),
    ];
    let stack = Stack::builder().interactions(routes).start().await;
    let _bad = nats_handler(
        &stack.client,
        "relaycord.handlers.bad",
        Duration::ZERO,
        r#"{"type":8,"data":{"choices":[]}}"#,
    )
    .await;
    let d = &stack.discord;
    for name in ["nobody", "bad"] {
        let (status, body) = stack.send(&d.signed(&d.command(name))).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            (&body["type"], &body["data"]["flags"]),
            (&json!(4), &json!(64)),
            "{name}"
        );
    }
    let unavailable = |reason: &str| {
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"outcome="unavailable""#, &format!(r#"reason="{reason}""#)],
        )
    };
    assert_eq!(unavailable("no_responders"), 1.0);
    assert_eq!(unavailable("invalid_reply"), 1.0);
    stack.stop().await;
}

/// An HTTP function that answers after `delay`, recording the headers it was sent.
async fn http_function(
    delay: Duration,
    reply: &'static str,
) -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new().route(
        "/fn",
        axum::routing::post({
            let seen = Arc::clone(&seen);
            move |headers: HeaderMap, body: String| async move {
                seen.lock().unwrap().push((headers, body));
                tokio::time::sleep(delay).await;
                reply
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fn", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_handlers_answer_in_time_or_through_a_follow_up() {
    let (fast, fast_seen) = http_function(Duration::from_millis(100), PONG).await;
    // Generous against a noisy machine: 100 ms is far inside the 2 s deadline, 4 s far past.
    let (slow, _) = http_function(
        Duration::from_secs(4),
        r#"{"type":4,"data":{"content":"new message"}}"#,
    )
    .await;
    let route = |component: &str, url: String| RouteConfig {
        component: Some(component.into()),
        handler: Some(Handler::Http(url)),
        ..RouteConfig::default()
    };
    let stack = Stack::builder()
        .interactions(vec![route("fast", fast), route("slow", slow)])
        .config(deadline(2000))
        .start()
        .await;
    let d = &stack.discord;

    let click = d.component("fast:1");
    let request = d.signed(&click);
    let (status, body) = stack.send(&request).await;
    assert_eq!((status, std::str::from_utf8(&body).unwrap()), (200, PONG));
    {
        // The function got Discord's bytes and signature, so a Discord library verifies it.
        let seen = fast_seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(body, &click.body);
        assert_eq!(
            headers["x-signature-ed25519"],
            request.signature.as_deref().unwrap()
        );
        assert_eq!(
            headers["x-signature-timestamp"],
            request.timestamp.as_deref().unwrap()
        );
    }

    // Late type-4 reply to a component: the deferral (type 6) made no message, so the
    // reply becomes a new follow-up message.
    let click = d.component("slow:1");
    let (status, body) = stack.send(&d.signed(&click)).await;
    assert_eq!((status, &body[..]), (200, &br#"{"type":6}"#[..]));
    let call = d
        .wait_call(Duration::from_secs(30), |c| {
            c.interaction_id.as_deref() == Some(&click.id)
        })
        .await
        .expect("late HTTP reply delivered");
    assert_eq!((call.kind, call.status), (RestCallKind::FollowUp, 200));
    assert_eq!(call.body, json!({"content": "new message"}));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_reply_after_the_token_expired_is_refused_and_counted_expired() {
    let stack = Stack::builder()
        .interactions(vec![nats_route("slow", "relaycord.handlers.slow")])
        .config(deadline(2000))
        .start()
        .await;
    let _handler = nats_handler(
        &stack.client,
        "relaycord.handlers.slow",
        Duration::from_secs(4),
        LATE,
    )
    .await;
    let command = stack.discord.command("slow");
    let (_, body) = stack.send(&stack.discord.signed(&command)).await;
    assert_eq!(&body[..], br#"{"type":5}"#);
    stack.discord.expire(&command.token);
    let call = stack
        .discord
        .wait_call(Duration::from_secs(30), |c| {
            c.interaction_id.as_deref() == Some(&command.id)
        })
        .await
        .expect("the follow-up was attempted");
    assert_eq!(call.status, 404, "Discord refuses an expired token");
    let expired = relaycord_testkit::eventually(Duration::from_secs(10), async || {
        stack.metric_with(
            "relaycord_interactions_late_replies_total",
            &[r#"outcome="expired""#],
        ) == 1.0
    })
    .await;
    assert!(expired);
    stack.stop().await;
}

/// Late HTTP handler calls are bounded: with `max_late_http_calls = 2` and a function that
/// hangs, two clicks wait for it; the next two are cut off at once, counted `shed`, and
/// their users get the unavailable message as the follow-up instead of a spinner.
#[tokio::test(flavor = "multi_thread")]
async fn late_http_calls_past_the_bound_are_shed_with_an_apology() {
    let (hang, _) = http_function(Duration::from_secs(120), PONG).await;
    let route = RouteConfig {
        component: Some("hang".into()),
        handler: Some(Handler::Http(hang)),
        ..RouteConfig::default()
    };
    let stack = Stack::builder()
        .interactions(vec![route])
        .config(|c| {
            c.interactions.deadline = Duration::from_millis(300);
            c.interactions.max_late_http_calls = 2;
        })
        .start()
        .await;
    let d = &stack.discord;
    let clicks: Vec<_> = (0..4).map(|i| d.component(&format!("hang:{i}"))).collect();
    for click in &clicks {
        let (status, body) = stack.send(&d.signed(click)).await;
        assert_eq!(
            (status, &body[..]),
            (200, &br#"{"type":6}"#[..]),
            "deferred"
        );
    }
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_late_replies_total",
            &[r#"outcome="shed""#]
        ),
        2.0
    );
    for shed in &clicks[2..] {
        let call = d
            .wait_call(Duration::from_secs(30), |c| {
                c.interaction_id.as_deref() == Some(&shed.id)
            })
            .await
            .expect("the shed call's user gets a follow-up");
        assert_eq!(call.kind, RestCallKind::FollowUp);
        let content = call.body["content"].as_str().unwrap_or_default().to_owned();
        assert!(content.contains("unavailable"), "{}", call.body);
    }
    stack.stop().await;
}

/// Issue 18 G: an HTTP handler's reply was read whatever its size. Over 64 KiB it is now
/// refused as a failed handler: the user gets the unavailable message.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_http_handler_replies_are_refused() {
    // A valid interaction response, padded past 64 KiB with a field Discord would ignore.
    let huge: &'static str = Box::leak(
        json!({"type": 4, "data": {"content": "big", "padding": "x".repeat(100 * 1024)}})
            .to_string()
            .into_boxed_str(),
    );
    let (url, _) = http_function(Duration::ZERO, huge).await;
    let stack = Stack::builder()
        .interactions(vec![RouteConfig {
            component: Some("big".into()),
            handler: Some(Handler::Http(url)),
            ..RouteConfig::default()
        }])
        .config(deadline(2000))
        .start()
        .await;
    let click = stack.discord.component("big:1");
    let (status, body) = stack.send(&stack.discord.signed(&click)).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["data"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("unavailable")),
        "{}",
        &body.to_string()[..200.min(body.to_string().len())]
    );
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"reason="reply_too_large""#]
        ),
        1.0
    );
    stack.stop().await;
}
