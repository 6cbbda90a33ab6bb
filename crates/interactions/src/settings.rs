//! Settings of the interactions service, built with chained setters from defaults.

use std::time::Duration;

use bytes::Bytes;
use relaycord_bus::interaction::Kind;
use relaycord_bus::{StreamSettings, Subjects};

use crate::routes::Routes;
use crate::serve::ServeLimits;
use crate::verify::{DEFAULT_WINDOW, PublicKey};

pub const DEFAULT_PATH: &str = "/interactions";
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(2500);
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;
pub const DEFAULT_UNAVAILABLE_MESSAGE: &str =
    "This action is unavailable right now. Please try again later.";

#[derive(Debug, Clone)]
pub struct Settings {
    pub public_key: PublicKey,
    /// HTTP path of the endpoint. Default `/interactions`.
    pub path: String,
    /// From a request's arrival to the deferral when no reply came. Default 2.5 s
    /// (Discord allows 3 s for the whole round trip).
    pub deadline: Duration,
    /// Accepted clock difference of `X-Signature-Timestamp`. Default 300 s.
    pub timestamp_window: Duration,
    /// Largest accepted body (413 above). Default 256 KiB.
    pub max_body: usize,
    pub routes: Routes,
    /// Answer to interactions no route matches; `None`: a deferral.
    pub default_response: Option<Bytes>,
    /// Shown (ephemeral) when a handler fails or has no responders.
    pub unavailable_message: String,
    /// Discord REST base for follow-ups (`https://discord.com/api`).
    pub api_base: String,
    pub subjects: Subjects,
    pub streams: StreamSettings,
    /// How long an HTTP handler may take in total, late replies included. Default 14 min
    /// (the token lives 15).
    pub http_handler_timeout: Duration,
    /// Follow-ups in flight at once in this replica. Default 32.
    pub late_concurrency: usize,
    /// Timeouts and the connection cap of the public listener.
    pub serve: ServeLimits,
}

impl Settings {
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            path: DEFAULT_PATH.to_owned(),
            deadline: DEFAULT_DEADLINE,
            timestamp_window: DEFAULT_WINDOW,
            max_body: DEFAULT_MAX_BODY,
            routes: Routes::default(),
            default_response: None,
            unavailable_message: DEFAULT_UNAVAILABLE_MESSAGE.to_owned(),
            api_base: "https://discord.com/api".to_owned(),
            subjects: Subjects::default(),
            streams: StreamSettings::default(),
            http_handler_timeout: Duration::from_secs(14 * 60),
            late_concurrency: 32,
            serve: ServeLimits::default(),
        }
    }

    pub fn serve_limits(mut self, limits: ServeLimits) -> Self {
        self.serve = limits;
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn timestamp_window(mut self, window: Duration) -> Self {
        self.timestamp_window = window;
        self
    }

    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    pub fn routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    pub fn default_response(mut self, response: Option<Bytes>) -> Self {
        self.default_response = response;
        self
    }

    pub fn unavailable_message(mut self, message: impl Into<String>) -> Self {
        self.unavailable_message = message.into();
        self
    }

    pub fn api_base(mut self, api_base: impl Into<String>) -> Self {
        self.api_base = api_base.into();
        self
    }

    pub fn subjects(mut self, subjects: Subjects) -> Self {
        self.subjects = subjects;
        self
    }

    pub fn streams(mut self, streams: StreamSettings) -> Self {
        self.streams = streams;
        self
    }

    pub fn http_handler_timeout(mut self, timeout: Duration) -> Self {
        self.http_handler_timeout = timeout;
        self
    }

    /// The answer when a handler fails: the configured message, ephemeral; no
    /// suggestions for autocomplete.
    pub fn unavailable_response(&self, kind: Kind) -> Bytes {
        if kind == Kind::Autocomplete {
            return crate::response::deferral(kind, false);
        }
        let body = serde_json::json!({
            "type": crate::response::callback::CHANNEL_MESSAGE,
            "data": {"content": self.unavailable_message, "flags": 64},
        });
        Bytes::from(body.to_string())
    }
}
