//! Stored rows and their conversion to domain types, written once for both backends.
//!
//! Each row struct is what a `SELECT` of one table returns, in plain column types that both
//! SQLite and PostgreSQL decode. Turning a row into a domain value is where a value written
//! around the store (a mangled Salesforce id, an unknown action code) is caught: it becomes a
//! [`StoreError::Corrupt`] that names the table, the column and the value, instead of a panic
//! or a silently wrong decision.

use chrono::{DateTime, Utc};

use super::{AdminAction, AdminActionKind, Lease, ReplayCheckpoint, StoreError};
use crate::engine::decision::{Action, DecisionRecord, Reason};
use crate::engine::state::Mapping;
use crate::model::event::Position;
use crate::model::outreach_user::{OutreachUser, OutreachUserId};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

/// Parses a stored Salesforce id, naming where it came from when it does not parse.
pub(crate) fn salesforce_id(
    table: &'static str,
    column: &'static str,
    value: &str,
) -> Result<SalesforceId, StoreError> {
    SalesforceId::parse(value).map_err(|e| StoreError::Corrupt {
        table,
        column,
        value: value.to_string(),
        problem: e.to_string(),
    })
}

fn optional_salesforce_id(
    table: &'static str,
    column: &'static str,
    value: Option<&str>,
) -> Result<Option<SalesforceId>, StoreError> {
    value.map(|v| salesforce_id(table, column, v)).transpose()
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SalesforceUserRow {
    pub id: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub is_active: bool,
    pub created_date: Option<DateTime<Utc>>,
    pub last_modified_date: Option<DateTime<Utc>>,
    pub commit_number: Option<i64>,
    pub commit_timestamp: Option<DateTime<Utc>>,
    pub sequence_number: Option<i64>,
    pub snapshot_read_at: Option<DateTime<Utc>>,
}

impl TryFrom<SalesforceUserRow> for SalesforceUser {
    type Error = StoreError;

    fn try_from(row: SalesforceUserRow) -> Result<Self, StoreError> {
        let id = salesforce_id("salesforce_users", "id", &row.id)?;
        // A position always has a timestamp; the schema refuses the other parts without one.
        let applied = match row.commit_timestamp {
            Some(commit_timestamp) => Some(Position {
                commit_number: row.commit_number,
                commit_timestamp,
                sequence_number: row.sequence_number,
                read_at: row.snapshot_read_at,
            }),
            None if row.commit_number.is_none()
                && row.sequence_number.is_none()
                && row.snapshot_read_at.is_none() =>
            {
                None
            }
            None => {
                return Err(StoreError::Corrupt {
                    table: "salesforce_users",
                    column: "commit_timestamp",
                    value: "NULL".into(),
                    problem: format!(
                        "user {id} has a commit number, sequence number or snapshot read time \
                         but no commit timestamp"
                    ),
                });
            }
        };
        Ok(SalesforceUser {
            id,
            email: row.email,
            username: row.username,
            first_name: row.first_name,
            last_name: row.last_name,
            title: row.title,
            is_active: row.is_active,
            created_date: row.created_date,
            last_modified_date: row.last_modified_date,
            applied,
        })
    }
}

/// A row of `subscriber_users`, without its key's org (the query names it) and without the
/// position, which only the store's write guard reads.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SubscriberUserRow {
    pub user_id: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub is_active: bool,
    pub created_date: Option<DateTime<Utc>>,
    pub last_modified_date: Option<DateTime<Utc>>,
}

impl TryFrom<SubscriberUserRow> for SalesforceUser {
    type Error = StoreError;

    /// The subscriber's state carries no `applied`: that is the processor's position, and this
    /// row never held it.
    fn try_from(row: SubscriberUserRow) -> Result<Self, StoreError> {
        Ok(SalesforceUser {
            id: salesforce_id("subscriber_users", "user_id", &row.user_id)?,
            email: row.email,
            username: row.username,
            first_name: row.first_name,
            last_name: row.last_name,
            title: row.title,
            is_active: row.is_active,
            created_date: row.created_date,
            last_modified_date: row.last_modified_date,
            applied: None,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutreachUserRow {
    pub id: i64,
    pub email: String,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub locked: bool,
    pub custom1: Option<String>,
    pub custom2: Option<String>,
    pub custom3: Option<String>,
    pub custom4: Option<String>,
    pub custom5: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<OutreachUserRow> for OutreachUser {
    fn from(row: OutreachUserRow) -> Self {
        OutreachUser {
            id: OutreachUserId(row.id),
            email: row.email,
            username: row.username,
            first_name: row.first_name,
            last_name: row.last_name,
            title: row.title,
            locked: row.locked,
            custom: [
                row.custom1,
                row.custom2,
                row.custom3,
                row.custom4,
                row.custom5,
            ],
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MappingRow {
    pub outreach_user_id: i64,
    pub salesforce_user_id: String,
    pub locked_by_usersync: bool,
}

impl TryFrom<MappingRow> for Mapping {
    type Error = StoreError;

    fn try_from(row: MappingRow) -> Result<Self, StoreError> {
        Ok(Mapping {
            outreach_user_id: OutreachUserId(row.outreach_user_id),
            salesforce_user_id: salesforce_id(
                "mappings",
                "salesforce_user_id",
                &row.salesforce_user_id,
            )?,
            locked_by_usersync: row.locked_by_usersync,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DecisionRow {
    pub sequence: i64,
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub action: String,
    pub reason: String,
    pub email: Option<String>,
    pub outreach_user_id: Option<i64>,
    pub salesforce_user_id: Option<String>,
    pub previous_salesforce_user_id: Option<String>,
    pub message: String,
    pub outreach_calls: i64,
    pub actor: Option<String>,
}

impl TryFrom<DecisionRow> for (i64, DecisionRecord) {
    type Error = StoreError;

    fn try_from(row: DecisionRow) -> Result<Self, StoreError> {
        let corrupt = |column: &'static str, value: &str, problem: &str| StoreError::Corrupt {
            table: "decisions",
            column,
            value: value.to_string(),
            problem: format!("{problem} (decision {})", row.sequence),
        };
        let action = Action::parse(&row.action)
            .ok_or_else(|| corrupt("action", &row.action, "not an action code"))?;
        let reason = Reason::parse(&row.reason)
            .ok_or_else(|| corrupt("reason", &row.reason, "not a reason code"))?;
        let outreach_calls = u32::try_from(row.outreach_calls).map_err(|_| {
            corrupt(
                "outreach_calls",
                &row.outreach_calls.to_string(),
                "not a call count",
            )
        })?;
        let record = DecisionRecord {
            event_id: row.event_id,
            at: row.at,
            action,
            reason,
            email: row.email,
            outreach_user_id: row.outreach_user_id.map(OutreachUserId),
            salesforce_user_id: optional_salesforce_id(
                "decisions",
                "salesforce_user_id",
                row.salesforce_user_id.as_deref(),
            )?,
            previous_salesforce_user_id: optional_salesforce_id(
                "decisions",
                "previous_salesforce_user_id",
                row.previous_salesforce_user_id.as_deref(),
            )?,
            message: row.message,
            outreach_calls,
            actor: row.actor,
        };
        Ok((row.sequence, record))
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AdminActionRow {
    pub sequence: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    /// The JSON document, as text.
    pub detail: String,
    pub actor: Option<String>,
}

impl TryFrom<AdminActionRow> for (i64, AdminAction) {
    type Error = StoreError;

    fn try_from(row: AdminActionRow) -> Result<Self, StoreError> {
        let corrupt = |column: &'static str, value: &str, problem: String| StoreError::Corrupt {
            table: "admin_actions",
            column,
            value: value.to_string(),
            problem: format!("{problem} (admin action {})", row.sequence),
        };
        let action = AdminActionKind::parse(&row.action).ok_or_else(|| {
            corrupt(
                "action",
                &row.action,
                "not an admin action (replay, resync, settings, reconnect, disconnect)".into(),
            )
        })?;
        let detail = serde_json::from_str(&row.detail)
            .map_err(|e| corrupt("detail", &row.detail, e.to_string()))?;
        Ok((
            row.sequence,
            AdminAction {
                at: row.at,
                action,
                detail,
                actor: row.actor,
            },
        ))
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    pub topic: String,
    pub replay_id: Vec<u8>,
    pub commit_timestamp: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<CheckpointRow> for ReplayCheckpoint {
    fn from(row: CheckpointRow) -> Self {
        ReplayCheckpoint {
            topic: row.topic,
            replay_id: row.replay_id,
            commit_timestamp: row.commit_timestamp,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub read_at: DateTime<Utc>,
}

impl From<LeaseRow> for Lease {
    fn from(row: LeaseRow) -> Self {
        Lease {
            name: row.name,
            holder: row.holder,
            epoch: row.epoch,
            acquired_at: row.acquired_at,
            renewed_at: row.renewed_at,
            expires_at: row.expires_at,
            read_at: row.read_at,
        }
    }
}
