//! The processor in one process: events produced to librdkafka's mock cluster → the processor
//! (a real consumer group) → the Outreach simulator over real sockets, with a SQLite store.
//! Each test reads back what Outreach and the store ended with.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use usersync::config::{Config, Secret};
use usersync::engine::decision::Action;
use usersync::engine::state::{Mapping, SalesforceUser};
use usersync::event::UserChange;
use usersync::kafka::{ChangePublisher, KafkaConfig};
use usersync::outreach::OutreachUserId;
use usersync::processor::{Processor, ProcessorError, ProcessorStats, role};
use usersync::salesforce::id::SalesforceId;
use usersync::salesforce::snapshot::{ReadPosition, snapshot};
use usersync::sim::outreach::{OutreachSim, SimConfig, SimUser};
use usersync::store::{MappingFilter, Store};

const WAIT: Duration = Duration::from_secs(30);
const X: &str = "005000000000001";
const Y: &str = "005000000000002";
const ORG: &str = "00D000000000001";

struct Rig {
    mock: MockCluster<'static, DefaultProducerContext>,
    kafka: KafkaConfig,
    outreach: OutreachSim,
    store: Arc<dyn Store>,
    config: Config,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        partitions: 3,
        message_timeout_ms: 5_000,
        ..KafkaConfig::default()
    };
    for topic in [&kafka.topic, &kafka.dead_letter_topic] {
        mock.create_topic(topic, 3, 1).expect("topic");
    }
    let outreach = OutreachSim::start(SimConfig {
        mint_throttle: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .expect("Outreach simulator");
    let tokens = outreach.issue_tokens(&["users.all"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("usersync.db").display());
    let store = usersync::store::open(&url).await.expect("store");
    let defaults = SimConfig::default();
    let mut config = Config {
        kafka: kafka.clone(),
        ..Config::default()
    };
    config.store.url = url;
    config.outreach.api_url = outreach.api_url();
    config.outreach.token_url = outreach.token_url();
    config.outreach.client_id = defaults.client_id;
    config.outreach.client_secret = Secret::new(&defaults.client_secret);
    config.outreach.redirect_uri = defaults.redirect_uri;
    config.outreach.refresh_token = Secret::new(&tokens.refresh_token);
    config.outreach.max_rate_limit_wait_seconds = 0;
    config.outreach.backoff_min_ms = 1;
    config.outreach.backoff_max_ms = 10;
    config.outreach.max_retries = 1;
    config.processor.retry_min_ms = 50;
    config.processor.retry_max_ms = 500;
    Rig {
        mock,
        kafka,
        outreach,
        store,
        config,
        _dir: dir,
    }
}

fn sf_user(id: &str, email: &str, active: bool, modified: &str) -> SalesforceUser {
    SalesforceUser {
        id: SalesforceId::parse(id).unwrap(),
        email: Some(email.into()),
        username: Some(format!("{id}@acme.example")),
        first_name: Some("Ann".into()),
        last_name: Some(format!("Lee {id}")),
        title: None,
        is_active: active,
        created_date: Some("2025-01-01T00:00:00Z".parse().unwrap()),
        last_modified_date: Some(modified.parse().unwrap()),
        applied: None,
    }
}

/// The user read through REST at its `last_modified_date`, before any commit was seen: later
/// reads of the same user are newer.
fn event(user: &SalesforceUser) -> UserChange {
    snapshot(
        user,
        &SalesforceId::parse(ORG).unwrap(),
        &ReadPosition::default(),
        user.last_modified_date
            .expect("test users have a modification date"),
    )
}

async fn produce(rig: &Rig, key: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&rig.kafka.topic).key(key).payload(payload),
            WAIT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

async fn produce_event(rig: &Rig, event: &UserChange) {
    produce(rig, &event.kafka_key(), &serde_json::to_vec(event).unwrap()).await;
}

/// The seed state: Outreach user 1 (abc@def.com) mapped to Salesforce user X.
async fn seed(rig: &Rig) -> i64 {
    let mut one = SimUser::new(1, "abc@def.com");
    one.first_name = Some("Ann".into());
    let id = rig.outreach.seed_user(one);
    let x = sf_user(X, "abc@def.com", true, "2025-01-01T00:00:00Z");
    rig.store.put_salesforce_users(&[x]).await.unwrap();
    let client = role::outreach_client(&rig.config.outreach).unwrap();
    let users = client.list_users().await.unwrap().value;
    rig.store.put_outreach_users(&users).await.unwrap();
    rig.store
        .put_mapping(&Mapping {
            outreach_user_id: OutreachUserId(id),
            salesforce_user_id: SalesforceId::parse(X).unwrap(),
            locked_by_usersync: false,
        })
        .await
        .unwrap();
    id
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<(Result<(), ProcessorError>, ProcessorStats)>,
}

impl Running {
    async fn stop(self) -> ProcessorStats {
        self.stop.send(true).unwrap();
        let (outcome, stats) = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .unwrap();
        outcome.expect("a clean stop");
        stats
    }
}

fn start(rig: &Rig) -> Running {
    let client = role::outreach_client(&rig.config.outreach).unwrap();
    let dead_letters = Arc::new(ChangePublisher::new(&rig.kafka).unwrap());
    let mut processor = Processor::new(
        &rig.kafka,
        role::settings(&rig.config),
        rig.store.clone(),
        client,
        dead_letters,
    )
    .expect("processor");
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(async move {
        let outcome = processor.run(shutdown).await;
        (outcome, processor.stats.clone())
    });
    Running { stop, task }
}

async fn mapped_to(rig: &Rig, outreach_id: i64) -> Option<String> {
    rig.store
        .mappings(&MappingFilter {
            outreach_user_id: Some(OutreachUserId(outreach_id)),
            ..MappingFilter::default()
        })
        .await
        .unwrap()
        .first()
        .map(|m| m.salesforce_user_id.as_str().to_owned())
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn full(id: &str) -> String {
    SalesforceId::parse(id).unwrap().as_str().to_owned()
}

#[tokio::test]
async fn the_seed_example_remaps_outreach_user_1_to_the_new_active_user() {
    let rig = rig().await;
    let one = seed(&rig).await;
    let running = start(&rig);
    produce_event(
        &rig,
        &event(&sf_user(Y, "abc@def.com", true, "2025-02-01T00:00:00Z")),
    )
    .await;
    produce_event(
        &rig,
        &event(&sf_user(X, "abc@def.com", false, "2025-02-02T00:00:00Z")),
    )
    .await;
    until("user 1 is mapped to Y", || async {
        mapped_to(&rig, one).await == Some(full(Y))
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(stats.applied, 2);
    assert_eq!(
        rig.outreach.users().len(),
        1,
        "no Outreach user was created"
    );
    let log = rig
        .store
        .decisions(&usersync::store::DecisionQuery::default())
        .await
        .unwrap();
    let actions: Vec<Action> = log.records.iter().rev().map(|(_, r)| r.action).collect();
    assert_eq!(actions, [Action::Conflict, Action::Remap], "{log:?}");
    let outreach_user = rig.outreach.user(one).unwrap();
    assert_eq!(
        outreach_user.last_name.as_deref(),
        Some(format!("Lee {Y}").as_str())
    );
}

#[tokio::test]
async fn a_redelivered_event_is_skipped_without_an_outreach_call() {
    let rig = rig().await;
    seed(&rig).await;
    let create = event(&sf_user(Y, "new@def.com", true, "2025-02-01T00:00:00Z"));
    let running = start(&rig);
    produce_event(&rig, &create).await;
    until("Y's Outreach user exists", || async {
        rig.outreach.users().len() == 2
    })
    .await;
    let calls = rig.outreach.request_count();
    produce_event(&rig, &create).await;
    // A later change of the same user, same key, so same partition: once it is applied, the
    // duplicate before it has been read.
    let mut later_user = sf_user(Y, "new@def.com", true, "2025-02-03T00:00:00Z");
    later_user.title = Some("VP".into());
    let later = event(&later_user);
    produce_event(&rig, &later).await;
    until("the later change is applied", || async {
        rig.store.is_applied(&later.event_id).await.unwrap()
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(
        rig.outreach.request_count(),
        calls + 1,
        "one call for the title change, none for the duplicate"
    );
    assert_eq!(rig.outreach.users().len(), 2);
}

#[tokio::test]
async fn an_undecodable_record_is_dead_lettered_and_the_partition_goes_on() {
    let rig = rig().await;
    seed(&rig).await;
    let running = start(&rig);
    produce(&rig, "abc@def.com", b"{\"schema\":\"user_change.v1\"").await;
    produce_event(
        &rig,
        &event(&sf_user(Y, "abc@def.com", true, "2025-02-01T00:00:00Z")),
    )
    .await;
    until("Y's event is decided", || async {
        rig.store
            .is_applied(&event(&sf_user(Y, "abc@def.com", true, "2025-02-01T00:00:00Z")).event_id)
            .await
            .unwrap()
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_letters, 1);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&rig.kafka.dead_letter_topic]).unwrap();
    let letter = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(
        letter.payload(),
        Some(&b"{\"schema\":\"user_change.v1\""[..])
    );
    let headers = letter.headers().unwrap();
    let reason = headers
        .iter()
        .find(|h| h.key == "reason")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap();
    assert!(
        reason.contains("not a valid user_change.v1 event"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_rate_limited_event_waits_and_is_applied_once_outreach_takes_it() {
    let rig = rig().await;
    seed(&rig).await;
    rig.outreach.reset_requests();
    let running = start(&rig);
    // Let the index load go through first, then refuse the next requests.
    until(
        "the processor has loaded the Outreach user index",
        || async {
            rig.outreach
                .requests()
                .iter()
                .any(|r| r.method == "GET" && r.path.contains("/users") && r.status == 200)
        },
    )
    .await;
    rig.outreach.rate_limit_storm(3);
    let create = event(&sf_user(Y, "new@def.com", true, "2025-02-01T00:00:00Z"));
    produce_event(&rig, &create).await;
    until("Y's create is applied", || async {
        rig.store.is_applied(&create.event_id).await.unwrap()
    })
    .await;
    let stats = running.stop().await;
    assert!(stats.retries >= 1, "{stats:?}");
    let created: Vec<SimUser> = rig
        .outreach
        .users()
        .into_iter()
        .filter(|u| u.email == "new@def.com")
        .collect();
    assert_eq!(created.len(), 1, "exactly one Outreach user for Y");
}

#[tokio::test]
async fn offsets_are_committed_past_processed_events_so_a_restart_reads_nothing_twice() {
    let mut rig = rig().await;
    // The mock cluster gives the partitions to the restarted processor only once the stopped
    // one's session has run out.
    rig.config.processor.session_timeout_ms = 6_000;
    seed(&rig).await;
    let running = start(&rig);
    let first = event(&sf_user(Y, "new@def.com", true, "2025-02-01T00:00:00Z"));
    produce_event(&rig, &first).await;
    until("the event is applied", || async {
        rig.store.is_applied(&first.event_id).await.unwrap()
    })
    .await;
    running.stop().await;

    // The group's committed offset is the next record to read: one past the event.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .set("group.id", &rig.config.processor.group_id)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition(&rig.kafka.topic, p);
    }
    let committed = reader.committed_offsets(partitions, WAIT).unwrap();
    let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert!(
        offsets.contains(&Offset::Offset(1)),
        "one record read in one partition: {offsets:?}"
    );

    // A later event of the same email lands behind the first in its partition: once it is
    // applied, a re-read of the first would have come before it.
    let running = start(&rig);
    let sentinel = event(&sf_user(Y, "new@def.com", true, "2025-02-02T00:00:00Z"));
    produce_event(&rig, &sentinel).await;
    until("the later event is applied", || async {
        rig.store.is_applied(&sentinel.event_id).await.unwrap()
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(
        stats.records, 1,
        "only the later event read after the restart: {stats:?}"
    );
}
