//! Capped exponential backoff, the one schedule of every retry loop (ingest publishes, sink
//! deliveries, late interaction replies).
//!
//! A pure function of the attempt number rather than a stateful iterator (as `backon`
//! offers): the sinks and the late-reply worker learn the attempt from JetStream's
//! delivery count, not from a loop of their own, and a pure function is tested without a
//! clock, so `tokio::time::pause()` tests keep working unchanged.

use std::time::Duration;

/// Waits `initial`, `2 × initial`, `4 × initial`, … up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exponential {
    pub initial: Duration,
    pub max: Duration,
}

impl Exponential {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait after `attempt` failures (1-based: the first retry waits `initial`).
    /// Attempt 0 counts as 1; past 2^30 the doubling stops, long after any `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.initial.saturating_mul(1 << exp).min(self.max)
    }

    /// Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): `unit` in
    /// `[0, 1]` (a uniform draw, clamped) scales [`Exponential::delay`], which spreads
    /// the retries of many failures instead of synchronizing them.
    pub fn full_jitter(&self, attempt: u32, unit: f64) -> Duration {
        self.delay(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Exponential = Exponential::new(Duration::from_secs(1), Duration::from_secs(60));

    #[test]
    fn doubles_then_caps() {
        assert_eq!(B.delay(0), Duration::from_secs(1));
        assert_eq!(B.delay(1), Duration::from_secs(1));
        assert_eq!(B.delay(2), Duration::from_secs(2));
        assert_eq!(B.delay(6), Duration::from_secs(32));
        assert_eq!(B.delay(7), Duration::from_secs(60));
        assert_eq!(B.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn never_overflows() {
        let huge = Exponential::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.delay(u32::MAX), Duration::MAX);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_delay() {
        assert_eq!(B.full_jitter(3, 0.0), Duration::ZERO);
        assert_eq!(B.full_jitter(3, 0.5), Duration::from_secs(2));
        assert_eq!(B.full_jitter(3, 1.0), Duration::from_secs(4));
        assert_eq!(B.full_jitter(3, 7.0), Duration::from_secs(4));
        assert_eq!(B.full_jitter(3, -1.0), Duration::ZERO);
    }
}
