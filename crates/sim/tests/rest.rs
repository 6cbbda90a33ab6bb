//! The REST endpoints, spoken to over plain HTTP/1.1 (no client library in between).

mod common;

use relaycord_sim::{SimConfig, Simulator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one GET and returns the status code and the JSON body.
async fn get(sim: &Simulator, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(sim.local_addr()).await.unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: discord.test\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Discord raises the recommended count as a bot grows; the simulator's tests do it by hand.
#[tokio::test]
async fn gateway_bot_reports_the_recommended_shard_count() {
    let sim = common::start(SimConfig {
        shards: 2,
        ..SimConfig::default()
    })
    .await;
    let shards = |body: Value| body["shards"].clone();
    let (_, body) = get(&sim, "/api/v10/gateway/bot", Some("Bot sim-token")).await;
    assert_eq!(shards(body), 2);
    sim.set_recommended_shards(4);
    assert_eq!(sim.recommended_shards(), 4);
    let (_, body) = get(&sim, "/api/v10/gateway/bot", Some("Bot sim-token")).await;
    assert_eq!(shards(body), 4);
    // The initial count still names the shards of the control methods.
    assert_eq!(sim.config().shards, 2);
}

#[tokio::test]
async fn gateway_bot_requires_the_bot_token() {
    let sim = common::start(SimConfig {
        shards: 4,
        max_concurrency: 2,
        session_start_limit: 50,
        ..SimConfig::default()
    })
    .await;

    for path in ["/api/v10/gateway/bot", "/api/gateway/bot"] {
        let (status, body) = get(&sim, path, Some("Bot sim-token")).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["url"], json!(sim.gateway_url()));
        assert_eq!(body["shards"], 4);
        let limit = &body["session_start_limit"];
        assert_eq!(
            (
                &limit["total"],
                &limit["remaining"],
                &limit["max_concurrency"]
            ),
            (&json!(50), &json!(50), &json!(2))
        );
        assert!(limit["reset_after"].as_u64().unwrap() > 86_000_000);
    }

    let unauthorized = json!({"message": "401: Unauthorized", "code": 0});
    for auth in [
        None,
        Some("Bot wrong"),
        Some("sim-token"),
        Some("Bearer sim-token"),
    ] {
        assert_eq!(
            get(&sim, "/api/v10/gateway/bot", auth).await,
            (401, unauthorized.clone()),
            "{auth:?}"
        );
    }
}

#[tokio::test]
async fn gateway_needs_no_token_and_unknown_routes_are_404() {
    let sim = common::start(SimConfig::default()).await;
    assert_eq!(
        get(&sim, "/api/v10/gateway", None).await,
        (200, json!({"url": sim.gateway_url()}))
    );
    assert_eq!(sim.gateway_url(), format!("ws://{}", sim.local_addr()));
    assert_eq!(sim.api_base(), format!("http://{}/api", sim.local_addr()));
    // A route Discord does not have (channel messages and webhooks are simulated now).
    let (status, body) = get(&sim, "/api/v10/no-such-route/1", Some("Bot sim-token")).await;
    assert_eq!((status, &body["code"]), (404, &json!(0)));
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let sim = common::start(SimConfig::default()).await;
    let addr = sim.local_addr();
    let clone = sim.clone();
    drop(sim);
    assert_eq!(
        get(&clone, "/api/gateway", None).await.0,
        200,
        "a clone keeps it running"
    );
    drop(clone);
    // The listener closes once the server task sees the shutdown.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Simulator::run(listener, SimConfig::default(), async {
        let _ = stopped.await;
    }));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/gateway HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::task::yield_now().await;
    }
}

/// Sends one POST with a JSON body and returns the status code.
async fn post_json(sim: &Simulator, path: &str, body: &Value) -> u16 {
    let mut stream = TcpStream::connect(sim.local_addr()).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: discord.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

/// `POST /webhooks/{id}/{token}` on the simulator's one port: an incoming webhook when the
/// id is not the application's (the message is recorded), an interaction follow-up when it
/// is (an unknown token answers 404 Unknown Webhook and nothing is posted).
#[tokio::test]
async fn webhook_posts_are_told_apart_by_id() {
    let sim = common::start(SimConfig::default()).await;
    let status = post_json(
        &sim,
        "/api/v10/webhooks/223704706495545344/hook-token?wait=true",
        &json!({"content": "hello"}),
    )
    .await;
    assert_eq!(status, 200);
    let posted = sim.discord_rest().posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].route, "webhook:223704706495545344");

    let application = relaycord_sim::APPLICATION_ID;
    let status = post_json(
        &sim,
        &format!("/api/v10/webhooks/{application}/unknown-token"),
        &json!({"content": "late"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        sim.discord_rest().posted().len(),
        1,
        "a follow-up is not an incoming webhook post"
    );
}
