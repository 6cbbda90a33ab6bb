//! A local webhook receiver: verifies Standard Webhooks signatures, counts every
//! `webhook-id` it sees and optionally prints one line per event. The demo's endpoint
//! and the end-to-end tests' witness of what arrived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use relaycord_bus::Envelope;
use relaycord_sinks::http::{DEFAULT_TOLERANCE, SigningKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

struct Inner {
    key: Option<SigningKey>,
    print: bool,
    seen: Mutex<HashMap<String, u32>>,
    rejected: Mutex<u64>,
}

impl Receiver {
    /// Serves `POST /events` on `listener` until `shutdown`.
    pub fn start(
        listener: TcpListener,
        key: Option<SigningKey>,
        print: bool,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            key,
            print,
            seen: Mutex::default(),
            rejected: Mutex::default(),
        });
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        Ok(Self { inner, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// How many times each id arrived.
    pub fn seen(&self) -> HashMap<String, u32> {
        self.inner.seen.lock().expect("receiver lock").clone()
    }

    pub fn distinct(&self) -> usize {
        self.inner.seen.lock().expect("receiver lock").len()
    }

    /// Requests refused for a missing or wrong signature.
    pub fn rejected(&self) -> u64 {
        *self.inner.rejected.lock().expect("receiver lock")
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
    ) else {
        *inner.rejected.lock().expect("receiver lock") += 1;
        return StatusCode::BAD_REQUEST;
    };
    if let Some(key) = &inner.key {
        // As a real receiver must (users copy demos): constant-time comparison, and a
        // timestamp tolerance so a captured request cannot be replayed later.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signatures = header("webhook-signature").unwrap_or_default();
        if key
            .verify(id, timestamp, &body, signatures, now, DEFAULT_TOLERANCE)
            .is_err()
        {
            *inner.rejected.lock().expect("receiver lock") += 1;
            return StatusCode::UNAUTHORIZED;
        }
    }
    let count = {
        let mut seen = inner.seen.lock().expect("receiver lock");
        let count = seen.entry(id.to_owned()).or_default();
        *count += 1;
        *count
    };
    if inner.print {
        match Envelope::from_slice(&body) {
            Ok(env) => println!(
                "{:<22} shard={:<3} seq={:<6} guild={:<20} id={}{}",
                env.event_type,
                env.shard.map_or("-".to_owned(), |s| s.to_string()),
                env.seq.map_or("-".to_owned(), |s| s.to_string()),
                env.guild_id.as_deref().unwrap_or("none"),
                id,
                if count > 1 { "  (duplicate)" } else { "" }
            ),
            Err(_) => println!("non-envelope body, id={id}"),
        }
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A correctly signed request replayed ten minutes later is refused, as the Standard
    /// Webhooks libraries refuse it; a fresh one is accepted.
    #[tokio::test]
    async fn stale_and_forged_requests_are_refused() {
        relaycord_bus::install_crypto_provider();
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let receiver = Receiver::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(key.clone()),
            false,
            CancellationToken::new(),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let http = reqwest::Client::new();
        let post = |id: &'static str, ts: i64, signature: String| {
            http.post(receiver.url())
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body("{}")
                .send()
        };
        let stale = post("a", now - 600, key.sign("a", now - 600, b"{}"))
            .await
            .unwrap();
        assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
        let forged = post("b", now, "v1,bm9wZQ==".to_owned()).await.unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        let fresh = post("c", now, key.sign("c", now, b"{}")).await.unwrap();
        assert_eq!(fresh.status(), StatusCode::NO_CONTENT);
        assert_eq!(receiver.rejected(), 2);
        assert_eq!(receiver.distinct(), 1);
    }
}
