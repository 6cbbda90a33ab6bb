//! `[[sinks]]` entries of the config file.

use std::time::Duration;

use async_nats::jetstream;
use relaycord_bus::{Subjects, streams};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::amqp::AmqpSinkConfig;
use crate::dedupe::Dedupe;
use crate::discord::DiscordSinkConfig;
use crate::dlq::{self, DeadLetter, Replayed};
use crate::driver::{Driver, DriverSettings};
use crate::error::SinkError;
use crate::filter::{Exclude, Filter};
use crate::http::HttpSinkConfig;
use crate::nats::NatsSinkConfig;
use crate::ordering::{OnFailure, Ordering};
use crate::pause::PauseConfig;
use crate::replay;
use crate::retry::Backoff;
use crate::{BuildContext, SinkMetrics};

/// One configured sink: the fields every sink has, then its type's own.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SinkConfig {
    /// Unique name; the durable consumer and the DLQ subject derive from it.
    pub name: String,
    /// Event types to deliver (e.g. `MESSAGE_CREATE`); empty means all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Guild ids to deliver; empty means all.
    #[serde(default)]
    pub guilds: Vec<String>,
    /// Channel ids to deliver (`data.channel_id`); empty means all. Events without a
    /// channel are skipped when this is set.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Events never delivered: types, authors, bots; see [`Exclude`].
    #[serde(default)]
    pub exclude: Exclude,
    /// Sink-side dedupe: remember delivered ids so a redelivery after a lost ack does not
    /// reach the destination twice. Costs a KV lookup and write per delivery.
    #[serde(default = "default_true")]
    pub dedupe: bool,
    /// How long delivered ids are remembered; must exceed `ack_wait`.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_dedupe_window")]
    pub dedupe_window: Duration,
    /// JetStream redelivers an unacked message after this; in-progress acks are sent every
    /// half of it during slow deliveries.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// Attempts before an event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Deliveries in flight per process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub backoff: Backoff,
    /// Pause the sink after a run of failed events instead of dead-lettering the
    /// stream; see [`PauseConfig`].
    #[serde(default)]
    pub pause: PauseConfig,
    /// Deliver events of one guild or one channel one after another, in stream order
    /// (`"guild"`, `"channel"`), or with no order (`"none"`). Unset: `"channel"` for a
    /// discord sink, `"none"` for the others. See docs/sinks.md, "Ordered delivery".
    #[serde(default)]
    pub ordering: Option<Ordering>,
    /// With ordering: `"dead_letter"` (the default) moves an undeliverable event to the
    /// DLQ after `max_attempts` and goes on, marking the lane's next delivery with
    /// `Relaycord-Lane-Gap`; `"block"` retries it until it goes through, holding its lane.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// With ordering: the lanes are split into this many partitions, each delivered by
    /// one replica at a time (every partition reads all of the sink's events). At least
    /// the number of replicas you run; more spread the work more evenly.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// The type-specific part, selected by `type = "..."`. Unknown keys are rejected here,
/// so a typo in a sink's config fails at start instead of being ignored.
/// [`SinkKind::build`] turns it into a running sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    Http(HttpSinkConfig),
    Amqp(AmqpSinkConfig),
    Nats(NatsSinkConfig),
    Discord(DiscordSinkConfig),
}

impl SinkKind {
    /// The time one attempt may take; every type has one.
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Http(c) => c.timeout,
            Self::Amqp(c) => c.timeout,
            Self::Nats(c) => c.timeout,
            Self::Discord(c) => c.timeout,
        }
    }
}

impl SinkConfig {
    /// A sink with every common option at its default.
    pub fn new(name: impl Into<String>, kind: SinkKind) -> Self {
        Self {
            name: name.into(),
            events: Vec::new(),
            guilds: Vec::new(),
            channels: Vec::new(),
            exclude: Exclude::default(),
            dedupe: true,
            dedupe_window: default_dedupe_window(),
            ack_wait: default_ack_wait(),
            max_attempts: default_max_attempts(),
            concurrency: default_concurrency(),
            backoff: Backoff::default(),
            pause: PauseConfig::default(),
            ordering: None,
            on_failure: OnFailure::default(),
            partitions: default_partitions(),
            kind,
        }
    }

    /// `ordering`, or its default for this sink's type: a discord sink posting into
    /// one channel keeps that channel's order.
    pub fn ordering(&self) -> Ordering {
        self.ordering.unwrap_or(match self.kind {
            SinkKind::Discord(_) => Ordering::Channel,
            _ => Ordering::None,
        })
    }

    /// Builds the sink without running it: `relaycord config check` uses this to fail
    /// on a bad URL, secret or template before anything starts.
    pub fn check(&self) -> Result<(), SinkError> {
        self.check_common()?;
        self.kind
            .build(&self.name, &BuildContext::default())
            .map(drop)
    }

    fn check_common(&self) -> Result<(), SinkError> {
        crate::validate::common(self)
            .map_err(|e| SinkError::new(crate::SinkErrorKind::Config, e.to_string()))?;
        let bad = |key: &str, msg: String| {
            SinkError::new(
                crate::SinkErrorKind::Config,
                format!("sinks.{}.{key}: {msg}", self.name),
            )
        };
        for (key, ids) in [
            ("guilds", &self.guilds),
            ("channels", &self.channels),
            ("exclude.authors", &self.exclude.authors),
        ] {
            if let Some(id) = ids
                .iter()
                .find(|id| !relaycord_bus::subject::is_snowflake(id))
            {
                return Err(bad(
                    key,
                    format!(
                        "{id:?} is not an id; write ids as strings of digits, e.g. \"81384788765712384\""
                    ),
                ));
            }
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(bad(
                "ack_wait",
                "must be at least 1s (in-progress acks are sent every half of it)".to_owned(),
            ));
        }
        if self.dedupe && self.dedupe_window <= self.ack_wait {
            return Err(bad(
                "dedupe_window",
                format!(
                    "must be longer than ack_wait ({:?}): a redelivery comes after ack_wait",
                    self.ack_wait
                ),
            ));
        }
        Ok(())
    }

    /// The driver settings: types and guilds become consumer filter subjects where the
    /// server allows, and every filter is also applied in process.
    pub fn driver_settings(&self, subjects: &Subjects) -> DriverSettings {
        let filter = Filter {
            event_types: self.events.iter().cloned().collect(),
            guilds: self.guilds.iter().cloned().collect(),
            channels: self.channels.iter().cloned().collect(),
            exclude_events: self.exclude.events.iter().cloned().collect(),
            exclude_authors: self.exclude.authors.iter().cloned().collect(),
            exclude_bots: self.exclude.bots,
        };
        DriverSettings {
            name: self.name.clone(),
            stream: streams::gateway_stream(subjects),
            subjects: filter.subjects(subjects),
            filter,
            max_attempts: self.max_attempts,
            concurrency: self.concurrency,
            ack_wait: self.ack_wait,
            backoff: self.backoff,
            dedupe_window: self.dedupe.then_some(self.dedupe_window),
            pause: self.pause,
            ordering: self.ordering(),
            on_failure: self.on_failure,
            partitions: self.partitions,
        }
    }

    /// Builds the sink and runs it under the shared driver until `shutdown`.
    pub async fn run(
        &self,
        js: jetstream::Context,
        subjects: &Subjects,
        metrics: SinkMetrics,
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        let settings = self.driver_settings(subjects);
        let sink = self
            .kind
            .build(&self.name, &BuildContext::on_bus(&js, subjects))?;
        Driver::new(sink, js, settings, metrics).run(shutdown).await
    }
}

impl SinkConfig {
    /// Delivers `letters` (dead letters of this sink) through the sink built from this
    /// config, with the same dedupe bucket as the running sink; see [`dlq::replay`].
    pub async fn replay_dead_letters(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        letters: &[DeadLetter],
    ) -> Result<Vec<(u64, Replayed)>, SinkError> {
        let dedupe = match self.dedupe {
            true => Dedupe::existing(js, &self.name).await,
            false => None,
        };
        let sink = self
            .kind
            .build(&self.name, &BuildContext::on_bus(js, subjects))?;
        dlq::replay(js, &sink, dedupe.as_ref(), letters).await
    }

    /// Replays a time range (or its dead letters) through the sink built from this
    /// config, with its filters and retry settings; see [`replay`].
    pub async fn replay(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        request: &replay::Request,
        shutdown: &CancellationToken,
        progress: &mut dyn FnMut(&replay::Report),
    ) -> Result<replay::Report, SinkError> {
        let settings = self.driver_settings(subjects);
        let sink = self
            .kind
            .build(&self.name, &BuildContext::on_bus(js, subjects))?;
        let target = replay::Target {
            name: &self.name,
            sink: &sink,
            settings: &settings,
        };
        replay::run(js, &target, request, shutdown, progress).await
    }
}

fn default_true() -> bool {
    true
}

fn default_dedupe_window() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

fn default_max_attempts() -> u32 {
    10
}

fn default_concurrency() -> usize {
    64
}

/// `partitions` unless configured.
pub const DEFAULT_PARTITIONS: u32 = 4;

fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SinkConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn common_and_specific_fields() {
        let c = parse(r#"{"name":"a","type":"http","url":"http://x","events":["MESSAGE_CREATE"],"max_attempts":3,"timeout":"2s"}"#).unwrap();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.concurrency, 64);
        let SinkKind::Http(http) = c.kind else {
            panic!("an http sink")
        };
        assert_eq!(http.url, "http://x");
        assert_eq!(http.timeout, std::time::Duration::from_secs(2));
    }

    #[test]
    fn unknown_types_and_keys_are_rejected() {
        let e = parse(r#"{"name":"a","type":"smtp","url":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("smtp"), "{e}");
        let e = parse(r#"{"name":"a","type":"http","url":"x","secert":"whsec_x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("secert"), "{e}");
        let e = parse(r#"{"name":"a","url":"x"}"#).unwrap_err().to_string();
        assert!(e.contains("type"), "{e}");
    }
}
