//! A minimal interaction handler in Rust: answers `/ping` routed to
//! `relaycord.handlers.ping` (see docs/interactions.md). Run as many copies as you like:
//! the queue group gives each interaction to one of them.
//!
//! ```sh
//! cargo run -p relaycord-interactions --example ping_handler -- nats://127.0.0.1:4222
//! ```

use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let client = async_nats::connect(url).await?;
    let mut requests = client
        .queue_subscribe("relaycord.handlers.ping", "handlers".to_owned())
        .await?;
    while let Some(request) = requests.next().await {
        // The body is Discord's interaction, byte for byte.
        let interaction: serde_json::Value = serde_json::from_slice(&request.payload)?;
        let user = interaction["member"]["user"]["username"]
            .as_str()
            .unwrap_or("you");
        let reply = serde_json::json!({"type": 4, "data": {"content": format!("pong, {user}!")}});
        // Answer on the reply subject, late or not: Relaycord defers for you after its
        // deadline and sends a late answer as a follow-up.
        if let Some(reply_to) = request.reply {
            client.publish(reply_to, reply.to_string().into()).await?;
        }
    }
    Ok(())
}
