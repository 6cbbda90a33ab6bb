//! Interactions under test: signed requests sent to the stack's endpoint, NATS
//! handlers, a proxy that can stall NATS, and raw chunked POSTs.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use relaycord_interactions::RouteConfig;
use relaycord_sim::SignedRequest;
use tokio::net::TcpListener;

use crate::Stack;

impl Stack {
    /// POSTs `request` to the interactions endpoint; returns the status and body.
    pub async fn send(&self, request: &SignedRequest) -> (u16, Bytes) {
        self.post(&self.url, request).await
    }

    /// POSTs `request` to `url` (e.g. [`Stack::webhook_events_url`]).
    pub async fn post(&self, url: &str, request: &SignedRequest) -> (u16, Bytes) {
        send_to(&self.http, url, request)
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {}", error_chain(&e)))
    }
}

pub async fn send_to(
    http: &reqwest::Client,
    url: &str,
    request: &SignedRequest,
) -> Result<(u16, Bytes), reqwest::Error> {
    let mut builder = http.post(url).body(request.body.clone());
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let response = builder.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?))
}

/// `error` and its sources, one after another: reqwest's own message alone ("error sending
/// request") does not say whether the connection was refused, reset or timed out.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
            let _ = tx.send(interaction_id(&request));
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

/// The `Relaycord-Interaction-Id` header of a handler request (empty without one).
pub fn interaction_id(request: &async_nats::Message) -> String {
    request
        .headers
        .as_ref()
        .and_then(|h| h.get(relaycord_interactions::handler_headers::INTERACTION_ID))
        .map(|v| v.to_string())
        .unwrap_or_default()
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

/// Signature headers of the right shape (128 hex characters, the current time) that do
/// not verify: what the endpoint needs to see before it reads a body at all.
pub fn shaped_signature_headers() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "X-Signature-Ed25519: {}\r\nX-Signature-Timestamp: {now}\r\n",
        "ab".repeat(64)
    )
}

/// POSTs `chunks` with `Transfer-Encoding: chunked` (no Content-Length) over a raw
/// connection, with [`shaped_signature_headers`] (so the body is read, and refused for its
/// signature if nothing else). With `finish`, ends the body and returns the response
/// status; without, hangs up mid-body and returns `None`.
pub async fn post_chunked(url: &str, chunks: &[&[u8]], finish: bool) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{}Transfer-Encoding: chunked\r\n\r\n",
        shaped_signature_headers()
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

impl Stack {
    /// The webhook events endpoint (`interactions.webhook_events_path` beside the
    /// interactions endpoint); empty unless serving interactions.
    pub fn webhook_events_url(&self) -> String {
        let i = &self.config.interactions;
        self.url
            .strip_suffix(i.path.as_str())
            .map(|base| format!("{base}{}", i.webhook_events_path))
            .unwrap_or_default()
    }
}
