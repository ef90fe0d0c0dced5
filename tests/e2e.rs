//! End to end on a real Kafka-protocol broker: every part is its own process of the real
//! binary — `usersync sim salesforce`, `usersync sim outreach`, `usersync subscriber`,
//! `usersync processor` — talking over loopback sockets to a tansu broker that
//! `scripts/test.sh` starts and names in `USERSYNC_TEST_KAFKA_BROKERS`. The test drives the
//! simulators through their control APIs and reads the outcome from the simulators and the
//! store.
//!
//! Without that variable the tests are skipped with a notice, unless `CI` is set: there they
//! fail, because CI must prove the pipeline on a broker.
//!
//! The scenarios: the seed example in both orders; a thousand random changes whose
//! end state must equal what `usersync decide` computes from the same events; `kill -9` of the
//! processor and of the subscriber mid-run. And roles started together on a fresh store, SQLite
//! and PostgreSQL, and two processor replicas sharing a PostgreSQL store under random email
//! changes (the PostgreSQL ones also need `USERSYNC_TEST_DATABASE_URL`, under the same rule).
//!
//! Each test uses its own topics and consumer group, so tests share one broker safely.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Timelike;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::process::Process;
use usersync::app::scenario::OutputDecision;
use usersync::engine::decision::{Action, DecisionRecord};
use usersync::engine::settings::SyncSettings;
use usersync::engine::state::Mapping;
use usersync::model::event::UserChange;
use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;
use usersync::outreach::{OutreachUser, OutreachUserId};
use usersync::store::{DecisionQuery, MappingFilter, Store};

const BROKERS_VAR: &str = "USERSYNC_TEST_KAFKA_BROKERS";
const WAIT: Duration = Duration::from_secs(90);
const RUN_AS: &str = "integration@acme.example";
const EMAIL: &str = "abc@def.com";

/// librdkafka settings for the test broker, `key=value` pairs separated by `;`: the TLS and
/// SASL settings when `scripts/test.sh` runs the suite again on its secure broker.
const PROPERTIES_VAR: &str = "USERSYNC_TEST_KAFKA_PROPERTIES";

fn broker_properties() -> Vec<(String, String)> {
    parse_properties(
        PROPERTIES_VAR,
        &std::env::var(PROPERTIES_VAR).unwrap_or_default(),
    )
}

/// `key=value;key=value` from variable `var`.
fn parse_properties(var: &str, text: &str) -> Vec<(String, String)> {
    text.split(';')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{var}: {pair:?} is not key=value"));
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// The environment variable that hands librdkafka setting `key` to a role (docs/settings.md).
fn property_variable(key: &str) -> String {
    format!(
        "USERSYNC_KAFKA__PROPERTIES__{}",
        key.to_uppercase().replace('.', "_")
    )
}

/// A client of the test's own (not usersync's) for the test broker.
fn test_client(brokers: &str) -> rdkafka::ClientConfig {
    let mut client = rdkafka::ClientConfig::new();
    for (key, value) in broker_properties() {
        client.set(key, value);
    }
    client.set("bootstrap.servers", brokers);
    client
}

fn brokers() -> Option<String> {
    match std::env::var(BROKERS_VAR) {
        Ok(brokers) if !brokers.is_empty() => Some(brokers),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{BROKERS_VAR} is not set, but CI is: the end-to-end suite must run on a broker. \
             Run scripts/test.sh, which starts tansu and sets it."
        ),
        _ => {
            eprintln!(
                "{BROKERS_VAR} is not set: end-to-end tests skipped (scripts/test.sh sets it)"
            );
            None
        }
    }
}

/// The simulators, the store and the configuration every role process gets.
struct World {
    _salesforce: Process,
    _outreach: Process,
    salesforce_url: String,
    outreach_url: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl World {
    /// The simulators, with the store in a SQLite file of the test's folder.
    async fn start(brokers: &str) -> World {
        World::start_on(brokers, None).await
    }

    /// The simulators, with the store at `store_url` when given (a PostgreSQL database the
    /// roles share), else in a SQLite file of the test's folder.
    async fn start_on(brokers: &str, store_url: Option<&str>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/salesforce_jwt_test_key_pub.pem"
        );
        let mut salesforce = Process::spawn(
            "sim-salesforce",
            &[
                "sim",
                "salesforce",
                "--listen",
                "127.0.0.1:0",
                "--pubsub-listen",
                "127.0.0.1:0",
                "--jwt-public-key",
                key,
                "--run-as",
                RUN_AS,
                "--keepalive-secs",
                "2",
            ],
            &[],
            dir.path(),
        );
        let addresses = salesforce.lines(2);
        let (salesforce_url, pubsub_url) = (addresses[0].clone(), addresses[1].clone());
        let mut outreach = Process::spawn(
            "sim-outreach",
            &[
                "sim",
                "outreach",
                "--listen",
                "127.0.0.1:0",
                "--mint-throttle-secs",
                "0",
            ],
            &[],
            dir.path(),
        );
        let outreach_url = outreach.lines(1)[0].clone();
        let http = reqwest::Client::new();
        let tokens: Value = http
            .post(format!("{outreach_url}/_sim/tokens"))
            .json(&json!({"scopes": ["users.all"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tag = format!("{:08x}", rand::random::<u32>());
        let url = store_url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("usersync.db").display()));
        let store = usersync::store::open(&url).await.unwrap();
        use usersync_sim::outreach as o;
        use usersync_sim::salesforce as s;
        let env: Vec<(String, String)> = [
            ("USERSYNC_KAFKA__BROKERS", brokers.to_owned()),
            ("USERSYNC_KAFKA__TOPIC", format!("usersync.e2e-{tag}.v1")),
            (
                "USERSYNC_KAFKA__DEAD_LETTER_TOPIC",
                format!("usersync.e2e-{tag}.dlq"),
            ),
            ("USERSYNC_KAFKA__PARTITIONS", "3".to_owned()),
            ("USERSYNC_STORE__URL", url),
            ("USERSYNC_SALESFORCE__AUTH", "client_credentials".to_owned()),
            ("USERSYNC_SALESFORCE__LOGIN_URL", salesforce_url.clone()),
            (
                "USERSYNC_SALESFORCE__MY_DOMAIN_URL",
                format!("{salesforce_url}{}", s::MY_DOMAIN_PREFIX),
            ),
            (
                "USERSYNC_SALESFORCE__CONSUMER_KEY",
                s::DEFAULT_CONSUMER_KEY.to_owned(),
            ),
            (
                "USERSYNC_SALESFORCE__CONSUMER_SECRET",
                s::DEFAULT_CONSUMER_SECRET.to_owned(),
            ),
            ("USERSYNC_SALESFORCE__PUBSUB_ENDPOINT", pubsub_url),
            ("USERSYNC_SALESFORCE__BACKOFF_MIN_MS", "100".to_owned()),
            ("USERSYNC_SALESFORCE__BACKOFF_MAX_MS", "1000".to_owned()),
            (
                "USERSYNC_OUTREACH__API_URL",
                format!("{outreach_url}/api/v2"),
            ),
            (
                "USERSYNC_OUTREACH__TOKEN_URL",
                format!("{outreach_url}/oauth/token"),
            ),
            (
                "USERSYNC_OUTREACH__CLIENT_ID",
                o::DEFAULT_CLIENT_ID.to_owned(),
            ),
            (
                "USERSYNC_OUTREACH__CLIENT_SECRET",
                o::DEFAULT_CLIENT_SECRET.to_owned(),
            ),
            (
                "USERSYNC_OUTREACH__REDIRECT_URI",
                o::DEFAULT_REDIRECT_URI.to_owned(),
            ),
            (
                "USERSYNC_OUTREACH__REFRESH_TOKEN",
                tokens["refresh_token"].as_str().unwrap().to_owned(),
            ),
            (
                "USERSYNC_OUTREACH__TOKEN_FILE",
                dir.path()
                    .join("outreach-tokens.json")
                    .display()
                    .to_string(),
            ),
            (
                "USERSYNC_PROCESSOR__GROUP_ID",
                format!("usersync-e2e-{tag}"),
            ),
            ("USERSYNC_PROCESSOR__RETRY_MIN_MS", "100".to_owned()),
            ("USERSYNC_PROCESSOR__RETRY_MAX_MS", "1000".to_owned()),
            // A killed processor's partitions come back after this, not librdkafka's 45 s.
            ("USERSYNC_PROCESSOR__SESSION_TIMEOUT_MS", "6000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(
            broker_properties()
                .into_iter()
                .map(|(key, value)| (property_variable(&key), value)),
        )
        .collect();
        World {
            _salesforce: salesforce,
            _outreach: outreach,
            salesforce_url,
            outreach_url,
            http,
            store,
            env,
            dir,
        }
    }

    /// Overrides one variable of the roles' environment (for roles started afterwards).
    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn var(&self, key: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} is not in the roles' environment"))
    }

    fn role(&self, role: &str) -> Process {
        Process::spawn(role, &[role], &self.env, self.dir.path())
    }

    /// One more `usersync processor` in the same consumer group, logging to `{name}.log`. It
    /// gets an Outreach authorization of its own: Outreach rotates the refresh token at every
    /// mint, so two replicas sharing one would lock each other out.
    async fn processor_replica(&self, name: &str) -> Process {
        let tokens: Value = self
            .http
            .post(format!("{}/_sim/tokens", self.outreach_url))
            .json(&json!({"scopes": ["users.all"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut env = self.env.clone();
        env.retain(|(k, _)| {
            k != "USERSYNC_OUTREACH__REFRESH_TOKEN" && k != "USERSYNC_OUTREACH__TOKEN_FILE"
        });
        env.push((
            "USERSYNC_OUTREACH__REFRESH_TOKEN".to_owned(),
            tokens["refresh_token"].as_str().unwrap().to_owned(),
        ));
        env.push((
            "USERSYNC_OUTREACH__TOKEN_FILE".to_owned(),
            self.dir
                .path()
                .join(format!("{name}-tokens.json"))
                .display()
                .to_string(),
        ));
        Process::spawn(name, &["processor"], &env, self.dir.path())
    }

    /// The text a role process has logged so far.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn call(&self, method: reqwest::Method, url: String, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates a Salesforce user; returns its id.
    async fn create_salesforce_user(&self, name: &str, email: &str) -> String {
        let created = self
            .call(
                reqwest::Method::POST,
                format!("{}/_sim/users", self.salesforce_url),
                Some(
                    json!({"Username": format!("{name}@acme.example"), "Email": email,
                            "FirstName": name, "LastName": "Lee", "Title": "AE"}),
                ),
            )
            .await;
        created["id"].as_str().unwrap().to_owned()
    }

    /// Creates users `{prefix}{n}` with their own emails, for each `n` of `range`.
    async fn create_users(&self, prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
        let mut ids = Vec::new();
        for n in range {
            let name = format!("{prefix}{n}");
            ids.push(
                self.create_salesforce_user(&name, &format!("{name}@acme.example"))
                    .await,
            );
        }
        ids
    }

    async fn deactivate(&self, id: &str) {
        self.call(
            reqwest::Method::POST,
            format!("{}/_sim/users/{id}/deactivate", self.salesforce_url),
            None,
        )
        .await;
    }

    /// The end state judged from the simulators' final users alone
    /// (`tests/support/oracle.rs`), with the default sync settings the roles run with.
    async fn assert_oracle(&self) {
        self.assert_oracle_sparing(&Default::default()).await;
    }

    /// [`World::assert_oracle`], sparing the Outreach users superseded creates left (made by
    /// decisions of a processor replica whose records the store refused).
    async fn assert_oracle_sparing(&self, superseded_creates: &std::collections::BTreeSet<i64>) {
        let settings = self
            .store
            .settings()
            .await
            .expect("the store reads its settings")
            .unwrap_or_default();
        support::oracle::assert_holds(&support::oracle::Sources {
            http: &self.http,
            salesforce_url: &self.salesforce_url,
            outreach_url: &self.outreach_url,
            store: self.store.as_ref(),
            settings: &settings,
            superseded_creates,
        })
        .await;
    }

    /// Waits until the processor has applied a change of Salesforce user `id`.
    async fn until_applied(&self, id: &str) {
        let id = SalesforceId::parse(id).unwrap();
        until(self, &format!("a change of {id} is applied"), || async {
            self.store
                .salesforce_user(&id)
                .await
                .unwrap()
                .and_then(|u| u.applied)
                .is_some()
        })
        .await;
    }

    /// Switches the Outreach simulator's faults (`POST /_sim/faults`).
    async fn outreach_faults(&self, faults: Value) {
        let response = self
            .http
            .post(format!("{}/_sim/faults", self.outreach_url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{faults}: {response:?}");
    }

    async fn outreach_users(&self) -> Vec<Value> {
        let users = self
            .call(
                reqwest::Method::GET,
                format!("{}/_sim/users", self.outreach_url),
                None,
            )
            .await;
        users.as_array().cloned().unwrap_or_default()
    }

    /// Outreach user 1 with `EMAIL`, mapped to Salesforce user `x` in the store.
    async fn seed_mapping(&self, x: &str) -> i64 {
        let seeded = self
            .call(
                reqwest::Method::POST,
                format!("{}/_sim/users", self.outreach_url),
                Some(json!({"id": 1, "email": EMAIL, "first_name": "x", "last_name": "Lee"})),
            )
            .await;
        let id = seeded["id"].as_i64().unwrap();
        let x = SalesforceId::parse(x).unwrap();
        self.store
            .put_salesforce_users(&[SalesforceUser {
                id: x.clone(),
                email: Some(EMAIL.into()),
                username: None,
                first_name: Some("x".into()),
                last_name: Some("Lee".into()),
                title: Some("AE".into()),
                is_active: true,
                created_date: None,
                last_modified_date: None,
                applied: None,
            }])
            .await
            .unwrap();
        self.store
            .put_outreach_users(&[OutreachUser {
                id: OutreachUserId(id),
                email: EMAIL.into(),
                username: None,
                first_name: Some("x".into()),
                last_name: Some("Lee".into()),
                title: None,
                locked: false,
                custom: Default::default(),
                updated_at: None,
            }])
            .await
            .unwrap();
        self.store
            .put_mapping(&Mapping {
                outreach_user_id: OutreachUserId(id),
                salesforce_user_id: x,
                locked_by_usersync: false,
            })
            .await
            .unwrap();
        id
    }

    async fn mapping_of(&self, outreach_id: i64) -> Option<String> {
        self.store
            .mappings(&MappingFilter {
                outreach_user_id: Some(OutreachUserId(outreach_id)),
                ..MappingFilter::default()
            })
            .await
            .unwrap()
            .first()
            .map(|m| m.salesforce_user_id.as_str().to_owned())
    }

    /// Every mapping, Salesforce id → Outreach id.
    async fn mappings(&self) -> BTreeMap<String, i64> {
        self.store
            .mappings(&MappingFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                (
                    m.salesforce_user_id.as_str().to_owned(),
                    m.outreach_user_id.0,
                )
            })
            .collect()
    }
}

async fn until<F, Fut>(world: &World, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_within(world, what, WAIT, check).await
}

async fn until_within<F, Fut>(world: &World, what: &str, wait: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            let mut roles: Vec<String> = std::fs::read_dir(world.dir.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let role = name.strip_suffix(".log")?;
                    (!role.starts_with("sim-")).then(|| role.to_owned())
                })
                .collect();
            roles.sort();
            let logs: Vec<String> = roles
                .iter()
                .map(|role| {
                    let text = world.log(role);
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    format!("--- {role} (last lines, newest first)\n{}", tail.join("\n"))
                })
                .collect();
            panic!(
                "timed out: {what}\n{}\n{}",
                logs.join("\n"),
                broker_report()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The errors librdkafka recovers from by itself (a broker gone for a while).
fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::OperationTimedOut
    )
}

/// Whether the broker answers, and its last lines: a timeout is often the broker's, not ours.
fn broker_report() -> String {
    let brokers = std::env::var(BROKERS_VAR).unwrap_or_default();
    let answering = brokers
        .parse::<std::net::SocketAddr>()
        .map(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
        })
        .unwrap_or(false);
    let tail = std::env::var("USERSYNC_TEST_KAFKA_LOG")
        .ok()
        .and_then(|log| std::fs::read_to_string(log).ok())
        .map(|text| {
            let lines: Vec<&str> = text.lines().rev().take(15).collect();
            lines.join("\n")
        })
        .unwrap_or_else(|| "(no broker log: USERSYNC_TEST_KAFKA_LOG is not set)".to_owned());
    format!(
        "--- broker {brokers}: {} (last lines, newest first)\n{tail}",
        if answering {
            "accepts connections"
        } else {
            "NOT accepting connections"
        }
    )
}

fn full(id: &str) -> String {
    SalesforceId::parse(id).unwrap().as_str().to_owned()
}

async fn seed_scenario(y_first: bool) {
    let Some(brokers) = brokers() else { return };
    let world = World::start(&brokers).await;
    let x = world.create_salesforce_user("x", EMAIL).await;
    let one = world.seed_mapping(&x).await;
    let subscriber = world.role("subscriber");
    let processor = world.role("processor");
    // The initial load has been decided once X's snapshot is applied.
    world.until_applied(&x).await;
    let y = if y_first {
        let y = world.create_salesforce_user("y", EMAIL).await;
        world.deactivate(&x).await;
        y
    } else {
        world.deactivate(&x).await;
        world.create_salesforce_user("y", EMAIL).await
    };
    until(&world, "Outreach user 1 is mapped to Y", || async {
        world.mapping_of(one).await == Some(full(&y))
    })
    .await;
    subscriber.stop();
    processor.stop();
    assert_eq!(
        world.outreach_users().await.len(),
        1,
        "no Outreach user was created"
    );
    world.assert_oracle().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_on_a_broker_y_created_first() {
    seed_scenario(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_on_a_broker_x_deactivated_first() {
    seed_scenario(false).await;
}

/// The secure test broker (TLS with SASL SCRAM, `tansu_secure_start` in scripts/tansu.sh).
struct SecureBroker {
    brokers: String,
    /// The librdkafka settings that reach it.
    properties: Vec<(String, String)>,
    /// An authority that did not sign its certificate.
    other_ca: String,
}

/// The secure broker's settings; under CI it must be there.
fn secure_broker() -> Option<SecureBroker> {
    let read = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    const PROPERTIES: &str = "USERSYNC_TEST_KAFKA_SECURE_PROPERTIES";
    let vars = (
        read("USERSYNC_TEST_KAFKA_SECURE_BROKERS"),
        read(PROPERTIES),
        read("USERSYNC_TEST_KAFKA_OTHER_CA"),
    );
    match vars {
        (Some(brokers), Some(properties), Some(other_ca)) => Some(SecureBroker {
            brokers,
            properties: parse_properties(PROPERTIES, &properties),
            other_ca,
        }),
        _ if std::env::var_os("CI").is_some() => panic!(
            "the secure test broker is not set up (USERSYNC_TEST_KAFKA_SECURE_*), but CI is: \
             scripts/test.sh starts it"
        ),
        _ => None,
    }
}

/// Kafka over TLS with a certificate authority that did not sign the broker's certificate:
/// each role stops at start, naming the broker and the certificate problem, instead of waiting
/// on a broker it will never trust.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_certificate_authority_stops_the_start_naming_the_broker() {
    let Some(brokers) = brokers() else { return };
    let Some(SecureBroker {
        brokers: secure,
        properties,
        other_ca,
    }) = secure_broker()
    else {
        return;
    };
    let mut world = World::start(&brokers).await;
    world.set("USERSYNC_KAFKA__BROKERS", &secure);
    for (key, value) in &properties {
        let value = if key == "ssl.ca.location" {
            other_ca.as_str()
        } else {
            value
        };
        world.set(&property_variable(key), value);
    }
    let password = properties
        .iter()
        .find(|(k, _)| k == "sasl.password")
        .map(|(_, v)| v.clone())
        .expect("the secure broker asks for a SASL password");
    for role in ["subscriber", "processor"] {
        let mut process = world.role(role);
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = process.exited() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{role} still runs with an authority that did not sign the broker's \
                 certificate:\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let log = process.log();
        assert!(!status.success(), "{role} exited with {status}:\n{log}");
        assert!(
            log.contains(&secure) && log.contains("certificate verify failed"),
            "{role}'s error names neither the broker {secure} nor the certificate problem:\n{log}"
        );
        assert!(!log.contains(&password), "{role} logged the SASL password");
    }
}

/// Users with their own emails: each must end with exactly one Outreach user mapped to it.
async fn assert_one_outreach_user_each(world: &World, salesforce_ids: &[String]) {
    let users = world.outreach_users().await;
    let mut per_email: BTreeMap<String, usize> = BTreeMap::new();
    for user in &users {
        *per_email
            .entry(user["email"].as_str().unwrap().to_lowercase())
            .or_default() += 1;
    }
    assert!(
        per_email.values().all(|n| *n == 1),
        "an email has two Outreach users: {per_email:?}"
    );
    let mappings = world.mappings().await;
    for id in salesforce_ids {
        assert!(mappings.contains_key(&full(id)), "{id} is not mapped");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_killed_mid_run_resumes_with_no_duplicate_outreach_user() {
    let Some(brokers) = brokers() else { return };
    let world = World::start(&brokers).await;
    let subscriber = world.role("subscriber");
    let processor = world.role("processor");
    let ids = world.create_users("u", 0..40).await;
    until(&world, "some users are created in Outreach", || async {
        world.outreach_users().await.len() >= 5
    })
    .await;
    processor.kill_hard();
    let processor = world.role("processor");
    until(&world, "every user is mapped", || async {
        world.mappings().await.len() >= ids.len()
    })
    .await;
    subscriber.stop();
    processor.stop();
    assert_one_outreach_user_each(&world, &ids).await;
    assert_eq!(world.outreach_users().await.len(), ids.len());
    world.assert_oracle().await;
}

/// The processor is killed (kill -9) after Outreach made a user and before Outreach's answer
/// reached it, so before the store recorded anything: the restarted processor finds that user
/// by its email and links it. One Outreach user, mapped; no second create.
#[tokio::test(flavor = "multi_thread")]
async fn a_processor_killed_between_an_outreach_create_and_its_record_links_that_user() {
    let Some(brokers) = brokers() else { return };
    let world = World::start(&brokers).await;
    let subscriber = world.role("subscriber");
    let processor = world.role("processor");
    let mut ids = world.create_users("live", 0..1).await;
    until(&world, "the pipeline is live", || async {
        world.mappings().await.len() == 1
    })
    .await;
    // Outreach answers every request a minute late, after doing what it asked.
    world.outreach_faults(json!({"latency_ms": 60_000})).await;
    ids.extend(world.create_users("held", 0..1).await);
    until(&world, "Outreach made the user", || async {
        world
            .outreach_users()
            .await
            .iter()
            .any(|u| u["email"] == "held0@acme.example")
    })
    .await;
    processor.kill_hard();
    world.outreach_faults(json!({"latency_ms": 0})).await;
    assert_eq!(
        world.mappings().await.len(),
        1,
        "killed before the store recorded the create"
    );
    let processor = world.role("processor");
    until(&world, "every user is mapped", || async {
        world.mappings().await.len() == ids.len()
    })
    .await;
    subscriber.stop();
    processor.stop();
    assert_one_outreach_user_each(&world, &ids).await;
    assert_eq!(world.outreach_users().await.len(), ids.len());
    world.assert_oracle().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_killed_mid_run_resumes_and_nothing_is_lost() {
    let Some(brokers) = brokers() else { return };
    let world = World::start(&brokers).await;
    let subscriber = world.role("subscriber");
    let processor = world.role("processor");
    let mut ids = world.create_users("a", 0..20).await;
    until(&world, "some users are mapped", || async {
        !world.mappings().await.is_empty()
    })
    .await;
    subscriber.kill_hard();
    // Changes while the subscriber is down are replayed from its checkpoint.
    ids.extend(world.create_users("a", 20..40).await);
    let subscriber = world.role("subscriber");
    until(&world, "every user is mapped", || async {
        world.mappings().await.len() >= ids.len()
    })
    .await;
    subscriber.stop();
    processor.stop();
    assert_one_outreach_user_each(&world, &ids).await;
    assert_eq!(world.outreach_users().await.len(), ids.len());
    world.assert_oracle().await;
}

/// The verified loss that placing snapshots by their stream position fixes: an UPDATE, then a
/// change visible only through a gap re-read, both committed within one second. REST gives
/// `LastModifiedDate` to the whole second, so a re-read placed by it sorted before the UPDATE
/// (committed at .500 against .000) and was skipped as stale; Outreach kept the old last name.
#[tokio::test(flavor = "multi_thread")]
async fn a_gap_re_read_in_the_same_second_as_a_change_reaches_outreach() {
    let Some(brokers) = brokers() else { return };
    let world = World::start(&brokers).await;
    let subscriber = world.role("subscriber");
    let processor = world.role("processor");
    let id = world.create_salesforce_user("g", "gap@acme.example").await;
    let last_name_in_outreach = || async {
        world
            .outreach_users()
            .await
            .iter()
            .find(|u| u["email"] == "gap@acme.example")
            .and_then(|u| u["last_name"].as_str().map(str::to_owned))
    };
    until(&world, "the user is created in Outreach", || async {
        last_name_in_outreach().await.as_deref() == Some("Lee")
    })
    .await;

    // Two commits in one second a little ahead: the UPDATE at .500, the GAP_UPDATE at .900.
    let second = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .with_nanosecond(0)
        .unwrap();
    let clock = |ms: i64| {
        let at = second + chrono::Duration::milliseconds(ms);
        world.call(
            reqwest::Method::POST,
            format!("{}/_sim/faults/commit-clock", world.salesforce_url),
            Some(json!({ "at": at })),
        )
    };
    clock(500).await;
    world
        .call(
            reqwest::Method::PATCH,
            format!("{}/_sim/users/{id}", world.salesforce_url),
            Some(json!({"LastName": "Brown"})),
        )
        .await;
    clock(900).await;
    world
        .call(
            reqwest::Method::POST,
            format!("{}/_sim/faults/gap", world.salesforce_url),
            Some(json!({"ids": [id], "fields": {"LastName": "Green"}})),
        )
        .await;
    world
        .call(
            reqwest::Method::POST,
            format!("{}/_sim/faults/commit-clock", world.salesforce_url),
            Some(json!({ "at": null })),
        )
        .await;

    until(&world, "Outreach shows the re-read's last name", || async {
        last_name_in_outreach().await.as_deref() == Some("Green")
    })
    .await;
    // The processor records an event after its Outreach call, so the store may lag Outreach by
    // a moment: wait for the record of the re-read (a snapshot carries the time it was read).
    let sf_id = SalesforceId::parse(&id).unwrap();
    let stored = || async {
        world
            .store
            .salesforce_user(&sf_id)
            .await
            .unwrap()
            .expect("the user is in the store")
    };
    until(
        &world,
        "the store records the re-read as applied",
        || async {
            stored()
                .await
                .applied
                .is_some_and(|applied| applied.read_at.is_some())
        },
    )
    .await;
    // The UPDATE was applied before the re-read, not skipped: the re-read won on its position.
    let user = stored().await;
    assert_eq!(
        user.last_modified_date,
        Some(second),
        "REST gave the whole second"
    );
    let decisions = world
        .store
        .decisions(&DecisionQuery {
            email: Some("gap@acme.example".into()),
            ..DecisionQuery::default()
        })
        .await
        .unwrap();
    assert!(
        decisions
            .records
            .iter()
            .all(|(_, d)| d.reason != usersync::engine::Reason::StaleEvent),
        "nothing of this user was skipped as stale: {decisions:?}"
    );
    subscriber.stop();
    processor.stop();
    world.assert_oracle().await;
}

/// What the store logs once its migrations are done.
const STORE_READY: &str = "schema is up to date";

/// Three of each role, started together on a store nobody has opened yet, the way a compose file
/// or a supervisor starts them: every process gets past the store's migrations, each `run`
/// serves its health check, and none has exited once a later change went all the way through.
async fn roles_come_up_together_on_a_fresh_store(world: &mut World, store_url: &str) {
    world.set("USERSYNC_STORE__URL", store_url);
    // Each `run` serves its admin API on a port of its own, and logs it (as JSON: the address
    // is read from there).
    world.set("USERSYNC_ADMIN__LISTEN", "127.0.0.1:0");
    world.set("USERSYNC_LOG_FORMAT", "json");
    let roles = ["processor", "run", "subscriber"].repeat(3);
    let mut processes: Vec<Process> = roles
        .iter()
        .enumerate()
        .map(|(i, role)| {
            Process::spawn(
                &format!("{role}-{i}"),
                &[role],
                &world.env,
                world.dir.path(),
            )
        })
        .collect();
    let deadline = std::time::Instant::now() + WAIT;
    let failures: Vec<String> = processes
        .iter_mut()
        .filter_map(|p| p.wait_for_log(STORE_READY, deadline).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} roles did not open the fresh store:\n{}",
        failures.len(),
        roles.len(),
        failures.join("\n\n")
    );
    for run in processes.iter_mut().filter(|p| p.name.starts_with("run")) {
        let log = run
            .wait_for_log("admin server listening", deadline)
            .unwrap_or_else(|e| panic!("{e}"));
        let address = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["message"] == "admin server listening")
            .and_then(|line| line["fields"]["address"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{} logged no admin address", run.name));
        let health = world
            .http
            .get(format!("http://{address}/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: /healthz: {e}", run.name));
        assert!(health.status().is_success(), "{}: {health:?}", run.name);
    }
    // A change made now goes all the way through, Salesforce to Outreach: the roles are past
    // their start, and any that was to fail there has had its chance.
    world.create_users("after-start", 0..1).await;
    until(
        world,
        "a change made after the start reaches Outreach",
        || async {
            world
                .outreach_users()
                .await
                .iter()
                .any(|u| u["email"] == "after-start0@acme.example")
        },
    )
    .await;
    for process in &mut processes {
        if let Some(status) = process.exited() {
            panic!(
                "{} exited with {status} after opening the store:\n{}",
                process.name,
                process.log_tail(30)
            );
        }
    }
    for process in processes {
        process.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_started_together_on_a_fresh_sqlite_store_all_come_up() {
    let Some(brokers) = brokers() else { return };
    let mut world = World::start(&brokers).await;
    let url = format!("sqlite://{}", world.dir.path().join("fresh.db").display());
    roles_come_up_together_on_a_fresh_store(&mut world, &url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_started_together_on_a_fresh_postgres_database_all_come_up() {
    let Some(brokers) = brokers() else { return };
    let Some(admin_url) = support::postgres::database_url() else {
        return;
    };
    let fresh = support::postgres::FreshDatabase::create(&admin_url, "roles").await;
    let mut world = World::start(&brokers).await;
    roles_come_up_together_on_a_fresh_store(&mut world, &fresh.url).await;
    drop(world);
    fresh.drop_now().await;
}

/// The lease the subscribers of the default topic compete for.
const LEASE: &str = "subscriber:/data/UserChangeEvent";

/// Two subscriber instances on one org and one PostgreSQL store, and a world to watch them:
/// the store (PostgreSQL), a reader of the (single-partition) topic, and the lease's length.
struct Pair {
    world: World,
    store: Arc<dyn Store>,
    fresh: support::postgres::FreshDatabase,
    topic: TopicReader,
    /// Taken when it is killed.
    first: Option<Process>,
    second: Process,
}

impl Pair {
    /// Starts `first`, waits until it holds the lease and has saved a stream position, then
    /// starts `second`, which stands by.
    async fn start(brokers: &str, admin_url: &str, lease_seconds: u64) -> Pair {
        let fresh = support::postgres::FreshDatabase::create(admin_url, "lease").await;
        let mut world = World::start(brokers).await;
        world.set("USERSYNC_STORE__URL", &fresh.url);
        world.set("USERSYNC_KAFKA__PARTITIONS", "1");
        world.set(
            "USERSYNC_SUBSCRIBER__LEASE_SECONDS",
            &lease_seconds.to_string(),
        );
        let store = usersync::store::open(&fresh.url).await.unwrap();
        let spawn = |world: &mut World, instance: &str| {
            world.set("USERSYNC_SUBSCRIBER__INSTANCE_ID", instance);
            Process::spawn(
                &format!("subscriber-{instance}"),
                &["subscriber"],
                &world.env,
                world.dir.path(),
            )
        };
        let first = spawn(&mut world, "first");
        until(&world, "the first instance holds the lease", || async {
            store
                .lease(LEASE)
                .await
                .unwrap()
                .is_some_and(|l| l.holder == "first")
        })
        .await;
        // A stream position saved: a standby taking over resumes from it, no initial load.
        world
            .create_salesforce_user("seed", "seed@acme.example")
            .await;
        until(
            &world,
            "the first instance saved a stream position",
            || async {
                store
                    .checkpoint("/data/UserChangeEvent")
                    .await
                    .unwrap()
                    .is_some_and(|c| !c.replay_id.is_empty())
            },
        )
        .await;
        let mut second = spawn(&mut world, "second");
        second
            .wait_for_log(
                "another subscriber holds the lease",
                std::time::Instant::now() + WAIT,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let topic = TopicReader::new(brokers, world.var("USERSYNC_KAFKA__TOPIC"), 1);
        Pair {
            world,
            store,
            fresh,
            topic,
            first: Some(first),
            second,
        }
    }

    async fn lease(&self) -> usersync::store::Lease {
        self.store
            .lease(LEASE)
            .await
            .unwrap()
            .expect("the lease was taken")
    }

    /// Waits until the topic holds an event of every user of the simulated org.
    async fn until_every_user_is_published(&mut self) -> Vec<Value> {
        let users = self
            .world
            .call(
                reqwest::Method::GET,
                format!("{}/_sim/users", self.world.salesforce_url),
                None,
            )
            .await;
        let ids: Vec<String> = users
            .as_array()
            .unwrap()
            .iter()
            .map(|u| full(u["Id"].as_str().unwrap()))
            .collect();
        let topic = std::sync::Mutex::new(&mut self.topic);
        until(
            &self.world,
            "every user's change is on the topic",
            || async {
                let mut topic = topic.lock().unwrap();
                topic.read();
                ids.iter()
                    .all(|id| topic.events.iter().any(|e| e["user_id"] == id.as_str()))
            },
        )
        .await;
        self.topic.events.clone()
    }

    fn first(&mut self) -> &mut Process {
        self.first.as_mut().expect("the first instance runs")
    }

    async fn finish(self) {
        self.second.stop();
        drop(self.first);
        drop(self.world);
        self.fresh.drop_now().await;
    }
}

/// The event ids on the topic more than once.
fn published_twice(events: &[Value]) -> Vec<(String, String)> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for event in events {
        *seen
            .entry(event["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    events
        .iter()
        .filter(|e| seen[e["event_id"].as_str().unwrap()] > 1)
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["origin"]["replay_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// One subscriber streams, the other stands by; the active one is killed (kill -9) in the
/// middle of a stream of changes. The standby takes over within the lease's length after the
/// last renewal, never before the lease ran out, and resumes from the shared checkpoint:
/// nothing is lost, and what is published twice is only what the killed instance published
/// after its last saved checkpoint — the subscriber's at-least-once window.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_subscriber_takes_over_from_a_killed_one_and_nothing_is_lost() {
    let Some(brokers) = brokers() else { return };
    let Some(admin_url) = support::postgres::database_url() else {
        return;
    };
    const LEASE_SECONDS: i64 = 4;
    let mut pair = Pair::start(&brokers, &admin_url, LEASE_SECONDS as u64).await;
    let before = pair.world.create_users("k", 0..15).await;
    // Mid-stream: some of those are on the topic, and more are being made.
    {
        let topic = std::sync::Mutex::new(&mut pair.topic);
        until(&pair.world, "the first changes are published", || async {
            let mut topic = topic.lock().unwrap();
            topic.read();
            topic.events.len() >= 5
        })
        .await;
    }
    let first = pair.first.take().unwrap();
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        first.kill_hard();
    };
    tokio::join!(pair.world.create_users("k", 15..20), kill);
    let at_kill = pair.lease().await;
    let checkpoint = pair
        .store
        .checkpoint("/data/UserChangeEvent")
        .await
        .unwrap()
        .expect("a checkpoint was saved");
    pair.world.create_users("k", 20..30).await;

    until(&pair.world, "the standby takes the lease", || async {
        pair.lease().await.holder == "second"
    })
    .await;
    let taken = pair.lease().await;
    assert_eq!(taken.epoch, at_kill.epoch + 1);
    assert!(
        taken.acquired_at >= at_kill.expires_at,
        "taken over before the lease ran out: {at_kill:?} then {taken:?}"
    );
    // Within the lease's length after the last renewal (the store's clock), with a second for
    // the store's round trips.
    let after_last_renewal = taken.acquired_at - at_kill.renewed_at;
    assert!(
        after_last_renewal <= chrono::Duration::seconds(LEASE_SECONDS + 1),
        "took {after_last_renewal} after the last renewal"
    );

    let events = pair.until_every_user_is_published().await;
    assert!(
        before
            .iter()
            .all(|id| events.iter().any(|e| e["user_id"] == full(id).as_str()))
    );
    let twice = published_twice(&events);
    let stored = hex(&checkpoint.replay_id);
    for (event_id, replay_id) in &twice {
        assert!(
            replay_id.len() == stored.len() && replay_id.as_str() > stored.as_str(),
            "{event_id} (replay id {replay_id}) was published twice, though it is at or before \
             the checkpoint {stored} the standby resumed from"
        );
    }
    eprintln!(
        "{} events, {} published twice (after the checkpoint)",
        events.len(),
        twice.len()
    );
    pair.finish().await;
}

/// The active subscriber stops answering without exiting (SIGSTOP: a long pause, a cut
/// network) past its lease; the standby takes over. When the paused one wakes, the lease is no
/// longer its own: it publishes nothing — every change made meanwhile is on the topic once —
/// and stands by.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_paused_past_its_lease_publishes_nothing_when_it_wakes() {
    let Some(brokers) = brokers() else { return };
    let Some(admin_url) = support::postgres::database_url() else {
        return;
    };
    let mut pair = Pair::start(&brokers, &admin_url, 3).await;
    pair.first().signal("STOP");
    pair.world.create_users("p", 0..6).await;
    until(&pair.world, "the standby takes the lease", || async {
        pair.lease().await.holder == "second"
    })
    .await;
    pair.until_every_user_is_published().await;
    pair.first().signal("CONT");
    pair.first()
        .wait_for_log(
            "the subscriber lost its lease",
            std::time::Instant::now() + WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    pair.world.create_users("q", 0..6).await;
    let events = pair.until_every_user_is_published().await;
    let twice = published_twice(&events);
    assert!(
        twice.is_empty(),
        "published twice while the lease was the standby's: {twice:?}"
    );
    pair.finish().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads one topic of the broker from the beginning, every partition, as a plain consumer
/// outside any group, and asks the broker what a consumer group has committed on it.
struct TopicReader {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
    partitions: i32,
    /// In the order read: per partition the order written, across partitions any.
    events: Vec<Value>,
    /// The offset after the last record read, per partition.
    read_to: BTreeMap<i32, i64>,
}

impl TopicReader {
    fn new(brokers: &str, topic: &str, partitions: i32) -> TopicReader {
        let consumer: BaseConsumer = test_client(brokers)
            .set("group.id", "usersync-e2e-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        TopicReader {
            consumer,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions,
            events: Vec::new(),
            read_to: BTreeMap::new(),
        }
    }

    /// Takes in whatever arrived since the last call.
    fn read(&mut self) {
        while let Some(message) = self.consumer.poll(Duration::from_millis(300)) {
            // librdkafka reports a lost broker connection as an error and reconnects by itself
            // (scripts/tansu.sh restarts a broker that exits): not a reason to stop reading.
            let message = match message {
                Ok(message) => message,
                Err(KafkaError::MessageConsumption(code)) if is_transient(code) => {
                    eprintln!("topic reader: {code}; reading on");
                    std::thread::sleep(Duration::from_millis(300));
                    continue;
                }
                Err(e) => panic!("reading {}: {e}", self.topic),
            };
            let payload = message.payload().expect("an event has a value");
            self.events.push(serde_json::from_slice(payload).unwrap());
            self.read_to
                .insert(message.partition(), message.offset() + 1);
        }
    }

    /// Whether every record on the topic has been read.
    fn caught_up(&self) -> bool {
        let read: Vec<i64> = (0..self.partitions)
            .map(|p| self.read_to.get(&p).copied().unwrap_or(0))
            .collect();
        self.end() == Some(read)
    }

    /// The offset after the last record of each partition.
    /// `None` while the broker does not answer (the caller polls again).
    fn end(&self) -> Option<Vec<i64>> {
        (0..self.partitions)
            .map(|partition| {
                self.consumer
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
                    .map_err(|e| eprintln!("topic reader: watermarks of {}: {e}", self.topic))
                    .ok()
                    .map(|(_, high)| high)
            })
            .collect()
    }

    /// What `group` has committed on each partition (0 where it has committed nothing yet).
    /// `None` while the broker does not answer.
    fn committed(&self, group: &str) -> Option<Vec<i64>> {
        let consumer: BaseConsumer = test_client(&self.brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..self.partitions {
            list.add_partition(&self.topic, partition);
        }
        let committed = match consumer.committed_offsets(list, Duration::from_secs(10)) {
            Ok(committed) => committed,
            Err(e) => {
                eprintln!("topic reader: offsets of {group}: {e}");
                return None;
            }
        };
        Some(
            committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0,
                })
                .collect(),
        )
    }

    /// Whether `group` has committed past every record on the topic.
    fn all_processed(&self, group: &str) -> bool {
        let end = self.end();
        end.is_some() && self.committed(group) == end
    }
}

/// The seed of the random changes: `USERSYNC_TEST_SEED` to replay a run, else a new one.
fn test_seed() -> u64 {
    let seed = std::env::var("USERSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("random changes from seed {seed} (set USERSYNC_TEST_SEED to replay)");
    seed
}

/// Outreach users with these emails (ids 1, 2, …) that exist before usersync starts, unmapped:
/// the index load finds them. Returned as a scenario's `outreach_users`.
async fn seed_outreach_users(world: &World, emails: &[String]) -> Vec<Value> {
    let mut before = Vec::new();
    for (n, email) in emails.iter().enumerate() {
        let user = json!({"id": n + 1, "email": email, "first_name": format!("o{n}"),
                          "last_name": "Lee", "locked": false});
        world
            .call(
                reqwest::Method::POST,
                format!("{}/_sim/users", world.outreach_url),
                Some(user.clone()),
            )
            .await;
        before.push(user);
    }
    before
}

/// The replay id of the Salesforce simulator's last change event.
async fn last_replay_id(world: &World) -> String {
    let state = world
        .call(
            reqwest::Method::GET,
            format!("{}/_sim/state", world.salesforce_url),
            None,
        )
        .await;
    state["latest_replay_id"].as_str().unwrap().to_owned()
}

/// Reads on; whether the event with replay id `last` and at least `published` events are on the
/// topic, and every record on it is read.
fn read_all(topic: &mut TopicReader, last: &str, published: usize) -> bool {
    topic.read();
    let last_is_in = topic
        .events
        .iter()
        .any(|e| e["origin"]["replay_id"].as_str() == Some(last));
    last_is_in && topic.events.len() >= published && topic.caught_up()
}

/// Done when the Salesforce simulator's last change event and at least `published` events are
/// on the topic, and all of them read here.
async fn until_all_published(world: &World, topic: &mut TopicReader, published: usize) {
    let last = last_replay_id(world).await;
    let reader = std::sync::Mutex::new(topic);
    until(world, "every change is published", || async {
        read_all(&mut reader.lock().unwrap(), &last, published)
    })
    .await;
}

/// [`until_all_published`], and the processors' group has committed past every event.
async fn until_all_processed(world: &World, topic: &mut TopicReader, published: usize) {
    let last = last_replay_id(world).await;
    let group = world.var("USERSYNC_PROCESSOR__GROUP_ID").to_owned();
    let reader = std::sync::Mutex::new(topic);
    until_within(
        world,
        "every change is published and processed",
        Duration::from_secs(300),
        || async {
            let mut topic = reader.lock().unwrap();
            read_all(&mut topic, &last, published) && topic.all_processed(&group)
        },
    )
    .await;
}

/// Random changes to Salesforce users through the simulator's control API, drawn from a seeded
/// generator so a failure can be replayed (`USERSYNC_TEST_SEED`). Emails come mostly from a
/// small pool, so users collide on emails: links, remaps and conflicts happen, not only
/// creates.
struct RandomChanges {
    rng: StdRng,
    pool: Vec<String>,
    users: Vec<String>,
    /// Change events the simulator published.
    published: usize,
    /// How often each kind of step is drawn, out of their sum.
    weights: Weights,
    /// The chance that a change is to the user the previous step changed or created: changes
    /// of one user in quick succession, under different emails when they move.
    repeat: f64,
    last: Option<String>,
}

/// The relative frequency of each kind of random step.
#[derive(Debug, Clone, Copy)]
struct Weights {
    create: u32,
    rename: u32,
    email: u32,
    deactivate: u32,
    activate: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            create: 20,
            rename: 30,
            email: 15,
            deactivate: 20,
            activate: 15,
        }
    }
}

impl RandomChanges {
    fn new(seed: u64, pool: Vec<String>) -> RandomChanges {
        RandomChanges {
            rng: StdRng::seed_from_u64(seed),
            pool,
            users: Vec::new(),
            published: 0,
            weights: Weights::default(),
            repeat: 0.0,
            last: None,
        }
    }

    fn with_weights(mut self, weights: Weights) -> RandomChanges {
        self.weights = weights;
        self
    }

    fn with_repeats(mut self, repeat: f64) -> RandomChanges {
        self.repeat = repeat;
        self
    }

    fn email(&mut self) -> String {
        if self.rng.random_bool(0.8) {
            self.pool[self.rng.random_range(0..self.pool.len())].clone()
        } else {
            format!("solo{}@acme.example", self.rng.random::<u32>())
        }
    }

    async fn create(&mut self, world: &World) -> String {
        let name = format!("r{}", self.users.len());
        let email = self.email();
        let id = world.create_salesforce_user(&name, &email).await;
        self.users.push(id.clone());
        self.last = Some(id.clone());
        self.published += 1;
        id
    }

    /// One random write; counts the change events it published (none when nothing changed).
    async fn step(&mut self, world: &World) {
        let w = self.weights;
        let mut roll = self
            .rng
            .random_range(0..w.create + w.rename + w.email + w.deactivate + w.activate);
        if self.users.is_empty() || roll < w.create {
            self.create(world).await;
            return;
        }
        roll -= w.create;
        let user = match self.last.clone() {
            Some(last) if self.repeat > 0.0 && self.rng.random_bool(self.repeat) => last,
            _ => self.users[self.rng.random_range(0..self.users.len())].clone(),
        };
        self.last = Some(user.clone());
        let fields = if roll < w.rename {
            let n = self.rng.random_range(0..1000);
            if self.rng.random_bool(0.5) {
                json!({"Title": format!("T{n}")})
            } else {
                json!({"FirstName": format!("F{n}")})
            }
        } else if roll < w.rename + w.email {
            json!({"Email": self.email()})
        } else if roll < w.rename + w.email + w.deactivate {
            json!({"IsActive": false})
        } else {
            json!({"IsActive": true})
        };
        let answer = world
            .call(
                reqwest::Method::PATCH,
                format!("{}/_sim/users/{user}", world.salesforce_url),
                Some(fields),
            )
            .await;
        self.published += answer["events"].as_u64().unwrap() as usize;
    }

    /// Each user changes its email twice in a row (to emails drawn as usual).
    async fn move_each_user_twice(&mut self, world: &World) {
        for user in self.users.clone() {
            for _ in 0..2 {
                let email = self.email();
                let answer = world
                    .call(
                        reqwest::Method::PATCH,
                        format!("{}/_sim/users/{user}", world.salesforce_url),
                        Some(json!({ "Email": email })),
                    )
                    .await;
                self.published += answer["events"].as_u64().unwrap() as usize;
            }
        }
    }
}

/// The parts of an Outreach user both sides report: the simulator's control API (`custom` as
/// an array) and `usersync decide` (`custom1`…`custom5`).
fn outreach_projection(user: &Value) -> Value {
    let custom: Vec<Value> = match user.get("custom") {
        Some(Value::Array(custom)) => custom.clone(),
        _ => (1..=5)
            .map(|n| {
                user.get(format!("custom{n}"))
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect(),
    };
    json!({
        "id": user["id"],
        "email": user["email"],
        "first_name": user.get("first_name").cloned().unwrap_or(Value::Null),
        "last_name": user.get("last_name").cloned().unwrap_or(Value::Null),
        "locked": user["locked"],
        "custom": custom,
    })
}

/// A decision as both the store and `usersync decide` report it, minus the call count (token
/// refreshes fall at different moments in two runs).
fn decision_projection(decision: &Value) -> Value {
    let mut decision = decision.clone();
    decision.as_object_mut().unwrap().remove("outreach_calls");
    decision
}

/// Fails naming the first place two lists part, not with both lists whole.
fn assert_same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    seed: u64,
    actual: &[T],
    expected: &[T],
) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what} differ from usersync decide (seed {seed}) at #{at} of {} here / {} decided:\n\
         here    {:?}\ndecided {:?}",
        actual.len(),
        expected.len(),
        actual.get(at),
        expected.get(at),
    );
}

/// A thousand random changes go through the whole pipeline; the end state must be
/// exactly what `usersync decide` computes from the same events — the same Outreach users
/// (ids included), the same mappings, and the same decisions in the same order, each once.
///
/// The topic has one partition, so the order the processor applies is the order the subscriber
/// published, which is the order `decide` reads them in. (With several partitions the order
/// across email keys is the broker's to choose; the kill tests run on three.)
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_random_changes_end_where_usersync_decide_says() {
    const CHANGES: usize = 1_000;
    let Some(brokers) = brokers() else { return };
    let mut world = World::start(&brokers).await;
    world.set("USERSYNC_KAFKA__PARTITIONS", "1");
    let seed = test_seed();
    let pool: Vec<String> = (0..30).map(|n| format!("p{n}@acme.example")).collect();
    let before = seed_outreach_users(&world, &pool[..10]).await;

    // Locking inactive users too, so lock and unlock decisions are part of the comparison.
    let mut settings = SyncSettings::default();
    settings.user_mapping.lock_when_inactive = true;
    world.store.save_settings(&settings).await.unwrap();

    let subscriber = world.role("subscriber");
    let processor = world.role("processor");
    let mut changes = RandomChanges::new(seed, pool);
    let first = changes.create(&world).await;
    world.until_applied(&first).await;
    while changes.published < CHANGES {
        changes.step(&world).await;
    }

    let mut topic = TopicReader::new(&brokers, world.var("USERSYNC_KAFKA__TOPIC"), 1);
    until_all_processed(&world, &mut topic, changes.published).await;
    subscriber.stop();
    processor.stop();
    topic.read();
    assert!(
        topic.events.len() >= CHANGES,
        "{} events",
        topic.events.len()
    );

    let scenario = json!({
        "settings": settings,
        "outreach_users": before,
        "salesforce_users": [],
        "mappings": [],
        "events": topic.events,
    });
    let decided = support::usersync_decide(world.dir.path(), &scenario);

    let mut expected: Vec<Value> = decided["outreach_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(outreach_projection)
        .collect();
    let mut actual: Vec<Value> = world
        .outreach_users()
        .await
        .iter()
        .map(outreach_projection)
        .collect();
    expected.sort_by_key(|u| u["id"].as_i64());
    actual.sort_by_key(|u| u["id"].as_i64());
    assert_same("Outreach users", seed, &actual, &expected);

    let expected: BTreeMap<String, i64> = decided["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["salesforce_user_id"].as_str().unwrap().to_owned(),
                m["outreach_user_id"].as_i64().unwrap(),
            )
        })
        .collect();
    let actual: Vec<(String, i64)> = world.mappings().await.into_iter().collect();
    let expected: Vec<(String, i64)> = expected.into_iter().collect();
    assert_same("mappings", seed, &actual, &expected);

    let mut recorded: Vec<Value> = decision_log(world.store.as_ref())
        .await
        .into_iter()
        .map(|(_, record)| {
            decision_projection(&serde_json::to_value(OutputDecision::from(record)).unwrap())
        })
        .collect();
    recorded.reverse();
    let expected: Vec<Value> = decided["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(decision_projection)
        .collect();
    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    for decision in &expected {
        *actions
            .entry(decision["action"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    eprintln!("{} decisions: {actions:?}", expected.len());
    // The pool of shared emails must have made the interesting decisions happen.
    for action in ["create", "link", "remap", "update", "lock", "unlock"] {
        assert!(
            actions.contains_key(action),
            "no {action} decision: {actions:?}"
        );
    }
    assert_same("decisions", seed, &recorded, &expected);
    world.assert_oracle().await;
}

/// Random changes with what the strict run above leaves out: three partitions, users moving
/// between emails, emails shared by users that come and go, changes Salesforce shows only
/// through a gap or an overflow (re-read through REST), and `kill -9` of the subscriber or the
/// processor at random moments, each restarted at once. The broker orders events across
/// partitions as it likes and a kill makes the subscriber publish some twice, so `usersync
/// decide` runs on the events in the order the store recorded them; the end state must be
/// that run's (the last-known Salesforce users, the mappings, every Outreach user), and the
/// oracle must hold.
#[tokio::test(flavor = "multi_thread")]
async fn random_changes_with_moves_gaps_and_kills_end_where_the_records_say() {
    const CHANGES: usize = 600;
    const PARTITIONS: i32 = 3;
    let Some(brokers) = brokers() else { return };
    let mut world = World::start(&brokers).await;
    world.set("USERSYNC_KAFKA__PARTITIONS", &PARTITIONS.to_string());
    let seed = test_seed();
    let mut faults = StdRng::seed_from_u64(seed.rotate_left(17));
    let pool: Vec<String> = (0..12).map(|n| format!("p{n}@acme.example")).collect();
    let before = seed_outreach_users(&world, &pool[..4]).await;
    let mut settings = SyncSettings::default();
    settings.user_mapping.lock_when_inactive = true;
    world.store.save_settings(&settings).await.unwrap();

    let mut subscriber = world.role("subscriber");
    let mut processor = world.role("processor");
    let mut changes = RandomChanges::new(seed, pool)
        .with_weights(Weights {
            create: 15,
            rename: 25,
            email: 25,
            deactivate: 20,
            activate: 15,
        })
        .with_repeats(0.3);
    let opening = changes.create(&world).await;
    world.until_applied(&opening).await;
    let (mut gaps, mut overflows, mut kills) = (0, 0, [0, 0]);
    while changes.published < CHANGES {
        match faults.random_range(0..100) {
            0..=2 => {
                // A change only a re-read shows: the stream carries a gap (or an overflow)
                // for one to three users, and REST has their new title.
                let count = faults.random_range(1..=3).min(changes.users.len());
                let ids: Vec<String> = (0..count)
                    .map(|_| changes.users[faults.random_range(0..changes.users.len())].clone())
                    .collect();
                let overflow = faults.random_bool(0.3);
                let fault = if overflow { "overflow" } else { "gap" };
                let title = format!("re-read {}", faults.random::<u16>());
                world
                    .call(
                        reqwest::Method::POST,
                        format!("{}/_sim/faults/{fault}", world.salesforce_url),
                        Some(json!({"ids": ids, "fields": {"Title": title}})),
                    )
                    .await;
                if overflow {
                    overflows += 1;
                } else {
                    gaps += 1;
                }
            }
            3 => {
                // kill -9 of a role in the middle of its work, and a new one at once.
                if faults.random_bool(0.5) {
                    subscriber.kill_hard();
                    subscriber = world.role("subscriber");
                    kills[0] += 1;
                } else {
                    processor.kill_hard();
                    processor = world.role("processor");
                    kills[1] += 1;
                }
            }
            _ => changes.step(&world).await,
        }
    }
    eprintln!(
        "{} changes, {gaps} gaps, {overflows} overflows, {} subscriber and {} processor kills \
         (seed {seed})",
        changes.published, kills[0], kills[1]
    );
    assert!(
        gaps + overflows > 0 && kills.iter().sum::<i32>() > 0,
        "the run met no re-read or no kill: it proves less than it says (seed {seed})"
    );

    // Done when the store knows every user as Salesforce has it and the processor has
    // committed past every record. (Not "when the last change event is on the topic": a
    // subscriber killed before its stream delivered a position starts again from its pin, and
    // the changes since reach the topic as snapshots of a REST read.)
    let mut topic = TopicReader::new(&brokers, world.var("USERSYNC_KAFKA__TOPIC"), PARTITIONS);
    let group = world.var("USERSYNC_PROCESSOR__GROUP_ID").to_owned();
    {
        let reader = std::sync::Mutex::new(&mut topic);
        until_within(
            &world,
            "the store knows every user as Salesforce has it, and every record is processed",
            Duration::from_secs(300),
            || async {
                if !store_knows_what_salesforce_has(&world).await {
                    return false;
                }
                let mut topic = reader.lock().unwrap();
                topic.read();
                topic.caught_up() && topic.all_processed(&group)
            },
        )
        .await;
    }
    subscriber.stop();
    processor.stop();
    topic.read();
    let Matched {
        superseded_creates, ..
    } = assert_replicas_match_decide(&world, seed, &settings, &before, &topic.events).await;
    world.assert_oracle_sparing(&superseded_creates).await;
}

/// Whether the store's last-known Salesforce users are the simulator's records (email, names,
/// title, active).
async fn store_knows_what_salesforce_has(world: &World) -> bool {
    let records = world
        .call(
            reqwest::Method::GET,
            format!("{}/_sim/users", world.salesforce_url),
            None,
        )
        .await;
    for record in records.as_array().expect("the simulator lists its records") {
        let id = SalesforceId::parse(record["Id"].as_str().unwrap()).unwrap();
        let Some(known) = world.store.salesforce_user(&id).await.unwrap() else {
            return false;
        };
        let text = |field: &str| record[field].as_str().map(str::to_owned);
        if known.email != text("Email")
            || known.first_name != text("FirstName")
            || known.last_name != text("LastName")
            || known.title != text("Title")
            || Some(known.is_active) != record["IsActive"].as_bool()
        {
            return false;
        }
    }
    true
}

/// The partitions a processor's log says it holds now: those of its last assignment.
fn assigned_partitions(log: &str) -> Vec<i32> {
    let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
    else {
        return Vec::new();
    };
    let list = line
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .unwrap_or_default();
    list.split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// How many records the processors' logs say the store refused as decided on a changed state.
fn record_conflicts(world: &World, replicas: &[&str]) -> usize {
    replicas
        .iter()
        .map(|name| {
            world
                .log(name)
                .lines()
                .filter(|l| l.contains("deciding it again on the new state"))
                .count()
        })
        .sum()
}

/// The events in the order the store recorded them: by the sequence of each event's last
/// decision in the log, which is one of those recorded with it (the decisions of attempts the
/// store refused were logged before). Every event on the topic must have been recorded.
async fn in_recorded_order(store: &dyn Store, events: &[Value]) -> Vec<Value> {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (sequence, record) in decision_log(store).await {
        let at = last.entry(record.event_id).or_insert(sequence);
        *at = (*at).max(sequence);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut ordered: Vec<(i64, Value)> = events
        .iter()
        .filter(|e| seen.insert(e["event_id"].as_str().unwrap().to_owned()))
        .map(|e| {
            let id = e["event_id"].as_str().unwrap();
            let sequence = *last.get(id).unwrap_or_else(|| {
                panic!("event {id} is on the topic but not in the decision log")
            });
            (sequence, e.clone())
        })
        .collect();
    ordered.sort_by_key(|(sequence, _)| *sequence);
    ordered.into_iter().map(|(_, e)| e).collect()
}

/// Outreach users by (normalized) email, without the id: two runs number created users in the
/// order their creates happened, and Outreach keeps one user per email.
fn by_email(users: &[Value]) -> BTreeMap<String, Value> {
    users
        .iter()
        .map(|user| {
            let mut projected = outreach_projection(user);
            projected.as_object_mut().unwrap().remove("id");
            (user["email"].as_str().unwrap().to_lowercase(), projected)
        })
        .collect()
}

/// Mappings as Salesforce id → the email of the Outreach user, from ids and a user list.
fn mapped_emails(
    mappings: impl IntoIterator<Item = (String, i64)>,
    users: &[Value],
) -> BTreeMap<String, String> {
    let email_of: BTreeMap<i64, String> = users
        .iter()
        .map(|u| {
            (
                u["id"].as_i64().unwrap(),
                u["email"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    mappings
        .into_iter()
        .map(|(salesforce, outreach)| (salesforce, email_of[&outreach].clone()))
        .collect()
}

fn decided_mappings(decided: &Value) -> Vec<(String, i64)> {
    decided["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["salesforce_user_id"].as_str().unwrap().to_owned(),
                m["outreach_user_id"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// What the replicas left against what `usersync decide` computes from the same events in the
/// order the store recorded them: the Salesforce users' last-known state, the mappings (by the
/// Outreach user's email), and every Outreach user `decide` has. An Outreach user `decide` does
/// not have must be one a superseded decision created (a call made on a state that proved stale
/// cannot be taken back): unmapped, and named by a `create` in the log.
async fn assert_replicas_match_decide(
    world: &World,
    seed: u64,
    settings: &SyncSettings,
    before: &[Value],
    events: &[Value],
) -> Matched {
    // The last-known Salesforce users: each user's newest event, whatever the order.
    let mut newest: BTreeMap<SalesforceId, UserChange> = BTreeMap::new();
    for value in events {
        let event = UserChange::from_json(&serde_json::to_vec(value).unwrap()).unwrap();
        let id = event.salesforce_user_id().unwrap();
        let replace = newest
            .get(&id)
            .is_none_or(|known| event.position().compare(&known.position()).is_gt());
        if replace {
            newest.insert(id, event);
        }
    }
    for (id, event) in &newest {
        let expected = SalesforceUser::from_event(id.clone(), event);
        let stored = world.store.salesforce_user(id).await.unwrap();
        assert_eq!(
            stored.as_ref(),
            Some(&expected),
            "the last-known state of Salesforce user {id} is not its newest event's (seed {seed})"
        );
    }

    let ordered = in_recorded_order(world.store.as_ref(), events).await;
    let scenario = json!({
        "settings": settings,
        "outreach_users": before,
        "salesforce_users": [],
        "mappings": [],
        "events": ordered,
    });
    let decided = support::usersync_decide(world.dir.path(), &scenario);
    let decided_users = decided["outreach_users"].as_array().unwrap().clone();
    let actual_users = world.outreach_users().await;

    let expected = mapped_emails(decided_mappings(&decided), &decided_users);
    let actual = mapped_emails(world.mappings().await, &actual_users);
    let (expected_list, actual_list): (Vec<_>, Vec<_>) = (
        expected.clone().into_iter().collect(),
        actual.into_iter().collect(),
    );
    assert_same("mappings", seed, &actual_list, &expected_list);

    let decided_emails = by_email(&decided_users);
    let actual_emails = by_email(&actual_users);
    for email in decided_emails.keys() {
        assert!(
            actual_emails.contains_key(email),
            "usersync decide has an Outreach user {email}, Outreach does not (seed {seed})"
        );
    }
    let mapped: std::collections::BTreeSet<&String> = expected.values().collect();
    let created: std::collections::BTreeSet<i64> = decision_log(world.store.as_ref())
        .await
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.action == Action::Create)
        .filter_map(|r| r.outreach_user_id.map(|id| id.0))
        .collect();
    let mut superseded_creates = std::collections::BTreeSet::new();
    for user in &actual_users {
        let email = user["email"].as_str().unwrap().to_lowercase();
        if decided_emails.contains_key(&email) {
            continue;
        }
        assert!(
            !mapped.contains(&email),
            "{email} is mapped but usersync decide has no such user (seed {seed})"
        );
        let id = user["id"].as_i64().unwrap();
        assert!(
            created.contains(&id),
            "Outreach user {user} is neither decide's nor created by a decision in the log \
             (seed {seed})"
        );
        superseded_creates.insert(id);
    }
    Matched {
        mapped: expected,
        decided,
        superseded_creates,
    }
}

/// What [`assert_replicas_match_decide`] found, for the checks after it.
struct Matched {
    /// Salesforce id → the email of its Outreach user, the same on both sides.
    mapped: BTreeMap<String, String>,
    /// What `usersync decide` computed.
    decided: Value,
    /// The Outreach users `decide` does not have: made by creates whose record the store
    /// refused, unmapped.
    superseded_creates: std::collections::BTreeSet<i64>,
}

/// The whole decision log, newest first, with each decision's sequence number.
async fn decision_log(store: &dyn Store) -> Vec<(i64, DecisionRecord)> {
    let mut all = Vec::new();
    let mut query = DecisionQuery {
        limit: 500,
        ..DecisionQuery::default()
    };
    loop {
        let page = store.decisions(&query).await.unwrap();
        all.extend(page.records);
        match page.next_after {
            Some(after) => query.after = Some(after),
            None => break,
        }
    }
    all
}

/// Two `usersync processor` replicas in one consumer group share a PostgreSQL store and six
/// partitions, under random changes in which users keep moving between a few emails. A user's
/// email change puts its events under two keys, so two partitions, so the replicas decide
/// about the same users at the same time; the store's version check must make their records
/// take turns, and each refused record is decided again. The changes end with a burst the
/// replicas find waiting (they are suspended while it is published): every user moves twice in
/// a row, so the two events of a user are decided side by side, with nothing after them.
///
/// What is compared: the broker chooses the order across keys, so `usersync decide` runs on the
/// events in the order the store recorded them. With the check, the recorded history is that
/// serial run: the same last-known Salesforce users, the same mappings, every Outreach user
/// `decide` creates (see [`assert_replicas_match_decide`]). What a call made on a stale state
/// did to an Outreach user's names cannot be undone by the store, so names are compared after
/// a settling pass on one replica (one more change of every user), where usersync brings every
/// Outreach user mapped to an active Salesforce user of the same email in line with it. Then
/// the end state is judged once more from the two simulators alone, without `decide`, by the
/// oracle (`tests/support/oracle.rs`): one Outreach user per email, mapped to the one active
/// Salesforce user of its email, showing its names and id, no two mirroring one user — save
/// those superseded creates left.
///
/// Without the check most runs fail: an older event of a user recorded after a newer one of
/// the same user (under its other email) leaves a stale last-known state, and the mappings
/// built on it differ from `decide`'s.
#[tokio::test(flavor = "multi_thread")]
async fn two_processor_replicas_under_email_changes_end_where_usersync_decide_says() {
    const CHANGES: usize = 800;
    const PARTITIONS: i32 = 6;
    let Some(brokers) = brokers() else { return };
    let Some(admin_url) = support::postgres::database_url() else {
        return;
    };
    let database = support::postgres::FreshDatabase::create(&admin_url, "replicas").await;
    let mut world = World::start_on(&brokers, Some(&database.url)).await;
    world.set("USERSYNC_KAFKA__PARTITIONS", &PARTITIONS.to_string());
    // The replicas stand still while the closing burst is published: longer than that.
    world.set("USERSYNC_PROCESSOR__SESSION_TIMEOUT_MS", "30000");
    let seed = test_seed();
    let pool: Vec<String> = (0..8).map(|n| format!("p{n}@acme.example")).collect();
    let before = seed_outreach_users(&world, &pool[..4]).await;
    let settings = SyncSettings::default();
    world.store.save_settings(&settings).await.unwrap();

    // Both replicas hold partitions before the first change, so both work from the start.
    let first = world.role("processor");
    let second = world.processor_replica("processor-2").await;
    until(&world, "the two replicas share the partitions", || async {
        let (a, b) = (
            assigned_partitions(&world.log("processor")),
            assigned_partitions(&world.log("processor-2")),
        );
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == PARTITIONS as usize
    })
    .await;

    let subscriber = world.role("subscriber");
    let mut changes = RandomChanges::new(seed, pool)
        .with_weights(Weights {
            create: 15,
            rename: 15,
            email: 45,
            deactivate: 13,
            activate: 12,
        })
        .with_repeats(0.5);
    let opening = changes.create(&world).await;
    world.until_applied(&opening).await;
    while changes.published < CHANGES {
        changes.step(&world).await;
    }
    let mut topic = TopicReader::new(&brokers, world.var("USERSYNC_KAFKA__TOPIC"), PARTITIONS);
    // The last events of every user: two moves in a row, under two keys, so mostly on the
    // partitions of both replicas. They find them waiting and work through them side by side,
    // so the two events of a user are decided at about the same moment; nothing comes after
    // them to repair a state one of them overwrote.
    first.signal("STOP");
    second.signal("STOP");
    changes.move_each_user_twice(&world).await;
    until_all_published(&world, &mut topic, changes.published).await;
    first.signal("CONT");
    second.signal("CONT");
    until_all_processed(&world, &mut topic, changes.published).await;

    let conflicts = record_conflicts(&world, &["processor", "processor-2"]);
    eprintln!(
        "{} events, {conflicts} records refused and decided again (seed {seed})",
        topic.events.len()
    );
    if conflicts == 0 {
        let history: Vec<String> = ["processor", "processor-2"]
            .iter()
            .flat_map(|name| {
                let log = world.log(name);
                let lines: Vec<String> = log
                    .lines()
                    .filter(|l| l.contains("partitions") || l.contains("WARN"))
                    .map(|l| format!("{name}: {l}"))
                    .collect();
                lines
            })
            .collect();
        panic!(
            "the replicas never decided on the same state at once: this run proves nothing \
             (seed {seed}); their partitions and warnings:\n{}",
            history.join("\n")
        );
    }
    assert_replicas_match_decide(&world, seed, &settings, &before, &topic.events).await;

    // Settle on one replica: one more change of every user, none of them concurrent.
    second.stop();
    for (n, user) in changes.users.clone().iter().enumerate() {
        let answer = world
            .call(
                reqwest::Method::PATCH,
                format!("{}/_sim/users/{user}", world.salesforce_url),
                Some(json!({"Title": format!("settled {n}")})),
            )
            .await;
        changes.published += answer["events"].as_u64().unwrap() as usize;
    }
    until_all_processed(&world, &mut topic, changes.published).await;
    subscriber.stop();
    first.stop();
    topic.read();

    let Matched {
        mapped,
        decided,
        superseded_creates,
    } = assert_replicas_match_decide(&world, seed, &settings, &before, &topic.events).await;
    // usersync keeps an Outreach user in line with the Salesforce user it is mapped to while
    // that user is active and still has its email (after an email change the link is kept but
    // the Outreach user is left alone: `email_diverged`). The last-known states equal each
    // user's newest event (checked above).
    let mut kept_in_line = std::collections::BTreeSet::new();
    for (salesforce, email) in &mapped {
        let id = SalesforceId::parse(salesforce).unwrap();
        let user = world.store.salesforce_user(&id).await.unwrap().unwrap();
        if user.is_active && user.email_normalized().as_ref() == Some(email) {
            kept_in_line.insert(email.clone());
        }
    }
    let decided_users = by_email(decided["outreach_users"].as_array().unwrap());
    let actual_users = by_email(&world.outreach_users().await);
    let pick = |users: &BTreeMap<String, Value>| -> Vec<Value> {
        users
            .iter()
            .filter(|(email, _)| kept_in_line.contains(*email))
            .map(|(_, user)| user.clone())
            .collect()
    };
    assert_same(
        "Outreach users kept in line with their Salesforce users",
        seed,
        &pick(&actual_users),
        &pick(&decided_users),
    );
    world.assert_oracle_sparing(&superseded_creates).await;
    drop(world);
    database.drop_now().await;
}
