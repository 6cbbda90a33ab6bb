//! Pausing a sink whose receiver refuses everything, the way webhook services disable a
//! failing endpoint.
//!
//! Without it, a receiver that answers 4xx to every request (a rotated secret, a removed
//! route) dead-letters the whole stream, and an operator then has to replay all of it.
//! After `after` events in a row end in failure (a permanent refusal, or retries
//! exhausted), the sink stops delivering: events stay in the stream, `/readyz` fails and
//! `relaycord_sink_paused{sink}` is 1. One event is then tried at `probe_interval`,
//! doubling up to `probe_max_interval`, held by the driver meanwhile (so probing spends
//! none of its deliveries); the first success resumes the sink.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::IntGauge;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// `pause = { ... }` of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseConfig {
    /// Consecutive failed events (permanent refusals or exhausted retries) that pause the
    /// sink; 0 never pauses. At most this many are dead-lettered in a row.
    #[serde(default = "default_after")]
    pub after: u32,
    /// Wait before the first probe of a paused sink.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_probe_interval")]
    pub probe_interval: Duration,
    /// The wait doubles after each failed probe, up to this.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_probe_max_interval")]
    pub probe_max_interval: Duration,
}

fn default_after() -> u32 {
    20
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_probe_max_interval() -> Duration {
    Duration::from_secs(300)
}

impl Default for PauseConfig {
    fn default() -> Self {
        Self {
            after: default_after(),
            probe_interval: default_probe_interval(),
            probe_max_interval: default_probe_max_interval(),
        }
    }
}

impl PauseConfig {
    /// The wait before probe number `failed + 1`.
    pub fn probe_wait(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.min(31));
        self.probe_interval
            .saturating_mul(factor)
            .min(self.probe_max_interval)
    }
}

/// Which sinks are paused and why, for `/readyz`; shared by every sink of a process.
#[derive(Debug, Clone, Default)]
pub struct PausedSinks(Arc<Mutex<BTreeMap<String, String>>>);

impl PausedSinks {
    /// `Err` naming each paused sink and the failure that paused it.
    pub fn readiness(&self) -> Result<(), String> {
        let paused = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if paused.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = paused
            .iter()
            .map(|(sink, why)| format!("sink {sink} paused: {why}"))
            .collect();
        Err(list.join("; "))
    }

    fn set(&self, sink: &str, why: Option<String>) {
        let mut paused = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match why {
            Some(why) => paused.insert(sink.to_owned(), why),
            None => paused.remove(sink),
        };
    }
}

/// What to do with an event whose delivery failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    DeadLetter,
    /// The sink is paused: give it back to the stream after this long.
    Hold(Duration),
}

/// The pause state of one sink, shared by its workers and its pull loop.
pub(crate) struct Breaker {
    sink: String,
    config: PauseConfig,
    state: Mutex<State>,
    /// `true` while paused.
    paused: watch::Sender<bool>,
    gauge: IntGauge,
    registry: PausedSinks,
}

#[derive(Debug, Default)]
struct State {
    /// Failed events since the last delivery.
    failures: u32,
    /// Failed probes since the pause.
    failed_probes: u32,
    /// When the next probe may go; set while paused.
    next_probe: Option<Instant>,
}

impl Breaker {
    pub fn new(sink: &str, config: PauseConfig, gauge: IntGauge, registry: PausedSinks) -> Self {
        gauge.set(0);
        registry.set(sink, None);
        Self {
            sink: sink.to_owned(),
            config,
            state: Mutex::default(),
            paused: watch::channel(false).0,
            gauge,
            registry,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// An event was delivered: the run of failures ends, and a paused sink resumes.
    pub fn delivered(&self) {
        let mut state = self.state();
        state.failures = 0;
        if state.next_probe.take().is_some() {
            state.failed_probes = 0;
            self.gauge.set(0);
            self.registry.set(&self.sink, None);
            self.paused.send_replace(false);
            tracing::warn!(sink = %self.sink, "receiver accepts events again; sink resumed");
        }
    }

    /// An event failed for good (`reason` from the last attempt). The first `after`
    /// failures in a row are dead-lettered, the last of them pausing the sink; once
    /// paused, every failure is held.
    pub fn failed(&self, reason: &str) -> Verdict {
        let mut state = self.state();
        if state.next_probe.is_some() {
            return Verdict::Hold(self.config.probe_interval);
        }
        if self.config.after == 0 {
            return Verdict::DeadLetter;
        }
        state.failures += 1;
        if state.failures >= self.config.after {
            let why = format!(
                "{} events in a row failed, the last with: {reason}; probing every {:?} or more until the receiver accepts one",
                state.failures, self.config.probe_interval
            );
            tracing::error!(sink = %self.sink, %why, "sink paused: events stay in the stream");
            state.failed_probes = 0;
            state.next_probe = Some(Instant::now() + self.config.probe_interval);
            self.gauge.set(1);
            self.registry.set(&self.sink, Some(why));
            self.paused.send_replace(true);
        }
        Verdict::DeadLetter
    }

    /// A probe failed: the next one waits twice as long (up to the maximum), or longer
    /// when the receiver asked (`after`).
    pub fn probe_failed(&self, reason: &str, after: Option<Duration>) {
        let mut state = self.state();
        if state.next_probe.is_none() {
            return;
        }
        state.failed_probes += 1;
        let wait = self.config.probe_wait(state.failed_probes).max(
            after
                .unwrap_or_default()
                .min(self.config.probe_max_interval),
        );
        state.next_probe = Some(Instant::now() + wait);
        tracing::info!(sink = %self.sink, %reason, ?wait, "probe failed; sink stays paused");
    }

    /// Resolves when the next probe may go, or at once when the sink resumed meanwhile.
    pub async fn until_probe(&self) {
        let mut paused = self.paused.subscribe();
        loop {
            let Some(at) = self.state().next_probe else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {
                    // A failed probe may have moved the time while sleeping.
                    if self.state().next_probe.is_none_or(|next| next <= Instant::now()) {
                        return;
                    }
                }
                changed = paused.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Resolves when the sink pauses (at once if it is paused).
    pub async fn until_paused(&self) {
        let mut paused = self.paused.subscribe();
        // The sender lives as long as `self`, so this only ends by pausing.
        let _ = paused.wait_for(|p| *p).await;
    }
}

#[cfg(test)]
mod tests {
    use prometheus::IntGauge;

    use super::*;

    fn breaker(after: u32) -> (Breaker, IntGauge, PausedSinks) {
        let gauge = IntGauge::new("paused", "test").unwrap();
        let registry = PausedSinks::default();
        let config = PauseConfig {
            after,
            probe_interval: Duration::from_secs(5),
            probe_max_interval: Duration::from_secs(60),
        };
        let b = Breaker::new("hook", config, gauge.clone(), registry.clone());
        (b, gauge, registry)
    }

    #[test]
    fn probe_waits_double_up_to_the_maximum() {
        let c = PauseConfig {
            after: 1,
            probe_interval: Duration::from_secs(5),
            probe_max_interval: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (0..6).map(|n| c.probe_wait(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(c.probe_wait(u32::MAX), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_pauses_and_a_delivery_resumes() {
        let (b, gauge, registry) = breaker(3);
        assert_eq!(b.failed("HTTP 400"), Verdict::DeadLetter);
        b.delivered();
        // The run restarts after a delivery: three more are needed.
        assert_eq!(b.failed("HTTP 400"), Verdict::DeadLetter);
        assert_eq!(b.failed("HTTP 400"), Verdict::DeadLetter);
        assert!(!b.is_paused());
        assert_eq!(b.failed("HTTP 400"), Verdict::DeadLetter, "the third");
        assert!(b.is_paused());
        assert_eq!(gauge.get(), 1);
        let why = registry.readiness().unwrap_err();
        assert!(
            why.contains("sink hook paused") && why.contains("HTTP 400"),
            "{why}"
        );
        // Paused: nothing more is dead-lettered.
        for _ in 0..100 {
            assert_eq!(b.failed("HTTP 400"), Verdict::Hold(Duration::from_secs(5)));
        }
        b.delivered();
        assert!(!b.is_paused());
        assert_eq!(gauge.get(), 0);
        assert_eq!(registry.readiness(), Ok(()));
        assert_eq!(b.failed("HTTP 400"), Verdict::DeadLetter, "a new run");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_never_pauses() {
        let (b, _, registry) = breaker(0);
        for _ in 0..1000 {
            assert_eq!(b.failed("HTTP 400"), Verdict::DeadLetter);
        }
        assert!(!b.is_paused());
        assert_eq!(registry.readiness(), Ok(()));
    }

    /// Probes go at the interval, then twice as far apart after each failure, and the
    /// receiver's Retry-After is honoured when longer.
    #[tokio::test(start_paused = true)]
    async fn probes_back_off() {
        let (b, _, _) = breaker(1);
        b.failed("HTTP 400");
        let start = Instant::now();
        b.until_probe().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let mut expected = Vec::new();
        let mut seen = Vec::new();
        for wait in [10, 20, 40, 60, 60] {
            b.probe_failed("HTTP 400", None);
            let start = Instant::now();
            b.until_probe().await;
            seen.push(start.elapsed().as_secs());
            expected.push(wait);
        }
        assert_eq!(seen, expected);
        b.probe_failed("HTTP 429", Some(Duration::from_secs(3600)));
        let start = Instant::now();
        b.until_probe().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60), "capped");
    }

    /// A delivery elsewhere (an in-flight event the receiver took) ends the wait for the
    /// next probe at once.
    #[tokio::test(start_paused = true)]
    async fn a_resume_ends_the_wait_for_a_probe() {
        let (b, _, _) = breaker(1);
        b.failed("HTTP 400");
        let b = Arc::new(b);
        let waiting = tokio::spawn({
            let b = Arc::clone(&b);
            async move {
                let start = Instant::now();
                b.until_probe().await;
                start.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.delivered();
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(1));
        // Not paused: no wait at all.
        let start = Instant::now();
        b.until_probe().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn until_paused_resolves_on_the_pause() {
        let (b, _, _) = breaker(2);
        let b = Arc::new(b);
        let pausing = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.until_paused().await }
        });
        b.failed("x");
        tokio::task::yield_now().await;
        assert!(!pausing.is_finished());
        b.failed("x");
        pausing.await.unwrap();
    }
}
