//! Property test over the verify-and-parse path (proptest: a failure is shrunk to a
//! minimal case, whose seed is kept beside this file in `verify_and_parse.proptest-regressions`;
//! `PROPTEST_CASES` runs more or fewer than 3000).
//!
//! Properties, for arbitrary and mutated requests:
//! - nothing panics;
//! - a request verifies only if its exact timestamp and body were signed by the key;
//! - whatever verifies and parses yields a subject of exactly four plain tokens (no
//!   wildcard, dot or space injected from Discord data) and a dedupe key `ix:<digits>`.

use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestRunner};
use relaycord_bus::Subjects;
use relaycord_bus::interaction::{InteractionKeys, Kind};
use relaycord_interactions::response;
use relaycord_interactions::verify::{PublicKey, Verifier};

const NOW: u64 = 1_700_000_000;

/// Interaction-shaped JSON with hostile names and ids mixed in.
fn interaction() -> impl Strategy<Value = Vec<u8>> {
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
    (
        select(&NAMES[..]),
        select(&IDS[..]),
        0..7u8,
        select(&["name", "custom_id"][..]),
    )
        .prop_map(|(name, id, kind, key)| {
            format!(
                r#"{{"id":"{id}","type":{kind},"token":"t","application_id":"9","data":{{"{key}":"{name}"}}}}"#
            )
            .into_bytes()
        })
}

/// Mostly interactions, sometimes arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => interaction(),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// One edit of one byte string: flip a bit, truncate, insert or remove a byte.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Remove(Index),
}

impl Edit {
    fn strategy() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
            any::<Index>().prop_map(Edit::Truncate),
            (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
            any::<Index>().prop_map(Edit::Remove),
        ]
    }

    fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            bytes.push(match self {
                Edit::Insert(_, byte) => *byte,
                _ => 0,
            });
            return;
        }
        let len = bytes.len();
        match self {
            Edit::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Edit::Truncate(at) => bytes.truncate(at.index(len)),
            Edit::Insert(at, byte) => bytes.insert(at.index(len + 1), *byte),
            Edit::Remove(at) => {
                bytes.remove(at.index(len));
            }
        }
    }
}

/// Which part of the request an edit changes.
#[derive(Debug, Clone, Copy)]
enum Part {
    Body,
    Timestamp,
    Signature,
}

/// One request: the key that signs it, its body, its timestamp's distance from now,
/// and one edit of one part.
fn case() -> impl Strategy<Value = ([u8; 32], Vec<u8>, i64, Part, Edit)> {
    (
        any::<[u8; 32]>(),
        body(),
        -400..400i64,
        prop_oneof![
            Just(Part::Body),
            Just(Part::Timestamp),
            Just(Part::Signature)
        ],
        Edit::strategy(),
    )
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
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        ..Config::default()
    });
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let verified = Cell::new(0u32);
    runner
        .run(&case(), |(seed, body, offset, part, edit)| {
            let signing = SigningKey::from_bytes(&seed);
            let verifier = Verifier::new(
                PublicKey::from_hex(&hex::encode(signing.verifying_key().as_bytes())).unwrap(),
            );
            let sign = |ts: &[u8], body: &[u8]| {
                let mut message = ts.to_vec();
                message.extend_from_slice(body);
                hex::encode(signing.sign(&message).to_bytes()).into_bytes()
            };
            let ts = (NOW as i64 + offset).to_string().into_bytes();
            let signature = sign(&ts, &body);
            let fresh = offset.abs() <= 300;

            // The genuine request: verifies iff fresh.
            let genuine = verifier.verify(Some(&signature), Some(&ts), &body, now);
            prop_assert_eq!(genuine.is_ok(), fresh);
            if genuine.is_ok() {
                verified.set(verified.get() + 1);
                check_parsed(&body);
            }

            // One mutation of any part: never verifies.
            let (mut b, mut t, mut s) = (body.clone(), ts.clone(), signature.clone());
            match part {
                Part::Body => edit.apply(&mut b),
                Part::Timestamp => edit.apply(&mut t),
                Part::Signature => edit.apply(&mut s),
            }
            let changed = (&b, &t, &s) != (&body, &ts, &signature);
            let forged = verifier.verify(Some(&s), Some(&t), &b, now);
            // A hex digit's case flip is the only harmless edit.
            let equivalent = b == body && t == ts && s.eq_ignore_ascii_case(&signature);
            if changed && !equivalent {
                prop_assert!(forged.is_err(), "a mutated request verified");
            }
            check_parsed(&b);
            Ok(())
        })
        .unwrap();
    assert!(
        verified.get() > cases / 2,
        "the generator mostly makes fresh requests"
    );
}
