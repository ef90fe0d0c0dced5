//! `usersync decide`: the engine, offline.
//!
//! A scenario is settings, the state before (Outreach users, last-known Salesforce users,
//! mappings) and `user_change.v1` events in delivery order. The runner starts the Outreach
//! simulator in-process, seeds it, and applies every event with the real engine and the real
//! Outreach client over loopback HTTP — the same path the processor takes, minus Kafka and the
//! store. Admins use it to try settings on recorded events; tests and reviewers use it to check
//! the rules. Input and output shapes are a public contract (`decisions.md`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{OutreachConfig, Secret};
use crate::engine::decision::{Action, DecisionRecord, Reason};
use crate::engine::settings::SyncSettings;
use crate::engine::state::{Mapping, SyncState};
use crate::model::event::UserChange;
use crate::model::outreach_user::{OutreachUser, OutreachUserId};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;
use crate::outreach::auth::{MemoryTokenStore, OAuthTokens};
use crate::outreach::client::OutreachClient;
use crate::roles::processor::apply::{ApplyError, apply_event};
use usersync_sim::outreach::{OutreachSim, SimConfig, SimUser};

/// An Outreach user in a scenario (input and output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioOutreachUser {
    pub id: i64,
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom5: Option<String>,
}

impl ScenarioOutreachUser {
    fn custom(&self) -> [Option<String>; 5] {
        [
            self.custom1.clone(),
            self.custom2.clone(),
            self.custom3.clone(),
            self.custom4.clone(),
            self.custom5.clone(),
        ]
    }

    fn from_parts(
        id: i64,
        email: String,
        first_name: Option<String>,
        last_name: Option<String>,
        locked: bool,
        custom: [Option<String>; 5],
    ) -> Self {
        let [custom1, custom2, custom3, custom4, custom5] = custom;
        Self {
            id,
            email,
            first_name,
            last_name,
            locked,
            title: None,
            custom1,
            custom2,
            custom3,
            custom4,
            custom5,
        }
    }
}

/// A last-known Salesforce user in a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSalesforceUser {
    pub id: SalesforceId,
    pub email: Option<String>,
    pub is_active: bool,
    #[serde(default)]
    pub created_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

/// A mapping in a scenario (input and output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioMapping {
    pub outreach_user_id: i64,
    pub salesforce_user_id: SalesforceId,
}

/// The input of `usersync decide`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub settings: SyncSettings,
    #[serde(default)]
    pub outreach_users: Vec<ScenarioOutreachUser>,
    #[serde(default)]
    pub salesforce_users: Vec<ScenarioSalesforceUser>,
    #[serde(default)]
    pub mappings: Vec<ScenarioMapping>,
    #[serde(default)]
    pub events: Vec<UserChange>,
}

/// One decision in the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDecision {
    pub event_id: String,
    pub action: Action,
    pub reason: Reason,
    pub outreach_user_id: Option<OutreachUserId>,
    pub salesforce_user_id: Option<SalesforceId>,
    pub previous_salesforce_user_id: Option<SalesforceId>,
    pub message: String,
    pub outreach_calls: u32,
}

impl From<DecisionRecord> for OutputDecision {
    fn from(r: DecisionRecord) -> Self {
        Self {
            event_id: r.event_id,
            action: r.action,
            reason: r.reason,
            outreach_user_id: r.outreach_user_id,
            salesforce_user_id: r.salesforce_user_id,
            previous_salesforce_user_id: r.previous_salesforce_user_id,
            message: r.message,
            outreach_calls: r.outreach_calls,
        }
    }
}

/// The output of `usersync decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub decisions: Vec<OutputDecision>,
    /// Sorted by Outreach id.
    pub mappings: Vec<ScenarioMapping>,
    /// The simulator's final state, sorted by id.
    pub outreach_users: Vec<ScenarioOutreachUser>,
    /// Every HTTP request made to the simulator.
    pub outreach_calls: u64,
}

/// A scenario that cannot be run as given; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

/// A failure while running a valid scenario.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start the Outreach simulator: {0}")]
    Simulator(#[from] std::io::Error),
    #[error("could not build the Outreach client: {0}")]
    Client(String),
    #[error("event {index}: {source}")]
    Apply {
        index: usize,
        #[source]
        source: Box<ApplyError>,
    },
}

impl Scenario {
    /// Parses and checks a scenario; errors name the field (and the event's index).
    pub fn parse(bytes: &[u8]) -> Result<Scenario, ScenarioError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let place = if path == "." {
                "scenario".to_string()
            } else {
                path
            };
            ScenarioError(format!("{place}: {}", e.inner()))
        })?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        self.settings
            .validate()
            .map_err(|e| ScenarioError(format!("settings: rule {}: {e}", e.rule())))?;
        let mut ids = BTreeSet::new();
        for (i, u) in self.outreach_users.iter().enumerate() {
            if u.id <= 0 {
                return Err(ScenarioError(format!(
                    "outreach_users[{i}].id: {} is not a positive integer",
                    u.id
                )));
            }
            if !ids.insert(u.id) {
                return Err(ScenarioError(format!(
                    "outreach_users[{i}].id: Outreach user {} is listed twice",
                    u.id
                )));
            }
            if u.email.trim().is_empty() {
                return Err(ScenarioError(format!(
                    "outreach_users[{i}].email: is empty"
                )));
            }
        }
        let mut sf_ids = BTreeSet::new();
        for (i, u) in self.salesforce_users.iter().enumerate() {
            if !u.id.is_user() {
                return Err(ScenarioError(format!(
                    "salesforce_users[{i}].id: {} is not a User id (User ids start with 005)",
                    u.id
                )));
            }
            if !sf_ids.insert(u.id.clone()) {
                return Err(ScenarioError(format!(
                    "salesforce_users[{i}].id: Salesforce user {} is listed twice",
                    u.id
                )));
            }
        }
        let mut state = SyncState::new();
        for (i, m) in self.mappings.iter().enumerate() {
            if !ids.contains(&m.outreach_user_id) {
                return Err(ScenarioError(format!(
                    "mappings[{i}].outreach_user_id: no Outreach user {} in outreach_users",
                    m.outreach_user_id
                )));
            }
            state
                .map(Mapping {
                    outreach_user_id: OutreachUserId(m.outreach_user_id),
                    salesforce_user_id: m.salesforce_user_id.clone(),
                    locked_by_usersync: false,
                })
                .map_err(|e| ScenarioError(format!("mappings[{i}]: {e}; mappings are 1:1")))?;
        }
        for (i, event) in self.events.iter().enumerate() {
            event
                .validate()
                .map_err(|e| ScenarioError(format!("events[{i}].{}: {}", e.field, e.problem)))?;
        }
        Ok(())
    }

    /// The engine's state before the events.
    fn initial_state(&self) -> SyncState {
        let mut state = SyncState::new();
        for u in &self.outreach_users {
            state.put_outreach_user(to_outreach_user(u));
        }
        for u in &self.salesforce_users {
            state.put_salesforce_user(SalesforceUser {
                id: u.id.clone(),
                email: u.email.clone(),
                username: u.username.clone(),
                first_name: u.first_name.clone(),
                last_name: u.last_name.clone(),
                title: u.title.clone(),
                is_active: u.is_active,
                created_date: u.created_date,
                last_modified_date: None,
                applied: None,
            });
        }
        for m in &self.mappings {
            state
                .map(Mapping {
                    outreach_user_id: OutreachUserId(m.outreach_user_id),
                    salesforce_user_id: m.salesforce_user_id.clone(),
                    locked_by_usersync: false,
                })
                .expect("checked by Scenario::check");
        }
        state
    }
}

fn to_outreach_user(u: &ScenarioOutreachUser) -> OutreachUser {
    OutreachUser {
        id: OutreachUserId(u.id),
        email: u.email.clone(),
        username: None,
        first_name: u.first_name.clone(),
        last_name: u.last_name.clone(),
        title: u.title.clone(),
        locked: u.locked,
        custom: u.custom(),
        updated_at: None,
    }
}

fn to_sim_user(u: &ScenarioOutreachUser) -> SimUser {
    let mut sim = SimUser::new(u.id, u.email.clone());
    sim.first_name = u.first_name.clone();
    sim.last_name = u.last_name.clone();
    sim.title = u.title.clone();
    sim.locked = u.locked;
    sim.custom = u.custom();
    sim
}

/// Runs a scenario: the real engine and client against a fresh in-process simulator.
///
/// The simulator's hourly request budget is lifted: an offline run answers "what would usersync
/// decide", not "how long would Outreach's 10 000 requests an hour take", and a scenario of
/// tens of thousands of events must not stop at the first window. (Pacing and 429 handling are
/// the client's own tests.)
pub async fn run(scenario: &Scenario) -> Result<Output, RunError> {
    let sim = OutreachSim::start(SimConfig {
        rate_limit_per_window: u32::MAX,
        ..SimConfig::default()
    })
    .await?;
    for u in &scenario.outreach_users {
        sim.seed_user(to_sim_user(u));
    }
    let tokens = sim.issue_tokens(&["users.all"]);
    let client = OutreachClient::new(
        &client_config(&sim),
        OAuthTokens {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: Some(Utc::now() + chrono::Duration::seconds(tokens.expires_in as i64)),
        },
        Arc::new(MemoryTokenStore::new()),
    )
    .map_err(|e| RunError::Client(e.to_string()))?;

    let mut state = scenario.initial_state();
    let mut decisions = Vec::new();
    for (index, event) in scenario.events.iter().enumerate() {
        let records = apply_event(
            &scenario.settings,
            &mut state,
            &client,
            event,
            event.observed_at,
        )
        .await
        .map_err(|source| RunError::Apply {
            index,
            source: Box::new(source),
        })?;
        decisions.extend(records.into_iter().map(OutputDecision::from));
    }

    let mappings = state
        .mappings()
        .map(|m| ScenarioMapping {
            outreach_user_id: m.outreach_user_id.0,
            salesforce_user_id: m.salesforce_user_id.clone(),
        })
        .collect();
    let outreach_users = sim
        .users()
        .into_iter()
        .map(|u| {
            ScenarioOutreachUser::from_parts(
                u.id,
                u.email,
                u.first_name,
                u.last_name,
                u.locked,
                u.custom,
            )
        })
        .collect();
    Ok(Output {
        decisions,
        mappings,
        outreach_users,
        outreach_calls: sim.request_count(),
    })
}

fn client_config(sim: &OutreachSim) -> OutreachConfig {
    let defaults = SimConfig::default();
    OutreachConfig {
        api_url: sim.api_url(),
        token_url: sim.token_url(),
        client_id: defaults.client_id,
        client_secret: Secret::new(defaults.client_secret),
        redirect_uri: defaults.redirect_uri,
        // The simulator is local and healthy: fail fast instead of backing off for seconds.
        max_retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..OutreachConfig::default()
    }
}
