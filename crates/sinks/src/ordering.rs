//! What ordered delivery means for one sink: the `ordering` and `on_failure` keys, which
//! lane an event belongs to, which partition a lane falls in, and the headers a receiver
//! sees. The machinery that keeps the order is in [`crate::lanes`].

use schemars::JsonSchema;
use serde::Deserialize;

use crate::Body;
use crate::filter::type_and_guild;

/// `ordering = "none" | "guild" | "channel"`: which events are delivered one after
/// another, in stream order. Different lanes still run in parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Up to `concurrency` events in flight, retried with backoff: events may arrive out
    /// of order.
    None,
    /// One lane per guild (the subject's guild token; `none` for events outside guilds).
    Guild,
    /// One lane per `data.channel_id`; events without a channel fall in their guild's lane.
    Channel,
}

/// `on_failure`: what an ordered lane does with an event that failed `max_attempts`
/// times (or was refused for good).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep retrying it (at `backoff.max`) and hold the lane until it is delivered.
    Block,
    /// Move it to the DLQ and go on; the lane's next delivery carries
    /// `Relaycord-Lane-Gap`. The default: failures end where an unordered sink's do.
    #[default]
    DeadLetter,
}

/// The headers every ordered delivery carries (http headers, NATS headers, AMQP
/// headers; the discord sink posts messages and has none). They are the sink's, not the
/// bus's: they describe a delivery, not an event on the bus.
pub mod headers {
    /// The lane: `channel:<id>` or `guild:<id>` (`guild:none` outside guilds).
    pub const LANE: &str = "Relaycord-Lane";
    /// 1, 2, 3… per lane, one number per event (a dead-lettered one uses its number too):
    /// the same number again is a repeat, a skipped number a gap.
    pub const LANE_SEQ: &str = "Relaycord-Lane-Seq";
    /// On the first delivery after dead-lettered events of the lane: how many were
    /// dead-lettered since the previous delivery.
    pub const LANE_GAP: &str = "Relaycord-Lane-Gap";
}

/// Where a delivery stands in its lane; handed to the sink with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneMark {
    pub key: String,
    pub seq: u64,
    /// Dead-lettered events of the lane since its previous delivery.
    pub gap: u64,
}

impl LaneMark {
    /// The headers as (name, value) pairs; the gap only when there is one.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (headers::LANE, self.key.clone()),
            (headers::LANE_SEQ, self.seq.to_string()),
        ];
        if self.gap > 0 {
            out.push((headers::LANE_GAP, self.gap.to_string()));
        }
        out
    }
}

impl Ordering {
    /// The lane of an event on `subject`; `None` when the sink is unordered.
    pub fn lane(self, subject: &str, body: &Body<'_>) -> Option<String> {
        let guild = || format!("guild:{}", type_and_guild(subject).1);
        match self {
            Self::None => None,
            Self::Guild => Some(guild()),
            Self::Channel => Some(match body.channel_id() {
                Some(channel) => format!("channel:{channel}"),
                None => guild(),
            }),
        }
    }
}

/// The partition a lane falls in, `0..partitions`: stable across processes and
/// versions (FNV-1a, not std's randomly seeded hasher), since every replica must agree.
pub fn partition(lane: &str, partitions: u32) -> u32 {
    let hash = lane.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn lanes_follow_the_channel_then_the_guild() {
        let with_channel = Bytes::from_static(br#"{"data":{"channel_id":"10"}}"#);
        let without = Bytes::from_static(br#"{"data":{"user":{"id":"1"}}}"#);
        let subject = "discord.gateway.MESSAGE_CREATE.81384788765712384";
        let lane = |o: Ordering, b: &Bytes| o.lane(subject, &Body::new(b));
        assert_eq!(lane(Ordering::None, &with_channel), None);
        assert_eq!(
            lane(Ordering::Channel, &with_channel).unwrap(),
            "channel:10"
        );
        assert_eq!(
            lane(Ordering::Channel, &without).unwrap(),
            "guild:81384788765712384"
        );
        assert_eq!(
            lane(Ordering::Guild, &with_channel).unwrap(),
            "guild:81384788765712384"
        );
        let dm = Ordering::Guild.lane("discord.gateway.TYPING_START.none", &Body::new(&without));
        assert_eq!(dm.unwrap(), "guild:none");
    }

    /// Every replica must compute the same partition, now and after an upgrade: these
    /// values are fixed.
    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition("channel:10", 4), partition("channel:10", 4));
        assert_eq!(partition("anything", 1), 0);
        assert_eq!(partition("", 0), 0, "0 partitions is treated as 1");
        let mut counts = [0u32; 4];
        for c in 0..400 {
            counts[partition(&format!("channel:{c}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|n| (60..140).contains(n)), "{counts:?}");
        assert_eq!(partition("channel:290926798999357250", 8), 5);
    }

    #[test]
    fn marks_carry_the_gap_only_after_one() {
        let mark = LaneMark {
            key: "channel:1".into(),
            seq: 7,
            gap: 0,
        };
        assert_eq!(
            mark.headers(),
            [
                ("Relaycord-Lane", "channel:1".to_owned()),
                ("Relaycord-Lane-Seq", "7".to_owned())
            ]
        );
        let gap = LaneMark { gap: 2, ..mark };
        assert_eq!(gap.headers()[2], ("Relaycord-Lane-Gap", "2".to_owned()));
    }
}
