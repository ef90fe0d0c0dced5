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
//! Each test uses its own topics and consumer group, so tests share one broker safely.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use usersync::engine::state::{Mapping, SalesforceUser};
use usersync::outreach::{OutreachUser, OutreachUserId};
use usersync::salesforce::id::SalesforceId;
use usersync::store::{MappingFilter, Store};

const BROKERS_VAR: &str = "USERSYNC_TEST_KAFKA_BROKERS";
const WAIT: Duration = Duration::from_secs(90);
const RUN_AS: &str = "integration@acme.example";
const EMAIL: &str = "abc@def.com";

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

/// A child process of the binary, killed when dropped.
struct Process {
    child: Child,
    name: String,
}

impl Process {
    fn spawn(name: &str, args: &[&str], env: &[(String, String)], log: &Path) -> Process {
        let log = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_usersync"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "usersync=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            child,
            name: name.to_owned(),
        }
    }

    /// The first `n` lines the process prints (the simulators print their addresses).
    fn lines(&mut self, n: usize) -> Vec<String> {
        let stdout = self.child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        for _ in 0..n {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(
                !line.is_empty(),
                "{} ended before printing its address",
                self.name
            );
            lines.push(line.trim().to_owned());
        }
        // Keep the pipe open and drained so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        lines
    }

    /// SIGKILL: no drain, no flush, no commit.
    fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    async fn start(brokers: &str) -> World {
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
        let url = format!("sqlite://{}", dir.path().join("usersync.db").display());
        let store = usersync::store::open(&url).await.unwrap();
        use usersync::sim::outreach as o;
        use usersync::sim::salesforce as s;
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
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
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

    fn role(&self, role: &str) -> Process {
        Process::spawn(role, &[role], &self.env, self.dir.path())
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

async fn until<F, Fut>(world: &World, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            let logs: Vec<String> = ["subscriber", "processor"]
                .iter()
                .map(|role| {
                    let text =
                        std::fs::read_to_string(world.dir.path().join(format!("{role}.log")))
                            .unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    format!("--- {role} (last lines, newest first)\n{}", tail.join("\n"))
                })
                .collect();
            panic!("timed out: {what}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    until(&world, "X's snapshot is applied", || async {
        world
            .store
            .salesforce_user(&SalesforceId::parse(&x).unwrap())
            .await
            .unwrap()
            .and_then(|u| u.applied)
            .is_some()
    })
    .await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_on_a_broker_y_created_first() {
    seed_scenario(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_on_a_broker_x_deactivated_first() {
    seed_scenario(false).await;
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
}
