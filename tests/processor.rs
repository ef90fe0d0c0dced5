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
use usersync::engine::decision::{Action, DecisionRecord, Reason};
use usersync::engine::settings::SyncSettings;
use usersync::engine::state::{Mapping, StateScope, SyncState};
use usersync::kafka::{ChangePublisher, KafkaConfig};
use usersync::model::event::Position;
use usersync::model::event::UserChange;
use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;
use usersync::outreach::OutreachUser;
use usersync::outreach::OutreachUserId;
use usersync::roles::processor::{Processor, ProcessorError, ProcessorStats, role};
use usersync::salesforce::snapshot::{ReadPosition, snapshot};
use usersync::store::{
    AdminAction, AppliedEvent, DecisionPage, DecisionQuery, Lease, LeaseAnswer, LeaseClaim,
    MappingFilter, Pruned, ReplayCheckpoint, SealedAuthorization, Store, StoreError,
};
use usersync_sim::outreach::{OutreachSim, SimConfig, SimUser};

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
        message_timeout: Duration::from_millis(5_000),
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
    config.outreach.max_rate_limit_wait = Duration::from_secs(0);
    config.outreach.backoff_min = Duration::from_millis(1);
    config.outreach.backoff_max = Duration::from_millis(10);
    config.outreach.max_retries = 1;
    config.processor.retry_min = Duration::from_millis(50);
    config.processor.retry_max = Duration::from_millis(500);
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
    start_on(rig, rig.store.clone())
}

/// The processor of `rig` on another store (one that wraps the rig's).
fn start_on(rig: &Rig, store: Arc<dyn Store>) -> Running {
    let client = role::outreach_client(&rig.config.outreach).unwrap();
    let dead_letters = Arc::new(ChangePublisher::new(&rig.kafka).unwrap());
    let mut processor =
        Processor::new(&rig.config, store, client, dead_letters).expect("processor");
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

/// Events held on paused partitions while a second member joins the group: every partition is
/// revoked, and those given back to the processor are read again and applied once Outreach
/// answers. (librdkafka keeps a partition paused across a rebalance, while the processor forgets
/// the events it held on revoked partitions: a partition it gets back must not stay paused.)
#[tokio::test]
async fn events_held_when_a_rebalance_takes_their_partitions_are_applied_where_they_come_back() {
    // The broker waits up to the members' session timeout for them to join a rebalance.
    const SESSION_TIMEOUT_MS: &str = "6000";
    let mut rig = rig().await;
    rig.config.processor.session_timeout =
        Duration::from_millis(SESSION_TIMEOUT_MS.parse().unwrap());
    seed(&rig).await;
    rig.outreach.reset_requests();
    let running = start(&rig);
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

    // One new user per partition, each create refused until the faults are cleared.
    rig.outreach.set_error_ratio(1.0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .create()
        .unwrap();
    let mut creates = Vec::new();
    for partition in 0..3 {
        let id = format!("00500000000001{partition}");
        let user = sf_user(
            &id,
            &format!("held{partition}@def.com"),
            true,
            "2025-02-01T00:00:00Z",
        );
        let create = event(&user);
        let payload = serde_json::to_vec(&create).unwrap();
        let key = create.kafka_key();
        producer
            .send(
                FutureRecord::to(&rig.kafka.topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&payload),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
        creates.push(create);
    }
    // Each attempt is two refused POSTs (the client retries once): every event was tried.
    until("Outreach has refused a create of every event", || async {
        let refused = rig.outreach.requests();
        let refused = refused
            .iter()
            .filter(|r| r.method == "POST" && r.status >= 500);
        refused.count() >= 2 * creates.len()
    })
    .await;

    // Another member joins: every partition is revoked, then shared between the two.
    let other: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.mock.bootstrap_servers())
        .set("group.id", &rig.config.processor.group_id)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .create()
        .unwrap();
    other.subscribe(&[&rig.kafka.topic]).unwrap();
    let mut taken = Vec::new();
    until("the second member has partitions", || {
        let _ = other.poll(Duration::ZERO);
        taken = other
            .assignment()
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        std::future::ready(!taken.is_empty())
    })
    .await;
    assert!(
        taken.len() < creates.len(),
        "the processor kept some: {taken:?}"
    );

    rig.outreach.clear_faults();
    let kept: Vec<&UserChange> = (0..)
        .zip(&creates)
        .filter(|(partition, _)| !taken.contains(partition))
        .map(|(_, create)| create)
        .collect();
    until(
        "the events of the partitions given back are applied",
        || async {
            for create in &kept {
                if !rig.store.is_applied(&create.event_id).await.unwrap() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let stats = running.stop().await;
    drop(other);
    assert!(stats.retries >= 3, "the events were held: {stats:?}");
    for create in kept {
        let email = create.user.email.as_deref().unwrap();
        let created = rig
            .outreach
            .users()
            .into_iter()
            .filter(|u| u.email == email);
        assert_eq!(created.count(), 1, "exactly one Outreach user {email}");
    }
}

#[tokio::test]
async fn offsets_are_committed_past_processed_events_so_a_restart_reads_nothing_twice() {
    let mut rig = rig().await;
    // The mock cluster gives the partitions to the restarted processor only once the stopped
    // one's session has run out.
    rig.config.processor.session_timeout = Duration::from_millis(6_000);
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

/// The rig's store, where another replica gets in first: just before the processor's first
/// record goes through, `joining` is written into the store as that replica's change to the
/// same email group, so the record was decided on a state that no longer holds.
struct AnotherReplicaFirst {
    inner: Arc<dyn Store>,
    /// What the other replica writes before each of the next records, one write per record.
    writes: std::sync::Mutex<std::collections::VecDeque<Vec<SalesforceUser>>>,
}

impl AnotherReplicaFirst {
    fn wrapping(inner: Arc<dyn Store>, joining: Vec<SalesforceUser>) -> Arc<dyn Store> {
        AnotherReplicaFirst::before_records(inner, vec![joining])
    }

    /// Another replica that writes `writes[n]` just before the processor's record number `n`.
    fn before_records(inner: Arc<dyn Store>, writes: Vec<Vec<SalesforceUser>>) -> Arc<dyn Store> {
        Arc::new(AnotherReplicaFirst {
            inner,
            writes: std::sync::Mutex::new(writes.into()),
        })
    }
}

#[async_trait::async_trait]
impl Store for AnotherReplicaFirst {
    async fn record(&self, applied: &AppliedEvent) -> Result<(), StoreError> {
        let write = self.writes.lock().unwrap().pop_front();
        if let Some(users) = write {
            self.inner.put_salesforce_users(&users).await?;
        }
        self.inner.record(applied).await
    }
    async fn load_state(&self, scope: &StateScope) -> Result<SyncState, StoreError> {
        self.inner.load_state(scope).await
    }
    async fn salesforce_user(
        &self,
        id: &SalesforceId,
    ) -> Result<Option<SalesforceUser>, StoreError> {
        self.inner.salesforce_user(id).await
    }
    async fn put_salesforce_users(&self, users: &[SalesforceUser]) -> Result<(), StoreError> {
        self.inner.put_salesforce_users(users).await
    }
    async fn outreach_user(&self, id: OutreachUserId) -> Result<Option<OutreachUser>, StoreError> {
        self.inner.outreach_user(id).await
    }
    async fn outreach_users_by_email(&self, email: &str) -> Result<Vec<OutreachUser>, StoreError> {
        self.inner.outreach_users_by_email(email).await
    }
    async fn put_outreach_users(&self, users: &[OutreachUser]) -> Result<(), StoreError> {
        self.inner.put_outreach_users(users).await
    }
    async fn keep_superseded_calls(
        &self,
        users: &[OutreachUser],
        decisions: &[DecisionRecord],
    ) -> Result<(), StoreError> {
        self.inner.keep_superseded_calls(users, decisions).await
    }
    async fn mappings(&self, filter: &MappingFilter) -> Result<Vec<Mapping>, StoreError> {
        self.inner.mappings(filter).await
    }
    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError> {
        self.inner.put_mapping(mapping).await
    }
    async fn remove_mapping(&self, id: OutreachUserId) -> Result<Option<Mapping>, StoreError> {
        self.inner.remove_mapping(id).await
    }
    async fn is_applied(&self, event_id: &str) -> Result<bool, StoreError> {
        self.inner.is_applied(event_id).await
    }
    async fn decisions(&self, query: &DecisionQuery) -> Result<DecisionPage, StoreError> {
        self.inner.decisions(query).await
    }
    async fn settings(&self) -> Result<Option<SyncSettings>, StoreError> {
        self.inner.settings().await
    }
    async fn save_settings(&self, settings: &SyncSettings) -> Result<(), StoreError> {
        self.inner.save_settings(settings).await
    }
    async fn save_settings_recorded(
        &self,
        settings: &SyncSettings,
        action: &AdminAction,
    ) -> Result<i64, StoreError> {
        self.inner.save_settings_recorded(settings, action).await
    }
    async fn authorization(&self, side: &str) -> Result<Option<SealedAuthorization>, StoreError> {
        self.inner.authorization(side).await
    }
    async fn save_authorization(
        &self,
        side: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        generation: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .save_authorization(side, sealed, key_fingerprint, generation)
            .await
    }
    async fn append_admin_action(&self, action: &AdminAction) -> Result<i64, StoreError> {
        self.inner.append_admin_action(action).await
    }
    async fn admin_actions(&self, limit: u32) -> Result<Vec<(i64, AdminAction)>, StoreError> {
        self.inner.admin_actions(limit).await
    }
    async fn prune_before(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        self.inner.prune_before(before, batch).await
    }
    async fn checkpoint(&self, topic: &str) -> Result<Option<ReplayCheckpoint>, StoreError> {
        self.inner.checkpoint(topic).await
    }
    async fn save_checkpoint(&self, checkpoint: &ReplayCheckpoint) -> Result<(), StoreError> {
        self.inner.save_checkpoint(checkpoint).await
    }
    async fn save_checkpoint_as(
        &self,
        checkpoint: &ReplayCheckpoint,
        claim: &LeaseClaim,
    ) -> Result<(), StoreError> {
        self.inner.save_checkpoint_as(checkpoint, claim).await
    }
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseAnswer, StoreError> {
        self.inner.take_lease(name, holder, ttl).await
    }
    async fn renew_lease(
        &self,
        claim: &LeaseClaim,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.inner.renew_lease(claim, ttl).await
    }
    async fn release_lease(&self, claim: &LeaseClaim) -> Result<(), StoreError> {
        self.inner.release_lease(claim).await
    }
    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.inner.lease(name).await
    }
    async fn newest_commit(
        &self,
        org_id: &SalesforceId,
    ) -> Result<Option<(i64, chrono::DateTime<chrono::Utc>)>, StoreError> {
        self.inner.newest_commit(org_id).await
    }
    async fn last_known_users(
        &self,
        org_id: &SalesforceId,
        ids: &[SalesforceId],
    ) -> Result<Vec<SalesforceUser>, StoreError> {
        self.inner.last_known_users(org_id, ids).await
    }
    async fn put_last_known_users(
        &self,
        org_id: &SalesforceId,
        users: &[(SalesforceUser, Option<Position>)],
    ) -> Result<(), StoreError> {
        self.inner.put_last_known_users(org_id, users).await
    }
}

/// The decision log, oldest first.
async fn log_of(rig: &Rig) -> Vec<usersync::engine::decision::DecisionRecord> {
    let page = rig
        .store
        .decisions(&DecisionQuery::default())
        .await
        .unwrap();
    page.records.into_iter().rev().map(|(_, r)| r).collect()
}

/// The Outreach API requests with this method whose path starts with `path`.
fn requests_to(rig: &Rig, method: &str, path: &str) -> usize {
    rig.outreach
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.starts_with(path))
        .count()
}

#[tokio::test]
async fn a_create_whose_record_is_refused_is_decided_again_as_a_link_never_a_second_create() {
    let rig = rig().await;
    // While Y's create is in flight, another replica records Z (inactive) joining Y's group.
    let z = sf_user(X, "new@def.com", false, "2025-01-15T00:00:00Z");
    let store = AnotherReplicaFirst::wrapping(rig.store.clone(), vec![z]);
    let running = start_on(&rig, store);
    let y = event(&sf_user(Y, "new@def.com", true, "2025-02-01T00:00:00Z"));
    produce_event(&rig, &y).await;
    until("Y's event is recorded", || async {
        rig.store.is_applied(&y.event_id).await.unwrap()
    })
    .await;
    let stats = running.stop().await;

    assert_eq!(stats.record_conflicts, 1, "{stats:?}");
    let created: Vec<SimUser> = rig
        .outreach
        .users()
        .into_iter()
        .filter(|u| u.email == "new@def.com")
        .collect();
    assert_eq!(created.len(), 1, "one Outreach user for Y");
    assert_eq!(
        requests_to(&rig, "POST", "/api/v2/users"),
        1,
        "the second decision saw the user the first one created: no second POST"
    );
    assert_eq!(mapped_to(&rig, created[0].id).await, Some(full(Y)));
    let log = log_of(&rig).await;
    let actions: Vec<Action> = log.iter().map(|r| r.action).collect();
    assert_eq!(actions, [Action::Create, Action::Link], "{log:#?}");
    assert!(
        log[0].message.contains("decided again"),
        "the create is told as made, not as what was recorded: {}",
        log[0].message
    );
    assert_eq!(log[0].outreach_calls, 1);
}

/// Another replica gets in before each of the first five records of Y's event: the processor
/// decides it five times, then puts it back, and records it when it comes round again. The
/// create of the first decision is in the log all the same, ahead of the link that was recorded:
/// every Outreach user usersync made is told by a `create`, whatever became of its event.
#[tokio::test]
async fn a_create_stays_in_the_log_when_its_event_is_put_back_after_refused_records() {
    let rig = rig().await;
    let writes = (0..5)
        .map(|n| {
            let mut z = sf_user(X, "new@def.com", false, "2025-01-15T00:00:00Z");
            z.title = Some(format!("write {n}"));
            vec![z]
        })
        .collect();
    let store = AnotherReplicaFirst::before_records(rig.store.clone(), writes);
    let running = start_on(&rig, store);
    let y = event(&sf_user(Y, "new@def.com", true, "2025-02-01T00:00:00Z"));
    produce_event(&rig, &y).await;
    until("Y's event is recorded", || async {
        rig.store.is_applied(&y.event_id).await.unwrap()
    })
    .await;
    let stats = running.stop().await;

    assert_eq!(stats.record_conflicts, 5, "{stats:?}");
    assert!(stats.retries >= 1, "the event was put back: {stats:?}");
    assert_eq!(
        requests_to(&rig, "POST", "/api/v2/users"),
        1,
        "one create, however often the event was decided"
    );
    let log = log_of(&rig).await;
    let decided: Vec<(Action, Reason)> = log.iter().map(|r| (r.action, r.reason)).collect();
    assert_eq!(
        decided,
        [
            (Action::Create, Reason::NewActiveUser),
            (Action::Link, Reason::EmailMatch)
        ],
        "{log:#?}"
    );
    assert!(
        log[0].message.contains("decided again"),
        "{}",
        log[0].message
    );
    let created = log[0]
        .outreach_user_id
        .expect("the create names the user it made");
    assert_eq!(log[1].outreach_user_id, Some(created));
    assert_eq!(mapped_to(&rig, created.0).await, Some(full(Y)));
}

#[tokio::test]
async fn an_update_whose_record_is_refused_is_not_sent_again() {
    let rig = rig().await;
    let one = seed(&rig).await;
    // While X's title change is in flight, another replica records Z joining X's group.
    let z = sf_user(Y, "abc@def.com", false, "2025-01-15T00:00:00Z");
    let store = AnotherReplicaFirst::wrapping(rig.store.clone(), vec![z]);
    let running = start_on(&rig, store);
    let mut x = sf_user(X, "abc@def.com", true, "2025-02-01T00:00:00Z");
    x.title = Some("VP".into());
    let change = event(&x);
    produce_event(&rig, &change).await;
    until("X's change is recorded", || async {
        rig.store.is_applied(&change.event_id).await.unwrap()
    })
    .await;
    let stats = running.stop().await;

    assert_eq!(stats.record_conflicts, 1, "{stats:?}");
    assert_eq!(
        requests_to(&rig, "PATCH", &format!("/api/v2/users/{one}")),
        1,
        "the second decision saw the title the first one sent"
    );
    assert_eq!(rig.outreach.user(one).unwrap().title.as_deref(), Some("VP"));
    let log = log_of(&rig).await;
    let decided: Vec<(Action, Reason)> = log.iter().map(|r| (r.action, r.reason)).collect();
    assert_eq!(
        decided,
        [
            (Action::Update, Reason::MappedUserChanged),
            (Action::Skip, Reason::UpToDate)
        ],
        "{log:#?}"
    );
}
