//! The sink's dead letters by the stream sequence of their event, so that a range replay
//! that delivers an event also waiting in the DLQ removes its letter (a later replay of
//! the DLQ would send it a second time), and one that fails on it stores no second letter.

use std::collections::HashMap;

use async_nats::jetstream;

use crate::dlq;
use crate::error::SinkError;

#[derive(Debug, Default)]
pub(crate) struct Letters {
    /// Event stream sequence → DLQ sequences of its letters.
    by_source: HashMap<u64, Vec<u64>>,
}

impl Letters {
    pub async fn load(js: &jetstream::Context, sink: &str) -> Result<Self, SinkError> {
        let mut by_source: HashMap<u64, Vec<u64>> = HashMap::new();
        for letter in dlq::list(js, sink).await? {
            if let Some(source) = letter.source_seq {
                by_source.entry(source).or_default().push(letter.seq);
            }
        }
        Ok(Self { by_source })
    }

    /// Whether the event at stream sequence `seq` has a letter.
    pub fn holds(&self, seq: u64) -> bool {
        self.by_source.contains_key(&seq)
    }

    /// The event at `seq` is delivered (or skipped for good): its letters go.
    pub async fn settled(
        &mut self,
        js: &jetstream::Context,
        sink: &str,
        seq: u64,
    ) -> Result<(), SinkError> {
        if let Some(letters) = self.by_source.remove(&seq) {
            dlq::purge(js, sink, &letters).await?;
        }
        Ok(())
    }
}
