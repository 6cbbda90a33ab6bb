//! Traces across processes: real `relaycord ingest`, `sink` and `interactions` children
//! export their spans over OTLP/HTTP to a receiver that is not Relaycord
//! (tests/py/otlp_receiver.py, decoding with PyPI opentelemetry-proto). One trace must run
//! from a gateway dispatch through NATS to the sink's delivery and on to the webhook
//! receiver, and from an interaction to its NATS and HTTP handlers.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use futures::StreamExt;
use relaycord_testkit::{Stack, eventually, send_to};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

/// The OTLP receiver child and every span it decoded so far.
struct Otlp {
    _child: Child,
    endpoint: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Otlp {
    async fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/py/otlp_receiver.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 (scripts/setup.sh --tests)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the receiver starts")
            .unwrap()
            .expect("opentelemetry-proto installed (scripts/setup.sh --tests)");
        let port = serde_json::from_str::<Value>(&first).unwrap()["listening"]
            .as_u64()
            .unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&spans);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let record: Value = serde_json::from_str(&line).unwrap();
                collected.lock().unwrap().push(record);
            }
        });
        Self {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
        }
    }

    fn spans(&self) -> Vec<Value> {
        let spans = self.spans.lock().unwrap().clone();
        let errors: Vec<_> = spans.iter().filter(|s| s.get("error").is_some()).collect();
        assert!(errors.is_empty(), "undecodable exports: {errors:?}");
        spans
    }

    /// The span of `service` with this id.
    fn span(&self, service: &str, span_id: &str) -> Option<Value> {
        self.spans()
            .into_iter()
            .find(|s| s["service"] == service && s["span_id"] == span_id)
    }
}

/// An HTTP server recording each request's headers; it answers with `reply`.
async fn recorder(reply: Value) -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = Router::new().route(
        "/",
        post(move |headers: HeaderMap| {
            record.lock().unwrap().push(headers);
            let reply = reply.clone();
            async move { axum::Json(reply) }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// `00-<trace id>-<parent span id>-<flags>` → (trace id, parent span id).
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(
        (parts[0], parts[3]),
        ("00", "01"),
        "version and sampled flag"
    );
    (parts[1].to_owned(), parts[2].to_owned())
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `relaycord <args>` with `config`, exporting spans to `otlp` through `env`, logging
/// into `dir/<log>.log`.
fn spawn(args: &[&str], config: &Path, env: &[(&str, &str)], dir: &Path, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{log}.log"))).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_relaycord"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        // A batch every 100 ms instead of 5 s, so the test does not wait on it.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_SDK_DISABLED",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.spawn().expect("spawn relaycord")
}

/// Gateway receive → publish (ingest) → NATS → delivery (sink) → the receiver's request,
/// one trace. Ingest is configured by the file's `[telemetry]`, the sink by the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; neither names its service, so the defaults show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_gateway_through_the_bus_to_the_receiver() {
    let otlp = Otlp::start().await;
    let stack = Stack::builder().start().await;
    let (receiver, requests) = recorder(json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let ingest_config = dir.path().join("ingest.toml");
    std::fs::write(
        &ingest_config,
        format!(
            r#"[nats]
url = "{nats}"
[discord]
token = "{token}"
api_base = "{api}"
[ingest]
metrics_listen = "127.0.0.1:0"
[telemetry]
traces = true
endpoint = "{otlp}"
"#,
            nats = stack.nats_url(),
            token = stack.sim.config().token,
            api = stack.sim.api_base(),
            otlp = otlp.endpoint,
        ),
    )
    .unwrap();
    let sink_config = dir.path().join("sink.toml");
    std::fs::write(
        &sink_config,
        format!(
            "[nats]\nurl = \"{}\"\n[[sinks]]\nname = \"traced\"\ntype = \"http\"\nurl = \"{receiver}\"\n",
            stack.nats_url()
        ),
    )
    .unwrap();
    let _ingest = spawn(&["ingest"], &ingest_config, &[], dir.path(), "ingest");
    let _sink = spawn(
        &["sink", "--metrics-listen", "127.0.0.1:0"],
        &sink_config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint)],
        dir.path(),
        "sink",
    );
    stack.ready().await;
    stack.burst(5).finished().await;

    let delivered = |requests: &Mutex<Vec<HeaderMap>>| {
        let requests = requests.lock().unwrap().clone();
        requests
            .iter()
            .map(|h| (header(h, "webhook-id"), header(h, "traceparent")))
            .collect::<HashMap<_, _>>()
    };
    assert!(
        eventually(WAIT, async || delivered(&requests).len() >= 5).await,
        "the receiver got {} requests",
        requests.lock().unwrap().len()
    );
    for (id, traceparent) in delivered(&requests) {
        let (trace_id, delivery_id) = parse_traceparent(&traceparent);
        let found = eventually(WAIT, async || {
            otlp.span("relaycord-sink", &delivery_id).is_some()
        })
        .await;
        assert!(
            found,
            "{id}: no sink span {delivery_id} among {:?}",
            otlp.spans()
        );
        let delivery = otlp.span("relaycord-sink", &delivery_id).unwrap();
        assert_eq!(delivery["name"], "sink.deliver");
        assert_eq!(delivery["kind"], "SPAN_KIND_CONSUMER");
        assert_eq!(delivery["trace_id"], trace_id, "{id}: the receiver's trace");
        assert_eq!(delivery["attributes"]["sink"], "traced");

        let publish_id = delivery["parent_span_id"].as_str().unwrap().to_owned();
        let found = eventually(WAIT, async || {
            otlp.span("relaycord-ingest", &publish_id).is_some()
        })
        .await;
        assert!(
            found,
            "{id}: the delivery's parent {publish_id} is no ingest span"
        );
        let publish = otlp.span("relaycord-ingest", &publish_id).unwrap();
        assert_eq!(
            (
                &publish["name"],
                &publish["trace_id"],
                &publish["attributes"]["id"]
            ),
            (&json!("publish"), &json!(trace_id), &json!(id))
        );
        let receive_id = publish["parent_span_id"].as_str().unwrap();
        let receive = otlp.span("relaycord-ingest", receive_id).unwrap();
        assert_eq!(receive["name"], "gateway.receive");
        assert_eq!(receive["trace_id"], trace_id);
        assert_eq!(
            receive["parent_span_id"], "",
            "the trace starts at the gateway"
        );
    }
    stack.stop().await;
}

/// Interaction → publish → handler (NATS request and HTTP call) → reply: the handlers get
/// `traceparent` naming the interactions process's handler span, and the interaction
/// stored on the bus carries its publish span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_an_interaction_to_its_handlers() {
    let otlp = Otlp::start().await;
    let stack = Stack::builder().start().await;
    let (function, calls) = recorder(json!({"type": 4, "data": {"content": "from http"}})).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listen.local_addr().unwrap();
    drop(listen);
    let config = dir.path().join("interactions.toml");
    std::fs::write(
        &config,
        format!(
            r#"[nats]
url = "{nats}"
[discord]
public_key = "{key}"
api_base = "{api}"
[interactions]
listen = "{addr}"
metrics_listen = "127.0.0.1:0"
[[interactions.routes]]
command = "ping"
handler = {{ nats = "relaycord.handlers.ping" }}
[[interactions.routes]]
command = "fn"
handler = {{ http = "{function}" }}
"#,
            nats = stack.nats_url(),
            key = stack.config.discord.public_key,
            api = stack.config.discord.api_base,
        ),
    )
    .unwrap();
    let _interactions = spawn(
        &["interactions"],
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint),
            ("OTEL_SERVICE_NAME", "ix"),
        ],
        dir.path(),
        "interactions",
    );

    // The NATS handler answers at once and keeps each request's traceparent.
    let client = async_nats::connect(stack.nats_url()).await.unwrap();
    let mut requests = client.subscribe("relaycord.handlers.ping").await.unwrap();
    client.flush().await.unwrap();
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let traceparent = request
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .map(|v| v.to_string());
            let reply = br#"{"type":4,"data":{"content":"from nats"}}"#;
            responder
                .publish(request.reply.unwrap(), reply[..].into())
                .await
                .unwrap();
            tx.send(traceparent).unwrap();
        }
    });

    let url = format!("http://{addr}/interactions");
    let http = reqwest::Client::new();
    assert!(
        eventually(WAIT, async || http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 405))
        .await,
        "relaycord interactions did not start"
    );
    let discord = stack.sim.interactions();
    let ping = discord.command("ping");
    let (status, body) = send_to(&http, &url, &discord.signed(&ping)).await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (200, &br#"{"type":4,"data":{"content":"from nats"}}"#[..])
    );
    let nats_traceparent = handled
        .recv()
        .await
        .unwrap()
        .expect("traceparent on the request");
    let call = discord.command("fn");
    let (status, _) = send_to(&http, &url, &discord.signed(&call)).await.unwrap();
    assert_eq!(status, 200);
    let http_traceparent = header(&calls.lock().unwrap()[0], "traceparent");

    let stored = stored_traceparents(&stack).await;
    for (id, traceparent) in [(&ping.id, nats_traceparent), (&call.id, http_traceparent)] {
        let (trace_id, handler_id) = parse_traceparent(&traceparent);
        assert!(
            eventually(WAIT, async || otlp.span("ix", &handler_id).is_some()).await,
            "{id}: no handler span {handler_id} among {:?}",
            otlp.spans()
        );
        let handler = otlp.span("ix", &handler_id).unwrap();
        assert_eq!(
            (&handler["name"], &handler["trace_id"]),
            (&json!("handler"), &json!(trace_id))
        );
        assert_eq!(handler["attributes"]["outcome"], "answered");
        let root_id = handler["parent_span_id"].as_str().unwrap().to_owned();
        assert!(eventually(WAIT, async || otlp.span("ix", &root_id).is_some()).await);
        let root = otlp.span("ix", &root_id).unwrap();
        assert_eq!(
            (&root["name"], &root["kind"]),
            (&json!("interaction"), &json!("SPAN_KIND_SERVER"))
        );
        assert_eq!(
            (&root["trace_id"], &root["parent_span_id"]),
            (&json!(trace_id), &json!(""))
        );

        // The interaction on the bus continues the same trace from its publish span.
        let on_bus = &stored[&format!("ix:{id}")];
        let (bus_trace, publish_id) = parse_traceparent(on_bus);
        assert_eq!(bus_trace, trace_id, "{id}: the stored interaction's trace");
        assert!(eventually(WAIT, async || otlp.span("ix", &publish_id).is_some()).await);
        let publish = otlp.span("ix", &publish_id).unwrap();
        assert_eq!(
            (&publish["name"], &publish["parent_span_id"]),
            (&json!("publish"), &json!(root_id))
        );
    }
    stack.stop().await;
}

/// `traceparent` of each message in the interactions stream, by `Nats-Msg-Id`.
async fn stored_traceparents(stack: &Stack) -> HashMap<String, String> {
    let stream = stack.js.get_stream("DISCORD_INTERACTIONS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut found = HashMap::new();
    while found.len() < 2 {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("two interactions stored")
            .unwrap()
            .unwrap();
        let headers = message.headers.clone().unwrap_or_default();
        let id = headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap();
        let traceparent = headers.get("traceparent").map(|v| v.to_string());
        found.insert(
            id,
            traceparent.expect("traceparent on the stored interaction"),
        );
    }
    found
}

/// Off by default: a process not asked to trace publishes no `traceparent` at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untraced_ingest_publishes_no_trace_context() {
    let stack = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{}\"\n[discord]\ntoken = \"{}\"\napi_base = \"{}\"\n[ingest]\nmetrics_listen = \"127.0.0.1:0\"\n",
            stack.nats_url(),
            stack.sim.config().token,
            stack.sim.api_base(),
        ),
    )
    .unwrap();
    let _ingest = spawn(&["ingest"], &config, &[], dir.path(), "ingest");
    stack.ready().await;
    stack.burst(5).finished().await;
    let stream = stack.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for _ in 0..5 {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("events on the stream")
            .unwrap()
            .unwrap();
        let headers = message.headers.clone().unwrap_or_default();
        assert!(headers.get("Nats-Msg-Id").is_some());
        assert!(
            headers.get("traceparent").is_none(),
            "{:?}",
            headers.get("traceparent")
        );
    }
    stack.stop().await;
}
