//! A webhook receiver for the sink tests, with failure injection: every request refused
//! (400), some ids always fail, half of all requests fail (500, a hang past the sink's timeout, 429 with
//! Retry-After), or every request is parked until released and then refused. It counts
//! only what it accepted (2xx), per id and per `x-replica` header, and when each signed
//! request arrived. It can also answer each id's first request 429 with a Retry-After, fail
//! a smaller share of requests, and go down (connections refused) and come back on its port.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use relaycord_sinks::http::SigningKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::SECRET;

#[derive(Clone)]
pub struct TestReceiver {
    inner: Arc<Inner>,
    pub url: String,
    addr: SocketAddr,
    /// The server while up: stopping it closes the listener, so connections are refused.
    serving: Arc<Mutex<Option<Serving>>>,
}

/// A running server: cancel, then await, to stop it.
type Serving = (CancellationToken, JoinHandle<()>);

struct Inner {
    key: SigningKey,
    /// When each id was accepted, in order: its count and its duplicates' times.
    accepted: Mutex<HashMap<String, Vec<SystemTime>>>,
    by_replica: Mutex<HashMap<String, u64>>,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    /// Non-zero: of every `flaky` requests, three fail (500, a hang, 429), and `doomed`
    /// ids always fail. 6 fails half of them.
    flaky: AtomicU64,
    /// Answer 400 to every signed request.
    refusing: AtomicBool,
    /// The next id seen goes into `refused_for_good`.
    refuse_next: AtomicBool,
    /// Ids answered 400 every time: events no receiver fix will make acceptable.
    refused_for_good: Mutex<HashSet<String>>,
    doomed: Mutex<HashSet<String>>,
    /// While true, requests wait here; when it turns false they are answered 503.
    hold: watch::Sender<bool>,
    held: AtomicUsize,
    delay: Duration,
    hang: Duration,
    /// Non-zero: the first request of each id is answered 429 `Retry-After: <this>`.
    retry_after_first: AtomicU64,
    arrivals: Mutex<HashMap<String, Vec<Instant>>>,
    /// Non-zero: this share of requests (in percent, spread evenly) is answered 503.
    fail_percent: AtomicU64,
    /// Every accepted request in the order it was accepted, with its lane headers.
    log: Mutex<Vec<Accepted>>,
}

/// One accepted request: the event's id, the ordered sinks' lane headers and the replay's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub lane: Option<String>,
    pub lane_seq: Option<u64>,
    pub lane_gap: Option<u64>,
    /// `Relaycord-Replay`: the replay that sent it, if one did.
    pub replay: Option<String>,
}

impl TestReceiver {
    /// Accepts everything (after `delay`). `hang` is how long a "timeout" request stalls.
    pub async fn start(delay: Duration) -> TestReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}/events");
        let inner = Arc::new(Inner {
            key: SigningKey::parse(SECRET).unwrap(),
            accepted: Mutex::default(),
            by_replica: Mutex::default(),
            requests: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            flaky: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            refuse_next: AtomicBool::new(false),
            refused_for_good: Mutex::default(),
            doomed: Mutex::default(),
            hold: watch::channel(false).0,
            held: AtomicUsize::new(0),
            delay,
            hang: Duration::from_secs(3),
            retry_after_first: AtomicU64::new(0),
            arrivals: Mutex::default(),
            fail_percent: AtomicU64::new(0),
            log: Mutex::default(),
        });
        let receiver = TestReceiver {
            inner,
            url,
            addr,
            serving: Arc::default(),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(Arc::clone(&self.inner));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }
        });
        *self.serving.lock().unwrap() = Some((stop, task));
    }

    /// Down: the listener is closed (new connections refused) and open connections are
    /// closed once their request is answered. Up: it listens on the same port again.
    pub async fn set_down(&self, down: bool) {
        let serving = self.serving.lock().unwrap().take();
        match (down, serving) {
            (true, Some((stop, task))) => {
                stop.cancel();
                let _ = task.await;
            }
            (false, None) => {
                // The port was ours a moment ago; only a race with another process
                // binding it could fail this, and the next attempt would see it.
                let listener = loop {
                    match TcpListener::bind(self.addr).await {
                        Ok(listener) => break listener,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                self.serve(listener);
            }
            (_, serving) => *self.serving.lock().unwrap() = serving,
        }
    }

    pub fn set_flaky(&self, flaky: bool) {
        self.set_flaky_period(if flaky { 6 } else { 0 });
    }

    /// Of every `period` requests, three fail: a 500, a hang past the sink's timeout and a
    /// 429 with `Retry-After: 1`. 0 turns it off; at least 4.
    pub fn set_flaky_period(&self, period: u64) {
        assert!(
            period == 0 || period > 3,
            "three of every period requests fail"
        );
        self.inner.flaky.store(period, Ordering::SeqCst);
    }

    /// While refusing, every request is answered 400, as by a receiver whose route or
    /// secret changed.
    pub fn set_refusing(&self, refusing: bool) {
        self.inner.refusing.store(refusing, Ordering::SeqCst);
    }

    /// The next event to arrive, and every later attempt of it, is answered 400: one event
    /// the receiver will never accept. Returns nothing; see [`Self::refused_for_good`].
    pub fn refuse_next_for_good(&self) {
        self.inner.refuse_next.store(true, Ordering::SeqCst);
    }

    /// The ids [`Self::refuse_next_for_good`] picked.
    pub fn refused_for_good(&self) -> HashSet<String> {
        self.inner.refused_for_good.lock().unwrap().clone()
    }

    /// Answers `percent` % of requests 503, spread evenly over the requests (0: off).
    pub fn set_fail_percent(&self, percent: u64) {
        self.inner.fail_percent.store(percent, Ordering::SeqCst);
    }

    /// These ids are answered 400 every time, until [`Self::accept_all_again`].
    pub fn refuse(&self, ids: impl IntoIterator<Item = String>) {
        self.inner.refused_for_good.lock().unwrap().extend(ids);
    }

    /// Forgets the ids refused for good.
    pub fn accept_all_again(&self) {
        self.inner.refused_for_good.lock().unwrap().clear();
    }

    /// Every accepted request, in the order accepted.
    pub fn log(&self) -> Vec<Accepted> {
        self.inner.log.lock().unwrap().clone()
    }

    /// While flaky, these ids fail every time (they end up dead-lettered).
    pub fn doom(&self, ids: impl IntoIterator<Item = String>) {
        self.inner.doomed.lock().unwrap().extend(ids);
    }

    /// Answers the first request of every id with 429 and `Retry-After: <secs>`.
    pub fn set_retry_after_first(&self, secs: u64) {
        self.inner.retry_after_first.store(secs, Ordering::SeqCst);
    }

    /// When each signed request of `id` arrived, in order.
    pub fn arrivals(&self, id: &str) -> Vec<Instant> {
        self.inner
            .arrivals
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn set_hold(&self, hold: bool) {
        self.inner.hold.send_replace(hold);
    }

    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> HashMap<String, u32> {
        let accepted = self.inner.accepted.lock().unwrap();
        accepted
            .iter()
            .map(|(id, times)| (id.clone(), times.len() as u32))
            .collect()
    }

    /// When each id was accepted, every time it was.
    pub fn accepted_at(&self) -> HashMap<String, Vec<SystemTime>> {
        self.inner.accepted.lock().unwrap().clone()
    }

    /// Distinct ids accepted.
    pub fn distinct(&self) -> usize {
        self.inner.accepted.lock().unwrap().len()
    }

    pub fn by_replica(&self) -> HashMap<String, u64> {
        self.inner.by_replica.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.inner.bad_signatures.load(Ordering::SeqCst)
    }
}

/// Waits (up to a minute) until `rx` accepted `n` distinct events.
pub async fn wait_accepted(rx: &TestReceiver, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.accepted().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} events arrived",
            rx.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts a parked request while it waits, even if the sink disconnects.
struct Parked<'a>(&'a AtomicUsize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = inner.requests.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
    ) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let expected = inner.key.sign(id, ts, &body);
    if !header("webhook-signature").is_some_and(|s| s.split(' ').any(|s| s == expected)) {
        inner.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let earlier = {
        let mut arrivals = inner.arrivals.lock().unwrap();
        let seen = arrivals.entry(id.to_owned()).or_default();
        seen.push(Instant::now());
        seen.len() - 1
    };
    if inner.refusing.load(Ordering::SeqCst) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    {
        let mut refused = inner.refused_for_good.lock().unwrap();
        if inner.refuse_next.swap(false, Ordering::SeqCst) {
            refused.insert(id.to_owned());
        }
        if refused.contains(id) {
            return StatusCode::BAD_REQUEST.into_response();
        }
    }
    let retry_after = inner.retry_after_first.load(Ordering::SeqCst);
    if retry_after > 0 && earlier == 0 {
        let value = retry_after.to_string();
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", value)]).into_response();
    }
    if *inner.hold.borrow() {
        inner.held.fetch_add(1, Ordering::SeqCst);
        let _parked = Parked(&inner.held);
        let mut hold = inner.hold.subscribe();
        let _ = hold.wait_for(|h| !*h).await;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let percent = inner.fail_percent.load(Ordering::SeqCst);
    // 37 is prime to 100: failures spread over every hundred requests, not in a run.
    if percent > 0 && (n * 37) % 100 < percent {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let period = inner.flaky.load(Ordering::SeqCst);
    if period > 0 {
        if inner.doomed.lock().unwrap().contains(id) {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        match n % period {
            0 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            1 => {
                // Past the sink's timeout; refused anyway in case the sink waited.
                tokio::time::sleep(inner.hang).await;
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            2 => {
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
            }
            _ => {}
        }
    }
    if !inner.delay.is_zero() {
        tokio::time::sleep(inner.delay).await;
    }
    let number = |name: &str| header(name).and_then(|v| v.parse().ok());
    let entry = Accepted {
        id: id.to_owned(),
        lane: header("relaycord-lane").map(str::to_owned),
        lane_seq: number("relaycord-lane-seq"),
        lane_gap: number("relaycord-lane-gap"),
        replay: header("relaycord-replay").map(str::to_owned),
    };
    {
        // One lock for both, so the log's order is the order of acceptance.
        let mut accepted = inner.accepted.lock().unwrap();
        accepted
            .entry(id.to_owned())
            .or_default()
            .push(SystemTime::now());
        inner.log.lock().unwrap().push(entry);
    }
    let replica = header("x-replica").unwrap_or("-").to_owned();
    *inner.by_replica.lock().unwrap().entry(replica).or_default() += 1;
    StatusCode::NO_CONTENT.into_response()
}
