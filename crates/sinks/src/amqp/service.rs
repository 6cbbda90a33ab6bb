//! Classification of AMQP publish results into [`Outcome`]s.
//!
//! Everything is retried: a closed connection, a broker that is restarting, a nack
//! (the broker could not store the message) and an unroutable mandatory message can all
//! resolve once the broker or its bindings are back. A mistake in the config shows up as
//! retries, then dead letters whose reason names the broker's error.

use lapin::Confirmation;

use crate::Outcome;

pub fn classify(confirmation: Result<Confirmation, lapin::Error>) -> Outcome {
    match confirmation {
        Ok(Confirmation::Ack(None)) => Outcome::Delivered,
        // basic.return came before the confirm: the broker accepted the message and
        // dropped it, since no queue is bound for its routing key.
        Ok(Confirmation::Ack(Some(returned))) => retry(format!(
            "unroutable: the broker returned it, no queue is bound for its routing key ({} {})",
            returned.reply_code, returned.reply_text
        )),
        Ok(Confirmation::Nack(_)) => retry("the broker nacked the message".to_owned()),
        // Confirms are always selected on the channel; without them nothing is known.
        Ok(Confirmation::NotRequested) => retry("publisher confirms are not enabled".to_owned()),
        Err(error) => retry(format!("AMQP error: {error}")),
    }
}

pub fn retry(reason: String) -> Outcome {
    Outcome::Retry {
        reason,
        status: None,
        after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_ack_delivers() {
        assert_eq!(classify(Ok(Confirmation::Ack(None))), Outcome::Delivered);
        assert!(matches!(
            classify(Ok(Confirmation::Nack(None))),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(Ok(Confirmation::NotRequested)),
            Outcome::Retry { .. }
        ));
    }
}
