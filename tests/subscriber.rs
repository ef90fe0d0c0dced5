//! The subscriber end to end in one process: the Salesforce simulator over real sockets
//! (OAuth, Pub/Sub gRPC, REST) → the subscriber → librdkafka's mock cluster, with the replay
//! checkpoint in a SQLite store. Each test reads back what reached Kafka.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::watch;
use usersync::config::{SalesforceConfig, Transport};
use usersync::connection::Connections;
use usersync::kafka::{ChangePublisher, KafkaConfig, TransactionalPublisher, read_checkpoint};
use usersync::model::event::{ChangeKind, UserChange};
use usersync::roles::subscriber::CometdSubscriber;
use usersync::roles::subscriber::lease::{self, Fence, LeaseSettings};
use usersync::roles::subscriber::{
    ReplayRequest, StreamStart, Subscriber, SubscriberError, SubscriberStats,
};
use usersync::salesforce::auth::{SalesforceCredentials, Secret};
use usersync::salesforce::replay_from::ReplayFrom;
use usersync::salesforce::rest::{CredentialsTokenSource, RestRetry, SalesforceRest};
use usersync::store::Store;
use usersync_sim::salesforce::pubsub::StreamFault;
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

const PRIVATE_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key_pub.pem");
const ADMIN: &str = "integration@acme.example";
const TOPIC: &str = "/data/UserChangeEvent";
const WAIT: Duration = Duration::from_secs(20);

struct Rig {
    sim: SalesforceSim,
    mock: MockCluster<'static, DefaultProducerContext>,
    kafka: KafkaConfig,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let sim = SalesforceSim::start(SfSimConfig::new(PUBLIC_KEY))
        .await
        .expect("simulator starts");
    sim.add_user(ADMIN);
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        partitions: 3,
        message_timeout: Duration::from_millis(5_000),
        ..KafkaConfig::default()
    };
    for topic in [&kafka.topic, &kafka.dead_letter_topic] {
        mock.create_topic(topic, 3, 1).expect("topic");
    }
    mock.create_topic(&kafka.checkpoint_topic, 1, 1)
        .expect("checkpoint topic");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("usersync.db").display());
    let store = usersync::store::open(&url).await.expect("store");
    Rig {
        sim,
        mock,
        kafka,
        store,
        _dir: dir,
    }
}

/// A running subscriber and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<(Result<(), SubscriberError>, SubscriberStats)>,
}

impl Running {
    async fn stop(self) -> SubscriberStats {
        self.stop.send(true).unwrap();
        let (outcome, stats) = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .unwrap();
        outcome.expect("a clean stop");
        stats
    }
}

async fn start(rig: &Rig) -> Running {
    start_with(rig, Transport::Pubsub).await
}

async fn start_with(rig: &Rig, transport: Transport) -> Running {
    launch(rig, transport, None).await
}

/// Starts a subscriber in transactional mode with `transactional_id`.
async fn start_transactional(rig: &Rig, transactional_id: &str) -> Running {
    launch(rig, Transport::Pubsub, Some(transactional_id)).await
}

async fn launch(rig: &Rig, transport: Transport, transactional_id: Option<&str>) -> Running {
    launch_with(rig, transport, transactional_id, None, None).await
}

/// Starts a subscriber that publishes only while `fence` holds (as when instances share a
/// lease).
async fn launch_fenced(
    rig: &Rig,
    transport: Transport,
    transactional_id: Option<&str>,
    fence: Option<Arc<Fence>>,
) -> Running {
    launch_with(rig, transport, transactional_id, fence, None).await
}

/// Starts a subscriber that honours `replay` (an admin's replay request) first.
async fn launch_replaying(
    rig: &Rig,
    transport: Transport,
    transactional_id: Option<&str>,
    replay: ReplayRequest,
) -> Running {
    launch_with(rig, transport, transactional_id, None, Some(replay)).await
}

/// Starts a subscriber, fenced by `fence` and honouring `replay` when given.
async fn launch_with(
    rig: &Rig,
    transport: Transport,
    transactional_id: Option<&str>,
    fence: Option<Arc<Fence>>,
    replay: Option<ReplayRequest>,
) -> Running {
    let creds = SalesforceCredentials::JwtBearer {
        login_url: rig.sim.login_url(),
        consumer_key: rig.sim.consumer_key(),
        username: ADMIN.to_owned(),
        private_key_pem: Secret::new(PRIVATE_KEY),
    };
    let tokens = Arc::new(CredentialsTokenSource::new(reqwest::Client::new(), creds));
    let session = tokens.session().await.expect("session");
    let rest = SalesforceRest::new(&session.instance_url, tokens.clone())
        .unwrap()
        .with_retry(RestRetry {
            max_retries: 2,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        });
    let publisher = Arc::new(ChangePublisher::new(&rig.kafka).expect("producer"));
    let config = SalesforceConfig {
        topic: TOPIC.into(),
        pubsub_endpoint: rig.sim.pubsub_url(),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..SalesforceConfig::default()
    };
    let start = StreamStart {
        replay_from: replay,
        ..StreamStart::default()
    };
    let transactions = match transactional_id {
        Some(id) => {
            let kafka = KafkaConfig {
                transactional_id: Some(id.to_owned()),
                ..rig.kafka.clone()
            };
            let publisher = TransactionalPublisher::start(&kafka)
                .await
                .expect("transactional producer");
            Some((Arc::new(publisher), kafka))
        }
        None => None,
    };
    let (stop, shutdown) = watch::channel(false);
    let task = match transport {
        Transport::Pubsub => {
            let mut subscriber =
                Subscriber::new(&config, start, tokens, rest, publisher, rig.store.clone())
                    .await
                    .expect("subscriber")
                    .with_fence(fence);
            if let Some((publisher, kafka)) = transactions {
                subscriber = subscriber.with_transactions(publisher, kafka);
            }
            tokio::spawn(async move {
                let outcome = subscriber.run(shutdown).await;
                (outcome, subscriber.stats().clone())
            })
        }
        Transport::Cometd => {
            let mut subscriber =
                CometdSubscriber::new(&config, start, tokens, rest, publisher, rig.store.clone())
                    .await
                    .expect("subscriber")
                    .with_fence(fence);
            tokio::spawn(async move {
                let outcome = subscriber.run(shutdown).await;
                if let Err(error) = &outcome {
                    eprintln!("the CometD subscriber failed: {error}");
                }
                (outcome, subscriber.stats().clone())
            })
        }
    };
    Running { stop, task }
}

/// Marks the records a test helper writes to learn where a topic stood; never an event.
const SENTINEL: &str = "usersync-test-sentinel:";

/// Reads records of `topic` from the beginning until `count` arrived, then writes a sentinel to
/// every partition and reads on until each came back: a record before a sentinel beyond
/// `count` is one too many. (Sentinels of earlier calls are passed over.)
async fn records(rig: &Rig, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .set(
            "group.id",
            format!("subscriber-test-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..3 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let next = || async {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .ok()?
            .unwrap()
            .detach();
        let sentinel = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix(SENTINEL))
            .map(str::to_owned);
        Some((message, sentinel))
    };
    let mut got = Vec::new();
    while got.len() < count {
        match next().await {
            Some((_, Some(_))) => {}
            Some((message, None)) => got.push(message),
            None => panic!("only {} of {count} records arrived on {topic}", got.len()),
        }
    }
    let mine = format!("{:016x}", rand::random::<u64>());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .create()
        .unwrap();
    let key = format!("{SENTINEL}{mine}");
    for p in 0..3 {
        producer
            .send(
                FutureRecord::<str, str>::to(topic).partition(p).key(&key),
                WAIT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("a sentinel to {topic}/{p}: {e}"));
    }
    let mut back = 0;
    while back < 3 {
        match next().await {
            Some((_, Some(theirs))) => back += usize::from(theirs == mine),
            Some((extra, None)) => panic!(
                "more than {count} records on {topic}: {:?}",
                extra.payload().map(String::from_utf8_lossy)
            ),
            None => panic!("the sentinels written to {topic} did not come back"),
        }
    }
    got
}

async fn events(rig: &Rig, count: usize) -> Vec<UserChange> {
    let mut events: Vec<UserChange> = records(rig, &rig.kafka.topic, count)
        .await
        .iter()
        .map(|m| UserChange::from_json(m.payload().unwrap()).expect("a valid user_change.v1"))
        .collect();
    events.sort_by(|a, b| {
        a.observed_at
            .cmp(&b.observed_at)
            .then(a.position().compare(&b.position()))
    });
    events
}

fn create(sim: &SalesforceSim, name: &str, email: &str) -> String {
    sim.create_user(
        json!({"Username": format!("{name}@acme.example"), "Email": email,
               "FirstName": name, "LastName": "Brown", "Title": "AE"}),
        &Writer::default(),
    )
    .expect("create")
}

/// The newest event per user, by position.
fn newest(events: &[UserChange]) -> BTreeMap<String, UserChange> {
    let mut newest: BTreeMap<String, UserChange> = BTreeMap::new();
    for event in events {
        let keep = newest
            .get(&event.user_id)
            .is_none_or(|held| held.position().compare(&event.position()).is_le());
        if keep {
            newest.insert(event.user_id.clone(), event.clone());
        }
    }
    newest
}

/// Every user of the simulated org (but the admin's) has its current state in Kafka.
fn assert_converged(rig: &Rig, events: &[UserChange]) {
    let newest = newest(events);
    for record in rig.sim.records() {
        let event = newest
            .get(&record.id)
            .unwrap_or_else(|| panic!("no event for {}", record.id));
        assert_eq!(
            event.user.email.as_deref(),
            record.get("Email").as_str(),
            "{}",
            record.id
        );
        assert_eq!(
            event.user.title.as_deref(),
            record.get("Title").as_str(),
            "{}",
            record.id
        );
        assert_eq!(
            event.user.is_active,
            record.get("IsActive").as_bool(),
            "{}",
            record.id
        );
    }
}

#[tokio::test]
async fn the_initial_load_then_every_change_reaches_kafka_with_full_state() {
    let rig = rig().await;
    let x = create(&rig.sim, "olga", "olga.brown@acme.example");
    create(&rig.sim, "ann", "ann@acme.example");
    let running = start(&rig).await;
    let loaded = events(&rig, 2).await;
    assert!(loaded.iter().all(|e| e.change == ChangeKind::Snapshot));

    let y = create(&rig.sim, "olga2", "Olga.Brown@acme.example");
    rig.sim.deactivate(&x).unwrap();
    rig.sim
        .update_users(
            std::slice::from_ref(&y),
            json!({"Title": "VP"}),
            &Writer::default(),
        )
        .unwrap();
    let all = events(&rig, 5).await;
    let stats = running.stop().await;
    assert_eq!(stats.snapshots_published, 2);
    assert_eq!(stats.events_published, 3);

    let streamed: Vec<&UserChange> = all
        .iter()
        .filter(|e| e.change != ChangeKind::Snapshot)
        .collect();
    assert_eq!(streamed[0].change, ChangeKind::Create);
    assert_eq!(streamed[0].user_id, y);
    // The deactivation is an UPDATE carrying only IsActive; the event has the full state,
    // merged with what the initial load read.
    assert_eq!(streamed[1].user_id, x);
    assert_eq!(streamed[1].user.is_active, Some(false));
    assert_eq!(streamed[1].user.first_name.as_deref(), Some("olga"));
    assert_eq!(
        streamed[1].user.email.as_deref(),
        Some("olga.brown@acme.example")
    );
    assert_eq!(streamed[2].user.title.as_deref(), Some("VP"));
    // Both users of one email share a key, so one partition orders them.
    let keyed = records(&rig, &rig.kafka.topic, 5).await;
    let keys: Vec<String> = keyed
        .iter()
        .filter(|m| {
            let e = UserChange::from_json(m.payload().unwrap()).unwrap();
            e.user_id == x || e.user_id == y
        })
        .map(|m| String::from_utf8_lossy(m.key().unwrap()).into_owned())
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "X's snapshot and deactivation, Y's create and update"
    );
    assert!(
        keys.iter().all(|k| k == "olga.brown@acme.example"),
        "{keys:?}"
    );
    let message = &keyed[0];
    let header_names: Vec<&str> = message.headers().unwrap().iter().map(|h| h.key).collect();
    assert_eq!(header_names, ["schema", "event_id", "source"]);
    assert_converged(&rig, &all);

    let checkpoint = rig.store.checkpoint(TOPIC).await.unwrap().expect("saved");
    assert_eq!(
        checkpoint.replay_id.len(),
        10,
        "the replay bytes as received"
    );
}

#[tokio::test]
async fn a_restart_resumes_after_the_checkpoint_without_repeating_confirmed_events() {
    let rig = rig().await;
    let a = create(&rig.sim, "a", "a@acme.example");
    let running = start(&rig).await;
    events(&rig, 1).await;
    // A streamed change gives the subscriber a position to save.
    create(&rig.sim, "b", "b@acme.example");
    events(&rig, 2).await;
    running.stop().await;
    assert!(rig.store.checkpoint(TOPIC).await.unwrap().is_some());

    // While stopped: two changes.
    create(&rig.sim, "c", "c@acme.example");
    rig.sim
        .update_users(
            std::slice::from_ref(&a),
            json!({"Title": "Boss"}),
            &Writer::default(),
        )
        .unwrap();
    let running = start(&rig).await;
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert_eq!(stats.resyncs, 0, "a checkpoint exists: no initial load");
    assert_eq!(
        stats.rereads, 0,
        "the last-known state of a user seen before the restart comes from the store"
    );
    let a_events: Vec<&UserChange> = all.iter().filter(|e| e.user_id == a).collect();
    assert_eq!(a_events.last().unwrap().user.title.as_deref(), Some("Boss"));
    assert_converged(&rig, &all);
}

#[tokio::test]
async fn a_gap_event_is_re_read_and_published_as_a_snapshot() {
    let rig = rig().await;
    let a = create(&rig.sim, "a", "a@acme.example");
    let running = start(&rig).await;
    events(&rig, 1).await;
    rig.sim
        .gap_update(
            std::slice::from_ref(&a),
            json!({"Title": "Changed in the database"}),
        )
        .unwrap();
    let all = events(&rig, 2).await;
    let stats = running.stop().await;
    assert_eq!(stats.rereads, 1);
    let last = all.last().unwrap();
    assert_eq!(last.change, ChangeKind::Snapshot);
    assert_eq!(last.user.title.as_deref(), Some("Changed in the database"));
    // The re-read sits where it was read in the stream: at the GAP event.
    let gap = rig.sim.retained_events().pop().unwrap();
    assert_eq!(gap.change.change_type, "GAP_UPDATE");
    assert_eq!(last.origin.commit_number, Some(gap.change.commit_number));
    assert_eq!(
        last.origin.commit_timestamp.map(|t| t.timestamp_millis()),
        Some(gap.change.commit_timestamp)
    );
    assert_eq!(last.origin.replay_id, Some(hex(&gap.replay_id())));
    assert_eq!(last.origin.change_type.as_deref(), Some("GAP_UPDATE"));
    assert_eq!(last.origin.sequence_number, None);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stream pinned at its newest position that stops before delivering one resumes by reading
/// only the users changed since the pin, not the whole org again; on either transport.
async fn a_stop_before_the_first_position_resumes_from_the_pin(transport: Transport) {
    let rig = rig().await;
    // Users last changed an hour ago: outside the resync margin of a pin made now.
    rig.sim
        .set_commit_clock(Some(chrono::Utc::now() - chrono::Duration::hours(1)));
    for name in ["a", "b", "c"] {
        create(&rig.sim, name, &format!("{name}@acme.example"));
    }
    rig.sim.set_commit_clock(None);
    let running = start_with(&rig, transport).await;
    let loaded = events(&rig, 3).await;
    assert!(loaded.iter().all(|e| e.change == ChangeKind::Snapshot));
    // Nothing happens on the stream, so it delivers no position; once Kafka confirmed the
    // load, the checkpoint is the pin.
    let key = match transport {
        Transport::Pubsub => TOPIC.to_owned(),
        Transport::Cometd => format!("cometd:{TOPIC}"),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let pin = loop {
        match rig.store.checkpoint(&key).await.unwrap() {
            Some(c) if c.replay_id.is_empty() => break c,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no pin saved: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pin.commit_timestamp.is_some(), "the pin has its time");
    let first = running.stop().await;
    assert_eq!(first.snapshots_published, 3);

    let d = create(&rig.sim, "d", "d@acme.example");
    let running = start_with(&rig, transport).await;
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert_eq!(stats.resyncs, 1);
    assert_eq!(
        stats.snapshots_published, 1,
        "only the user changed since the pin is read again"
    );
    let last = all.last().unwrap();
    assert_eq!(
        (last.user_id.as_str(), last.change),
        (d.as_str(), ChangeKind::Snapshot)
    );
    assert_converged(&rig, &all);
}

#[tokio::test]
async fn a_pubsub_stop_before_the_first_position_resumes_from_the_pin() {
    a_stop_before_the_first_position_resumes_from_the_pin(Transport::Pubsub).await;
}

#[tokio::test]
async fn a_cometd_stop_before_the_first_position_resumes_from_the_pin() {
    a_stop_before_the_first_position_resumes_from_the_pin(Transport::Cometd).await;
}

/// A holder whose renewals stop getting through (its store out of reach, its process starved)
/// stops publishing once its lease may have run out, before a standby can take it, although
/// Salesforce and Kafka still answer: what it then receives is left to the next holder.
async fn a_subscriber_whose_lease_ran_out_publishes_nothing_more(transport: Transport) {
    let rig = rig().await;
    create(&rig.sim, "a", "a@acme.example");
    let ttl = Duration::from_secs(3);
    let settings = LeaseSettings::for_topic(TOPIC, "first".into(), ttl);
    let (_keep, shutdown) = watch::channel(false);
    let held = lease::acquire(rig.store.clone(), &settings, &Connections::new(), shutdown)
        .await
        .expect("the store answers")
        .expect("a free lease is taken");
    let fence = held.fence();
    let running = launch_fenced(&rig, transport, None, Some(fence.clone())).await;
    let loaded = events(&rig, 1).await;
    assert_eq!(
        loaded[0].change,
        ChangeKind::Snapshot,
        "published while held"
    );

    // The renewals stop; the holder's own clock closes its fence before the lease can run out.
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT;
    while fence.check().is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the fence closes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let standby = LeaseSettings::for_topic(TOPIC, "second".into(), ttl);
    assert!(
        matches!(
            rig.store
                .take_lease(&standby.name, &standby.instance, ttl)
                .await
                .unwrap(),
            usersync::store::LeaseAnswer::HeldBy(_)
        ),
        "the fence closes while the lease is still the holder's"
    );

    create(&rig.sim, "b", "b@acme.example");
    let (outcome, stats) = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("the run ends by itself")
        .unwrap();
    let error = outcome.expect_err("the run ends on the lost lease");
    assert!(matches!(error, SubscriberError::LeaseLost(_)), "{error}");
    assert_eq!(stats.events_published, 0, "b's create is not published");
    let published = records(&rig, &rig.kafka.topic, 1).await;
    assert_eq!(published.len(), 1, "only the initial load reached Kafka");
}

#[tokio::test]
async fn a_pubsub_subscriber_whose_lease_ran_out_publishes_nothing_more() {
    a_subscriber_whose_lease_ran_out_publishes_nothing_more(Transport::Pubsub).await;
}

#[tokio::test]
async fn a_cometd_subscriber_whose_lease_ran_out_publishes_nothing_more() {
    a_subscriber_whose_lease_ran_out_publishes_nothing_more(Transport::Cometd).await;
}

#[tokio::test]
async fn an_overflow_resyncs_the_users_it_changed() {
    let rig = rig().await;
    let a = create(&rig.sim, "a", "a@acme.example");
    let b = create(&rig.sim, "b", "b@acme.example");
    let running = start(&rig).await;
    events(&rig, 2).await;
    rig.sim
        .overflow(
            &[a.clone(), b.clone()],
            json!({"Department": "Sales", "Title": "Rep"}),
        )
        .unwrap();
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert_eq!(stats.resyncs, 2, "the initial load and the overflow");
    assert!(
        all[2..]
            .iter()
            .all(|e| e.change == ChangeKind::Snapshot && e.user.title.as_deref() == Some("Rep"))
    );
}

#[tokio::test]
async fn an_expired_replay_id_is_resynced_and_nothing_is_lost() {
    let rig = rig().await;
    let a = create(&rig.sim, "a", "a@acme.example");
    let running = start(&rig).await;
    events(&rig, 1).await;
    rig.sim
        .update_users(
            std::slice::from_ref(&a),
            json!({"Title": "One"}),
            &Writer::default(),
        )
        .unwrap();
    events(&rig, 2).await;
    running.stop().await;

    // A long outage: changes, then the retention window passes them.
    rig.sim
        .update_users(
            std::slice::from_ref(&a),
            json!({"Title": "Two"}),
            &Writer::default(),
        )
        .unwrap();
    let b = create(&rig.sim, "b", "b@acme.example");
    rig.sim.expire_replay_window();

    let running = start(&rig).await;
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert_eq!(stats.resyncs, 1);
    let newest = newest(&all);
    assert_eq!(newest[&a].user.title.as_deref(), Some("Two"));
    assert!(newest.contains_key(&b));
    assert_converged(&rig, &all);
}

#[tokio::test]
async fn a_transient_outage_resumes_from_the_checkpoint_without_loss_or_duplicates() {
    let rig = rig().await;
    create(&rig.sim, "a", "a@acme.example");
    let running = start(&rig).await;
    events(&rig, 1).await;
    // A streamed change, confirmed, gives the checkpoint a position before the outage.
    create(&rig.sim, "b", "b@acme.example");
    events(&rig, 2).await;
    rig.sim.inject_stream_fault(StreamFault::ServiceUnavailable);
    create(&rig.sim, "c", "c@acme.example");
    create(&rig.sim, "d", "d@acme.example");
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert!(stats.resubscribes >= 1);
    // The process's metrics show the outage and the stream heard since (other tests of this
    // binary only add to them).
    let page = usersync::metrics::global().render(&Connections::new());
    let series = |name: &str| usersync::metrics::sample(&page, name);
    assert!(
        series("usersync_reconnects_total{side=\"salesforce\",reason=\"transient\"}") >= Some(1.0),
        "{page}"
    );
    let silence = series("usersync_salesforce_silence_seconds").expect("heard from");
    assert!(silence < WAIT.as_secs_f64(), "{page}");
    let lag = series("usersync_salesforce_lag_seconds").expect("a change was read");
    assert!(lag < WAIT.as_secs_f64(), "{page}");
    let ids: std::collections::BTreeSet<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        4,
        "four changes, four distinct events, none twice"
    );
    assert_converged(&rig, &all);
}

#[tokio::test]
async fn an_undecodable_event_is_dead_lettered_and_the_stream_goes_on() {
    let rig = rig().await;
    let running = start(&rig).await;
    create(&rig.sim, "a", "a@acme.example");
    events(&rig, 1).await;
    rig.sim
        .create_user_with_corrupt_event(
            json!({"Username": "bad@acme.example", "Email": "bad@acme.example"}),
        )
        .unwrap();
    create(&rig.sim, "c", "c@acme.example");
    events(&rig, 2).await;
    let letters = records(&rig, &rig.kafka.dead_letter_topic, 1).await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_letters, 1);
    let letter = &letters[0];
    let headers: BTreeMap<&str, String> = letter
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key,
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert!(
        headers["reason"].contains("schema"),
        "{}",
        headers["reason"]
    );
    assert_eq!(headers["source"], "salesforce");
    assert_eq!(headers["topic"], TOPIC);
    assert!(!letter.payload().unwrap().is_empty(), "the raw bytes");
}

#[tokio::test]
async fn the_cometd_transport_loads_streams_and_resumes_after_its_own_checkpoint() {
    let rig = rig().await;
    rig.sim.set_cometd_hold(Duration::from_millis(300));
    let a = create(&rig.sim, "a", "a@acme.example");
    let running = start_with(&rig, Transport::Cometd).await;
    let loaded = events(&rig, 1).await;
    assert_eq!(loaded[0].change, ChangeKind::Snapshot);
    let b = create(&rig.sim, "b", "b@acme.example");
    rig.sim.deactivate(&a).unwrap();
    let streamed = events(&rig, 3).await;
    running.stop().await;
    let deactivation = streamed
        .iter()
        .find(|e| e.user_id == a && e.change == ChangeKind::Update);
    let deactivation = deactivation.expect("the deactivation");
    assert_eq!(deactivation.origin.transport, "cometd");
    assert_eq!(deactivation.user.is_active, Some(false));
    assert_eq!(
        deactivation.user.email.as_deref(),
        Some("a@acme.example"),
        "merged"
    );
    let saved = rig
        .store
        .checkpoint("cometd:/data/UserChangeEvent")
        .await
        .unwrap();
    assert!(saved.is_some(), "CometD keeps its own checkpoint");
    assert!(rig.store.checkpoint(TOPIC).await.unwrap().is_none());

    rig.sim
        .update_users(
            std::slice::from_ref(&b),
            json!({"Title": "VP"}),
            &Writer::default(),
        )
        .unwrap();
    let running = start_with(&rig, Transport::Cometd).await;
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.resyncs, 0,
        "resumed after the checkpoint, no initial load"
    );
    assert_converged(&rig, &all);
}

#[tokio::test]
async fn in_transactional_mode_a_restart_resumes_from_the_checkpoint_committed_in_kafka() {
    let mut rig = rig().await;
    let a = create(&rig.sim, "a", "a@acme.example");
    let running = start_transactional(&rig, "usersync-subscriber-test").await;
    events(&rig, 1).await;
    create(&rig.sim, "b", "b@acme.example");
    events(&rig, 2).await;
    running.stop().await;
    let committed = read_checkpoint(&rig.kafka, TOPIC, WAIT)
        .await
        .expect("the checkpoint topic reads")
        .expect("a checkpoint was committed with the events");
    assert_eq!(
        committed.replay_id.len(),
        10,
        "the replay bytes as received"
    );
    assert!(committed.commit_timestamp.is_some());
    let mirrored = rig
        .store
        .checkpoint(TOPIC)
        .await
        .unwrap()
        .expect("mirrored");
    assert_eq!(mirrored.replay_id, committed.replay_id);

    // A new, empty store: the position can only come from Kafka.
    let url = format!("sqlite://{}", rig._dir.path().join("second.db").display());
    rig.store = usersync::store::open(&url).await.expect("store");
    create(&rig.sim, "c", "c@acme.example");
    rig.sim
        .update_users(
            std::slice::from_ref(&a),
            json!({"Title": "Boss"}),
            &Writer::default(),
        )
        .unwrap();
    let running = start_transactional(&rig, "usersync-subscriber-test").await;
    let all = events(&rig, 4).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.resyncs, 0,
        "resumed from Kafka's checkpoint: no initial load"
    );
    assert_eq!(
        stats.rereads, 1,
        "a's update is merged into a state the new store does not have, so a is re-read"
    );
    let a_events: Vec<&UserChange> = all.iter().filter(|e| e.user_id == a).collect();
    assert_eq!(a_events.last().unwrap().user.title.as_deref(), Some("Boss"));
    assert_converged(&rig, &all);
    let moved = read_checkpoint(&rig.kafka, TOPIC, WAIT)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        moved.replay_id, committed.replay_id,
        "the second run committed its own"
    );
}

#[tokio::test]
async fn in_transactional_mode_a_refused_commit_is_read_again_from_the_checkpoint() {
    let rig = rig().await;
    create(&rig.sim, "a", "a@acme.example");
    let running = start_transactional(&rig, "usersync-subscriber-refused").await;
    events(&rig, 1).await;
    create(&rig.sim, "b", "b@acme.example");
    events(&rig, 2).await;
    let before = read_checkpoint(&rig.kafka, TOPIC, WAIT)
        .await
        .unwrap()
        .unwrap();

    // The coordinator refuses the next commit: that batch is aborted, the stream is read
    // again from the checkpoint, and the change arrives in the next transaction.
    rig.mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN],
    );
    let c = create(&rig.sim, "c", "c@acme.example");
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let now = read_checkpoint(&rig.kafka, TOPIC, WAIT)
            .await
            .unwrap()
            .unwrap();
        if now != before {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no commit after the refused one"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stats = running.stop().await;
    assert!(
        stats.resubscribes >= 1,
        "the refused commit restarted the stream"
    );
    assert_eq!(after.replay_id.len(), 10);
    // The mock cluster shows aborted records to read_committed consumers, so c's create may
    // appear twice here; what matters is that it was committed after the refusal.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .set("group.id", "subscriber-test-refused")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&rig.kafka.topic]).unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("c's create arrives")
            .unwrap();
        if message
            .key()
            .is_some_and(|k| k.starts_with(SENTINEL.as_bytes()))
        {
            continue;
        }
        let event = UserChange::from_json(message.payload().unwrap()).unwrap();
        if event.user_id == c {
            assert_eq!(event.change, ChangeKind::Create);
            break;
        }
    }
}

/// Waits until the subscriber has saved a checkpoint from where `asked` starts.
async fn honoured(asked: &ReplayRequest) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while asked.is_pending() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint was saved from the replay's start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times each change read from the stream is on the topic, by event id.
fn copies(events: &[UserChange]) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for event in events.iter().filter(|e| e.change != ChangeKind::Snapshot) {
        *copies.entry(event.event_id.clone()).or_insert(0) += 1;
    }
    copies
}

#[tokio::test]
async fn in_transactional_mode_a_replay_commits_its_new_position_with_its_first_batch() {
    const ID: &str = "usersync-subscriber-replay";
    let rig = rig().await;
    create(&rig.sim, "a", "a@acme.example");
    let running = start_transactional(&rig, ID).await;
    events(&rig, 1).await;
    create(&rig.sim, "b", "b@acme.example");
    events(&rig, 2).await;
    running.stop().await;
    let newest = read_checkpoint(&rig.kafka, TOPIC, WAIT)
        .await
        .unwrap()
        .expect("a checkpoint committed in Kafka");
    assert_eq!(newest.replay_id, rig.sim.latest_replay_id());

    // From earliest: both creates Salesforce holds (a's came before the initial load) are
    // committed again, then the checkpoint is the newest position again.
    let asked = ReplayRequest::new(ReplayFrom::Earliest);
    let running = launch_replaying(&rig, Transport::Pubsub, Some(ID), asked.clone()).await;
    let all = events(&rig, 4).await;
    honoured(&asked).await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.events_published, stats.resyncs),
        (2, 0),
        "read from the stream, no user read through REST"
    );
    assert_eq!(copies(&all).len(), 2, "{all:?}");
    assert_eq!(
        read_checkpoint(&rig.kafka, TOPIC, WAIT)
            .await
            .unwrap()
            .unwrap(),
        newest
    );

    // From latest: the stream is pinned at its newest position; the pin is the checkpoint
    // committed in Kafka (and its copy in the store), and the next change comes after it.
    let asked = ReplayRequest::new(ReplayFrom::Latest);
    let before = chrono::Utc::now();
    let running = launch_replaying(&rig, Transport::Pubsub, Some(ID), asked.clone()).await;
    honoured(&asked).await;
    let pin = read_checkpoint(&rig.kafka, TOPIC, WAIT)
        .await
        .unwrap()
        .unwrap();
    assert!(pin.replay_id.is_empty(), "{pin:?}");
    assert!(
        pin.commit_timestamp.is_some_and(|at| at >= before),
        "{pin:?}"
    );
    let mirrored = rig.store.checkpoint(TOPIC).await.unwrap().unwrap();
    assert!(mirrored.replay_id.is_empty());
    let c = create(&rig.sim, "c", "c@acme.example");
    let all = events(&rig, 5).await;
    let stats = running.stop().await;
    assert_eq!((stats.events_published, stats.resyncs), (1, 0));
    assert_eq!(all.iter().filter(|e| e.user_id == c).count(), 1);
    assert_eq!(
        read_checkpoint(&rig.kafka, TOPIC, WAIT)
            .await
            .unwrap()
            .unwrap()
            .replay_id,
        rig.sim.latest_replay_id()
    );
}

#[tokio::test]
async fn on_cometd_a_replay_after_a_decimal_replay_id_reads_what_follows_it() {
    let rig = rig().await;
    // The checkpoint moves when a long-poll returns: a short hold keeps the test short.
    rig.sim.set_cometd_hold(Duration::from_millis(300));
    create(&rig.sim, "x", "x@acme.example");
    let running = start_with(&rig, Transport::Cometd).await;
    // The initial load's snapshot: the stream is open from here on.
    events(&rig, 1).await;
    let a = create(&rig.sim, "a", "a@acme.example");
    create(&rig.sim, "b", "b@acme.example");
    create(&rig.sim, "c", "c@acme.example");
    let first = events(&rig, 4).await;
    running.stop().await;
    let key = "cometd:/data/UserChangeEvent";
    let newest = rig.store.checkpoint(key).await.unwrap().unwrap();
    assert_eq!(newest.replay_id.len(), 8);
    let after = first
        .iter()
        .find(|e| e.user_id == a)
        .and_then(|e| e.origin.replay_id.clone())
        .unwrap();
    assert!(after.chars().all(|c| c.is_ascii_digit()), "{after}");

    let from = ReplayFrom::parse(&after, Transport::Cometd).unwrap();
    let asked = ReplayRequest::new(from);
    let running = launch_replaying(&rig, Transport::Cometd, None, asked.clone()).await;
    let all = events(&rig, 6).await;
    honoured(&asked).await;
    let stats = running.stop().await;
    assert_eq!((stats.events_published, stats.resyncs), (2, 0));
    let counted = copies(&all);
    let twice: Vec<&UserChange> = all
        .iter()
        .filter(|e| counted.get(&e.event_id) == Some(&2))
        .collect();
    assert!(
        twice.iter().all(|e| e.user_id != a) && twice.len() == 4,
        "b's and c's creates again, not a's: {twice:?}"
    );
    let back = rig.store.checkpoint(key).await.unwrap().unwrap();
    assert_eq!(
        back.replay_id, newest.replay_id,
        "back at the newest position"
    );
}
