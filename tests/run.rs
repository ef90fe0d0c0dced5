//! `usersync run` in process: every role at once against librdkafka's mock cluster, both
//! simulators on loopback and SQLite, with the Outreach webhook receiver mounted on the admin
//! server. What only the whole process shows: the webhook is registered at start, a signed
//! delivery flows receiver → Kafka → processor into the Outreach user index, an unsigned one is
//! refused, a Salesforce change still flows the other way, and a stop signal ends it cleanly.

mod support;

use support::{Parts, until};
use usersync::config::Secret;
use usersync_sim::outreach::SimUser;

#[tokio::test(flavor = "multi_thread")]
async fn run_registers_its_webhook_and_carries_changes_both_ways_then_stops_cleanly() {
    let mut parts = Parts::new().await;
    let webhook_url = format!("{}/webhooks/outreach", parts.admin_url);
    parts.config.outreach.webhook_secret = Secret::new("whsec-run-test".to_owned());
    parts.config.outreach.webhook_url = webhook_url.clone();
    let store = usersync::store::open(&parts.config.store.url)
        .await
        .unwrap();
    let running = parts.start().await;

    until("the webhook is registered with Outreach", || async {
        parts
            .outreach
            .webhooks()
            .iter()
            .any(|w| w.url == webhook_url)
    })
    .await;

    // A delivery without a signature never reaches Kafka.
    let unsigned = parts
        .http
        .post(&webhook_url)
        .header("content-type", "application/json")
        .body(r#"{"data":{"type":"user","id":77,"attributes":{"email":"x@y.z"}},"meta":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    // A user created in Outreach: the simulator's signed user.created reaches the index (the
    // index was loaded before it existed, and the next reconcile is an hour away).
    let created = parts
        .outreach
        .seed_user(SimUser::new(0, "made.in.outreach@acme.example"));
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
    parts.create_salesforce_user("ann");
    until("the Salesforce user is created in Outreach", || async {
        parts.in_outreach("ann@acme.example")
    })
    .await;
    let refused: Vec<_> = parts
        .outreach
        .webhook_deliveries()
        .into_iter()
        .filter(|d| !(200..300).contains(&d.status.unwrap_or(0)))
        .collect();
    assert!(refused.is_empty(), "deliveries refused: {refused:?}");

    running.stop().await;
}
