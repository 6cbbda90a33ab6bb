//! Reading a destination's answer with a size cap.
//!
//! A receiver (or a proxy in front of it) can answer with a body of any size, or one that
//! never ends; read whole, it would hold memory and the delivery slot until the timeout.
//! Nothing a sink needs from an answer (Discord's error message and `retry_after`, the
//! bot's `/users/@me`) comes near the cap, so a larger body is a broken answer and the
//! attempt fails with a reason that says so.

use bytes::{Bytes, BytesMut};

use crate::Outcome;

/// The most of a response body a sink reads.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the response body is larger than {} KiB (the most a sink reads)", MAX_BODY / 1024)]
    TooLarge,
    #[error("reading the response body failed: {0}")]
    Read(String),
}

impl BodyError {
    /// The failed attempt: retried, since a proxy or a broken receiver may answer
    /// properly later; after `max_attempts` the dead letter gives this reason.
    pub fn outcome(&self, status: reqwest::StatusCode) -> Outcome {
        Outcome::Retry {
            reason: format!("HTTP {status}: {self}"),
            status: Some(status.as_u16()),
            after: None,
        }
    }
}

/// Reads the body chunk by chunk and stops as soon as it passes [`MAX_BODY`] (also when
/// `Content-Length` announces more), so an endless body costs at most the cap.
pub async fn read(mut response: reqwest::Response) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::discord::{DiscordSink, DiscordSinkConfig};
    use crate::event::Body;
    use crate::http::{HttpSink, HttpSinkConfig};
    use crate::{Event, Sink};

    /// A server answering every request with `status` and a chunked body that never
    /// ends; returns its base URL.
    async fn endless(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = [0u8; 8192];
                    let _ = socket.read(&mut request).await;
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                    while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        url
    }

    async fn deliver(sink: &impl Sink) -> Outcome {
        let bytes = bytes::Bytes::from_static(
            br#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":0,"seq":1,"guild_id":"1","received_at":"2026-11-23T12:00:00.000Z","data":{"content":"hi","channel_id":"1"}}"#,
        );
        let body = Body::new(&bytes);
        let event = Event {
            id: "x",
            event_type: "MESSAGE_CREATE",
            attempt: 1,
            body: &body,
            lane: None,
            replay: None,
        };
        // Far below the sinks' timeout: the cap, not the clock, ends the read.
        tokio::time::timeout(Duration::from_secs(5), sink.deliver(&event))
            .await
            .expect("reading stops at the cap")
    }

    fn assert_too_large(outcome: Outcome) {
        let Outcome::Retry { reason, .. } = &outcome else {
            panic!("an endless body is a failed attempt: {outcome:?}");
        };
        assert!(reason.contains("larger than 64 KiB"), "{reason}");
    }

    /// A 2xx whose body never ends is not a delivery: the sink stops reading at the cap
    /// and the attempt fails, saying why.
    #[tokio::test]
    async fn an_endless_http_answer_is_a_failed_attempt() {
        let url = endless("200 OK").await;
        let config = HttpSinkConfig {
            url,
            secret: None,
            headers: Default::default(),
            timeout: Duration::from_secs(60),
        };
        let sink = HttpSink::build("h", &config).unwrap();
        assert_too_large(deliver(&sink).await);
    }

    #[tokio::test]
    async fn an_endless_discord_answer_is_a_failed_attempt() {
        let base = endless("200 OK").await;
        let mut config = DiscordSinkConfig::webhook(format!("{base}/api/webhooks/1/t"));
        config.timeout = Duration::from_secs(60);
        let sink = DiscordSink::build("d", &config).unwrap();
        assert_too_large(deliver(&sink).await);
        // A refusal is still a refusal, however long its body: the status decides.
        let base = endless("400 Bad Request").await;
        let mut config = DiscordSinkConfig::webhook(format!("{base}/api/webhooks/1/t"));
        config.timeout = Duration::from_secs(60);
        let sink = DiscordSink::build("d", &config).unwrap();
        let outcome = deliver(&sink).await;
        assert!(
            matches!(
                outcome,
                Outcome::Permanent {
                    status: Some(400),
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
}
