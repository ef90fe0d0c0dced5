//! How a statement runs: one implementation of the statement vocabulary for every dialect.
//!
//! A [`Session`] is a pooled connection (one statement) or a transaction on one, of any
//! database that is a [`Dialect`]. Each [`Statements`] method takes its text from the
//! dialect's [`Sql`](super::sql::Sql) and binds its parameters in order, the same values in
//! both databases except the two a dialect encodes its own way: a [`List`], and the lease clock
//! ([`Dialect::add_lease_clock`]).
//!
//! The `where` clause of the implementation names what sqlx must encode and decode for these
//! statements; both `sqlx::Sqlite` and `sqlx::Postgres` meet it, and the compiler checks it
//! when a backend names its session type.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::{
    Arguments, Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type,
};

use super::dialect::{Dialect, List};
use super::rows::{
    AdminActionRow, CheckpointRow, DecisionRow, LeaseRow, MappingRow, OutreachUserRow,
    SalesforceUserRow, SubscriberUserRow,
};
use super::statements::{Access, PrunedLog, Statements};
use super::{LeaseClaim, ReplayCheckpoint};
use crate::engine::decision::DecisionRecord;
use crate::engine::state::Mapping;
use crate::model::event::Position;
use crate::model::outreach_user::OutreachUser;
use crate::model::salesforce_user::SalesforceUser;

/// One pooled connection, or a transaction on one.
pub(crate) enum Session<DB: Database> {
    Single(PoolConnection<DB>),
    Transaction(Transaction<'static, DB>),
}

impl<DB: Dialect> Session<DB> {
    /// A session of `pool` for `access`, begun as the dialect begins that kind.
    pub(crate) async fn begin(pool: &Pool<DB>, access: Access) -> sqlx::Result<Self> {
        let begin = match access {
            Access::Single => return Ok(Session::Single(pool.acquire().await?)),
            Access::Read => DB::BEGIN_READ,
            Access::Write => DB::BEGIN_WRITE,
        };
        Ok(Session::Transaction(match begin {
            Some(statement) => pool.begin_with(statement).await?,
            None => pool.begin().await?,
        }))
    }

    /// Commits what the session wrote; a session dropped without this rolls back.
    pub(crate) async fn commit(self) -> sqlx::Result<()> {
        match self {
            Session::Single(_) => Ok(()),
            Session::Transaction(tx) => tx.commit().await,
        }
    }

    fn conn(&mut self) -> &mut DB::Connection {
        match self {
            Session::Single(conn) => conn,
            Session::Transaction(tx) => tx,
        }
    }
}

/// The arguments of a lease statement: its own values (`own`), then the dialect's clock.
fn lease_arguments<'q, DB: Dialect>(
    own: impl FnOnce(&mut DB::Arguments<'q>) -> Result<(), BoxDynError>,
    now: DateTime<Utc>,
    ttl: Option<Duration>,
) -> sqlx::Result<DB::Arguments<'q>> {
    let mut arguments = DB::Arguments::default();
    own(&mut arguments)
        .and_then(|()| DB::add_lease_clock(&mut arguments, now, ttl))
        .map_err(sqlx::Error::Encode)?;
    Ok(arguments)
}

#[async_trait::async_trait]
impl<DB> Statements for Session<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q, 'a> List<'a, String>: Encode<'q, DB> + Type<DB>,
    for<'q, 'a> List<'a, i64>: Encode<'q, DB> + Type<DB>,
    for<'r> SalesforceUserRow: FromRow<'r, DB::Row>,
    for<'r> SubscriberUserRow: FromRow<'r, DB::Row>,
    for<'r> OutreachUserRow: FromRow<'r, DB::Row>,
    for<'r> MappingRow: FromRow<'r, DB::Row>,
    for<'r> DecisionRow: FromRow<'r, DB::Row>,
    for<'r> AdminActionRow: FromRow<'r, DB::Row>,
    for<'r> CheckpointRow: FromRow<'r, DB::Row>,
    for<'r> LeaseRow: FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (Vec<u8>, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, DateTime<Utc>): FromRow<'r, DB::Row>,
{
    async fn salesforce_users_by_id(
        &mut self,
        ids: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>> {
        sqlx::query_as(&DB::sql().salesforce_users_by_id)
            .bind(List(ids))
            .fetch_all(self.conn())
            .await
    }

    async fn salesforce_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>> {
        sqlx::query_as(&DB::sql().salesforce_users_by_email)
            .bind(List(emails))
            .fetch_all(self.conn())
            .await
    }

    async fn outreach_users_by_id(&mut self, ids: &[i64]) -> sqlx::Result<Vec<OutreachUserRow>> {
        sqlx::query_as(&DB::sql().outreach_users_by_id)
            .bind(List(ids))
            .fetch_all(self.conn())
            .await
    }

    async fn outreach_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<OutreachUserRow>> {
        sqlx::query_as(&DB::sql().outreach_users_by_email)
            .bind(List(emails))
            .fetch_all(self.conn())
            .await
    }

    async fn mappings_touching(
        &mut self,
        outreach_user_ids: &[i64],
        salesforce_user_ids: &[String],
    ) -> sqlx::Result<Vec<MappingRow>> {
        sqlx::query_as(&DB::sql().mappings_touching)
            .bind(List(outreach_user_ids))
            .bind(List(salesforce_user_ids))
            .fetch_all(self.conn())
            .await
    }

    async fn mappings_matching(
        &mut self,
        email: Option<&str>,
        salesforce_user_id: Option<&str>,
        outreach_user_id: Option<i64>,
    ) -> sqlx::Result<Vec<MappingRow>> {
        sqlx::query_as(&DB::sql().mappings_matching)
            .bind(email)
            .bind(salesforce_user_id)
            .bind(outreach_user_id)
            .fetch_all(self.conn())
            .await
    }

    async fn applied_among(&mut self, event_ids: &[String]) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar(&DB::sql().applied_among)
            .bind(List(event_ids))
            .fetch_all(self.conn())
            .await
    }

    async fn decisions_before(
        &mut self,
        before: Option<i64>,
        action: Option<&str>,
        email: Option<&str>,
        limit: i64,
    ) -> sqlx::Result<Vec<DecisionRow>> {
        sqlx::query_as(&DB::sql().decisions_before)
            .bind(before)
            .bind(action)
            .bind(email)
            .bind(limit)
            .fetch_all(self.conn())
            .await
    }

    async fn settings_document(&mut self) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(&DB::sql().settings_document)
            .fetch_optional(self.conn())
            .await
    }

    async fn authorization(&mut self, side: &str) -> sqlx::Result<Option<(Vec<u8>, i64)>> {
        sqlx::query_as(&DB::sql().authorization)
            .bind(side)
            .fetch_optional(self.conn())
            .await
    }

    async fn admin_actions_newest(&mut self, limit: i64) -> sqlx::Result<Vec<AdminActionRow>> {
        sqlx::query_as(&DB::sql().admin_actions_newest)
            .bind(limit)
            .fetch_all(self.conn())
            .await
    }

    async fn checkpoint(&mut self, topic: &str) -> sqlx::Result<Option<CheckpointRow>> {
        sqlx::query_as(&DB::sql().checkpoint)
            .bind(topic)
            .fetch_optional(self.conn())
            .await
    }

    async fn versions_of(&mut self, parts: &[String]) -> sqlx::Result<Vec<(String, i64)>> {
        sqlx::query_as(&DB::sql().versions_of)
            .bind(List(parts))
            .fetch_all(self.conn())
            .await
    }

    async fn subscriber_users_by_id(
        &mut self,
        org_id: &str,
        user_ids: &[String],
    ) -> sqlx::Result<Vec<SubscriberUserRow>> {
        sqlx::query_as(&DB::sql().subscriber_users_by_id)
            .bind(org_id)
            .bind(List(user_ids))
            .fetch_all(self.conn())
            .await
    }

    async fn newest_subscriber_commit(
        &mut self,
        org_id: &str,
    ) -> sqlx::Result<Option<(i64, DateTime<Utc>)>> {
        sqlx::query_as(&DB::sql().newest_subscriber_commit)
            .bind(org_id)
            .fetch_optional(self.conn())
            .await
    }

    async fn lease(&mut self, name: &str, now: DateTime<Utc>) -> sqlx::Result<Option<LeaseRow>> {
        let arguments = lease_arguments::<DB>(|a| a.add(name), now, None)?;
        sqlx::query_as_with(&DB::sql().lease, arguments)
            .fetch_optional(self.conn())
            .await
    }

    async fn holds_lease(&mut self, claim: &LeaseClaim) -> sqlx::Result<bool> {
        let held: Option<i64> = sqlx::query_scalar(&DB::sql().holds_lease)
            .bind(claim.name.as_str())
            .bind(claim.holder.as_str())
            .bind(claim.epoch)
            .fetch_optional(self.conn())
            .await?;
        Ok(held.is_some())
    }

    async fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>> {
        let arguments = lease_arguments::<DB>(
            |a| {
                a.add(name)?;
                a.add(holder)
            },
            now,
            Some(ttl),
        )?;
        sqlx::query_as_with(&DB::sql().take_lease, arguments)
            .fetch_optional(self.conn())
            .await
    }

    async fn renew_lease(
        &mut self,
        claim: &LeaseClaim,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>> {
        let arguments = lease_arguments::<DB>(|a| add_claim(a, claim), now, Some(ttl))?;
        sqlx::query_as_with(&DB::sql().renew_lease, arguments)
            .fetch_optional(self.conn())
            .await
    }

    async fn release_lease(&mut self, claim: &LeaseClaim, now: DateTime<Utc>) -> sqlx::Result<()> {
        let arguments = lease_arguments::<DB>(|a| add_claim(a, claim), now, None)?;
        sqlx::query_with(&DB::sql().release_lease, arguments)
            .execute(self.conn())
            .await
            .map(drop)
    }

    async fn upsert_salesforce_user(&mut self, user: &SalesforceUser) -> sqlx::Result<()> {
        sqlx::query(&DB::sql().upsert_salesforce_user)
            .bind(user.id.as_str())
            .bind(&user.email)
            .bind(user.email_normalized())
            .bind(&user.username)
            .bind(&user.first_name)
            .bind(&user.last_name)
            .bind(&user.title)
            .bind(user.is_active)
            .bind(user.created_date)
            .bind(user.last_modified_date)
            .bind(user.applied.and_then(|p| p.commit_number))
            .bind(user.applied.map(|p| p.commit_timestamp))
            .bind(user.applied.and_then(|p| p.sequence_number))
            .bind(user.applied.and_then(|p| p.read_at))
            .execute(self.conn())
            .await
            .map(drop)
    }

    async fn upsert_outreach_user(
        &mut self,
        user: &OutreachUser,
        keep_newer: bool,
    ) -> sqlx::Result<bool> {
        let [c1, c2, c3, c4, c5] = &user.custom;
        let done = sqlx::query(&DB::sql().upsert_outreach_user)
            .bind(user.id.0)
            .bind(&user.email)
            .bind(user.email_normalized())
            .bind(&user.username)
            .bind(&user.first_name)
            .bind(&user.last_name)
            .bind(&user.title)
            .bind(user.locked)
            .bind(c1)
            .bind(c2)
            .bind(c3)
            .bind(c4)
            .bind(c5)
            .bind(user.updated_at)
            .bind(keep_newer)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn advance_version(&mut self, part: &str, read: Option<i64>) -> sqlx::Result<bool> {
        let done = sqlx::query(&DB::sql().advance_version)
            .bind(part)
            .bind(read)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn upsert_mapping(&mut self, mapping: &Mapping) -> sqlx::Result<bool> {
        let done = sqlx::query(&DB::sql().upsert_mapping)
            .bind(mapping.outreach_user_id.0)
            .bind(mapping.salesforce_user_id.as_str())
            .bind(mapping.locked_by_usersync)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn delete_mapping(&mut self, outreach_user_id: i64) -> sqlx::Result<Option<MappingRow>> {
        sqlx::query_as(&DB::sql().delete_mapping)
            .bind(outreach_user_id)
            .fetch_optional(self.conn())
            .await
    }

    async fn insert_applied_event(
        &mut self,
        event_id: &str,
        applied_at: DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(&DB::sql().insert_applied_event)
            .bind(event_id)
            .bind(applied_at)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn append_decision(&mut self, record: &DecisionRecord) -> sqlx::Result<()> {
        sqlx::query(&DB::sql().append_decision)
            .bind(record.event_id.as_str())
            .bind(record.at)
            .bind(record.action.as_str())
            .bind(record.reason.as_str())
            .bind(&record.email)
            .bind(record.outreach_user_id.map(|id| id.0))
            .bind(record.salesforce_user_id.as_ref().map(|id| id.as_str()))
            .bind(
                record
                    .previous_salesforce_user_id
                    .as_ref()
                    .map(|id| id.as_str()),
            )
            .bind(record.message.as_str())
            .bind(i64::from(record.outreach_calls))
            .bind(&record.actor)
            .execute(self.conn())
            .await
            .map(drop)
    }

    async fn save_settings_document(
        &mut self,
        document: &str,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<()> {
        sqlx::query(&DB::sql().save_settings_document)
            .bind(document)
            .bind(updated_at)
            .execute(self.conn())
            .await
            .map(drop)
    }

    async fn save_checkpoint(&mut self, checkpoint: &ReplayCheckpoint) -> sqlx::Result<()> {
        sqlx::query(&DB::sql().save_checkpoint)
            .bind(checkpoint.topic.as_str())
            .bind(checkpoint.replay_id.as_slice())
            .bind(checkpoint.commit_timestamp)
            .bind(checkpoint.updated_at)
            .execute(self.conn())
            .await
            .map(drop)
    }

    async fn append_admin_action(
        &mut self,
        at: DateTime<Utc>,
        action: &str,
        detail: &str,
        actor: Option<&str>,
    ) -> sqlx::Result<i64> {
        sqlx::query_scalar(&DB::sql().append_admin_action)
            .bind(at)
            .bind(action)
            .bind(detail)
            .bind(actor)
            .fetch_one(self.conn())
            .await
    }

    async fn delete_older(
        &mut self,
        log: PrunedLog,
        before: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<u64> {
        let done = sqlx::query(DB::sql().delete_older(log))
            .bind(before)
            .bind(limit)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done))
    }

    async fn save_authorization(
        &mut self,
        side: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        generation: i64,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(&DB::sql().save_authorization)
            .bind(side)
            .bind(sealed)
            .bind(key_fingerprint)
            .bind(generation)
            .bind(updated_at)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn upsert_subscriber_user(
        &mut self,
        org_id: &str,
        user: &SalesforceUser,
        position: Option<&Position>,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(&DB::sql().upsert_subscriber_user)
            .bind(org_id)
            .bind(user.id.as_str())
            .bind(&user.email)
            .bind(&user.username)
            .bind(&user.first_name)
            .bind(&user.last_name)
            .bind(&user.title)
            .bind(user.is_active)
            .bind(user.created_date)
            .bind(user.last_modified_date)
            .bind(position.and_then(|p| p.commit_number))
            .bind(position.map(|p| p.commit_timestamp))
            .bind(updated_at)
            .execute(self.conn())
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }
}

/// Adds a lease claim's name, holder and epoch, the first parameters of its statements.
fn add_claim<'q, A: Arguments<'q>>(
    arguments: &mut A,
    claim: &'q LeaseClaim,
) -> Result<(), BoxDynError>
where
    &'q str: Encode<'q, A::Database> + Type<A::Database>,
    i64: Encode<'q, A::Database> + Type<A::Database>,
{
    arguments.add(claim.name.as_str())?;
    arguments.add(claim.holder.as_str())?;
    arguments.add(claim.epoch)
}
