//! What `relaycord dev` and the test kit (`relaycord-testkit`) both run on loopback: a
//! nats-server child, a webhook receiver, and the ids the simulator's events should
//! arrive under. Its own crate so that the binary can use it behind its `dev` feature
//! without depending on the test kit, which depends on the binary's library.

pub mod nats_server;
pub mod proc;
pub mod receiver;
mod sim;

pub use nats_server::{INSTALL_HINT, NatsCluster, NatsServer, NatsServerError};
pub use receiver::Receiver;
pub use sim::{GENERATED_TYPES, dedupe_id, expected_ids, is_published};

/// The first `head` and last `tail` lines of a log, with a count of those left out between:
/// how a process started and how it ended, for a test's failure message.
pub fn log_excerpt(text: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = &lines[..lines.len().min(head)];
    let last = &lines[lines.len().saturating_sub(tail).max(first.len())..];
    let skipped = lines.len() - first.len() - last.len();
    let mut out = first.join("\n");
    if skipped > 0 {
        out.push_str(&format!("\n[… {skipped} lines]"));
    }
    if !last.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&last.join("\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::log_excerpt;

    #[test]
    fn an_excerpt_keeps_both_ends_and_counts_the_middle() {
        let text: String = (1..=10).map(|i| format!("{i}\n")).collect();
        assert_eq!(log_excerpt(&text, 2, 3), "1\n2\n[… 5 lines]\n8\n9\n10");
        assert_eq!(log_excerpt(&text, 6, 6), text.trim_end());
        assert_eq!(log_excerpt("", 2, 3), "");
    }
}
