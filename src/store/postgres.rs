//! The PostgreSQL store: shared by several processor replicas.
//!
//! Single statements run on a pooled connection; `load_state` reads in one `REPEATABLE READ`
//! read-only transaction (one snapshot for all its queries); writes run in `READ COMMITTED`
//! transactions, where the unique keys of `mappings` and `applied_events` settle races between
//! replicas: a second writer of the same event waits on the first and then finds it applied.
//! Lists of ids travel as arrays (`= ANY($1)`). With a schema name, the store lives in that
//! schema — created if missing and put first on every pooled connection's `search_path` — which
//! is how tests get a fresh store each in one database.

use std::str::FromStr;
use std::time::Duration;

use backon::Retryable;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Postgres, Transaction};

use super::rows::{
    AdminActionRow, CheckpointRow, DecisionRow, LeaseRow, MappingRow, OutreachUserRow,
    SalesforceUserRow, SubscriberUserRow,
};
use super::statements::{Access, Backend, PrunedLog, Statements};
use super::{Context, LeaseClaim, ReplayCheckpoint, StoreError, redact_password};
use crate::engine::decision::DecisionRecord;
use crate::engine::state::{Mapping, SalesforceUser};
use crate::event::Position;
use crate::outreach::user::OutreachUser;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The store in a PostgreSQL database (or one schema of it).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://…`, optionally inside `schema` (created if missing; a lower-case
    /// SQL identifier), and runs the migrations there.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::url(url, e))?;
        let shown = redact_password(url);
        let mut pool = PgPoolOptions::new().max_connections(8);
        if let Some(schema) = schema {
            if !is_plain_identifier(schema) {
                return Err(StoreError::url(
                    url,
                    format!(
                        "schema {schema:?} must be 1-63 lower-case letters, digits and \
                         underscores, not starting with a digit"
                    ),
                ));
            }
            let mut conn = (|| PgConnection::connect_with(&options))
                .retry(starting_up())
                .when(unreachable)
                .notify(waiting(&shown))
                .await
                .context(|| format!("connect to {shown}"))?;
            create_schema(&mut conn, schema)
                .await
                .context(|| format!("create schema {schema} in {shown}"))?;
            conn.close()
                .await
                .context(|| format!("disconnect from {shown}"))?;
            let set_search_path = format!("SET search_path TO \"{schema}\"");
            pool = pool.after_connect(move |conn, _meta| {
                let statement = set_search_path.clone();
                Box::pin(async move { conn.execute(statement.as_str()).await.map(drop) })
            });
        }
        let pool = (|| pool.clone().connect_with(options.clone()))
            .retry(starting_up())
            .when(unreachable)
            .notify(waiting(&shown))
            .await
            .context(|| format!("connect to {shown}"))?;
        // sqlx's migrator serializes openers itself: it holds a session advisory lock, keyed on
        // the database's name, from before it reads `_sqlx_migrations` until the last migration
        // is recorded, so a second opener waits and then finds every migration applied.
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "PostgreSQL",
                source,
            })?;
        tracing::info!(store = %shown, schema, "store opened; its schema is up to date");
        Ok(Self { pool })
    }

    /// The connection pool, for tools and tests that need SQL the trait does not offer.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The first key of the advisory lock taken on a schema's name while creating it (the second
/// is the name's hash); the two-key form never meets sqlx's one-key migration lock.
const CREATE_SCHEMA_LOCK: i32 = 0x7573_7379;

/// Creates `schema` unless it exists. Two `CREATE SCHEMA IF NOT EXISTS` of one new name at once
/// can fail, the second on the catalog's unique index, since neither sees the other's schema
/// before it commits: openers of one schema therefore take a lock on its name first, so the
/// second finds the schema made.
async fn create_schema(conn: &mut PgConnection, schema: &str) -> sqlx::Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(CREATE_SCHEMA_LOCK)
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    tx.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
        .await?;
    tx.commit().await
}

/// A name that is safe to quote into SQL as an identifier.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// One pooled connection, or a transaction on one.
pub(crate) enum PostgresSession {
    Single(PoolConnection<Postgres>),
    Transaction(Transaction<'static, Postgres>),
}

impl PostgresSession {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            PostgresSession::Single(conn) => conn,
            PostgresSession::Transaction(tx) => tx,
        }
    }
}

#[async_trait::async_trait]
impl Backend for PostgresStore {
    type Session = PostgresSession;

    async fn session(&self, access: Access) -> sqlx::Result<PostgresSession> {
        Ok(match access {
            Access::Single => PostgresSession::Single(self.pool.acquire().await?),
            Access::Read => PostgresSession::Transaction(
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
            Access::Write => PostgresSession::Transaction(self.pool.begin().await?),
        })
    }

    async fn commit(session: PostgresSession) -> sqlx::Result<()> {
        match session {
            PostgresSession::Single(_) => Ok(()),
            PostgresSession::Transaction(tx) => tx.commit().await,
        }
    }
}

/// A lease's length in whole milliseconds, for SQL arithmetic on intervals.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

const SALESFORCE_USER_COLUMNS: &str = "id, email, username, first_name, last_name, title, \
     is_active, created_date, last_modified_date, commit_number, commit_timestamp, \
     sequence_number, snapshot_read_at";

const OUTREACH_USER_COLUMNS: &str = "id, email, username, first_name, last_name, title, locked, \
     custom1, custom2, custom3, custom4, custom5, updated_at";

const SUBSCRIBER_USER_COLUMNS: &str = "user_id, email, username, first_name, last_name, title, \
     is_active, created_date, last_modified_date";

const DECISION_COLUMNS: &str = "sequence, event_id, at, action, reason, email, \
     outreach_user_id, salesforce_user_id, previous_salesforce_user_id, message, outreach_calls, \
     actor";

#[async_trait::async_trait]
impl Statements for PostgresSession {
    async fn salesforce_users_by_id(
        &mut self,
        ids: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>> {
        let sql = format!(
            "SELECT {SALESFORCE_USER_COLUMNS} FROM salesforce_users \
             WHERE id = ANY($1) ORDER BY id"
        );
        sqlx::query_as(&sql).bind(ids).fetch_all(self.conn()).await
    }

    async fn salesforce_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>> {
        let sql = format!(
            "SELECT {SALESFORCE_USER_COLUMNS} FROM salesforce_users \
             WHERE email_normalized = ANY($1) ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(emails)
            .fetch_all(self.conn())
            .await
    }

    async fn outreach_users_by_id(&mut self, ids: &[i64]) -> sqlx::Result<Vec<OutreachUserRow>> {
        let sql = format!(
            "SELECT {OUTREACH_USER_COLUMNS} FROM outreach_users \
             WHERE id = ANY($1) ORDER BY id"
        );
        sqlx::query_as(&sql).bind(ids).fetch_all(self.conn()).await
    }

    async fn outreach_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<OutreachUserRow>> {
        let sql = format!(
            "SELECT {OUTREACH_USER_COLUMNS} FROM outreach_users \
             WHERE email_normalized = ANY($1) ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(emails)
            .fetch_all(self.conn())
            .await
    }

    async fn mappings_touching(
        &mut self,
        outreach_user_ids: &[i64],
        salesforce_user_ids: &[String],
    ) -> sqlx::Result<Vec<MappingRow>> {
        sqlx::query_as(
            "SELECT outreach_user_id, salesforce_user_id, locked_by_usersync FROM mappings \
             WHERE outreach_user_id = ANY($1) \
                OR salesforce_user_id = ANY($2) \
             ORDER BY outreach_user_id",
        )
        .bind(outreach_user_ids)
        .bind(salesforce_user_ids)
        .fetch_all(self.conn())
        .await
    }

    async fn mappings_matching(
        &mut self,
        email: Option<&str>,
        salesforce_user_id: Option<&str>,
        outreach_user_id: Option<i64>,
    ) -> sqlx::Result<Vec<MappingRow>> {
        sqlx::query_as(
            "SELECT m.outreach_user_id, m.salesforce_user_id, m.locked_by_usersync \
             FROM mappings m \
             WHERE ($1 IS NULL \
                    OR EXISTS (SELECT 1 FROM salesforce_users s \
                               WHERE s.id = m.salesforce_user_id AND s.email_normalized = $1) \
                    OR EXISTS (SELECT 1 FROM outreach_users o \
                               WHERE o.id = m.outreach_user_id AND o.email_normalized = $1)) \
               AND ($2 IS NULL OR m.salesforce_user_id = $2) \
               AND ($3 IS NULL OR m.outreach_user_id = $3) \
             ORDER BY m.outreach_user_id",
        )
        .bind(email)
        .bind(salesforce_user_id)
        .bind(outreach_user_id)
        .fetch_all(self.conn())
        .await
    }

    async fn applied_among(&mut self, event_ids: &[String]) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT event_id FROM applied_events \
             WHERE event_id = ANY($1) ORDER BY event_id",
        )
        .bind(event_ids)
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
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM decisions \
             WHERE ($1 IS NULL OR sequence < $1) \
               AND ($2 IS NULL OR action = $2) \
               AND ($3 IS NULL OR email = $3) \
             ORDER BY sequence DESC LIMIT $4"
        );
        sqlx::query_as(&sql)
            .bind(before)
            .bind(action)
            .bind(email)
            .bind(limit)
            .fetch_all(self.conn())
            .await
    }

    async fn settings_document(&mut self) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar("SELECT document::text FROM settings WHERE id = 1")
            .fetch_optional(self.conn())
            .await
    }

    async fn authorization(&mut self, side: &str) -> sqlx::Result<Option<(Vec<u8>, i64)>> {
        sqlx::query_as("SELECT sealed, generation FROM authorizations WHERE side = $1")
            .bind(side)
            .fetch_optional(self.conn())
            .await
    }

    async fn admin_actions_newest(&mut self, limit: i64) -> sqlx::Result<Vec<AdminActionRow>> {
        sqlx::query_as(
            "SELECT sequence, at, action, detail::text AS detail, actor FROM admin_actions \
             ORDER BY sequence DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.conn())
        .await
    }

    async fn checkpoint(&mut self, topic: &str) -> sqlx::Result<Option<CheckpointRow>> {
        sqlx::query_as(
            "SELECT topic, replay_id, commit_timestamp, updated_at FROM replay_checkpoints \
             WHERE topic = $1",
        )
        .bind(topic)
        .fetch_optional(self.conn())
        .await
    }

    async fn versions_of(&mut self, parts: &[String]) -> sqlx::Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT part, version FROM state_versions WHERE part = ANY($1) ORDER BY part",
        )
        .bind(parts)
        .fetch_all(self.conn())
        .await
    }

    async fn subscriber_users_by_id(
        &mut self,
        org_id: &str,
        user_ids: &[String],
    ) -> sqlx::Result<Vec<SubscriberUserRow>> {
        let sql = format!(
            "SELECT {SUBSCRIBER_USER_COLUMNS} FROM subscriber_users \
             WHERE org_id = $1 AND user_id = ANY($2) ORDER BY user_id"
        );
        sqlx::query_as(&sql)
            .bind(org_id)
            .bind(user_ids)
            .fetch_all(self.conn())
            .await
    }

    async fn lease(&mut self, name: &str, _now: DateTime<Utc>) -> sqlx::Result<Option<LeaseRow>> {
        sqlx::query_as(
            "SELECT name, holder, epoch, acquired_at, renewed_at, expires_at, now() AS read_at \
             FROM subscriber_leases WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.conn())
        .await
    }

    async fn holds_lease(&mut self, claim: &LeaseClaim) -> sqlx::Result<bool> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT epoch FROM subscriber_leases \
             WHERE name = $1 AND holder = $2 AND epoch = $3 FOR SHARE",
        )
        .bind(&claim.name)
        .bind(&claim.holder)
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
        _now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>> {
        sqlx::query_as(
            "INSERT INTO subscriber_leases (name, holder, epoch, acquired_at, renewed_at, expires_at) \
             VALUES ($1, $2, 1, now(), now(), now() + $3 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 epoch = subscriber_leases.epoch + 1, acquired_at = excluded.acquired_at, \
                 renewed_at = excluded.renewed_at, expires_at = excluded.expires_at \
             WHERE subscriber_leases.expires_at <= now() \
                OR subscriber_leases.holder = excluded.holder \
             RETURNING name, holder, epoch, acquired_at, renewed_at, expires_at, now() AS read_at",
        )
        .bind(name)
        .bind(holder)
        .bind(millis(ttl))
        .fetch_optional(self.conn())
        .await
    }

    async fn renew_lease(
        &mut self,
        claim: &LeaseClaim,
        ttl: Duration,
        _now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>> {
        sqlx::query_as(
            "UPDATE subscriber_leases \
             SET renewed_at = now(), expires_at = now() + $4 * interval '1 millisecond' \
             WHERE name = $1 AND holder = $2 AND epoch = $3 \
             RETURNING name, holder, epoch, acquired_at, renewed_at, expires_at, now() AS read_at",
        )
        .bind(&claim.name)
        .bind(&claim.holder)
        .bind(claim.epoch)
        .bind(millis(ttl))
        .fetch_optional(self.conn())
        .await
    }

    async fn release_lease(&mut self, claim: &LeaseClaim, _now: DateTime<Utc>) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE subscriber_leases SET expires_at = now() \
             WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(&claim.name)
        .bind(&claim.holder)
        .bind(claim.epoch)
        .execute(self.conn())
        .await
        .map(drop)
    }

    async fn newest_subscriber_commit(
        &mut self,
        org_id: &str,
    ) -> sqlx::Result<Option<(i64, DateTime<Utc>)>> {
        sqlx::query_as(
            "SELECT commit_number, commit_timestamp FROM subscriber_users \
             WHERE org_id = $1 AND commit_number IS NOT NULL \
             ORDER BY commit_number DESC LIMIT 1",
        )
        .bind(org_id)
        .fetch_optional(self.conn())
        .await
    }

    async fn upsert_salesforce_user(&mut self, user: &SalesforceUser) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO salesforce_users (id, email, email_normalized, username, first_name, \
                 last_name, title, is_active, created_date, last_modified_date, commit_number, \
                 commit_timestamp, sequence_number, snapshot_read_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14) \
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
                 email_normalized = excluded.email_normalized, username = excluded.username, \
                 first_name = excluded.first_name, last_name = excluded.last_name, \
                 title = excluded.title, is_active = excluded.is_active, \
                 created_date = excluded.created_date, \
                 last_modified_date = excluded.last_modified_date, \
                 commit_number = excluded.commit_number, \
                 commit_timestamp = excluded.commit_timestamp, \
                 sequence_number = excluded.sequence_number, \
                 snapshot_read_at = excluded.snapshot_read_at",
        )
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
        let done = sqlx::query(
            "INSERT INTO outreach_users (id, email, email_normalized, username, first_name, \
                 last_name, title, locked, custom1, custom2, custom3, custom4, custom5, \
                 updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
                 email_normalized = excluded.email_normalized, username = excluded.username, \
                 first_name = excluded.first_name, last_name = excluded.last_name, \
                 title = excluded.title, locked = excluded.locked, \
                 custom1 = excluded.custom1, custom2 = excluded.custom2, \
                 custom3 = excluded.custom3, custom4 = excluded.custom4, \
                 custom5 = excluded.custom5, updated_at = excluded.updated_at \
             WHERE NOT $15 OR outreach_users.updated_at IS NULL \
                OR excluded.updated_at IS NULL \
                OR excluded.updated_at >= outreach_users.updated_at",
        )
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
        Ok(done.rows_affected() == 1)
    }

    async fn advance_version(&mut self, part: &str, read: Option<i64>) -> sqlx::Result<bool> {
        // A writer that finds the row locked waits for the other transaction, then evaluates
        // the WHERE on the row that one left (READ COMMITTED): it sees the move and writes
        // nothing.
        let done = sqlx::query(
            "INSERT INTO state_versions (part, version) VALUES ($1, 1) \
             ON CONFLICT (part) DO UPDATE SET version = state_versions.version + 1 \
             WHERE $2::BIGINT IS NULL OR state_versions.version = $2",
        )
        .bind(part)
        .bind(read)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn upsert_mapping(&mut self, mapping: &Mapping) -> sqlx::Result<bool> {
        let done = sqlx::query(
            "INSERT INTO mappings (outreach_user_id, salesforce_user_id, locked_by_usersync) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (outreach_user_id) DO UPDATE \
                 SET locked_by_usersync = excluded.locked_by_usersync \
                 WHERE mappings.salesforce_user_id = excluded.salesforce_user_id",
        )
        .bind(mapping.outreach_user_id.0)
        .bind(mapping.salesforce_user_id.as_str())
        .bind(mapping.locked_by_usersync)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_mapping(&mut self, outreach_user_id: i64) -> sqlx::Result<Option<MappingRow>> {
        sqlx::query_as(
            "DELETE FROM mappings WHERE outreach_user_id = $1 \
             RETURNING outreach_user_id, salesforce_user_id, locked_by_usersync",
        )
        .bind(outreach_user_id)
        .fetch_optional(self.conn())
        .await
    }

    async fn insert_applied_event(
        &mut self,
        event_id: &str,
        applied_at: DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(
            "INSERT INTO applied_events (event_id, applied_at) VALUES ($1, $2) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(applied_at)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn append_decision(&mut self, record: &DecisionRecord) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO decisions (event_id, at, action, reason, email, outreach_user_id, \
                 salesforce_user_id, previous_salesforce_user_id, message, outreach_calls, \
                 actor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&record.event_id)
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
        .bind(&record.message)
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
        sqlx::query(
            "INSERT INTO settings (id, document, updated_at) VALUES (1, $1::jsonb, $2) \
             ON CONFLICT (id) DO UPDATE \
                 SET document = excluded.document, updated_at = excluded.updated_at",
        )
        .bind(document)
        .bind(updated_at)
        .execute(self.conn())
        .await
        .map(drop)
    }

    async fn save_authorization(
        &mut self,
        side: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        generation: i64,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        sqlx::query(
            "INSERT INTO authorizations (side, sealed, key_fingerprint, generation, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (side) DO UPDATE SET sealed = excluded.sealed, \
                 key_fingerprint = excluded.key_fingerprint, generation = excluded.generation, \
                 updated_at = excluded.updated_at \
             WHERE authorizations.generation = excluded.generation - 1",
        )
        .bind(side)
        .bind(sealed)
        .bind(key_fingerprint)
        .bind(generation)
        .bind(updated_at)
        .execute(self.conn())
        .await
        .map(|done| done.rows_affected() == 1)
    }

    async fn append_admin_action(
        &mut self,
        at: DateTime<Utc>,
        action: &str,
        detail: &str,
        actor: Option<&str>,
    ) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO admin_actions (at, action, detail, actor) \
             VALUES ($1, $2, $3::jsonb, $4) RETURNING sequence",
        )
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
        let (table, key, time) = log.columns();
        let statement = format!(
            "DELETE FROM {table} WHERE {key} IN \
             (SELECT {key} FROM {table} WHERE {time} < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        );
        let done = sqlx::query(&statement)
            .bind(before)
            .bind(limit)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected())
    }

    async fn save_checkpoint(&mut self, checkpoint: &ReplayCheckpoint) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO replay_checkpoints (topic, replay_id, commit_timestamp, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (topic) DO UPDATE SET replay_id = excluded.replay_id, \
                 commit_timestamp = excluded.commit_timestamp, updated_at = excluded.updated_at",
        )
        .bind(&checkpoint.topic)
        .bind(&checkpoint.replay_id)
        .bind(checkpoint.commit_timestamp)
        .bind(checkpoint.updated_at)
        .execute(self.conn())
        .await
        .map(drop)
    }

    async fn upsert_subscriber_user(
        &mut self,
        org_id: &str,
        user: &SalesforceUser,
        position: Option<&Position>,
        updated_at: DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(
            "INSERT INTO subscriber_users (org_id, user_id, email, username, first_name, \
                 last_name, title, is_active, created_date, last_modified_date, commit_number, \
                 commit_timestamp, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (org_id, user_id) DO UPDATE SET email = excluded.email, \
                 username = excluded.username, first_name = excluded.first_name, \
                 last_name = excluded.last_name, title = excluded.title, \
                 is_active = excluded.is_active, created_date = excluded.created_date, \
                 last_modified_date = excluded.last_modified_date, \
                 commit_number = excluded.commit_number, \
                 commit_timestamp = excluded.commit_timestamp, updated_at = excluded.updated_at \
             WHERE excluded.commit_timestamp IS NULL \
                OR subscriber_users.commit_timestamp IS NULL \
                OR CASE WHEN excluded.commit_number IS NOT NULL \
                             AND subscriber_users.commit_number IS NOT NULL \
                        THEN excluded.commit_number >= subscriber_users.commit_number \
                        WHEN subscriber_users.commit_number IS NOT NULL THEN FALSE \
                        WHEN excluded.commit_number IS NOT NULL THEN TRUE \
                        ELSE excluded.commit_timestamp >= subscriber_users.commit_timestamp \
                   END",
        )
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
        Ok(done.rows_affected() == 1)
    }
}
/// How long a start waits for a PostgreSQL it cannot reach: about a minute, the time a
/// database container started beside usersync needs to come up and its name to resolve.
/// sqlx itself retries a refused connection until its acquire timeout (30 s); a name that does
/// not resolve yet, or a connection reset, it reports at once.
fn starting_up() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(60)))
        .without_max_times()
}

/// Logs each wait for an unreachable PostgreSQL (`shown`: its URL without the password).
fn waiting(shown: &str) -> impl Fn(&sqlx::Error, Duration) + '_ {
    move |error, wait| {
        tracing::warn!(
            store = %shown,
            %error,
            ?wait,
            "PostgreSQL cannot be reached yet; trying again"
        );
    }
}

/// Errors of a server that is not there yet: the network's, not the server's answers.
fn unreachable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
}
