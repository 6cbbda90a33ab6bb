//! Classification of HTTP responses into [`Outcome`]s.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::Outcome;

/// 2xx delivered; 408, 429 and 5xx retried (honouring `Retry-After`); 410 Gone and
/// every other status permanent, because resending the same request cannot change the
/// receiver's answer. Redirects are not followed: a webhook URL that moved is a config
/// error the operator should see in the dead letters.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let reason = format!("HTTP {status}");
    if code == 408 || code == 429 || status.is_server_error() {
        Outcome::Retry {
            reason,
            status: Some(code),
            after: retry_after(headers),
        }
    } else {
        Outcome::Permanent {
            reason,
            status: Some(code),
        }
    }
}

/// Transport failures (refused, reset, timeout) are retried: the receiver may be back.
pub fn classify_error(error: &reqwest::Error) -> Outcome {
    let reason = if error.is_timeout() {
        "request timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    // reqwest quotes the URL, and a webhook URL carries its token in the path or query:
    // the reason goes to logs and dead letters, so only the origin stays.
    Outcome::Retry {
        reason: format!(
            "{reason}: {}",
            relaycord_bus::redact::urls(&error.to_string())
        ),
        status: None,
        after: None,
    }
}

/// `Retry-After` in seconds. The HTTP-date form is rare on webhooks and is ignored
/// (the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn with_retry_after(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn success_statuses_deliver() {
        for code in [200, 201, 202, 204] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap(), &HeaderMap::new()),
                Outcome::Delivered
            );
        }
    }

    /// Classification feeds the policy: whatever the jitter draws, the wait after a
    /// 429 with `Retry-After` is at least that long.
    #[test]
    fn retry_after_is_a_floor_for_the_backoff() {
        let Outcome::Retry { after, .. } =
            classify(StatusCode::TOO_MANY_REQUESTS, &with_retry_after("7"))
        else {
            panic!("429 is retried")
        };
        let backoff = crate::retry::Backoff::default();
        for attempt in 1..10 {
            assert!(backoff.next_delay(attempt, after) >= Duration::from_secs(7));
        }
    }

    #[test]
    fn transient_statuses_retry_with_retry_after() {
        let o = classify(StatusCode::TOO_MANY_REQUESTS, &with_retry_after("7"));
        assert_eq!(
            o,
            Outcome::Retry {
                reason: "HTTP 429 Too Many Requests".into(),
                status: Some(429),
                after: Some(Duration::from_secs(7))
            }
        );
        for code in [408, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(code).unwrap(), &HeaderMap::new()),
                    Outcome::Retry { after: None, .. }
                ),
                "{code}"
            );
        }
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &with_retry_after("soon")),
            Outcome::Retry { after: None, .. }
        ));
    }

    #[test]
    fn client_errors_and_redirects_are_permanent() {
        for code in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(code).unwrap(), &HeaderMap::new()),
                    Outcome::Permanent { .. }
                ),
                "{code}"
            );
        }
    }
}
