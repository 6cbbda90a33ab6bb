//! Simulated HTTP interactions: Discord's side of them.
//!
//! - A signer with a real ed25519 key builds well-formed commands, components, modal
//!   submits, autocomplete and PINGs, signs them as Discord does (timestamp ‖ body), and
//!   builds Discord's kinds of bad requests ([`Forgery`]).
//! - REST endpoints record every call a bot makes to answer: the callback
//!   (`POST /interactions/{id}/{token}/callback`), the original-response edit
//!   (`PATCH /webhooks/{app}/{token}/messages/@original`) and follow-ups
//!   (`POST /webhooks/{app}/{token}`), refusing unknown and expired tokens like Discord
//!   (tokens live 15 minutes; the callback is accepted once, within 3 seconds).
//!
//! The simulator does not see the HTTP response a bot's endpoint gives (the test sends
//! the request), so an edit of `@original` is accepted for any live token.
//!
//! Payloads are adapted from Discord's documented example interaction
//! (discord/discord-api-docs, CC BY-SA 4.0).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::Simulator;
use crate::discord_rest::DiscordRest;
use crate::snowflake;
use crate::state::Shared;

/// The application the simulated interactions belong to (from Discord's example).
pub const APPLICATION_ID: &str = "775799577604522054";

const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
const CALLBACK_WINDOW: Duration = Duration::from_secs(3);

/// Simulated interactions of one simulator: get it with [`Simulator::interactions`].
#[derive(Clone)]
pub struct Interactions {
    desk: Arc<Desk>,
}

impl std::fmt::Debug for Interactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interactions")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

struct Desk {
    /// The simulator's message-posting side, which answers incoming webhooks.
    rest: DiscordRest,
    key: SigningKey,
    tokens: Mutex<HashMap<String, TokenState>>,
    calls: Mutex<Vec<RestCall>>,
    changed: Notify,
    next_id: AtomicU64,
    /// How long an edit of `@original` or a follow-up takes to be answered.
    follow_up_delay: Mutex<Duration>,
}

struct TokenState {
    interaction_id: String,
    issued: Instant,
    expired: bool,
    acknowledged: bool,
}

/// One interaction built by the signer.
#[derive(Debug, Clone)]
pub struct SimInteraction {
    pub id: String,
    pub token: String,
    /// The exact JSON Discord would send.
    pub body: String,
}

/// A request ready to send: body and the signature headers (absent when forged so).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub body: Vec<u8>,
    pub signature: Option<String>,
    pub timestamp: Option<String>,
}

impl SignedRequest {
    /// `(name, value)` of the headers to set.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(s) = &self.signature {
            headers.push(("x-signature-ed25519", s.clone()));
        }
        if let Some(t) = &self.timestamp {
            headers.push(("x-signature-timestamp", t.clone()));
        }
        headers
    }
}

/// Discord's kinds of bad requests: it probes endpoints with some of these, and an
/// attacker can send any of them. All but `MalformedBody` must get 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// A well-formed signature by another key.
    WrongKey,
    /// The signature of another body.
    TamperedBody,
    /// The body cut short after signing the whole of it.
    TruncatedBody,
    /// Correctly signed, 10 minutes old (a replay).
    StaleTimestamp,
    /// Correctly signed, 10 minutes ahead.
    FutureTimestamp,
    MissingSignature,
    MissingTimestamp,
    MissingHeaders,
    /// Not hex.
    BadHex,
    /// Hex, but 63 bytes.
    ShortSignature,
    /// Correctly signed, but not valid JSON: must get 400.
    MalformedBody,
}

impl Forgery {
    pub const ALL: [Forgery; 11] = [
        Self::WrongKey,
        Self::TamperedBody,
        Self::TruncatedBody,
        Self::StaleTimestamp,
        Self::FutureTimestamp,
        Self::MissingSignature,
        Self::MissingTimestamp,
        Self::MissingHeaders,
        Self::BadHex,
        Self::ShortSignature,
        Self::MalformedBody,
    ];
}

/// Which REST endpoint a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestCallKind {
    Callback,
    EditOriginal,
    FollowUp,
}

/// A REST call the simulator received, with the answer it gave.
#[derive(Debug, Clone)]
pub struct RestCall {
    pub kind: RestCallKind,
    /// The interaction the token belongs to; `None` for an unknown token.
    pub interaction_id: Option<String>,
    pub status: u16,
    pub body: Value,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Interactions {
    /// The key to configure as the application's public key (hex).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.desk.key.verifying_key().as_bytes())
    }

    pub fn application_id(&self) -> &'static str {
        APPLICATION_ID
    }

    fn issue(&self) -> (String, String) {
        let n = self.desk.next_id.fetch_add(1, Ordering::Relaxed);
        let id = snowflake::compose(snowflake::unix_ms(), n).to_string();
        let token = format!("simtoken_{id}_{:016x}", rand::random::<u64>());
        lock(&self.desk.tokens).insert(
            token.clone(),
            TokenState {
                interaction_id: id.clone(),
                issued: Instant::now(),
                expired: false,
                acknowledged: false,
            },
        );
        (id, token)
    }

    fn build(&self, interaction_type: u8, data: Option<Value>) -> SimInteraction {
        let (id, token) = self.issue();
        let mut body = json!({
            "application_id": APPLICATION_ID,
            "type": interaction_type,
            "token": token,
            "id": id,
            "version": 1,
        });
        if let Some(data) = data {
            // The invoking member, guild and channel of Discord's example interaction.
            let extra = json!({
                "member": {"user": {"id": "53908232506183680", "username": "Mason", "avatar": "a_d5efa99b3eeaa7dd43acca82f5692432", "discriminator": "1337", "public_flags": 131141}, "roles": ["539082325061836999"], "premium_since": null, "permissions": "2147483647", "pending": false, "nick": null, "mute": false, "joined_at": "2017-03-13T19:19:14.040000+00:00", "is_pending": false, "deaf": false},
                "guild_id": "290926798626357999",
                "app_permissions": "442368",
                "guild_locale": "en-US",
                "locale": "en-US",
                "channel_id": "645027906669510667",
                "data": data,
            });
            let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) else {
                unreachable!("both are objects");
            };
            body.extend(extra);
        }
        SimInteraction {
            id,
            token,
            body: body.to_string(),
        }
    }

    pub fn ping(&self) -> SimInteraction {
        self.build(1, None)
    }

    /// A slash command with one string option (Discord's "cardsearch" example, renamed).
    pub fn command(&self, name: &str) -> SimInteraction {
        self.build(
            2,
            Some(json!({"options": [{"type": 3, "name": "cardname", "value": "The Gitrog Monster"}], "type": 1, "name": name, "id": "771825006014889984"})),
        )
    }

    /// A button click with this `custom_id`.
    pub fn component(&self, custom_id: &str) -> SimInteraction {
        self.build(
            3,
            Some(json!({"custom_id": custom_id, "component_type": 2})),
        )
    }

    /// A modal submit with one text input.
    pub fn modal(&self, custom_id: &str) -> SimInteraction {
        self.build(
            5,
            Some(json!({"custom_id": custom_id, "components": [{"type": 1, "components": [{"type": 4, "custom_id": "answer", "value": "It's \"great\" — 🔥"}]}]})),
        )
    }

    /// Autocomplete of a command's focused string option.
    pub fn autocomplete(&self, command: &str) -> SimInteraction {
        self.build(
            4,
            Some(json!({"type": 1, "name": command, "id": "771825006014889984", "options": [{"type": 3, "name": "animal", "value": "Pe", "focused": true}]})),
        )
    }

    /// Signs `body` as Discord would at Unix time `timestamp`.
    pub fn sign_at(&self, body: &[u8], timestamp: u64) -> SignedRequest {
        let timestamp = timestamp.to_string();
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        SignedRequest {
            body: body.to_vec(),
            signature: Some(hex::encode(self.desk.key.sign(&message).to_bytes())),
            timestamp: Some(timestamp),
        }
    }

    /// A valid request for `interaction`, signed now.
    pub fn signed(&self, interaction: &SimInteraction) -> SignedRequest {
        self.sign_at(interaction.body.as_bytes(), now_secs())
    }

    /// A bad request built from `interaction`.
    pub fn forged(&self, interaction: &SimInteraction, forgery: Forgery) -> SignedRequest {
        let body = interaction.body.as_bytes();
        let now = now_secs();
        let mut request = self.sign_at(body, now);
        match forgery {
            Forgery::WrongKey => {
                let other = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                let mut message = now.to_string().into_bytes();
                message.extend_from_slice(body);
                request.signature = Some(hex::encode(other.sign(&message).to_bytes()));
            }
            Forgery::TamperedBody => {
                request.body = interaction
                    .body
                    .replacen("\"version\":1", "\"version\":2", 1)
                    .into_bytes();
                if request.body == body {
                    request.body.insert(1, b' ');
                }
            }
            Forgery::TruncatedBody => request.body.truncate(body.len() / 2),
            Forgery::StaleTimestamp => request = self.sign_at(body, now - 600),
            Forgery::FutureTimestamp => request = self.sign_at(body, now + 600),
            Forgery::MissingSignature => request.signature = None,
            Forgery::MissingTimestamp => request.timestamp = None,
            Forgery::MissingHeaders => {
                request.signature = None;
                request.timestamp = None;
            }
            Forgery::BadHex => {
                let sig = request.signature.take().unwrap_or_default();
                request.signature = Some(format!("zz{}", &sig[2..]));
            }
            Forgery::ShortSignature => {
                let sig = request.signature.take().unwrap_or_default();
                request.signature = Some(sig[..126].to_owned());
            }
            Forgery::MalformedBody => {
                request = self.sign_at(&body[..body.len() - 1], now);
            }
        }
        request
    }

    /// Makes `token` older than its 15-minute life.
    pub fn expire(&self, token: &str) {
        if let Some(state) = lock(&self.desk.tokens).get_mut(token) {
            state.expired = true;
        }
    }

    /// Edits of `@original` and follow-ups are answered (and recorded) only after
    /// `delay`: a slow Discord, for callers that must not give up or retry too soon.
    pub fn set_follow_up_delay(&self, delay: Duration) {
        *lock(&self.desk.follow_up_delay) = delay;
    }

    /// Every REST call received so far, in order.
    pub fn calls(&self) -> Vec<RestCall> {
        lock(&self.desk.calls).clone()
    }

    /// Waits for a call matching `predicate`; `None` after `timeout`.
    pub async fn wait_call(
        &self,
        timeout: Duration,
        predicate: impl Fn(&RestCall) -> bool,
    ) -> Option<RestCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.desk.changed.notified();
            if let Some(call) = lock(&self.desk.calls).iter().find(|c| predicate(c)) {
                return Some(call.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

impl Simulator {
    /// The interactions side of this simulator: signer and received REST calls.
    pub fn interactions(&self) -> Interactions {
        self.shared().interactions.clone()
    }
}

impl Interactions {
    /// A new desk with its own signing key, passing incoming webhooks on to `rest`.
    pub(crate) fn new(rest: DiscordRest) -> Self {
        Self {
            desk: Arc::new(Desk {
                rest,
                key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
                tokens: Mutex::default(),
                calls: Mutex::default(),
                changed: Notify::new(),
                next_id: AtomicU64::new(0),
                follow_up_delay: Mutex::default(),
            }),
        }
    }
}

/// The REST routes, merged into the simulator's router.
pub(crate) fn routes(shared: &Shared) -> Router<Arc<Shared>> {
    let desk = Arc::clone(&shared.interactions.desk);
    let router = Router::new();
    let router = ["/api", "/api/v10"]
        .into_iter()
        .fold(router, |router, base| {
            router
                .route(
                    &format!("{base}/interactions/{{id}}/{{token}}/callback"),
                    post(callback),
                )
                .route(
                    &format!("{base}/webhooks/{{app}}/{{token}}/messages/@original"),
                    patch(webhook),
                )
                .route(
                    &format!("{base}/webhooks/{{app}}/{{token}}"),
                    post(webhook_post),
                )
        });
    router.with_state(desk)
}

fn discord_error(status: StatusCode, message: &str, code: u32) -> (StatusCode, Value) {
    (status, json!({"message": message, "code": code}))
}

impl Desk {
    fn record(
        &self,
        kind: RestCallKind,
        interaction_id: Option<String>,
        status: StatusCode,
        body: Value,
    ) -> Response {
        lock(&self.calls).push(RestCall {
            kind,
            interaction_id,
            status: status.as_u16(),
            body: body.clone(),
        });
        self.changed.notify_waiters();
        if status == StatusCode::NO_CONTENT {
            status.into_response()
        } else {
            (status, Json(body)).into_response()
        }
    }
}

fn json_object(body: &Bytes) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

async fn callback(
    State(desk): State<Arc<Desk>>,
    Path((id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (status, answer, owner) = {
        let mut tokens = lock(&desk.tokens);
        match tokens.get_mut(&token).filter(|t| t.interaction_id == id) {
            None => {
                let (s, b) = discord_error(StatusCode::NOT_FOUND, "Unknown interaction", 10062);
                (s, b, None)
            }
            Some(t) if t.expired || t.issued.elapsed() > CALLBACK_WINDOW => {
                let (s, b) = discord_error(StatusCode::NOT_FOUND, "Unknown interaction", 10062);
                (s, b, Some(id.clone()))
            }
            Some(t) if t.acknowledged => {
                let (s, b) = discord_error(
                    StatusCode::BAD_REQUEST,
                    "Interaction has already been acknowledged.",
                    40060,
                );
                (s, b, Some(id.clone()))
            }
            Some(t) => match json_object(&body).filter(|b| b["type"].is_u64()) {
                Some(response) => {
                    t.acknowledged = true;
                    (StatusCode::NO_CONTENT, response, Some(id.clone()))
                }
                None => {
                    let (s, b) = discord_error(StatusCode::BAD_REQUEST, "Invalid Form Body", 50035);
                    (s, b, Some(id.clone()))
                }
            },
        }
    };
    // The call records what the bot sent when accepted, Discord's error otherwise.
    desk.record(RestCallKind::Callback, owner, status, answer)
}

/// `POST /webhooks/{id}/{token}` is two things at Discord: an interaction follow-up when
/// `id` is the application id, otherwise an incoming webhook's execute, which the
/// message-posting side (`discord_rest`) answers.
async fn webhook_post(
    State(desk): State<Arc<Desk>>,
    method: Method,
    Path((app, token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if app != APPLICATION_ID {
        return crate::discord_rest::execute_webhook(
            State(desk.rest.clone()),
            Path((app, token)),
            Query(query),
            body,
        )
        .await;
    }
    webhook(State(desk), method, Path((app, token)), body).await
}

async fn webhook(
    State(desk): State<Arc<Desk>>,
    method: Method,
    Path((app, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let delay = *lock(&desk.follow_up_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let kind = if method == Method::PATCH {
        RestCallKind::EditOriginal
    } else {
        RestCallKind::FollowUp
    };
    let (owner, alive) = {
        let tokens = lock(&desk.tokens);
        match tokens.get(&token) {
            Some(t) => (
                Some(t.interaction_id.clone()),
                app == APPLICATION_ID && !t.expired && t.issued.elapsed() < TOKEN_LIFETIME,
            ),
            None => (None, false),
        }
    };
    if !alive {
        let (status, error) = discord_error(StatusCode::NOT_FOUND, "Unknown Webhook", 10015);
        return desk.record(kind, owner, status, error);
    }
    match json_object(&body) {
        Some(message) => desk.record(kind, owner, StatusCode::OK, message),
        None => {
            let (status, error) =
                discord_error(StatusCode::BAD_REQUEST, "Invalid Form Body", 50035);
            desk.record(kind, owner, status, error)
        }
    }
}
