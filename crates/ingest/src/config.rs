//! `[ingest]`: which shards this process holds and how hard it may push. The section is
//! the whole configuration of the role: [`crate::run`] takes it as it is in the file,
//! beside the shared `[nats]` and `[discord]` sections.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use relaycord_bus::{ConfigError, DiscordConfig, Shared};
use schemars::JsonSchema;
use serde::Deserialize;
use twilight_gateway::Intents;

/// The `[ingest]` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// `"auto"`: all shards, shared with the other replicas through leases; or a fixed
    /// inclusive range such as `"0-15"` (then `shard_count` must be a number).
    pub shards: String,
    /// `"auto"` (Discord's recommendation) or a number.
    pub shard_count: ShardCount,
    /// Publishes awaiting JetStream's ack per shard before reading pauses: the bound on
    /// what a crash can leave to the resume.
    pub window: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_listen: SocketAddr,
    /// A dead replica's shards move to the others this long after its last renewal
    /// (leases are renewed every third of it).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lease_ttl: Duration,
    /// With `shard_count = "auto"` (leased mode): how often Discord's recommended shard
    /// count is read again; when it exceeds the running count, ingest reshards.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reshard_check_interval: Duration,
    /// This replica's name among the others; empty: `$HOSTNAME-<pid>`.
    pub replica_id: String,
    /// `/readyz` fails when an owned shard has had no session for this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub unhealthy_after: Duration,
    /// `/readyz` fails when a shard's oldest publish has waited this long for JetStream's
    /// ack (a subject no stream covers, a permission the NATS user lacks, a stream
    /// refusing messages): the shard has stopped reading until it is fixed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_unacked_age: Duration,
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            shards: "auto".to_owned(),
            shard_count: ShardCount::Auto,
            window: 256,
            metrics_listen: ([127, 0, 0, 1], 9100).into(),
            lease_ttl: Duration::from_secs(10),
            reshard_check_interval: Duration::from_secs(3600),
            replica_id: String::new(),
            unhealthy_after: Duration::from_secs(60),
            max_unacked_age: Duration::from_secs(60),
        }
    }
}

/// `shard_count`: a number, or `"auto"` for Discord's recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ShardCount {
    Number(u32),
    #[serde(deserialize_with = "auto")]
    #[schemars(with = "String")]
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

impl ShardCount {
    /// `None` for `"auto"`.
    pub fn number(self) -> Option<u32> {
        match self {
            Self::Number(n) => Some(n),
            Self::Auto => None,
        }
    }
}

impl IngestSection {
    /// Checks the section and the `[discord]` keys only ingest reads (the intents).
    pub fn validate(&self, shared: Shared<'_>) -> Result<(), ConfigError> {
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::new(
                "ingest.lease_ttl",
                "must be at least 2s: leases are renewed every third of it",
            ));
        }
        if self.max_unacked_age < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "ingest.max_unacked_age",
                "must be at least 1s; keep it above the NATS request timeout (10s) so that \
                 one slow ack does not fail readiness",
            ));
        }
        if self.reshard_check_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "ingest.reshard_check_interval",
                "must be at least 1s (each check is a GET /gateway/bot); the default is 1h",
            ));
        }
        intents(shared.discord)?;
        self.shard_range()?;
        Ok(())
    }

    /// `None` for `"auto"`; otherwise the half-open range of `"A-B"` (inclusive in the file).
    pub fn shard_range(&self) -> Result<Option<Range<u32>>, ConfigError> {
        let spec = self.shards.trim();
        if spec == "auto" {
            return Ok(None);
        }
        let err = || {
            ConfigError::new(
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
        let Some(count) = self.shard_count.number() else {
            return Err(ConfigError::new(
                "ingest.shard_count",
                "must be a number when ingest.shards is a range",
            ));
        };
        if b >= count {
            return Err(ConfigError::new(
                "ingest.shards",
                format!("range {a}-{b} exceeds ingest.shard_count = {count}"),
            ));
        }
        Ok(Some(a..b + 1))
    }

    /// The stall after which `/healthz` fails. A shard loop may legitimately pause for a
    /// NATS request timeout (10 s); a stall shorter than that is not a wedge.
    pub fn stall_after(&self) -> Duration {
        self.unhealthy_after.max(Duration::from_secs(30))
    }
}

/// `discord.intents` as twilight's flags. Here rather than in the bus so that only the
/// gateway role depends on twilight.
pub fn intents(discord: &DiscordConfig) -> Result<Intents, ConfigError> {
    discord.intents.iter().try_fold(Intents::empty(), |all, name| {
        Intents::from_name(name).map(|i| all | i).ok_or_else(|| {
            ConfigError::new(
                "discord.intents",
                format!("{name:?} is not an intent; use names such as GUILDS, GUILD_MESSAGES, MESSAGE_CONTENT"),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaycord_bus::NatsConfig;

    fn check(section: &IngestSection, discord: &DiscordConfig) -> Result<(), ConfigError> {
        let nats = NatsConfig::default();
        section.validate(Shared {
            nats: &nats,
            discord,
        })
    }

    fn section(shards: &str, shard_count: ShardCount) -> IngestSection {
        IngestSection {
            shards: shards.to_owned(),
            shard_count,
            ..IngestSection::default()
        }
    }

    #[test]
    fn shard_ranges() {
        let s = section("0-3", ShardCount::Number(8));
        assert_eq!(s.shard_range().unwrap(), Some(0..4));
        assert_eq!(
            section("auto", ShardCount::Auto).shard_range().unwrap(),
            None
        );
        assert_eq!(
            section("5", ShardCount::Number(8)).shard_range().unwrap(),
            Some(5..6)
        );
        let e = section("0-9", ShardCount::Number(4))
            .shard_range()
            .unwrap_err();
        assert_eq!(e.key, "ingest.shards");
        let e = section("0-1", ShardCount::Auto).shard_range().unwrap_err();
        assert_eq!(e.key, "ingest.shard_count");
        let e = section("3-1", ShardCount::Number(8))
            .shard_range()
            .unwrap_err();
        assert!(e.problem.contains("is not \"auto\""), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let discord = DiscordConfig::default();
        check(&IngestSection::default(), &discord).unwrap();
        let short = IngestSection {
            lease_ttl: Duration::from_secs(1),
            ..IngestSection::default()
        };
        let e = check(&short, &discord).unwrap_err().to_string();
        assert!(
            e.starts_with("ingest.lease_ttl: must be at least 2s"),
            "{e}"
        );
        let zero = IngestSection {
            max_unacked_age: Duration::ZERO,
            ..IngestSection::default()
        };
        let e = check(&zero, &discord).unwrap_err().to_string();
        assert!(e.starts_with("ingest.max_unacked_age: "), "{e}");
        let discord = DiscordConfig {
            intents: vec!["GUILD".into()],
            ..DiscordConfig::default()
        };
        let e = check(&IngestSection::default(), &discord)
            .unwrap_err()
            .to_string();
        assert!(e.contains("discord.intents") && e.contains("GUILDS"), "{e}");
    }
}
