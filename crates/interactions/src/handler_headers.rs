//! Headers Relaycord adds to the requests it sends handlers (NATS and HTTP), and to the
//! late replies it stores for HTTP handlers.

pub const INTERACTION_ID: &str = "Relaycord-Interaction-Id";
pub const KIND: &str = "Relaycord-Interaction-Kind";
/// On a late reply Relaycord stored for an HTTP handler (value `http`), so the worker
/// times only NATS handlers' late replies (HTTP ones are timed where they arrive).
pub const HANDLER: &str = "Relaycord-Handler";
