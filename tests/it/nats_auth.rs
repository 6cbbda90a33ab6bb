//! Secured NATS: every role connects with the `[nats]` credentials, a refused login names
//! the keys to fix, and no secret reaches an error message.

use relaycord::config::Config;
use relaycord::roles;
use relaycord_bus::Secret;
use relaycord_testkit::NatsServer;

fn config(url: String, edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::load(None).unwrap();
    config.nats.url = url;
    edit(&mut config);
    config
}

async fn connect_error(config: &Config) -> String {
    format!(
        "{:#}",
        roles::connect(config, "test")
            .await
            .expect_err("the server must refuse this login")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authenticate_and_refusals_name_the_keys() {
    let nats = NatsServer::start_with(&["--user", "relay", "--pass", "pw-7f3a9c"]).unwrap();

    let good = config(nats.url(), |c| {
        c.nats.user = "relay".into();
        c.nats.password = Secret::new("pw-7f3a9c");
    });
    let js = roles::connect(&good, "test").await.expect("valid login");
    js.get_stream("DISCORD_GATEWAY")
        .await
        .expect("streams set up over the authenticated connection");
    assert!(!format!("{good:?}").contains("pw-7f3a9c"));

    let wrong = config(nats.url(), |c| {
        c.nats.user = "relay".into();
        c.nats.password = Secret::new("wrong-9b2e");
    });
    let error = connect_error(&wrong).await;
    assert!(error.contains("nats.user + nats.password"), "{error}");
    assert!(!error.contains("wrong-9b2e"), "a secret leaked: {error}");

    let anonymous = config(nats.url(), |_| {});
    let error = connect_error(&anonymous).await;
    assert!(error.contains("cannot connect to NATS at"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authenticates_over_a_cluster_url_list() {
    let nats = NatsServer::start_with(&["--auth", "tok-51d0e8"]).unwrap();
    // A cluster URL list whose first server is down: whichever the client tries first,
    // it ends up on the live one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("nats://{}", dead.local_addr().unwrap());
    drop(dead);
    let good = config(format!("{dead_url}, {}", nats.url()), |c| {
        c.nats.token = Secret::new("tok-51d0e8");
    });
    roles::connect(&good, "test").await.expect("token login");

    let wrong = config(nats.url(), |c| c.nats.token = Secret::new("tok-bad-1"));
    let error = connect_error(&wrong).await;
    assert!(!error.contains("tok-bad-1"), "a secret leaked: {error}");
}

#[test]
fn conflicting_or_incomplete_credentials_name_the_key() {
    let check = |edit: fn(&mut Config)| {
        let c = config("nats://127.0.0.1:4222".into(), edit);
        c.validate().expect_err("invalid").to_string()
    };
    let e = check(|c| {
        c.nats.token = Secret::new("t");
        c.nats.user = "u".into();
        c.nats.password = Secret::new("p");
    });
    assert!(e.starts_with("nats.user: set only one way"), "{e}");
    let e = check(|c| c.nats.user = "u".into());
    assert!(
        e.starts_with("nats.password: user and password go together"),
        "{e}"
    );
    let e = check(|c| c.nats.tls_cert_file = Some("/etc/hostname".into()));
    assert!(e.starts_with("nats.tls_key_file: "), "{e}");
    let e = check(|c| c.nats.creds_file = Some("/nonexistent/relaycord.creds".into()));
    assert!(
        e.starts_with("nats.creds_file: /nonexistent/relaycord.creds is not"),
        "{e}"
    );
    let e = check(|c| c.nats.url = "nats://a:4222, http://[::1".into());
    assert!(e.starts_with("nats.url: "), "{e}");
}
