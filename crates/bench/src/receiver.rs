//! `relaycord-bench receiver`: the webhook endpoint of the HTTP benchmarks, as its own process.
//!
//! It answers every `POST` with 200 at once (no signature check: the receiver is the
//! yardstick, so it must be cheap) and counts requests. Events the simulator stamped
//! (`relaycord sim --stamp`) are also counted by their number, so redeliveries count once,
//! and `now − sent_unix_us` of each first arrival goes into an HDR histogram: the end-to-end
//! latency from the simulator to this handler. The stamp is found by a byte search, so it
//! works for any wrapping of the payload (Relaycord's envelope, discordhooks' JSON).
//!
//! Control endpoints, read by the benchmark driver: `GET /stats` (JSON [`Stats`]),
//! `POST /reset?ignore_below=N` (forget everything; ignore stamps numbered below N, a
//! warm-up) and `GET /sample` (headers and body of the last stamped request, so a load
//! generator can replay a representative one).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use relaycord_sim::STAMP_FIELD;

use crate::procs::{self, Reaped};
use crate::stack::Logs;

#[derive(clap::Args)]
pub struct Options {
    /// Address to serve on (loopback).
    #[arg(long, default_value = "127.0.0.1:8991")]
    listen: SocketAddr,
}

/// What `GET /stats` reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Every POST to the event path, stamped or not, duplicates included.
    pub requests: u64,
    /// Distinct stamped events (numbers at or above `ignore_below`).
    pub distinct: u64,
    /// Smallest `sent_unix_us` among them: when the first counted event left the simulator.
    pub first_sent_unix_us: Option<u64>,
    /// Largest `sent_unix_us` among them: when the last counted event left the simulator.
    pub last_sent_unix_us: Option<u64>,
    /// When the first request of any kind arrived (CLOCK_REALTIME µs).
    pub first_arrival_unix_us: Option<u64>,
    /// When the latest new distinct event arrived.
    pub last_new_unix_us: Option<u64>,
    /// End-to-end latency of the distinct events' first arrivals, in µs.
    pub latency_us: Latency,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// `GET /sample`: a request to replay.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sample {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

struct Counts {
    requests: u64,
    seen: HashSet<u64>,
    ignore_below: u64,
    first_sent: Option<u64>,
    last_sent: Option<u64>,
    first_arrival: Option<u64>,
    last_new: Option<u64>,
    latency: Histogram<u64>,
    sample: Option<Sample>,
}

impl Counts {
    fn new(ignore_below: u64) -> Self {
        Self {
            requests: 0,
            seen: HashSet::new(),
            ignore_below,
            first_sent: None,
            last_sent: None,
            first_arrival: None,
            last_new: None,
            // 1 µs to 10 min at 3 significant digits.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            sample: None,
        }
    }

    /// Counts one request; true if it brought a new distinct stamped event.
    fn record(&mut self, now: u64, stamp: Option<(u64, u64)>) -> bool {
        self.requests += 1;
        self.first_arrival.get_or_insert(now);
        let Some((n, sent)) = stamp else {
            return false;
        };
        if n < self.ignore_below || !self.seen.insert(n) {
            return false;
        }
        self.latency
            .saturating_record(now.saturating_sub(sent).max(1));
        self.first_sent = Some(self.first_sent.map_or(sent, |s| s.min(sent)));
        self.last_sent = Some(self.last_sent.map_or(sent, |s| s.max(sent)));
        self.last_new = Some(now);
        true
    }

    fn stats(&self) -> Stats {
        let h = &self.latency;
        Stats {
            requests: self.requests,
            distinct: self.seen.len() as u64,
            first_sent_unix_us: self.first_sent,
            last_sent_unix_us: self.last_sent,
            first_arrival_unix_us: self.first_arrival,
            last_new_unix_us: self.last_new,
            latency_us: Latency {
                count: h.len(),
                p50: h.value_at_quantile(0.5),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
            },
        }
    }
}

type Shared = Arc<Mutex<Counts>>;

pub fn run(options: &Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let shared: Shared = Arc::new(Mutex::new(Counts::new(0)));
        let app = Router::new()
            .route("/events", post(event))
            .route("/stats", get(stats))
            .route("/reset", post(reset))
            .route("/sample", get(sample))
            .with_state(shared);
        eprintln!("receiver: http://{}/events", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn event(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = crate::procs::unix_micros();
    let stamp = find_stamp(&body);
    let mut counts = shared.lock().expect("receiver lock");
    if counts.record(now, stamp) && counts.sample.is_none() {
        counts.sample = Some(Sample {
            headers: headers
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "host" | "content-length"))
                .filter_map(|(name, value)| {
                    Some((name.to_string(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    StatusCode::OK
}

async fn stats(State(shared): State<Shared>) -> axum::Json<Stats> {
    axum::Json(shared.lock().expect("receiver lock").stats())
}

#[derive(Deserialize)]
struct ResetQuery {
    #[serde(default)]
    ignore_below: u64,
}

async fn reset(State(shared): State<Shared>, Query(query): Query<ResetQuery>) -> StatusCode {
    let mut counts = shared.lock().expect("receiver lock");
    // The sample survives: it is a property of the producer, not of one round.
    let sample = counts.sample.take();
    *counts = Counts::new(query.ignore_below);
    counts.sample = sample;
    StatusCode::NO_CONTENT
}

async fn sample(State(shared): State<Shared>) -> Result<axum::Json<Sample>, StatusCode> {
    let counts = shared.lock().expect("receiver lock");
    let sample = counts.sample.as_ref().ok_or(StatusCode::NOT_FOUND)?;
    Ok(axum::Json(Sample {
        headers: sample.headers.clone(),
        body: sample.body.clone(),
    }))
}

/// The receiver as a child process (this executable's `receiver` subcommand), as the
/// benchmarks drive it.
pub struct ReceiverProc {
    child: Reaped,
    addr: SocketAddr,
}

impl ReceiverProc {
    pub fn spawn(logs: &Logs) -> anyhow::Result<Self> {
        let addr = procs::free_port()?;
        let mut child = Reaped(
            Command::new(std::env::current_exe()?)
                .args(["receiver", "--listen", &addr.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logs.file("receiver")?)
                .spawn()
                .context("spawn the receiver")?,
        );
        procs::wait_listening(&mut child.0, addr, Duration::from_secs(20))?;
        Ok(Self { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let (status, body) = procs::http(self.addr, "GET", "/stats")?;
        if status != 200 {
            bail!("GET /stats: status {status}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Forgets every count; stamps numbered below `ignore_below` will not count.
    pub fn reset(&self, ignore_below: u64) -> anyhow::Result<()> {
        let (status, _) = procs::http(
            self.addr,
            "POST",
            &format!("/reset?ignore_below={ignore_below}"),
        )?;
        if status != 204 {
            bail!("POST /reset: status {status}");
        }
        Ok(())
    }

    /// The first stamped request it saw, if any.
    pub fn sample(&self) -> anyhow::Result<Option<Sample>> {
        match procs::http(self.addr, "GET", "/sample")? {
            (200, body) => Ok(Some(serde_json::from_str(&body)?)),
            (404, _) => Ok(None),
            (status, _) => bail!("GET /sample: status {status}"),
        }
    }

    /// Waits until `expected` distinct stamped events arrived, or none new arrived for
    /// `idle` (after the first), or `producer` exited; fails after `timeout`. Returns the
    /// final counts (the caller compares `distinct` with `expected` for losses).
    pub fn wait_distinct(
        &mut self,
        expected: u64,
        idle: Duration,
        timeout: Duration,
        producer: &mut Reaped,
    ) -> anyhow::Result<Stats> {
        let deadline = Instant::now() + timeout;
        let mut last_progress = (0, Instant::now());
        loop {
            self.child.check_running("the receiver")?;
            let stats = self.stats()?;
            if stats.distinct >= expected {
                return Ok(stats);
            }
            if stats.distinct != last_progress.0 {
                last_progress = (stats.distinct, Instant::now());
            } else if stats.distinct > 0 && last_progress.1.elapsed() > idle {
                return Ok(stats);
            }
            if producer.0.try_wait()?.is_some() {
                // What it sent before exiting may still be in flight: one last look.
                std::thread::sleep(Duration::from_secs(1));
                return self.stats();
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?}: {} of {expected} events arrived",
                    stats.distinct
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `(n, sent_unix_us)` of the simulator's stamp, `"<STAMP_FIELD>":{"n":N,"sent_unix_us":T}`,
/// wherever it sits in the body (its JSON may be nested in any wrapper, compact or not).
fn find_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let key = format!("\"{STAMP_FIELD}\"");
    let at = body.windows(key.len()).position(|w| w == key.as_bytes())?;
    let rest = &body[at + key.len()..];
    let n = number_after(rest, b"\"n\"")?;
    let sent = number_after(rest, b"\"sent_unix_us\"")?;
    Some((n, sent))
}

/// The unsigned integer after `"key"` and a colon, looking no further than the stamp's
/// closing brace.
fn number_after(stamp: &[u8], key: &[u8]) -> Option<u64> {
    let end = stamp.iter().position(|&b| b == b'}')?;
    let stamp = &stamp[..end];
    let at = stamp.windows(key.len()).position(|w| w == key)?;
    let digits: Vec<u8> = stamp[at + key.len()..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == b':')
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stamp_in_any_wrapping() {
        let envelope = br#"{"id":"x","data":{"content":"n","relaycord_sim":{"n":12,"sent_unix_us":1700000000000001}},"seq":4}"#;
        assert_eq!(find_stamp(envelope), Some((12, 1_700_000_000_000_001)));
        let pretty = br#"{"d": {"relaycord_sim": {"n": 0, "sent_unix_us": 5}}, "s": 9}"#;
        assert_eq!(find_stamp(pretty), Some((0, 5)));
        assert_eq!(find_stamp(br#"{"t":"GUILD_CREATE","d":{"n":1}}"#), None);
        assert_eq!(find_stamp(br#"{"relaycord_sim":{"n":1}}"#), None);
    }

    #[test]
    fn counts_each_stamped_event_once() {
        // Numbered below 2: warm-up, ignored. A redelivery of 3 and an unstamped request
        // count as requests only.
        let mut counts = Counts::new(2);
        let news: Vec<bool> = [
            (50, Some((1, 10))),
            (60, Some((3, 30))),
            (100, Some((2, 20))),
            (110, Some((3, 30))),
            (120, None),
        ]
        .into_iter()
        .map(|(now, stamp)| counts.record(now, stamp))
        .collect();
        assert_eq!(news, [false, true, true, false, false]);
        let stats = counts.stats();
        assert_eq!((stats.requests, stats.distinct), (5, 2));
        assert_eq!(stats.first_sent_unix_us, Some(20));
        assert_eq!(stats.last_sent_unix_us, Some(30));
        assert_eq!(stats.first_arrival_unix_us, Some(50));
        assert_eq!(stats.last_new_unix_us, Some(100));
        assert_eq!(stats.latency_us.count, 2);
        assert_eq!((stats.latency_us.p50, stats.latency_us.max), (30, 80));
    }
}
