//! The whole process in one test: `usersync run` on librdkafka's mock cluster, both simulators
//! on loopback, SQLite in a temporary folder, and the admin server on a known loopback port.
//! Shared by the tests that need every role at once (`run.rs`, `connections.rs`). Processes of
//! the binary are in [`process`], the test PostgreSQL in [`postgres`].

#![allow(dead_code)] // each test file uses its own part of it

pub mod oracle;
pub mod postgres;
pub mod process;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::sync::watch;
use usersync::app::demo::{connect_outreach_sim, connect_salesforce_sim};
use usersync::config::Config;
use usersync::store::MappingFilter;
use usersync_sim::outreach::{OutreachSim, SimConfig};
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

pub const WAIT: Duration = Duration::from_secs(60);
/// The Salesforce user whose authorization the subscriber uses.
pub const INTEGRATION_USER: &str = "integration@acme.example";

/// Everything `usersync run` talks to, and its configuration (change it before [`start`]).
///
/// [`start`]: Parts::start
pub struct Parts {
    pub mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub salesforce: SalesforceSim,
    pub outreach: OutreachSim,
    pub config: Config,
    /// `http://127.0.0.1:<port>` of the admin server once started.
    pub admin_url: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A loopback port nothing listens on now (bound, then released): the admin address must be
/// known before `run` starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Parts {
    pub async fn new() -> Parts {
        let mock = MockCluster::new(1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.kafka.brokers = mock.bootstrap_servers();
        for topic in [&config.kafka.topic, &config.kafka.dead_letter_topic] {
            mock.create_topic(topic, config.kafka.partitions, 1)
                .unwrap();
        }

        // The admin address first: the apps of both simulators register its callback URLs.
        let admin = format!("127.0.0.1:{}", free_port());
        let salesforce = SalesforceSim::start(SfSimConfig::new("")).await.unwrap();
        connect_salesforce_sim(&mut config.salesforce, &salesforce, INTEGRATION_USER);
        salesforce.add_callback_url(&format!("http://{admin}/oauth/salesforce/callback"));
        config.salesforce.backoff_min = Duration::from_millis(50);
        config.salesforce.backoff_max = Duration::from_millis(500);

        let outreach = OutreachSim::start(SimConfig {
            mint_throttle: Duration::ZERO,
            redirect_uri: format!("http://{admin}/oauth/outreach/callback"),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        connect_outreach_sim(
            &mut config.outreach,
            &outreach,
            &["users.all", "webhooks.all"],
        );
        // The simulator does not throttle minting, so the client need not space its mints.
        config.outreach.mint_interval = Duration::from_secs(0);
        config.processor.retry_min = Duration::from_millis(50);
        config.processor.retry_max = Duration::from_millis(1_000);

        config.admin.listen = admin.clone();
        config.store.url = format!("sqlite://{}", dir.path().join("usersync.db").display());
        // A key for the credentials a reconnect stores (32 bytes, base64), its owner's only:
        // usersync refuses a key file others may read.
        let key_file = dir.path().join("secret.key");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_file)
                .and_then(|mut file| {
                    file.write_all(b"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n")
                })
                .unwrap();
        }
        config.secrets.key_file = key_file.display().to_string();
        Parts {
            mock,
            salesforce,
            outreach,
            config,
            admin_url: format!("http://{admin}"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Starts `usersync run` and waits until its admin server answers.
    pub async fn start(&self) -> Running {
        self.config.validate().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let handle = tokio::spawn({
            let config = self.config.clone();
            async move { usersync::app::run::run(&config, &Default::default(), shutdown).await }
        });
        until("the admin server answers", || async {
            self.http
                .get(format!("{}/healthz", self.admin_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Running { stop, handle }
    }

    /// Starts `usersync run` and waits until a first change (user `before`) went all the way
    /// through: the stream is live on both sides.
    pub async fn start_live(&self) -> Running {
        let running = self.start().await;
        self.create_salesforce_user("before");
        until("the pipeline is live", || async {
            self.in_outreach("before@acme.example")
        })
        .await;
        running
    }

    /// Creates a Salesforce user `{name}@acme.example`; returns its id.
    pub fn create_salesforce_user(&self, name: &str) -> String {
        self.create_salesforce_user_with_email(name, &format!("{name}@acme.example"))
    }

    /// Creates a Salesforce user with username `{name}@acme.example` and `email` (which other
    /// users may share); returns its id.
    pub fn create_salesforce_user_with_email(&self, name: &str, email: &str) -> String {
        let username = format!("{name}@acme.example");
        self.salesforce
            .create_user(
                json!({"Username": username, "Email": email, "FirstName": name, "LastName": "Lee"}),
                &Writer::default(),
            )
            .unwrap()
    }

    /// Whether Outreach has a user with `email`.
    pub fn in_outreach(&self, email: &str) -> bool {
        self.outreach.users().iter().any(|u| u.email == email)
    }

    /// A request to the admin API, with an admin token when the configuration has one
    /// (`admin.token`, else the first `[[admin.tokens]]` entry with the role `admin`); a call
    /// that changes something says it is JSON, as the CLI and the page do (the admin server
    /// refuses it otherwise).
    fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let changes = !method.is_safe();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin_url));
        if changes {
            request = request.header("content-type", "application/json");
        }
        let tokens = usersync::admin::tokens::configured(&self.config.admin).unwrap();
        match tokens
            .iter()
            .find(|t| t.role == usersync::admin::Role::Admin)
        {
            Some(admin) => request.bearer_auth(admin.token.expose()),
            None => request,
        }
    }

    /// `GET` or `POST` on the admin API; the status and the JSON body.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self.admin_request(method, path).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST` with a JSON body on the admin API; the status and the raw body.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, String) {
        let response = self
            .admin_request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// `/metrics` as Prometheus reads it.
    pub async fn metrics_page(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// The value of one series on `/metrics` (`name{labels}` as printed), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        usersync::metrics::sample(&self.metrics_page().await, series).unwrap_or(0.0)
    }

    /// One side's connection from `GET /api/v1/status`.
    pub async fn connection(&self, side: &str) -> Value {
        let (status, body) = self.admin(reqwest::Method::GET, "/api/v1/status").await;
        assert_eq!(status, 200, "{body}");
        body["connections"][side].clone()
    }
}

/// What the end state is compared on: each Outreach user by email (ids follow the order of
/// creates, which across partitions is the broker's to choose) with names and lock, and each
/// mapping as Salesforce id → the mapped Outreach user's email.
type EndState = (Vec<Value>, BTreeMap<String, String>);

impl Parts {
    /// Every `user_change.v1` event on the change topic so far, partition by partition.
    pub fn published_events(&self) -> Vec<Value> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.config.kafka.brokers)
            .set("group.id", "usersync-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for partition in 0..self.config.kafka.partitions {
            partitions
                .add_partition_offset(&self.config.kafka.topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&partitions).unwrap();
        let mut on_topic = 0;
        for partition in 0..self.config.kafka.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.config.kafka.topic, partition, WAIT)
                .unwrap();
            on_topic += usize::try_from(high - low).unwrap();
        }
        let mut events = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while events.len() < on_topic {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} of {on_topic} events",
                events.len()
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                events.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
            }
        }
        events
    }

    /// What `usersync decide` (the binary) computes from every published event, from an empty
    /// Outreach and the settings in force.
    async fn decided(&self, dir: &std::path::Path) -> EndState {
        let (status, settings) = self.admin(reqwest::Method::GET, "/api/v1/settings").await;
        assert_eq!(status, 200, "{settings}");
        let scenario = json!({
            "settings": settings["settings"],
            "outreach_users": [],
            "salesforce_users": [],
            "mappings": [],
            "events": self.published_events(),
        });
        let decided = usersync_decide(dir, &scenario);
        let users = decided["outreach_users"].as_array().unwrap();
        let email_of: BTreeMap<i64, String> = users
            .iter()
            .map(|u| {
                (
                    u["id"].as_i64().unwrap(),
                    u["email"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut projected: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({"email": u["email"], "first_name": u["first_name"],
                       "last_name": u["last_name"], "locked": u["locked"]})
            })
            .collect();
        projected.sort_by_key(|u| u["email"].to_string());
        let mappings = decided["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["salesforce_user_id"].as_str().unwrap().to_owned(),
                    email_of[&m["outreach_user_id"].as_i64().unwrap()].clone(),
                )
            })
            .collect();
        (projected, mappings)
    }

    /// The end state here: the Outreach simulator's users and the store's mappings.
    async fn applied(&self, store: &dyn usersync::store::Store) -> EndState {
        let users = self.outreach.users();
        let email_of: BTreeMap<i64, String> =
            users.iter().map(|u| (u.id, u.email.clone())).collect();
        let mut projected: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({"email": u.email, "first_name": u.first_name,
                       "last_name": u.last_name, "locked": u.locked})
            })
            .collect();
        projected.sort_by_key(|u| u["email"].to_string());
        let mappings = store
            .mappings(&MappingFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                (
                    m.salesforce_user_id.as_str().to_owned(),
                    email_of[&m.outreach_user_id.0].clone(),
                )
            })
            .collect();
        (projected, mappings)
    }

    /// The drills' verdict: the Outreach users and the mappings equal what `usersync decide`
    /// computes from every change published — every change applied, none twice, nothing else.
    /// Waits for the pipeline to settle (at most [`WAIT`]).
    pub async fn assert_matches_decide(&self) {
        let dir = tempfile::tempdir().unwrap();
        let store = usersync::store::open(&self.config.store.url).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let decided = self.decided(dir.path()).await;
            let applied = self.applied(store.as_ref()).await;
            if decided == applied {
                assert!(!applied.0.is_empty(), "the drill changed nothing");
                self.assert_oracle(store.as_ref()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the end state differs from usersync decide on the same changes:\n\
                 applied {applied:?}\ndecided {decided:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Parts {
    /// The end state judged from the simulators' final users alone ([`oracle`]).
    pub async fn assert_oracle(&self, store: &dyn usersync::store::Store) {
        let settings = store
            .settings()
            .await
            .expect("the store reads its settings")
            .unwrap_or_else(|| self.config.sync.clone());
        oracle::assert_holds(&oracle::Sources {
            http: &self.http,
            salesforce_url: &self.salesforce.base_url(),
            outreach_url: &self.outreach.base_url(),
            store,
            settings: &settings,
            superseded_creates: &Default::default(),
        })
        .await;
    }
}

/// Runs the `usersync decide` binary on `scenario` (its input format), written into `dir`;
/// its output document.
pub fn usersync_decide(dir: &std::path::Path, scenario: &Value) -> Value {
    let path = dir.join("scenario.json");
    std::fs::write(&path, serde_json::to_vec(scenario).unwrap()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .arg("decide")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "usersync decide failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `usersync run`, started.
pub struct Running {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Sends the stop signal; `run` must end cleanly.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        let result = tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("run stops after the signal")
            .unwrap();
        result.unwrap();
    }
}

pub async fn until<F, Fut>(what: &str, mut check: F)
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
