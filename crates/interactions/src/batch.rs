//! Signatures of requests that arrive together, verified together.
//!
//! Checking one signature is about a third of a configured response's CPU (profile in
//! docs/interactions.md). Every request is signed with the same key, so n signatures can
//! be checked with one multiscalar multiplication whose key term collapses into one point:
//!
//! `[8]( -(Σ zᵢsᵢ)·B + Σ zᵢ·Rᵢ + (Σ zᵢkᵢ)·A ) = 0`, with `kᵢ = H(Rᵢ ‖ A ‖ mᵢ)` and random
//! 128-bit `zᵢ` unknown to the sender, so a forged signature cannot be cancelled by another.
//!
//! What is accepted stays what [`VerifyingKey::verify_strict`] accepts from anyone without
//! the private key:
//! - a non-canonical `s` or an `R` that does not decode or has small order fails the batch;
//! - the batch failing for any reason sends each of its signatures to `verify_strict` on
//!   its own, so one bad request never refuses the others (nor does a batch pass for it).
//!
//! The only signatures the batch takes that `verify_strict` refuses are ones with a mixed-
//! order `R` (or a non-canonical encoding of it): producing one needs the private key.
//!
//! Requests hand their signature to one thread, which takes whatever has queued while it
//! was busy: under load the batches grow by themselves, and a lone request is checked at
//! once with `verify_strict` (no waiting for company).

use std::sync::mpsc;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};
use tokio::sync::oneshot;

/// Largest batch: past a few dozen the saving per signature barely grows, and a batch is
/// one uninterrupted stretch of the thread.
const MAX_BATCH: usize = 64;

/// One signature waiting for its verdict.
pub(crate) struct Job {
    pub message: Vec<u8>,
    pub signature: Signature,
    pub verdict: oneshot::Sender<bool>,
}

/// Starts the verifying thread for `key`; it ends when the last sender is dropped.
pub(crate) fn spawn(key: VerifyingKey) -> std::io::Result<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("relaycord-verify".into())
        .spawn(move || run(&key, &queue))?;
    Ok(jobs)
}

fn run(key: &VerifyingKey, queue: &mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let items: Vec<(&[u8], &Signature)> = batch
            .iter()
            .map(|j| (j.message.as_slice(), &j.signature))
            .collect();
        let verdicts = verify_all(key, &items);
        drop(items);
        for (job, ok) in batch.drain(..).zip(verdicts) {
            // The request may be gone (client hung up): nothing to tell.
            let _ = job.verdict.send(ok);
        }
    }
}

/// Each signature's verdict, as `verify_strict` would give it to anyone without the key.
pub(crate) fn verify_all(key: &VerifyingKey, items: &[(&[u8], &Signature)]) -> Vec<bool> {
    if items.len() > 1 && batch_holds(key, items) {
        return vec![true; items.len()];
    }
    items
        .iter()
        .map(|(message, signature)| key.verify_strict(message, signature).is_ok())
        .collect()
}

/// Whether the batch equation holds for all of `items` (false: at least one may be bad).
pub(crate) fn batch_holds(key: &VerifyingKey, items: &[(&[u8], &Signature)]) -> bool {
    let a = EdwardsPoint::from(*key);
    if a.is_small_order() {
        return false;
    }
    let mut b_coefficient = Scalar::ZERO;
    let mut a_coefficient = Scalar::ZERO;
    let mut r_coefficients = Vec::with_capacity(items.len());
    let mut r_points = Vec::with_capacity(items.len());
    for (message, signature) in items {
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))
        else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(*signature.r_bytes()).decompress() else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(signature.r_bytes())
                .chain_update(key.as_bytes())
                .chain_update(message),
        );
        let z = Scalar::from(rand::random::<u128>());
        b_coefficient -= z * s;
        a_coefficient += z * k;
        r_coefficients.push(z);
        r_points.push(r);
    }
    let scalars = [b_coefficient, a_coefficient]
        .into_iter()
        .chain(r_coefficients);
    let points = [ED25519_BASEPOINT_POINT, a].into_iter().chain(r_points);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::traits::Identity;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey, n: usize) -> Vec<(Vec<u8>, Signature)> {
        (0..n)
            .map(|i| {
                let message = format!("1700000000{{\"id\":\"{i}\"}}").into_bytes();
                let signature = key.sign(&message);
                (message, signature)
            })
            .collect()
    }

    fn items(signed: &[(Vec<u8>, Signature)]) -> Vec<(&[u8], &Signature)> {
        signed.iter().map(|(m, s)| (m.as_slice(), s)).collect()
    }

    #[test]
    fn a_batch_of_good_signatures_holds() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let good = signed(&key, 20);
        assert!(batch_holds(&key.verifying_key(), &items(&good)));
        assert_eq!(
            verify_all(&key.verifying_key(), &items(&good)),
            vec![true; 20]
        );
    }

    #[test]
    fn one_bad_signature_fails_the_batch_and_only_itself() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let mut all = signed(&key, 10);
        // Signed by another key; a body changed after signing; s not canonical.
        all[3].1 = other.sign(&all[3].0);
        all[5].0.push(b' ');
        let mut high_s = all[7].1.to_bytes();
        high_s[63] |= 0xf0;
        all[7].1 = Signature::from_bytes(&high_s);
        let verifying = key.verifying_key();
        assert!(!batch_holds(&verifying, &items(&all)));
        let verdicts = verify_all(&verifying, &items(&all));
        for (i, ok) in verdicts.iter().enumerate() {
            assert_eq!(*ok, ![3, 5, 7].contains(&i), "signature {i}");
        }
    }

    #[test]
    fn a_small_order_r_fails_the_batch() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut all = signed(&key, 3);
        // The identity point as R (encoded y = 1): small order, refused by verify_strict.
        let mut bytes = all[1].1.to_bytes();
        bytes[..32].copy_from_slice(&CompressedEdwardsY::identity().to_bytes());
        all[1].1 = Signature::from_bytes(&bytes);
        let verifying = key.verifying_key();
        assert!(!batch_holds(&verifying, &items(&all)));
        assert_eq!(verify_all(&verifying, &items(&all)), [true, false, true]);
    }

    #[tokio::test]
    async fn the_thread_answers_every_job() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let jobs = spawn(key.verifying_key()).unwrap();
        let mut all = signed(&key, 40);
        all[11].0.push(b'!');
        let verdicts: Vec<_> = all
            .into_iter()
            .map(|(message, signature)| {
                let (verdict, answer) = oneshot::channel();
                jobs.send(Job {
                    message,
                    signature,
                    verdict,
                })
                .unwrap();
                answer
            })
            .collect();
        for (i, verdict) in verdicts.into_iter().enumerate() {
            assert_eq!(verdict.await.unwrap(), i != 11, "job {i}");
        }
    }

    /// Thread CPU seconds so far (10 ms ticks; the rounds below take ~0.2 s each).
    fn thread_cpu() -> f64 {
        relaycord_devkit::proc::thread_cpu_seconds().expect("/proc/thread-self/stat")
    }

    /// Not a check: what one signature costs alone and in batches (CPU µs per signature,
    /// ~1 KB bodies like an interaction's). Run with
    /// `cargo test --release -p relaycord-interactions --lib batch_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement; prints CPU per signature"]
    fn batch_cost() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let verifying = key.verifying_key();
        let padded: Vec<(Vec<u8>, Signature)> = (0..4096)
            .map(|i| {
                let message = format!("1700000000{{\"id\":\"{i}\",\"p\":\"{}\"}}", "x".repeat(900));
                let signature = key.sign(message.as_bytes());
                (message.into_bytes(), signature)
            })
            .collect();
        let per_signature = |started: f64| (thread_cpu() - started) / padded.len() as f64 * 1e6;
        for round in 0..3 {
            let started = thread_cpu();
            for (message, signature) in &padded {
                assert!(verifying.verify_strict(message, signature).is_ok());
            }
            let mut line = format!(
                "round {round}: verify_strict {:.1} µs",
                per_signature(started)
            );
            for n in [2, 4, 8, 16, 32, 64] {
                let started = thread_cpu();
                for chunk in padded.chunks(n) {
                    assert!(batch_holds(&verifying, &items(chunk)));
                }
                line += &format!(", batch of {n} {:.1}", per_signature(started));
            }
            println!("{line} (CPU per signature)");
        }
    }
}
