//! The gateway websocket: one task per connection, reading and writing concurrently.
//!
//! The reader never waits on the writer (replies are queued), so a client that stops reading
//! cannot stall heartbeat supervision: after `heartbeat_timeout` without a heartbeat the
//! connection is closed with 4000 and the session stays resumable, which is how such a client
//! gets its backlog back (as a RESUME replay).

use crate::compression::{Compression, Encoder};
use crate::protocol::{self, close, op};
use crate::state::{Bound, ConnHandle, Outbound, ResumeRefused, Shared};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant, sleep_until, timeout};

/// How long a client gets to complete a close handshake before the TCP connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames written before one flush: bursts cost one syscall, not one per frame.
const MAX_BATCH: usize = 256;

/// Query of the connect URL, e.g. `/?v=10&encoding=json&compress=zstd-stream`.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectParams {
    v: Option<String>,
    encoding: Option<String>,
    compress: Option<String>,
}

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    if params.encoding.as_deref().is_some_and(|e| e != "json") {
        return (
            StatusCode::BAD_REQUEST,
            "the simulator only speaks encoding=json",
        )
            .into_response();
    }
    let api_version = protocol::API_VERSION.to_string();
    let version_ok = params.v.as_deref().is_none_or(|v| v == api_version);
    let compression = Compression::from_query(params.compress.as_deref());
    ws.on_upgrade(move |socket| serve(shared, socket, compression, version_ok))
}

/// How a connection's read/write loop ended.
enum Ending {
    /// The client went away (or closed; the close reply is automatic).
    Gone,
    /// We wrote a close frame: give the client a moment to answer it.
    ServerClosed,
    /// Drop the TCP connection now.
    Killed,
}

async fn serve(shared: Arc<Shared>, socket: WebSocket, compression: Compression, version_ok: bool) {
    let (handle, mut outbound) = shared.new_connection(compression);
    let interval = shared.config.heartbeat_interval;
    let mut conn = Connection {
        shared,
        handle,
        bound: None,
        heartbeat_deadline: Instant::now() + protocol::heartbeat_timeout(interval),
        kill_at: None,
    };
    conn.handle.send(protocol::hello(interval));
    if !version_ok {
        conn.close(close::INVALID_API_VERSION);
    }

    let (mut sink, mut stream) = socket.split();
    let kill = conn.handle.kill.clone();
    let ending = tokio::select! {
        ending = write(&mut sink, &mut outbound, compression.encoder()) => ending,
        ending = conn.read(&mut stream) => ending,
        () = kill.cancelled() => Ending::Killed,
    };
    if let Ending::ServerClosed = ending {
        // Read until the client's close reply ends the stream; a stuck client gets cut off.
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = timeout(CLOSE_GRACE, drain).await;
    }
    conn.unbind();
    // Dropping both halves closes the TCP connection.
}

/// Writes queued frames until a close frame, an error, or the connection's end.
async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    outbound: &mut mpsc::UnboundedReceiver<Outbound>,
    mut encoder: Encoder,
) -> Ending {
    // `Connection` holds a sender, so `recv` only ends when the connection does.
    while let Some(first) = outbound.recv().await {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next.take() {
            match item {
                Outbound::Frame(frame) => {
                    if sink.feed(encoder.encode(frame)).await.is_err() {
                        return Ending::Gone;
                    }
                }
                Outbound::Close(code) => {
                    let frame = CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(protocol::close_reason(code)),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return Ending::ServerClosed;
                }
            }
            written += 1;
            if written < MAX_BATCH {
                next = outbound.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() {
            return Ending::Gone;
        }
    }
    Ending::Gone
}

/// The reading side of one connection and its protocol state.
struct Connection {
    shared: Arc<Shared>,
    handle: ConnHandle,
    /// The session this connection identified or resumed into. It may since have been taken
    /// off the shard (RECONNECT, INVALID_SESSION, a newer connection): see [`Self::attached`].
    bound: Option<Bound>,
    heartbeat_deadline: Instant,
    /// Set once a close frame is queued: the connection is dropped at this instant if the
    /// handshake has not finished, and client payloads are ignored meanwhile.
    kill_at: Option<Instant>,
}

impl Connection {
    async fn read(&mut self, stream: &mut SplitStream<WebSocket>) -> Ending {
        loop {
            let deadline = self.kill_at.unwrap_or(self.heartbeat_deadline);
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                    // Binary frames would be ETF; this simulator speaks JSON only.
                    Some(Ok(Message::Binary(_))) => self.close(close::DECODE_ERROR),
                    Some(Ok(Message::Close(frame))) => self.on_client_close(frame.map(|f| f.code)),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(_)) | None => return Ending::Gone,
                },
                () = sleep_until(deadline) => {
                    if self.kill_at.is_some() {
                        return Ending::Killed;
                    }
                    tracing::debug!(conn = self.handle.id, "no heartbeat in time, closing with 4000");
                    self.close(close::UNKNOWN_ERROR);
                }
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        #[derive(Deserialize)]
        struct Payload<'a> {
            op: u8,
            #[serde(borrow, default)]
            d: Option<&'a RawValue>,
        }

        if self.kill_at.is_some() {
            return;
        }
        let Ok(payload) = serde_json::from_str::<Payload<'_>>(text) else {
            return self.close(close::DECODE_ERROR);
        };
        match payload.op {
            op::HEARTBEAT => {
                self.heartbeat_deadline = Instant::now()
                    + protocol::heartbeat_timeout(self.shared.config.heartbeat_interval);
                // A zombie shard's connection looks alive to us but never answers: the
                // client must notice the missing ACK and reconnect by itself.
                if self.shared.heartbeat(&self.handle) {
                    self.handle.send(protocol::heartbeat_ack());
                }
            }
            op::IDENTIFY => self.on_identify(payload.d),
            op::RESUME => self.on_resume(payload.d),
            // Accepted and ignored once authenticated: nothing in the simulator depends on them.
            op::PRESENCE_UPDATE
            | op::VOICE_STATE_UPDATE
            | op::REQUEST_GUILD_MEMBERS
            | op::REQUEST_SOUNDBOARD_SOUNDS => {
                if !self.attached() {
                    self.close(close::NOT_AUTHENTICATED);
                }
            }
            _ => self.close(close::UNKNOWN_OPCODE),
        }
    }

    fn on_identify(&mut self, d: Option<&RawValue>) {
        #[derive(Deserialize)]
        struct Identify {
            token: String,
            #[serde(default)]
            shard: Option<[u32; 2]>,
            // Required by Discord, unused here.
            #[allow(dead_code)]
            intents: IgnoredAny,
            #[allow(dead_code)]
            properties: IgnoredAny,
        }

        if self.attached() {
            return self.close(close::ALREADY_AUTHENTICATED);
        }
        let Some(identify) = parse::<Identify>(d) else {
            return self.close(close::DECODE_ERROR);
        };
        match self
            .shared
            .identify(&self.handle, &identify.token, identify.shard)
        {
            Ok(bound) => self.bound = Some(bound),
            Err(code) => self.close(code),
        }
    }

    fn on_resume(&mut self, d: Option<&RawValue>) {
        #[derive(Deserialize)]
        struct Resume {
            token: String,
            session_id: String,
            seq: Option<u64>,
        }

        if self.attached() {
            return self.close(close::ALREADY_AUTHENTICATED);
        }
        let Some(resume) = parse::<Resume>(d) else {
            return self.close(close::DECODE_ERROR);
        };
        let seq = resume.seq.unwrap_or(0);
        match self
            .shared
            .resume(&self.handle, &resume.token, &resume.session_id, seq)
        {
            Ok(bound) => self.bound = Some(bound),
            // The connection stays open: the client may IDENTIFY on it or reconnect.
            Err(ResumeRefused::InvalidSession) => {
                self.bound = None;
                self.handle.send(protocol::invalid_session(false));
            }
            Err(ResumeRefused::Close(code)) => self.close(code),
        }
    }

    fn on_client_close(&mut self, code: Option<u16>) {
        if let Some(bound) = self.bound.take() {
            // Closing with 1000/1001 ends the session on Discord; other codes keep it
            // resumable. Only the shard's live connection may end it, so a stale connection
            // closing late cannot kill a session that has been resumed elsewhere.
            if matches!(code, Some(1000 | 1001)) && self.shared.is_attached(&bound, self.handle.id)
            {
                self.shared.end_session(&bound);
            }
            self.shared.detach(&bound, self.handle.id);
        }
    }

    /// Queues a close frame (the writer sends it after anything already queued) and takes
    /// the connection off its shard so later dispatches only go to the session log.
    fn close(&mut self, code: u16) {
        if self.kill_at.is_some() {
            return;
        }
        let attached = self.attached();
        if let Some(bound) = &self.bound {
            // Only the live connection speaks for the session (a stale one may linger).
            if attached && protocol::close_invalidates_session(code) {
                self.shared.end_session(bound);
            }
            self.shared.detach(bound, self.handle.id);
        }
        self.handle.close(code);
        self.kill_at = Some(Instant::now() + CLOSE_GRACE);
    }

    /// Whether this connection is its shard's live connection.
    fn attached(&self) -> bool {
        self.bound
            .as_ref()
            .is_some_and(|bound| self.shared.is_attached(bound, self.handle.id))
    }

    fn unbind(&mut self) {
        if let Some(bound) = self.bound.take() {
            self.shared.detach(&bound, self.handle.id);
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(d: Option<&RawValue>) -> Option<T> {
    serde_json::from_str(d?.get()).ok()
}
