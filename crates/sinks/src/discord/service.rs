//! Classification of Discord's answers.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::Outcome;

/// What one answer means for the event and for the route.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered,
    /// 429: wait `after`; `global` when the whole bot is limited.
    RateLimited {
        after: Duration,
        global: bool,
    },
    /// 5xx and transport errors.
    Retry(String, Option<u16>),
    /// 401 (bad token: every route), 403/404 (this route): permanent, and the route
    /// (or the sink) stops sending, since each try counts toward Discord's
    /// invalid-request ban (10,000 per 10 minutes).
    Stop {
        reason: String,
        status: u16,
        all_routes: bool,
    },
    /// 400 and other 4xx: this message cannot be sent; the route is fine.
    Permanent(String, u16),
}

pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
    let code = status.as_u16();
    if status.is_success() {
        return Verdict::Delivered;
    }
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = json["message"].as_str().unwrap_or("").to_owned();
    let reason = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {message}")
    };
    match code {
        429 => {
            // Whatever the body or header says (NaN, inf, negative, absurdly large), the
            // wait is a sane duration: an odd header must not panic the sink.
            let seconds = |s: f64| (s.is_finite() && s >= 0.0).then_some(s);
            let from_body = json["retry_after"].as_f64().and_then(seconds);
            let from_header = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
                .and_then(seconds);
            let secs = from_body.or(from_header).unwrap_or(1.0);
            let global = json["global"] == true
                || headers
                    .get("x-ratelimit-scope")
                    .is_some_and(|s| s.as_bytes() == b"global")
                || headers
                    .get("x-ratelimit-global")
                    .is_some_and(|s| s.as_bytes() == b"true");
            Verdict::RateLimited {
                after: Duration::from_secs_f64(secs.clamp(0.0, 3600.0)),
                global,
            }
        }
        401 => Verdict::Stop {
            reason,
            status: code,
            all_routes: true,
        },
        403 | 404 => Verdict::Stop {
            reason,
            status: code,
            all_routes: false,
        },
        _ if status.is_server_error() => Verdict::Retry(reason, Some(code)),
        _ => Verdict::Permanent(reason, code),
    }
}

impl Verdict {
    pub fn outcome(self) -> Outcome {
        match self {
            Verdict::Delivered => Outcome::Delivered,
            Verdict::RateLimited { after, global } => Outcome::Retry {
                reason: format!(
                    "rate limited ({}) for {after:?}",
                    if global { "global" } else { "route" }
                ),
                status: Some(429),
                after: Some(after),
            },
            Verdict::Retry(reason, status) => Outcome::Retry {
                reason,
                status,
                after: None,
            },
            Verdict::Stop { reason, status, .. } | Verdict::Permanent(reason, status) => {
                Outcome::Permanent {
                    reason,
                    status: Some(status),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn st(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn rate_limits_read_body_and_scope() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-scope", HeaderValue::from_static("global"));
        let v = classify(
            st(429),
            &h,
            br#"{"message":"You are being rate limited.","retry_after":0.25,"global":false}"#,
        );
        assert_eq!(
            v,
            Verdict::RateLimited {
                after: Duration::from_millis(250),
                global: true
            }
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(
            classify(st(429), &h, b""),
            Verdict::RateLimited {
                after: Duration::from_secs(2),
                global: false
            }
        );
    }

    #[test]
    fn auth_and_missing_routes_stop() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(st(401), &h, b""),
            Verdict::Stop {
                all_routes: true,
                ..
            }
        ));
        for code in [403, 404] {
            assert!(matches!(
                classify(
                    st(code),
                    &h,
                    br#"{"message":"Unknown Webhook","code":10015}"#
                ),
                Verdict::Stop {
                    all_routes: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            classify(st(400), &h, b""),
            Verdict::Permanent(_, 400)
        ));
        assert!(matches!(
            classify(st(502), &h, b""),
            Verdict::Retry(_, Some(502))
        ));
        assert_eq!(classify(st(200), &h, b"{}"), Verdict::Delivered);
    }

    /// Values that used to panic `Duration::from_secs_f64` (NaN) or that must not turn
    /// into an absurd wait.
    #[test]
    fn odd_retry_after_values_are_sane() {
        for value in ["NaN", "nan", "inf", "-inf", "-1", "1e308", "", "soon"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_str(value).unwrap());
            let Verdict::RateLimited { after, .. } = classify(st(429), &h, b"") else {
                panic!("a 429 is a rate limit");
            };
            assert!(after <= Duration::from_secs(3600), "{value}: {after:?}");
        }
        let body = br#"{"retry_after":-5,"global":false}"#;
        let Verdict::RateLimited { after, .. } = classify(st(429), &HeaderMap::new(), body) else {
            panic!("a 429 is a rate limit");
        };
        assert_eq!(
            after,
            Duration::from_secs(1),
            "a negative wait falls back to 1s"
        );
    }

    proptest::proptest! {
        /// No status, header value or body makes the classifier panic, and a rate
        /// limit's wait is capped.
        #[test]
        fn classify_never_panics(
            code in 100u16..600,
            retry_after in "[ -~]{0,24}",
            scope in "[ -~]{0,12}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            json_wait in proptest::num::f64::ANY,
        ) {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_str(&retry_after).unwrap());
            h.insert("x-ratelimit-scope", HeaderValue::from_str(&scope).unwrap());
            let json_body = format!(r#"{{"retry_after":{json_wait}}}"#);
            for body in [&body[..], json_body.as_bytes()] {
                if let Verdict::RateLimited { after, .. } = classify(st(code), &h, body) {
                    proptest::prop_assert!(after <= Duration::from_secs(3600));
                }
            }
        }
    }
}
