//! Subject names of the bus contract (see `docs/bus.md`).
//!
//! Every token that comes from Discord data is validated or sanitized here, so a
//! crafted custom_id or event type can never inject `.`, `*` or `>` into a subject.

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
    pub fn gateway(&self, event_type: &str, guild_id: Option<&str>) -> String {
        format!(
            "{}.gateway.{}.{}",
            self.prefix,
            event_type,
            guild_id.unwrap_or("none")
        )
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
    pub fn interaction(&self, kind: &str, name: &str) -> String {
        format!(
            "{}.interactions.{}.{}",
            self.prefix,
            kind,
            sanitize_token(name)
        )
    }

    pub fn interactions_all(&self) -> String {
        format!("{}.interactions.>", self.prefix)
    }

    /// `<prefix>.webhooks.<EVENT_TYPE>.<guild_id|none>`: Discord's webhook events.
    ///
    /// `event_type` must satisfy [`is_event_type`]; [`crate::webhook_event`] checks it.
    pub fn webhook(&self, event_type: &str, guild_id: Option<&str>) -> String {
        format!(
            "{}.webhooks.{}.{}",
            self.prefix,
            event_type,
            guild_id.unwrap_or("none")
        )
    }

    /// The wildcard covering every webhook event: `<prefix>.webhooks.>`.
    pub fn webhooks_all(&self) -> String {
        format!("{}.webhooks.>", self.prefix)
    }

    /// One event type (or `*`) on one guild (or `*`) from *either* event source, gateway
    /// or webhooks: `<prefix>.*.<EVENT_TYPE>.<guild>`. Only meaningful as a consumer
    /// filter on the events stream, whose subjects are exactly those two sources.
    pub fn event_filter(&self, event_type: &str, guild: &str) -> String {
        format!("{}.*.{}.{}", self.prefix, event_type, guild)
    }
}

/// Dead letters of one sink: `relaycord.dlq.<sink>`.
pub fn dlq(sink: &str) -> String {
    format!("relaycord.dlq.{}", sanitize_token(sink))
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
    fn webhook_subjects_mirror_the_gateway_ones() {
        let s = Subjects::new("bot2");
        assert_eq!(
            s.webhook("ENTITLEMENT_CREATE", Some("42")),
            "bot2.webhooks.ENTITLEMENT_CREATE.42"
        );
        assert_eq!(s.webhooks_all(), "bot2.webhooks.>");
        assert_eq!(
            s.event_filter("ENTITLEMENT_CREATE", "*"),
            "bot2.*.ENTITLEMENT_CREATE.*"
        );
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
