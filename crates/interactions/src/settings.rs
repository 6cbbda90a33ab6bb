//! What the running service reads: the `[interactions]` section resolved (key parsed,
//! routes checked, response bytes ready) with the shared sections it needs. Built only by
//! [`Settings::from_config`], which validates first, so the library cannot be handed a
//! value the config check refuses (a 5 s deadline, say).

use std::time::Duration;

use bytes::Bytes;
use relaycord_bus::interaction::Kind;
use relaycord_bus::{StreamSettings, Subjects};

use crate::routes::Routes;
use crate::serve::ServeLimits;
use crate::verify::PublicKey;

#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) public_key: PublicKey,
    /// HTTP path of the endpoint.
    pub(crate) path: String,
    /// HTTP path of webhook events.
    pub(crate) webhook_events_path: String,
    /// From a request's arrival to the deferral when no reply came.
    pub(crate) deadline: Duration,
    /// Accepted clock difference of `X-Signature-Timestamp`.
    pub(crate) timestamp_window: Duration,
    /// Largest accepted body (413 above).
    pub(crate) max_body: usize,
    pub(crate) routes: Routes,
    /// Answer to interactions no route matches; `None`: a deferral.
    pub(crate) default_response: Option<Bytes>,
    /// Shown (ephemeral) when a handler fails or has no responders.
    pub(crate) unavailable_message: String,
    /// Discord REST base for follow-ups.
    pub(crate) api_base: String,
    pub(crate) subjects: Subjects,
    pub(crate) streams: StreamSettings,
    /// How long an HTTP handler may take in total, late replies included.
    pub(crate) http_handler_timeout: Duration,
    /// Follow-ups in flight at once in this replica.
    pub(crate) late_concurrency: usize,
    /// Slots for HTTP handler calls that outlived their deadline (`max_late_http_calls`).
    pub(crate) late_http_calls: std::sync::Arc<tokio::sync::Semaphore>,
    /// Bytes of request bodies held at once, across connections (`max_body_memory`).
    pub(crate) body_budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// Timeouts and the connection cap of the public listener.
    pub(crate) serve: ServeLimits,
}

impl Settings {
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
