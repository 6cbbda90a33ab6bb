//! An interactions service on loopback: a real nats-server, the simulator as Discord
//! (signer and REST), and `relaycord interactions` wired from a config.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use prometheus::Registry;
use relaycord::config::Config;
use relaycord::nats_server::NatsServer;
use relaycord::telemetry::Health;
use relaycord_interactions::RouteConfig;
use relaycord_sim::{Interactions, SignedRequest, SimConfig, Simulator};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct IxStack {
    nats: NatsServer,
    // Kept alive for the stack's lifetime.
    _sim: Simulator,
    pub discord: Interactions,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub registry: Registry,
    pub url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The config every test starts from: the simulator as Discord, NATS at `nats_url`.
pub fn base_config(nats_url: &str, sim: &Simulator, routes: Vec<RouteConfig>) -> Config {
    let mut config = Config::load(None).unwrap();
    config.nats.url = nats_url.to_owned();
    config.discord.public_key = sim.interactions().public_key_hex();
    config.discord.api_base = sim.api_base();
    config.interactions.routes = routes;
    config.validate().unwrap();
    config
}

pub async fn start_sim() -> Simulator {
    // Every interactions test builds reqwest clients (rustls without a default provider).
    relaycord_bus::install_crypto_provider();
    Simulator::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig::default(),
    )
    .await
    .unwrap()
}

impl IxStack {
    pub async fn start(routes: Vec<RouteConfig>) -> Self {
        Self::start_with(routes, |_| {}).await
    }

    pub async fn start_with(routes: Vec<RouteConfig>, tweak: impl FnOnce(&mut Config)) -> Self {
        let nats = NatsServer::start().expect("start nats-server (scripts/setup.sh installs it)");
        let sim = start_sim().await;
        let mut config = base_config(&nats.url(), &sim, routes);
        tweak(&mut config);
        config.validate().unwrap();
        Self::serve(nats, sim, config).await
    }

    /// Starts the service for `config` against existing NATS and simulator.
    pub async fn serve(nats: NatsServer, sim: Simulator, config: Config) -> Self {
        relaycord_bus::install_crypto_provider();
        let js = relaycord::roles::connect(&config, "test").await.unwrap();
        let client = js.client();
        let registry = Registry::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}{}",
            listener.local_addr().unwrap(),
            config.interactions.path
        );
        let shutdown = CancellationToken::new();
        let health = Health::default();
        let task = tokio::spawn({
            let (config, js, registry, shutdown) = (
                config.clone(),
                js.clone(),
                registry.clone(),
                shutdown.clone(),
            );
            async move {
                relaycord::interactions::run_interactions(
                    &config, js, &registry, &health, listener, shutdown,
                )
                .await
            }
        });
        let stack = Self {
            discord: sim.interactions(),
            nats,
            _sim: sim,
            client,
            js,
            registry,
            url,
            http: reqwest::Client::new(),
            shutdown,
            task,
        };
        // Serving starts once NATS is set up. A GET is answered 405 without touching the
        // request metrics the tests count.
        for _ in 0..500 {
            if stack
                .http
                .get(&stack.url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 405)
            {
                return stack;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the interactions service did not start");
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// kill -9 of the nats-server.
    pub fn kill_nats(&mut self) {
        self.nats.kill();
    }

    async fn try_send(&self, request: &SignedRequest) -> Option<(u16, Bytes)> {
        send_to(&self.http, &self.url, request).await
    }

    /// POSTs `request` to the endpoint; returns the status and body.
    pub async fn send(&self, request: &SignedRequest) -> (u16, Bytes) {
        self.try_send(request).await.expect("endpoint reachable")
    }

    /// Sum of `name` over the label sets whose labels contain every `labels` pair
    /// (`outcome="deferred"` style).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_with(&self.registry, name, labels)
    }

    /// Envelopes stored in the interactions stream, with their subject and msg id.
    pub async fn stored(&self) -> Vec<Stored> {
        stored(&self.js).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub async fn send_to(
    http: &reqwest::Client,
    url: &str,
    request: &SignedRequest,
) -> Option<(u16, Bytes)> {
    let mut builder = http.post(url).body(request.body.clone());
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.bytes().await.ok()?))
}

pub use crate::support::metric_with;

#[derive(Debug)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub envelope: serde_json::Value,
    /// The raw `data` text inside the envelope.
    pub raw_data: String,
}

pub async fn stored(js: &jetstream::Context) -> Vec<Stored> {
    let mut stream = js.get_stream("DISCORD_INTERACTIONS").await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    if count == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while (out.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stored message")
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(&message.payload).unwrap();
        let envelope = relaycord_bus::Envelope::from_slice(message.payload.as_ref()).unwrap();
        out.push(Stored {
            subject: message.subject.to_string(),
            msg_id: message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
            raw_data: envelope.data.get().to_owned(),
            envelope: serde_json::from_str(text).unwrap(),
        });
    }
    out
}

/// A NATS handler on `subject` (queue group "handlers") that answers every request with
/// `reply` after `delay`. Returns the interaction ids it received, in order.
pub async fn nats_handler(
    client: &async_nats::Client,
    subject: &str,
    delay: Duration,
    reply: &'static str,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut sub = client
        .queue_subscribe(subject.to_owned(), "handlers".to_owned())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(request) = sub.next().await {
            let id = request
                .headers
                .as_ref()
                .and_then(|h| h.get(relaycord_interactions::handler_headers::INTERACTION_ID))
                .map(|v| v.to_string())
                .unwrap_or_default();
            let _ = tx.send(id);
            let client = client.clone();
            tokio::spawn(async move {
                // A zero sleep still waits for the next timer tick (about 1 ms).
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(reply_to) = request.reply {
                    client
                        .publish(reply_to, Bytes::from_static(reply.as_bytes()))
                        .await
                        .unwrap();
                    client.flush().await.unwrap();
                }
            });
        }
    });
    rx
}

pub fn nats_route(command: &str, subject: &str) -> RouteConfig {
    RouteConfig {
        command: Some(command.to_owned()),
        handler: Some(relaycord_interactions::Handler::Nats(subject.to_owned())),
        ..RouteConfig::default()
    }
}

/// A TCP proxy in front of NATS whose client→server direction can be held: what the
/// service writes then stalls (a slow NATS), while what the server sends still arrives.
#[derive(Clone)]
pub struct HoldingProxy {
    addr: std::net::SocketAddr,
    hold: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl HoldingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut held = held.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if held.wait_for(|held| !*held).await.is_err()
                            || to_server.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            hold: std::sync::Arc::new(hold),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Holds (`true`) or releases what clients send to the server.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

/// POSTs `chunks` with `Transfer-Encoding: chunked` (no Content-Length) over a raw
/// connection. With `finish`, ends the body and returns the response status; without,
/// hangs up mid-body and returns `None`.
pub async fn post_chunked(url: &str, chunks: &[&[u8]], finish: bool) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    if !finish {
        stream.write_all(&request).await.unwrap();
        // Hang up mid-body: no terminating chunk ever comes.
        let _ = stream.shutdown().await;
        return None;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0; 1024];
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a status line");
        response.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&response);
    status.split(' ').nth(1)?.parse().ok()
}

/// The decision record of an interaction, as stored (`{"state": …}`).
pub async fn decision(js: &jetstream::Context, id: &str) -> Option<serde_json::Value> {
    let store = js
        .get_key_value("DISCORD_INTERACTION_DECISIONS")
        .await
        .unwrap();
    let bytes = store.get(id).await.unwrap()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}
