//! `{field}` templates for routing keys and subjects (`"discord.{type}.{guild_id}"`).
//!
//! Deliberately tiny: a key is built per message on the hot path, and an unknown field
//! must fail at start, not render as an empty string. Message bodies (the discord sink)
//! use minijinja instead.

use std::borrow::Cow;

use bytes::Bytes;

use crate::Body;

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

    /// Renders for one event; each field value goes through `escape` (subjects
    /// must not gain `.`, `*` or `>` from data). Missing values render as `none`.
    pub fn render(&self, sink: &str, body: &Body<'_>, escape: impl Fn(&str) -> String) -> String {
        let env = body.envelope().ok();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(f) => {
                    let value: Option<Cow<'_, str>> = match (*f, env) {
                        ("sink", _) => Some(sink.into()),
                        (_, None) => None,
                        ("channel_id", Some(_)) => body.channel_id().map(Cow::from),
                        ("type", Some(e)) => Some(e.event_type.as_ref().into()),
                        ("guild_id", Some(e)) => e.guild_id.as_deref().map(Cow::from),
                        ("id", Some(e)) => Some(e.id.as_ref().into()),
                        ("shard", Some(e)) => e.shard.map(|s| s.to_string().into()),
                        ("source", Some(e)) => Some(e.source.as_str().into()),
                        _ => None,
                    };
                    out.push_str(&escape(value.as_deref().unwrap_or("none")));
                }
            }
        }
        out
    }

    /// Renders with no event: every field but `sink` is `none`. Checks at build time
    /// what a template can produce.
    pub fn sample(&self, sink: &str, escape: impl Fn(&str) -> String) -> String {
        static EMPTY: Bytes = Bytes::from_static(b"{}");
        self.render(sink, &Body::new(&EMPTY), escape)
    }
}

fn field_name(field: &str) -> &'static str {
    FIELDS.iter().find(|f| **f == field).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(
        t: &KeyTemplate,
        sink: &str,
        envelope: &'static [u8],
        escape: impl Fn(&str) -> String,
    ) -> String {
        t.render(sink, &Body::new(&Bytes::from_static(envelope)), escape)
    }

    const ENV: &[u8] = br#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":3,"seq":1,"guild_id":"81384788765712384","received_at":"2026-11-23T12:00:00.000Z","data":{"channel_id":"290926798999357250"}}"#;

    #[test]
    fn renders_fields_and_literals() {
        let t = KeyTemplate::parse("discord.{type}.{guild_id}.{channel_id}").unwrap();
        assert_eq!(
            render(&t, "s", ENV, str::to_owned),
            "discord.MESSAGE_CREATE.81384788765712384.290926798999357250"
        );
        let t = KeyTemplate::parse("{sink}/{source}/{shard}/{id}").unwrap();
        assert_eq!(
            render(&t, "hook", ENV, str::to_owned),
            "hook/gateway/3/msg:1"
        );
        let t = KeyTemplate::parse("x.{guild_id}").unwrap();
        assert_eq!(render(&t, "s", b"{}", str::to_owned), "x.none");
    }

    #[test]
    fn escapes_values_not_literals() {
        let t = KeyTemplate::parse("a.{id}").unwrap();
        assert_eq!(render(&t, "s", ENV, |v| v.replace(':', "_")), "a.msg_1");
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
