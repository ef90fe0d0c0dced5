//! The Pub/Sub client against the Salesforce simulator's gRPC service, over real sockets: user
//! changes arrive as Avro events that the product decodes and normalizes, flow control keeps
//! an "infinite" subscription going past 100 events, keepalives carry the stream head, and
//! each Pub/Sub failure arrives classified as the subscriber needs it.
//!
//! Regression tests name the public-client failure they guard against (docs/salesforce.md,
//! "Failures seen in other clients").

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use usersync::config::SalesforceConfig;
use usersync::model::event::{ChangeKind, UserChange};
use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;
use usersync::proto::eventbus::pub_sub_client::PubSubClient;
use usersync::proto::eventbus::{FetchRequest, ReplayPreset};
use usersync::salesforce::auth::{SalesforceCredentials, SalesforceSession, Secret, obtain_token};
use usersync::salesforce::normalize::{Delivery, Normalized, Replay, normalize};
use usersync::salesforce::pubsub::{
    Batch, FailureKind, PubSubConnection, PubSubError, SchemaCache, StartAt, StreamEnd,
    Subscription,
};
use usersync_sim::salesforce::pubsub::{StreamFault, StreamTiming};
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

const PRIVATE_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key_pub.pem");
const ADMIN: &str = "integration@acme.example";
const TOPIC: &str = "/data/UserChangeEvent";

struct Org {
    sim: SalesforceSim,
    session: SalesforceSession,
}

async fn org_with(timing: StreamTiming) -> Org {
    let mut config = SfSimConfig::new(PUBLIC_KEY);
    config.stream_timing = timing;
    let sim = SalesforceSim::start(config)
        .await
        .expect("simulator starts");
    sim.add_user(ADMIN);
    let session = login(&sim).await;
    Org { sim, session }
}

async fn org() -> Org {
    org_with(StreamTiming::default()).await
}

async fn login(sim: &SalesforceSim) -> SalesforceSession {
    let creds = SalesforceCredentials::JwtBearer {
        login_url: sim.login_url(),
        consumer_key: sim.consumer_key(),
        username: ADMIN.to_owned(),
        private_key_pem: Secret::new(PRIVATE_KEY),
    };
    obtain_token(&reqwest::Client::new(), &creds)
        .await
        .expect("JWT bearer grant")
}

fn settings(sim: &SalesforceSim) -> SalesforceConfig {
    SalesforceConfig {
        pubsub_endpoint: sim.pubsub_url(),
        ..SalesforceConfig::default()
    }
}

fn connect(org: &Org) -> PubSubConnection {
    PubSubConnection::new(&settings(&org.sim), &org.session).expect("channel")
}

fn writer() -> Writer {
    Writer::default()
}

fn create(sim: &SalesforceSim, n: usize, email: &str) -> String {
    sim.create_user(
        json!({"Username": format!("user{n}@acme.example"), "Email": email,
               "FirstName": "Olga", "LastName": "Brown", "Title": "AE"}),
        &writer(),
    )
    .expect("create user")
}

/// Reads batches until `count` events arrived.
async fn events(subscription: &mut Subscription, count: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < count {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("events arrive")
            .expect("the stream stays up");
        seen += batch.events.len();
        batches.push(batch);
    }
    assert_eq!(seen, count, "no more events than changes");
    batches
}

/// The stream's next failure, skipping keepalives and events.
async fn failure(subscription: &mut Subscription) -> StreamEnd {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the stream ends")
        {
            Ok(_) => continue,
            Err(end) => return end,
        }
    }
}

fn kind(end: &StreamEnd) -> FailureKind {
    match end {
        StreamEnd::Failed(failure) => failure.kind,
        other => panic!("expected a server failure, got {other}"),
    }
}

/// Decodes and normalizes every event of `batches`, keeping last-known state as the
/// subscriber does.
async fn normalized(
    connection: &PubSubConnection,
    org: &Org,
    batches: &[Batch],
    known: &mut BTreeMap<SalesforceId, SalesforceUser>,
) -> Vec<Normalized> {
    let mut cache = SchemaCache::default();
    let mut out = Vec::new();
    for event in batches.iter().flat_map(|b| &b.events) {
        let produced = event.event.as_ref().expect("an event");
        let schema = cache
            .get(connection, &produced.schema_id)
            .await
            .expect("schema");
        let decoded = schema.decode(&produced.payload).expect("decodes");
        let delivery = Delivery {
            org_id: &org.session.org_id,
            topic: TOPIC,
            replay: Replay::PubSub(&event.replay_id),
            schema_id: &produced.schema_id,
            observed_at: chrono::Utc::now(),
        };
        let outcome = normalize(&decoded, &delivery, known).expect("normalizes");
        if let Normalized::Events(events) = &outcome {
            for change in events {
                let id = change.salesforce_user_id().unwrap();
                known.insert(id.clone(), SalesforceUser::from_event(id, change));
            }
        }
        out.push(outcome);
    }
    out
}

fn single(outcome: &Normalized) -> &UserChange {
    match outcome {
        Normalized::Events(events) if events.len() == 1 => &events[0],
        other => panic!("expected one event, got {other:?}"),
    }
}

#[tokio::test]
async fn user_changes_arrive_as_full_state_events_in_order() {
    let org = org().await;
    let connection = connect(&org);
    let topic = connection.topic(TOPIC).await.expect("GetTopic");
    assert_eq!(topic.schema_id, org.sim.current_schema_id());
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();

    let x = create(&org.sim, 1, "olga.brown@acme.example");
    org.sim
        .update_users(
            std::slice::from_ref(&x),
            json!({"FirstName": "Olga-Maria"}),
            &writer(),
        )
        .unwrap();
    org.sim
        .update_users(std::slice::from_ref(&x), json!({"Title": null}), &writer())
        .unwrap();
    org.sim.deactivate(&x).unwrap();

    let batches = events(&mut subscription, 4).await;
    let mut known = BTreeMap::new();
    let outcomes = normalized(&connection, &org, &batches, &mut known).await;
    let changes: Vec<&UserChange> = outcomes.iter().map(single).collect();

    assert_eq!(changes[0].change, ChangeKind::Create);
    assert_eq!(
        changes[0].user.email.as_deref(),
        Some("olga.brown@acme.example")
    );
    assert_eq!(changes[0].user.title.as_deref(), Some("AE"));
    // A sub-field of the compound Name, sent as a nested bitmap entry.
    assert_eq!(
        changes[1].changed_fields,
        ["LastModifiedDate", "Name.FirstName"]
    );
    assert_eq!(changes[1].user.first_name.as_deref(), Some("Olga-Maria"));
    assert_eq!(
        changes[1].user.last_name.as_deref(),
        Some("Brown"),
        "merged"
    );
    // Set to null: nulledFields tells it from "unchanged".
    assert_eq!(changes[2].user.title, None);
    assert_eq!(changes[2].user.first_name.as_deref(), Some("Olga-Maria"));
    assert_eq!(changes[3].user.is_active, Some(false));
    assert_eq!(
        changes[3].user.email.as_deref(),
        Some("olga.brown@acme.example")
    );
    for change in &changes {
        assert_eq!(change.user_id, x);
        assert_eq!(change.origin.transport, "pubsub");
    }
    let positions: Vec<_> = changes.iter().map(|c| c.position()).collect();
    assert!(positions.windows(2).all(|w| w[0].compare(&w[1]).is_lt()));
}

#[tokio::test]
async fn one_merged_event_fans_out_to_one_event_per_user() {
    let org = org().await;
    let connection = connect(&org);
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    let a = create(&org.sim, 1, "a@acme.example");
    let b = create(&org.sim, 2, "b@acme.example");
    let published = org
        .sim
        .update_users(
            &[a.clone(), b.clone()],
            json!({"Department": "Sales", "Title": "VP"}),
            &writer(),
        )
        .unwrap();
    assert_eq!(published, 1, "one merged event");
    let batches = events(&mut subscription, 3).await;
    let mut known = BTreeMap::new();
    let outcomes = normalized(&connection, &org, &batches, &mut known).await;
    let Normalized::Events(fanned) = &outcomes[2] else {
        panic!("{:?}", outcomes[2]);
    };
    let ids: Vec<&str> = fanned.iter().map(|e| e.user_id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    assert!(fanned.iter().all(|e| e.user.title.as_deref() == Some("VP")));
    assert_ne!(fanned[0].event_id, fanned[1].event_id);
}

/// Credit drift: subscriptions that stopped after 100 or 200 events.
#[tokio::test]
async fn flow_control_keeps_a_subscription_going_past_the_credit_cap() {
    let org = org().await;
    let connection = connect(&org);
    for n in 0..250 {
        create(&org.sim, n, &format!("u{n}@acme.example"));
    }
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    let batches = events(&mut subscription, 250).await;
    assert!(batches.iter().all(|b| b.events.len() <= 100));
    assert!(
        batches
            .iter()
            .all(|b| (0..=100).contains(&b.pending_num_requested))
    );
    let replay_ids: Vec<&Vec<u8>> = batches
        .iter()
        .flat_map(|b| &b.events)
        .map(|e| &e.replay_id)
        .collect();
    assert!(
        replay_ids.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats"
    );
}

/// Presets from CometD: the "latest" position comes from keepalives, and it may be ahead of the
/// last event (other orgs' traffic; docs/salesforce.md, "Pub/Sub: replay ids").
#[tokio::test]
async fn keepalives_carry_the_stream_head_to_save() {
    let org = org_with(StreamTiming {
        keepalive: Duration::from_millis(200),
        ..StreamTiming::default()
    })
    .await;
    let connection = connect(&org);
    create(&org.sim, 1, "a@acme.example");
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    events(&mut subscription, 1).await;
    org.sim.foreign_traffic(7);
    let keepalive = loop {
        let batch = subscription.next().await.expect("keepalive");
        if batch.latest_replay_id == org.sim.latest_replay_id() {
            break batch;
        }
    };
    assert!(keepalive.events.is_empty());
    assert_eq!(
        keepalive.pending_num_requested, 99,
        "one event used one credit; above the low-water mark nothing is asked for"
    );
}

/// Replay ids re-encoded: a replay id sent as a decimal string is refused; the bytes
/// must go back as received.
#[tokio::test]
async fn a_replay_id_that_is_not_the_received_bytes_is_refused_as_unusable() {
    let org = org().await;
    let connection = connect(&org);
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::After(b"18098301".to_vec()))
        .await
        .unwrap();
    let end = failure(&mut subscription).await;
    assert_eq!(kind(&end), FailureKind::ReplayUnusable);
    let StreamEnd::Failed(f) = end else {
        unreachable!()
    };
    assert!(
        f.error_code
            .unwrap()
            .ends_with("replayid.validation.failed")
    );
}

#[tokio::test]
async fn resuming_after_a_received_replay_id_skips_nothing_and_repeats_nothing() {
    let org = org().await;
    let connection = connect(&org);
    create(&org.sim, 1, "a@acme.example");
    create(&org.sim, 2, "b@acme.example");
    let mut first = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    let batches = events(&mut first, 2).await;
    let after_first = batches[0].events[0].replay_id.clone();
    let second_id = batches
        .iter()
        .flat_map(|b| &b.events)
        .nth(1)
        .unwrap()
        .replay_id
        .clone();
    drop(first);
    let mut resumed = connection
        .subscribe(TOPIC, StartAt::After(after_first))
        .await
        .unwrap();
    let batches = events(&mut resumed, 1).await;
    assert_eq!(batches[0].events[0].replay_id, second_id);
}

#[tokio::test]
async fn a_replay_id_past_the_retention_window_is_unusable() {
    let org = org().await;
    let connection = connect(&org);
    create(&org.sim, 1, "a@acme.example");
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    let old = events(&mut subscription, 1).await[0].events[0]
        .replay_id
        .clone();
    drop(subscription);
    // A change after the saved position, then the window passes: resuming would lose it.
    create(&org.sim, 2, "b@acme.example");
    org.sim.expire_replay_window();
    let mut again = connection
        .subscribe(TOPIC, StartAt::After(old))
        .await
        .unwrap();
    let end = failure(&mut again).await;
    assert_eq!(kind(&end), FailureKind::ReplayUnusable);
    let StreamEnd::Failed(f) = end else {
        unreachable!()
    };
    assert!(f.error_code.unwrap().ends_with("replayid.corrupted"));
}

/// Authentication refused despite a working login: UNAUTHENTICATED; a new token on the same
/// channel fixes it.
#[tokio::test]
async fn a_revoked_session_ends_the_stream_as_unauthenticated_and_a_new_token_resumes() {
    let org = org().await;
    let connection = connect(&org);
    let mut subscription = connection.subscribe(TOPIC, StartAt::Latest).await.unwrap();
    org.sim.revoke_tokens();
    create(&org.sim, 1, "a@acme.example");
    assert_eq!(
        kind(&failure(&mut subscription).await),
        FailureKind::Unauthenticated
    );
    let refused = connection.topic(TOPIC).await.unwrap_err();
    assert_eq!(
        refused.failure().unwrap().kind,
        FailureKind::Unauthenticated
    );

    connection.set_session(&login(&org.sim).await).unwrap();
    let mut resumed = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    events(&mut resumed, 1).await;
}

#[tokio::test]
async fn wrong_tenant_or_instance_headers_are_unauthenticated() {
    let org = org().await;
    let mut wrong_tenant = org.session.clone();
    wrong_tenant.org_id = SalesforceId::parse("00D000000000001").unwrap();
    let connection = PubSubConnection::new(&settings(&org.sim), &wrong_tenant).unwrap();
    let refused = connection.topic(TOPIC).await.unwrap_err();
    assert_eq!(
        refused.failure().unwrap().kind,
        FailureKind::Unauthenticated
    );

    let mut wrong_instance = org.session.clone();
    wrong_instance.instance_url = "https://elsewhere.my.salesforce.com".into();
    let connection = PubSubConnection::new(&settings(&org.sim), &wrong_instance).unwrap();
    let refused = connection.topic(TOPIC).await.unwrap_err();
    assert_eq!(
        refused.failure().unwrap().kind,
        FailureKind::Unauthenticated
    );
}

#[tokio::test]
async fn without_view_all_users_the_topic_cannot_be_subscribed() {
    let org = org().await;
    let connection = connect(&org);
    org.sim.set_view_all_users(ADMIN, false);
    assert!(matches!(
        connection.topic(TOPIC).await,
        Err(PubSubError::CannotSubscribe { .. })
    ));
    let mut subscription = connection.subscribe(TOPIC, StartAt::Latest).await.unwrap();
    let end = failure(&mut subscription).await;
    assert_eq!(kind(&end), FailureKind::PermissionDenied);
    assert!(!FailureKind::PermissionDenied.is_retryable());
}

/// Topic not found: CDC not enabled for the entity.
#[tokio::test]
async fn an_unknown_topic_is_not_found() {
    let org = org().await;
    let connection = connect(&org);
    let refused = connection
        .topic("/data/AccountChangeEvent")
        .await
        .unwrap_err();
    assert_eq!(refused.failure().unwrap().kind, FailureKind::TopicNotFound);
}

/// Transient ends: INTERNAL service.unavailable and RST_STREAM are transient.
#[tokio::test]
async fn service_outages_end_streams_as_transient() {
    let org = org().await;
    let connection = connect(&org);
    for (fault, expected) in [
        (StreamFault::ServiceUnavailable, FailureKind::Transient),
        (StreamFault::ResetStream, FailureKind::Transient),
        (StreamFault::Throttled, FailureKind::Throttled),
        (StreamFault::DeliveryLimit, FailureKind::DeliveryLimit),
    ] {
        let mut subscription = connection.subscribe(TOPIC, StartAt::Latest).await.unwrap();
        // The stream is registered once its first request is read; a keepalive-free wait for
        // that is an event delivered on it.
        create(&org.sim, rand_n(), &format!("{}@acme.example", rand_n()));
        events(&mut subscription, 1).await;
        org.sim.inject_stream_fault(fault);
        assert_eq!(
            kind(&failure(&mut subscription).await),
            expected,
            "{fault:?}"
        );
    }
}

fn rand_n() -> usize {
    rand::random::<u32>() as usize
}

/// Silent streams: a stream that goes silent is presumed dead.
#[tokio::test]
async fn a_silent_stream_trips_the_watchdog() {
    let org = org().await;
    let connection = PubSubConnection::new(
        &SalesforceConfig {
            idle_timeout: Duration::from_millis(300),
            ..settings(&org.sim)
        },
        &org.session,
    )
    .unwrap();
    let mut subscription = connection.subscribe(TOPIC, StartAt::Latest).await.unwrap();
    assert_eq!(
        subscription.next().await.unwrap_err(),
        StreamEnd::Idle(Duration::from_millis(300))
    );
}

/// Decoding with the wrong schema: a field added mid-stream; each event decodes with its own
/// schema.
#[tokio::test]
async fn events_written_before_and_after_a_schema_change_both_decode() {
    let org = org().await;
    let connection = connect(&org);
    let mut subscription = connection
        .subscribe(TOPIC, StartAt::Earliest)
        .await
        .unwrap();
    create(&org.sim, 1, "a@acme.example");
    let old = org.sim.current_schema_id();
    let new = org.sim.add_custom_field("Badge__c");
    create(&org.sim, 2, "b@acme.example");
    let batches = events(&mut subscription, 2).await;
    let ids: Vec<&str> = batches
        .iter()
        .flat_map(|b| &b.events)
        .map(|e| e.event.as_ref().unwrap().schema_id.as_str())
        .collect();
    assert_eq!(ids, [old.as_str(), new.as_str()]);
    let mut known = BTreeMap::new();
    let outcomes = normalized(&connection, &org, &batches, &mut known).await;
    assert_eq!(
        single(&outcomes[1]).user.email.as_deref(),
        Some("b@acme.example")
    );
}

/// The simulator's own rule: credit left at zero closes the stream.
#[tokio::test]
async fn the_simulator_closes_a_stream_left_without_credit() {
    let org = org_with(StreamTiming {
        zero_credit_timeout: Duration::from_millis(300),
        ..StreamTiming::default()
    })
    .await;
    create(&org.sim, 1, "a@acme.example");
    create(&org.sim, 2, "b@acme.example");
    let mut raw = PubSubClient::connect(org.sim.pubsub_url()).await.unwrap();
    let first = FetchRequest {
        topic_name: TOPIC.into(),
        replay_preset: ReplayPreset::Earliest as i32,
        num_requested: 1,
        ..FetchRequest::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(first).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let metadata = request.metadata_mut();
    metadata.insert(
        "accesstoken",
        org.session.access_token.expose().parse().unwrap(),
    );
    metadata.insert("instanceurl", org.session.instance_url.parse().unwrap());
    metadata.insert("tenantid", org.session.org_id.as_str().parse().unwrap());
    let mut stream = raw.subscribe(request).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert_eq!(response.events.len(), 1, "one event for one credit");
    assert_eq!(response.pending_num_requested, 0);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    drop(tx);
}
