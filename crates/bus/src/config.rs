//! The `[nats]` and `[discord]` sections of the config file, which every role reads, and
//! the one error type all sections report: `key: problem`, so `relaycord config check`
//! names the key to fix the same way whichever crate found the mistake.
//!
//! Loading (defaults → file → environment) is the binary's job; each section here only
//! says what it accepts. Checks that need a role's own library (intent names need
//! twilight, the public key needs ed25519) are made by that role's section, which is
//! handed [`Shared`].

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{Secret, StreamSettings, Subjects};

/// Discord's REST base; the simulator's is `http://127.0.0.1:PORT/api`.
pub const DISCORD_API_BASE: &str = "https://discord.com/api";

/// A config mistake: the key as written in the file (`nats.url`, `sinks[0].name`) and
/// what is wrong with it, ideally with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The shared sections a role reads beside its own, so that a role's entry point does
/// not change when another shared section appears.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    pub nats: &'a NatsConfig,
    pub discord: &'a DiscordConfig,
}

/// `[nats]`: where the bus is, how to log in, and how long the streams keep events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL; several servers of one cluster comma-separated, the client fails over.
    pub url: String,
    /// Subjects are `<prefix>.gateway.…`, streams `<PREFIX>_GATEWAY`: bots sharing an
    /// account pick different prefixes.
    pub subject_prefix: String,
    /// Replicas of every stream and KV bucket: 1 on a single server, 3 on a cluster.
    pub stream_replicas: usize,
    /// How long events stay in the stream, i.e. how far back a new sink starts.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Stream size cap in bytes; -1 for none. The oldest events go first.
    pub max_bytes: i64,
    /// How long a `Nats-Msg-Id` is remembered: it must cover a gateway resume.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duplicate_window: Duration,
    /// Dead letters outlive events so that an operator has time to replay them.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub dlq_max_age: Duration,
    /// Dead letters kept per sink; beyond it the oldest are dropped. -1 for none.
    pub dlq_max_msgs_per_sink: i64,
    /// Size cap of the dead-letter stream in bytes; beyond it the oldest letters are
    /// dropped. -1 for none.
    pub dlq_max_bytes: i64,
    /// Credentials file (JWT + nkey seed, as `nsc` writes it).
    pub creds_file: Option<PathBuf>,
    /// Token auth (a secret).
    pub token: Secret,
    /// User for user and password auth.
    pub user: String,
    /// Password for `user` (a secret).
    pub password: Secret,
    /// Nkey seed (`SU…`, a secret).
    pub nkey_seed: Secret,
    /// PEM CA bundle to verify the server with, for private CAs.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a server that does not offer TLS, rather than log in in clear.
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        let streams = StreamSettings::default();
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            subject_prefix: crate::DEFAULT_PREFIX.to_owned(),
            stream_replicas: streams.replicas,
            max_age: streams.max_age,
            max_bytes: streams.max_bytes,
            duplicate_window: streams.duplicate_window,
            dlq_max_age: streams.dlq_max_age,
            dlq_max_msgs_per_sink: streams.dlq_max_msgs_per_sink,
            dlq_max_bytes: streams.dlq_max_bytes,
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
            dlq_max_msgs_per_sink: self.dlq_max_msgs_per_sink,
            dlq_max_bytes: self.dlq_max_bytes,
        }
    }

    /// Checks what can be checked without connecting, naming the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Subjects::validate_prefix(&self.subject_prefix)
            .map_err(|p| ConfigError::new("nats.subject_prefix", p))?;
        if self.stream_replicas == 0 || self.stream_replicas > 5 {
            return Err(ConfigError::new(
                "nats.stream_replicas",
                "must be 1 to 5 (1 on a single server, 3 on a cluster)",
            ));
        }
        self.server_addrs()?;
        self.validate_login()?;
        for (key, value) in [
            ("nats.dlq_max_msgs_per_sink", self.dlq_max_msgs_per_sink),
            ("nats.dlq_max_bytes", self.dlq_max_bytes),
        ] {
            if value == 0 || value < -1 {
                return Err(ConfigError::new(
                    key,
                    "must be -1 (no cap) or more than 0: the oldest dead letters are dropped at the cap",
                ));
            }
        }
        if self.duplicate_window < Duration::from_secs(10) {
            return Err(ConfigError::new(
                "nats.duplicate_window",
                "must be at least 10s: it has to cover a gateway resume",
            ));
        }
        Ok(())
    }

    /// At most one way of authenticating, pairs complete, files readable.
    fn validate_login(&self) -> Result<(), ConfigError> {
        let methods = [
            ("nats.creds_file", self.creds_file.is_some()),
            ("nats.nkey_seed", !self.nkey_seed.is_empty()),
            ("nats.token", !self.token.is_empty()),
            ("nats.user", !self.user.is_empty()),
        ];
        let chosen: Vec<&str> = methods.iter().filter(|m| m.1).map(|m| m.0).collect();
        if chosen.len() > 1 {
            return Err(ConfigError::new(
                chosen[1],
                format!("set only one way to authenticate; {} is set too", chosen[0]),
            ));
        }
        both_or_neither(
            ("nats.user", !self.user.is_empty()),
            ("nats.password", !self.password.is_empty()),
            "user and password go together (RELAYCORD_NATS__PASSWORD for the secret)",
        )?;
        both_or_neither(
            ("nats.tls_cert_file", self.tls_cert_file.is_some()),
            ("nats.tls_key_file", self.tls_key_file.is_some()),
            "a client certificate needs its key: set both tls_cert_file and tls_key_file",
        )?;
        for (key, path) in [
            ("nats.creds_file", &self.creds_file),
            ("nats.tls_ca_file", &self.tls_ca_file),
            ("nats.tls_cert_file", &self.tls_cert_file),
            ("nats.tls_key_file", &self.tls_key_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(ConfigError::new(
                    key,
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        Ok(())
    }

    /// `url` may list several servers of one cluster, comma-separated; the client picks
    /// one and fails over to the others.
    pub fn server_addrs(&self) -> Result<Vec<ServerAddr>, ConfigError> {
        let addrs = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<ServerAddr>().map_err(|e| {
                    let (u, e) = (
                        crate::redact::userinfo(u),
                        crate::redact::userinfo(&e.to_string()),
                    );
                    ConfigError::new("nats.url", format!("{u:?} is not a NATS URL: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(ConfigError::new(
                "nats.url",
                "is empty; e.g. nats://127.0.0.1:4222",
            ));
        }
        Ok(addrs)
    }
}

/// Two keys that only make sense together; the error names the one that is missing.
fn both_or_neither(a: (&str, bool), b: (&str, bool), problem: &str) -> Result<(), ConfigError> {
    match (a.1, b.1) {
        (true, false) => Err(ConfigError::new(b.0, problem)),
        (false, true) => Err(ConfigError::new(a.0, problem)),
        _ => Ok(()),
    }
}

/// `[discord]`: the application, shared by ingest (token, intents), interactions
/// (public key) and the discord sink (REST base).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordConfig {
    /// Bot token (a secret); `DISCORD_TOKEN` sets it too. Ingest needs it.
    pub token: Secret,
    /// The application's id, for follow-up messages.
    pub application_id: String,
    /// The application's public key (hex, from the Developer Portal); interactions need it.
    pub public_key: String,
    /// Gateway intent names, e.g. `GUILDS`, `MESSAGE_CONTENT` (privileged intents must be
    /// enabled in the Developer Portal too).
    pub intents: Vec<String>,
    /// REST base, so that tests and `relaycord dev` can point at the simulator.
    pub api_base: String,
    /// Overrides the websocket URL that `/gateway/bot` returns; empty: use Discord's.
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
            api_base: DISCORD_API_BASE.to_owned(),
            gateway_url: String::new(),
        }
    }
}

impl DiscordConfig {
    /// What every role may rely on; intent names and the public key are checked by the
    /// roles that use them (see the module docs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.api_base.starts_with("http://") && !self.api_base.starts_with("https://") {
            return Err(ConfigError::new(
                "discord.api_base",
                format!(
                    "{:?} is not an http(s) URL; the default is {DISCORD_API_BASE:?}",
                    self.api_base
                ),
            ));
        }
        Ok(())
    }

    /// The token, which the gateway cannot do without.
    pub fn require_token(&self) -> Result<&Secret, ConfigError> {
        if self.token.is_empty() {
            return Err(ConfigError::new(
                "discord.token",
                "is empty: set DISCORD_TOKEN or discord.token in the config file",
            ));
        }
        Ok(&self.token)
    }

    /// `gateway_url`, when set.
    pub fn gateway_url(&self) -> Option<&str> {
        Some(self.gateway_url.as_str()).filter(|u| !u.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NatsConfig::default().validate().unwrap();
        DiscordConfig::default().validate().unwrap();
        assert_eq!(NatsConfig::default().subjects().prefix(), "discord");
    }

    #[test]
    fn errors_name_the_key() {
        let nats = NatsConfig {
            stream_replicas: 0,
            ..NatsConfig::default()
        };
        let e = nats.validate().unwrap_err().to_string();
        assert!(e.starts_with("nats.stream_replicas: must be 1 to 5"), "{e}");
        let nats = NatsConfig {
            duplicate_window: Duration::from_secs(1),
            ..NatsConfig::default()
        };
        let e = nats.validate().unwrap_err().to_string();
        assert!(e.starts_with("nats.duplicate_window: "), "{e}");
        let nats = NatsConfig {
            dlq_max_msgs_per_sink: 0,
            ..NatsConfig::default()
        };
        let e = nats.validate().unwrap_err().to_string();
        assert!(e.starts_with("nats.dlq_max_msgs_per_sink: "), "{e}");
        let nats = NatsConfig {
            url: " , ".into(),
            ..NatsConfig::default()
        };
        let e = nats.validate().unwrap_err().to_string();
        assert!(e.starts_with("nats.url: is empty"), "{e}");
        let e = DiscordConfig::default().require_token().unwrap_err();
        assert_eq!(e.key, "discord.token");
    }
}
