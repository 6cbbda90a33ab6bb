//! docs/configuration.md against the structs: every key documented, no stale key, and a
//! doc comment on every field.
//!
//! The keys come from a JSON Schema derived with `schemars`, which reads the same serde
//! attributes (`rename`, `skip`, `flatten`) as the loader and the doc comments as
//! descriptions; `serde-reflection` would give the field names too, but not the doc
//! comments, and the schema can later become the Helm chart's `values.schema.json`.
//! `[[sinks]]` keys are checked the same way against docs/sinks.md: the keys every sink
//! has, and each type's own in the block of that type.

use std::collections::{BTreeMap, BTreeSet};

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::Config;

const DOCS: &str = include_str!("../../../../docs/configuration.md");
const SINK_DOCS: &str = include_str!("../../../../docs/sinks.md");

/// Sections documented elsewhere (`[[sinks]]`: docs/sinks.md), skipped in the doc file too.
const NOT_IN_SCHEMA: &[&str] = &["sinks"];

fn schema() -> Value {
    SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<Config>()
        .to_value()
}

/// Every key of the config structs (`section.key`, `section.list[].key`) with its doc
/// comment, if any.
fn schema_keys() -> BTreeMap<String, Option<String>> {
    let mut keys = BTreeMap::new();
    collect(&schema(), "", &mut keys);
    keys.retain(|key, _| {
        !NOT_IN_SCHEMA
            .iter()
            .any(|s| key.starts_with(&format!("{s}[")))
    });
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

/// A sink's keys by scope: `""` for those every sink has, else the `type` they belong to.
type SinkKeys = BTreeMap<String, BTreeSet<String>>;

/// The `[[sinks]]` keys of the structs, and the fields (at any depth) without a doc comment.
fn sink_schema() -> (SinkKeys, Vec<String>) {
    let schema = schema();
    let item = &schema["properties"]["sinks"]["items"];
    let mut keys = SinkKeys::new();
    let names = |v: &Value| -> BTreeSet<String> {
        v.get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().filter(|k| *k != "type").cloned().collect())
            .unwrap_or_default()
    };
    keys.insert(String::new(), names(item));
    for variant in item["oneOf"].as_array().into_iter().flatten() {
        let kind = variant["properties"]["type"]["const"]
            .as_str()
            .expect("a sink variant names its type");
        keys.insert(kind.to_owned(), names(variant));
    }
    let mut undocumented = Vec::new();
    undocumented_fields(item, "sinks[]", &mut undocumented);
    (keys, undocumented)
}

/// Fields without a description below `schema`, named by their path.
fn undocumented_fields(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, field) in properties {
            let key = format!("{path}.{name}");
            // The variant tag: documented as the sink types themselves.
            if name != "type" && field.get("description").is_none() {
                out.push(format!("`{key}` has no doc comment on its field"));
            }
            undocumented_fields(field, &key, out);
        }
    }
    for nested in ["items", "additionalProperties"] {
        if let Some(inner) = schema.get(nested).filter(|v| v.is_object()) {
            undocumented_fields(inner, &format!("{path}[]"), out);
        }
    }
    for variant in schema
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        undocumented_fields(variant, path, out);
    }
}

/// Keys written in docs/sinks.md's TOML blocks: a block under `[[sinks]]` (or with no
/// `type` line) documents keys every sink has; a block with `type = "x"` documents that
/// type's. Sub-tables (`[sinks.templates.X]`) are the values of a key, not keys.
fn documented_sink_keys(doc: &str) -> SinkKeys {
    let mut keys = SinkKeys::new();
    let mut blocks = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_start().starts_with("```")) {
            (None, true) if line.trim() == "```toml" => block = Some(Vec::new()),
            (Some(_), true) => blocks.extend(block.take()),
            (Some(lines), false) => lines.push(line.trim()),
            _ => {}
        }
    }
    for lines in blocks {
        let assignments: Vec<(String, &str)> = lines
            .iter()
            .take_while(|l| !l.starts_with('[') || **l == "[[sinks]]")
            .filter_map(|l| {
                let (name, value) = l.strip_prefix('#').unwrap_or(l).split_once('=')?;
                let name = name.trim();
                let is_key = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                is_key.then(|| {
                    (
                        name.to_owned(),
                        value.split(" #").next().unwrap_or("").trim(),
                    )
                })
            })
            .collect();
        // `[sinks.templates.X]` and `[[sinks.templates.X.embeds]]` document `templates`.
        let tables = lines.iter().filter_map(|l| {
            let header = l.split(" #").next()?.trim();
            let path = header.trim_start_matches('[').trim_end_matches(']');
            let key = path.strip_prefix("sinks.")?.split('.').next()?;
            header.starts_with('[').then(|| (key.to_owned(), ""))
        });
        let assignments: Vec<(String, &str)> = assignments.into_iter().chain(tables).collect();
        let kind = if lines.contains(&"[[sinks]]") {
            None
        } else {
            assignments
                .iter()
                .find(|(name, _)| name == "type")
                .map(|(_, value)| value.trim_matches('"').to_owned())
        };
        let scope = keys.entry(kind.unwrap_or_default()).or_default();
        scope.extend(
            assignments
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| name != "type"),
        );
    }
    keys
}

/// What is wrong between the sink structs and docs/sinks.md, one line per key.
fn sink_problems(doc: &str) -> Vec<String> {
    let (schema, mut problems) = sink_schema();
    let documented = documented_sink_keys(doc);
    let scope_name = |scope: &str| match scope {
        "" => "the keys every sink has (the `[[sinks]]` block)".to_owned(),
        kind => format!("the `type = \"{kind}\"` block"),
    };
    for (scope, keys) in &schema {
        let written = documented.get(scope).cloned().unwrap_or_default();
        for key in keys.difference(&written) {
            problems.push(format!(
                "docs/sinks.md does not document `{key}` in {}",
                scope_name(scope)
            ));
        }
        for key in written.difference(keys) {
            problems.push(format!(
                "docs/sinks.md documents `{key}` in {}, which is not a key there; remove it",
                scope_name(scope)
            ));
        }
    }
    for scope in documented.keys().filter(|s| !schema.contains_key(*s)) {
        problems.push(format!(
            "docs/sinks.md documents a sink type `{scope}` that does not exist"
        ));
    }
    problems
}

#[test]
fn every_sink_key_is_documented_and_no_documented_sink_key_is_stale() {
    let problems = sink_problems(SINK_DOCS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_sink_check_names_a_missing_and_a_stale_key() {
    let doc = SINK_DOCS
        .replacen("max_attempts = 10", "max_attempt = 10", 1)
        .replacen("exchange_type = \"topic\"", "exchange_kind = \"topic\"", 1);
    let problems = sink_problems(&doc).join("\n");
    for expected in [
        "does not document `max_attempts` in the keys every sink has",
        "documents `max_attempt` in the keys every sink has",
        "does not document `exchange_type` in the `type = \"amqp\"` block",
        "documents `exchange_kind` in the `type = \"amqp\"` block",
    ] {
        assert!(problems.contains(expected), "{expected:?} in:\n{problems}");
    }
}
