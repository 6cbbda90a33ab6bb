//! The config file: defaults, then the TOML file, then `RELAYCORD_<SECTION>__<KEY>`
//! environment variables (and `DISCORD_TOKEN`), validated after merging so an error
//! names the key and the fix. Every key is documented in `docs/configuration.md`.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use relaycord_bus::{Secret, StreamSettings, Subjects};
use relaycord_sinks::SinkConfig;
use serde::Deserialize;
use twilight_gateway::Intents;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub discord: DiscordConfig,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub interactions: InteractionsSection,
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    pub subject_prefix: String,
    pub stream_replicas: usize,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_bytes: i64,
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(with = "humantime_serde")]
    pub dlq_max_age: Duration,
    /// NATS credentials file (JWT + nkey seed, as `nsc` writes it).
    pub creds_file: Option<PathBuf>,
    /// Token auth (secret).
    pub token: Secret,
    /// User and password auth; the password is a secret.
    pub user: String,
    pub password: Secret,
    /// Nkey seed (`SU…`, secret).
    pub nkey_seed: Secret,
    /// PEM CA bundle to verify the server with (private CAs).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS: both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server that does not offer TLS.
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        let streams = StreamSettings::default();
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            subject_prefix: relaycord_bus::DEFAULT_PREFIX.to_owned(),
            stream_replicas: streams.replicas,
            max_age: streams.max_age,
            max_bytes: streams.max_bytes,
            duplicate_window: streams.duplicate_window,
            dlq_max_age: streams.dlq_max_age,
            creds_file: None,
            token: Secret::default(),
            user: String::new(),
            password: Secret::default(),
            nkey_seed: Secret::default(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }
}

impl NatsConfig {
    pub fn subjects(&self) -> Subjects {
        Subjects::new(self.subject_prefix.clone())
    }

    pub fn streams(&self) -> StreamSettings {
        StreamSettings {
            replicas: self.stream_replicas,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            dlq_max_age: self.dlq_max_age,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordConfig {
    pub token: Secret,
    pub application_id: String,
    pub public_key: String,
    pub intents: Vec<String>,
    pub api_base: String,
    pub gateway_url: String,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            application_id: String::new(),
            public_key: String::new(),
            intents: [
                "GUILDS",
                "GUILD_MESSAGES",
                "GUILD_MESSAGE_REACTIONS",
                "MESSAGE_CONTENT",
                "GUILD_MEMBERS",
            ]
            .map(str::to_owned)
            .to_vec(),
            api_base: "https://discord.com/api".to_owned(),
            gateway_url: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// `"auto"` (all shards) or a range such as `"0-15"` (inclusive).
    pub shards: String,
    /// `"auto"` (Discord's recommendation) or a number.
    pub shard_count: ShardCount,
    /// Publishes awaiting JetStream's ack per shard before reading pauses.
    pub window: usize,
    pub metrics_listen: SocketAddr,
    /// A dead replica's shards move to the others this long after its last renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// This replica's name; empty: `$HOSTNAME-<pid>`.
    pub replica_id: String,
    /// `/readyz` fails when an owned shard has had no session for this long.
    #[serde(with = "humantime_serde")]
    pub unhealthy_after: Duration,
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            shards: "auto".to_owned(),
            shard_count: ShardCount::Auto,
            window: 256,
            metrics_listen: ([127, 0, 0, 1], 9100).into(),
            lease_ttl: Duration::from_secs(10),
            replica_id: String::new(),
            unhealthy_after: Duration::from_secs(60),
        }
    }
}

/// `[interactions]`: the HTTP interactions endpoint (see docs/interactions.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InteractionsSection {
    pub listen: SocketAddr,
    pub path: String,
    /// From a request's arrival to the deferral; Discord allows 3 s in all.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Largest accepted request body, in bytes (413 above).
    pub max_body: usize,
    pub metrics_listen: SocketAddr,
    /// Answer to interactions no route matches (an interaction response); none: defer.
    pub default_response: Option<serde_json::Value>,
    /// Shown to the user (ephemeral) when a handler fails or has no responders.
    pub unavailable_message: String,
    pub routes: Vec<relaycord_interactions::RouteConfig>,
}

impl Default for InteractionsSection {
    fn default() -> Self {
        use relaycord_interactions::settings as d;
        Self {
            listen: ([0, 0, 0, 0], 8080).into(),
            path: d::DEFAULT_PATH.to_owned(),
            deadline: d::DEFAULT_DEADLINE,
            max_body: d::DEFAULT_MAX_BODY,
            metrics_listen: ([127, 0, 0, 1], 9102).into(),
            default_response: None,
            unavailable_message: d::DEFAULT_UNAVAILABLE_MESSAGE.to_owned(),
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ShardCount {
    Number(u32),
    #[serde(deserialize_with = "auto")]
    Auto,
}

fn auto<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    let s = String::deserialize(d)?;
    if s == "auto" {
        Ok(())
    } else {
        Err(serde::de::Error::custom("expected \"auto\" or a number"))
    }
}

/// A config problem: the key, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// Rewrites figment's error in the file's own terms: `sinks[0].type` rather than
/// `default.sinks.0`, with the source (file or environment variable) it came from.
fn load_error(error: &figment::Error) -> ConfigError {
    let mut key = String::new();
    for segment in &error.path {
        if segment.parse::<usize>().is_ok() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    let problem = match &error.kind {
        // The variant of a sink is its `type`.
        figment::error::Kind::UnknownVariant(found, expected) => {
            key.push_str(".type");
            format!("unknown type {found:?}; use one of {}", expected.join(", "))
        }
        figment::error::Kind::UnknownField(found, expected) => {
            if !key.ends_with(found.as_str()) {
                key = if key.is_empty() {
                    found.clone()
                } else {
                    format!("{key}.{found}")
                };
            }
            format!("unknown key; expected one of {}", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    let source = error.metadata.as_ref().map(|m| {
        m.source
            .as_ref()
            .map_or_else(|| m.name.to_string(), |s| s.to_string())
    });
    let problem = match source {
        Some(source) => format!("{problem} (from {source})"),
        None => problem,
    };
    invalid(
        if key.is_empty() {
            "config".to_owned()
        } else {
            key
        },
        problem,
    )
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Loads the file at `path` (when given; it must exist) and the environment, then
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!(
                        "{} does not exist; pass --config FILE or create it (see docs/configuration.md)",
                        path.display()
                    ),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment
            .merge(Env::prefixed("RELAYCORD_").ignore(&["CONFIG"]).split("__"))
            .merge(
                Env::raw()
                    .only(&["DISCORD_TOKEN"])
                    .map(|_| "discord.token".into()),
            );
        let config: Config = figment.extract().map_err(|e| load_error(&e))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        Subjects::validate_prefix(&self.nats.subject_prefix)
            .map_err(|p| invalid("nats.subject_prefix", p))?;
        if self.nats.stream_replicas == 0 || self.nats.stream_replicas > 5 {
            return Err(invalid(
                "nats.stream_replicas",
                "must be 1 to 5 (1 on a single server, 3 on a cluster)",
            ));
        }
        crate::nats_client::validate(&self.nats)?;
        if self.nats.duplicate_window < Duration::from_secs(10) {
            return Err(invalid(
                "nats.duplicate_window",
                "must be at least 10s: it has to cover a gateway resume",
            ));
        }
        if self.ingest.lease_ttl < Duration::from_secs(2) {
            return Err(invalid(
                "ingest.lease_ttl",
                "must be at least 2s: leases are renewed every third of it",
            ));
        }
        self.intents()?;
        self.shard_range()?;
        self.interactions_routes()?;
        self.check_interactions()?;
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if sink.name.is_empty() {
                return Err(invalid(format!("sinks[{i}].name"), "must not be empty"));
            }
            if !names.insert(&sink.name) {
                return Err(invalid(
                    format!("sinks[{i}].name"),
                    format!("{:?} is used by two sinks; names must be unique", sink.name),
                ));
            }
            if sink.max_attempts == 0 {
                return Err(invalid(
                    format!("sinks.{}.max_attempts", sink.name),
                    "must be at least 1",
                ));
            }
            if sink.concurrency == 0 {
                return Err(invalid(
                    format!("sinks.{}.concurrency", sink.name),
                    "must be at least 1",
                ));
            }
            for event in &sink.events {
                if !relaycord_bus::subject::is_event_type(event) {
                    return Err(invalid(
                        format!("sinks.{}.events", sink.name),
                        format!("{event:?} is not a gateway event type (e.g. MESSAGE_CREATE)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The checked `[[interactions.routes]]`.
    pub fn interactions_routes(&self) -> Result<relaycord_interactions::Routes, ConfigError> {
        relaycord_interactions::Routes::new(&self.interactions.routes)
            .map_err(|e| invalid(format!("interactions.routes[{}]", e.index), e.problem))
    }

    fn check_interactions(&self) -> Result<(), ConfigError> {
        let ix = &self.interactions;
        if ix.deadline < Duration::from_millis(100) || ix.deadline > Duration::from_millis(2900) {
            return Err(invalid(
                "interactions.deadline",
                "must be between 100ms and 2900ms: Discord waits 3s for the response",
            ));
        }
        if !ix.path.starts_with('/') {
            return Err(invalid("interactions.path", "must start with '/'"));
        }
        if ix.max_body < 1024 {
            return Err(invalid(
                "interactions.max_body",
                "must be at least 1024 bytes",
            ));
        }
        if let Some(response) = &ix.default_response
            && !response.get("type").is_some_and(serde_json::Value::is_u64)
        {
            return Err(invalid(
                "interactions.default_response",
                "must be an interaction response such as { type = 4, data = { content = \"…\" } }",
            ));
        }
        if !self.discord.public_key.is_empty() {
            self.public_key()?;
        }
        Ok(())
    }

    /// `discord.public_key`, required by the interactions role.
    pub fn public_key(&self) -> Result<relaycord_interactions::verify::PublicKey, ConfigError> {
        if self.discord.public_key.is_empty() {
            return Err(invalid(
                "discord.public_key",
                "is empty: copy the application's public key from the Developer Portal (or set RELAYCORD_DISCORD__PUBLIC_KEY)",
            ));
        }
        relaycord_interactions::verify::PublicKey::from_hex(&self.discord.public_key)
            .map_err(|e| invalid("discord.public_key", e.to_string()))
    }

    pub fn intents(&self) -> Result<Intents, ConfigError> {
        self.discord.intents.iter().try_fold(Intents::empty(), |all, name| {
            Intents::from_name(name).map(|i| all | i).ok_or_else(|| {
                invalid("discord.intents", format!("{name:?} is not an intent; use names such as GUILDS, GUILD_MESSAGES, MESSAGE_CONTENT"))
            })
        })
    }

    /// `None` for `"auto"`; otherwise the half-open range of `"A-B"` (inclusive in the file).
    pub fn shard_range(&self) -> Result<Option<Range<u32>>, ConfigError> {
        let spec = self.ingest.shards.trim();
        if spec == "auto" {
            return Ok(None);
        }
        let err = || {
            invalid(
                "ingest.shards",
                format!("{spec:?} is not \"auto\" or a range like \"0-15\""),
            )
        };
        let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
        let (a, b): (u32, u32) = (
            a.trim().parse().map_err(|_| err())?,
            b.trim().parse().map_err(|_| err())?,
        );
        if a > b {
            return Err(err());
        }
        if let ShardCount::Number(count) = self.ingest.shard_count {
            if b >= count {
                return Err(invalid(
                    "ingest.shards",
                    format!("range {a}-{b} exceeds ingest.shard_count = {count}"),
                ));
            }
        } else {
            return Err(invalid(
                "ingest.shard_count",
                "must be a number when ingest.shards is a range",
            ));
        }
        Ok(Some(a..b + 1))
    }
}

#[cfg(test)]
// figment's Jail returns its own large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_file_then_env() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "relaycord.toml",
                r#"
                [nats]
                url = "nats://file:4222"
                [ingest]
                shards = "0-3"
                shard_count = 8
                [[sinks]]
                name = "hook"
                type = "http"
                url = "http://127.0.0.1:1/x"
                "#,
            )?;
            jail.set_env("RELAYCORD_NATS__URL", "nats://env:4222");
            jail.set_env("DISCORD_TOKEN", "tok");
            let c = Config::load(Some(Path::new("relaycord.toml"))).unwrap();
            assert_eq!(c.nats.url, "nats://env:4222");
            assert_eq!(c.discord.token.expose(), "tok");
            assert_eq!(c.shard_range().unwrap(), Some(0..4));
            assert_eq!(c.nats.subject_prefix, "discord");
            assert_eq!(c.sinks.len(), 1);
            Ok(())
        });
    }

    fn load_err(toml: &str) -> String {
        let mut msg = String::new();
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", toml)?;
            msg = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            Ok(())
        });
        msg
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = load_err("[nats]\nurll = \"x\"");
        assert!(e.contains("urll"), "{e}");
        let e = load_err("[discord]\nintents = [\"GUILD\"]");
        assert!(e.contains("discord.intents") && e.contains("GUILDS"), "{e}");
        let e = load_err("[ingest]\nshards = \"0-9\"\nshard_count = 4");
        assert!(e.contains("ingest.shards"), "{e}");
        let e = load_err("[[sinks]]\nname = \"a\"\ntype = \"carrier-pigeon\"");
        assert!(
            e.contains("carrier-pigeon") && e.starts_with("sinks[0].type:"),
            "{e}"
        );
        let e = load_err("[nats]\nurll = \"x\"");
        assert!(e.starts_with("nats.urll: unknown key"), "{e}");
        let e = load_err(
            "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"x\"\nevents = [\"message_create\"]",
        );
        assert!(e.contains("sinks.a.events"), "{e}");
    }

    #[test]
    fn interactions_section_and_routes() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "relaycord.toml",
                r#"
                [discord]
                public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
                [interactions]
                deadline = "2s"
                [[interactions.routes]]
                command = "ping"
                handler = { nats = "relaycord.handlers.ping" }
                [[interactions.routes]]
                component = "vote"
                response = { type = 6 }
                "#,
            )?;
            let c = Config::load(Some(Path::new("relaycord.toml"))).unwrap();
            assert_eq!(c.interactions.deadline, Duration::from_secs(2));
            assert_eq!(c.interactions.path, "/interactions");
            assert_eq!(c.interactions.routes.len(), 2);
            c.public_key().unwrap();
            Ok(())
        });
        let e = load_err("[interactions]\ndeadline = \"5s\"");
        assert!(e.contains("interactions.deadline"), "{e}");
        let e = load_err("[[interactions.routes]]\ncommand = \"a\"\nhandler = { ftp = \"x\" }");
        assert!(e.contains("ftp"), "{e}");
        let e = load_err("[[interactions.routes]]\ncommand = \"a\"\ncomponent = \"b\"");
        assert!(e.contains("interactions.routes[0]"), "{e}");
        let e = load_err("[discord]\npublic_key = \"abc\"");
        assert!(e.contains("discord.public_key"), "{e}");
    }

    #[test]
    fn the_config_path_variable_is_not_a_key() {
        Jail::expect_with(|jail| {
            jail.create_file("r.toml", "")?;
            jail.set_env("RELAYCORD_CONFIG", "r.toml");
            assert!(Config::load(Some(Path::new("r.toml"))).is_ok());
            Ok(())
        });
    }

    #[test]
    fn token_is_never_printed() {
        Jail::expect_with(|jail| {
            jail.set_env("DISCORD_TOKEN", "super-secret-token");
            let c = Config::load(None).unwrap();
            assert!(!format!("{c:?}").contains("super-secret"));
            Ok(())
        });
    }
}
