//! `RELAYCORD_SINKS__<i>__<KEY>`: environment overrides for one entry of `[[sinks]]`, so a
//! sink's secret, headers or URL can come from a Kubernetes Secret while the rest of the
//! sink stays in the file. figment's own environment provider cannot do this: it turns
//! `sinks.0.secret` into a table that replaces the whole list.

use figment::Figment;
use figment::providers::Serialized;
use figment::value::{Dict, Value};

use super::ConfigError;

/// Sink keys whose environment values are taken exactly as written (like `SECRET_KEYS`):
/// a secret `0123` stays a string. Every `headers.<name>` is one too.
const LITERAL_KEYS: [&str; 4] = ["url", "secret", "token", "webhook_url"];

/// Applies the overrides (`sinks.<i>.<key>` as figment's `Env` names them) to the sinks the
/// figment already holds.
pub(super) fn apply(
    figment: Figment,
    overrides: impl IntoIterator<Item = (String, String)>,
) -> Result<Figment, ConfigError> {
    let overrides: Vec<(String, String)> = overrides.into_iter().collect();
    if overrides.is_empty() {
        return Ok(figment);
    }
    let mut sinks = match figment.find_value("sinks") {
        Ok(Value::Array(_, sinks)) => sinks,
        Ok(_) => {
            return Err(ConfigError::new(
                "sinks",
                "expected a list of [[sinks]] tables",
            ));
        }
        Err(_) => Vec::new(),
    };
    for (key, value) in overrides {
        let variable = format!("RELAYCORD_SINKS__{}", key.replace('.', "__").to_uppercase());
        let Some((index, path)) = key.split_once('.').and_then(|(i, path)| {
            let i = i.parse::<usize>().ok()?;
            Some((i, path))
        }) else {
            return Err(ConfigError::new(
                variable,
                "name a sink by its position: RELAYCORD_SINKS__<index>__<KEY>, e.g. RELAYCORD_SINKS__0__SECRET",
            ));
        };
        let Some(Value::Dict(_, sink)) = sinks.get_mut(index) else {
            return Err(ConfigError::new(
                variable,
                format!(
                    "there is no sinks[{index}] to override; define the sink in the config file"
                ),
            ));
        };
        let literal = LITERAL_KEYS.contains(&path) || path.starts_with("headers.");
        let value = if literal {
            Value::from(value)
        } else {
            value.parse().expect("infallible")
        };
        set(sink, path, value);
    }
    Ok(figment.merge(Serialized::default("sinks", sinks)))
}

/// Sets `a.b.c` in `dict`, creating (or replacing non-table values with) tables on the way.
fn set(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                set(inner, rest, value);
            }
        }
    }
}
