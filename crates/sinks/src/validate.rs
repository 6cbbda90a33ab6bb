//! Checks of `[[sinks]]` that need no sink built: the list as a whole (names present and
//! unique) and the keys every sink has. Both the config check (through [`validate`]) and
//! [`SinkConfig::check`] (through [`common`]) run them, so the library refuses what the
//! binary refuses, with the same `key: problem` error as every other section.

use std::collections::HashSet;

use relaycord_bus::ConfigError;

use crate::SinkConfig;

/// Checks every configured sink: unique, non-empty names, then [`common`].
pub fn validate(sinks: &[SinkConfig]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        if sink.name.is_empty() {
            return Err(ConfigError::new(
                format!("sinks[{i}].name"),
                "must not be empty",
            ));
        }
        if !names.insert(&sink.name) {
            return Err(ConfigError::new(
                format!("sinks[{i}].name"),
                format!("{:?} is used by two sinks; names must be unique", sink.name),
            ));
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
    if sink.pause.probe_interval.is_zero() {
        return Err(ConfigError::new(
            key("pause.probe_interval"),
            "must be more than 0 (e.g. \"5s\")",
        ));
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
}
