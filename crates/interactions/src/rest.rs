//! The two Discord REST calls a late reply needs. Interaction webhooks are authorized by
//! the token in the path, so no bot token is involved; the path is never logged because
//! it carries that token.

use std::time::Duration;

use bytes::Bytes;
use relaycord_bus::InvalidRequests;
use reqwest::StatusCode;

use crate::response::FollowUp;

/// Per attempt; a timed-out attempt is retried like a 5xx.
const FOLLOW_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a follow-up attempt ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestError {
    /// The token expired or the interaction is unknown (404/401): never retry.
    Expired,
    /// Rate limited or a server/transport error: try again, after this delay if given.
    Retry(Option<Duration>),
    /// Discord refused the body (400 and other 4xx): the handler's reply is invalid.
    Rejected(u16),
}

#[derive(Debug, Clone)]
pub struct DiscordRest {
    http: reqwest::Client,
    api_base: String,
}

impl DiscordRest {
    /// `api_base` as in the config: `https://discord.com/api` (tests: the simulator's).
    pub fn new(http: reqwest::Client, api_base: &str) -> Self {
        Self {
            http,
            api_base: api_base.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn send(
        &self,
        application_id: &str,
        token: &str,
        follow_up: &FollowUp,
    ) -> Result<(), RestError> {
        // Both come from a verified interaction, but they become a URL path: refuse
        // anything that could change its meaning.
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !safe(application_id) || !safe(token) {
            return Err(RestError::Rejected(0));
        }
        let webhook = format!("{}/v10/webhooks/{application_id}/{token}", self.api_base);
        let request = match follow_up {
            FollowUp::Nothing => return Ok(()),
            FollowUp::EditOriginal(body) => self
                .http
                .patch(format!("{webhook}/messages/@original"))
                .body(body.clone()),
            FollowUp::Create(body) => self.http.post(webhook).body(body.clone()),
        };
        // Held only when the process nears Discord's invalid-request ban, which would
        // stop every Discord caller on this address.
        InvalidRequests::process().admit().await;
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            // A hung call would hold a worker slot while the 15-minute token runs out.
            // A retried PATCH of @original is idempotent; a retried POST (a component's
            // follow-up) can post twice if Discord applied the timed-out one.
            .timeout(FOLLOW_UP_TIMEOUT)
            .send()
            .await
            .map_err(|_| RestError::Retry(None))?;
        let status = response.status();
        let scope = response.headers().get("x-ratelimit-scope");
        InvalidRequests::process().observe(status.as_u16(), scope.map(|v| v.as_bytes()));
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<f64>().ok());
        let body = error_body(response).await;
        Err(classify(status, retry_after, &body))
    }
}

/// The most of an error answer's body that is read: enough for Discord's JSON error (a
/// 429's `retry_after`); a longer body is cut there, and what it would have said is
/// left to the status and headers.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// An error answer's body, up to [`MAX_ERROR_BODY`] bytes.
async fn error_body(mut response: reqwest::Response) -> Bytes {
    let mut body = bytes::BytesMut::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    body.freeze()
}

fn classify(status: StatusCode, retry_after: Option<f64>, body: &Bytes) -> RestError {
    match status.as_u16() {
        401 | 404 => RestError::Expired,
        429 => {
            #[derive(serde::Deserialize)]
            struct Limited {
                retry_after: f64,
            }
            let seconds = serde_json::from_slice::<Limited>(body)
                .map(|l| l.retry_after)
                .ok()
                .or(retry_after)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(1.0);
            RestError::Retry(Some(Duration::from_secs_f64(seconds.min(60.0))))
        }
        408 | 500.. => RestError::Retry(None),
        other => RestError::Rejected(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let none = Bytes::new();
        assert_eq!(
            classify(StatusCode::NOT_FOUND, None, &none),
            RestError::Expired
        );
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                Some(9.0),
                &Bytes::from_static(br#"{"message":"You are being rate limited.","retry_after":0.5,"global":false}"#)
            ),
            RestError::Retry(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(2.0), &none),
            RestError::Retry(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None, &none),
            RestError::Retry(None)
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, None, &none),
            RestError::Rejected(400)
        );
    }

    /// A 429 whose body never ends: the call answers once it has read its share, rather
    /// than reading (and holding) the body for as long as the server sends it.
    #[tokio::test]
    async fn an_endless_error_body_is_cut() {
        use axum::body::Body;
        use axum::response::IntoResponse;
        use futures::stream;

        let endless = || async {
            let chunk = Bytes::from(vec![b' '; 8 * 1024]);
            let body = stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "3")],
                Body::from_stream(body),
            )
                .into_response()
        };
        let app = axum::Router::new().fallback(endless);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        relaycord_bus::install_crypto_provider();
        let rest = DiscordRest::new(reqwest::Client::new(), &format!("http://{addr}/api"));
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            rest.send("1", "token", &FollowUp::Create(Bytes::from_static(b"{}"))),
        )
        .await
        .expect("the endless body was not read to its end");
        assert_eq!(answer, Err(RestError::Retry(Some(Duration::from_secs(3)))));
    }
}
