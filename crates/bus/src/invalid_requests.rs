//! Discord's invalid-request limit, counted once for the whole process.
//!
//! Discord (through Cloudflare) bans an IP address for a while once it has sent 10,000
//! requests answered 401, 403 or 429 within 10 minutes; a 429 whose
//! `X-RateLimit-Scope` is `shared` is not counted. The ban hits every caller on that
//! address, so every Discord REST caller in the process (the discord sink, the
//! interactions service's follow-ups) records those answers in [`InvalidRequests::process`]
//! and asks it before each request.
//!
//! Discord's ban is per IP address, and one deployment's processes (a Deployment per sink,
//! the interactions replicas) usually leave through one egress IP: each process's own
//! count is therefore shared through NATS KV ([`InvalidRequests::share`], `shared`), and
//! what counts is the sum over the deployment. Processes that do not share an IP make
//! that sum too high: they hold early, never late.
//!
//! Over the last 10 minutes (one-second buckets): at [`WARN_AT`] a warning is logged;
//! at [`HOLD_AT`] every request waits until the count falls below it again. The two are
//! constants, not settings, because Discord's limit is one number for everyone: holding
//! at 80% leaves 2,000 answers of room for the requests already in flight when the hold
//! begins (each sink has at most `concurrency` of them) and for another process on the
//! same address, and the warning at half the limit comes minutes before anything waits.

mod shared;

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::time::Instant;

/// Discord's own limit, in [`WINDOW`].
pub const DISCORD_LIMIT: u64 = 10_000;
/// The window Discord counts over.
pub const WINDOW: Duration = Duration::from_secs(600);
/// A warning is logged when the window's count reaches this.
pub const WARN_AT: u64 = DISCORD_LIMIT / 2;
/// Requests wait while the window's count is at or above this.
pub const HOLD_AT: u64 = DISCORD_LIMIT * 8 / 10;

const BUCKET: Duration = Duration::from_secs(1);

/// Invalid answers seen lately and the metrics that show them.
pub struct InvalidRequests {
    warn_at: u64,
    hold_at: u64,
    base: Instant,
    /// `base` as Unix seconds: the shared counts are stamped with wall-clock seconds.
    base_unix: u64,
    state: Mutex<State>,
    by_status: IntCounterVec,
    in_window: IntGauge,
    held: IntCounter,
}

#[derive(Default)]
struct State {
    /// (second since `base`, answers in it), oldest first.
    buckets: VecDeque<(u64, u64)>,
    total: u64,
    /// The other processes' answers in the window, as last read from NATS KV.
    others: u64,
    warned: bool,
    holding: bool,
}

static PROCESS: LazyLock<InvalidRequests> =
    LazyLock::new(|| InvalidRequests::new(WARN_AT, HOLD_AT));

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InvalidRequests {
    /// The process's counter, shared by every Discord REST caller.
    pub fn process() -> &'static Self {
        &PROCESS
    }

    /// A counter of its own (tests: small thresholds, paused time).
    pub fn new(warn_at: u64, hold_at: u64) -> Self {
        let by_status = IntCounterVec::new(
            Opts::new(
                "relaycord_discord_invalid_requests_total",
                "Discord REST answers that count toward Discord's invalid-request limit (401, 403, 429 not of shared scope; 10,000 in 10 minutes bans the IP), by status.",
            ),
            &["status"],
        )
        .expect("valid metric");
        let in_window = IntGauge::new(
            "relaycord_discord_invalid_requests_window",
            "Invalid Discord REST answers in the last 10 minutes; requests wait at 8,000 (Discord bans at 10,000).",
        )
        .expect("valid metric");
        let held = IntCounter::new(
            "relaycord_discord_requests_held_total",
            "Discord REST requests that waited because the invalid answers of the last 10 minutes reached 8,000.",
        )
        .expect("valid metric");
        Self {
            warn_at,
            hold_at,
            base: Instant::now(),
            base_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            state: Mutex::default(),
            by_status,
            in_window,
            held,
        }
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_secs()
    }

    /// Drops buckets that left the window: a bucket counts until its whole second has.
    fn expire(&self, state: &mut State, now: Instant) {
        let window = WINDOW.as_secs();
        let current = self.second(now);
        while let Some(&(second, count)) = state.buckets.front() {
            if second + BUCKET.as_secs() + window > current {
                break;
            }
            state.buckets.pop_front();
            state.total -= count;
        }
        if state.total + state.others < self.warn_at {
            state.warned = false;
        }
    }

    /// Records one answer. Counts 401, 403 and 429 unless `scope` is `shared` (such a 429
    /// is another user's limit on a shared resource, which Discord does not count).
    pub fn observe(&self, status: u16, scope: Option<&[u8]>) {
        let counted = match status {
            401 | 403 => true,
            429 => scope != Some(b"shared"),
            _ => false,
        };
        if !counted {
            return;
        }
        self.by_status
            .with_label_values(&[&status.to_string()])
            .inc();
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.expire(&mut state, now);
        let second = self.second(now);
        match state.buckets.back_mut() {
            Some((last, count)) if *last == second => *count += 1,
            _ => state.buckets.push_back((second, 1)),
        }
        state.total += 1;
        let deployment = state.total + state.others;
        if deployment >= self.warn_at && !state.warned {
            state.warned = true;
            tracing::warn!(
                invalid = deployment,
                limit = DISCORD_LIMIT,
                hold_at = self.hold_at,
                "many Discord requests refused (401/403/429) in the last 10 minutes; Discord bans the IP at its limit: check tokens, channel permissions and rate limits"
            );
        }
    }

    /// Answers counted in the last 10 minutes, by this process and (when shared) the
    /// others of the deployment.
    pub fn in_window(&self) -> u64 {
        let mut state = lock(&self.state);
        self.expire(&mut state, Instant::now());
        state.total + state.others
    }

    /// When the count falls below the hold threshold, or `None`: it is below now.
    fn held_until(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.expire(&mut state, now);
        let others = state.others;
        if state.total + others < self.hold_at {
            if state.holding {
                state.holding = false;
                tracing::info!(invalid = state.total + others, "Discord requests resume");
            }
            return None;
        }
        if !state.holding {
            state.holding = true;
            tracing::error!(
                invalid = state.total + others,
                by_other_processes = others,
                limit = DISCORD_LIMIT,
                "Discord requests held: too many refused (401/403/429) in the last 10 minutes; they resume as the count falls"
            );
        }
        let mut left = state.total + others;
        let mut until = now;
        for &(second, count) in &state.buckets {
            left -= count;
            until = self.base + Duration::from_secs(second) + BUCKET + WINDOW;
            if left < self.hold_at {
                break;
            }
        }
        // The others' answers leave the window too, which only the next read shows.
        if others > 0 {
            until = until
                .min(now + shared::SYNC_EVERY)
                .max(now + BUCKET.min(shared::SYNC_EVERY));
        }
        Some(until)
    }

    /// Waits while the count is at or above the hold threshold; call before each request.
    pub async fn admit(&self) {
        let mut counted = false;
        while let Some(until) = self.held_until() {
            if !counted {
                counted = true;
                self.held.inc();
            }
            tokio::time::sleep_until(until).await;
        }
    }

    /// Registers the process counter's metrics in `registry` (once; again is a no-op),
    /// for every role that talks to Discord's REST API.
    pub fn register(registry: &Registry) -> prometheus::Result<()> {
        match registry.register(Box::new(ProcessMetrics)) {
            Err(prometheus::Error::AlreadyReg) => Ok(()),
            other => other,
        }
    }

    fn collectors(&self) -> [&dyn Collector; 3] {
        [&self.by_status, &self.in_window, &self.held]
    }
}

/// The process counter as a prometheus collector: the window gauge is computed when
/// scraped, so it falls while nothing is sent.
struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        PROCESS
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        PROCESS.in_window.set(PROCESS.in_window() as i64);
        PROCESS
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_slide_and_requests_wait_at_the_threshold() {
        let counter = InvalidRequests::new(3, 5);
        counter.observe(200, None);
        counter.observe(404, None);
        counter.observe(429, Some(b"shared"));
        assert_eq!(counter.in_window(), 0, "not what Discord counts");
        for status in [401, 403, 429, 429] {
            counter.observe(status, Some(b"user"));
        }
        assert_eq!(counter.in_window(), 4);
        let before = Instant::now();
        counter.admit().await;
        assert_eq!(before.elapsed(), Duration::ZERO, "under the threshold");
        tokio::time::advance(Duration::from_secs(30)).await;
        counter.observe(429, None);
        counter.observe(429, None);
        assert_eq!(counter.in_window(), 6);
        // Two must leave the window: the first four went at 0 s, so all of them leave
        // when their second has been out of the window for good.
        let before = Instant::now();
        counter.admit().await;
        assert_eq!(before.elapsed(), WINDOW + BUCKET - Duration::from_secs(30));
        assert_eq!(counter.in_window(), 2);
        assert_eq!(counter.held.get(), 1);
        assert_eq!(
            counter.by_status.with_label_values(&["429"]).get(),
            4,
            "{:?}",
            counter.by_status.collect()
        );
        tokio::time::advance(WINDOW).await;
        assert_eq!(counter.in_window(), 0);
    }

    #[test]
    fn the_process_counter_registers_once_per_registry() {
        let registry = Registry::new();
        InvalidRequests::register(&registry).unwrap();
        InvalidRequests::register(&registry).unwrap();
        InvalidRequests::process().observe(403, None);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"relaycord_discord_invalid_requests_window".to_owned()),
            "{names:?}"
        );
        assert!(InvalidRequests::process().in_window() >= 1);
    }
}
