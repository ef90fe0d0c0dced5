//! Outreach webhooks end to end over real sockets: the simulator registers and sends signed
//! deliveries, the product's receiver (axum on 127.0.0.1:0) checks, parses, completes and hands
//! them to a sink: a recording one, and the Kafka one on librdkafka's mock cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};
use usersync::config::OutreachConfig;
use usersync::config::Secret;
use usersync::kafka::{ChangePublisher, KafkaConfig};
use usersync::model::event::{ChangeKind, UserChange};
use usersync::outreach::webhooks::registration::NewWebhook;
use usersync::outreach::webhooks::{SIGNATURE_HEADER, sign};
use usersync::outreach::{MemoryTokenStore, OAuthTokens, OutreachClient, UserAttributes};
use usersync::roles::webhook_receiver::{
    KafkaSink, PATH, Refusal, SinkError, WebhookReceiver, WebhookSink,
};
use usersync_sim::outreach::{
    NewSimWebhook, OutreachSim, SimConfig, SimDelivery, SimUser, UserChanges,
};

const SECRET: &str = "whsec-integration";
const WAIT: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Recorder {
    accepted: Mutex<Vec<UserChange>>,
    refused: Mutex<Vec<(String, Vec<u8>, String)>>,
}

#[async_trait]
impl WebhookSink for Recorder {
    async fn accept(&self, change: &UserChange) -> Result<(), SinkError> {
        self.accepted.lock().unwrap().push(change.clone());
        Ok(())
    }

    async fn refuse(&self, refusal: &Refusal<'_>) -> Result<(), SinkError> {
        self.refused.lock().unwrap().push((
            refusal.key.to_owned(),
            refusal.raw.to_vec(),
            refusal.reason.to_owned(),
        ));
        Ok(())
    }
}

struct Fixture {
    sim: OutreachSim,
    client: OutreachClient,
    /// The receiver's public URL.
    url: String,
}

async fn client_for(sim: &OutreachSim) -> OutreachClient {
    let defaults = SimConfig::default();
    let issued = sim.issue_tokens(&["users.all", "webhooks.all"]);
    let mut config = OutreachConfig {
        api_url: sim.api_url(),
        token_url: sim.token_url(),
        client_id: defaults.client_id,
        client_secret: Secret::new(defaults.client_secret),
        redirect_uri: defaults.redirect_uri,
        ..OutreachConfig::default()
    };
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(100);
    OutreachClient::new(
        &config,
        OAuthTokens {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_at: None,
        },
        Arc::new(MemoryTokenStore::new()),
    )
    .unwrap()
}

/// A simulator, a client of it, and a receiver handing to `sink`, listening on a free port.
async fn fixture(sink: Arc<dyn WebhookSink>) -> Fixture {
    let sim = OutreachSim::start(SimConfig {
        webhook_retry_interval: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = client_for(&sim).await;
    let receiver =
        WebhookReceiver::new(Secret::new(SECRET), sink, Arc::new(client.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
    let app = receiver.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fixture { sim, client, url }
}

fn jane() -> SimUser {
    let mut user = SimUser::new(0, "Jane.Doe@Acme.test");
    user.username = Some("jdoe".into());
    user.first_name = Some("Jane".into());
    user.last_name = Some("Doe".into());
    user
}

fn statuses(deliveries: &[SimDelivery]) -> Vec<Option<u16>> {
    deliveries.iter().map(|d| d.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_idempotent_by_url() {
    let sink = Arc::new(Recorder::default());
    let f = fixture(sink).await;
    let new = NewWebhook::users(f.url.parse().unwrap(), Secret::new(SECRET));

    let first = f.client.ensure_webhook(&new).await.unwrap();
    assert!(first.value.created);
    assert_eq!(first.requests, 2, "one list, one create");
    let again = f.client.ensure_webhook(&new).await.unwrap();
    assert!(!again.value.created);
    assert_eq!(again.value.webhook.id, first.value.webhook.id);
    assert_eq!(again.requests, 1, "a restart only lists");

    let hooks = f.sim.webhooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].url, f.url);
    assert_eq!(
        (hooks[0].resource.as_str(), hooks[0].action.as_str()),
        ("user", "*")
    );
    assert_eq!(hooks[0].payload_version, 2);
    assert_eq!(hooks[0].secret.as_deref(), Some(SECRET));
    let listed = f.client.list_webhooks().await.unwrap().value;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].active, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_through_the_api_arrives_as_a_create_event() {
    let sink = Arc::new(Recorder::default());
    let f = fixture(sink.clone()).await;
    f.client
        .ensure_webhook(&NewWebhook::users(
            f.url.parse().unwrap(),
            Secret::new(SECRET),
        ))
        .await
        .unwrap();
    let created = f
        .client
        .create_user(&UserAttributes {
            email: Some("New.Hire@Acme.test".into()),
            first_name: Some(Some("New".into())),
            last_name: Some(Some("Hire".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .value;

    let deliveries = f.sim.wait_for_webhook_deliveries(1, WAIT).await;
    assert_eq!(statuses(&deliveries), [Some(200)]);
    assert_eq!(deliveries[0].event_name, "user.created");
    let accepted = sink.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1);
    let event = &accepted[0];
    assert_eq!(event.change, ChangeKind::Create);
    assert_eq!(event.user_id, created.id.to_string());
    assert_eq!(
        event.event_id,
        format!(
            "or:{}:{}",
            created.id,
            deliveries[0].payload["data"]["attributes"]["updatedAt"]
                .as_str()
                .unwrap()
        )
    );
    assert_eq!(event.user.email.as_deref(), Some("New.Hire@Acme.test"));
    assert_eq!(event.kafka_key(), "new.hire@acme.test");
    assert_eq!(event.user.first_name.as_deref(), Some("New"));
    assert_eq!(
        event.user.username, None,
        "never set: read back to complete"
    );
    assert_eq!(event.user.locked, Some(false));
    assert!(event.changed_fields.is_empty());
    event.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_updates_become_the_same_update_event() {
    let sink = Arc::new(Recorder::default());
    let f = fixture(sink.clone()).await;
    f.sim
        .add_webhook(NewSimWebhook::users(f.url.clone(), Some(SECRET), 1));
    f.sim
        .add_webhook(NewSimWebhook::users(f.url.clone(), Some(SECRET), 2));
    let id = f.sim.seed_user(jane());
    f.sim.wait_for_webhook_deliveries(2, WAIT).await;
    let reads_before = f.sim.request_count();
    let updated = f
        .sim
        .update_user(
            id,
            UserChanges {
                locked: Some(true),
                ..UserChanges::default()
            },
        )
        .unwrap();

    let deliveries = f.sim.wait_for_webhook_deliveries(4, WAIT).await;
    assert_eq!(statuses(&deliveries), [Some(200); 4]);
    let updates: Vec<&SimDelivery> = deliveries
        .iter()
        .filter(|d| d.event_name == "user.updated")
        .collect();
    assert_eq!(updates.len(), 2);
    assert!(
        updates
            .iter()
            .any(|d| d.payload.get("beforeUpdate").is_none())
    );
    assert!(
        updates
            .iter()
            .any(|d| d.payload["beforeUpdate"]["attributes"]["locked"] == json!(false))
    );

    let accepted = sink.accepted.lock().unwrap().clone();
    let creates: Vec<&UserChange> = accepted
        .iter()
        .filter(|e| e.change == ChangeKind::Create)
        .collect();
    assert_eq!(creates.len(), 2);
    assert_eq!(
        creates[0].event_id, creates[1].event_id,
        "one change, one id"
    );
    assert_eq!(creates[0].user.username.as_deref(), Some("jdoe"));
    let mut events: Vec<UserChange> = accepted
        .into_iter()
        .filter(|e| e.change == ChangeKind::Update)
        .collect();
    assert_eq!(events.len(), 2);
    for event in &mut events {
        event.observed_at = chrono::DateTime::UNIX_EPOCH;
    }
    assert_eq!(events[0], events[1], "v1 and v2 make the same event");
    let event = &events[0];
    let updated_at = updated
        .updated_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(event.event_id, format!("or:{id}:{updated_at}"));
    assert_eq!(event.changed_fields, ["locked", "updatedAt"]);
    assert_eq!(event.user.locked, Some(true));
    assert_eq!(event.user.email.as_deref(), Some("Jane.Doe@Acme.test"));
    assert_eq!(event.user.first_name.as_deref(), Some("Jane"));
    assert_eq!(event.user.username.as_deref(), Some("jdoe"));
    let reads: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .skip(reads_before as usize)
        .collect();
    assert_eq!(
        reads.len(),
        2,
        "each partial update is completed by one GET: {reads:?}"
    );
    assert!(
        reads
            .iter()
            .all(|r| r.method == "GET" && r.path == format!("/api/v2/users/{id}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_missing_signatures_are_answered_401_and_go_nowhere() {
    let sink = Arc::new(Recorder::default());
    let f = fixture(sink.clone()).await;
    f.sim.add_webhook(NewSimWebhook::users(
        f.url.clone(),
        Some("someone else's secret"),
        1,
    ));
    f.sim
        .add_webhook(NewSimWebhook::users(f.url.clone(), None, 1));
    f.sim.seed_user(jane());
    let deliveries = f.sim.wait_for_webhook_deliveries(2, WAIT).await;
    assert_eq!(statuses(&deliveries), [Some(401), Some(401)]);
    assert!(
        deliveries.iter().all(|d| d.attempts == 1),
        "a 401 counts as delivered"
    );

    assert!(sink.accepted.lock().unwrap().is_empty());
    assert!(sink.refused.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_signature_is_refused_and_the_next_delivery_accepted() {
    let sink = Arc::new(Recorder::default());
    let f = fixture(sink.clone()).await;
    f.sim
        .add_webhook(NewSimWebhook::users(f.url.clone(), Some(SECRET), 2));
    f.sim.corrupt_webhook_signatures(1);
    f.sim.seed_user(jane());
    f.sim.seed_user(SimUser::new(0, "second@acme.test"));
    let deliveries = f.sim.wait_for_webhook_deliveries(2, WAIT).await;
    assert_eq!(statuses(&deliveries), [Some(401), Some(200)]);
    let accepted = sink.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].user.email.as_deref(), Some("second@acme.test"));
    assert!(sink.refused.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_payload_is_refused_to_the_sink_and_answered_400() {
    let sink = Arc::new(Recorder::default());
    let f = fixture(sink.clone()).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let body = body.to_string();
        http.post(&f.url)
            .header(SIGNATURE_HEADER, sign(SECRET.as_bytes(), body.as_bytes()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let bad = json!({
        "data": {"type": "user", "id": "42", "attributes": {"locked": "yes", "updatedAt": "2025-01-01T00:00:00.000Z"}},
        "meta": {"eventName": "user.updated", "deliveredAt": "2025-01-01T00:00:01.000Z"}
    });
    let response = post(bad.clone()).await.unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("data.attributes.locked"), "{error}");
    assert_eq!(answer["dead_lettered"], json!(true));
    let refused = sink.refused.lock().unwrap().clone();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].1, bad.to_string().into_bytes(), "the raw body");
    assert!(refused[0].2.contains("data.attributes.locked"));

    let prospect = json!({
        "data": {"type": "prospect", "id": "7", "attributes": {}},
        "meta": {"eventName": "prospect.created", "deliveredAt": "2025-01-01T00:00:01.000Z"}
    });
    let response = post(prospect).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], json!("ignored"));

    let unsigned = http.post(&f.url).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let answer: Value = unsigned.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Outreach-Webhook-Signature")
    );
    assert!(!answer.to_string().contains(SECRET));
    assert_eq!(sink.refused.lock().unwrap().len(), 1);
    assert!(sink.accepted.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_publishes_events_and_dead_letters_refusals() {
    let mock = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        partitions: 1,
        message_timeout: Duration::from_millis(5_000),
        ..KafkaConfig::default()
    };
    mock.create_topic(&config.topic, 1, 1).unwrap();
    mock.create_topic(&config.dead_letter_topic, 1, 1).unwrap();
    let publisher = Arc::new(ChangePublisher::new(&config).unwrap());
    let f = fixture(Arc::new(KafkaSink::new(publisher))).await;
    f.sim
        .add_webhook(NewSimWebhook::users(f.url.clone(), Some(SECRET), 2));
    let id = f.sim.seed_user(jane());
    let deliveries = f.sim.wait_for_webhook_deliveries(1, WAIT).await;
    assert_eq!(statuses(&deliveries), [Some(200)]);

    let body = br#"{"data":{"type":"user"},"meta":{"eventName":"user.updated"}}"#;
    let response = reqwest::Client::new()
        .post(&f.url)
        .header(SIGNATURE_HEADER, sign(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let event = first_record(&config.brokers, &config.topic).await;
    assert_eq!(event.key.as_deref(), Some("jane.doe@acme.test"));
    assert_eq!(
        event.header("source").as_deref(),
        Some("outreach"),
        "{:?}",
        event.headers
    );
    let change = UserChange::from_json(&event.payload).unwrap();
    assert_eq!(change.user_id, id.to_string());
    assert_eq!(event.header("event_id"), Some(change.event_id.clone()));

    let letter = first_record(&config.brokers, &config.dead_letter_topic).await;
    assert_eq!(letter.payload, body.to_vec());
    assert!(
        letter.header("reason").unwrap().contains("data.id"),
        "{:?}",
        letter.headers
    );
    assert_eq!(letter.header("source").as_deref(), Some("outreach"));
    assert!(letter.key.unwrap().starts_with("or:sha256:"));
}

struct Record {
    key: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Record {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

async fn first_record(brokers: &str, topic: &str) -> Record {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("webhooks-test-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let message = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a record arrives")
        .unwrap();
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}
