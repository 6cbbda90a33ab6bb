//! Simulated webhook events: Discord's side of an application's *Webhook Events URL*.
//!
//! Discord signs each request like an interaction (ed25519 over timestamp ‖ body, the
//! application's key), checks the URL when it is saved (a PING that must get 204, and a
//! badly signed request that must get 401), and sends every event until it gets a 204
//! within 3 seconds, retrying with exponential backoff for up to 10 minutes. The same
//! event is sent again byte for byte; only the signature headers are new.
//!
//! Bodies follow discord-api-docs' "Webhook Events" examples (CC BY-SA 4.0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::interactions::{APPLICATION_ID, Interactions, SignedRequest};
use crate::{Forgery, Simulator, snowflake};

/// Discord waits this long for the 204.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// The webhook-events side of a simulator: get it with [`Simulator::webhook_events`].
#[derive(Clone)]
pub struct WebhookEvents {
    signer: Interactions,
    /// The last event timestamp handed out (Unix microseconds): each event gets a later one.
    last_micros: Arc<AtomicU64>,
}

impl std::fmt::Debug for WebhookEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEvents").finish_non_exhaustive()
    }
}

/// One webhook event as Discord sends it.
#[derive(Debug, Clone)]
pub struct SimWebhookEvent {
    pub event_type: String,
    /// `event.timestamp`: unique per event built by one simulator.
    pub timestamp: String,
    pub guild_id: Option<String>,
    /// The exact JSON Discord would send (every retry sends these bytes).
    pub body: String,
}

/// How Discord retries an event it got no 204 for.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; doubled after each.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// No attempt starts after this long since the first.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    /// Discord's: backoff for up to 10 minutes.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(120),
            give_up_after: Duration::from_secs(10 * 60),
        }
    }
}

/// What happened to one event: the status of every attempt (0: no answer in 3 s).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub statuses: Vec<u16>,
}

impl Delivery {
    /// Whether the last attempt got the 204 that ends Discord's retries.
    pub fn acknowledged(&self) -> bool {
        self.statuses.last() == Some(&204)
    }
}

impl Simulator {
    /// The webhook-events side of this simulator, signing with the application's key
    /// (the same as interactions').
    pub fn webhook_events(&self) -> WebhookEvents {
        WebhookEvents {
            signer: self.interactions(),
            last_micros: Arc::default(),
        }
    }
}

impl WebhookEvents {
    /// `{"version":1,"application_id":…,"type":0}`: sent when the URL is saved.
    pub fn ping_body(&self) -> String {
        json!({"version": 1, "application_id": APPLICATION_ID, "type": 0}).to_string()
    }

    /// A user added the app: to a server (`guild`: integration type 0) or to their account.
    pub fn authorized(&self, user_id: &str, guild: Option<&str>) -> SimWebhookEvent {
        let mut data = json!({
            "integration_type": if guild.is_some() { 0 } else { 1 },
            "scopes": ["applications.commands"],
            "user": user(user_id),
        });
        if let Some(guild) = guild {
            data["scopes"] = json!(["applications.commands", "bot"]);
            data["guild"] = json!({"id": guild, "name": "Simulated Guild", "icon": null, "owner_id": user_id, "features": []});
        }
        self.event("APPLICATION_AUTHORIZED", guild, data)
    }

    pub fn deauthorized(&self, user_id: &str) -> SimWebhookEvent {
        self.event(
            "APPLICATION_DEAUTHORIZED",
            None,
            json!({"user": user(user_id)}),
        )
    }

    /// `ENTITLEMENT_CREATE`, `_UPDATE` or `_DELETE` (`change`) of an entitlement.
    pub fn entitlement(
        &self,
        change: &str,
        entitlement_id: &str,
        user_id: &str,
        guild: Option<&str>,
    ) -> SimWebhookEvent {
        let data = json!({
            "application_id": APPLICATION_ID,
            "consumed": false,
            "deleted": change == "DELETE",
            "gift_code_flags": 0,
            "id": entitlement_id,
            "promotion_id": null,
            "sku_id": "123489045643835123",
            "type": 4,
            "user_id": user_id,
            "guild_id": guild,
        });
        self.event(&format!("ENTITLEMENT_{change}"), guild, data)
    }

    fn event(&self, event_type: &str, guild: Option<&str>, data: Value) -> SimWebhookEvent {
        let timestamp = self.next_timestamp();
        let body = json!({
            "version": 1,
            "application_id": APPLICATION_ID,
            "type": 1,
            "event": {"type": event_type, "timestamp": timestamp, "data": data},
        });
        SimWebhookEvent {
            event_type: event_type.to_owned(),
            timestamp,
            guild_id: guild.map(str::to_owned),
            body: body.to_string(),
        }
    }

    /// Now, in Discord's format (`2024-10-18T14:42:53.064834`, UTC, no zone), strictly
    /// later than any timestamp handed out before.
    fn next_timestamp(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let mut last = self.last_micros.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(last + 1);
            match self.last_micros.compare_exchange(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(actual) => last = actual,
            }
        };
        iso_micros(micros)
    }

    /// `body` signed now.
    pub fn signed(&self, body: &str) -> SignedRequest {
        self.signer.sign_at(
            body.as_bytes(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        )
    }

    /// Discord's check of a URL being saved: a PING must get 204 and a request with a bad
    /// signature 401. Returns the two statuses.
    pub async fn verify_url(&self, url: &str) -> (u16, u16) {
        let ping = self.ping_body();
        let good = post(url, &self.signed(&ping)).await;
        let probe = crate::interactions::SimInteraction {
            id: String::new(),
            token: String::new(),
            body: ping,
        };
        let bad = post(url, &self.signer.forged(&probe, Forgery::WrongKey)).await;
        (good, bad)
    }

    /// Sends `event` until it is acknowledged with 204 or `policy` gives up, each attempt
    /// signed anew, as Discord does.
    pub async fn deliver(
        &self,
        url: &str,
        event: &SimWebhookEvent,
        policy: RetryPolicy,
    ) -> Delivery {
        let started = Instant::now();
        let mut delivery = Delivery::default();
        let mut delay = policy.first_delay;
        loop {
            let status = post(url, &self.signed(&event.body)).await;
            delivery.statuses.push(status);
            if status == 204 || started.elapsed() + delay > policy.give_up_after {
                return delivery;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(policy.max_delay);
        }
    }
}

fn user(id: &str) -> Value {
    json!({"id": id, "username": format!("user{}", &id[id.len().saturating_sub(4)..]), "discriminator": "0", "global_name": null, "avatar": null, "public_flags": 0})
}

/// POSTs `request` to `url` (`http://host:port/path`) over a new connection and returns
/// the status, or 0 when no status line came within [`ACK_TIMEOUT`] (Discord counts that
/// as not acknowledged). Plain HTTP/1.1 on purpose: the simulator talks to loopback.
pub async fn post(url: &str, request: &SignedRequest) -> u16 {
    tokio::time::timeout(ACK_TIMEOUT, post_once(url, request))
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

async fn post_once(url: &str, request: &SignedRequest) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/"), |(a, _)| (a, &rest[a.len()..]));
    let mut stream = TcpStream::connect(authority).await.ok()?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: Discord-Webhook-Simulator\r\n",
        request.body.len()
    );
    for (name, value) in request.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(&request.body).await.ok()?;
    let mut response = Vec::new();
    let mut buf = [0; 512];
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        response.extend_from_slice(&buf[..n]);
    }
    // "HTTP/1.1 204 No Content"
    let line = std::str::from_utf8(&response).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Unix microseconds as `YYYY-MM-DDTHH:MM:SS.ffffff` (UTC).
fn iso_micros(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        micros % 1_000_000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A user id for simulated events: a fresh snowflake.
pub fn new_user_id() -> String {
    snowflake::compose(snowflake::unix_ms(), rand::random::<u16>().into()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_discords_and_never_repeat() {
        assert_eq!(iso_micros(0), "1970-01-01T00:00:00.000000");
        assert_eq!(
            iso_micros(1_729_262_573_064_834),
            "2024-10-18T14:42:53.064834"
        );
        assert_eq!(
            iso_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001"
        );
        let events = WebhookEvents {
            signer: Interactions::new(crate::DiscordRest::new("token")),
            last_micros: Arc::default(),
        };
        let a = events.deauthorized("5");
        let b = events.deauthorized("5");
        assert!(
            b.timestamp > a.timestamp,
            "{} then {}",
            a.timestamp,
            b.timestamp
        );
        assert_ne!(a.body, b.body);
    }
}
