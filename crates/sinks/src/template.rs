//! `{field}` templates for routing keys and subjects (`"discord.{type}.{guild_id}"`).
//!
//! Deliberately tiny: a key is built per message on the hot path, and an unknown field
//! must fail at start, not render as an empty string. Message bodies (the discord sink)
//! use minijinja instead.

use relaycord_bus::Envelope;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The fields a template may use.
pub const FIELDS: &[&str] = &[
    "type",
    "guild_id",
    "channel_id",
    "id",
    "shard",
    "source",
    "sink",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

impl KeyTemplate {
    /// Errors say which placeholder is wrong and list the valid ones.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{text:?} has a '{{' without its '}}'"))?;
            let name = after[..close].trim();
            let field = FIELDS.iter().find(|f| **f == name).ok_or_else(|| {
                format!(
                    "{text:?} uses {{{name}}}; the fields are {}",
                    FIELDS
                        .iter()
                        .map(|f| format!("{{{f}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            parts.push(Part::Field(field));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?} has a '}}' without its '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    pub fn uses(&self, field: &str) -> bool {
        self.parts
            .iter()
            .any(|p| *p == Part::Field(field_name(field)))
    }

    /// Renders for one envelope; each field value goes through `escape` (subjects
    /// must not gain `.`, `*` or `>` from data). Missing values render as `none`.
    pub fn render(&self, sink: &str, payload: &[u8], escape: impl Fn(&str) -> String) -> String {
        let env = Envelope::from_slice(payload).ok();
        let channel = if self.uses("channel_id") {
            env.as_ref().and_then(|e| channel_id(e.data))
        } else {
            None
        };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(f) => {
                    let value = match (*f, &env) {
                        ("sink", _) => Some(sink.to_owned()),
                        ("channel_id", _) => channel.clone(),
                        (_, None) => None,
                        ("type", Some(e)) => Some(e.event_type.to_string()),
                        ("guild_id", Some(e)) => e.guild_id.as_deref().map(str::to_owned),
                        ("id", Some(e)) => Some(e.id.to_string()),
                        ("shard", Some(e)) => e.shard.map(|s| s.to_string()),
                        ("source", Some(e)) => serde_json::to_value(e.source)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned)),
                        _ => None,
                    };
                    out.push_str(&escape(value.as_deref().unwrap_or("none")));
                }
            }
        }
        out
    }
}

fn field_name(field: &str) -> &'static str {
    FIELDS.iter().find(|f| **f == field).copied().unwrap_or("")
}

fn channel_id(data: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Data {
        channel_id: Option<String>,
    }
    serde_json::from_str::<Data>(data.get()).ok()?.channel_id
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &[u8] = br#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":3,"seq":1,"guild_id":"81384788765712384","received_at":"2026-11-23T12:00:00.000Z","data":{"channel_id":"290926798999357250"}}"#;

    #[test]
    fn renders_fields_and_literals() {
        let t = KeyTemplate::parse("discord.{type}.{guild_id}.{channel_id}").unwrap();
        assert_eq!(
            t.render("s", ENV, str::to_owned),
            "discord.MESSAGE_CREATE.81384788765712384.290926798999357250"
        );
        let t = KeyTemplate::parse("{sink}/{source}/{shard}/{id}").unwrap();
        assert_eq!(t.render("hook", ENV, str::to_owned), "hook/gateway/3/msg:1");
        let t = KeyTemplate::parse("x.{guild_id}").unwrap();
        assert_eq!(t.render("s", b"{}", str::to_owned), "x.none");
    }

    #[test]
    fn escapes_values_not_literals() {
        let t = KeyTemplate::parse("a.{id}").unwrap();
        assert_eq!(t.render("s", ENV, |v| v.replace(':', "_")), "a.msg_1");
    }

    #[test]
    fn bad_templates_name_the_problem() {
        let e = KeyTemplate::parse("{guild}").unwrap_err();
        assert!(e.contains("{guild}") && e.contains("{guild_id}"), "{e}");
        assert!(
            KeyTemplate::parse("a.{type")
                .unwrap_err()
                .contains("without")
        );
        assert!(KeyTemplate::parse("a.}").unwrap_err().contains("without"));
    }
}
