//! Discord rate limits, honoured before sending rather than discovered by 429s.
//!
//! Per route (a channel or a webhook) one request is in flight at a time, and when the
//! last answer said `X-RateLimit-Remaining: 0` the next waits for `Reset-After`. Bot
//! requests are also spaced to the global rate (50/s: one every 20 ms). A 429 sets the
//! route's (or, when global, every route's) next allowed time from `retry_after`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

/// What a route's last answer said about its bucket.
#[derive(Debug, Default)]
pub struct RouteState {
    pub remaining: Option<u32>,
    pub reset_at: Option<Instant>,
    /// Set after 403/404: the route is not tried again (each try would count toward
    /// Discord's invalid-request limit).
    pub stopped: Option<String>,
}

impl RouteState {
    /// Updates from an answer's `X-RateLimit-*` headers.
    pub fn update(&mut self, headers: &HeaderMap) {
        let get = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
        if let Some(remaining) = get("x-ratelimit-remaining") {
            self.remaining = Some(remaining.max(0.0) as u32);
        }
        if let Some(after) = get("x-ratelimit-reset-after").filter(|a| a.is_finite() && *a >= 0.0) {
            self.reset_at = Some(Instant::now() + Duration::from_secs_f64(after.min(3600.0)));
        }
    }

    /// After a 429 on this route.
    pub fn limited_for(&mut self, wait: Duration) {
        self.remaining = Some(0);
        self.reset_at = Some(Instant::now() + wait);
    }

    /// How long to wait before the next request may go.
    pub fn wait(&self) -> Option<Duration> {
        match (self.remaining, self.reset_at) {
            (Some(0), Some(at)) => Some(at.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }
}

pub struct Limiter {
    routes: StdMutex<HashMap<String, Arc<Mutex<RouteState>>>>,
    /// The next instant a bot request may start (spacing), and a global 429's pause.
    global: Mutex<Instant>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            routes: StdMutex::default(),
            global: Mutex::new(Instant::now()),
        }
    }
}

impl Limiter {
    /// Waits for the route's turn and its bucket; the guard is the route's state, held
    /// until the answer is in.
    pub async fn route(&self, key: &str) -> OwnedMutexGuard<RouteState> {
        let state = {
            let mut routes = self.routes.lock().expect("limiter lock");
            Arc::clone(routes.entry(key.to_owned()).or_default())
        };
        let guard = state.lock_owned().await;
        if let Some(wait) = guard.wait() {
            tokio::time::sleep(wait).await;
        }
        guard
    }

    /// Takes the next global slot: one request every `1s / rate` plus 5%, never before
    /// a global 429's retry time. The margin absorbs network jitter: requests sent exactly
    /// at the limit can arrive bunched and cross it.
    pub async fn global_slot(&self, rate: u32) {
        let spacing = Duration::from_secs(1) / rate.max(1) * 21 / 20;
        let start = {
            let mut next = self.global.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + spacing;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// After a global 429: nothing goes before `wait` has passed.
    pub async fn pause_all(&self, wait: Duration) {
        let mut next = self.global.lock().await;
        *next = (*next).max(Instant::now() + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_bucket_waits_for_its_reset() {
        let limiter = Limiter::default();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset-after", HeaderValue::from_static("2.5"));
        {
            let mut route = limiter.route("channel:1").await;
            route.update(&h);
        }
        let before = Instant::now();
        drop(limiter.route("channel:1").await);
        assert_eq!(before.elapsed(), Duration::from_millis(2500));
        // Another route is not held up.
        let before = Instant::now();
        drop(limiter.route("channel:2").await);
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_requests_go_at_once_and_429_waits() {
        let limiter = Limiter::default();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        h.insert("x-ratelimit-reset-after", HeaderValue::from_static("5"));
        limiter.route("w").await.update(&h);
        let before = Instant::now();
        limiter.route("w").await.limited_for(Duration::from_secs(1));
        assert_eq!(before.elapsed(), Duration::ZERO);
        drop(limiter.route("w").await);
        assert_eq!(before.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn global_slots_are_spaced_and_paused() {
        let limiter = Limiter::default();
        let before = Instant::now();
        for _ in 0..50 {
            limiter.global_slot(50).await;
        }
        // 50 requests: the first at once, then one every 21 ms (20 ms + 5%).
        assert_eq!(before.elapsed(), Duration::from_millis(49 * 21));
        limiter.pause_all(Duration::from_secs(3)).await;
        let paused = Instant::now();
        limiter.global_slot(50).await;
        assert_eq!(paused.elapsed(), Duration::from_secs(3));
    }
}
