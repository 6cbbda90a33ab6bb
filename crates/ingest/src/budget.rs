//! `session_start_limit.remaining`, spent by the whole deployment rather than per replica.
//!
//! Every replica reads the same `remaining` from `/gateway/bot` at start-up; counting it
//! locally would let N replicas spend N times the budget. The budget is one KV entry
//! instead, decremented with compare-and-set before every IDENTIFY. Discord stays the
//! authority: the entry is (re)filled from `/gateway/bot` when it is missing, used up or
//! past its reset time. A refill cannot see starts that replicas have reserved but not
//! yet sent (at most one per identify bucket at a time), and Discord's answer to an
//! overdraft is a 4008 close that twilight retries through this budget again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use relaycord_bus::Secret;
use serde::{Deserialize, Serialize};

use crate::discovery::{SessionStartLimit, gateway_bot};
use crate::metrics::IngestMetrics;

/// The KV key, in the sessions bucket (whose entries live a day, like Discord's budget).
pub const KEY: &str = "start_limit";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Budget {
    remaining: u32,
    /// Unix milliseconds at which Discord refills `remaining`.
    reset_at_ms: u64,
}

pub(crate) struct StartBudget {
    pub kv: kv::Store,
    pub http: reqwest::Client,
    pub api_base: String,
    pub token: Secret,
    /// The `relaycord_session_start_*` gauges, set to what each spend leaves.
    pub metrics: IngestMetrics,
}

/// What one attempt at spending came to.
enum Attempt {
    Spent,
    /// Lost a race with another replica, or refilled the entry: try again at once.
    Again,
    Wait(Duration),
}

impl StartBudget {
    /// Waits until the deployment has a session start left, and spends it.
    pub async fn spend(&self) {
        loop {
            match self.attempt().await {
                Attempt::Spent => return,
                Attempt::Again => {}
                Attempt::Wait(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    async fn attempt(&self) -> Attempt {
        let entry = match self.kv.entry(KEY).await {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "cannot read the session start budget (NATS?); retrying");
                return Attempt::Wait(Duration::from_secs(1));
            }
        };
        let (revision, budget) = match entry {
            Some(entry) if entry.operation == kv::Operation::Put => (
                entry.revision,
                serde_json::from_slice::<Budget>(&entry.value).ok(),
            ),
            Some(entry) => (entry.revision, None),
            // Revision 0 expects no entry: a create.
            None => (0, None),
        };
        let now = unix_ms();
        let next = match budget {
            Some(b) if b.remaining > 0 && now < b.reset_at_ms => Budget {
                remaining: b.remaining - 1,
                ..b
            },
            _ => return self.refill(revision, now).await,
        };
        match self.kv.update(KEY, encode(next), revision).await {
            Ok(_) => {
                show(&self.metrics, next);
                Attempt::Spent
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Attempt::Again,
            Err(error) => {
                tracing::warn!(%error, "cannot spend a session start (NATS?); retrying");
                Attempt::Wait(Duration::from_secs(1))
            }
        }
    }

    /// The entry is missing, used up or stale: asks Discord what is left.
    async fn refill(&self, revision: u64, now: u64) -> Attempt {
        let limit = match gateway_bot(&self.http, &self.api_base, &self.token).await {
            Ok(bot) => bot.session_start_limit,
            Err(error) => {
                tracing::warn!(%error, "cannot refresh session_start_limit; retrying");
                return Attempt::Wait(Duration::from_secs(5));
            }
        };
        if limit.remaining == 0 {
            let wait = limit.reset_after().max(Duration::from_secs(1));
            tracing::warn!(?wait, "no session starts left; waiting for Discord's reset");
            return Attempt::Wait(wait);
        }
        let budget = refilled(&limit, now);
        match self.kv.update(KEY, encode(budget), revision).await {
            // The refill spends the start it was made for: answering `Again` instead
            // would loop whenever the entry it wrote is already stale.
            Ok(_) => {
                show(&self.metrics, budget);
                Attempt::Spent
            }
            // Another replica's refill is in place now: spend from it.
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Attempt::Again,
            Err(error) => {
                tracing::warn!(%error, "cannot store the session start budget (NATS?); retrying");
                Attempt::Wait(Duration::from_secs(1))
            }
        }
    }
}

/// Discord's answer, minus the start about to be spent.
fn refilled(limit: &SessionStartLimit, now: u64) -> Budget {
    let budget = discords(limit, now);
    Budget {
        remaining: budget.remaining.saturating_sub(1),
        ..budget
    }
}

/// Discord's answer as a budget. `reset_after` is 0 when no start was spent in the
/// current window (a bot idle for a day): the window begins with the next identify and
/// lasts a day.
fn discords(limit: &SessionStartLimit, now: u64) -> Budget {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let reset_after = match limit.reset_after {
        0 => DAY_MS,
        ms => ms,
    };
    Budget {
        remaining: limit.remaining,
        reset_at_ms: now.saturating_add(reset_after),
    }
}

/// Shows `/gateway/bot`'s limit before any spend (a replica whose shards all resume
/// never spends).
pub(crate) fn show_limit(metrics: &IngestMetrics, limit: &SessionStartLimit) {
    metrics.session_start_total.set(limit.total.into());
    show(metrics, discords(limit, unix_ms()));
}

/// The reset time lets dashboards and alerts ignore a replica's value from a window
/// Discord has since refilled.
fn show(metrics: &IngestMetrics, budget: Budget) {
    metrics.session_start_remaining.set(budget.remaining.into());
    metrics
        .session_start_reset
        .set(budget.reset_at_ms as f64 / 1000.0);
}

fn encode(budget: Budget) -> Bytes {
    Bytes::from(serde_json::to_vec(&budget).expect("budget serializes"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(remaining: u32, reset_after: u64) -> SessionStartLimit {
        SessionStartLimit {
            total: 1000,
            remaining,
            reset_after,
            max_concurrency: 1,
        }
    }

    #[test]
    fn a_refill_spends_one_start_and_keeps_discords_reset() {
        let b = refilled(&limit(998, 60_000), 1_000);
        assert_eq!((b.remaining, b.reset_at_ms), (997, 61_000));
    }

    /// Discord reports `reset_after: 0` for a bot that has not identified for a day; the
    /// stored window must still lie in the future, or every attempt would refill again.
    #[test]
    fn an_idle_bots_zero_reset_after_opens_a_day_long_window() {
        let b = refilled(&limit(1000, 0), 5_000);
        assert_eq!(b.remaining, 999);
        assert_eq!(b.reset_at_ms, 5_000 + 24 * 3600 * 1000);
    }
}
