//! `type = "http"`: POST the envelope to any URL, signed per Standard Webhooks.

mod config;
mod service;
mod signature;

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub use config::HttpSinkConfig;
pub use service::{classify, classify_error};
pub use signature::{DEFAULT_TOLERANCE, SigningKey, VerifyError};

use crate::error::{SinkError, SinkErrorKind};
use crate::{Event, Outcome, Sink};

#[derive(Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Option<SigningKey>,
    headers: HeaderMap,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &relaycord_bus::redact::url_origin(self.url.as_str()))
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Validates the config; errors name the key (`sinks.<name>.<key>`) and the fix.
    pub fn build(name: &str, config: &HttpSinkConfig) -> Result<Self, SinkError> {
        let bad = |key: &str, msg: String| {
            SinkError::new(SinkErrorKind::Config, format!("sinks.{name}.{key}: {msg}"))
        };
        let url = reqwest::Url::parse(&config.url).map_err(|e| {
            bad(
                "url",
                format!(
                    "{:?} is not a URL ({e}); write e.g. \"https://example.com/discord\"",
                    relaycord_bus::redact::url_origin(&config.url)
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "url",
                format!(
                    "scheme {:?} is not supported; use http or https",
                    url.scheme()
                ),
            ));
        }
        let key = match &config.secret {
            Some(secret) => {
                Some(SigningKey::parse(secret.expose()).map_err(|e| bad("secret", e.to_owned()))?)
            }
            None => None,
        };
        let mut headers = HeaderMap::new();
        for (name_, value) in &config.headers {
            let header = HeaderName::from_bytes(name_.as_bytes())
                .map_err(|_| bad("headers", format!("{name_:?} is not a valid header name")))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                bad(
                    "headers",
                    format!("the value of {name_:?} is not a valid header value"),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        relaycord_bus::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("relaycord/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Config, "cannot build the HTTP client", e)
            })?;
        Ok(Self {
            client,
            url,
            key,
            headers,
        })
    }
}

impl Sink for HttpSink {
    async fn deliver(&self, event: &Event<'_>) -> Outcome {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // `traceparent`: the receiver's own spans join the delivery's trace.
        let mut headers = self.headers.clone();
        relaycord_bus::trace::inject_http(&mut headers);
        for (name, value) in event.delivery_headers() {
            // Lane keys are `channel:<id>` or `guild:<id>`; a channel id from a payload
            // that is not a valid header value is left out rather than sent mangled.
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(event.body.bytes.clone());
        if let Some(key) = &self.key {
            request = request.header(
                "webhook-signature",
                key.sign(event.id, timestamp, event.body.bytes),
            );
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return classify_error(&error),
        };
        let status = response.status();
        let outcome = classify(status, response.headers());
        // Read (up to the cap) even though only the status counts: an endless answer
        // must not pass for a delivery, and a body read to its end keeps the connection
        // for the next request.
        match crate::response::read(response).await {
            Ok(_) => outcome,
            Err(error) => error.outcome(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use relaycord_bus::Secret;

    use super::*;
    use crate::event::Body;

    const PATH_TOKEN: &str = "T0KEN-IN-PATH-5521";
    const QUERY_TOKEN: &str = "QUERY-SECRET-8812";

    /// A webhook URL's token never reaches what a failure prints: the retry reason (it
    /// goes to logs and to the dead letter's headers), the sink's and its config's Debug.
    #[tokio::test]
    async fn a_failing_webhook_url_is_never_printed_whole() {
        // Port 1 on loopback refuses the connection at once.
        let url = format!("http://127.0.0.1:1/hooks/{PATH_TOKEN}?key={QUERY_TOKEN}");
        let config = HttpSinkConfig {
            url,
            secret: None,
            headers: [("x-api-key".to_owned(), Secret::new("H3ADER-SECRET"))].into(),
            timeout: Duration::from_secs(5),
        };
        let sink = HttpSink::build("hook", &config).unwrap();
        let bytes = Bytes::from_static(br#"{"id":"x","type":"T","data":{}}"#);
        let body = Body::new(&bytes);
        let event = Event {
            id: "x",
            event_type: "T",
            attempt: 1,
            body: &body,
            lane: None,
            replay: None,
        };
        let Outcome::Retry { reason, .. } = sink.deliver(&event).await else {
            panic!("a refused connection is retried");
        };
        let printed = format!("{reason} {sink:?} {config:?}");
        for secret in [PATH_TOKEN, QUERY_TOKEN, "H3ADER-SECRET"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            reason.contains("http://127.0.0.1:1"),
            "the origin stays: {reason}"
        );
        let bad = HttpSinkConfig {
            url: format!("http://[::1/{PATH_TOKEN}"),
            ..config
        };
        let error = HttpSink::build("hook", &bad).unwrap_err().to_string();
        assert!(!error.contains(PATH_TOKEN), "{error}");
    }
}
