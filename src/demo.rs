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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, OutreachConfig, SalesforceAuthFlow, SalesforceConfig, Secret};
use crate::engine::decision::{Action, DecisionRecord};
use crate::engine::state::{Mapping, SalesforceUser};
use crate::outreach::OutreachUserId;
use crate::salesforce::id::SalesforceId;
use crate::sim::outreach::{OutreachSim, SimConfig, SimUser};
use crate::sim::salesforce::{SalesforceSim, SfSimConfig, Writer};
use crate::store::{MappingFilter, Store};

const EMAIL: &str = "abc@def.com";
const INTEGRATION_USER: &str = "integration@demo.example";
/// How long each step of the story may take before the demo says it did not happen.
const STEP: Duration = Duration::from_secs(60);

/// Runs the demo until `shutdown` turns true (or, with `once`, until the story ends). Returns
/// whether Outreach user 1 ended mapped to Y.
pub async fn run(once: bool, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<bool> {
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

    let client = crate::processor::role::outreach_client(&config.outreach)?;
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
    let mut processor = crate::processor::role::build_with(&config, store.clone(), client)
        .await?
        .with_connections(connections.clone());
    let mut story = processor.decisions();
    let decisions = processor.decision_feed();
    let mut roles = crate::run::Roles::default();
    roles.spawn("processor", {
        let stopped = stopped.clone();
        async move { processor.run(stopped).await.map_err(anyhow::Error::from) }
    });
    roles.spawn("subscriber", {
        let config = config.clone();
        let connections = connections.clone();
        let stopped = stopped.clone();
        async move { crate::salesforce::role::run_with(&config, &connections, None, stopped).await }
    });
    let admin = crate::admin::bind("127.0.0.1:0".parse()?, false).await?;
    let admin_url = format!("http://{}", admin.local_addr()?);
    roles.spawn("admin server", {
        let router = crate::admin::router(crate::admin::AdminState {
            store: store.clone(),
            connections,
            authorizations: None,
            decisions: Some(decisions),
            config: Some(Arc::new(config.clone())),
            outreach: None,
            token: None,
            pending: Default::default(),
            actions: Default::default(),
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

    let remapped = async {
        wait_for(&mut story, |d| d.salesforce_user_id.as_ref() == Some(&x_id)).await;
        println!("\nSalesforce: a new user Y is created with the same email, {EMAIL}.");
        let y = salesforce
            .create_user(
                json!({"Username": "ann.lee2@demo.example", "Email": EMAIL, "FirstName": "Ann",
                       "LastName": "Lee-Young", "Title": "Account Executive"}),
                &Writer::default(),
            )
            .map_err(|e| anyhow::anyhow!("creating Salesforce user Y in the simulator: {e}"))?;
        let y_id = SalesforceId::parse(&y)?;
        wait_for(&mut story, |d| d.salesforce_user_id.as_ref() == Some(&y_id)).await;
        println!("\nSalesforce: X is marked inactive.");
        salesforce
            .deactivate(&x)
            .map_err(|e| anyhow::anyhow!("deactivating X in the simulator: {e}"))?;
        let remap = wait_for(&mut story, |d| {
            d.action == Action::Remap && d.salesforce_user_id.as_ref() == Some(&y_id)
        })
        .await;
        let mappings = store.mappings(&MappingFilter::default()).await?;
        println!("\nFinal mapping:");
        for mapping in &mappings {
            let who = if mapping.salesforce_user_id == y_id {
                "Y"
            } else if mapping.salesforce_user_id == x_id {
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
        anyhow::Ok(done)
    }
    .await;
    println!(
        "\nAdmin: {admin_url}  (try {admin_url}/api/v1/mappings and {admin_url}/api/v1/decisions)"
    );

    if !once && remapped.is_ok() {
        println!("Running until Ctrl-C; later decisions are printed as they come.");
        let printer = tokio::spawn(print_decisions(story));
        let _ = shutdown.wait_for(|stop| *stop).await;
        printer.abort();
    }
    let _ = stop.send(true);
    let bound = Duration::from_secs(config.run.shutdown_timeout_seconds);
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

/// Waits up to [`STEP`] for a decision matching `wanted`, printing every decision on the way.
async fn wait_for(
    decisions: &mut broadcast::Receiver<DecisionRecord>,
    wanted: impl Fn(&DecisionRecord) -> bool,
) -> Option<DecisionRecord> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, decisions.recv()).await {
            Ok(Ok(decision)) => {
                print_decision(&decision);
                if wanted(&decision) {
                    return Some(decision);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                println!("  ({missed} decisions not shown)")
            }
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

fn print_decision(decision: &DecisionRecord) {
    println!("  decision: {:<8} {}", decision.action, decision.message);
}
