//! What the simulator sent, as the ids it must arrive under downstream.

use std::collections::HashSet;

use relaycord_bus::{Dispatch, dedupe};
use relaycord_sim::SentDispatch;

/// Event types the simulator's generator produces; the demo's summary counts these.
pub const GENERATED_TYPES: [&str; 4] = [
    "MESSAGE_CREATE",
    "MESSAGE_REACTION_ADD",
    "GUILD_MEMBER_ADD",
    "PRESENCE_UPDATE",
];

/// Dedupe ids of the simulator's dispatches that ingest publishes (all but the
/// connection-level READY and RESUMED), restricted to `types` when given.
pub fn expected_ids(sent: &[SentDispatch], types: Option<&[&str]>) -> HashSet<String> {
    sent.iter()
        .filter(|d| is_published(d))
        .filter(|d| types.is_none_or(|t| t.contains(&d.event_type.as_str())))
        .map(dedupe_id)
        .collect()
}

/// Whether ingest publishes this dispatch (READY and RESUMED are connection events).
pub fn is_published(dispatch: &SentDispatch) -> bool {
    !matches!(dispatch.event_type.as_str(), "READY" | "RESUMED")
}

/// The id a logged dispatch is published under.
pub fn dedupe_id(d: &SentDispatch) -> String {
    let frame = format!(
        r#"{{"op":0,"t":"{}","s":{},"d":{}}}"#,
        d.event_type, d.seq, d.data
    );
    let dispatch = Dispatch::parse(&frame)
        .expect("the simulator logs well-formed dispatches")
        .expect("a logged dispatch is op 0");
    dedupe::gateway_key(&dispatch, Some(&d.session_id))
}
