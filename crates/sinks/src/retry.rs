//! Retry *policy*: how long to wait before the next attempt. Whether to retry at all is
//! the sink's classification ([`crate::Outcome`]); the two are kept apart so each can be
//! tested alone.

use std::time::Duration;

use relaycord_bus::backoff::Exponential;
use schemars::JsonSchema;
use serde::Deserialize;

/// Capped exponential backoff with full jitter (AWS architecture blog, "Exponential
/// Backoff And Jitter"): the wait is uniform in `[0, min(max, initial * 2^(attempt-1))]`,
/// which spreads the retries of many failed deliveries instead of synchronizing them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Upper bound of the first retry's wait.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_initial")]
    pub initial: Duration,
    /// Upper bound of any wait.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_max")]
    pub max: Duration,
}

fn default_initial() -> Duration {
    Duration::from_secs(1)
}

fn default_max() -> Duration {
    Duration::from_secs(300)
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            max: default_max(),
        }
    }
}

impl Backoff {
    /// The shared schedule ([`Exponential`]) this configures.
    fn schedule(&self) -> Exponential {
        Exponential::new(self.initial, self.max)
    }

    /// The ceiling of the wait after `attempt` failed deliveries (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.schedule().delay(attempt)
    }

    /// The wait before the next delivery. `retry_after` (the receiver's `Retry-After`)
    /// wins when it is longer than the drawn backoff; it is still capped by `max` so a
    /// hostile receiver cannot park a message forever.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let drawn = self.schedule().full_jitter(attempt, unit);
        retry_after.map_or(drawn, |ra| ra.max(drawn)).min(self.max)
    }

    /// [`Backoff::delay`] with a fresh uniform draw.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay(attempt, retry_after, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(B.ceiling(1), Duration::from_secs(1));
        assert_eq!(B.ceiling(2), Duration::from_secs(2));
        assert_eq!(B.ceiling(6), Duration::from_secs(32));
        assert_eq!(B.ceiling(7), Duration::from_secs(60));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        assert_eq!(B.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(B.delay(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(B.delay(3, None, 0.5), Duration::from_secs(2));
        for _ in 0..1000 {
            assert!(B.next_delay(4, None) <= Duration::from_secs(8));
        }
    }

    #[test]
    fn retry_after_wins_when_longer_but_is_capped() {
        let ra = Some(Duration::from_secs(30));
        assert_eq!(B.delay(1, ra, 1.0), Duration::from_secs(30));
        assert_eq!(
            B.delay(7, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(60)
        );
        assert_eq!(
            B.delay(1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(60)
        );
    }
}
