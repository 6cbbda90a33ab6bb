//! `type = "http"` sink configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use relaycord_bus::Secret;
use schemars::JsonSchema;
use serde::Deserialize;

/// POSTs each envelope to a URL with Standard Webhooks headers.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Endpoint receiving `POST`s of the envelope (http or https).
    pub url: String,
    /// `whsec_<base64>` signing secret. Without it requests carry `webhook-id` and
    /// `webhook-timestamp` but no signature.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Extra request headers (e.g. an API key for the receiver).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Time allowed for one request, connection included.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

/// The URL's path and query often hold a token (Slack, Zapier, Discord webhooks): Debug
/// shows only its origin.
impl std::fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &relaycord_bus::redact::url_origin(&self.url))
            .field("secret", &self.secret)
            .field("headers", &self.headers)
            .field("timeout", &self.timeout)
            .finish()
    }
}
