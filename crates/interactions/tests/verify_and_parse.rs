//! Property test over the verify-and-parse path, with a seeded generator (reproducible;
//! set `PROPTEST_SEED` to explore other seeds, `PROPTEST_CASES` for more).
//!
//! Properties, for arbitrary and mutated requests:
//! - nothing panics;
//! - a request verifies only if its exact timestamp and body were signed by the key;
//! - whatever verifies and parses yields a subject of exactly four plain tokens (no
//!   wildcard, dot or space injected from Discord data) and a dedupe key `ix:<digits>`.

use std::time::{Duration, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relaycord_bus::Subjects;
use relaycord_bus::interaction::{InteractionKeys, Kind};
use relaycord_interactions::response;
use relaycord_interactions::verify::{PublicKey, Verifier};

const NOW: u64 = 1_700_000_000;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Interaction-shaped JSON with hostile names and ids mixed in.
fn interaction(rng: &mut StdRng) -> String {
    const NAMES: [&str; 8] = [
        "ping",
        "vote:1:yes",
        "a.b",
        "*",
        ">",
        "x y",
        "é🔥\\u0000",
        "",
    ];
    const IDS: [&str; 5] = [
        "786008729715212338",
        "1",
        "",
        "1.5",
        "12345678901234567890123",
    ];
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let id = IDS[rng.random_range(0..IDS.len())];
    let kind = rng.random_range(0..7u8);
    let key = if rng.random_bool(0.5) {
        "name"
    } else {
        "custom_id"
    };
    format!(
        r#"{{"id":"{id}","type":{kind},"token":"t","application_id":"9","data":{{"{key}":"{name}"}}}}"#
    )
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(rng.random());
        return;
    }
    match rng.random_range(0..4) {
        0 => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
        }
        1 => bytes.truncate(rng.random_range(0..bytes.len())),
        2 => {
            let i = rng.random_range(0..=bytes.len());
            bytes.insert(i, rng.random());
        }
        _ => {
            let i = rng.random_range(0..bytes.len());
            bytes.remove(i);
        }
    }
}

fn check_parsed(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(keys) = InteractionKeys::parse(text) else {
        return;
    };
    let subject = keys.subject(&Subjects::default());
    let tokens: Vec<&str> = subject.split('.').collect();
    assert_eq!(tokens.len(), 4, "{subject:?} from {text:?}");
    for token in tokens {
        assert!(
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{subject:?} from {text:?}"
        );
    }
    let key = keys.dedupe_key();
    assert!(
        key.strip_prefix("ix:")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())),
        "{key:?}"
    );
    // Relaycord's own answer for the kind is always an acceptable response, of the type
    // Discord expects for it.
    let expected = match keys.kind {
        Kind::Ping => response::callback::PONG,
        Kind::Command | Kind::Modal => response::callback::DEFERRED_CHANNEL_MESSAGE,
        Kind::Component => response::callback::DEFERRED_UPDATE_MESSAGE,
        Kind::Autocomplete => response::callback::AUTOCOMPLETE_RESULT,
    };
    for ephemeral in [false, true] {
        let deferral = response::deferral(keys.kind, ephemeral);
        assert_eq!(
            response::validate(keys.kind, &deferral),
            Ok(expected),
            "{text:?}"
        );
    }
}

#[test]
fn only_exactly_signed_requests_verify_and_parsing_never_injects_subjects() {
    let seed = env_u64("PROPTEST_SEED", 0x5eed_1e55);
    let cases = env_u64("PROPTEST_CASES", 3000);
    let mut rng = StdRng::seed_from_u64(seed);
    let signing = SigningKey::from_bytes(&rng.random());
    let verifier =
        Verifier::new(PublicKey::from_hex(&hex(signing.verifying_key().as_bytes())).unwrap());
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let sign = |ts: &[u8], body: &[u8]| {
        let mut message = ts.to_vec();
        message.extend_from_slice(body);
        hex(&signing.sign(&message).to_bytes()).into_bytes()
    };
    let mut verified = 0;
    for case in 0..cases {
        let body = if rng.random_bool(0.8) {
            interaction(&mut rng).into_bytes()
        } else {
            (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
        };
        let ts = (NOW as i64 + rng.random_range(-400..400))
            .to_string()
            .into_bytes();
        let signature = sign(&ts, &body);
        let fresh = (ts_value(&ts) as i64 - NOW as i64).abs() <= 300;

        // The genuine request: verifies iff fresh.
        let genuine = verifier.verify(Some(&signature), Some(&ts), &body, now);
        assert_eq!(genuine.is_ok(), fresh, "case {case} (seed {seed:#x})");
        if genuine.is_ok() {
            verified += 1;
            check_parsed(&body);
        }

        // One mutation of any part: never verifies.
        let (mut b, mut t, mut s) = (body.clone(), ts.clone(), signature.clone());
        match rng.random_range(0..3) {
            0 => mutate(&mut rng, &mut b),
            1 => mutate(&mut rng, &mut t),
            _ => mutate(&mut rng, &mut s),
        }
        let changed = (&b, &t, &s) != (&body, &ts, &signature);
        let forged = verifier.verify(Some(&s), Some(&t), &b, now);
        // A hex digit's case flip is the only harmless edit.
        let equivalent = b == body && t == ts && s.eq_ignore_ascii_case(&signature);
        if changed && !equivalent {
            assert!(
                forged.is_err(),
                "case {case}: a mutated request verified (seed {seed:#x})"
            );
        }
        check_parsed(&b);
    }
    assert!(
        verified > cases / 2,
        "the generator mostly makes fresh requests"
    );
}

fn ts_value(ts: &[u8]) -> u64 {
    std::str::from_utf8(ts).unwrap().parse().unwrap()
}
