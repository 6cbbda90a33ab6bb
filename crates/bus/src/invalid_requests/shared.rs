//! The deployment's count: every process writes its own recent answers to one NATS KV
//! entry and reads everyone else's, so a hold starts when the deployment — not one of its
//! processes — nears Discord's limit.
//!
//! Each entry holds (Unix second, answers) pairs of the last 10 minutes; a reader sums
//! the pairs still inside the window by its own clock. Entries expire a minute after the
//! window, so a dead process's answers count exactly as long as Discord counts them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{InvalidRequests, WINDOW, lock};
use crate::error::BusError;

/// How often a process writes its count and reads the others'.
pub(super) const SYNC_EVERY: Duration = Duration::from_secs(2);

/// An unchanged entry is written again this often, well before it expires.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A KV key for `process`: the characters KV keys allow, others as `_`.
fn key_of(process: &str) -> String {
    let name: String = process
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("p.{name}")
}

impl InvalidRequests {
    /// The deployment's bucket, `<stem>_INVALID_REQUESTS` (`DISCORD_INVALID_REQUESTS` for
    /// the default prefix), whose entries live a minute past the window.
    pub async fn bucket(
        js: &jetstream::Context,
        stem: &str,
        replicas: usize,
    ) -> Result<kv::Store, BusError> {
        crate::kv::ensure_bucket(
            js,
            &format!("{stem}_INVALID_REQUESTS"),
            WINDOW + Duration::from_secs(60),
            replicas,
        )
        .await
    }

    /// This process's answers in the window as (Unix second, answers).
    fn own_counts(&self) -> Vec<(u64, u64)> {
        let mut state = lock(&self.state);
        self.expire(&mut state, tokio::time::Instant::now());
        state
            .buckets
            .iter()
            .map(|&(second, count)| (self.base_unix + second, count))
            .collect()
    }

    fn set_others(&self, others: u64) {
        lock(&self.state).others = others;
    }

    /// Shares this counter through `kv` under `process` (unique in the deployment, e.g.
    /// `sink-orders-<pod>-<pid>`) until `shutdown`: writes its own answers when they
    /// change, and every [`SYNC_EVERY`] adds up the other processes' into the count that
    /// decides a hold. NATS being away only leaves the last sum in place.
    pub async fn share(&self, kv: kv::Store, process: &str, shutdown: CancellationToken) {
        let every = SYNC_EVERY;
        let key = key_of(process);
        let mut written: Option<(Vec<(u64, u64)>, tokio::time::Instant)> = None;
        loop {
            let own = self.own_counts();
            let stale = written
                .as_ref()
                .is_none_or(|(counts, at)| *counts != own || at.elapsed() >= REFRESH_EVERY);
            // An idle process that never had an answer writes nothing.
            if stale && !(own.is_empty() && written.is_none()) {
                let value = Bytes::from(serde_json::to_vec(&own).expect("pairs serialize"));
                if kv.put(&key, value).await.is_ok() {
                    written = Some((own, tokio::time::Instant::now()));
                }
            }
            if let Some(others) = read_others(&kv, &key).await {
                self.set_others(others);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// The other processes' answers still inside the window; `None` if NATS did not answer.
async fn read_others(kv: &kv::Store, own_key: &str) -> Option<u64> {
    let keys = crate::kv::list_keys(kv, Duration::from_secs(2)).await?;
    let since = unix_now().saturating_sub(WINDOW.as_secs());
    let mut sum = 0;
    for key in keys.iter().filter(|k| *k != own_key) {
        let Ok(Some(value)) = kv.get(key).await else {
            continue;
        };
        let Ok(pairs) = serde_json::from_slice::<Vec<(u64, u64)>>(&value) else {
            continue;
        };
        sum += pairs
            .iter()
            .filter(|(second, _)| *second >= since)
            .map(|(_, count)| count)
            .sum::<u64>();
    }
    Some(sum)
}
