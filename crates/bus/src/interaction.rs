//! Routing keys of an interaction: its id, kind and name.
//!
//! Used by the interactions endpoint (HTTP) and by ingest (`INTERACTION_CREATE` over the
//! gateway) so that both put an interaction on the same subject with the same dedupe id,
//! and consumers need not care how Discord delivered it. Like [`crate::Dispatch`], only
//! the few fields routing needs are read, borrowed from the raw JSON.

use std::borrow::Cow;

use serde::Deserialize;

use crate::dedupe;
use crate::subject::{BusSubject, Subjects, is_snowflake};

/// The kind token of `<prefix>.interactions.<kind>.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Discord's endpoint check (type 1): answered inline, never published.
    Ping,
    /// Slash, user and message commands (type 2).
    Command,
    /// Buttons and select menus (type 3).
    Component,
    /// Autocomplete of a command option (type 4).
    Autocomplete,
    /// Modal submits (type 5).
    Modal,
}

impl Kind {
    /// Maps Discord's interaction `type`.
    pub fn from_type(interaction_type: u64) -> Option<Self> {
        Some(match interaction_type {
            1 => Self::Ping,
            2 => Self::Command,
            3 => Self::Component,
            4 => Self::Autocomplete,
            5 => Self::Modal,
            _ => return None,
        })
    }

    /// The subject token (and config key): `command`, `component`, `modal`, `autocomplete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Command => "command",
            Self::Component => "component",
            Self::Autocomplete => "autocomplete",
            Self::Modal => "modal",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an interaction payload cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedInteraction {
    #[error("interaction is not valid JSON: {0}")]
    Json(String),
    #[error("interaction id is not a snowflake")]
    BadId,
    #[error("unknown interaction type {0}")]
    UnknownType(u64),
    #[error("{0} interaction has no `data.{1}`")]
    MissingName(Kind, &'static str),
}

/// What routing needs from an interaction, borrowed from the raw JSON where possible.
/// `Debug` prints the token as `<redacted>`.
#[derive(Clone)]
pub struct InteractionKeys<'a> {
    /// The interaction id (a snowflake).
    pub id: Cow<'a, str>,
    pub kind: Kind,
    /// The command name (commands, autocomplete) or the `custom_id` up to its first `:`
    /// (components, modals), unsanitized; empty for PING.
    pub name: Cow<'a, str>,
    /// The interaction token (valid 15 minutes): a credential, never logged.
    pub token: Option<Cow<'a, str>>,
    pub application_id: Option<Cow<'a, str>>,
    pub guild_id: Option<Cow<'a, str>>,
}

impl std::fmt::Debug for InteractionKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InteractionKeys")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("application_id", &self.application_id)
            .field("guild_id", &self.guild_id)
            .finish()
    }
}

impl<'a> InteractionKeys<'a> {
    /// Reads the keys of a raw interaction (an HTTP body, or the `d` of `INTERACTION_CREATE`).
    pub fn parse(raw: &'a str) -> Result<Self, MalformedInteraction> {
        let parsed: Raw<'a> =
            serde_json::from_str(raw).map_err(|e| MalformedInteraction::Json(e.to_string()))?;
        if !is_snowflake(&parsed.id) {
            return Err(MalformedInteraction::BadId);
        }
        let kind =
            Kind::from_type(parsed.kind).ok_or(MalformedInteraction::UnknownType(parsed.kind))?;
        let data = parsed.data.unwrap_or_default();
        let name = match kind {
            Kind::Ping => Cow::Borrowed(""),
            Kind::Command | Kind::Autocomplete => data
                .name
                .ok_or(MalformedInteraction::MissingName(kind, "name"))?,
            Kind::Component | Kind::Modal => {
                let custom_id = data
                    .custom_id
                    .ok_or(MalformedInteraction::MissingName(kind, "custom_id"))?;
                custom_id_prefix(custom_id)
            }
        };
        Ok(Self {
            id: parsed.id,
            kind,
            name,
            token: parsed.token,
            application_id: parsed.application_id,
            guild_id: parsed.guild_id.filter(|g| is_snowflake(g)),
        })
    }

    /// `<prefix>.interactions.<kind>.<name>` (the name sanitized).
    pub fn subject(&self, subjects: &Subjects) -> BusSubject {
        subjects.interaction(self.kind.as_str(), &self.name)
    }

    /// `ix:<id>`: the envelope id and `Nats-Msg-Id`.
    pub fn dedupe_key(&self) -> String {
        dedupe::interaction_key(&self.id)
    }
}

/// A custom_id's routing name: everything before the first `:`, so `vote:42:yes`
/// routes as `vote` and the rest stays free for the bot's own state.
fn custom_id_prefix(custom_id: Cow<'_, str>) -> Cow<'_, str> {
    match custom_id {
        Cow::Borrowed(s) => Cow::Borrowed(s.split(':').next().unwrap_or_default()),
        Cow::Owned(s) => Cow::Owned(s.split(':').next().unwrap_or_default().to_owned()),
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: u64,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    application_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    guild_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<RawData<'a>>,
}

#[derive(Default, Deserialize)]
struct RawData<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    custom_id: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Adapted from Discord's documented "Example Interaction" (discord/discord-api-docs,
    // CC BY-SA 4.0).
    const COMMAND: &str = r#"{"type":2,"token":"A_UNIQUE_TOKEN","member":{"user":{"id":"53908232506183680","username":"Mason"},"roles":["539082325061836999"],"permissions":"2147483647"},"id":"786008729715212338","application_id":"775799577604522054","guild_id":"290926798626357999","locale":"en-US","data":{"options":[{"type":3,"name":"cardname","value":"The Gitrog Monster"}],"type":1,"name":"cardsearch","id":"771825006014889984"},"channel_id":"645027906669510667"}"#;

    #[test]
    fn command_routes_by_name() {
        let keys = InteractionKeys::parse(COMMAND).unwrap();
        assert_eq!(keys.kind, Kind::Command);
        assert_eq!(keys.name, "cardsearch", "data.options[].name must not win");
        assert_eq!(keys.dedupe_key(), "ix:786008729715212338");
        assert_eq!(
            keys.subject(&Subjects::default()),
            "discord.interactions.command.cardsearch"
        );
        assert_eq!(keys.token.as_deref(), Some("A_UNIQUE_TOKEN"));
        assert!(
            !format!("{keys:?}").contains("A_UNIQUE_TOKEN"),
            "token never printed"
        );
        assert_eq!(keys.guild_id.as_deref(), Some("290926798626357999"));
    }

    #[test]
    fn components_and_modals_route_by_custom_id_prefix() {
        let component =
            r#"{"id":"1","type":3,"data":{"custom_id":"vote:42:yes","component_type":2}}"#;
        let keys = InteractionKeys::parse(component).unwrap();
        assert_eq!((keys.kind, keys.name.as_ref()), (Kind::Component, "vote"));
        let modal = r#"{"id":"2","type":5,"data":{"custom_id":"feedback","components":[]}}"#;
        let keys = InteractionKeys::parse(modal).unwrap();
        assert_eq!(
            keys.subject(&Subjects::new("bot")),
            "bot.interactions.modal.feedback"
        );
        // An escaped custom_id is decoded before splitting, then sanitized for the subject.
        let escaped = r#"{"id":"3","type":3,"data":{"custom_id":"a\u002eb*>:x"}}"#;
        let keys = InteractionKeys::parse(escaped).unwrap();
        assert_eq!(keys.name, "a.b*>");
        assert_eq!(
            keys.subject(&Subjects::default()),
            "discord.interactions.component.a_b__"
        );
    }

    #[test]
    fn autocomplete_and_ping() {
        let keys =
            InteractionKeys::parse(r#"{"id":"4","type":4,"data":{"name":"blep","options":[]}}"#)
                .unwrap();
        assert_eq!(
            (keys.kind, keys.name.as_ref()),
            (Kind::Autocomplete, "blep")
        );
        let ping = InteractionKeys::parse(r#"{"id":"5","type":1,"application_id":"9"}"#).unwrap();
        assert_eq!(ping.kind, Kind::Ping);
    }

    #[test]
    fn malformed_interactions_are_errors() {
        let err = |raw: &str| InteractionKeys::parse(raw).unwrap_err();
        assert!(matches!(err("{"), MalformedInteraction::Json(_)));
        assert!(matches!(
            err(r#"{"type":2}"#),
            MalformedInteraction::Json(_)
        ));
        assert_eq!(
            err(r#"{"id":"1.2","type":2,"data":{"name":"x"}}"#),
            MalformedInteraction::BadId
        );
        assert_eq!(
            err(r#"{"id":"1","type":9}"#),
            MalformedInteraction::UnknownType(9)
        );
        assert_eq!(
            err(r#"{"id":"1","type":3,"data":{"name":"x"}}"#),
            MalformedInteraction::MissingName(Kind::Component, "custom_id")
        );
        assert_eq!(
            err(r#"{"id":"1","type":2}"#),
            MalformedInteraction::MissingName(Kind::Command, "name")
        );
    }
}
