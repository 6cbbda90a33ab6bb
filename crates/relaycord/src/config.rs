//! The config file: defaults, then the TOML file, then `RELAYCORD_<SECTION>__<KEY>`
//! environment variables (and `DISCORD_TOKEN`), validated after merging so an error
//! names the key and the fix. Each section belongs to the crate that reads it (`[nats]`
//! and `[discord]` to the bus, `[ingest]`, `[interactions]` and `[[sinks]]` to their
//! roles, `[telemetry]` to the binary); this file only composes them. Every key is documented in
//! `docs/configuration.md`, which a test below holds to the structs.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Deserialize;

pub use relaycord_bus::{ConfigError, DiscordConfig, NatsConfig, Shared};
pub use relaycord_ingest::{IngestSection, ShardCount};
pub use relaycord_interactions::InteractionsSection;
use relaycord_sinks::SinkConfig;

pub use crate::traces::TelemetrySection;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
    pub telemetry: TelemetrySection,
    /// Documented in docs/sinks.md, per sink type (checked by config/docs.rs).
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// What kind of value was found, without the value (figment's own message quotes it).
fn shape(found: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match found {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit | Actual::Option => "nothing",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another kind of value",
    }
}

/// Keys whose environment values are taken exactly as written. figment reads other
/// values as TOML-like literals, which would turn a password `123456` into a number (and
/// fail), `0123` into 123, or `"x"` into `x`.
const SECRET_KEYS: [&str; 4] = [
    "nats.token",
    "nats.password",
    "nats.nkey_seed",
    "discord.token",
];

/// `section.key` of every key of the sections whose value is a string, read from the
/// config's JSON Schema. The environment gives text; figment would read
/// `RELAYCORD_DISCORD__APPLICATION_ID=123456789012345678` as a number and the string key
/// would refuse it ("expected a string, found an integer"), and a user `12345` likewise.
/// Keys that take a number or a string (`ingest.shard_count`) are not among them.
fn string_keys() -> Vec<String> {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<Config>()
        .to_value();
    let is_string = |field: &serde_json::Value| match field.get("type") {
        Some(serde_json::Value::String(t)) => t == "string",
        Some(serde_json::Value::Array(types)) => {
            types.iter().any(|t| t == "string")
                && types.iter().all(|t| t == "string" || t == "null")
        }
        _ => false,
    };
    let mut keys = Vec::new();
    let sections = schema.get("properties").and_then(|p| p.as_object());
    for (section, fields) in sections.into_iter().flatten() {
        let fields = fields.get("properties").and_then(|p| p.as_object());
        for (key, field) in fields.into_iter().flatten() {
            if is_string(field) {
                keys.push(format!("{section}.{key}"));
            }
        }
    }
    keys
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
        // The value itself is never repeated: the key may hold a secret.
        figment::error::Kind::InvalidType(found, expected)
        | figment::error::Kind::InvalidValue(found, expected) => {
            format!("expected {expected}, found {}", shape(found))
        }
        figment::error::Kind::Unsupported(found)
        | figment::error::Kind::UnsupportedKey(found, _) => {
            format!("unsupported {}", shape(found))
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
    ConfigError::new(
        if key.is_empty() {
            "config".to_owned()
        } else {
            key
        },
        problem,
    )
}

impl Config {
    /// Loads the file at `path` (when given; it must exist) and the environment, then
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!(
                        "{} does not exist; pass --config FILE or create it (see docs/configuration.md)",
                        path.display()
                    ),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("RELAYCORD_").ignore(&["CONFIG"]).split("__");
        let strings = string_keys();
        let is_secret = move |key: &str| {
            SECRET_KEYS.iter().any(|s| key.eq_ignore_ascii_case(s))
                || strings.iter().any(|s| key.eq_ignore_ascii_case(s))
        };
        // Keys reach filters with their case as written (lowercased only later).
        let is_sink = |key: &str| key.to_ascii_lowercase().starts_with("sinks.");
        let literal = is_secret.clone();
        figment = figment.merge(
            env.clone()
                .filter(move |key| !literal(key.as_str()) && !is_sink(key.as_str())),
        );
        let discord_token = Env::raw()
            .only(&["DISCORD_TOKEN"])
            .map(|_| "discord.token".into());
        for (key, value) in env.iter().filter(|(key, _)| is_secret(key.as_str())) {
            figment = figment.merge(Serialized::default(key.as_str(), value));
        }
        for (key, value) in discord_token.iter() {
            figment = figment.merge(Serialized::default(key.as_str(), value));
        }
        let sink_overrides = env.iter().filter_map(|(key, value)| {
            Some((key.as_str().strip_prefix("sinks.")?.to_owned(), value))
        });
        figment = sink_env::apply(figment, sink_overrides)?;
        let config: Config = figment.extract().map_err(|e| load_error(&e))?;
        config.validate()?;
        Ok(config)
    }

    /// Every section's own checks, in file order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.discord.validate()?;
        self.ingest.validate(self.shared())?;
        self.interactions.validate(self.shared())?;
        self.telemetry.validate()?;
        relaycord_sinks::validate::validate_with_stream(&self.sinks, self.nats.max_age)
    }

    /// The sections every role reads beside its own.
    pub fn shared(&self) -> Shared<'_> {
        Shared {
            nats: &self.nats,
            discord: &self.discord,
        }
    }
}

mod sink_env;

#[cfg(test)]
mod docs;

#[cfg(test)]
// figment's Jail returns its own large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;
    use std::time::Duration;

    /// Every string key takes what the environment gives, digits included.
    #[test]
    fn numbers_from_the_environment_reach_string_keys_as_written() {
        Jail::expect_with(|jail| {
            jail.set_env("RELAYCORD_DISCORD__APPLICATION_ID", "123456789012345678");
            jail.set_env("RELAYCORD_NATS__USER", "0123");
            jail.set_env("RELAYCORD_NATS__PASSWORD", "4567");
            jail.set_env("RELAYCORD_NATS__SUBJECT_PREFIX", "42");
            jail.set_env("RELAYCORD_INGEST__SHARD_COUNT", "8");
            let config = Config::load(None).unwrap();
            assert_eq!(config.discord.application_id, "123456789012345678");
            assert_eq!(config.nats.user, "0123");
            assert_eq!(config.nats.subject_prefix, "42");
            assert_eq!(config.ingest.shard_count, ShardCount::Number(8));
            Ok(())
        });
        let keys = string_keys();
        for key in [
            "discord.application_id",
            "nats.user",
            "nats.url",
            "ingest.replica_id",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
        assert!(
            !keys
                .iter()
                .any(|k| k == "ingest.shard_count" || k == "ingest.window")
        );
    }

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
            assert_eq!(c.ingest.shard_range().unwrap(), Some(0..4));
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
            relaycord_interactions::public_key(&c.discord).unwrap();
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
    fn secrets_from_the_environment_are_taken_as_written() {
        Jail::expect_with(|jail| {
            // Each of these used to fail (a number, not a string) or change on the way.
            jail.set_env("RELAYCORD_NATS__USER", "relay");
            jail.set_env("RELAYCORD_NATS__PASSWORD", "123456");
            jail.set_env("DISCORD_TOKEN", r#""quoted" [x"#);
            let c = Config::load(None).unwrap();
            assert_eq!(c.nats.password.expose(), "123456");
            assert_eq!(c.discord.token.expose(), r#""quoted" [x"#);
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("RELAYCORD_NATS__TOKEN", "0123");
            let c = Config::load(None).unwrap();
            assert_eq!(c.nats.token.expose(), "0123");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_is_named_but_never_repeated() {
        Jail::expect_with(|jail| {
            jail.set_env("RELAYCORD_INGEST__WINDOW", "s3cr3t-looking-value");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.starts_with("ingest.window:"), "{e}");
            assert!(!e.contains("s3cr3t-looking-value"), "{e}");
            Ok(())
        });
        let e = load_err("[nats]\npassword = 987654321");
        assert!(
            e.starts_with("nats.password:") && e.contains("string"),
            "{e}"
        );
        assert!(!e.contains("987654321"), "{e}");
    }

    #[test]
    fn sink_keys_from_the_environment_override_one_entry() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "relaycord.toml",
                r#"
                [[sinks]]
                name = "first"
                type = "http"
                url = "http://127.0.0.1:1/a"
                [[sinks]]
                name = "second"
                type = "http"
                url = "http://127.0.0.1:1/b"
                headers = { "x-team" = "from-file" }
                "#,
            )?;
            // The Helm chart passes sink secrets this way, from Kubernetes Secrets.
            jail.set_env(
                "RELAYCORD_SINKS__1__SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            );
            jail.set_env("RELAYCORD_SINKS__1__HEADERS__X-API-KEY", "0123");
            jail.set_env("RELAYCORD_SINKS__0__URL", "http://127.0.0.1:2/env");
            jail.set_env("RELAYCORD_SINKS__0__MAX_ATTEMPTS", "3");
            let c = Config::load(Some(Path::new("relaycord.toml"))).unwrap();
            assert_eq!(c.sinks.len(), 2);
            assert_eq!(c.sinks[0].max_attempts, 3);
            let relaycord_sinks::SinkKind::Http(first) = &c.sinks[0].kind else {
                panic!("{:?}", c.sinks[0].kind)
            };
            assert_eq!(first.url, "http://127.0.0.1:2/env");
            let relaycord_sinks::SinkKind::Http(second) = &c.sinks[1].kind else {
                panic!("{:?}", c.sinks[1].kind)
            };
            assert!(second.secret.is_some());
            assert_eq!(second.headers["x-api-key"].expose(), "0123");
            assert_eq!(second.headers["x-team"].expose(), "from-file");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(
                "r.toml",
                "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"",
            )?;
            jail.set_env("RELAYCORD_SINKS__4__SECRET", "whsec_x");
            let e = Config::load(Some(Path::new("r.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("RELAYCORD_SINKS__4__SECRET:") && e.contains("no sinks[4]"),
                "{e}"
            );
            assert!(!e.contains("whsec_x"), "{e}");
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
