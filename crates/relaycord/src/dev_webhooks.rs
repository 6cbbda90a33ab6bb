//! The demo's webhook events: the simulator plays Discord at the interactions role's Webhook
//! Events URL, so `relaycord dev` shows Discord's third event source arriving like the rest
//! (docs/webhook-events.md).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::ensure;
use relaycord_bus::webhook_event::WebhookBody;
use relaycord_sim::{RetryPolicy, SimWebhookEvent, Simulator, WebhookEvents};
use tokio_util::sync::CancellationToken;

/// Discord's policy, shortened: the demo's interactions role is on loopback.
const RETRIES: RetryPolicy = RetryPolicy {
    first_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    give_up_after: Duration::from_secs(60),
};

pub struct DemoWebhooks {
    events: WebhookEvents,
    url: String,
}

impl DemoWebhooks {
    /// Checks `url` as the Developer Portal does when it is saved (PING → 204, a bad
    /// signature → 401).
    pub async fn check(sim: &Simulator, url: String) -> anyhow::Result<Self> {
        let events = sim.webhook_events();
        let (ping, forged) = events.verify_url(&url).await;
        ensure!(
            (ping, forged) == (204, 401),
            "the webhook events URL {url} answered PING with {ping} and a bad signature with {forged} (Discord wants 204 and 401)"
        );
        eprintln!("webhook events URL {url} verified: PING → 204, bad signature → 401");
        Ok(Self { events, url })
    }

    /// Sends `n` events, each until acknowledged; returns their ids.
    pub async fn send(&self, n: usize) -> anyhow::Result<HashSet<String>> {
        let mut ids = HashSet::new();
        for i in 0..n {
            let event = demo_event(&self.events, i);
            let delivery = self.events.deliver(&self.url, &event, RETRIES).await;
            ensure!(
                delivery.acknowledged(),
                "webhook event {} was not acknowledged: {:?}",
                event.event_type,
                delivery.statuses
            );
            ids.insert(id_of(&event)?);
        }
        Ok(ids)
    }

    /// One event every `every` until `stop`.
    pub async fn trickle(self, every: Duration, stop: CancellationToken) {
        for i in 0.. {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let event = demo_event(&self.events, i);
            let delivery = self.events.deliver(&self.url, &event, RETRIES).await;
            if !delivery.acknowledged() {
                eprintln!(
                    "webhook event {} not acknowledged: {:?}",
                    event.event_type, delivery.statuses
                );
            }
        }
    }
}

/// Installs to a server and to an account, a purchase, a removal, in turn.
fn demo_event(events: &WebhookEvents, i: usize) -> SimWebhookEvent {
    let user = relaycord_sim::new_user_id();
    match i % 4 {
        0 => events.authorized(&user, Some("290926798626357999")),
        1 => events.authorized(&user, None),
        2 => events.entitlement(
            "CREATE",
            &relaycord_sim::new_user_id(),
            &user,
            Some("290926798626357999"),
        ),
        _ => events.deauthorized(&user),
    }
}

/// The id the bus gives the event (the receiver's `webhook-id`).
fn id_of(event: &SimWebhookEvent) -> anyhow::Result<String> {
    match WebhookBody::parse(&event.body)? {
        WebhookBody::Event(parsed) => Ok(parsed.dedupe_key().to_owned()),
        WebhookBody::Ping => anyhow::bail!("the simulator built a PING as an event"),
    }
}
