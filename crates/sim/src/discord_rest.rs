//! Discord's message-posting REST endpoints, as the discord sink uses them:
//! `POST /api/v10/channels/{id}/messages` (bot token, `nonce` + `enforce_nonce`) and
//! `POST /api/v10/webhooks/{id}/{token}?wait=true` (incoming webhooks).
//!
//! Rate limits behave like Discord's: every answer carries `X-RateLimit-Limit`,
//! `-Remaining`, `-Reset`, `-Reset-After` and `-Bucket` for its route (fixed windows);
//! going over answers 429 with `retry_after`, `global` and `X-RateLimit-Scope`. Bot
//! requests also share a global limit (50 per second by default). Bodies are validated
//! against Discord's message limits, and everything received is recorded, including
//! whether the message would have pinged anyone.
//!
//! The channel routes are merged into the simulator's router. The webhook route shares
//! its path with interaction follow-ups (`/webhooks/{application}/{token}`), which the
//! interactions side serves there, so [`DiscordRest::start`] serves both on a listener
//! of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::Simulator;
use crate::state::Shared;

mod echo;

/// Per-route and global limits. Defaults are Discord's documented-in-practice values.
#[derive(Clone, Copy, Debug)]
pub struct RestLimits {
    /// Messages per window on one channel (Discord: 5 per 5 s).
    pub channel: (u32, Duration),
    /// Executions per window on one webhook (Discord: 5 per 2 s).
    pub webhook: (u32, Duration),
    /// Bot requests per second over all routes (Discord: 50).
    pub global_per_second: u32,
}

impl Default for RestLimits {
    fn default() -> Self {
        Self {
            channel: (5, Duration::from_secs(5)),
            webhook: (5, Duration::from_secs(2)),
            global_per_second: 50,
        }
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct PostedMessage {
    /// `channel:<id>` or `webhook:<id>`.
    pub route: String,
    pub status: u16,
    pub body: Value,
    /// The content or embeds hold a mention that Discord would act on with this
    /// `allowed_mentions` (absent means Discord parses every mention).
    pub would_mention: bool,
}

/// Counters a test reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestCounts {
    pub requests: u64,
    pub created: u64,
    /// 429 answers of any scope.
    pub rate_limited: u64,
    pub global_rate_limited: u64,
    /// Requests answered with an existing message because of `enforce_nonce`.
    pub nonce_duplicates: u64,
    /// 401, 403 and 429 answers: what Discord counts toward its invalid-request ban
    /// (429s of `shared` scope excepted, as at Discord).
    pub invalid: u64,
    /// Requests that came before the `retry_after` of a 429 injected with
    /// [`DiscordRest::rate_limit_next`] had passed (on its route, or anywhere when global).
    pub early: u64,
}

/// Handle on the REST side; cheap to clone.
#[derive(Clone, Debug)]
pub struct DiscordRest {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    token: String,
    state: Mutex<RestState>,
    echo: echo::Echo,
}

#[derive(Debug, Default)]
struct RestState {
    limits: RestLimits,
    windows: HashMap<String, Window>,
    global: Window,
    nonces: HashMap<(String, String), Value>,
    missing: HashSet<String>,
    forbidden: HashSet<String>,
    posted: Vec<PostedMessage>,
    counts: RestCounts,
    next_id: u64,
    injected: Injected,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: Option<Instant>,
    used: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Simulator {
    /// The message-posting REST side of this simulator (channel routes, and incoming
    /// webhooks whose id is not the application's).
    pub fn discord_rest(&self) -> DiscordRest {
        self.shared().rest.clone()
    }
}

/// The channel routes, merged into the simulator's router.
pub(crate) fn routes(shared: &Shared) -> Router<Arc<Shared>> {
    channel_routes(Router::new()).with_state(shared.rest.clone())
}

fn channel_routes(router: Router<DiscordRest>) -> Router<DiscordRest> {
    router
        .route("/api/v10/channels/{id}/messages", post(channel_message))
        .route("/api/channels/{id}/messages", post(channel_message))
}

impl DiscordRest {
    /// A REST side accepting `Authorization: Bot <token>`.
    pub fn new(token: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                token: token.to_owned(),
                state: Mutex::default(),
                echo: echo::Echo::default(),
            }),
        }
    }

    /// Serves the channel and webhook routes on `listener` (base URL
    /// `http://ADDR/api`) until the runtime stops.
    pub fn start(listener: TcpListener, token: &str) -> Self {
        let rest = Self::new(token);
        let app = channel_routes(Router::new())
            .route("/api/v10/webhooks/{id}/{token}", post(execute_webhook))
            .route("/api/webhooks/{id}/{token}", post(execute_webhook))
            .fallback(|| async { discord_error(StatusCode::NOT_FOUND, "404: Not Found", 0) })
            .with_state(rest.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        rest
    }

    pub fn set_limits(&self, limits: RestLimits) {
        lock(&self.inner.state).limits = limits;
    }

    /// Requests to this channel or webhook id answer 404 (Unknown Channel / Webhook).
    pub fn set_missing(&self, id: &str) {
        lock(&self.inner.state).missing.insert(id.to_owned());
    }

    /// Requests to this channel answer 403 (Missing Access).
    pub fn set_forbidden(&self, id: &str) {
        lock(&self.inner.state).forbidden.insert(id.to_owned());
    }

    /// Messages created from now on come back as MESSAGE_CREATE on this gateway.
    pub(crate) fn attach_gateway(&self, shared: &Arc<Shared>) {
        self.inner.echo.attach(shared);
    }

    /// The channel this webhook's messages appear in (default: the first simulated
    /// guild's first channel).
    pub fn set_webhook_channel(&self, webhook: &str, channel: &str) {
        self.inner.echo.set_webhook_channel(webhook, channel);
    }

    /// The next `count` message requests (any route) answer 429 with this
    /// `retry_after`, in the body and in `Retry-After`, and this `X-RateLimit-Scope`;
    /// a request before the wait is over is counted in [`RestCounts::early`].
    pub fn rate_limit_next(&self, count: u32, retry_after: Duration, scope: RateLimitScope) {
        let injected = &mut lock(&self.inner.state).injected;
        injected
            .next
            .extend(std::iter::repeat_n((retry_after, scope), count as usize));
    }

    pub fn posted(&self) -> Vec<PostedMessage> {
        lock(&self.inner.state).posted.clone()
    }

    pub fn counts(&self) -> RestCounts {
        lock(&self.inner.state).counts
    }
}

async fn channel_message(
    State(rest): State<DiscordRest>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = format!("Bot {}", rest.inner.token);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let mut state = lock(&rest.inner.state);
    state.counts.requests += 1;
    if !authorized {
        state.counts.invalid += 1;
        return discord_error(StatusCode::UNAUTHORIZED, "401: Unauthorized", 0);
    }
    if let Some(limited) = state.take_global() {
        return limited;
    }
    let route = format!("channel:{id}");
    if state.missing.contains(&id) {
        return discord_error(StatusCode::NOT_FOUND, "Unknown Channel", 10003);
    }
    if state.forbidden.contains(&id) {
        state.counts.invalid += 1;
        return discord_error(StatusCode::FORBIDDEN, "Missing Access", 50001);
    }
    let limit = state.limits.channel;
    let (message, rl) = match state.admit(&route, limit, &body) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    // enforce_nonce: the same nonce in the same channel returns the first message.
    if message["enforce_nonce"] == true
        && let Some(nonce) = message["nonce"].as_str().map(str::to_owned)
    {
        let key = (id.clone(), nonce);
        if let Some(existing) = state.nonces.get(&key).cloned() {
            state.counts.nonce_duplicates += 1;
            state.record(&route, 200, message);
            return with_headers(Json(existing).into_response(), &rl);
        }
        let created = state.create(&id, &route, message);
        state.nonces.insert(key, created.clone());
        drop(state);
        rest.inner.echo.message_created(&created, None);
        return with_headers(Json(created).into_response(), &rl);
    }
    let created = state.create(&id, &route, message);
    drop(state);
    rest.inner.echo.message_created(&created, None);
    with_headers(Json(created).into_response(), &rl)
}

pub(crate) async fn execute_webhook(
    State(rest): State<DiscordRest>,
    Path((id, _token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let channel = rest.inner.echo.webhook_channel(&id);
    let mut state = lock(&rest.inner.state);
    state.counts.requests += 1;
    let route = format!("webhook:{id}");
    if state.missing.contains(&id) {
        return discord_error(StatusCode::NOT_FOUND, "Unknown Webhook", 10015);
    }
    let limit = state.limits.webhook;
    let (message, rl) = match state.admit(&route, limit, &body) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    let name = message["username"].as_str().map(str::to_owned);
    let created = state.create(&channel, &route, message);
    drop(state);
    rest.inner
        .echo
        .message_created(&created, Some((&id, name.as_deref())));
    if query.get("wait").is_some_and(|w| w == "true") {
        with_headers(Json(created).into_response(), &rl)
    } else {
        with_headers(StatusCode::NO_CONTENT.into_response(), &rl)
    }
}

/// The rate-limit headers of one answer.
struct RateHeaders {
    limit: u32,
    remaining: u32,
    reset_after: Duration,
    bucket: String,
}

fn with_headers(mut response: Response, rl: &RateHeaders) -> Response {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + rl.reset_after;
    let h = response.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("x-ratelimit-limit", rl.limit.to_string());
    put("x-ratelimit-remaining", rl.remaining.to_string());
    put("x-ratelimit-reset", format!("{:.3}", reset.as_secs_f64()));
    put(
        "x-ratelimit-reset-after",
        format!("{:.3}", rl.reset_after.as_secs_f64()),
    );
    put("x-ratelimit-bucket", rl.bucket.clone());
    response
}

fn discord_error(status: StatusCode, message: &str, code: u32) -> Response {
    (status, Json(json!({ "message": message, "code": code }))).into_response()
}

fn too_many(retry_after: Duration, global: bool, rl: Option<&RateHeaders>) -> Response {
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": (retry_after.as_secs_f64() * 1000.0).ceil() / 1000.0,
        "global": global,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    if let Some(rl) = rl {
        response = with_headers(response, rl);
    }
    let h = response.headers_mut();
    h.insert(
        "retry-after",
        HeaderValue::from(retry_after.as_secs_f64().ceil() as u64),
    );
    h.insert(
        "x-ratelimit-scope",
        HeaderValue::from_static(if global { "global" } else { "user" }),
    );
    if global {
        h.insert("x-ratelimit-global", HeaderValue::from_static("true"));
    }
    response
}

impl RestState {
    /// Counts a bot request against the global limit (fixed one-second windows).
    fn take_global(&mut self) -> Option<Response> {
        let now = Instant::now();
        let w = &mut self.global;
        if w.start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            *w = Window {
                start: Some(now),
                used: 0,
            };
        }
        if w.used >= self.limits.global_per_second {
            let retry = Duration::from_secs(1).saturating_sub(now.duration_since(w.start?));
            self.counts.rate_limited += 1;
            self.counts.global_rate_limited += 1;
            self.counts.invalid += 1;
            return Some(too_many(retry, true, None));
        }
        w.used += 1;
        None
    }

    /// Counts a request against its route's window, or answers 429.
    fn take_route(
        &mut self,
        route: &str,
        (limit, per): (u32, Duration),
    ) -> Result<RateHeaders, Box<Response>> {
        let now = Instant::now();
        if let Some(refused) = self.injected.check(route, now, &mut self.counts) {
            return Err(refused);
        }
        let w = self.windows.entry(route.to_owned()).or_default();
        if w.start.is_none_or(|s| now.duration_since(s) >= per) {
            *w = Window {
                start: Some(now),
                used: 0,
            };
        }
        let reset_after = per.saturating_sub(now.duration_since(w.start.unwrap_or(now)));
        let bucket = format!("{:016x}", fxhash(route));
        if w.used >= limit {
            self.counts.rate_limited += 1;
            self.counts.invalid += 1;
            let rl = RateHeaders {
                limit,
                remaining: 0,
                reset_after,
                bucket,
            };
            return Err(Box::new(too_many(reset_after, false, Some(&rl))));
        }
        w.used += 1;
        Ok(RateHeaders {
            limit,
            remaining: limit - w.used,
            reset_after,
            bucket,
        })
    }

    /// Checks the body against Discord's limits; records and answers 400 if it breaks one.
    /// Rate limit, then validate the body: a refused request carries the route's
    /// rate-limit headers like any other answer.
    fn admit(
        &mut self,
        route: &str,
        limit: (u32, Duration),
        body: &Bytes,
    ) -> Result<(Value, RateHeaders), Box<Response>> {
        let rl = self.take_route(route, limit)?;
        match self.accept(route, body) {
            Ok(message) => Ok((message, rl)),
            Err(refused) => Err(Box::new(with_headers(*refused, &rl))),
        }
    }

    fn accept(&mut self, route: &str, body: &Bytes) -> Result<Value, Box<Response>> {
        let Some(message) = serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
        else {
            self.record(route, 400, Value::Null);
            return Err(Box::new(discord_error(
                StatusCode::BAD_REQUEST,
                "Invalid Form Body",
                50035,
            )));
        };
        if let Some(problem) = invalid_message(&message) {
            self.record(route, 400, message);
            return Err(Box::new(discord_error(
                StatusCode::BAD_REQUEST,
                problem,
                50035,
            )));
        }
        Ok(message)
    }

    fn create(&mut self, channel: &str, route: &str, message: Value) -> Value {
        self.next_id += 1;
        self.counts.created += 1;
        let created = json!({
            "id": (1_300_000_000_000_000_000u64 + self.next_id).to_string(),
            "channel_id": channel,
            "content": message["content"],
            "embeds": message.get("embeds").cloned().unwrap_or_else(|| json!([])),
            "nonce": message.get("nonce").cloned().unwrap_or(Value::Null),
            "mentions": [],
            "mention_everyone": false,
            "type": 0,
        });
        self.record(route, 200, message);
        created
    }

    fn record(&mut self, route: &str, status: u16, body: Value) {
        let would_mention = would_mention(&body);
        self.posted.push(PostedMessage {
            route: route.to_owned(),
            status,
            body,
            would_mention,
        });
    }
}

/// Discord's message limits: 2000 characters of content, 10 embeds, 6000 characters
/// over all embeds, and not empty.
fn invalid_message(m: &Value) -> Option<&'static str> {
    let content = m["content"].as_str().unwrap_or_default();
    let embeds = m["embeds"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if content.chars().count() > 2000 {
        return Some("content: Must be 2000 or fewer in length.");
    }
    if embeds.len() > 10 {
        return Some("embeds: Must be 10 or fewer in length.");
    }
    let embed_chars: usize = embeds.iter().map(embed_chars).sum();
    if embed_chars > 6000 {
        return Some("embeds: Embed size exceeds maximum size of 6000");
    }
    if content.is_empty() && embeds.is_empty() {
        return Some("Cannot send an empty message");
    }
    None
}

fn embed_chars(e: &Value) -> usize {
    let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    len(&e["title"])
        + len(&e["description"])
        + len(&e["footer"]["text"])
        + len(&e["author"]["name"])
        + e["fields"].as_array().map_or(0, |f| {
            f.iter().map(|f| len(&f["name"]) + len(&f["value"])).sum()
        })
}

/// Whether Discord would notify anyone for this message body.
fn would_mention(m: &Value) -> bool {
    // Only content pings: mentions inside embeds are displayed but never notify.
    let text = m["content"].as_str().unwrap_or_default();
    let everyone = text.contains("@everyone") || text.contains("@here");
    let user = has_tag(text, "<@") || has_tag(text, "<@!");
    let role = has_tag(text, "<@&");
    if !(everyone || user || role) {
        return false;
    }
    let Some(allowed) = m.get("allowed_mentions") else {
        return true;
    };
    let parse: Vec<&str> = allowed["parse"]
        .as_array()
        .map(|p| p.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let listed = |k: &str| allowed[k].as_array().is_some_and(|a| !a.is_empty());
    (everyone && parse.contains(&"everyone"))
        || (user && (parse.contains(&"users") || listed("users")))
        || (role && (parse.contains(&"roles") || listed("roles")))
}

/// `<@123>`-style tags (the prefix followed by digits and `>`).
fn has_tag(text: &str, prefix: &str) -> bool {
    text.match_indices(prefix).any(|(i, _)| {
        let rest = &text[i + prefix.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with('>')
    })
}

/// `X-RateLimit-Scope` of an injected 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitScope {
    /// The bot's own per-route limit.
    User,
    /// The bot's global limit: every route waits.
    Global,
    /// A limit shared by everyone on the resource; Discord does not count it as invalid.
    Shared,
}

/// 429s answered on purpose, and the waits they asked for.
#[derive(Debug, Default)]
struct Injected {
    next: std::collections::VecDeque<(Duration, RateLimitScope)>,
    until: HashMap<String, Instant>,
    global_until: Option<Instant>,
}

impl Injected {
    fn check(
        &mut self,
        route: &str,
        now: Instant,
        counts: &mut RestCounts,
    ) -> Option<Box<Response>> {
        let waiting = self.until.get(route).is_some_and(|t| now < *t)
            || self.global_until.is_some_and(|t| now < t);
        if waiting {
            counts.early += 1;
        }
        let (retry_after, scope) = self.next.pop_front()?;
        counts.rate_limited += 1;
        if scope != RateLimitScope::Shared {
            counts.invalid += 1;
        }
        let global = scope == RateLimitScope::Global;
        if global {
            counts.global_rate_limited += 1;
            self.global_until = Some(now + retry_after);
        } else {
            self.until.insert(route.to_owned(), now + retry_after);
        }
        let rl = RateHeaders {
            limit: 5,
            remaining: 0,
            reset_after: retry_after,
            bucket: format!("{:016x}", fxhash(route)),
        };
        let mut response = too_many(retry_after, global, (!global).then_some(&rl));
        if scope == RateLimitScope::Shared {
            response
                .headers_mut()
                .insert("x-ratelimit-scope", HeaderValue::from_static("shared"));
        }
        Some(Box::new(response))
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_follow_allowed_mentions() {
        assert!(would_mention(&json!({"content": "hi @everyone"})));
        assert!(would_mention(
            &json!({"content": "hi <@80351110224678912>"})
        ));
        assert!(!would_mention(
            &json!({"content": "hi @everyone <@1> <@&2>", "allowed_mentions": {"parse": []}})
        ));
        assert!(would_mention(
            &json!({"content": "<@&2>", "allowed_mentions": {"parse": ["roles"]}})
        ));
        assert!(!would_mention(&json!({"content": "mail me at a@b.c <@x>"})));
    }

    #[test]
    fn message_limits_are_discords() {
        assert!(invalid_message(&json!({"content": "x"})).is_none());
        assert!(invalid_message(&json!({"content": "x".repeat(2001)})).is_some());
        assert!(invalid_message(&json!({"embeds": vec![json!({"title": "t"}); 11]})).is_some());
        assert!(
            invalid_message(&json!({"embeds": [{"description": "x".repeat(4096)}, {"description": "x".repeat(2000)}]}))
                .is_some()
        );
        assert!(invalid_message(&json!({"content": ""})).is_some());
    }
}
