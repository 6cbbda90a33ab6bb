//! Interactions across processes: the `relaycord interactions` binary killed with -9 after
//! deferring (its late reply must still reach Discord, through another replica), stopped
//! with SIGTERM under continuous traffic (every request answered), and a handler written in
//! Python with nats-py.

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
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

/// As [`spawn_replica`], with `routes` (TOML: routes and other `[interactions]` keys)
/// instead of the NATS route.
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
    // No drain delay: what is tested is the wait for the late call once the listener closed.
    let routes = format!(
        "drain_delay = \"0s\"\n[[interactions.routes]]\ncommand = \"slow\"\nhandler = {{ http = \"{function}\" }}"
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

/// Issue 20, point 3: on SIGTERM the listener closed at once, while Services and ingresses
/// still routed to the pod for a few seconds, and Discord does not retry. Now `/readyz`
/// fails at once, the endpoint serves on for `interactions.drain_delay` (every answer with
/// `Connection: close`), then closes its listener and finishes the requests in flight.
///
/// The test plays the load balancer: clients keep sending signed interactions (PINGs and
/// commands) and webhook events, some over keep-alive connections and some on a new
/// connection each, and open new connections as long as the pod is "routed to". Like a
/// load balancer it stops routing only some time after `/readyz` failed: here once
/// enough requests were answered after the failure was seen (not after a sleep). Every
/// request must be answered as it should; a connection refused or reset while routed is
/// a failure. A request whose body is still coming when the listener closes must be
/// answered too, and the process must exit 0 by itself. Nothing is timed: the "load
/// balancer" stops routing within milliseconds of the 503, well inside the 3 s delay (only a
/// stall of this test for seconds could make it send a connection past the delay).
#[tokio::test(flavor = "multi_thread")]
async fn requests_sent_through_a_sigterm_are_all_answered() {
    let stack = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    // The held request's body arrives after the drain delay: room for it.
    let (replica, url, metrics) = spawn_replica_routing(
        &stack.config,
        &dir,
        "drain_delay = \"3s\"\nbody_read_timeout = \"30s\"",
    )
    .await;
    let addr: std::net::SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let readyz = metrics.replace("/metrics", "/readyz");
    let drain = Arc::new(Drain {
        discord: stack.sim.interactions(),
        events: stack.sim.webhook_events(),
        addr,
        seen: Seen::default(),
    });
    let replica = Arc::new(std::sync::Mutex::new(replica));

    // The process, watched without blocking: `exited` ends every loop below.
    let watcher = tokio::spawn({
        let (drain, replica) = (Arc::clone(&drain), Arc::clone(&replica));
        async move {
            loop {
                if let Some(status) = replica.lock().unwrap().0.try_wait().unwrap() {
                    drain.exited.store(true, SeqCst);
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let poller = tokio::spawn(poll_readyz(Arc::clone(&drain), readyz));
    let router = tokio::spawn(route(Arc::clone(&drain)));
    let held = tokio::spawn(held_request(Arc::clone(&drain)));
    let clients: Vec<_> = (0..6)
        .map(|i| tokio::spawn(drain_client(Arc::clone(&drain), i, i % 2 == 0)))
        .collect();

    // Steady traffic first (counted, not timed), then SIGTERM.
    let warmed = tokio::time::timeout(Duration::from_secs(60), async {
        while drain.answered.load(SeqCst) < 60 && !drain.exited.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(warmed.is_ok(), "no steady traffic: {:?}", drain.failures());
    assert!(
        !drain.exited.load(SeqCst),
        "the replica died before SIGTERM"
    );
    drain.sigterm.store(true, SeqCst);
    let pid = replica.lock().unwrap().0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let status = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the replica exits by itself after its drain delay and grace")
        .unwrap();
    for task in clients {
        task.await.unwrap();
    }
    router.await.unwrap();
    let readyz_seen = poller.await.unwrap();
    let held = held.await.unwrap();

    let failures = drain.failures();
    assert!(
        failures.is_empty(),
        "{} failure(s) among {} answered requests, e.g. {:#?}",
        drain.failed.load(SeqCst),
        drain.answered.load(SeqCst),
        &failures[..failures.len().min(10)]
    );
    assert!(status.success(), "exit status {status}");
    // /readyz: 200 before SIGTERM, then 503 (answered, not gone) and never 200 again.
    assert_eq!(readyz_seen.first(), Some(&200), "{readyz_seen:?}");
    assert!(readyz_seen.contains(&503), "{readyz_seen:?}");
    let ready_again = readyz_seen
        .iter()
        .skip_while(|s| **s != 503)
        .any(|s| *s == 200);
    assert!(!ready_again, "ready again after 503: {readyz_seen:?}");
    // Requests were answered while /readyz said 503, on new connections too, and told
    // their clients to go elsewhere; none was told so before SIGTERM.
    let counts = [
        (
            "answered while not ready",
            drain.answered_unready.load(SeqCst),
        ),
        (
            "of them on connections opened while not ready",
            drain.fresh_unready.load(SeqCst),
        ),
        ("answers with Connection: close", drain.closes.load(SeqCst)),
    ];
    assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
    assert_eq!(drain.closes_before_sigterm.load(SeqCst), 0);
    // The request in flight when the listener closed (refused connections proved it).
    assert_eq!(held, Some((200, json!({"type": 1}))), "the held request");
    eprintln!(
        "drain: {} requests answered, {counts:?}, /readyz {:?}",
        drain.answered.load(SeqCst),
        readyz_seen
    );
    stack.stop().await;
}

/// What the drain test's tasks share.
struct Drain {
    discord: relaycord_sim::Interactions,
    events: relaycord_sim::WebhookEvents,
    addr: std::net::SocketAddr,
    seen: Seen,
}

impl std::ops::Deref for Drain {
    type Target = Seen;
    fn deref(&self) -> &Seen {
        &self.seen
    }
}

/// What the drain test's tasks saw.
#[derive(Default)]
struct Seen {
    /// Set just before the signal is sent.
    sigterm: AtomicBool,
    /// `/readyz` answered 503.
    unready: AtomicBool,
    /// The load balancer stopped opening connections to the pod.
    unrouted: AtomicBool,
    exited: AtomicBool,
    answered: AtomicUsize,
    /// Sent after `/readyz` said 503, and answered.
    answered_unready: AtomicUsize,
    /// Of those, on a connection opened after the 503.
    fresh_unready: AtomicUsize,
    closes: AtomicUsize,
    closes_before_sigterm: AtomicUsize,
    failed: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Seen {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 50 {
            failures.push(what);
        }
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

impl Drain {
    /// The `n`-th request of a client: its path, signed request and expected answer.
    fn request(&self, n: usize) -> (&'static str, relaycord_sim::SignedRequest, u16, Value) {
        match n % 3 {
            0 => (
                "/interactions",
                self.discord.signed(&self.discord.ping()),
                200,
                json!({"type": 1}),
            ),
            1 => (
                "/interactions",
                self.discord.signed(&self.discord.command("drain")),
                200,
                json!({"type": 5}),
            ),
            _ => {
                let event = self.events.deauthorized(&relaycord_sim::new_user_id());
                (
                    "/webhook-events",
                    self.events.signed(&event.body),
                    204,
                    Value::Null,
                )
            }
        }
    }
}

/// Polls `/readyz` until the process exits; returns the statuses seen (0: no answer).
async fn poll_readyz(drain: Arc<Drain>, url: String) -> Vec<u16> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut seen: Vec<u16> = Vec::new();
    while !drain.exited.load(SeqCst) {
        let sigterm = drain.sigterm.load(SeqCst);
        let status = http
            .get(&url)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        match (sigterm, status) {
            (true, 503) => drain.unready.store(true, SeqCst),
            (_, 200) => {}
            // Gone only once the process is exiting, after its 503s.
            (true, 0) if drain.unready.load(SeqCst) => {}
            _ => drain.fail(format!("/readyz answered {status} (sigterm: {sigterm})")),
        }
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// The load balancer: stops routing to the pod some time after `/readyz` failed, here
/// once 30 requests were answered since (3 of them on new connections).
async fn route(drain: Arc<Drain>) {
    while !drain.exited.load(SeqCst)
        && (drain.answered_unready.load(SeqCst) < 30 || drain.fresh_unready.load(SeqCst) < 3)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drain.unrouted.store(true, SeqCst);
}

/// A client sending requests one after another, over a keep-alive connection (until the
/// server says `Connection: close`) or on a new connection each, while the pod is routed to.
async fn drain_client(drain: Arc<Drain>, id: usize, keep_alive: bool) {
    use hyper::client::conn::http1::SendRequest;
    use hyper_util::rt::TokioIo;
    let mut conn: Option<(SendRequest<axum::body::Body>, bool)> = None;
    for n in id.. {
        if drain.exited.load(SeqCst) {
            return;
        }
        let (sender, opened_unready) = match conn.as_mut() {
            Some(conn) => conn,
            None => {
                if drain.unrouted.load(SeqCst) {
                    return;
                }
                let opened_unready = drain.unready.load(SeqCst);
                let stream = match tokio::net::TcpStream::connect(drain.addr).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        drain.fail(format!("client {id}: cannot connect while routed to: {e}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok((sender, connection)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    unreachable!("an HTTP/1.1 handshake sends nothing");
                };
                tokio::spawn(connection);
                conn.insert((sender, opened_unready))
            }
        };
        let opened_unready = *opened_unready;
        if sender.ready().await.is_err() {
            drain.fail(format!(
                "client {id}: the server closed a keep-alive connection without Connection: close"
            ));
            conn = None;
            continue;
        }
        let (path, signed, status, expected) = drain.request(n);
        let mut request = axum::http::Request::post(path).header("host", drain.addr.to_string());
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let request = request.body(axum::body::Body::from(signed.body)).unwrap();
        let sent_unready = drain.unready.load(SeqCst);
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                drain.fail(format!(
                    "client {id}: request {n} to {path} not answered: {e}"
                ));
                conn = None;
                continue;
            }
        };
        let close = response
            .headers()
            .get(axum::http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let got = response.status().as_u16();
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20).await;
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                drain.fail(format!("client {id}: request {n} to {path}: body cut: {e}"));
                conn = None;
                continue;
            }
        };
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (got, &value) == (status, &expected) {
            drain.answered.fetch_add(1, SeqCst);
            if sent_unready {
                drain.answered_unready.fetch_add(1, SeqCst);
                if opened_unready {
                    drain.fresh_unready.fetch_add(1, SeqCst);
                }
            }
        } else {
            drain.fail(format!("client {id}: {path} answered {got} {body:?}"));
        }
        if close {
            drain.closes.fetch_add(1, SeqCst);
            if !drain.sigterm.load(SeqCst) {
                drain.closes_before_sigterm.fetch_add(1, SeqCst);
            }
        }
        if close || !keep_alive {
            conn = None;
        }
    }
}

/// A signed PING whose body is half sent once `/readyz` fails and finished only once the
/// listener refuses new connections: in flight when the listener closed, it must still be
/// answered (with `Connection: close`). Returns its status and body.
async fn held_request(drain: Arc<Drain>) -> Option<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while !drain.unready.load(SeqCst) {
        if drain.exited.load(SeqCst) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signed = drain.discord.signed(&drain.discord.ping());
    let mut head = format!(
        "POST /interactions HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
        drain.addr,
        signed.body.len()
    );
    for (name, value) in signed.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let Ok(mut stream) = tokio::net::TcpStream::connect(drain.addr).await else {
        drain.fail("held request: cannot connect while routed to".to_owned());
        return None;
    };
    let half = signed.body.len() / 2;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&signed.body[..half]).await.unwrap();
    // The listener closes after the drain delay: new connections are refused from then on.
    while !drain.exited.load(SeqCst) {
        // Refused, or reset when it was made in the very moment of the close.
        let Ok(probe) = tokio::net::TcpStream::connect(drain.addr).await else {
            break;
        };
        drop(probe);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if drain.exited.load(SeqCst) {
        drain.fail("held request: the process exited before it was answered".to_owned());
        return None;
    }
    if let Err(e) = stream.write_all(&signed.body[half..]).await {
        drain.fail(format!("held request: rest of the body not taken: {e}"));
        return None;
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response).await {
        drain.fail(format!("held request: {e} after {response:?}"));
        return None;
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    if !head.to_ascii_lowercase().contains("\r\nconnection: close") {
        drain.fail(format!("held request: no Connection: close in {head:?}"));
    }
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}
