//! `[interactions]`: the HTTP endpoint and its routes (see docs/interactions.md). The
//! service is built from this section only, through [`Settings::from_config`], so the
//! library accepts exactly what `relaycord config check` accepts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use relaycord_bus::{ConfigError, DiscordConfig, Shared};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::routes::{RouteConfig, Routes};
use crate::serve::ServeLimits;
use crate::settings::Settings;
use crate::verify::{DEFAULT_WINDOW, PublicKey};

/// Discord waits 3 s for the response; the deadline leaves room for the network.
const DEADLINE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_millis(2900);

/// A late reply has to be sent while the interaction token lives (15 minutes).
const HTTP_HANDLER_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(14 * 60);

/// Header and body read timeouts: below 1 s a slow but honest network fails; above a
/// minute they no longer protect anything.
const READ_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(60);

/// Serving on after SIGTERM: 0 (no delay) up to 2 minutes; load balancers take seconds,
/// rarely more than 30, to stop routing to a pod, and every second of it holds a rollout.
const DRAIN_DELAY_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(120);

/// The `[interactions]` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InteractionsSection {
    /// Address of the HTTP endpoint (`relaycord interactions --listen` overrides it).
    pub listen: SocketAddr,
    /// HTTP path of the endpoint, as set in the Developer Portal's endpoint URL.
    pub path: String,
    /// HTTP path of Discord's webhook events (Developer Portal → Webhooks → Endpoint URL),
    /// on the same listener: verified as interactions are, published to
    /// `<prefix>.webhooks.<EVENT_TYPE>.<guild|none>`, acknowledged with 204 once stored.
    pub webhook_events_path: String,
    /// From a request's arrival to the deferral when no reply came; Discord allows 3 s
    /// in all, so 100ms to 2900ms.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub deadline: Duration,
    /// Largest accepted request body, in bytes (413 above).
    pub max_body: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_listen: SocketAddr,
    /// Answer to interactions no route matches (an interaction response); none: defer.
    pub default_response: Option<serde_json::Value>,
    /// Shown to the user (ephemeral) when a handler fails or has no responders.
    pub unavailable_message: String,
    /// Which handler answers which interaction; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// How long an HTTP handler may take in all, late reply included: a function that
    /// hangs is cut off after this instead of holding a connection until the token
    /// expires. 1s to 14m (the token lives 15 minutes).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub http_handler_timeout: Duration,
    /// HTTP handler calls still running after their deadline (their replies become
    /// follow-ups) at once in this replica; past it a late call is cut off, counted as
    /// `late_replies_total{outcome="shed"}`, and the user gets the unavailable message.
    pub max_late_http_calls: usize,
    /// A connection that has not sent a whole request head by then is closed (idle
    /// keep-alive connections included): slow clients cannot hold the endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// A request body not fully received this long after its headers gets 408 and the
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub body_read_timeout: Duration,
    /// Connections served at once. At the cap the oldest connection not serving a verified
    /// request is closed for the new one (`relaycord_interactions_connections_evicted_total`);
    /// only when all serve verified requests is the new one closed
    /// (`relaycord_interactions_connections_rejected_total`).
    pub max_connections: usize,
    /// Bytes of request bodies held at once, across all connections: a request reserves
    /// its `Content-Length` (or `max_body` when chunked) before its body is read, waits up
    /// to 500 ms for room, and gets 503 without it. Bounds the memory that clients who
    /// only claim to be Discord can take.
    pub max_body_memory: usize,
    /// On SIGTERM, `/readyz` fails at once but the endpoint keeps accepting and serving
    /// for this long (answering with `Connection: close`), while Services and ingresses
    /// stop routing to the pod; then the listener closes and requests in flight get
    /// `shutdown_grace`. 0s to 2m; 0s closes the listener at once.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_delay: Duration,
    /// On shutdown, once the listener is closed (after `drain_delay`), requests in flight
    /// and late HTTP handler calls get this long to finish.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
}

impl Default for InteractionsSection {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8080).into(),
            path: "/interactions".to_owned(),
            webhook_events_path: "/webhook-events".to_owned(),
            deadline: Duration::from_millis(2500),
            max_body: 256 * 1024,
            metrics_listen: ([127, 0, 0, 1], 9102).into(),
            default_response: None,
            unavailable_message: "This action is unavailable right now. Please try again later."
                .to_owned(),
            routes: Vec::new(),
            http_handler_timeout: Duration::from_secs(14 * 60),
            max_late_http_calls: 1024,
            header_read_timeout: ServeLimits::default().header_read_timeout,
            body_read_timeout: ServeLimits::default().body_read_timeout,
            max_connections: ServeLimits::default().max_connections,
            max_body_memory: 32 * 1024 * 1024,
            drain_delay: ServeLimits::default().drain_delay,
            shutdown_grace: ServeLimits::default().shutdown_grace,
        }
    }
}

impl InteractionsSection {
    /// Checks the section and, when it is set, `discord.public_key`: a file that another
    /// role uses must not carry a key this role would refuse.
    pub fn validate(&self, shared: Shared<'_>) -> Result<(), ConfigError> {
        self.routes()?;
        if !DEADLINE_RANGE.contains(&self.deadline) {
            return Err(ConfigError::new(
                "interactions.deadline",
                "must be between 100ms and 2900ms: Discord waits 3s for the response",
            ));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("interactions.path", "must start with '/'"));
        }
        if !self.webhook_events_path.starts_with('/') {
            return Err(ConfigError::new(
                "interactions.webhook_events_path",
                "must start with '/', e.g. \"/webhook-events\"",
            ));
        }
        if self.webhook_events_path == self.path {
            return Err(ConfigError::new(
                "interactions.webhook_events_path",
                format!(
                    "must differ from interactions.path ({:?}): Discord's portal takes two URLs, and the bodies are told apart by path",
                    self.path
                ),
            ));
        }
        if self.max_body < 1024 {
            return Err(ConfigError::new(
                "interactions.max_body",
                "must be at least 1024 bytes",
            ));
        }
        if let Some(response) = &self.default_response
            && !response.get("type").is_some_and(serde_json::Value::is_u64)
        {
            return Err(ConfigError::new(
                "interactions.default_response",
                "must be an interaction response such as { type = 4, data = { content = \"…\" } }",
            ));
        }
        if !HTTP_HANDLER_TIMEOUT_RANGE.contains(&self.http_handler_timeout) {
            return Err(ConfigError::new(
                "interactions.http_handler_timeout",
                "must be between 1s and 14m: a late reply must reach Discord before the token expires (15m)",
            ));
        }
        for (key, value) in [
            ("interactions.header_read_timeout", self.header_read_timeout),
            ("interactions.body_read_timeout", self.body_read_timeout),
        ] {
            if !READ_TIMEOUT_RANGE.contains(&value) {
                return Err(ConfigError::new(
                    key,
                    "must be between 1s and 60s: long enough for a slow network, short enough that idle clients cannot pile up",
                ));
            }
        }
        if self.max_late_http_calls == 0 {
            return Err(ConfigError::new(
                "interactions.max_late_http_calls",
                "must be at least 1",
            ));
        }
        if self.max_body > self.max_body_memory {
            return Err(ConfigError::new(
                "interactions.max_body_memory",
                format!(
                    "must be at least max_body ({}): a body of that size could never be read",
                    self.max_body
                ),
            ));
        }
        if u32::try_from(self.max_body).is_err() {
            return Err(ConfigError::new(
                "interactions.max_body",
                "must be under 4 GiB (Discord's requests are a few KiB; the default is 262144)",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "interactions.max_connections",
                "must be at least 1",
            ));
        }
        if !DRAIN_DELAY_RANGE.contains(&self.drain_delay) {
            return Err(ConfigError::new(
                "interactions.drain_delay",
                "must be between 0s and 2m: long enough for load balancers to stop routing to the pod (5s by default), and the pod's termination grace period must cover it plus shutdown_grace",
            ));
        }
        if !shared.discord.public_key.is_empty() {
            public_key(shared.discord)?;
        }
        Ok(())
    }

    /// The checked `[[interactions.routes]]`.
    pub fn routes(&self) -> Result<Routes, ConfigError> {
        Routes::new(&self.routes).map_err(|e| {
            ConfigError::new(
                format!("interactions.routes[{}]{}", e.index, e.field),
                e.problem,
            )
        })
    }
}

/// `discord.public_key`, which the interactions role cannot run without.
pub fn public_key(discord: &DiscordConfig) -> Result<PublicKey, ConfigError> {
    if discord.public_key.is_empty() {
        return Err(ConfigError::new(
            "discord.public_key",
            "is empty: copy the application's public key from the Developer Portal (or set RELAYCORD_DISCORD__PUBLIC_KEY)",
        ));
    }
    PublicKey::from_hex(&discord.public_key)
        .map_err(|e| ConfigError::new("discord.public_key", e.to_string()))
}

impl Settings {
    /// The service settings of a valid section: the only way to build them, so a value
    /// the config check refuses cannot reach the service either.
    pub fn from_config(
        config: &InteractionsSection,
        shared: Shared<'_>,
    ) -> Result<Self, ConfigError> {
        config.validate(shared)?;
        Ok(Self {
            public_key: public_key(shared.discord)?,
            path: config.path.clone(),
            webhook_events_path: config.webhook_events_path.clone(),
            deadline: config.deadline,
            timestamp_window: DEFAULT_WINDOW,
            max_body: config.max_body,
            routes: config.routes()?,
            default_response: config
                .default_response
                .as_ref()
                .map(|v| Bytes::from(v.to_string())),
            unavailable_message: config.unavailable_message.clone(),
            api_base: shared.discord.api_base.clone(),
            subjects: shared.nats.subjects(),
            streams: shared.nats.streams(),
            http_handler_timeout: config.http_handler_timeout,
            late_concurrency: 32,
            late_http_calls: std::sync::Arc::new(tokio::sync::Semaphore::new(
                config.max_late_http_calls,
            )),
            body_budget: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_body_memory)),
            serve: ServeLimits {
                header_read_timeout: config.header_read_timeout,
                body_read_timeout: config.body_read_timeout,
                max_connections: config.max_connections,
                drain_delay: config.drain_delay,
                shutdown_grace: config.shutdown_grace,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaycord_bus::NatsConfig;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn settings(config: &InteractionsSection, public_key: &str) -> Result<Settings, ConfigError> {
        let discord = DiscordConfig {
            public_key: public_key.to_owned(),
            ..DiscordConfig::default()
        };
        let nats = NatsConfig::default();
        Settings::from_config(
            config,
            Shared {
                nats: &nats,
                discord: &discord,
            },
        )
    }

    #[test]
    fn the_library_refuses_what_the_config_check_refuses() {
        let five_seconds = InteractionsSection {
            deadline: Duration::from_secs(5),
            ..InteractionsSection::default()
        };
        let e = settings(&five_seconds, KEY).unwrap_err();
        assert_eq!(e.key, "interactions.deadline");
        let e = settings(&InteractionsSection::default(), "").unwrap_err();
        assert_eq!(e.key, "discord.public_key");
        let e = settings(&InteractionsSection::default(), "abc").unwrap_err();
        assert_eq!(e.key, "discord.public_key");
        let s = settings(&InteractionsSection::default(), KEY).unwrap();
        assert_eq!(s.deadline, Duration::from_millis(2500));
        assert_eq!(s.api_base, relaycord_bus::DISCORD_API_BASE);
        let thirty_seconds = InteractionsSection {
            http_handler_timeout: Duration::from_secs(30),
            ..InteractionsSection::default()
        };
        let s = settings(&thirty_seconds, KEY).unwrap();
        assert_eq!(s.http_handler_timeout, Duration::from_secs(30));
        // The drain after SIGTERM: 5 s unless set; 0 s (close at once) and 2 m allowed.
        assert_eq!(s.serve.drain_delay, Duration::from_secs(5));
        for delay in [Duration::ZERO, Duration::from_secs(120)] {
            let section = InteractionsSection {
                drain_delay: delay,
                ..InteractionsSection::default()
            };
            assert_eq!(settings(&section, KEY).unwrap().serve.drain_delay, delay);
        }
    }

    /// Issue 18 A: with the defaults, 1,500 unsigned connections each sending 256 KiB less
    /// a byte took 1,288 MiB; the Helm chart allows 256 MiB. What clients that need no key
    /// can make this process hold: each connection's head buffer and bookkeeping, and the
    /// shared body budget (a body is read only after well-formed signature headers, and
    /// only within the budget).
    #[test]
    fn unauthenticated_clients_cannot_take_more_than_a_fraction_of_256_mib() {
        let d = InteractionsSection::default();
        // Task, hyper state, write buffer and socket bookkeeping: measured around 10 KiB; 32
        // leaves room.
        const PER_CONNECTION: usize = 32 * 1024;
        let heads = d.max_connections * (crate::serve::MAX_HEAD_BUFFER + PER_CONNECTION);
        let worst = heads + d.max_body_memory;
        let limit = 256 * 1024 * 1024;
        assert!(
            worst <= limit / 2,
            "worst case {} MiB of a {} MiB limit",
            worst >> 20,
            limit >> 20
        );
        // Before: every connection could hold a whole body.
        assert!(d.max_connections * d.max_body > d.max_body_memory);
    }

    #[test]
    fn path_body_default_response_and_handler_timeout() {
        let bad = [
            (
                InteractionsSection {
                    path: "interactions".into(),
                    ..InteractionsSection::default()
                },
                "interactions.path",
            ),
            (
                InteractionsSection {
                    webhook_events_path: "/interactions".into(),
                    ..InteractionsSection::default()
                },
                "interactions.webhook_events_path",
            ),
            (
                InteractionsSection {
                    webhook_events_path: "events".into(),
                    ..InteractionsSection::default()
                },
                "interactions.webhook_events_path",
            ),
            (
                InteractionsSection {
                    max_body: 10,
                    ..InteractionsSection::default()
                },
                "interactions.max_body",
            ),
            (
                InteractionsSection {
                    default_response: Some(serde_json::json!({"data": {}})),
                    ..InteractionsSection::default()
                },
                "interactions.default_response",
            ),
            (
                InteractionsSection {
                    http_handler_timeout: Duration::from_secs(15 * 60),
                    ..InteractionsSection::default()
                },
                "interactions.http_handler_timeout",
            ),
            (
                InteractionsSection {
                    max_body_memory: 1024,
                    ..InteractionsSection::default()
                },
                "interactions.max_body_memory",
            ),
            (
                InteractionsSection {
                    drain_delay: Duration::from_secs(121),
                    ..InteractionsSection::default()
                },
                "interactions.drain_delay",
            ),
            (
                InteractionsSection {
                    routes: vec![RouteConfig {
                        command: Some("ping".into()),
                        handler: Some(crate::routes::Handler::Http("https://exa mple.com".into())),
                        ..RouteConfig::default()
                    }],
                    ..InteractionsSection::default()
                },
                "interactions.routes[0].handler.http",
            ),
        ];
        for (section, key) in bad {
            assert_eq!(settings(&section, KEY).unwrap_err().key, key);
        }
    }
}
