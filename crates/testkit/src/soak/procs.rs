//! The Relaycord roles of a soak, as child processes of the `relaycord` binary that the
//! fault schedule kills, restarts, stops and continues.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One role: its name in the fault log and its command line after `--config FILE`.
pub struct Role {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    /// Times started, the first included.
    pub starts: u32,
}

/// Every role of the soak, started from one config file. Killed on drop.
pub struct Procs {
    binary: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    pub roles: Vec<Role>,
    /// Exits nobody caused (a role that gave up by itself), with the role's name.
    pub unexpected_exits: Vec<String>,
}

impl Procs {
    pub fn new(binary: &Path, config: &Path, dir: &Path) -> Self {
        Self {
            binary: binary.to_owned(),
            config: config.to_owned(),
            dir: dir.to_owned(),
            roles: Vec::new(),
            unexpected_exits: Vec::new(),
        }
    }

    /// Adds a role and starts it.
    pub fn add(&mut self, name: &str, args: &[&str]) -> std::io::Result<()> {
        self.roles.push(Role {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            starts: 0,
        });
        self.start(self.roles.len() - 1)
    }

    /// Starts role `i`; its output is appended to `<dir>/<name>.log` across restarts.
    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        let role = &mut self.roles[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", role.name)))?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .args(&role.args)
            .env_remove("DISCORD_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        role.child = Some(child);
        role.starts += 1;
        Ok(())
    }

    /// kill -9 and reap.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.roles[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to role `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.roles[i].child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Restarts every role that exited by itself, noting it in `unexpected_exits`.
    pub fn restart_exited(&mut self) -> std::io::Result<()> {
        for i in 0..self.roles.len() {
            let exited = match self.roles[i].child.as_mut() {
                Some(child) => child.try_wait()?.map(|status| status.to_string()),
                None => Some("not running".to_owned()),
            };
            if let Some(status) = exited {
                self.unexpected_exits
                    .push(format!("{} ({status})", self.roles[i].name));
                self.start(i)?;
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.roles.len() {
            self.kill(i);
        }
    }
}
