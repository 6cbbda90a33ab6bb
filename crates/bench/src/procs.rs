//! Child processes and what the benchmarks read from them: the `relaycord` binary, free
//! loopback ports, `/proc/<pid>/status` and a Prometheus `/metrics` page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `--relaycord`, or `relaycord` next to this executable (both are built into the same
/// target directory).
pub fn relaycord_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark executable has no directory")?
            .join("relaycord"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p relaycord -p relaycord-bench) or pass --relaycord PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A loopback port the OS just handed out. The child binds it a moment later; a collision
/// fails loudly when the child cannot listen.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits until something accepts connections on `addr`, or `child` exits.
pub fn wait_listening(
    child: &mut Child,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("child exited with {status} before listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listened on {addr} within {timeout:?}")
}

/// Resident set size of a process, in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
    parse_vm_rss(&status).context("no VmRSS line in /proc/<pid>/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `GET /metrics` over a plain loopback socket (no client library needed for one page).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = http(addr, "GET", "/metrics")?;
    if status != 200 {
        bail!("GET /metrics: status {status}");
    }
    Ok(body)
}

/// One bodiless HTTP/1.1 request on a fresh loopback connection: `(status, body)`.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the HTTP response")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, dechunk(body)));
    }
    Ok((status, body.to_owned()))
}

/// Wall-clock time (CLOCK_REALTIME) in µs since the Unix epoch: comparable across the
/// processes of one host, which is what the latency benchmark relies on.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU time (user + system) the process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    relaycord_devkit::proc::cpu_seconds(pid)
        .with_context(|| format!("cannot read /proc/{pid}/stat: has the process exited?"))
}

/// Kills the child (and reaps it) when dropped, so an error leaves no process behind.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Fails if the child has exited (it should still be running).
    pub fn check_running(&mut self, what: &str) -> anyhow::Result<()> {
        if let Some(status) = self.0.try_wait()? {
            bail!("{what} exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins the chunks of a chunked body (the sizes are hex lines between them).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Sum of a metric's samples over all its label sets, from Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\trelaycord\nVmHWM:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn sums_a_metric_over_labels_only() {
        let text = "# TYPE relaycord_shard_up gauge\nrelaycord_shard_up{shard=\"0\"} 1\nrelaycord_shard_up{shard=\"1\"} 0\nrelaycord_shard_up{shard=\"2\"} 1\nrelaycord_shard_up_total 7\n";
        assert_eq!(metric_sum(text, "relaycord_shard_up"), 2.0);
    }

    #[test]
    fn joins_chunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn rss_of_this_process_is_positive() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
