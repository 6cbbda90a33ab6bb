//! Subject names of the bus contract (see `docs/bus.md`).
//!
//! Every token that comes from Discord data is validated or sanitized here, so a
//! crafted custom_id or event type can never inject `.`, `*` or `>` into a subject.
//!
//! This module is the only place that knows the subjects' layout: the subject an event
//! is published to is a [`BusSubject`], which no other crate can make, and
//! [`crate::OutgoingMessage::event`] takes nothing else (ARCHITECTURE.md, "Invariants").

/// Builds the subjects Relaycord publishes to, under a configurable prefix so that
/// several bots can share one NATS account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(crate::DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// `prefix` must itself be a valid subject (checked by [`Subjects::validate_prefix`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Returns a reason when `prefix` cannot be used as a subject prefix.
    pub fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
        if prefix.is_empty() {
            return Err("must not be empty");
        }
        if prefix
            .split('.')
            .any(|token| token.is_empty() || !token.chars().all(is_plain_subject_char))
        {
            return Err("must be dot-separated tokens of letters, digits, '_' or '-'");
        }
        Ok(())
    }

    /// `<prefix>.gateway.<EVENT_TYPE>.<guild_id|none>`.
    ///
    /// `event_type` must satisfy [`is_event_type`]; callers check it while parsing.
    pub fn gateway(&self, event_type: &str, guild_id: Option<&str>) -> BusSubject {
        BusSubject(format!(
            "{}.gateway.{}.{}",
            self.prefix,
            event_type,
            guild_id.unwrap_or("none")
        ))
    }

    /// The wildcard covering every gateway event: `<prefix>.gateway.>`.
    pub fn gateway_all(&self) -> String {
        format!("{}.gateway.>", self.prefix)
    }

    /// The filter for one event type on any guild: `<prefix>.gateway.<EVENT_TYPE>.*`.
    pub fn gateway_type(&self, event_type: &str) -> String {
        format!("{}.gateway.{}.*", self.prefix, event_type)
    }

    /// `<prefix>.interactions.<kind>.<name>`, with `name` sanitized to `[A-Za-z0-9_-]`.
    pub fn interaction(&self, kind: &str, name: &str) -> BusSubject {
        BusSubject(format!(
            "{}.interactions.{}.{}",
            self.prefix,
            kind,
            sanitize_token(name)
        ))
    }

    pub fn interactions_all(&self) -> String {
        format!("{}.interactions.>", self.prefix)
    }

    /// `<prefix>.webhooks.<EVENT_TYPE>.<guild_id|none>`: Discord's webhook events.
    ///
    /// `event_type` must satisfy [`is_event_type`]; [`crate::webhook_event`] checks it.
    pub fn webhook(&self, event_type: &str, guild_id: Option<&str>) -> BusSubject {
        BusSubject(format!(
            "{}.webhooks.{}.{}",
            self.prefix,
            event_type,
            guild_id.unwrap_or("none")
        ))
    }

    /// Everything under the prefix: `<prefix>.>`. As a consumer filter on the events
    /// stream it selects gateway and webhook events alike, on every server version
    /// (nats-server 2.9 refuses a filter such as `<prefix>.*.<TYPE>.*` that is not inside
    /// one of the stream's subjects).
    pub fn everything(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The wildcard covering every webhook event: `<prefix>.webhooks.>`.
    pub fn webhooks_all(&self) -> String {
        format!("{}.webhooks.>", self.prefix)
    }
}

/// Dead letters of one sink: `relaycord.dlq.<sink>`.
pub fn dlq(sink: &str) -> BusSubject {
    BusSubject(format!("relaycord.dlq.{}", sanitize_token(sink)))
}

/// The dead-letter subjects with `last` as their last token, unchecked: a wildcard (`>`)
/// or a placeholder (`{sink}`, in the AsyncAPI document), never a sink's name.
pub fn dlq_pattern(last: &str) -> String {
    format!("relaycord.dlq.{last}")
}

/// Subjects one role alone uses, built here all the same: the layout lives in this file.
impl Subjects {
    /// Consumer filters over the events stream for one event type and one guild (`None`:
    /// any), one per source that sends the type: gateway dispatches, webhook events
    /// ([`crate::webhook_event::sources`]), or both for entitlements and for "any type".
    ///
    /// Not one `<prefix>.*.<TYPE>.<guild>` filter: nats-server 2.9 refuses a filter that is
    /// not a subset of a single stream subject, and most sinks select gateway types only,
    /// which stay one filter on every server.
    pub fn event_filters(&self, event_type: Option<&str>, guild_id: Option<&str>) -> Vec<String> {
        let (gateway, webhooks) = event_type.map_or((true, true), crate::webhook_event::sources);
        let filter = |source: &str| {
            format!(
                "{}.{source}.{}.{}",
                self.prefix,
                event_type.unwrap_or("*"),
                guild_id.unwrap_or("*")
            )
        };
        [(gateway, "gateway"), (webhooks, "webhooks")]
            .into_iter()
            .filter(|(sent, _)| *sent)
            .map(|(_, source)| filter(source))
            .collect()
    }

    /// Whether `subject` is inside what Relaycord publishes on this prefix (gateway
    /// events, webhook events, interactions) or under `relaycord.` (dead letters, handlers): a sink
    /// republishing there on the same server would feed itself.
    pub fn is_own(&self, subject: &str) -> bool {
        let under = |kind: &str| {
            subject
                .strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|rest| rest.strip_prefix(kind))
                .is_some_and(|rest| rest.starts_with('.'))
        };
        under("gateway")
            || under("webhooks")
            || under("interactions")
            || subject.starts_with("relaycord.")
    }

    /// Every reply to an interaction handler: `<prefix>.replies.>`.
    pub fn replies_all(&self) -> String {
        format!("{}.replies.>", self.prefix)
    }

    /// The replies one interactions replica waits for: `<prefix>.replies.<replica>.*`.
    pub fn replies_to(&self, replica: &str) -> String {
        format!("{}.replies.{replica}.*", self.prefix)
    }

    /// Where a handler answers interaction `interaction_id` (a snowflake) asked by
    /// `replica`: `<prefix>.replies.<replica>.<interaction id>`.
    pub fn reply(&self, replica: &str, interaction_id: &str) -> String {
        format!("{}.replies.{replica}.{interaction_id}", self.prefix)
    }
}

/// `<prefix…>.<gateway|webhooks>.<TYPE>.<guild>`: the event type and guild tokens of an
/// event's subject (its last two), read without parsing the body.
pub fn type_and_guild(subject: &str) -> (&str, &str) {
    let mut tokens = subject.rsplitn(3, '.');
    let guild = tokens.next().unwrap_or_default();
    let event_type = tokens.next().unwrap_or_default();
    (event_type, guild)
}

/// A subject of the bus contract that an event may be published to. Only this module
/// makes one ([`Subjects::gateway`], [`Subjects::webhook`], [`Subjects::interaction`],
/// [`dlq`]):
///
/// ```
/// let subject: relaycord_bus::subject::BusSubject =
///     relaycord_bus::Subjects::default().gateway("READY", None);
/// assert_eq!(subject, "discord.gateway.READY.none");
/// ```
///
/// so no other crate can publish an event to a subject it formatted itself (E0603, a
/// private constructor):
///
/// ```compile_fail,E0603
/// let subject = relaycord_bus::subject::BusSubject("discord.gateway.READY.none".into());
/// ```
///
/// It reads as a string (`Deref<Target = str>`, `Display`, `Into<String>`) and is a NATS
/// subject for async-nats (`ToSubject`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BusSubject(String);

impl BusSubject {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for BusSubject {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for BusSubject {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BusSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<BusSubject> for String {
    fn from(subject: BusSubject) -> Self {
        subject.0
    }
}

impl PartialEq<str> for BusSubject {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for BusSubject {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl async_nats::subject::ToSubject for BusSubject {
    fn to_subject(&self) -> async_nats::Subject {
        async_nats::Subject::from(self.0.as_str())
    }
}

/// Gateway event names are SCREAMING_SNAKE_CASE; anything else is rejected rather than
/// escaped, because an event type is part of the stable subject contract.
pub fn is_event_type(event_type: &str) -> bool {
    !event_type.is_empty()
        && event_type.len() <= 64
        && event_type
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Snowflakes are decimal u64s; anything else is not used in a subject.
pub fn is_snowflake(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// Maps any string to a non-empty subject token of `[A-Za-z0-9_-]`, replacing every
/// other character with `_` (so `a.b*c` becomes `a_b_c`) and capping the length.
pub fn sanitize_token(raw: &str) -> String {
    let token: String = raw
        .chars()
        .take(100)
        .map(|c| if is_plain_subject_char(c) { c } else { '_' })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

fn is_plain_subject_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_subject_uses_guild_or_none() {
        let s = Subjects::default();
        assert_eq!(
            s.gateway("MESSAGE_CREATE", Some("81384788765712384")),
            "discord.gateway.MESSAGE_CREATE.81384788765712384"
        );
        assert_eq!(s.gateway("READY", None), "discord.gateway.READY.none");
        assert_eq!(
            Subjects::new("bot2").gateway_all(),
            "bot2.gateway.>".to_owned()
        );
    }

    #[test]
    fn interaction_names_cannot_inject_wildcards() {
        let s = Subjects::default();
        assert_eq!(
            s.interaction("component", "vote.*>x"),
            "discord.interactions.component.vote___x"
        );
        assert_eq!(
            s.interaction("command", ""),
            "discord.interactions.command._"
        );
        assert_eq!(dlq("my sink"), "relaycord.dlq.my_sink");
    }

    #[test]
    fn filters_replies_and_own_subjects() {
        let s = Subjects::new("acme.bot");
        assert_eq!(
            s.event_filters(None, Some("1")),
            ["acme.bot.gateway.*.1", "acme.bot.webhooks.*.1"]
        );
        assert_eq!(
            s.event_filters(Some("MESSAGE_CREATE"), Some("1")),
            ["acme.bot.gateway.MESSAGE_CREATE.1"]
        );
        assert_eq!(
            s.event_filters(Some("APPLICATION_AUTHORIZED"), None),
            ["acme.bot.webhooks.APPLICATION_AUTHORIZED.*"]
        );
        assert_eq!(
            s.event_filters(Some("ENTITLEMENT_CREATE"), None),
            [
                "acme.bot.gateway.ENTITLEMENT_CREATE.*",
                "acme.bot.webhooks.ENTITLEMENT_CREATE.*"
            ]
        );
        assert_eq!(s.replies_all(), "acme.bot.replies.>");
        assert_eq!(s.replies_to("r1"), "acme.bot.replies.r1.*");
        assert_eq!(s.reply("r1", "42"), "acme.bot.replies.r1.42");
        assert!(s.is_own("acme.bot.gateway.READY.none"));
        assert!(s.is_own("acme.bot.interactions.command.ping"));
        assert!(s.is_own("acme.bot.webhooks.APPLICATION_AUTHORIZED.none"));
        assert!(s.is_own("relaycord.dlq.a"));
        assert!(!s.is_own("acme.bot.gatewayx.a"));
        assert!(!s.is_own("acme.botx.gateway.a"));
        assert!(!s.is_own("relay.MESSAGE_CREATE"));
        assert_eq!(
            type_and_guild("discord.gateway.MESSAGE_CREATE.81384788765712384"),
            ("MESSAGE_CREATE", "81384788765712384")
        );
        assert_eq!(type_and_guild("a.b.gateway.READY.none"), ("READY", "none"));
        assert_eq!(
            type_and_guild("discord.webhooks.APPLICATION_AUTHORIZED.none"),
            ("APPLICATION_AUTHORIZED", "none")
        );
    }

    #[test]
    fn webhook_subjects_mirror_the_gateway_ones() {
        let s = Subjects::new("bot2");
        assert_eq!(
            s.webhook("ENTITLEMENT_CREATE", Some("42")),
            "bot2.webhooks.ENTITLEMENT_CREATE.42"
        );
        assert_eq!(s.webhooks_all(), "bot2.webhooks.>");
    }

    #[test]
    fn event_types_and_snowflakes_are_validated() {
        assert!(is_event_type("MESSAGE_REACTION_ADD"));
        assert!(!is_event_type("MESSAGE.CREATE"));
        assert!(!is_event_type(""));
        assert!(!is_event_type("message_create"));
        assert!(is_snowflake("81384788765712384"));
        assert!(!is_snowflake("8138.4"));
        assert!(!is_snowflake("123456789012345678901"));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Subjects::validate_prefix("discord").is_ok());
        assert!(Subjects::validate_prefix("acme.bot-1").is_ok());
        assert!(Subjects::validate_prefix("").is_err());
        assert!(Subjects::validate_prefix("a..b").is_err());
        assert!(Subjects::validate_prefix("a.>").is_err());
    }
}
