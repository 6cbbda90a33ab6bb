//! Standard Webhooks signatures (<https://www.standardwebhooks.com>):
//! `webhook-signature: v1,<base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))>`, with the
//! key given as `whsec_<base64>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A decoded `whsec_` signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Accepts `whsec_<base64>` (the spec's format) or bare base64.
    pub fn parse(secret: &str) -> Result<Self, &'static str> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD.decode(encoded).map_err(
            |_| "must be whsec_ followed by base64 (e.g. generate with `openssl rand -base64 32`)",
        )?;
        if key.len() < 16 {
            return Err("is too short: use at least 16 random bytes (24 to 64 recommended)");
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// HMAC-SHA256 over `"<id>.<timestamp>.<body>"`, the signed content.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Verifies a request as the Standard Webhooks libraries do: the timestamp within
    /// `tolerance` of `now` (both directions, against replays), and one of the
    /// space-separated `v1,<base64>` signatures matching, compared in constant time.
    pub fn verify(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
        signatures: &str,
        now: i64,
        tolerance: std::time::Duration,
    ) -> Result<(), VerifyError> {
        let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(timestamp).abs() > tolerance {
            return Err(VerifyError::Timestamp);
        }
        let mac = self.mac(id, timestamp, body);
        let matches = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .any(|candidate| mac.clone().verify_slice(&candidate).is_ok());
        if matches {
            Ok(())
        } else {
            Err(VerifyError::Signature)
        }
    }
}

/// Why [`SigningKey::verify`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Outside the tolerance: a replay, or a clock far off.
    Timestamp,
    /// No `v1` signature matches.
    Signature,
}

/// The Standard Webhooks libraries' default tolerance.
pub const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_test_vector() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let signature = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn verify_checks_signature_and_timestamp() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let (id, ts) = ("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553);
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let check = |sigs: &str, now: i64| key.verify(id, ts, body, sigs, now, DEFAULT_TOLERANCE);
        assert_eq!(check(good, ts), Ok(()));
        assert_eq!(check(&format!("v1,bm9wZQ== {good}"), ts + 299), Ok(()));
        assert_eq!(check(good, ts + 301), Err(VerifyError::Timestamp));
        assert_eq!(check(good, ts - 301), Err(VerifyError::Timestamp));
        assert_eq!(check("v1,bm9wZQ==", ts), Err(VerifyError::Signature));
        assert_eq!(
            check(&good.replace("v1,", "v2,"), ts),
            Err(VerifyError::Signature)
        );
        assert_eq!(check("", ts), Err(VerifyError::Signature));
    }

    #[test]
    fn bad_secrets_are_rejected_with_a_hint() {
        assert!(
            SigningKey::parse("whsec_not base64!")
                .unwrap_err()
                .contains("base64")
        );
        assert!(
            SigningKey::parse("whsec_AAAA")
                .unwrap_err()
                .contains("short")
        );
        assert_eq!(
            format!(
                "{:?}",
                SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap()
            ),
            "SigningKey(<redacted>)"
        );
    }
}
