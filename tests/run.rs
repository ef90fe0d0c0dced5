//! `usersync run` in process: every role at once against librdkafka's mock cluster, both
//! simulators on loopback and SQLite, with the Outreach webhook receiver mounted on the admin
//! server. What only the whole process shows: the webhook is registered at start, a signed
//! delivery flows receiver → Kafka → processor into the Outreach user index, an unsigned one is
//! refused, a Salesforce change still flows the other way, and a stop signal ends it cleanly.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use serde_json::json;
use tokio::sync::watch;
use usersync::config::{Config, SalesforceAuthFlow, Secret};
use usersync::sim::outreach::{OutreachSim, SimConfig, SimUser};
use usersync::sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

const WAIT: Duration = Duration::from_secs(60);
const WEBHOOK_SECRET: &str = "whsec-run-test";

/// A loopback port nothing listens on now (bound, then released), for the admin server: the
/// webhook URL must be known before `run` starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_registers_its_webhook_and_carries_changes_both_ways_then_stops_cleanly() {
    let mock = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.kafka.brokers = mock.bootstrap_servers();
    for topic in [&config.kafka.topic, &config.kafka.dead_letter_topic] {
        mock.create_topic(topic, config.kafka.partitions, 1)
            .unwrap();
    }

    let salesforce = SalesforceSim::start(SfSimConfig::new("")).await.unwrap();
    salesforce.add_user("integration@run.example");
    salesforce.set_run_as_user(Some("integration@run.example"));
    config.salesforce.auth = SalesforceAuthFlow::ClientCredentials;
    config.salesforce.login_url = salesforce.login_url();
    config.salesforce.my_domain_url = salesforce.my_domain_url();
    config.salesforce.consumer_key = salesforce.consumer_key();
    config.salesforce.consumer_secret = Secret::new(salesforce.consumer_secret());
    config.salesforce.pubsub_endpoint = salesforce.pubsub_url();

    let outreach = OutreachSim::start(SimConfig {
        mint_throttle: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let defaults = SimConfig::default();
    config.outreach.api_url = outreach.api_url();
    config.outreach.token_url = outreach.token_url();
    config.outreach.client_id = defaults.client_id;
    config.outreach.client_secret = Secret::new(defaults.client_secret);
    config.outreach.redirect_uri = defaults.redirect_uri;
    config.outreach.refresh_token = Secret::new(
        outreach
            .issue_tokens(&["users.all", "webhooks.all"])
            .refresh_token,
    );

    let admin = format!("127.0.0.1:{}", free_port());
    let webhook_url = format!("http://{admin}/webhooks/outreach");
    config.admin.listen = admin.clone();
    config.outreach.webhook_secret = Secret::new(WEBHOOK_SECRET.to_owned());
    config.outreach.webhook_url = webhook_url.clone();
    config.store.url = format!("sqlite://{}", dir.path().join("usersync.db").display());
    config.validate().unwrap();
    let store = usersync::store::open(&config.store.url).await.unwrap();

    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn({
        let config = config.clone();
        async move { usersync::run::run(&config, shutdown).await }
    });

    until("the webhook is registered with Outreach", || async {
        outreach.webhooks().iter().any(|w| w.url == webhook_url)
    })
    .await;
    let http = reqwest::Client::new();
    until("the admin server answers", || async {
        http.get(format!("http://{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // A delivery without a signature never reaches Kafka.
    let unsigned = http
        .post(&webhook_url)
        .header("content-type", "application/json")
        .body(r#"{"data":{"type":"user","id":77,"attributes":{"email":"x@y.z"}},"meta":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    // A user created in Outreach: the simulator's signed user.created reaches the index.
    let created = outreach.seed_user(SimUser::new(0, "made.in.outreach@acme.example"));
    until("the Outreach user reaches the index", || async {
        store
            .outreach_users_by_email("made.in.outreach@acme.example")
            .await
            .unwrap()
            .iter()
            .any(|u| u.id.0 == created)
    })
    .await;

    // And a Salesforce user is created in Outreach by the same process.
    salesforce
        .create_user(
            json!({"Username": "ann@run.example", "Email": "ann@run.example",
                   "FirstName": "Ann", "LastName": "Lee"}),
            &Writer::default(),
        )
        .unwrap();
    until("the Salesforce user is created in Outreach", || async {
        outreach
            .users()
            .iter()
            .any(|u| u.email == "ann@run.example")
    })
    .await;
    let refused: Vec<_> = outreach
        .webhook_deliveries()
        .into_iter()
        .filter(|d| !(200..300).contains(&d.status.unwrap_or(0)))
        .collect();
    assert!(refused.is_empty(), "deliveries refused: {refused:?}");

    stop.send(true).unwrap();
    let result = tokio::time::timeout(WAIT, running)
        .await
        .expect("run stops after the signal")
        .unwrap();
    result.unwrap();
    drop(mock);
}
