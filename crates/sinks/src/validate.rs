//! Checks of `[[sinks]]` that need no sink built: the list as a whole (names present and
//! unique) and the keys every sink has. Both the config check (through [`validate`]) and
//! [`SinkConfig::check`] (through [`common`]) run them, so the library refuses what the
//! binary refuses, with the same `key: problem` error as every other section.

use std::collections::HashMap;
use std::time::Duration;

use relaycord_bus::ConfigError;
use relaycord_bus::subject::sanitize_token;

use crate::SinkConfig;

/// The longest probe interval accepted. Far beyond any useful wait, and far below what
/// would overflow `Instant + Duration` (which panics) when the next probe is scheduled.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The most partitions of an ordered sink: each one is a consumer reading every event
/// of the sink, so the server's work grows with their number.
pub const MAX_PARTITIONS: u32 = 64;

/// Checks every configured sink against the stream it reads, `[nats]`'s `max_age` (0:
/// kept forever): [`validate`], then no wait of a sink may outlast the events it waits
/// for. An event nak'd for longer than the stream keeps it, or unacked for longer than
/// that, expires while waiting and is lost without a dead letter.
pub fn validate_with_stream(sinks: &[SinkConfig], max_age: Duration) -> Result<(), ConfigError> {
    validate(sinks)?;
    if max_age.is_zero() {
        return Ok(());
    }
    for sink in sinks {
        for (name, wait) in [
            ("ack_wait", sink.ack_wait),
            ("backoff.max", sink.backoff.max),
            ("pause.probe_max_interval", sink.pause.probe_max_interval),
        ] {
            if wait >= max_age {
                return Err(ConfigError::new(
                    format!("sinks.{}.{name}", sink.name),
                    format!(
                        "{wait:?} is not shorter than nats.max_age ({max_age:?}): an event waiting \
                         that long expires from the stream and is lost without a dead letter; \
                         lower {name} or raise nats.max_age"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks every configured sink: unique, non-empty names, then [`common`].
///
/// Names are compared as the bus uses them: the consumer, the DLQ subject and the dedupe
/// bucket all take the sanitised name, so `alerts.slack` and `alerts_slack` would share
/// one consumer and each get about half the events.
pub fn validate(sinks: &[SinkConfig]) -> Result<(), ConfigError> {
    let mut names: HashMap<String, &str> = HashMap::new();
    for (i, sink) in sinks.iter().enumerate() {
        if sink.name.is_empty() {
            return Err(ConfigError::new(
                format!("sinks[{i}].name"),
                "must not be empty",
            ));
        }
        let token = sanitize_token(&sink.name);
        if let Some(first) = names.insert(token.clone(), &sink.name) {
            let problem = if first == sink.name {
                format!("{:?} is used by two sinks; names must be unique", sink.name)
            } else {
                format!(
                    "{:?} and {first:?} both become {token:?} on the bus (consumer relaycord-{token}, \
                     DLQ {}), so they would share one consumer and split the events; \
                     rename one (letters, digits, '-' and '_' are kept as written, at most 100 characters)",
                    sink.name,
                    relaycord_bus::subject::dlq(&sink.name)
                )
            };
            return Err(ConfigError::new(format!("sinks[{i}].name"), problem));
        }
        common(sink)?;
    }
    Ok(())
}

/// The keys every sink has: attempts, concurrency and event types.
pub fn common(sink: &SinkConfig) -> Result<(), ConfigError> {
    let key = |key: &str| format!("sinks.{}.{key}", sink.name);
    if sink.max_attempts == 0 {
        return Err(ConfigError::new(key("max_attempts"), "must be at least 1"));
    }
    if sink.concurrency == 0 {
        return Err(ConfigError::new(key("concurrency"), "must be at least 1"));
    }
    if !(1..=MAX_PARTITIONS).contains(&sink.partitions) {
        return Err(ConfigError::new(
            key("partitions"),
            format!(
                "must be 1 to {MAX_PARTITIONS}: every partition reads all of the sink's events; \
                 use about the number of replicas you run (e.g. 4)"
            ),
        ));
    }
    if sink.pause.probe_interval.is_zero() {
        return Err(ConfigError::new(
            key("pause.probe_interval"),
            "must be more than 0 (e.g. \"5s\")",
        ));
    }
    if sink.kind.timeout().is_zero() {
        return Err(ConfigError::new(
            key("timeout"),
            "must be more than 0: every attempt would time out at once (e.g. \"10s\")",
        ));
    }
    for (name, interval) in [
        ("pause.probe_interval", sink.pause.probe_interval),
        ("pause.probe_max_interval", sink.pause.probe_max_interval),
    ] {
        if interval > MAX_PROBE_INTERVAL {
            return Err(ConfigError::new(
                key(name),
                format!("{interval:?} is too long; at most \"1d\" (e.g. \"5m\")"),
            ));
        }
    }
    if sink.pause.probe_max_interval < sink.pause.probe_interval {
        return Err(ConfigError::new(
            key("pause.probe_max_interval"),
            format!(
                "must be at least pause.probe_interval ({:?})",
                sink.pause.probe_interval
            ),
        ));
    }
    for (name, events) in [
        ("events", &sink.events),
        ("exclude.events", &sink.exclude.events),
    ] {
        if let Some(event) = events
            .iter()
            .find(|e| !relaycord_bus::subject::is_event_type(e))
        {
            return Err(ConfigError::new(
                key(name),
                format!("{event:?} is not a gateway event type (e.g. MESSAGE_CREATE)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SinkKind;

    fn sink(name: &str) -> SinkConfig {
        let kind: SinkKind = serde_json::from_str(r#"{"type":"http","url":"http://x"}"#).unwrap();
        SinkConfig::new(name, kind)
    }

    #[test]
    fn names_are_present_and_unique() {
        validate(&[sink("a"), sink("b")]).unwrap();
        let e = validate(&[sink("")]).unwrap_err().to_string();
        assert_eq!(e, "sinks[0].name: must not be empty");
        let e = validate(&[sink("a"), sink("a")]).unwrap_err().to_string();
        assert!(
            e.starts_with("sinks[1].name: \"a\" is used by two sinks"),
            "{e}"
        );
    }

    /// Names that differ as written but not on the bus would share one consumer, DLQ
    /// subject and dedupe bucket.
    #[test]
    fn names_colliding_after_sanitising_are_refused() {
        let e = validate(&[sink("alerts.slack"), sink("alerts_slack")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "sinks[1].name: \"alerts_slack\" and \"alerts.slack\" both become \"alerts_slack\""
            ),
            "{e}"
        );
        assert!(e.contains("rename one"), "{e}");
        let long = "a".repeat(100);
        let e = validate(&[sink(&long), sink(&format!("{long}b"))])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sinks[1].name:"), "{e}");
        validate(&[sink("alerts-slack"), sink("alerts_slack")]).unwrap();
    }

    #[test]
    fn common_keys_name_the_sink() {
        let mut a = sink("a");
        a.events = vec!["message_create".into()];
        let e = validate(&[a]).unwrap_err().to_string();
        assert!(e.starts_with("sinks.a.events: \"message_create\""), "{e}");
        let mut a = sink("a");
        a.max_attempts = 0;
        assert_eq!(common(&a).unwrap_err().key, "sinks.a.max_attempts");
        let mut a = sink("a");
        a.concurrency = 0;
        assert_eq!(common(&a).unwrap_err().key, "sinks.a.concurrency");
        let mut a = sink("a");
        a.pause.probe_max_interval = std::time::Duration::from_millis(1);
        assert_eq!(
            common(&a).unwrap_err().key,
            "sinks.a.pause.probe_max_interval"
        );
        let mut a = sink("a");
        a.pause.probe_interval = std::time::Duration::ZERO;
        assert_eq!(common(&a).unwrap_err().key, "sinks.a.pause.probe_interval");
    }

    /// Values `config check` used to pass that break at run time: each refusal names
    /// the key and the fix.
    #[test]
    fn values_that_break_at_run_time_are_refused() {
        let day = Duration::from_secs(24 * 3600);
        let message = |a: SinkConfig| validate_with_stream(&[a], day).unwrap_err().to_string();
        let mut a = sink("a");
        let SinkKind::Http(http) = &mut a.kind else {
            unreachable!()
        };
        http.timeout = Duration::ZERO;
        let e = message(a);
        assert!(e.starts_with("sinks.a.timeout: must be more than 0"), "{e}");
        assert!(e.contains("\"10s\""), "{e}");

        let mut a = sink("a");
        a.pause.probe_interval = Duration::from_secs(u64::MAX / 4);
        a.pause.probe_max_interval = Duration::from_secs(u64::MAX / 2);
        let e = message(a);
        assert!(e.starts_with("sinks.a.pause.probe_interval:"), "{e}");
        assert!(e.contains("at most \"1d\""), "{e}");

        for (key, set) in [
            (
                "ack_wait",
                (|a: &mut SinkConfig| {
                    a.ack_wait = Duration::from_secs(2 * 24 * 3600);
                    a.dedupe = false;
                }) as fn(&mut SinkConfig),
            ),
            ("backoff.max", |a| {
                a.backoff.max = Duration::from_secs(25 * 3600)
            }),
            ("pause.probe_max_interval", |a| {
                a.pause.probe_max_interval = Duration::from_secs(24 * 3600)
            }),
        ] {
            let mut a = sink("a");
            set(&mut a);
            let e = message(a);
            assert!(e.starts_with(&format!("sinks.a.{key}:")), "{e}");
            assert!(e.contains("nats.max_age (86400s)"), "{e}");
            assert!(
                e.contains(&format!("lower {key} or raise nats.max_age")),
                "{e}"
            );
        }
        // The defaults fit the default max_age (24h); 0 keeps events forever.
        validate_with_stream(&[sink("a")], day).unwrap();
        let mut a = sink("a");
        a.backoff.max = Duration::from_secs(30 * 24 * 3600);
        validate_with_stream(&[a], Duration::ZERO).unwrap();
    }
}
