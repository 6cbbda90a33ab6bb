//! Publish permission violations the NATS server reported.
//!
//! A publish the server's permissions forbid is dropped by the server, which tells the
//! client only through an asynchronous `-ERR 'Permissions Violation for Publish to "…"'`:
//! the JetStream publish itself just times out, like one on a slow server. Every role's
//! client hands its server errors to [`record`] (see the binary's NATS connection), so
//! that a publisher seeing a timeout can tell a permission it lacks — which no retry
//! fixes — from a slow server.
//!
//! Process-wide because the client's event callback is set where the connection is
//! made, far from the publishers; entries are only ever used to name a cause, never to
//! decide whether to retry.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Distinct subjects remembered; past it, entries older than [`FORGET_AFTER`] go.
const CAPACITY: usize = 1024;
const FORGET_AFTER: Duration = Duration::from_secs(600);

static DENIED: LazyLock<Mutex<HashMap<String, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Records `server_error` (the text of a `-ERR`) if it is a publish permission violation;
/// returns the subject it names.
pub fn record(server_error: &str) -> Option<String> {
    let subject = denied_subject(server_error)?;
    let mut denied = DENIED.lock().expect("denials lock");
    if denied.len() >= CAPACITY {
        let now = Instant::now();
        denied.retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
        if denied.len() >= CAPACITY {
            denied.clear();
        }
    }
    denied.insert(subject.clone(), Instant::now());
    Some(subject)
}

/// Whether the server refused a publish to `subject` within the last `within`.
pub fn publish_denied(subject: &str, within: Duration) -> bool {
    DENIED
        .lock()
        .expect("denials lock")
        .get(subject)
        .is_some_and(|at| at.elapsed() <= within)
}

/// `Permissions Violation for Publish to "a.b"` → `a.b` (any case, with or without the
/// client's `nats: ` prefix).
fn denied_subject(server_error: &str) -> Option<String> {
    const MARK: &str = "permissions violation for publish to ";
    let at = server_error.to_ascii_lowercase().find(MARK)?;
    let rest = server_error[at + MARK.len()..].trim();
    let subject = rest.trim_matches(|c| c == '"' || c == '\'');
    (!subject.is_empty() && !subject.contains(char::is_whitespace)).then(|| subject.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_denied_subject() {
        assert_eq!(
            denied_subject(r#"Permissions Violation for Publish to "discord.gateway.X.none""#)
                .as_deref(),
            Some("discord.gateway.X.none")
        );
        assert_eq!(
            denied_subject(r#"nats: permissions violation for publish to "a.b""#).as_deref(),
            Some("a.b")
        );
        assert_eq!(
            denied_subject(r#"Permissions Violation for Subscription to "a.b""#),
            None
        );
        assert_eq!(denied_subject("authorization violation"), None);
    }

    #[test]
    fn a_recorded_denial_is_found_by_subject() {
        let subject = record(r#"Permissions Violation for Publish to "test.denials.one""#);
        assert_eq!(subject.as_deref(), Some("test.denials.one"));
        assert!(publish_denied("test.denials.one", Duration::from_secs(60)));
        assert!(!publish_denied("test.denials.two", Duration::from_secs(60)));
    }
}
