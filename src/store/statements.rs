//! The statement vocabulary the store speaks, and how a backend hands out sessions.
//!
//! Every [`Store`](super::Store) operation is a short sequence of these statements run in one
//! session — a pooled connection for a single statement, or a transaction. The sequences
//! (what `record` writes and in which order, which rows `load_state` gathers) are written once
//! in [`procedures`](super::procedures) over this trait; each statement's text is written once
//! in [`sql`](super::sql) and bound once in [`session`](super::session), with the few pieces
//! SQLite and PostgreSQL spell differently supplied by each backend's
//! [`Dialect`](super::dialect::Dialect). Statements return raw `sqlx` results; the procedures
//! add which operation failed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Pool;

use super::dialect::Dialect;
use super::rows::{
    AdminActionRow, CheckpointRow, DecisionRow, LeaseRow, MappingRow, OutreachUserRow,
    SalesforceUserRow, SubscriberUserRow,
};
use super::session::Session;
use super::{LeaseClaim, ReplayCheckpoint};
use crate::engine::decision::DecisionRecord;
use crate::engine::state::Mapping;
use crate::model::event::Position;
use crate::model::outreach_user::OutreachUser;
use crate::model::salesforce_user::SalesforceUser;

/// What a session will do, so that the backend can begin the right kind of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// One statement: no transaction needed.
    Single,
    /// Several reads that must see one consistent snapshot.
    Read,
    /// Reads and writes that commit together or not at all.
    Write,
}

/// A store backend: a pool of one dialect's connections. [`Store`](super::Store) is
/// implemented once for every backend, in [`procedures`](super::procedures).
#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync {
    type Dialect: Dialect;

    fn pool(&self) -> &Pool<Self::Dialect>;

    /// A session for `access`; [`Session::commit`] ends it.
    async fn session(&self, access: Access) -> sqlx::Result<Session<Self::Dialect>> {
        Session::begin(self.pool(), access).await
    }
}

/// The statements the store runs, on one connection or inside one transaction.
#[async_trait::async_trait]
pub(crate) trait Statements {
    // ----- reads -----
    async fn salesforce_users_by_id(
        &mut self,
        ids: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>>;
    async fn salesforce_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>>;
    async fn outreach_users_by_id(&mut self, ids: &[i64]) -> sqlx::Result<Vec<OutreachUserRow>>;
    async fn outreach_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<OutreachUserRow>>;
    /// Mappings whose Outreach side is one of `outreach_user_ids` or whose Salesforce side is
    /// one of `salesforce_user_ids`.
    async fn mappings_touching(
        &mut self,
        outreach_user_ids: &[i64],
        salesforce_user_ids: &[String],
    ) -> sqlx::Result<Vec<MappingRow>>;
    /// Mappings matching every `Some` argument, by Outreach id.
    async fn mappings_matching(
        &mut self,
        email: Option<&str>,
        salesforce_user_id: Option<&str>,
        outreach_user_id: Option<i64>,
    ) -> sqlx::Result<Vec<MappingRow>>;
    /// Those of `event_ids` that are in the applied-event log.
    async fn applied_among(&mut self, event_ids: &[String]) -> sqlx::Result<Vec<String>>;
    /// Up to `limit` decisions older than `before`, matching the filters, newest first.
    async fn decisions_before(
        &mut self,
        before: Option<i64>,
        action: Option<&str>,
        email: Option<&str>,
        limit: i64,
    ) -> sqlx::Result<Vec<DecisionRow>>;
    /// The settings JSON document, as text.
    async fn settings_document(&mut self) -> sqlx::Result<Option<String>>;
    /// The sealed authorization of a side and its generation.
    async fn authorization(&mut self, side: &str) -> sqlx::Result<Option<(Vec<u8>, i64)>>;
    /// The newest `limit` admin actions, newest first.
    async fn admin_actions_newest(&mut self, limit: i64) -> sqlx::Result<Vec<AdminActionRow>>;
    async fn checkpoint(&mut self, topic: &str) -> sqlx::Result<Option<CheckpointRow>>;
    /// The stored versions of those of `parts` that have one (a part never written has none).
    async fn versions_of(&mut self, parts: &[String]) -> sqlx::Result<Vec<(String, i64)>>;
    /// The subscriber's last-known users of one org among `user_ids`, by user id.
    async fn subscriber_users_by_id(
        &mut self,
        org_id: &str,
        user_ids: &[String],
    ) -> sqlx::Result<Vec<SubscriberUserRow>>;

    /// The newest commit (number, time) among the subscriber's users of one org.
    async fn newest_subscriber_commit(
        &mut self,
        org_id: &str,
    ) -> sqlx::Result<Option<(i64, DateTime<Utc>)>>;

    /// Lease `name`, with the store's clock now.
    async fn lease(&mut self, name: &str, now: DateTime<Utc>) -> sqlx::Result<Option<LeaseRow>>;
    /// Whether `claim` still holds its lease; on PostgreSQL the row is locked against a
    /// takeover until the transaction ends.
    async fn holds_lease(&mut self, claim: &LeaseClaim) -> sqlx::Result<bool>;

    // ----- writes -----
    /// Takes lease `name` for `holder` until `now + ttl` when it is free, expired or already
    /// `holder`'s, at the next epoch; `None` (nothing written) when another holder's is valid.
    /// `now` is the machine's clock: PostgreSQL uses its own instead.
    async fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>>;
    /// Extends `claim`'s lease to `now + ttl`, if its epoch is still the lease's.
    async fn renew_lease(
        &mut self,
        claim: &LeaseClaim,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>>;
    /// Makes `claim`'s lease expire now.
    async fn release_lease(&mut self, claim: &LeaseClaim, now: DateTime<Utc>) -> sqlx::Result<()>;
    async fn upsert_salesforce_user(&mut self, user: &SalesforceUser) -> sqlx::Result<()>;
    /// Inserts or replaces an Outreach user of the index. With `keep_newer`, a stored user
    /// whose `updated_at` is later than the given one's is kept (false); a missing timestamp
    /// on either side writes.
    async fn upsert_outreach_user(
        &mut self,
        user: &OutreachUser,
        keep_newer: bool,
    ) -> sqlx::Result<bool>;
    /// Moves a part of the state to its next version. With `read`, only when the stored
    /// version is still `read` (0: the part has no row yet): false when it moved, nothing
    /// written. Without, always. The row stays locked until the transaction ends, so a
    /// concurrent writer of the same part waits for it and then compares with what it left.
    async fn advance_version(&mut self, part: &str, read: Option<i64>) -> sqlx::Result<bool>;
    /// Inserts the mapping, or sets `locked_by_usersync` when this exact pair exists; false
    /// when the Outreach user is mapped to another Salesforce user (nothing written).
    async fn upsert_mapping(&mut self, mapping: &Mapping) -> sqlx::Result<bool>;
    async fn delete_mapping(&mut self, outreach_user_id: i64) -> sqlx::Result<Option<MappingRow>>;
    /// Adds the event to the applied-event log; false when it was there already.
    async fn insert_applied_event(
        &mut self,
        event_id: &str,
        applied_at: DateTime<Utc>,
    ) -> sqlx::Result<bool>;
    async fn append_decision(&mut self, record: &DecisionRecord) -> sqlx::Result<()>;
    async fn save_settings_document(
        &mut self,
        document: &str,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<()>;
    async fn save_checkpoint(&mut self, checkpoint: &ReplayCheckpoint) -> sqlx::Result<()>;
    /// Appends an admin action (its detail as JSON text) with its actor; its sequence number.
    async fn append_admin_action(
        &mut self,
        at: DateTime<Utc>,
        action: &str,
        detail: &str,
        actor: Option<&str>,
    ) -> sqlx::Result<i64>;
    /// Deletes up to `limit` rows of `log` older than `before` (one statement, so the rows it
    /// locks are few and held briefly); how many went. On PostgreSQL rows another pruner
    /// holds are skipped, not waited for.
    async fn delete_older(
        &mut self,
        log: PrunedLog,
        before: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<u64>;
    /// Inserts the side's authorization, or replaces it if the stored one is at
    /// `generation - 1`; false (nothing written) when it is not.
    async fn save_authorization(
        &mut self,
        side: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        generation: i64,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<bool>;
    /// Inserts or replaces the subscriber's last-known state of one user of one org (its
    /// `applied` is not stored), unless the stored row has a position and `position` is older
    /// than it: with commit numbers on both sides those decide, a position with one is newer
    /// than one without, and two without compare by commit timestamp. An equal position writes
    /// (a later change of the same transaction, or a snapshot read at that commit). False when
    /// the stored row was kept.
    async fn upsert_subscriber_user(
        &mut self,
        org_id: &str,
        user: &SalesforceUser,
        position: Option<&Position>,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<bool>;
}

/// A log the retention prunes: its table, its key and the column that dates a row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PrunedLog {
    Decisions,
    AppliedEvents,
}

impl PrunedLog {
    /// `(table, key, time)`.
    pub(crate) fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            PrunedLog::Decisions => ("decisions", "sequence", "at"),
            PrunedLog::AppliedEvents => ("applied_events", "event_id", "applied_at"),
        }
    }
}
