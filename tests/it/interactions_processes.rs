//! Interactions across processes: the `relaycord interactions` binary killed with -9 after
//! deferring (its late reply must still reach Discord, through another replica), and a
//! handler written in Python with nats-py.

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use relaycord_sim::RestCallKind;
use relaycord_testkit::{Stack, nats_route};
use serde_json::{Value, json};

fn free_addr() -> String {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Runs `relaycord interactions` as a child process; returns it and its endpoint URL.
async fn spawn_replica(
    config: &relaycord::config::Config,
    dir: &tempfile::TempDir,
) -> (KillOnDrop, String, String) {
    spawn_replica_routing(config, dir, SLOW_NATS_ROUTE).await
}

const SLOW_NATS_ROUTE: &str = r#"[[interactions.routes]]
command = "slow"
handler = { nats = "relaycord.handlers.slow" }"#;

/// As [`spawn_replica`], with `routes` (TOML) instead of the NATS route.
async fn spawn_replica_routing(
    config: &relaycord::config::Config,
    dir: &tempfile::TempDir,
    routes: &str,
) -> (KillOnDrop, String, String) {
    let (listen, metrics) = (free_addr(), free_addr());
    let path = dir
        .path()
        .join(format!("relaycord-{listen}.toml").replace(':', "_"));
    let toml = format!(
        r#"
[nats]
url = "{nats}"
[discord]
public_key = "{key}"
api_base = "{api}"
[interactions]
listen = "{listen}"
metrics_listen = "{metrics}"
deadline = "500ms"
{routes}
"#,
        nats = config.nats.url,
        key = config.discord.public_key,
        api = config.discord.api_base,
    );
    std::fs::write(&path, toml).unwrap();
    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_relaycord"))
            .arg("--config")
            .arg(&path)
            .arg("interactions")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("run the relaycord binary"),
    );
    let url = format!("http://{listen}/interactions");
    let http = reqwest::Client::new();
    for _ in 0..1000 {
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 405) {
            return (child, url, format!("http://{metrics}/metrics"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("relaycord interactions did not start");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_reply_survives_the_death_of_the_replica_that_deferred() {
    let mut stack = Stack::builder()
        .config(|c| c.interactions.routes = vec![nats_route("slow", "relaycord.handlers.slow")])
        .start()
        .await;
    let discord = stack.sim.interactions();
    let dir = tempfile::tempdir().unwrap();
    let (mut replica_a, url_a, _) = spawn_replica(&stack.config, &dir).await;

    // A handler that answers only when the test says so.
    let client = async_nats::connect(stack.nats_url()).await.unwrap();
    let mut requests = client.subscribe("relaycord.handlers.slow").await.unwrap();
    client.flush().await.unwrap();

    let command = discord.command("slow");
    let request = discord.signed(&command);
    let (status, body) = relaycord_testkit::send_to(&reqwest::Client::new(), &url_a, &request)
        .await
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (200, &br#"{"type":5}"#[..]),
        "replica A deferred"
    );
    let handled = tokio::time::timeout(Duration::from_secs(10), requests.next())
        .await
        .unwrap()
        .unwrap();

    replica_a.0.kill().unwrap(); // SIGKILL: no shutdown code runs.
    replica_a.0.wait().unwrap();
    let reply = Bytes::from_static(br#"{"type":4,"data":{"content":"answered after A died"}}"#);
    client.publish(handled.reply.unwrap(), reply).await.unwrap();
    client.flush().await.unwrap();
    assert!(discord.calls().is_empty());

    // Replica B did not exist when A deferred; it finds the reply on the stream.
    stack.serve_interactions().await;
    let replica_b = stack;
    let call = discord
        .wait_call(Duration::from_secs(30), |c| {
            c.interaction_id.as_deref() == Some(&command.id)
        })
        .await
        .expect("the late reply reached Discord through replica B");
    assert_eq!((call.kind, call.status), (RestCallKind::EditOriginal, 200));
    assert_eq!(call.body, json!({"content": "answered after A died"}));
    replica_b.stop().await;
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_python_handler_answers_a_slash_command() {
    let stack = Stack::builder()
        .interactions(vec![nats_route("ping", "relaycord.handlers.ping")])
        .start()
        .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/py/interaction_handler.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            "--url",
            &stack.nats_url(),
            "--subject",
            "relaycord.handlers.ping",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with nats-py (scripts/setup.sh --tests)");
    let stdout = child.stdout.take().unwrap();
    let handler = KillOnDrop(child);
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().and_then(Result::ok)
    })
    .await
    .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"), "nats-py handler started");

    let command = stack.discord.command("ping");
    let (status, body) = stack.send(&stack.discord.signed(&command)).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"type": 4, "data": {"content": "pong from python: /ping by Mason"}})
    );
    drop(handler);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_interaction_metrics() {
    let stack = Stack::builder().start().await;
    let discord = stack.sim.interactions();
    let dir = tempfile::tempdir().unwrap();
    let (_replica, url, metrics) = spawn_replica(&stack.config, &dir).await;
    let http = reqwest::Client::new();
    let send = |request| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            relaycord_testkit::send_to(&http, &url, &request)
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(send(discord.signed(&discord.ping())).await, 200);
    let command = discord.command("anything");
    assert_eq!(send(discord.signed(&command)).await, 200);
    assert_eq!(
        send(discord.forged(&command, relaycord_sim::Forgery::WrongKey)).await,
        401
    );

    let text = http
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"relaycord_interactions_requests_total{outcome="pong",reason=""} 1"#,
        r#"relaycord_interactions_requests_total{outcome="deferred",reason=""} 1"#,
        r#"relaycord_interactions_requests_total{outcome="rejected",reason="bad_signature"} 1"#,
        r#"relaycord_interactions_response_seconds_count{outcome="deferred"} 1"#,
        "relaycord_interactions_publish_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

/// Issue 18 D: a late HTTP handler call in flight at SIGTERM was dropped with the process
/// (the service did not wait for it). Shutdown now waits for it (up to `shutdown_grace`),
/// stores its reply, and another replica follows up.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_http_reply_in_flight_at_sigterm_is_followed_up() {
    let mut stack = Stack::builder().start().await;
    let discord = stack.sim.interactions();
    // An HTTP function that answers 3 s after it is called.
    let (called_tx, mut called) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/fn",
        axum::routing::post(move || {
            let _ = called_tx.send(());
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                r#"{"type":4,"data":{"content":"answered during shutdown"}}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let function = format!("http://{}/fn", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let routes = format!(
        "[[interactions.routes]]\ncommand = \"slow\"\nhandler = {{ http = \"{function}\" }}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut replica_a, url_a, _) = spawn_replica_routing(&stack.config, &dir, &routes).await;

    let command = discord.command("slow");
    let request = discord.signed(&command);
    let (status, body) = relaycord_testkit::send_to(&reqwest::Client::new(), &url_a, &request)
        .await
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (200, &br#"{"type":5}"#[..]),
        "deferred"
    );
    tokio::time::timeout(Duration::from_secs(10), called.recv())
        .await
        .expect("the function was called");

    // SIGTERM while the function is still working; A must exit by itself.
    let pid = replica_a.0.id().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = replica_a.0.wait();
        (replica_a, status)
    });
    let (_replica_a, status) = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .expect("A exits within its grace period")
        .unwrap();
    assert!(status.unwrap().success(), "A shut down cleanly");

    // Any replica follows up: here one started after A is gone.
    stack.serve_interactions().await;
    let call = discord
        .wait_call(Duration::from_secs(30), |c| {
            c.interaction_id.as_deref() == Some(&command.id)
        })
        .await
        .expect("the late reply reached Discord");
    assert_eq!((call.kind, call.status), (RestCallKind::EditOriginal, 200));
    assert_eq!(call.body, json!({"content": "answered during shutdown"}));
    stack.stop().await;
}
