//! Credentials that hide inside URLs, kept out of logs and error messages.
//!
//! A NATS URL may carry `user:password@`; a webhook URL (Slack, Zapier, Discord) carries
//! its token in the path or query. Anything printed goes through one of these.

/// Replaces the user info of every URL in `text` (`nats://user:pass@host` →
/// `nats://<redacted>@host`), wherever it appears, so an error from a client library
/// that quotes the URL is safe to print too.
pub fn userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace; user info is
        // what comes before its last '@'.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == ',')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("<redacted>");
                out.push_str(&tail[userinfo_end..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A URL reduced to what identifies the receiver without its credentials:
/// `scheme://host[:port]/…` (path, query and user info cut). Unparseable input becomes
/// `<url>`.
pub fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = rest.len() > authority.len();
    format!("{scheme}://{host}{}", if more { "/…" } else { "" })
}

/// Every URL in `text` reduced to its origin (see [`url_origin`]): for messages from a
/// client library that quote the URL a request went to (`error sending request for url
/// (https://…)`).
pub fn urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme is the run of letters before "://".
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        out.push_str(&rest[..scheme_start]);
        let tail = &rest[scheme_start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(tail.len());
        out.push_str(&url_origin(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_cut_wherever_a_url_appears() {
        assert_eq!(
            userinfo("cannot connect to nats://relay:hunter2@10.0.0.1:4222, tls://a:b@c:4443/x"),
            "cannot connect to nats://<redacted>@10.0.0.1:4222, tls://<redacted>@c:4443/x"
        );
        assert_eq!(userinfo("nats://host:4222"), "nats://host:4222");
        assert_eq!(userinfo("no url here"), "no url here");
        assert_eq!(
            userinfo("http://u:p@h/path@x"),
            "http://<redacted>@h/path@x"
        );
    }

    #[test]
    fn urls_in_messages_keep_only_their_origin() {
        assert_eq!(
            urls(
                "error sending request for url (https://hooks.slack.com/services/T0/XXXX?t=1): refused"
            ),
            "error sending request for url (https://hooks.slack.com/…): refused"
        );
        assert_eq!(
            urls("two: http://a/x, http://u:p@b:1/y"),
            "two: http://a/…, http://b:1/…"
        );
        assert_eq!(urls("none"), "none");
    }

    #[test]
    fn origins_keep_only_scheme_and_host() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T0/B0/XXXX?token=abc"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(url_origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(
            url_origin("https://u:p@example.com/x"),
            "https://example.com/…"
        );
        assert_eq!(url_origin("not a url"), "<url>");
    }
}
