//! Applying decisions to Outreach: the writing edge of the processor.
//!
//! For one event: decide (pure), make each planned Outreach call, fold the replies into the
//! state, and produce the decision records. The same code serves `usersync decide` (state in
//! memory, the in-process simulator) and the processor (state from the store).
//!
//! One failure is part of the normal flow: a create refused because Outreach already has the
//! email (the index was behind, or an earlier create reached Outreach but was never recorded).
//! The user is then looked up by email, added to the index, and the event is decided again, so
//! the answer becomes a link or a conflict — never a second create.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::engine::apply::{fold_decision, fold_event};
use crate::engine::decision::{DecisionRecord, OutreachCall};
use crate::engine::settings::SyncSettings;
use crate::engine::state::{MappingError, SyncState};
use crate::engine::{Decision, decide};
use crate::model::event::UserChange;
use crate::model::outreach_user::{OutreachUser, OutreachUserId, UserAttributes};
use crate::outreach::client::{OutreachClient, Reply};
use crate::outreach::error::OutreachError;

/// The Outreach writes a decision needs. The client implements it over HTTP; the property
/// tests implement it over an in-memory model.
#[async_trait]
pub trait OutreachWrites: Send + Sync {
    async fn create_user(
        &self,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError>;
    async fn update_user(
        &self,
        id: OutreachUserId,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError>;
    async fn find_users_by_email(
        &self,
        email: &str,
    ) -> Result<Reply<Vec<OutreachUser>>, OutreachError>;
}

#[async_trait]
impl OutreachWrites for OutreachClient {
    async fn create_user(
        &self,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        OutreachClient::create_user(self, attrs).await
    }
    async fn update_user(
        &self,
        id: OutreachUserId,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        OutreachClient::update_user(self, id, attrs).await
    }
    async fn find_users_by_email(
        &self,
        email: &str,
    ) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
        OutreachClient::find_users_by_email(self, email).await
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("while applying event {event_id} ({action} of {subject}): {source}")]
    Outreach {
        event_id: String,
        action: String,
        subject: String,
        #[source]
        source: OutreachError,
    },
    #[error("while recording event {event_id}: {source}")]
    Mapping {
        event_id: String,
        #[source]
        source: MappingError,
    },
}

/// How many times an event is decided again after Outreach refused a create.
const MAX_REDECIDES: usize = 2;

/// Decides one event, applies it to Outreach and folds the result into `state`.
pub async fn apply_event<W: OutreachWrites + ?Sized>(
    settings: &SyncSettings,
    state: &mut SyncState,
    outreach: &W,
    event: &UserChange,
    at: DateTime<Utc>,
) -> Result<Vec<DecisionRecord>, ApplyError> {
    let mut records: Vec<DecisionRecord> = Vec::new();
    let mut attempt = 0;
    'decide: loop {
        let pass_start = records.len();
        let outcome = decide(settings, state, event);
        for decision in &outcome.decisions {
            let (reply, calls) = match execute(outreach, decision).await {
                Ok(done) => done,
                Err(err) if err.is_email_taken() && attempt < MAX_REDECIDES => {
                    attempt += 1;
                    let found = learn_existing_user(outreach, decision, event).await?;
                    // What this pass already did stays recorded; its notes (no call made) are
                    // decided again with the rest.
                    let done: Vec<DecisionRecord> = records
                        .drain(pass_start..)
                        .filter(|r| r.outreach_calls > 0)
                        .collect();
                    records.extend(done);
                    records.push(refused_create_record(event, decision, at, &found));
                    for user in found.value {
                        state.put_outreach_user(user);
                    }
                    continue 'decide;
                }
                Err(source) => {
                    return Err(ApplyError::Outreach {
                        event_id: event.event_id.clone(),
                        action: decision.action.to_string(),
                        subject: subject_of(decision),
                        source,
                    });
                }
            };
            let outreach_id =
                fold_decision(state, decision, reply).map_err(|source| ApplyError::Mapping {
                    event_id: event.event_id.clone(),
                    source,
                })?;
            records.push(record(event, decision, at, outreach_id, calls));
        }
        fold_event(state, &outcome, &event.event_id);
        return Ok(records);
    }
}

/// After a refused create: find the holder of the email.
async fn learn_existing_user<W: OutreachWrites + ?Sized>(
    outreach: &W,
    decision: &Decision,
    event: &UserChange,
) -> Result<Reply<Vec<OutreachUser>>, ApplyError> {
    let email = match &decision.call {
        Some(OutreachCall::Create(attrs)) => attrs.email.clone().unwrap_or_default(),
        _ => String::new(),
    };
    outreach
        .find_users_by_email(&email)
        .await
        .map_err(|source| ApplyError::Outreach {
            event_id: event.event_id.clone(),
            action: "lookup".into(),
            subject: email,
            source,
        })
}

async fn execute<W: OutreachWrites + ?Sized>(
    outreach: &W,
    decision: &Decision,
) -> Result<(Option<OutreachUser>, u32), OutreachError> {
    match &decision.call {
        None => Ok((None, 0)),
        Some(OutreachCall::Create(attrs)) => {
            let reply = outreach.create_user(attrs).await?;
            Ok((Some(reply.value), reply.requests))
        }
        Some(OutreachCall::Update(id, attrs)) => {
            let reply = outreach.update_user(*id, attrs).await?;
            Ok((Some(reply.value), reply.requests))
        }
    }
}

fn subject_of(decision: &Decision) -> String {
    match (&decision.outreach_user_id, &decision.salesforce_user_id) {
        (Some(o), Some(s)) => format!("Outreach user {o} / Salesforce user {s}"),
        (Some(o), None) => format!("Outreach user {o}"),
        (None, Some(s)) => format!("Salesforce user {s}"),
        (None, None) => decision.email.clone().unwrap_or_default(),
    }
}

fn record(
    event: &UserChange,
    decision: &Decision,
    at: DateTime<Utc>,
    outreach_user_id: Option<OutreachUserId>,
    outreach_calls: u32,
) -> DecisionRecord {
    DecisionRecord {
        event_id: event.event_id.clone(),
        at,
        action: decision.action,
        reason: decision.reason,
        email: decision.email.clone(),
        outreach_user_id: outreach_user_id.or(decision.outreach_user_id),
        salesforce_user_id: decision.salesforce_user_id.clone(),
        previous_salesforce_user_id: decision.previous_salesforce_user_id.clone(),
        message: decision.message.clone(),
        outreach_calls,
        actor: None,
    }
}

/// The record of a create Outreach refused; the lookup's calls are counted on it.
fn refused_create_record(
    event: &UserChange,
    decision: &Decision,
    at: DateTime<Utc>,
    found: &Reply<Vec<OutreachUser>>,
) -> DecisionRecord {
    let holder = found.value.first().map(|u| u.id);
    let message = match holder {
        Some(id) => format!(
            "Outreach refused to create a user with email {}: Outreach user {id} has it. The event is decided again with that user known.",
            decision.email.as_deref().unwrap_or("")
        ),
        None => format!(
            "Outreach refused to create a user with email {}, but no user with it could be found.",
            decision.email.as_deref().unwrap_or("")
        ),
    };
    DecisionRecord {
        event_id: event.event_id.clone(),
        at,
        action: crate::engine::Action::Conflict,
        reason: crate::engine::Reason::OutreachRefusedCreate,
        email: decision.email.clone(),
        outreach_user_id: holder,
        salesforce_user_id: decision.salesforce_user_id.clone(),
        previous_salesforce_user_id: None,
        message,
        // The refused POST plus the lookup.
        outreach_calls: 1 + found.requests,
        actor: None,
    }
}
