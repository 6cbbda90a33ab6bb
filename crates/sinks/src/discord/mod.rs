//! `type = "discord"`: one message per event, to an incoming webhook (`?wait=true`) or
//! to a channel as the bot (`nonce` + `enforce_nonce`, so a redelivery within Discord's
//! nonce window returns the first message instead of posting again).
//!
//! Messages come from minijinja templates (see [`templates`]), always with
//! `allowed_mentions` (default `{"parse": []}`: relayed text never pings anyone).
//! Rate limits are honoured before sending ([`ratelimit`]); 401 stops the sink and
//! 403/404 stop the route, each after one request, because every rejected request
//! counts toward Discord's invalid-request ban, which is also counted for the whole
//! process ([`relaycord_bus::invalid_requests`]) and holds requests when it nears.

mod config;
mod own;
mod ratelimit;
mod service;
pub mod templates;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use relaycord_bus::{InvalidRequests, Secret};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use config::{AllowedMentions, DiscordSinkConfig, EmbedTemplate, MessageTemplate};
pub use service::{Verdict, classify};

use crate::error::{SinkError, SinkErrorKind};
use crate::template::KeyTemplate;
use crate::{Event, Outcome, Sink};
use own::Own;
use ratelimit::Limiter;
use templates::Templates;

enum Target {
    Webhook {
        url: reqwest::Url,
        route: String,
    },
    Channel {
        api_base: String,
        channel: KeyTemplate,
        token: Secret,
    },
}

pub struct DiscordSink {
    name: String,
    client: reqwest::Client,
    target: Target,
    templates: Templates,
    allowed_mentions: AllowedMentions,
    username: Option<String>,
    avatar_url: Option<String>,
    global_rate: u32,
    /// Boxed: its maps would make this the one large variant of `AnySink`.
    limiter: Box<Limiter>,
    /// Set after a 401: the token is bad, nothing more is sent.
    stopped: Mutex<Option<String>>,
    /// Until Discord first accepts the token, bot requests go one at a time, so a bad
    /// token costs one refused request, not one per route in flight.
    verified: AtomicBool,
    probe: tokio::sync::Mutex<()>,
    /// Who the sink posts as, to skip its own messages; `None` relays them too.
    own: Option<Own>,
}

impl DiscordSink {
    /// Validates the config; errors name the key (`sinks.<name>.<key>`) and the fix.
    pub fn build(name: &str, config: &DiscordSinkConfig) -> Result<Self, SinkError> {
        let bad = |key: &str, msg: String| {
            let key = if key.is_empty() {
                String::new()
            } else {
                format!(".{key}")
            };
            SinkError::new(SinkErrorKind::Config, format!("sinks.{name}{key}: {msg}"))
        };
        let target = match (&config.webhook_url, &config.channel_id) {
            (Some(url), None) => webhook_target(url).map_err(|m| bad("webhook_url", m))?,
            (None, Some(channel)) => {
                let channel = KeyTemplate::parse(channel).map_err(|e| bad("channel_id", e))?;
                let literal = channel.sample(name, str::to_owned);
                if !channel.uses("channel_id") && !relaycord_bus::subject::is_snowflake(&literal) {
                    return Err(bad(
                        "channel_id",
                        "must be a channel id (e.g. \"290926798999357250\") or \"{channel_id}\" to post into each event's own channel".to_owned(),
                    ));
                }
                let token = config
                    .token
                    .clone()
                    .filter(|t| !t.is_empty())
                    .or_else(|| std::env::var("DISCORD_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret::new))
                    .ok_or_else(|| {
                        bad(
                            "token",
                            "is missing: the bot token posts to channel_id; set token = \"…\" or the DISCORD_TOKEN environment variable"
                                .to_owned(),
                        )
                    })?;
                let api_base = config.api_base.trim_end_matches('/').to_owned();
                reqwest::Url::parse(&api_base).map_err(|e| {
                    bad(
                        "api_base",
                        format!(
                            "{api_base:?} is not a URL ({e}); the default is {:?}",
                            relaycord_bus::DISCORD_API_BASE
                        ),
                    )
                })?;
                Target::Channel {
                    api_base,
                    channel,
                    token,
                }
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "",
                    "set either webhook_url (incoming webhook) or channel_id (bot), not both"
                        .to_owned(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "webhook_url",
                    "is missing: set webhook_url = \"https://discord.com/api/webhooks/<id>/<token>\", or channel_id and token to post as the bot".to_owned(),
                ));
            }
        };
        let own = config.skip_own_messages.then(|| match &target {
            Target::Webhook { route, .. } => Own::webhook(route.trim_start_matches("webhook:")),
            Target::Channel {
                api_base, token, ..
            } => Own::bot(api_base, token),
        });
        let templates =
            Templates::compile(&config.templates).map_err(|(key, reason)| bad(&key, reason))?;
        if let Some(p) = config
            .allowed_mentions
            .parse
            .iter()
            .find(|p| !matches!(p.as_str(), "users" | "roles" | "everyone"))
        {
            return Err(bad(
                "allowed_mentions.parse",
                format!("{p:?} is not one of \"users\", \"roles\", \"everyone\""),
            ));
        }
        if config.global_rate == 0 {
            return Err(bad(
                "global_rate",
                "must be at least 1 (Discord allows 50)".to_owned(),
            ));
        }
        relaycord_bus::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "DiscordBot (https://github.com/relaycord/relaycord, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()
            .map_err(|e| {
                SinkError::with_source(SinkErrorKind::Config, "cannot build the HTTP client", e)
            })?;
        Ok(Self {
            name: name.to_owned(),
            client,
            target,
            templates,
            allowed_mentions: config.allowed_mentions.clone(),
            username: config.username.clone(),
            avatar_url: config.avatar_url.clone(),
            global_rate: config.global_rate,
            limiter: Box::default(),
            stopped: Mutex::new(None),
            verified: AtomicBool::new(false),
            probe: tokio::sync::Mutex::new(()),
            own,
        })
    }
}

/// `…/webhooks/<id>/<token>` → the URL with `?wait=true` and the route `webhook:<id>`.
/// Messages never quote the URL: its token is a secret.
fn webhook_target(url: &Secret) -> Result<Target, String> {
    let hint = "must look like \"https://discord.com/api/webhooks/<id>/<token>\"";
    let mut parsed =
        reqwest::Url::parse(url.expose()).map_err(|_| format!("is not a URL; it {hint}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("has scheme {:?}; it {hint}", parsed.scheme()));
    }
    let segments: Vec<&str> = parsed
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    let at = segments
        .iter()
        .position(|s| *s == "webhooks")
        .filter(|i| segments.len() == i + 3)
        .ok_or_else(|| format!("has no /webhooks/<id>/<token> path; it {hint}"))?;
    let id = segments[at + 1].to_owned();
    if !relaycord_bus::subject::is_snowflake(&id) || segments[at + 2].is_empty() {
        return Err(format!("has no valid webhook id and token; it {hint}"));
    }
    parsed.query_pairs_mut().append_pair("wait", "true");
    Ok(Target::Webhook {
        url: parsed,
        route: format!("webhook:{id}"),
    })
}

/// Discord's nonce holds at most 25 characters; ids can be longer, so a digest of it.
pub fn nonce(id: &str) -> String {
    let mut nonce = hex::encode(Sha256::digest(id.as_bytes()));
    nonce.truncate(25);
    nonce
}

impl Sink for DiscordSink {
    async fn deliver(&self, event: &Event<'_>) -> Outcome {
        if let Some(own) = &self.own {
            match own.posted(&self.client, event.body).await {
                Ok(false) => {}
                Ok(true) => {
                    return Outcome::Skipped {
                        reason:
                            "posted by this sink (its bot user or webhook): relaying it would loop"
                                .to_owned(),
                    };
                }
                Err(outcome) => return outcome,
            }
        }
        if let Some(reason) = self.stopped.lock().expect("discord sink lock").clone() {
            return Outcome::Permanent {
                reason: format!("not sent: the sink stopped after {reason}"),
                status: None,
            };
        }
        let message = match self.templates.render(event.body) {
            Ok(m) => m,
            Err(reason) => {
                return Outcome::Permanent {
                    reason,
                    status: None,
                };
            }
        };
        let mut body = json!({
            "content": message.content,
            "embeds": message.embeds,
            "allowed_mentions": self.allowed_mentions,
        });
        let (url, route, token) = match &self.target {
            Target::Webhook { url, route } => {
                if let Some(u) = &self.username {
                    body["username"] = json!(u);
                }
                if let Some(a) = &self.avatar_url {
                    body["avatar_url"] = json!(a);
                }
                (url.clone(), route.clone(), None)
            }
            Target::Channel {
                api_base,
                channel,
                token,
            } => {
                let id = channel.render(&self.name, event.body, str::to_owned);
                if !relaycord_bus::subject::is_snowflake(&id) {
                    return Outcome::Permanent {
                        reason: format!("the event has no channel to post to ({id:?})"),
                        status: None,
                    };
                }
                body["nonce"] = json!(nonce(event.id));
                body["enforce_nonce"] = json!(true);
                let url = format!("{api_base}/v10/channels/{id}/messages");
                match reqwest::Url::parse(&url) {
                    Ok(url) => (url, format!("channel:{id}"), Some(token)),
                    Err(e) => {
                        return Outcome::Permanent {
                            reason: format!("bad URL {url}: {e}"),
                            status: None,
                        };
                    }
                }
            }
        };

        let mut state = self.limiter.route(&route).await;
        if let Some(reason) = &state.stopped {
            return Outcome::Permanent {
                reason: format!("not sent: {route} stopped after {reason}"),
                status: None,
            };
        }
        let _probe = match token {
            Some(_) if !self.verified.load(Ordering::Acquire) => Some(self.probe.lock().await),
            _ => None,
        };
        // Held only when the process nears Discord's invalid-request ban.
        InvalidRequests::process().admit().await;
        if token.is_some() {
            self.limiter.global_slot(self.global_rate).await;
        }
        // Checked again right before sending: a 401 may have come in while waiting.
        if let Some(reason) = self.stopped.lock().expect("discord sink lock").clone() {
            return Outcome::Permanent {
                reason: format!("not sent: the sink stopped after {reason}"),
                status: None,
            };
        }
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bot {}", token.expose()));
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    reason: format!("request failed: {}", e.without_url()),
                    status: None,
                    after: None,
                };
            }
        };
        let status = response.status();
        if status.as_u16() != 401 {
            self.verified.store(true, Ordering::Release);
        }
        let headers = response.headers().clone();
        let scope = headers.get("x-ratelimit-scope").map(|v| v.as_bytes());
        InvalidRequests::process().observe(status.as_u16(), scope);
        self.limiter.update(&mut state, &headers);
        // Past the cap the status alone decides a refusal (a 401 must still stop the
        // sink), but a success with an answer no Discord sends is not trusted.
        let verdict = match crate::response::read(response).await {
            Ok(bytes) => classify(status, &headers, &bytes),
            Err(error) => match classify(status, &headers, b"") {
                Verdict::Delivered => return error.outcome(status),
                verdict => verdict,
            },
        };
        match &verdict {
            Verdict::RateLimited {
                after,
                global: true,
            } => self.limiter.pause_all(*after).await,
            Verdict::RateLimited {
                after,
                global: false,
            } => state.limited_for(*after),
            Verdict::Stop {
                reason,
                all_routes: true,
                ..
            } => {
                tracing::error!(sink = %self.name, %reason, "Discord refused the token; the sink stops sending");
                *self.stopped.lock().expect("discord sink lock") = Some(reason.clone());
            }
            Verdict::Stop { reason, .. } => {
                tracing::error!(sink = %self.name, %route, %reason, "route refused; it is not tried again until restart");
                state.stopped = Some(reason.clone());
            }
            _ => {}
        }
        verdict.outcome()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(c: DiscordSinkConfig) -> Result<(), String> {
        DiscordSink::build("d", &c)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn webhook_urls_are_checked_without_printing_them() {
        assert!(
            build(DiscordSinkConfig::webhook(
                "https://discord.com/api/webhooks/123/abcTOKEN"
            ))
            .is_ok()
        );
        for bad in [
            "not a url",
            "https://discord.com/api/channels/1",
            "ftp://x/webhooks/1/t",
        ] {
            let e = build(DiscordSinkConfig::webhook(bad)).unwrap_err();
            assert!(e.starts_with("sinks.d.webhook_url:"), "{e}");
            assert!(!e.contains("abcTOKEN"));
        }
    }

    #[test]
    fn bot_mode_needs_a_channel_and_a_token() {
        let ok = DiscordSinkConfig::channel("290926798999357250", "t", "http://127.0.0.1:1/api");
        assert!(build(ok.clone()).is_ok());
        let e = build(DiscordSinkConfig {
            channel_id: Some("general".into()),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.starts_with("sinks.d.channel_id:"), "{e}");
        assert!(
            build(DiscordSinkConfig {
                channel_id: Some("{channel_id}".into()),
                ..ok.clone()
            })
            .is_ok()
        );
        let e = build(DiscordSinkConfig {
            allowed_mentions: AllowedMentions {
                parse: vec!["everybody".into()],
                ..AllowedMentions::default()
            },
            ..ok
        })
        .unwrap_err();
        assert!(e.contains("sinks.d.allowed_mentions.parse"), "{e}");
    }

    #[test]
    fn nonces_fit_discords_limit() {
        let n = nonce("h:PRESENCE_UPDATE:0123456789abcdef0123456789abcdef");
        assert_eq!(n.len(), 25);
        assert_eq!(
            n,
            nonce("h:PRESENCE_UPDATE:0123456789abcdef0123456789abcdef")
        );
        assert_ne!(n, nonce("msg:1"));
        // A redelivery after an upgrade must send the nonce the first attempt sent.
        assert_eq!(nonce("msg:1"), "b0e644d05f7c0e9772b9c05e6");
    }
}
