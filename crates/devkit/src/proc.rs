//! CPU time and state of processes from `/proc/<pid>/stat` (Linux), for the benchmarks'
//! per-process CPU budgets and the tests' diagnoses: one parser for all of them.

use std::sync::OnceLock;

/// User + system CPU seconds the process `pid` has used so far; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    read(&pid.to_string())
}

/// User + system CPU seconds of this process, all its threads.
pub fn own_cpu_seconds() -> Option<f64> {
    read("self")
}

/// User + system CPU seconds of the calling thread alone, for a measurement that runs
/// inside one thread while others do something else.
pub fn thread_cpu_seconds() -> Option<f64> {
    read("thread-self")
}

/// The process state letter of `pid` (`R` running, `S` sleeping, `T` stopped, `Z` exited and
/// not yet reaped…); `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    state_of(&stat(&pid.to_string())?)
}

/// Field 3, the first after the command name.
fn state_of(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

fn read(pid: &str) -> Option<f64> {
    Some(cpu_ticks(&stat(pid)?)? as f64 / clock_ticks())
}

/// `/proc/<pid>/stat`; `None` once the process is gone.
fn stat(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// utime + stime: fields 14 and 15, counted after the command name (in parentheses, and
/// it may hold spaces or parentheses itself).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

/// `getconf CLK_TCK`, read once (100 on every Linux this runs on, if getconf is missing).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_counted_after_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let stat = "4242 (tokio rt) worker)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("4242 (short"), None);
        assert_eq!(state_of(stat), Some('S'));
        assert_eq!(state_of("4242 (short"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_and_a_dead_pid_has_none() {
        assert!(own_cpu_seconds().is_some_and(|s| s >= 0.0));
        assert_eq!(cpu_seconds(u32::MAX), None);
        // The main thread's state: the harness's is waiting for this one.
        assert!(state(std::process::id()).is_some_and(|s| s.is_ascii_uppercase()));
        assert_eq!(state(u32::MAX), None);
    }
}
