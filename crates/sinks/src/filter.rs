//! Which events a sink wants: event types, guild ids, channel ids, and what it never
//! wants ([`Exclude`]: event types, authors, bots).
//!
//! Types and guilds are tokens of the subject (`<prefix>.gateway.<TYPE>.<guild>`), so they
//! are checked without reading the body, and are also pushed down to the consumer's filter
//! subjects when the server can take them. Channel ids live only in the payload: the
//! body is parsed only when a channel filter is set, and the driver's later steps reuse
//! what was parsed.

use std::collections::BTreeSet;

use relaycord_bus::Subjects;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::Body;

/// `exclude = { ... }` of every sink: events it never delivers, checked in process
/// after the include filters (`events`, `guilds`, `channels`) and counted `skipped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    /// Event types never delivered (e.g. `TYPING_START`), whatever `events` says.
    #[serde(default)]
    pub events: Vec<String>,
    /// Ids of users, bots or webhooks whose events are never delivered: the message's
    /// `author.id`, `webhook_id`, a reaction's `user_id`, a member's `user.id`.
    #[serde(default)]
    pub authors: Vec<String>,
    /// Skip events caused by any bot (`bot: true`) or webhook.
    #[serde(default)]
    pub bots: bool,
}

/// Above this many subject combinations the consumer reads the whole stream and filters
/// in process: very long filter lists cost the server more than skipping does.
const MAX_FILTER_SUBJECTS: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub event_types: BTreeSet<String>,
    pub guilds: BTreeSet<String>,
    pub channels: BTreeSet<String>,
    pub exclude_events: BTreeSet<String>,
    pub exclude_authors: BTreeSet<String>,
    pub exclude_bots: bool,
}

impl Filter {
    /// The consumer's filter subjects: every (type, guild) pair, `*` standing for "any",
    /// on each source that sends the type (gateway dispatches and webhook events share the
    /// events stream; [`Subjects::event_filters`]). None: the whole stream. One subject
    /// means one filter (any server); several need nats-server 2.10+.
    pub fn subjects(&self, subjects: &Subjects) -> Vec<String> {
        if self.event_types.is_empty() && self.guilds.is_empty() {
            return Vec::new();
        }
        let (types, guilds) = (tokens(&self.event_types), tokens(&self.guilds));
        if types.len() * guilds.len() > MAX_FILTER_SUBJECTS {
            return Vec::new();
        }
        let filters: Vec<String> = types
            .iter()
            .flat_map(|t| guilds.iter().flat_map(|g| subjects.event_filters(*t, *g)))
            .collect();
        if filters.len() > MAX_FILTER_SUBJECTS {
            return Vec::new();
        }
        filters
    }

    /// Whether an event on `subject` with this envelope body is for the sink.
    pub fn accepts(&self, subject: &str, body: &Body<'_>) -> bool {
        let (event_type, guild) = type_and_guild(subject);
        wanted(&self.event_types, event_type)
            && !self.exclude_events.contains(event_type)
            && wanted(&self.guilds, guild)
            && (self.channels.is_empty()
                || body.channel_id().is_some_and(|c| self.channels.contains(c)))
            && self.author_wanted(body)
    }

    /// The body is read only when an author or bot exclusion is set.
    fn author_wanted(&self, body: &Body<'_>) -> bool {
        if self.exclude_authors.is_empty() && !self.exclude_bots {
            return true;
        }
        let author = body.author();
        let excluded = (self.exclude_bots && author.bot)
            || author
                .ids
                .iter()
                .any(|id| self.exclude_authors.contains(id.as_ref()));
        !excluded
    }
}

/// A filter's values as subject tokens; `None` (any) for an empty filter.
fn tokens(set: &BTreeSet<String>) -> Vec<Option<&str>> {
    if set.is_empty() {
        return vec![None];
    }
    set.iter().map(|value| Some(value.as_str())).collect()
}

fn wanted(set: &BTreeSet<String>, value: &str) -> bool {
    set.is_empty() || set.contains(value)
}

/// `<prefix...>.<gateway|webhooks>.<TYPE>.<guild>`: the last two tokens, without parsing
/// the body (the bus's, which knows the subjects' layout).
pub use relaycord_bus::subject::type_and_guild;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn filter_subjects_are_the_product_of_types_and_guilds() {
        let s = Subjects::default();
        assert!(
            Filter::default().subjects(&s).is_empty(),
            "the whole stream"
        );
        let f = Filter {
            event_types: set(&["MESSAGE_CREATE"]),
            ..Filter::default()
        };
        assert_eq!(f.subjects(&s), ["discord.gateway.MESSAGE_CREATE.*"]);
        let f = Filter {
            event_types: set(&["APPLICATION_AUTHORIZED", "MESSAGE_CREATE"]),
            ..Filter::default()
        };
        assert_eq!(
            f.subjects(&s),
            [
                "discord.webhooks.APPLICATION_AUTHORIZED.*",
                "discord.gateway.MESSAGE_CREATE.*"
            ]
        );
        let f = Filter {
            event_types: set(&["A", "B"]),
            guilds: set(&["1"]),
            ..Filter::default()
        };
        assert_eq!(
            f.subjects(&s),
            ["discord.gateway.A.1", "discord.gateway.B.1"]
        );
        let f = Filter {
            guilds: (0..100).map(|g| g.to_string()).collect(),
            event_types: set(&["A"]),
            ..Filter::default()
        };
        assert!(f.subjects(&s).is_empty(), "too many: filter in process");
    }

    #[test]
    fn types_guilds_and_channels_are_checked() {
        let bytes = Bytes::from_static(
            br#"{"id":"msg:1","type":"MESSAGE_CREATE","data":{"content":"x","channel_id":"290926798999357250"}}"#,
        );
        let body = &Body::new(&bytes);
        let subject = "discord.gateway.MESSAGE_CREATE.81384788765712384";
        assert!(Filter::default().accepts(subject, body));
        let types = Filter {
            event_types: set(&["MESSAGE_CREATE"]),
            ..Filter::default()
        };
        assert!(types.accepts(subject, body));
        assert!(!types.accepts("discord.gateway.TYPING_START.1", body));
        let guilds = Filter {
            guilds: set(&["1"]),
            ..Filter::default()
        };
        assert!(!guilds.accepts(subject, body));
        let channels = Filter {
            channels: set(&["290926798999357250"]),
            ..Filter::default()
        };
        assert!(channels.accepts(subject, body));
        let other = Filter {
            channels: set(&["1"]),
            ..Filter::default()
        };
        assert!(!other.accepts(subject, body));
        let no_channel = Bytes::from_static(br#"{"data":{"guild_id":"1"}}"#);
        assert!(
            !channels.accepts(subject, &Body::new(&no_channel)),
            "no channel: not for a channel filter"
        );
        let not_json = Bytes::from_static(b"not json");
        assert!(!channels.accepts(subject, &Body::new(&not_json)));
    }

    #[test]
    fn exclusions_win() {
        let by = |author: &str| {
            Bytes::from(format!(
                r#"{{"id":"msg:1","type":"MESSAGE_CREATE","data":{{"content":"x","author":{author}}}}}"#
            ))
        };
        let person = by(r#"{"id":"1"}"#);
        let bot = by(r#"{"id":"2","bot":true}"#);
        let subject = "discord.gateway.MESSAGE_CREATE.1";
        let accepts = |f: &Filter, b: &Bytes, subject: &str| f.accepts(subject, &Body::new(b));
        let types = Filter {
            exclude_events: set(&["MESSAGE_CREATE"]),
            ..Filter::default()
        };
        assert!(!accepts(&types, &person, subject));
        assert!(accepts(&types, &person, "discord.gateway.TYPING_START.1"));
        let authors = Filter {
            exclude_authors: set(&["1"]),
            ..Filter::default()
        };
        assert!(!accepts(&authors, &person, subject));
        assert!(accepts(&authors, &bot, subject));
        let bots = Filter {
            exclude_bots: true,
            ..Filter::default()
        };
        assert!(accepts(&bots, &person, subject));
        assert!(!accepts(&bots, &bot, subject));
        let hook = Bytes::from_static(br#"{"data":{"webhook_id":"9","author":{"id":"9"}}}"#);
        assert!(!accepts(&bots, &hook, subject), "webhooks count as bots");
    }
}
