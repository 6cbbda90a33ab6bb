//! Routes: which handler answers which interaction.
//!
//! ```toml
//! [[interactions.routes]]
//! command = "ping"                                  # or component / modal / autocomplete
//! handler = { nats = "relaycord.handlers.ping" }    # or { http = "https://…" }
//!
//! [[interactions.routes]]
//! component = "vote"                                # custom_id "vote:…"
//! response = { type = 6 }                           # no handler: answer this, publish only
//! ```
//!
//! The first matching route wins; `"*"` matches every name of its kind. An interaction
//! no route matches is published and deferred (or answered with the configured default),
//! so a consumer of the interactions stream can follow up with the token in the envelope.

use bytes::Bytes;
use relaycord_bus::interaction::{InteractionKeys, Kind};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::response;

/// Where an interaction is sent for its reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Handler {
    /// Request/reply on this subject. Handlers subscribe with a queue group to scale.
    Nats(String),
    /// POST the interaction (Discord's bytes and signature headers) to this URL; the
    /// response body is the interaction response.
    Http(String),
}

/// One `[[interactions.routes]]` entry as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Matches a slash, user or message command by name (`"*"`: any).
    pub command: Option<String>,
    /// Matches a button or select whose custom_id is this or starts with `this:`.
    pub component: Option<String>,
    /// Matches a modal submit by custom_id, as `component` does.
    pub modal: Option<String>,
    /// Matches the autocomplete of a command by name (`"*"`: any).
    pub autocomplete: Option<String>,
    /// Where the interaction goes for its reply: `{ nats = "subject" }` or `{ http = "url" }`.
    pub handler: Option<Handler>,
    /// Answered when there is no handler (an interaction response object).
    pub response: Option<serde_json::Value>,
    /// Deferrals of commands and modals are visible to the invoking user only.
    #[serde(default)]
    pub ephemeral: bool,
}

/// A checked route.
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: Kind,
    /// Command name or custom_id prefix; `None` for `"*"`.
    pub name: Option<String>,
    pub action: Action,
    pub ephemeral: bool,
}

/// What a route does with a matching interaction.
#[derive(Debug, Clone)]
pub enum Action {
    Handler(Handler),
    /// Answer with this (validated) response.
    Respond(Bytes),
    /// Answer with a deferral; someone else follows up.
    Defer,
}

/// A config mistake: which route (by index) and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interactions.routes[{index}]{field}: {problem}")]
pub struct RouteError {
    pub index: usize,
    /// The key inside the route when the problem is one value's (`.handler.http`), else "".
    pub field: &'static str,
    pub problem: String,
}

impl RouteConfig {
    fn check(&self, index: usize) -> Result<Route, RouteError> {
        let err = |problem: String| RouteError {
            index,
            field: "",
            problem,
        };
        let keys = [
            (Kind::Command, &self.command),
            (Kind::Component, &self.component),
            (Kind::Modal, &self.modal),
            (Kind::Autocomplete, &self.autocomplete),
        ];
        let mut set = keys
            .iter()
            .filter_map(|(kind, name)| Some((*kind, name.as_ref()?)));
        let (kind, name) = match (set.next(), set.next()) {
            (Some(one), None) => one,
            _ => {
                return Err(err(
                    "set exactly one of command, component, modal or autocomplete".to_owned(),
                ));
            }
        };
        if name.is_empty() {
            return Err(err(format!("{kind} must not be empty (use \"*\" for any)")));
        }
        let action = match (&self.handler, &self.response) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "set either handler or response, not both (late handlers are deferred for)"
                        .to_owned(),
                ));
            }
            (Some(Handler::Nats(subject)), None) if !is_subject(subject) => {
                return Err(err(format!(
                    "handler.nats {subject:?} is not a NATS subject"
                )));
            }
            (Some(Handler::Http(url)), None) => {
                check_url(url).map_err(|problem| RouteError {
                    index,
                    field: ".handler.http",
                    problem: format!("{url:?} {problem}"),
                })?;
                Action::Handler(Handler::Http(url.clone()))
            }
            (Some(handler), None) => Action::Handler(handler.clone()),
            (None, Some(value)) => {
                let bytes = Bytes::from(value.to_string());
                response::validate(kind, &bytes).map_err(|e| err(format!("response: {e}")))?;
                Action::Respond(bytes)
            }
            (None, None) => Action::Defer,
        };
        Ok(Route {
            kind,
            name: (name != "*").then(|| name.clone()),
            action,
            ephemeral: self.ephemeral,
        })
    }
}

/// The checked routes, in config order.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(configs: &[RouteConfig]) -> Result<Self, RouteError> {
        configs
            .iter()
            .enumerate()
            .map(|(i, c)| c.check(i))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The first route for this interaction's kind and name.
    pub fn find(&self, keys: &InteractionKeys<'_>) -> Option<&Route> {
        self.0
            .iter()
            .find(|r| r.kind == keys.kind && r.name.as_deref().is_none_or(|name| name == keys.name))
    }
}

/// Whether reqwest can send to `url`: checked at start-up, because an unparsable URL would
/// otherwise pass `config check` and fail every interaction of its route at run time.
fn check_url(url: &str) -> Result<(), &'static str> {
    let parsed = reqwest::Url::parse(url).map_err(
        |_| "is not a valid URL: write it in full, such as \"https://example.com/discord\"",
    )?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host: write it in full, such as \"https://example.com/discord\"");
    }
    Ok(())
}

fn is_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b > b' ' && b != 0x7f)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(raw: &str) -> InteractionKeys<'_> {
        InteractionKeys::parse(raw).unwrap()
    }

    #[test]
    fn first_match_by_kind_and_name() {
        let routes = Routes::new(&[
            RouteConfig {
                command: Some("ping".into()),
                handler: Some(Handler::Nats("relaycord.handlers.ping".into())),
                ..Default::default()
            },
            RouteConfig {
                component: Some("vote".into()),
                response: Some(serde_json::json!({"type": 6})),
                ..Default::default()
            },
            RouteConfig {
                command: Some("*".into()),
                handler: Some(Handler::Http("http://127.0.0.1:1/fn".into())),
                ..Default::default()
            },
        ])
        .unwrap();
        let ping = keys(r#"{"id":"1","type":2,"data":{"name":"ping"}}"#);
        assert!(
            matches!(&routes.find(&ping).unwrap().action, Action::Handler(Handler::Nats(s)) if s == "relaycord.handlers.ping")
        );
        let other = keys(r#"{"id":"1","type":2,"data":{"name":"blep"}}"#);
        assert!(matches!(
            &routes.find(&other).unwrap().action,
            Action::Handler(Handler::Http(_))
        ));
        let vote = keys(r#"{"id":"1","type":3,"data":{"custom_id":"vote:3"}}"#);
        assert!(
            matches!(&routes.find(&vote).unwrap().action, Action::Respond(r) if &r[..] == br#"{"type":6}"#)
        );
        // Same name, other kind: no match.
        let modal = keys(r#"{"id":"1","type":5,"data":{"custom_id":"vote"}}"#);
        assert!(routes.find(&modal).is_none());
    }

    #[test]
    fn mistakes_name_the_route() {
        let e = Routes::new(&[RouteConfig::default()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("interactions.routes[0]: set exactly one"),
            "{e}"
        );
        let e = Routes::new(&[
            RouteConfig {
                command: Some("a".into()),
                ..Default::default()
            },
            RouteConfig {
                autocomplete: Some("a".into()),
                response: Some(serde_json::json!({"type": 4, "data": {}})),
                ..Default::default()
            },
        ])
        .unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.problem.contains("not allowed for autocomplete"), "{e}");
        let e = Routes::new(&[RouteConfig {
            command: Some("a".into()),
            handler: Some(Handler::Nats("a.*".into())),
            ..Default::default()
        }])
        .unwrap_err();
        assert!(e.problem.contains("not a NATS subject"), "{e}");
    }

    /// Issue 18 H: a handler URL that does not parse passed the check (only its scheme
    /// prefix was looked at) and failed every interaction of its route at run time.
    #[test]
    fn unparsable_handler_urls_are_refused_with_their_key() {
        let http = |url: &str| RouteConfig {
            command: Some("a".into()),
            handler: Some(Handler::Http(url.into())),
            ..Default::default()
        };
        for bad in [
            "http://exa mple.com/fn",
            "https://",
            "http://[::1/fn",
            "https://host:99999/fn",
            "ftp://example.com/fn",
        ] {
            let e = Routes::new(&[http(bad)]).expect_err(bad);
            assert!(
                e.to_string()
                    .starts_with("interactions.routes[0].handler.http: "),
                "{bad}: {e}"
            );
        }
        for good in ["https://example.val.run/", "http://127.0.0.1:8080/fn?x=1"] {
            Routes::new(&[http(good)]).expect(good);
        }
    }
}
