//! The simulator's side of interactions: its REST endpoints answer like Discord.

use relaycord_sim::{RestCallKind, SimConfig};
use serde_json::{Value, json};

use relaycord_testkit::start_sim;

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_and_webhooks_accept_live_tokens_once_and_refuse_the_rest() {
    let sim = start_sim(SimConfig::default()).await;
    let discord = sim.interactions();
    let http = reqwest::Client::new();
    let api = format!("{}/v10", sim.api_base());
    let call = |method: reqwest::Method, url: String, body: &'static str| {
        let http = http.clone();
        async move {
            let response = http.request(method, url).body(body).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["code"].clone())
        }
    };
    let command = discord.command("ping");
    let callback = format!(
        "{api}/interactions/{}/{}/callback",
        command.id, command.token
    );
    let pong = r#"{"type":4,"data":{"content":"pong"}}"#;
    assert_eq!(
        call(reqwest::Method::POST, callback.clone(), pong).await.0,
        204
    );
    assert_eq!(
        call(reqwest::Method::POST, callback, pong).await,
        (400, json!(40060)),
        "acknowledged once"
    );
    let wrong = format!("{api}/interactions/{}/nope/callback", command.id);
    assert_eq!(
        call(reqwest::Method::POST, wrong, pong).await,
        (404, json!(10062))
    );

    let original =
        |app: &str, token: &str| format!("{api}/webhooks/{app}/{token}/messages/@original");
    let app = discord.application_id();
    let edit = r#"{"content":"edited"}"#;
    assert_eq!(
        call(reqwest::Method::PATCH, original(app, &command.token), edit)
            .await
            .0,
        200
    );
    assert_eq!(
        call(reqwest::Method::PATCH, original("1", &command.token), edit).await,
        (404, json!(10015))
    );
    assert_eq!(
        call(
            reqwest::Method::PATCH,
            original(app, &command.token),
            "not json"
        )
        .await,
        (400, json!(50035))
    );
    let followup = format!("{api}/webhooks/{app}/{}", command.token);
    assert_eq!(
        call(reqwest::Method::POST, followup.clone(), edit).await.0,
        200
    );
    discord.expire(&command.token);
    assert_eq!(
        call(reqwest::Method::POST, followup, edit).await,
        (404, json!(10015))
    );

    let kinds: Vec<(RestCallKind, u16)> =
        discord.calls().iter().map(|c| (c.kind, c.status)).collect();
    assert_eq!(
        kinds,
        [
            (RestCallKind::Callback, 204),
            (RestCallKind::Callback, 400),
            (RestCallKind::Callback, 404),
            (RestCallKind::EditOriginal, 200),
            (RestCallKind::EditOriginal, 404),
            (RestCallKind::EditOriginal, 400),
            (RestCallKind::FollowUp, 200),
            (RestCallKind::FollowUp, 404),
        ]
    );
    assert_eq!(discord.calls()[3].body, json!({"content": "edited"}));
}
