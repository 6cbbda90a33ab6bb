//! Discord's request signature: ed25519 over `X-Signature-Timestamp ‖ raw body`.
//!
//! Fail closed: anything but a well-formed, valid, fresh signature is a [`Rejection`].
//! The signature is checked before the timestamp window so that a forged request learns
//! nothing about the clock, and with `verify_strict` so that malleable signatures and
//! weak keys are refused too (Discord's own signatures are canonical).

use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, VerifyingKey};

pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";

/// How far a request's timestamp may be from our clock, either way.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// Why a request was refused with 401. Bounded, so it is also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `X-Signature-Ed25519` or no `X-Signature-Timestamp`.
    MissingHeader,
    /// The signature is not hex.
    BadHex,
    /// The signature is not 64 bytes.
    BadLength,
    /// The timestamp is not a decimal number of seconds.
    BadTimestamp,
    /// The signature does not verify.
    BadSignature,
    /// Valid signature, but the timestamp is outside the window (a replay).
    Stale,
}

impl Rejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::BadHex => "bad_hex",
            Self::BadLength => "bad_length",
            Self::BadTimestamp => "bad_timestamp",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
        }
    }
}

/// The application's public key (hex in the Developer Portal).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// Why a configured public key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must be 64 hex characters (the application's public key from the Developer Portal)")]
    Format,
    #[error("is not a valid ed25519 public key")]
    Invalid,
}

impl PublicKey {
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let bytes = decode_hex::<32>(hex.trim()).map_err(|_| KeyError::Format)?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::Invalid)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public, so printable: it helps to see which application a process verifies for.
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// Verifies requests against one public key.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: PublicKey,
    window: Duration,
    /// The batch-verifying thread of [`Verifier::verify_batched`], started on first use
    /// (`None`: it could not be, so each request is checked on its own).
    batch: Arc<OnceLock<Option<mpsc::Sender<crate::batch::Job>>>>,
}

impl Verifier {
    pub fn new(key: PublicKey) -> Self {
        Self {
            key,
            window: DEFAULT_WINDOW,
            batch: Arc::default(),
        }
    }

    /// The accepted clock difference (default 300 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// What can be checked before the body is read: both headers present and well formed
    /// (128 hex characters; 1–19 digits) and the timestamp inside the window. The body is
    /// read only after this, so that a client without Discord's headers costs no buffer.
    /// It tells an unsigned client whether its timestamp is in the window, which reveals
    /// only that our clock is about right (Discord's requests carry the real time anyway).
    pub fn precheck(
        &self,
        signature: Option<&[u8]>,
        timestamp: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<(), Rejection> {
        let (Some(signature), Some(timestamp)) = (signature, timestamp) else {
            return Err(Rejection::MissingHeader);
        };
        let signature = std::str::from_utf8(signature).map_err(|_| Rejection::BadHex)?;
        decode_hex::<64>(signature)?;
        let seconds = parse_seconds(timestamp).ok_or(Rejection::BadTimestamp)?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(seconds) > self.window.as_secs() {
            return Err(Rejection::Stale);
        }
        Ok(())
    }

    /// Checks one request. `signature` and `timestamp` are the raw header values.
    pub fn verify(
        &self,
        signature: Option<&[u8]>,
        timestamp: Option<&[u8]>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Rejection> {
        let (signature, seconds, message) = Self::signed(signature, timestamp, body)?;
        self.key
            .0
            .verify_strict(&message, &signature)
            .map_err(|_| Rejection::BadSignature)?;
        self.fresh(seconds, now)
    }

    /// [`Verifier::verify`], with the signature checked together with those of other
    /// requests waiting at the same moment (batch.rs): the same verdicts, less CPU each.
    pub async fn verify_batched(
        &self,
        signature: Option<&[u8]>,
        timestamp: Option<&[u8]>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Rejection> {
        let (signature, seconds, message) = Self::signed(signature, timestamp, body)?;
        let jobs = self
            .batch
            .get_or_init(|| crate::batch::spawn(self.key.0).ok());
        let (verdict, answer) = tokio::sync::oneshot::channel();
        let job = crate::batch::Job {
            message,
            signature,
            verdict,
        };
        let valid = match jobs {
            Some(jobs) => match jobs.send(job) {
                // No verdict (the thread is gone): refused, as fail closed wants.
                Ok(()) => answer.await.unwrap_or(false),
                Err(mpsc::SendError(job)) => self
                    .key
                    .0
                    .verify_strict(&job.message, &job.signature)
                    .is_ok(),
            },
            None => self
                .key
                .0
                .verify_strict(&job.message, &job.signature)
                .is_ok(),
        };
        if !valid {
            return Err(Rejection::BadSignature);
        }
        self.fresh(seconds, now)
    }

    /// The signature, the timestamp's seconds and the signed message (timestamp ‖ body).
    fn signed(
        signature: Option<&[u8]>,
        timestamp: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(Signature, u64, Vec<u8>), Rejection> {
        let (Some(signature), Some(timestamp)) = (signature, timestamp) else {
            return Err(Rejection::MissingHeader);
        };
        let signature = std::str::from_utf8(signature).map_err(|_| Rejection::BadHex)?;
        let signature = Signature::from_bytes(&decode_hex::<64>(signature)?);
        let seconds = parse_seconds(timestamp).ok_or(Rejection::BadTimestamp)?;
        let mut message = Vec::with_capacity(timestamp.len() + body.len());
        message.extend_from_slice(timestamp);
        message.extend_from_slice(body);
        Ok((signature, seconds, message))
    }

    /// Checked after the signature, so that a forged request learns nothing of the clock.
    fn fresh(&self, seconds: u64, now: SystemTime) -> Result<(), Rejection> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(seconds) > self.window.as_secs() {
            return Err(Rejection::Stale);
        }
        Ok(())
    }
}

/// Unix seconds as Discord sends them: 1 to 19 ASCII digits, nothing else.
fn parse_seconds(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 19 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Exactly `N` bytes of hex (either case). Length is checked first so that a truncated
/// signature is reported as such.
fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], Rejection> {
    if !text.is_ascii() {
        return Err(Rejection::BadHex);
    }
    if text.len() != 2 * N {
        return Err(Rejection::BadLength);
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| Rejection::BadHex)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const BODY: &[u8] = br#"{"type":1,"id":"1","application_id":"2"}"#;

    fn setup() -> (SigningKey, Verifier, SystemTime) {
        let signing = SigningKey::from_bytes(&[7; 32]);
        let key = PublicKey::from_hex(&hex::encode(signing.verifying_key().as_bytes())).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        (signing, Verifier::new(key), now)
    }

    fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        hex::encode(key.sign(&message).to_bytes())
    }

    #[test]
    fn accepts_a_fresh_valid_signature_and_nothing_else() {
        let (key, verifier, now) = setup();
        let ts = "1700000000";
        let sig = sign(&key, ts, BODY);
        let check = |sig: &str, ts: &str, body: &[u8]| {
            verifier.verify(Some(sig.as_bytes()), Some(ts.as_bytes()), body, now)
        };
        assert_eq!(check(&sig, ts, BODY), Ok(()));
        assert_eq!(check(&sig.to_uppercase(), ts, BODY), Ok(()));
        // Any change to what was signed.
        assert_eq!(
            check(&sig, "1700000001", BODY),
            Err(Rejection::BadSignature)
        );
        assert_eq!(check(&sig, ts, b"{}"), Err(Rejection::BadSignature));
        assert_eq!(
            check(&sig, ts, &BODY[..BODY.len() - 1]),
            Err(Rejection::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            check(&sign(&other, ts, BODY), ts, BODY),
            Err(Rejection::BadSignature)
        );
        // Malformed headers.
        assert_eq!(check(&sig[..126], ts, BODY), Err(Rejection::BadLength));
        assert_eq!(
            check(&format!("{sig}00"), ts, BODY),
            Err(Rejection::BadLength)
        );
        assert_eq!(
            check(&format!("zz{}", &sig[2..]), ts, BODY),
            Err(Rejection::BadHex)
        );
        assert_eq!(check(&sig, "17e8", BODY), Err(Rejection::BadTimestamp));
        assert_eq!(check(&sig, "", BODY), Err(Rejection::BadTimestamp));
        assert_eq!(
            verifier.verify(None, Some(ts.as_bytes()), BODY, now),
            Err(Rejection::MissingHeader)
        );
        assert_eq!(
            verifier.verify(Some(sig.as_bytes()), None, BODY, now),
            Err(Rejection::MissingHeader)
        );
    }

    /// The batched path gives the same verdicts as the single one, stale included.
    #[tokio::test]
    async fn batched_verdicts_are_the_single_ones() {
        let (key, verifier, now) = setup();
        let ts = "1700000000";
        let sig = sign(&key, ts, BODY);
        let old = sign(&key, "1699999000", BODY);
        let cases: [(&str, &str, &[u8]); 6] = [
            (&sig, ts, BODY),
            (&sig, ts, b"{}"),
            (&sig, "1700000001", BODY),
            (&old, "1699999000", BODY),
            (&sig[..126], ts, BODY),
            (&"00".repeat(64), "1", BODY),
        ];
        let batched = futures::future::join_all(cases.iter().map(|(sig, ts, body)| {
            verifier.verify_batched(Some(sig.as_bytes()), Some(ts.as_bytes()), body, now)
        }))
        .await;
        for ((sig, ts, body), got) in cases.iter().zip(batched) {
            let single = verifier.verify(Some(sig.as_bytes()), Some(ts.as_bytes()), body, now);
            assert_eq!(got, single, "{ts} {body:?}");
        }
        assert_eq!(
            verifier
                .verify_batched(Some(sig.as_bytes()), Some(ts.as_bytes()), BODY, now)
                .await,
            Ok(())
        );
    }

    #[test]
    fn timestamps_outside_the_window_are_stale_only_when_signed() {
        let (key, verifier, now) = setup();
        for (offset, expected) in [
            (-300i64, Ok(())),
            (300, Ok(())),
            (-301, Err(Rejection::Stale)),
            (301, Err(Rejection::Stale)),
        ] {
            let ts = (1_700_000_000 + offset).to_string();
            let sig = sign(&key, &ts, BODY);
            assert_eq!(
                verifier.verify(Some(sig.as_bytes()), Some(ts.as_bytes()), BODY, now),
                expected,
                "offset {offset}"
            );
        }
        // A forged old request is a bad signature, not "stale": no clock oracle.
        let forged = "00".repeat(64);
        assert_eq!(
            verifier.verify(Some(forged.as_bytes()), Some(b"1"), BODY, now),
            Err(Rejection::BadSignature)
        );
    }

    /// Issue 18 A: what is refused before the body is read.
    #[test]
    fn precheck_needs_well_formed_headers_and_a_fresh_timestamp() {
        let (key, verifier, now) = setup();
        let ts = "1700000000";
        let sig = sign(&key, ts, BODY);
        let pre = |sig: Option<&str>, ts: Option<&str>| {
            verifier.precheck(sig.map(str::as_bytes), ts.map(str::as_bytes), now)
        };
        assert_eq!(pre(Some(&sig), Some(ts)), Ok(()));
        // Any well-formed signature passes: it is checked over the body, later.
        assert_eq!(pre(Some(&"ab".repeat(64)), Some(ts)), Ok(()));
        assert_eq!(pre(None, Some(ts)), Err(Rejection::MissingHeader));
        assert_eq!(pre(Some(&sig), None), Err(Rejection::MissingHeader));
        assert_eq!(pre(Some(&sig[..126]), Some(ts)), Err(Rejection::BadLength));
        assert_eq!(
            pre(Some(&"zz".repeat(64)), Some(ts)),
            Err(Rejection::BadHex)
        );
        assert_eq!(pre(Some(&sig), Some("17e8")), Err(Rejection::BadTimestamp));
        assert_eq!(pre(Some(&sig), Some("1699999699")), Err(Rejection::Stale));
        assert_eq!(pre(Some(&sig), Some("1700000301")), Err(Rejection::Stale));
        assert_eq!(pre(Some(&sig), Some("1700000300")), Ok(()));
    }

    #[test]
    fn public_keys_are_checked() {
        assert_eq!(PublicKey::from_hex("abc").unwrap_err(), KeyError::Format);
        assert_eq!(
            PublicKey::from_hex(&"g".repeat(64)).unwrap_err(),
            KeyError::Format
        );
        let hex = hex::encode(SigningKey::from_bytes(&[1; 32]).verifying_key().as_bytes());
        assert_eq!(PublicKey::from_hex(&hex).unwrap().to_hex(), hex);
    }
}
