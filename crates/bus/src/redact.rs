//! Credentials that hide inside URLs, kept out of logs and error messages.
//!
//! A NATS URL may carry `user:password@`; a webhook URL (Slack, Zapier, Discord) carries
//! its token in the path or query. Anything printed goes through one of these.

/// Replaces the user info of every URL in `text` (`nats://user:pass@host` →
/// `nats://<redacted>@host`), wherever it appears, so an error from a client library
/// that quotes the URL is safe to print too.
///
/// A password is whatever its owner typed: it may hold `/`, `,`, `?` or even `@`, none of
/// which a scan for the end of the authority can be trusted with. So a URL runs to the
/// next whitespace or the next `scheme://` (a list such as `nats://a@h1,nats://b@h2`),
/// and everything before its **last** `@` is user info. A path with an `@` in it loses
/// more than its credentials; that is the side to err on.
pub fn userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for segment in url_segments(text) {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Url { scheme, rest } => {
                out.push_str(scheme);
                out.push_str("://");
                match rest.rfind('@') {
                    Some(at) => {
                        out.push_str("<redacted>");
                        out.push_str(&rest[at..]);
                    }
                    None => out.push_str(rest),
                }
            }
        }
    }
    out
}

/// A URL reduced to what identifies the receiver without its credentials:
/// `scheme://host[:port]/…` (path, query and user info cut). Unparseable input becomes
/// `<url>`.
pub fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".to_owned();
    };
    origin(scheme, rest)
}

/// The host of `rest` (what follows `scheme://`): after the last `@`, up to the first
/// `/`, `?` or `#` after it.
fn origin(scheme: &str, rest: &str) -> String {
    let after_userinfo = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let host = after_userinfo
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let more = after_userinfo.len() > host.len();
    format!("{scheme}://{host}{}", if more { "/…" } else { "" })
}

/// Every URL in `text` reduced to its origin (see [`url_origin`]): for messages from a
/// client library that quote the URL a request went to (`error sending request for url
/// (https://…)`). A URL runs to the next whitespace: its query may hold `)`, `,` or `'`,
/// so the punctuation a message puts right after it is cut along with the query.
pub fn urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for segment in url_segments(text) {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Url { scheme, rest } => {
                out.push_str(&origin(scheme, rest));
                out.push_str(closing(&out, rest));
            }
        }
    }
    out
}

/// The `)` (with a following `:` or `,`) that closes a parenthesis opened just before a
/// URL, as in `url (https://…): refused`: kept for readability. It is part of the token
/// cut with the query, so at most these two characters of a query ending that way show.
fn closing<'a>(before: &str, rest: &'a str) -> &'a str {
    let opened = before.rsplit_once("://").is_some_and(|(head, _)| {
        head.trim_end_matches(|c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .ends_with('(')
    });
    if !opened {
        return "";
    }
    ["):", "),", ")"]
        .into_iter()
        .find(|suffix| rest.ends_with(suffix))
        .map_or("", |suffix| &rest[rest.len() - suffix.len()..])
}

/// A piece of text: plain, or a URL split at its `://`.
enum Segment<'a> {
    Text(&'a str),
    Url { scheme: &'a str, rest: &'a str },
}

/// Splits `text` into plain text and URLs. A URL starts at its scheme (letters, digits,
/// `+-.` before `://`) and ends at whitespace or where the next URL's scheme starts.
fn url_segments(text: &str) -> Vec<Segment<'_>> {
    let scheme_start = |before: &str| {
        before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + c_len(before, i))
    };
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = scheme_start(&rest[..at]);
        if start == at {
            // "://" without a scheme: plain text.
            segments.push(Segment::Text(&rest[..at + 3]));
            rest = &rest[at + 3..];
            continue;
        }
        segments.push(Segment::Text(&rest[..start]));
        let scheme = &rest[start..at];
        let tail = &rest[at + 3..];
        let mut end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        // A second URL glued on (`…,nats://…`) starts where its scheme does.
        if let Some(next) = tail[..end].find("://") {
            end = scheme_start(&tail[..next]);
        }
        segments.push(Segment::Url {
            scheme,
            rest: &tail[..end],
        });
        rest = &tail[end..];
    }
    segments.push(Segment::Text(rest));
    segments
}

/// The length of the char at byte `i` of `s`.
fn c_len(s: &str, i: usize) -> usize {
    s[i..].chars().next().map_or(1, char::len_utf8)
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
        // Everything before the last '@' goes: a path holding one loses more than the
        // credentials, rather than a password holding '/' leaking.
        assert_eq!(userinfo("http://u:p@h/path@x"), "http://<redacted>@x");
    }

    #[test]
    fn passwords_with_url_punctuation_are_cut_whole() {
        assert_eq!(
            userinfo("connecting to nats://relay:ab/cd@nats:4222 failed"),
            "connecting to nats://<redacted>@nats:4222 failed"
        );
        assert_eq!(
            userinfo("nats://u:pa,ss@h1:4222,nats://v:x?y@h2:4222"),
            "nats://<redacted>@h1:4222,nats://<redacted>@h2:4222"
        );
        assert_eq!(
            urls("error sending request for url (https://h.example/hook?t=a,b)c'd&x=1): refused"),
            "error sending request for url (https://h.example/…): refused"
        );
        assert_eq!(
            url_origin("nats://relay:ab/cd@nats:4222"),
            "nats://nats:4222"
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
            "two: http://a/… http://b:1/…"
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

    use proptest::prelude::*;

    /// Secrets from every printable ASCII character but whitespace, so URL punctuation
    /// (`/ ? # , ) ' @ :`) is in them.
    fn secret() -> impl Strategy<Value = String> {
        "[!-~]{6,24}"
    }

    proptest! {
        /// No generated password survives `userinfo`, whatever the message around the URL.
        #[test]
        fn no_password_survives_userinfo(
            user in "[a-z]{1,8}",
            password in secret(),
            host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
            before in "[ -~]{0,12}",
            after in "( [ -~]{0,12})?",
        ) {
            let text = format!("{before}nats://{user}:{password}@{host}:4222{after}");
            let redacted = userinfo(&text);
            prop_assume!(!before.contains(&password) && !after.contains(&password));
            prop_assert!(!redacted.contains(&password), "{password:?} survived in {redacted:?}");
        }

        /// No generated path or query token survives `urls` or `url_origin`.
        #[test]
        fn no_token_survives_urls(
            host in "[a-z]{1,10}\\.[a-z]{2,5}",
            token in secret(),
            before in "[ -~]{0,12}",
            after in "( [ -~]{0,12})?",
        ) {
            prop_assume!(!before.contains(&token) && !after.contains(&token));
            prop_assume!(!host.contains(&token) && !"https".contains(&token));
            for url in [
                format!("https://{host}/hooks/{token}"),
                format!("https://{host}/x?token={token}&y=1"),
                format!("https://u:{token}@{host}/"),
            ] {
                let text = format!("{before}({url}){after}");
                let redacted = urls(&text);
                prop_assert!(!redacted.contains(&token), "{token:?} survived in {redacted:?}");
                prop_assert!(!url_origin(&url).contains(&token));
            }
        }
    }
}
