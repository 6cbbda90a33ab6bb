//! Gateway wire constants and frames (API v10, JSON encoding).

use std::time::Duration;

pub const API_VERSION: u8 = 10;

/// Opcodes, as named by Discord.
pub mod op {
    pub const DISPATCH: u8 = 0;
    pub const HEARTBEAT: u8 = 1;
    pub const IDENTIFY: u8 = 2;
    pub const PRESENCE_UPDATE: u8 = 3;
    pub const VOICE_STATE_UPDATE: u8 = 4;
    pub const RESUME: u8 = 6;
    pub const RECONNECT: u8 = 7;
    pub const REQUEST_GUILD_MEMBERS: u8 = 8;
    pub const INVALID_SESSION: u8 = 9;
    pub const HELLO: u8 = 10;
    pub const HEARTBEAT_ACK: u8 = 11;
    pub const REQUEST_SOUNDBOARD_SOUNDS: u8 = 31;
}

/// Close codes the simulator sends itself (any other code can be injected with
/// `Simulator::close`).
pub mod close {
    pub const UNKNOWN_ERROR: u16 = 4000;
    pub const UNKNOWN_OPCODE: u16 = 4001;
    pub const DECODE_ERROR: u16 = 4002;
    pub const NOT_AUTHENTICATED: u16 = 4003;
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    pub const INVALID_SEQ: u16 = 4007;
    pub const RATE_LIMITED: u16 = 4008;
    pub const INVALID_SHARD: u16 = 4010;
    pub const SHARDING_REQUIRED: u16 = 4011;
    pub const INVALID_API_VERSION: u16 = 4012;
}

/// Discord's description of a close code, sent as the close frame's reason.
pub fn close_reason(code: u16) -> &'static str {
    match code {
        4000 => "Unknown error.",
        4001 => "Unknown opcode.",
        4002 => "Decode error.",
        4003 => "Not authenticated.",
        4004 => "Authentication failed.",
        4005 => "Already authenticated.",
        4007 => "Invalid seq.",
        4008 => "Rate limited.",
        4009 => "Session timed out.",
        4010 => "Invalid shard.",
        4011 => "Sharding required.",
        4012 => "Invalid API version.",
        4013 => "Invalid intent(s).",
        4014 => "Disallowed intent(s).",
        _ => "",
    }
}

/// Whether Discord forgets the session when it closes with `code`: a client must identify
/// again after these (4007, 4009) or may not reconnect at all (4004, 4010–4014). The other
/// 4xxx codes leave the session resumable.
pub fn close_invalidates_session(code: u16) -> bool {
    matches!(code, 4004 | 4007 | 4009..=4014)
}

/// How long a client may go without heartbeating before its connection is closed with 4000.
///
/// Generous (1.5 intervals + 1 s) because clients jitter the first heartbeat by up to one
/// interval, and because a client that stalls is exactly the case the simulator must survive:
/// the session stays resumable and the stall is replayed.
pub fn heartbeat_timeout(interval: Duration) -> Duration {
    interval.mul_f64(1.5) + Duration::from_secs(1)
}

pub fn hello(interval: Duration) -> String {
    format!(
        r#"{{"op":{},"d":{{"heartbeat_interval":{}}},"s":null,"t":null}}"#,
        op::HELLO,
        interval.as_millis()
    )
}

pub fn heartbeat_ack() -> String {
    format!(r#"{{"op":{}}}"#, op::HEARTBEAT_ACK)
}

pub fn reconnect() -> String {
    format!(r#"{{"op":{},"d":null,"s":null,"t":null}}"#, op::RECONNECT)
}

pub fn invalid_session(resumable: bool) -> String {
    format!(
        r#"{{"op":{},"d":{resumable},"s":null,"t":null}}"#,
        op::INVALID_SESSION
    )
}

/// `{"op":0,"t":TYPE,"s":SEQ,"d":DATA}`; `data` is inserted verbatim, so what a client receives
/// is byte for byte what the proof log records.
pub fn dispatch(event_type: &str, seq: u64, data: &str) -> String {
    let event_type = serde_json::to_string(event_type).expect("a string always serializes");
    format!(
        r#"{{"op":{},"t":{event_type},"s":{seq},"d":{data}}}"#,
        op::DISPATCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_json() {
        for frame in [
            hello(Duration::from_millis(41_250)),
            heartbeat_ack(),
            reconnect(),
            invalid_session(true),
            dispatch("MESSAGE_CREATE", 3, r#"{"a":"\"q\""}"#),
        ] {
            let value: serde_json::Value = serde_json::from_str(&frame).expect(&frame);
            assert!(value["op"].is_u64());
        }
        assert!(hello(Duration::from_millis(41_250)).contains("41250"));
    }
}
