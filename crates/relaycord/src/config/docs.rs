//! docs/configuration.md against the structs: every key documented, no stale key, and a
//! doc comment on every field.
//!
//! The keys come from a JSON Schema derived with `schemars`, which reads the same serde
//! attributes (`rename`, `skip`, `flatten`) as the loader and the doc comments as
//! descriptions; `serde-reflection` would give the field names too, but not the doc
//! comments, and the schema can later become the Helm chart's `values.schema.json`.
//! `[[sinks]]` is not covered yet: sink types are documented in docs/sinks.md.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::Config;

const DOCS: &str = include_str!("../../../../docs/configuration.md");

/// Sections documented elsewhere, skipped in the doc file too.
const NOT_IN_SCHEMA: &[&str] = &["sinks"];

/// Every key of the config structs (`section.key`, `section.list[].key`) with its doc
/// comment, if any.
fn schema_keys() -> BTreeMap<String, Option<String>> {
    let schema = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<Config>();
    let mut keys = BTreeMap::new();
    collect(schema.as_value(), "", &mut keys);
    keys
}

fn collect(schema: &Value, prefix: &str, keys: &mut BTreeMap<String, Option<String>>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, field) in properties {
        let key = match prefix {
            "" => name.clone(),
            prefix => format!("{prefix}.{name}"),
        };
        // Sections are tables of keys; a list of tables (`[[x.y]]`) is a key with keys.
        if prefix.is_empty() {
            collect(field, &key, keys);
            continue;
        }
        let description = field.get("description").and_then(Value::as_str);
        keys.insert(key.clone(), description.map(str::to_owned));
        if let Some(items) = field.get("items") {
            collect(items, &format!("{key}[]"), keys);
        }
        collect(field, &key, keys);
    }
}

/// Keys written in the doc's TOML blocks, set or commented out (`# key = …`), under
/// their `[section]` or `[[section.list]]` header.
fn documented_keys(doc: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut in_toml = false;
    let mut section = String::new();
    for line in doc.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_toml = line == "```toml";
            continue;
        }
        if !in_toml {
            continue;
        }
        let code = line.split(" #").next().unwrap_or_default().trim();
        // A header names a key too, except a top-level section: `[[interactions.routes]]`
        // documents `interactions.routes`.
        if let Some(header) = code.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            section = format!("{header}[]");
            keys.push(header.to_owned());
            continue;
        }
        if let Some(header) = code.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = header.to_owned();
            if header.contains('.') {
                keys.push(header.to_owned());
            }
            continue;
        }
        let assignment = line.strip_prefix('#').unwrap_or(line).trim_start();
        let Some((name, _)) = assignment.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let is_key = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key && !section.is_empty() {
            keys.push(format!("{section}.{name}"));
        }
    }
    keys
}

/// What is wrong between the structs and the doc, one line per key.
fn problems(doc: &str) -> Vec<String> {
    let schema = schema_keys();
    let skipped = |key: &str| {
        NOT_IN_SCHEMA.iter().any(|s| {
            key == *s || key.starts_with(&format!("{s}.")) || key.starts_with(&format!("{s}[]"))
        })
    };
    let documented: Vec<String> = documented_keys(doc)
        .into_iter()
        .filter(|k| !skipped(k))
        .collect();
    let mut problems = Vec::new();
    for (key, description) in &schema {
        if description.is_none() {
            problems.push(format!("`{key}` has no doc comment on its field"));
        }
        if !documented.contains(key) {
            problems.push(format!(
                "docs/configuration.md does not document `{key}`; add it to its section's block"
            ));
        }
    }
    for key in &documented {
        if !schema.contains_key(key) {
            problems.push(format!(
                "docs/configuration.md documents `{key}`, which is not a key any more; remove it"
            ));
        }
    }
    problems
}

#[test]
fn every_key_is_documented_and_no_documented_key_is_stale() {
    let problems = problems(DOCS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_names_a_missing_and_a_stale_key() {
    let doc = DOCS
        .replacen("lease_ttl = \"10s\"", "lease_tll = \"10s\"", 1)
        .replacen("# token = \"…\"", "# tokn = \"…\"", 1);
    let problems = problems(&doc).join("\n");
    for expected in [
        "does not document `ingest.lease_ttl`",
        "documents `ingest.lease_tll`, which is not a key",
        "does not document `nats.token`",
        "documents `nats.tokn`",
    ] {
        assert!(problems.contains(expected), "{expected:?} in:\n{problems}");
    }
    let keys = schema_keys();
    assert!(
        keys.contains_key("interactions.routes[].handler"),
        "{keys:?}"
    );
    assert!(keys.contains_key("discord.intents"), "{keys:?}");
}
