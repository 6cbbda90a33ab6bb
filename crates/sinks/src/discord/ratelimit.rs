//! Discord rate limits, honoured before sending rather than discovered by 429s.
//!
//! Per route (a channel or a webhook) one request is in flight at a time, and when the
//! last answer said `X-RateLimit-Remaining: 0` the next waits for `Reset-After`. Once
//! an answer names the route's `X-RateLimit-Bucket`, the route uses the bucket's state:
//! routes whose answers name the same bucket for the same top-level resource (the
//! channel or webhook id, Discord's "major parameter") share one limiter, as Discord
//! counts them together. Bot requests also stay under the global rate (50/s per bot
//! token), with a margin: at most 45 in any second, at least 22 ms apart. A 429 sets
//! the route's (or, when global, every route's) next allowed time from `retry_after`.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
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
        if let Some(remaining) = get("x-ratelimit-remaining").filter(|r| !r.is_nan()) {
            // `as` saturates: inf → u32::MAX, negative → 0.
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

/// A route's turn: its (or its bucket's) state, locked until the answer is in.
pub struct Route {
    guard: OwnedMutexGuard<RouteState>,
    /// The map key the state was found under.
    key: String,
    /// `kind:major`, as asked for.
    route: String,
}

impl Deref for Route {
    type Target = RouteState;
    fn deref(&self) -> &RouteState {
        &self.guard
    }
}

impl DerefMut for Route {
    fn deref_mut(&mut self) -> &mut RouteState {
        &mut self.guard
    }
}

#[derive(Default)]
pub struct Limiter {
    /// States by key: a route (`channel:<id>`) until its bucket is known, then
    /// `bucket:<bucket>:<id>`.
    routes: StdMutex<HashMap<String, Arc<Mutex<RouteState>>>>,
    /// Route (`channel:<id>`) → the bucket Discord named for it. Learned per route, not
    /// per kind of route: a bucket id that differed between channels must not make one
    /// channel's route forget what its own answers said.
    buckets: StdMutex<HashMap<String, String>>,
    /// Bot requests granted lately, and a global 429's pause.
    global: Mutex<Global>,
    /// Set by a global 429, read by whoever waits for a slot: kept apart from `global`
    /// so a 429 never waits for a waiter to finish sleeping.
    paused_until: StdMutex<Option<Instant>>,
}

/// The global limit is counted over a sliding window of *granted* sends, not booked
/// ahead: if the process stalls (a loaded machine, a long poll), the waiters that wake
/// late are still spaced from the last real grant and capped per window, instead of
/// all going at once because their booked times have passed.
#[derive(Default)]
struct Global {
    granted: VecDeque<Instant>,
}

/// Routes remembered at once. Channel ids come from events, so without a bound the map
/// would grow with every channel ever posted to.
pub const MAX_ROUTES: usize = 4096;

/// Forgets routes nobody is using and that have nothing left to say: no request in
/// flight or waiting (the map holds the only reference), no pending reset. Routes
/// stopped after a 403/404 are kept while there is room, since forgetting one costs
/// one more invalid request; when only those are left, they go too.
fn prune(routes: &mut HashMap<String, Arc<Mutex<RouteState>>>) {
    let idle = |state: &Arc<Mutex<RouteState>>, keep_stopped: bool| {
        Arc::strong_count(state) == 1
            && state
                .try_lock()
                .is_ok_and(|s| s.wait().is_none() && !(keep_stopped && s.stopped.is_some()))
    };
    routes.retain(|_, state| !idle(state, true));
    if routes.len() >= MAX_ROUTES {
        routes.retain(|_, state| !idle(state, false));
    }
}

/// The state key of `bucket` for `route`'s top-level resource (`channel:<id>` → `<id>`).
fn bucket_key(bucket: &str, route: &str) -> String {
    let major = route.split_once(':').map_or("", |(_, major)| major);
    format!("bucket:{bucket}:{major}")
}

/// A bucket id as Discord sends them (a short hash); anything else is ignored, so an
/// odd header cannot grow the maps with junk keys.
fn valid_bucket(bucket: &str) -> bool {
    (1..=64).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The window Discord counts the global limit over.
const WINDOW: Duration = Duration::from_secs(1);

impl Limiter {
    /// Waits for the route's turn and its bucket; the guard is the route's (or its
    /// bucket's) state, held until the answer is in.
    pub async fn route(&self, route: &str) -> Route {
        // The key (`kind:major`, or its bucket's once Discord named it) and the state
        // under it are read under both locks, in `update`'s order: were the key read
        // first, an answer moving the state to a new bucket key in between would leave
        // this request a fresh state that knows nothing of a 429 just received, and it
        // would go at once (seen as a request before `retry_after` in the simulator).
        let (key, state) = {
            let buckets = self.buckets.lock().expect("limiter lock");
            let key = match buckets.get(route) {
                Some(bucket) => bucket_key(bucket, route),
                None => route.to_owned(),
            };
            let mut routes = self.routes.lock().expect("limiter lock");
            if routes.len() >= MAX_ROUTES && !routes.contains_key(&key) {
                prune(&mut routes);
            }
            let state = Arc::clone(routes.entry(key.clone()).or_default());
            (key, state)
        };
        let guard = state.lock_owned().await;
        if let Some(wait) = guard.wait() {
            tokio::time::sleep(wait).await;
        }
        Route {
            guard,
            key,
            route: route.to_owned(),
        }
    }

    /// Reads an answer's `X-RateLimit-*` headers into the route's state, and learns its
    /// bucket: later requests of the route use the bucket's state, which this one
    /// becomes unless another route of the bucket got there first.
    pub fn update(&self, route: &mut Route, headers: &HeaderMap) {
        route.update(headers);
        let Some(bucket) = headers
            .get("x-ratelimit-bucket")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|b| valid_bucket(b))
        else {
            return;
        };
        let key = bucket_key(bucket, &route.route);
        if key == route.key {
            return;
        }
        // Lock order: buckets, then routes (`route` takes them one at a time).
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let mut routes = self.routes.lock().expect("limiter lock");
        if buckets.len() >= MAX_ROUTES && !buckets.contains_key(&route.route) {
            // Forget what leads nowhere any more (its state was pruned), else everything:
            // a forgotten bucket costs at most one request sent on a fresh state.
            buckets.retain(|r, b| routes.contains_key(&bucket_key(b, r)));
            if buckets.len() >= MAX_ROUTES {
                buckets.clear();
            }
        }
        buckets.insert(route.route.clone(), bucket.to_owned());
        drop(buckets);
        let mine = OwnedMutexGuard::mutex(&route.guard);
        // Only the map may hold a state when the request is done (see `prune`): the old
        // key goes, and the bucket's key gets this state unless it has one already.
        if routes.get(&route.key).is_some_and(|s| Arc::ptr_eq(s, mine)) {
            routes.remove(&route.key);
        }
        match routes.get(&key) {
            Some(shared) => {
                // This answer is the bucket's latest word. A state locked by a request in
                // flight is left alone: its own answer will be later still.
                if let Ok(mut shared) = shared.try_lock() {
                    shared.remaining = route.remaining;
                    shared.reset_at = route.reset_at;
                }
            }
            None => {
                if routes.len() >= MAX_ROUTES {
                    prune(&mut routes);
                }
                routes.insert(key, Arc::clone(mine));
            }
        }
    }

    /// The most bot requests granted in any one-second window: 90% of `rate`. The
    /// margin covers what happens between the grant and the server's count (a stall
    /// of the process, network jitter, a server window that is not aligned with ours):
    /// up to ~100 ms of it still fits under `rate`.
    pub fn budget(rate: u32) -> usize {
        (rate.max(1) as usize * 9 / 10).max(1)
    }

    /// Even spacing of grants, in whole milliseconds (tokio's timer resolution: a finer
    /// one would round every sleep up); the window check keeps the rest under budget.
    fn spacing(budget: usize) -> Duration {
        Duration::from_millis((1000 / budget as u64).max(1))
    }

    /// Takes a global slot: at most [`Limiter::budget`] grants in any second, spaced
    /// evenly (`1s / budget` after the previous *grant*), never before a global 429's
    /// retry time. Waiters queue in order (tokio's mutex is fair) and each re-checks
    /// after sleeping, so a late wake-up never releases a burst.
    pub async fn global_slot(&self, rate: u32) {
        let budget = Self::budget(rate);
        let spacing = Self::spacing(budget);
        let mut global = self.global.lock().await;
        loop {
            let now = Instant::now();
            while global
                .granted
                .front()
                .is_some_and(|t| now.duration_since(*t) >= WINDOW)
            {
                global.granted.pop_front();
            }
            let mut ready = now;
            if let Some(last) = global.granted.back() {
                ready = ready.max(*last + spacing);
            }
            if global.granted.len() >= budget
                && let Some(oldest) = global.granted.front()
            {
                ready = ready.max(*oldest + WINDOW);
            }
            if let Some(until) = *self.paused_until.lock().expect("limiter lock") {
                ready = ready.max(until);
            }
            if ready <= now {
                global.granted.push_back(now);
                return;
            }
            tokio::time::sleep_until(ready).await;
        }
    }

    /// After a global 429: nothing goes before `wait` has passed.
    pub async fn pause_all(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("limiter lock");
        *paused = Some(paused.map_or(until, |p| p.max(until)));
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

    /// Two routes whose answers name one bucket for the same channel share its limit;
    /// the same bucket on another channel is a limit of its own (Discord counts buckets
    /// per top-level resource).
    #[tokio::test(start_paused = true)]
    async fn routes_of_one_bucket_share_its_limit() {
        let limiter = Limiter::default();
        let headers = |remaining: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-bucket", HeaderValue::from_static("abcd1234"));
            h.insert("x-ratelimit-remaining", HeaderValue::from_static(remaining));
            h.insert("x-ratelimit-reset-after", HeaderValue::from_static("2"));
            h
        };
        // The second kind's first answer names the bucket; its first request could not
        // know it yet, so it went at once.
        let mut other = limiter.route("pins:1").await;
        limiter.update(&mut other, &headers("4"));
        drop(other);
        let mut first = limiter.route("channel:1").await;
        limiter.update(&mut first, &headers("0"));
        drop(first);
        let before = Instant::now();
        drop(limiter.route("pins:1").await);
        assert_eq!(
            before.elapsed(),
            Duration::from_secs(2),
            "waited for the shared bucket"
        );
        let before = Instant::now();
        drop(limiter.route("channel:2").await);
        drop(limiter.route("pins:2").await);
        assert_eq!(before.elapsed(), Duration::ZERO, "another channel's limit");
        let routes = limiter.routes.lock().unwrap();
        assert!(
            routes.contains_key("bucket:abcd1234:1"),
            "{:?}",
            routes.keys()
        );
        assert!(!routes.contains_key("channel:1") && !routes.contains_key("pins:1"));
    }

    /// Bucket ids that differ from channel to channel (a server that includes the
    /// channel in them) do not make a channel forget its own exhausted bucket.
    #[tokio::test(start_paused = true)]
    async fn a_channels_bucket_is_its_own_whatever_other_channels_say() {
        let limiter = Limiter::default();
        let answer = |bucket: &'static str, remaining: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-bucket", HeaderValue::from_static(bucket));
            h.insert("x-ratelimit-remaining", HeaderValue::from_static(remaining));
            h.insert("x-ratelimit-reset-after", HeaderValue::from_static("2"));
            h
        };
        let mut one = limiter.route("channel:1").await;
        limiter.update(&mut one, &answer("aaaa", "0"));
        drop(one);
        let mut two = limiter.route("channel:2").await;
        limiter.update(&mut two, &answer("bbbb", "4"));
        drop(two);
        let before = Instant::now();
        drop(limiter.route("channel:1").await);
        assert_eq!(before.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn only_plausible_bucket_ids_are_learned() {
        assert!(valid_bucket("41f9cd5d28af77da04563bcb1d67fdfd"));
        for bad in ["", "a b", "x".repeat(65).as_str(), "é", "a:b"] {
            assert!(!valid_bucket(bad), "{bad:?}");
        }
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
        for _ in 0..45 {
            limiter.global_slot(50).await;
        }
        // 45 grants (90% of 50): the first at once, then one every 22 ms (1s / 45).
        assert_eq!(before.elapsed(), Duration::from_millis(44 * 22));
        // The 46th waits for the window: 45 in any second at most.
        limiter.global_slot(50).await;
        assert_eq!(before.elapsed(), Duration::from_secs(1));
        limiter.pause_all(Duration::from_secs(3)).await;
        let paused = Instant::now();
        limiter.global_slot(50).await;
        assert_eq!(paused.elapsed(), Duration::from_secs(3));
    }

    /// Many waiters, and the runtime stalls for 60 ms (here: a blocking section while
    /// time advances): the waiters that wake late are not released in a burst. No
    /// one-second window, wherever it starts, holds more than the budget, and no two
    /// grants are closer than the spacing.
    #[tokio::test(start_paused = true)]
    async fn a_stall_does_not_release_a_burst() {
        let limiter = Arc::new(Limiter::default());
        let grants = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..150 {
            let (limiter, grants) = (Arc::clone(&limiter), Arc::clone(&grants));
            tasks.spawn(async move {
                limiter.global_slot(50).await;
                grants.lock().unwrap().push(Instant::now());
            });
        }
        // Let a few go, then stall: time jumps while no task can run.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::time::advance(Duration::from_millis(60)).await;
        while tasks.join_next().await.is_some() {}
        let mut grants = grants.lock().unwrap().clone();
        grants.sort();
        assert_eq!(grants.len(), 150);
        let spacing = Limiter::spacing(Limiter::budget(50));
        for pair in grants.windows(2) {
            assert!(pair[1] - pair[0] >= spacing, "{:?}", pair[1] - pair[0]);
        }
        for (i, start) in grants.iter().enumerate() {
            let within = grants[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count();
            assert!(within <= Limiter::budget(50), "{within} in a second");
        }
    }

    proptest::proptest! {
        /// Whatever `X-RateLimit-*` values a server sends, reading them never panics
        /// and never schedules a wait beyond the cap.
        #[test]
        fn rate_limit_headers_never_panic(
            remaining in "[ -~]{0,24}",
            reset_after in "[ -~]{0,24}",
            remaining_num in proptest::num::f64::ANY,
            reset_num in proptest::num::f64::ANY,
        ) {
            let remaining_num = remaining_num.to_string();
            let reset_num = reset_num.to_string();
            for (r, a) in [(&remaining, &reset_after), (&remaining_num, &reset_num)] {
                let mut h = HeaderMap::new();
                h.insert("x-ratelimit-remaining", HeaderValue::from_str(r).unwrap());
                h.insert("x-ratelimit-reset-after", HeaderValue::from_str(a).unwrap());
                let mut state = RouteState::default();
                state.update(&h);
                if let Some(reset_at) = state.reset_at {
                    proptest::prop_assert!(
                        reset_at <= Instant::now() + Duration::from_secs(3600)
                    );
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_map_is_bounded() {
        let limiter = Limiter::default();
        // One route that must survive pruning: still waiting for its bucket's reset.
        limiter
            .route("channel:busy")
            .await
            .limited_for(Duration::from_secs(60));
        for i in 0..(3 * MAX_ROUTES) {
            let mut route = limiter.route(&format!("channel:{i}")).await;
            if i % 2 == 0 {
                route.stopped = Some("HTTP 404".to_owned());
            }
        }
        let routes = limiter.routes.lock().unwrap();
        assert!(routes.len() <= MAX_ROUTES, "{} routes kept", routes.len());
        assert!(
            routes.contains_key("channel:busy"),
            "a waiting route is never forgotten"
        );
    }
}
