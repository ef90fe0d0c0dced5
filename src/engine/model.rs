//! An in-memory model of Outreach's user directory and a synchronous executor, for the engine's
//! unit and property tests.
//!
//! The property tests run thousands of histories; going through HTTP for each would make them
//! minutes long. This model keeps only the rules that matter to decisions (ids max+1, one user
//! per email compared case-insensitively, email not changeable by PATCH) and counts calls. The
//! integration tests check that the real client against the simulator reaches the same end
//! states.

use std::collections::BTreeMap;

use crate::engine::apply::{fold_decision, fold_event};
use crate::engine::decision::{DecisionRecord, OutreachCall};
use crate::engine::settings::SyncSettings;
use crate::engine::state::SyncState;
use crate::engine::{Action, Decision, decide};
use crate::model::event::{UserChange, normalize_email};
use crate::model::outreach_user::{OutreachUser, OutreachUserId};

/// Outreach's users, as the model keeps them.
#[derive(Debug, Clone, Default)]
pub struct ModelOutreach {
    pub users: BTreeMap<OutreachUserId, OutreachUser>,
    pub calls: u32,
    /// Every create, by normalized email, to check "at most one per email".
    pub creates: BTreeMap<String, u32>,
}

impl ModelOutreach {
    pub fn seed(&mut self, user: OutreachUser) {
        self.users.insert(user.id, user);
    }

    /// Executes one planned call the way Outreach would; `None` when Outreach refuses.
    pub fn execute(&mut self, call: &OutreachCall) -> Result<OutreachUser, String> {
        self.calls += 1;
        match call {
            OutreachCall::Create(attrs) => {
                let email = attrs.email.clone().ok_or("email is required")?;
                let normalized = normalize_email(&email);
                if self
                    .users
                    .values()
                    .any(|u| u.email_normalized() == normalized)
                {
                    return Err(format!("Email {email} has already been taken"));
                }
                let id = OutreachUserId(self.users.keys().next_back().map_or(1, |k| k.0 + 1));
                let mut user = OutreachUser {
                    id,
                    email,
                    username: None,
                    first_name: None,
                    last_name: None,
                    title: None,
                    locked: false,
                    custom: Default::default(),
                    updated_at: None,
                };
                attrs.apply_to(&mut user);
                *self.creates.entry(normalized).or_default() += 1;
                self.users.insert(id, user.clone());
                Ok(user)
            }
            OutreachCall::Update(id, attrs) => {
                if attrs.email.is_some() {
                    return Err("Email cannot be updated via the API".into());
                }
                let user = self.users.get_mut(id).ok_or("user not found")?;
                attrs.apply_to(user);
                Ok(user.clone())
            }
        }
    }
}

/// The model of one usersync deployment: its state plus the Outreach it writes to.
#[derive(Debug, Clone, Default)]
pub struct ModelSync {
    pub state: SyncState,
    pub outreach: ModelOutreach,
    pub log: Vec<DecisionRecord>,
}

impl ModelSync {
    /// Seeds an Outreach user on both sides (Outreach and the index).
    pub fn seed_outreach_user(&mut self, user: OutreachUser) {
        self.state.put_outreach_user(user.clone());
        self.outreach.seed(user);
    }

    /// Decides and applies one event; returns the records it produced.
    pub fn apply(&mut self, settings: &SyncSettings, event: &UserChange) -> Vec<DecisionRecord> {
        let outcome = decide(settings, &self.state, event);
        let mut records = Vec::new();
        for decision in &outcome.decisions {
            let before = self.outreach.calls;
            let reply = decision.call.as_ref().map(|call| {
                self.outreach
                    .execute(call)
                    .unwrap_or_else(|e| panic!("Outreach refused {decision:?}: {e}"))
            });
            let id = fold_decision(&mut self.state, decision, reply)
                .unwrap_or_else(|e| panic!("mapping broke 1:1 on {decision:?}: {e}"));
            records.push(to_record(event, decision, id, self.outreach.calls - before));
        }
        fold_event(&mut self.state, &outcome, &event.event_id);
        self.log.extend(records.iter().cloned());
        records
    }

    /// The number of decisions of one action in the log.
    pub fn count(&self, action: Action) -> usize {
        self.log.iter().filter(|r| r.action == action).count()
    }
}

fn to_record(
    event: &UserChange,
    decision: &Decision,
    id: Option<OutreachUserId>,
    calls: u32,
) -> DecisionRecord {
    DecisionRecord {
        event_id: event.event_id.clone(),
        at: event.observed_at,
        action: decision.action,
        reason: decision.reason,
        email: decision.email.clone(),
        outreach_user_id: id.or(decision.outreach_user_id),
        salesforce_user_id: decision.salesforce_user_id.clone(),
        previous_salesforce_user_id: decision.previous_salesforce_user_id.clone(),
        message: decision.message.clone(),
        outreach_calls: calls,
        actor: None,
    }
}

/// Builds Salesforce `user_change.v1` events for tests.
pub mod events {
    use chrono::{DateTime, TimeZone, Utc};

    use crate::model::event::{
        ChangeKind, Origin, SCHEMA, Source, UserChange, UserState, normalize_email,
    };
    use crate::model::salesforce_id::SalesforceId;

    pub const ORG: &str = "00D000000000001EAA";

    /// The 18-character id of test user number `n` (`005` + zero padding).
    pub fn user_id(n: u32) -> SalesforceId {
        SalesforceId::parse(&format!("005{n:012}")).expect("valid test id")
    }

    pub fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    /// A full-state Salesforce event for user `n` at commit `commit`.
    pub fn change(n: u32, email: Option<&str>, active: bool, commit: i64) -> UserChange {
        let id = user_id(n);
        UserChange {
            schema: SCHEMA.into(),
            event_id: format!("sf:{ORG}:{id}:tx{commit}:1"),
            source: Source::Salesforce,
            org_id: Some(ORG.into()),
            user_id: id.to_string(),
            change: ChangeKind::Update,
            changed_fields: vec![],
            user: UserState {
                email: email.map(str::to_string),
                email_normalized: email.map(normalize_email),
                username: email.map(|e| format!("{e}.prod")),
                first_name: Some(format!("First{n}")),
                last_name: Some(format!("Last{n}")),
                title: None,
                is_active: Some(active),
                created_date: Some(at(n as i64)),
                last_modified_date: Some(at(commit)),
                locked: None,
            },
            origin: Origin {
                transport: "pubsub".into(),
                topic: Some("/data/UserChangeEvent".into()),
                change_type: Some("UPDATE".into()),
                transaction_key: Some(format!("tx{commit}")),
                sequence_number: Some(1),
                commit_timestamp: Some(at(commit)),
                commit_number: Some(commit),
                ..Default::default()
            },
            observed_at: at(commit),
        }
    }

    /// An Outreach webhook event: user `id` has `email`, as of `seconds`.
    pub fn outreach(id: i64, email: &str, seconds: i64) -> UserChange {
        let updated = at(seconds);
        UserChange {
            schema: SCHEMA.into(),
            event_id: crate::model::event::outreach_event_id(id, &updated.to_rfc3339()),
            source: Source::Outreach,
            org_id: None,
            user_id: id.to_string(),
            change: ChangeKind::Update,
            changed_fields: vec![],
            user: UserState {
                email: Some(email.into()),
                email_normalized: Some(normalize_email(email)),
                username: None,
                first_name: Some("Hand".into()),
                last_name: Some("Made".into()),
                title: None,
                is_active: None,
                created_date: None,
                last_modified_date: None,
                locked: Some(false),
            },
            origin: Origin {
                transport: "webhook".into(),
                topic: Some("user.updated".into()),
                commit_timestamp: Some(updated),
                ..Default::default()
            },
            observed_at: updated,
        }
    }

    /// The same event as a `create`.
    pub fn created(n: u32, email: &str, active: bool, commit: i64) -> UserChange {
        let mut e = change(n, Some(email), active, commit);
        e.change = ChangeKind::Create;
        e.origin.change_type = Some("CREATE".into());
        e
    }
}
