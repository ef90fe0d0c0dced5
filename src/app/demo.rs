//! `usersync demo`: the whole pipeline in one process on embedded defaults, telling the
//! remap story as it happens.
//!
//! Nothing outside the process is needed: Kafka is librdkafka's in-process mock cluster, both
//! simulators listen on loopback, the store is SQLite in a temporary folder. The real roles run
//! against them exactly as in production — the subscriber signs in to the Salesforce simulator
//! (client credentials), streams Change Data Capture over Pub/Sub gRPC and publishes to Kafka;
//! the processor consumes, decides and calls the Outreach simulator over HTTP.
//!
//! The story, from `decisions.md`'s seed example: Outreach user 1 (abc@def.com) is mapped to
//! Salesforce user X; a new Salesforce user Y is created with the same email (a conflict: the
//! email's Outreach user belongs to an active user); X is deactivated; the processor remaps
//! Outreach user 1 to Y. With `--once` the demo exits 0 when the remap happened, 1 otherwise.
//!
//! [`drive`] tells the same story to a pipeline that already runs elsewhere (the compose file's
//! `demo` profile: each role and simulator in its own container): it writes through the
//! simulators' control APIs and watches the decisions through the admin API. There the
//! mapping of Outreach user 1 to X is not seeded into the store: Outreach user 1 exists first,
//! X is created with its email, and the processor links them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::admin::client::AdminApi;
use crate::config::{Config, OutreachConfig, SalesforceAuthFlow, SalesforceConfig, Secret};
use crate::engine::decision::{Action, DecisionRecord};
use crate::engine::state::Mapping;
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;
use crate::outreach::OutreachUserId;
use crate::store::{MappingFilter, Store};
use usersync_sim::outreach::{OutreachSim, SimConfig, SimUser};
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

const EMAIL: &str = "abc@def.com";
const INTEGRATION_USER: &str = "integration@demo.example";
/// How long each step of the story may take before the demo says it did not happen.
const STEP: Duration = Duration::from_secs(60);

/// Runs the demo until `shutdown` turns true (or, with `once`, until the story ends). Returns
/// whether Outreach user 1 ended mapped to Y. With `admin_token` (not empty), the demo's admin
/// server asks every API call for it, as a configured `admin.token` does.
pub async fn run(
    once: bool,
    admin_token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("creating the demo's temporary folder")?;
    let parts = Parts::start(&dir).await?;
    let Parts {
        mock,
        salesforce,
        outreach,
        config,
        store,
    } = parts;

    let x = salesforce
        .create_user(
            json!({"Username": "ann.lee@demo.example", "Email": EMAIL, "FirstName": "Ann",
                   "LastName": "Lee", "Title": "Account Executive"}),
            &Writer::default(),
        )
        .map_err(|e| anyhow::anyhow!("creating Salesforce user X in the simulator: {e}"))?;
    let x_id = SalesforceId::parse(&x)?;
    let mut one = SimUser::new(1, EMAIL);
    one.first_name = Some("Ann".into());
    one.last_name = Some("Lee".into());
    let one = OutreachUserId(outreach.seed_user(one));

    let client = crate::roles::processor::role::outreach_client(&config.outreach)?;
    let index = client
        .list_users()
        .await
        .context("reading the Outreach simulator's users")?;
    store.put_outreach_users(&index.value).await?;
    store
        .put_salesforce_users(&[SalesforceUser {
            id: x_id.clone(),
            email: Some(EMAIL.into()),
            username: Some("ann.lee@demo.example".into()),
            first_name: Some("Ann".into()),
            last_name: Some("Lee".into()),
            title: Some("Account Executive".into()),
            is_active: true,
            created_date: None,
            last_modified_date: None,
            applied: None,
        }])
        .await?;
    store
        .put_mapping(&Mapping {
            outreach_user_id: one,
            salesforce_user_id: x_id.clone(),
            locked_by_usersync: false,
        })
        .await?;

    let (stop, stopped) = watch::channel(false);
    let connections = crate::connection::Connections::new();
    let mut processor = crate::roles::processor::role::build_with(&config, store.clone(), client)
        .await?
        .with_connections(connections.clone());
    let story = processor.decisions();
    let decisions = processor.decision_feed();
    let mut roles = crate::app::run::Roles::default();
    roles.spawn("processor", {
        let stopped = stopped.clone();
        async move { processor.run(stopped).await.map_err(anyhow::Error::from) }
    });
    roles.spawn("subscriber", {
        let config = config.clone();
        let connections = connections.clone();
        let stopped = stopped.clone();
        async move {
            crate::roles::subscriber::role::run_with(&config, &connections, None, stopped).await
        }
    });
    let tokens: Vec<crate::admin::tokens::AdminToken> = admin_token
        .filter(|t| !t.is_empty())
        .map(|t| {
            crate::admin::tokens::AdminToken::new(
                crate::admin::tokens::SHARED_TOKEN_NAME,
                crate::admin::actor::Role::Admin,
                &t,
            )
        })
        .into_iter()
        .collect();
    let admin = crate::admin::bind("127.0.0.1:0".parse()?, &tokens).await?;
    let admin_url = format!("http://{}", admin.local_addr()?);
    roles.spawn("admin server", {
        let router = crate::admin::router(crate::admin::AdminState {
            store: store.clone(),
            connections,
            authorizations: None,
            decisions: Some(decisions),
            config: Some(Arc::new(config.clone())),
            outreach: None,
            tokens: tokens.into(),
            pending: Default::default(),
            actions: Default::default(),
            addresses: crate::admin::AdminAddresses::loopback(admin.local_addr()?),
        });
        let stopped = stopped.clone();
        async move {
            crate::admin::serve(admin, router, stopped)
                .await
                .map_err(anyhow::Error::from)
        }
    });

    println!("usersync demo: every part runs in this process");
    println!(
        "  Kafka       librdkafka mock cluster at {}",
        mock.bootstrap_servers()
    );
    println!(
        "  Salesforce  simulator at {} (Pub/Sub {})",
        salesforce.base_url(),
        salesforce.pubsub_url()
    );
    println!("  Outreach    simulator at {}", outreach.base_url());
    println!("  store       {}", config.store.url);
    println!();
    println!("Outreach user {one} ({EMAIL}) is mapped to Salesforce user X ({x_id}).");
    println!("The subscriber loads every Salesforce user, then streams their changes…");

    let mut stage = InProcess {
        salesforce: salesforce.clone(),
        decisions: story,
        store: store.clone(),
    };
    let remapped = tell(
        &mut stage,
        &x_id,
        |d| d.salesforce_user_id.as_ref() == Some(&x_id),
        STEP,
        one,
    )
    .await;
    let story = stage.decisions;
    print_admin(&admin_url);

    if !once && remapped.is_ok() {
        println!("Running until Ctrl-C; later decisions are printed as they come.");
        let printer = tokio::spawn(print_decisions(story));
        let _ = shutdown.wait_for(|stop| *stop).await;
        printer.abort();
    }
    let _ = stop.send(true);
    let bound = config.run.shutdown_timeout;
    if let Err(error) = roles.stop_within(bound).await {
        eprintln!("usersync demo: {error:#}");
    }
    drop(mock);
    remapped
}

/// Points `config` at a running Salesforce simulator: its connected app, signing in with client
/// credentials as `run_as` (added to the org and made the app's run-as user). The demo, the
/// in-process tests and the load harness all wire the simulator this way.
pub fn connect_salesforce_sim(config: &mut SalesforceConfig, sim: &SalesforceSim, run_as: &str) {
    sim.add_user(run_as);
    sim.set_run_as_user(Some(run_as));
    config.auth = SalesforceAuthFlow::ClientCredentials;
    config.login_url = sim.login_url();
    config.my_domain_url = sim.my_domain_url();
    config.consumer_key = sim.consumer_key();
    config.consumer_secret = Secret::new(sim.consumer_secret());
    config.pubsub_endpoint = sim.pubsub_url();
}

/// Points `config` at a running Outreach simulator (its default app), authorized with a refresh
/// token the simulator issues now for `scopes`.
pub fn connect_outreach_sim(config: &mut OutreachConfig, sim: &OutreachSim, scopes: &[&str]) {
    let (client_id, client_secret, redirect_uri) = sim.app();
    config.api_url = sim.api_url();
    config.token_url = sim.token_url();
    config.client_id = client_id;
    config.client_secret = Secret::new(client_secret);
    config.redirect_uri = redirect_uri;
    config.refresh_token = Secret::new(sim.issue_tokens(scopes).refresh_token);
}

/// The demo's external parts, started.
struct Parts {
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    salesforce: SalesforceSim,
    outreach: OutreachSim,
    config: Config,
    store: Arc<dyn Store>,
}

impl Parts {
    async fn start(dir: &tempfile::TempDir) -> anyhow::Result<Parts> {
        let mock = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
        let mut config = Config::default();
        config.kafka.brokers = mock.bootstrap_servers();
        for topic in [&config.kafka.topic, &config.kafka.dead_letter_topic] {
            mock.create_topic(topic, config.kafka.partitions, 1)
                .with_context(|| format!("creating {topic} on the mock cluster"))?;
        }

        // A connected app without a certificate: the demo signs in with client credentials.
        let salesforce = SalesforceSim::start(SfSimConfig::new(""))
            .await
            .context("starting the Salesforce simulator")?;
        connect_salesforce_sim(&mut config.salesforce, &salesforce, INTEGRATION_USER);

        let outreach = OutreachSim::start(SimConfig {
            mint_throttle: Duration::ZERO,
            ..SimConfig::default()
        })
        .await
        .context("starting the Outreach simulator")?;
        connect_outreach_sim(&mut config.outreach, &outreach, &["users.all"]);

        config.store.url = format!("sqlite://{}", dir.path().join("usersync.db").display());
        let store = crate::store::open(&config.store.url)
            .await
            .context("opening the demo's SQLite store")?;
        config.validate()?;
        Ok(Parts {
            mock,
            salesforce,
            outreach,
            config,
            store,
        })
    }
}

/// Prints every decision in plain words as it is recorded.
async fn print_decisions(mut decisions: broadcast::Receiver<DecisionRecord>) {
    loop {
        match decisions.recv().await {
            Ok(decision) => print_decision(&decision),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                println!("  ({missed} decisions not shown)")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Waits up to `within` for a decision matching `wanted`, printing every decision on the way.
async fn wait_for(
    stage: &mut impl Stage,
    within: Duration,
    wanted: impl Fn(&DecisionRecord) -> bool,
) -> Option<DecisionRecord> {
    let deadline = tokio::time::Instant::now() + within;
    while let Some(decision) = stage.next_decision(deadline).await {
        print_decision(&decision);
        if wanted(&decision) {
            return Some(decision);
        }
    }
    None
}

fn print_decision(decision: &DecisionRecord) {
    println!("  decision: {:<8} {}", decision.action, decision.message);
}

fn print_admin(admin_url: &str) {
    println!(
        "\nAdmin: {admin_url}  (try {admin_url}/api/v1/mappings and {admin_url}/api/v1/decisions)"
    );
}

/// What the story needs from where it is told: Salesforce writes, the decisions as they are
/// recorded, the mappings.
#[async_trait]
trait Stage: Send {
    /// Creates a Salesforce user with `fields`; `who` names it in an error.
    async fn create_salesforce_user(
        &self,
        fields: Value,
        who: &str,
    ) -> anyhow::Result<SalesforceId>;
    /// Marks the Salesforce user inactive.
    async fn deactivate(&self, id: &SalesforceId) -> anyhow::Result<()>;
    /// The next decision recorded, waiting until `deadline`; `None` when none came.
    async fn next_decision(&mut self, deadline: tokio::time::Instant) -> Option<DecisionRecord>;
    async fn mappings(&self) -> anyhow::Result<Vec<Mapping>>;
}

/// The story once X is known: waits up to `first` for the decision `x_settled` describes (the
/// pipeline may still be starting), then Y is created with X's email (a conflict), X is
/// deactivated (the remap), the final mapping is printed. Whether Outreach user `one` ended
/// mapped to Y.
async fn tell(
    stage: &mut impl Stage,
    x_id: &SalesforceId,
    x_settled: impl Fn(&DecisionRecord) -> bool,
    first: Duration,
    one: OutreachUserId,
) -> anyhow::Result<bool> {
    wait_for(stage, first, x_settled).await;
    println!("\nSalesforce: a new user Y is created with the same email, {EMAIL}.");
    let y_id = stage
        .create_salesforce_user(
            json!({"Username": "ann.lee2@demo.example", "Email": EMAIL, "FirstName": "Ann",
                   "LastName": "Lee-Young", "Title": "Account Executive"}),
            "Y",
        )
        .await?;
    wait_for(stage, STEP, |d| {
        d.salesforce_user_id.as_ref() == Some(&y_id)
    })
    .await;
    println!("\nSalesforce: X is marked inactive.");
    stage.deactivate(x_id).await?;
    let remap = wait_for(stage, STEP, |d| {
        d.action == Action::Remap && d.salesforce_user_id.as_ref() == Some(&y_id)
    })
    .await;
    let mappings = stage.mappings().await?;
    println!("\nFinal mapping:");
    for mapping in &mappings {
        let who = if mapping.salesforce_user_id == y_id {
            "Y"
        } else if mapping.salesforce_user_id == *x_id {
            "X"
        } else {
            "?"
        };
        println!(
            "  Outreach user {} ↔ Salesforce user {who} ({})",
            mapping.outreach_user_id, mapping.salesforce_user_id
        );
    }
    let done = remap.is_some()
        && mappings
            .iter()
            .any(|m| m.outreach_user_id == one && m.salesforce_user_id == y_id);
    println!(
        "{}",
        if done {
            "Outreach user 1 was remapped to the new, active Salesforce user; no Outreach user was created."
        } else {
            "The remap did not happen."
        }
    );
    Ok(done)
}

/// The demo's own process: the simulator's handle, the processor's decisions, the store.
struct InProcess {
    salesforce: SalesforceSim,
    decisions: broadcast::Receiver<DecisionRecord>,
    store: Arc<dyn Store>,
}

#[async_trait]
impl Stage for InProcess {
    async fn create_salesforce_user(
        &self,
        fields: Value,
        who: &str,
    ) -> anyhow::Result<SalesforceId> {
        let id = self
            .salesforce
            .create_user(fields, &Writer::default())
            .map_err(|e| anyhow::anyhow!("creating Salesforce user {who} in the simulator: {e}"))?;
        Ok(SalesforceId::parse(&id)?)
    }

    async fn deactivate(&self, id: &SalesforceId) -> anyhow::Result<()> {
        self.salesforce
            .deactivate(id.as_str())
            .map_err(|e| anyhow::anyhow!("deactivating {id} in the simulator: {e}"))?;
        Ok(())
    }

    async fn next_decision(&mut self, deadline: tokio::time::Instant) -> Option<DecisionRecord> {
        loop {
            match tokio::time::timeout_at(deadline, self.decisions.recv()).await {
                Ok(Ok(decision)) => return Some(decision),
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    println!("  ({missed} decisions not shown)")
                }
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
            }
        }
    }

    async fn mappings(&self) -> anyhow::Result<Vec<Mapping>> {
        Ok(self.store.mappings(&MappingFilter::default()).await?)
    }
}

/// Where [`drive`] finds the running pipeline.
pub struct Remote {
    /// The Salesforce simulator's base URL (its control API is under `/_sim/`).
    pub salesforce_sim: String,
    /// The Outreach simulator's base URL.
    pub outreach_sim: String,
    /// The admin server of a `usersync run` on the same store.
    pub admin: AdminApi,
    /// The admin server's URL, for the messages.
    pub admin_url: String,
    /// How long to wait for the simulators and the admin server to answer at start, and then
    /// for the first decision (the roles may still be connecting).
    pub wait: Duration,
}

/// Tells the story to a pipeline running elsewhere (simulators, subscriber, processors and an
/// admin server on one store): Outreach user 1 is added to the Outreach simulator, X is
/// created with its email (the processor links them), then Y and X's deactivation as in
/// [`run`]. Whether Outreach user 1 ended mapped to Y.
pub async fn drive(remote: Remote) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the demo's HTTP client")?;
    let salesforce = remote.salesforce_sim.trim_end_matches('/').to_owned();
    let outreach = remote.outreach_sim.trim_end_matches('/').to_owned();
    println!("usersync demo: driving a pipeline that runs elsewhere");
    println!("  Salesforce  simulator at {salesforce}");
    println!("  Outreach    simulator at {outreach}");
    println!("  Admin       {}", remote.admin_url);
    let deadline = tokio::time::Instant::now() + remote.wait;
    for (what, url) in [
        (
            "the Salesforce simulator",
            format!("{salesforce}/_sim/state"),
        ),
        ("the Outreach simulator", format!("{outreach}/_sim/users")),
        (
            "the admin server",
            format!("{}/readyz", remote.admin_url.trim_end_matches('/')),
        ),
    ] {
        wait_until_answering(&http, what, &url, deadline).await?;
    }

    let mut stage = Watched {
        http: http.clone(),
        salesforce,
        admin: remote.admin,
        seen: 0,
        pending: Default::default(),
    };
    stage.seen = stage.latest_decision().await?;

    let one = seed_outreach_user(&http, &outreach).await?;
    println!();
    println!("Outreach user {one} ({EMAIL}) exists; Salesforce has no user with that email yet.");
    println!(
        "\nSalesforce: user X is created with {EMAIL}; usersync links it to Outreach user {one}."
    );
    let x_id = stage
        .create_salesforce_user(
            json!({"Username": "ann.lee@demo.example", "Email": EMAIL, "FirstName": "Ann",
                   "LastName": "Lee", "Title": "Account Executive"}),
            "X",
        )
        .await?;
    // Outreach may first refuse a create (the processor's index did not know Outreach user 1
    // yet), which is decided again as the link.
    let linked = |d: &DecisionRecord| {
        d.action == Action::Link && d.salesforce_user_id.as_ref() == Some(&x_id)
    };
    let remapped = tell(&mut stage, &x_id, linked, remote.wait.max(STEP), one).await;
    print_admin(&remote.admin_url);
    remapped
}

/// Polls `url` until it answers 2xx or `deadline` passes (the containers start together).
async fn wait_until_answering(
    http: &reqwest::Client,
    what: &str,
    url: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    loop {
        let last = match http.get(url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("it answered {}", response.status()),
            Err(error) => format!("{error:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what} did not answer at {url} in time: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Adds Outreach user 1 to the Outreach simulator (or finds the one an earlier run added):
/// its id.
async fn seed_outreach_user(
    http: &reqwest::Client,
    outreach: &str,
) -> anyhow::Result<OutreachUserId> {
    let url = format!("{outreach}/_sim/users");
    let created = http
        .post(&url)
        .json(&json!({"email": EMAIL, "first_name": "Ann", "last_name": "Lee"}))
        .send()
        .await
        .with_context(|| format!("adding Outreach user {EMAIL} at {url}"))?;
    let status = created.status();
    let body: Value = created
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if status.is_success() {
        return user_id(&body).with_context(|| format!("the user {url} answered: {body}"));
    }
    let users: Value = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("listing the Outreach simulator's users at {url}"))?
        .json()
        .await
        .with_context(|| format!("reading the users of {url}"))?;
    users
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["email"].as_str() == Some(EMAIL))
        .and_then(|u| user_id(u).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the Outreach simulator refused {EMAIL} ({status}: {body}) and does not list it"
            )
        })
}

fn user_id(user: &Value) -> anyhow::Result<OutreachUserId> {
    user["id"]
        .as_i64()
        .map(OutreachUserId)
        .ok_or_else(|| anyhow::anyhow!("no integer id"))
}

/// The pipeline seen from outside: the Salesforce simulator's control API, the admin API.
struct Watched {
    http: reqwest::Client,
    salesforce: String,
    admin: AdminApi,
    /// The sequence of the newest decision seen.
    seen: i64,
    pending: std::collections::VecDeque<DecisionRecord>,
}

impl Watched {
    /// The sequence of the newest decision recorded now, so the story shows only its own.
    async fn latest_decision(&self) -> anyhow::Result<i64> {
        let (page, _) = self.decisions_page(None, 1).await?;
        Ok(page.first().map_or(0, |(sequence, _)| *sequence))
    }

    /// One page of the decision log, newest first, older than `before` when given; and the
    /// cursor of the next (older) page.
    async fn decisions_page(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> anyhow::Result<(Vec<(i64, DecisionRecord)>, Option<i64>)> {
        let mut path = format!("/api/v1/decisions?limit={limit}");
        if let Some(before) = before {
            path.push_str(&format!("&after={before}"));
        }
        let answer = self.admin.get(&path, "reading the decisions").await?;
        let mut records = Vec::new();
        for entry in answer["decisions"].as_array().into_iter().flatten() {
            let sequence = entry["sequence"]
                .as_i64()
                .ok_or_else(|| anyhow::anyhow!("a decision without a sequence: {entry}"))?;
            let record = serde_json::from_value(entry["decision"].clone())
                .with_context(|| format!("reading the decision {entry}"))?;
            records.push((sequence, record));
        }
        Ok((records, answer["next_after"].as_i64()))
    }

    /// The decisions recorded since the last one seen, oldest first.
    async fn new_decisions(&mut self) -> anyhow::Result<Vec<DecisionRecord>> {
        const PAGE: u32 = 100;
        let mut fresh = Vec::new();
        let mut before = None;
        loop {
            let (page, next) = self.decisions_page(before, PAGE).await?;
            let full = page.len() == PAGE as usize;
            let mut reached_seen = false;
            for (sequence, record) in page {
                if sequence <= self.seen {
                    reached_seen = true;
                    break;
                }
                fresh.push((sequence, record));
            }
            match next {
                Some(next) if full && !reached_seen => before = Some(next),
                _ => break,
            }
        }
        fresh.sort_by_key(|(sequence, _)| *sequence);
        if let Some((last, _)) = fresh.last() {
            self.seen = *last;
        }
        Ok(fresh.into_iter().map(|(_, record)| record).collect())
    }

    async fn sim(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("{what}: the Salesforce simulator at {}", self.salesforce))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{what}: the Salesforce simulator answered {status}: {body}");
        }
        Ok(body)
    }
}

#[async_trait]
impl Stage for Watched {
    async fn create_salesforce_user(
        &self,
        fields: Value,
        who: &str,
    ) -> anyhow::Result<SalesforceId> {
        let what = format!("creating Salesforce user {who}");
        let body = self
            .sim(
                self.http
                    .post(format!("{}/_sim/users", self.salesforce))
                    .json(&fields),
                &what,
            )
            .await?;
        let id = body["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{what}: no id in the simulator's answer {body}"))?;
        Ok(SalesforceId::parse(id)?)
    }

    async fn deactivate(&self, id: &SalesforceId) -> anyhow::Result<()> {
        self.sim(
            self.http
                .post(format!("{}/_sim/users/{id}/deactivate", self.salesforce)),
            &format!("deactivating {id}"),
        )
        .await?;
        Ok(())
    }

    async fn next_decision(&mut self, deadline: tokio::time::Instant) -> Option<DecisionRecord> {
        loop {
            if let Some(decision) = self.pending.pop_front() {
                return Some(decision);
            }
            match self.new_decisions().await {
                Ok(fresh) if !fresh.is_empty() => {
                    self.pending.extend(fresh);
                    continue;
                }
                Ok(_) => {}
                Err(error) => println!("  (cannot read the decisions now: {error:#})"),
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn mappings(&self) -> anyhow::Result<Vec<Mapping>> {
        let answer = self
            .admin
            .get("/api/v1/mappings", "reading the mappings")
            .await?;
        serde_json::from_value(answer["mappings"].clone())
            .with_context(|| format!("reading the mappings the admin API answered: {answer}"))
    }
}
