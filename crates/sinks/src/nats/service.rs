//! Classification of NATS publish results into [`Outcome`]s.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};

use crate::Outcome;

/// Every failure is retried: no stream for the subject yet, a cluster without quorum, a
/// timeout and a lost connection can all heal. `WrongLastSequence`-style rejections do
/// not apply (no expectations are sent).
pub fn classify(result: Result<(), PublishError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        Err(error) => {
            let reason = match error.kind() {
                PublishErrorKind::StreamNotFound => {
                    "no stream captures the subject on the target server".to_owned()
                }
                PublishErrorKind::TimedOut => "the stream did not ack in time".to_owned(),
                _ => format!("publish failed: {error}"),
            };
            Outcome::Retry {
                reason,
                status: None,
                after: None,
            }
        }
    }
}
