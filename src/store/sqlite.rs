//! The SQLite store: one file, the embedded default for a single usersync process.
//!
//! The file runs in WAL mode (readers never wait for the writer), with foreign keys on and a
//! busy timeout so that a second writer waits instead of failing. Write transactions begin
//! `IMMEDIATE`: they take the write lock up front, so two writers queue on the busy timeout
//! rather than one failing when it upgrades from reading to writing. Lists of ids travel as
//! one JSON array parameter, unpacked with `json_each`, so every statement here is static SQL.
//! Timestamps are stored as RFC 3339 text in UTC.
//!
//! The file holds names and emails, so it and its `-wal` and `-shm` files are its owner's only
//! (mode 0600; [`keep_private`] says how, docs/security.md why).
//!
//! Opening a file is serialized across processes by an exclusive lock on a file beside it
//! ([`MigrationLock`]), held from the first connection to the end of the migrations. sqlx's
//! migrator takes no lock on SQLite, and roles started together would otherwise each find a
//! migration unapplied and run it, all but the first then failing on a table that already
//! exists. The lock lives outside the database, not in a transaction inside it, because it must
//! also cover the first connection, which switches a new file to WAL: that needs the file to
//! itself and cannot happen inside a transaction.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Sqlite, Transaction};

use super::rows::{
    AdminActionRow, CheckpointRow, DecisionRow, LeaseRow, MappingRow, OutreachUserRow,
    SalesforceUserRow, SubscriberUserRow,
};
use super::statements::{Access, Backend, PrunedLog, Statements};
use super::{Context, LeaseClaim, ReplayCheckpoint, StoreError};
use crate::engine::decision::DecisionRecord;
use crate::engine::state::{Mapping, SalesforceUser};
use crate::event::Position;
use crate::outreach::user::OutreachUser;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for another one before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a file waits for another process to finish migrating it. Today's
/// migrations take milliseconds; the bound is for one that rewrites a large table, and it
/// ends in an error rather than a silent hang if the holder is stuck.
const MIGRATION_WAIT: Duration = Duration::from_secs(300);

/// How often a waiting opener tries the migration lock again.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(25);

/// The store in one SQLite file (or in memory).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (creating the file and its folder if missing) or `sqlite::memory:`,
    /// and runs the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::url(url, e))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // Nothing else sees an in-memory database: it needs no lock.
        let mut lock = None;
        let pool = if in_memory {
            // Every connection would see its own empty database, and the last one to close
            // would take the data with it: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            let database = options.get_filename();
            if let Some(folder) = database.parent()
                && folder != Path::new("")
            {
                std::fs::create_dir_all(folder).map_err(|e| {
                    StoreError::url(url, format!("cannot create {}: {e}", folder.display()))
                })?;
            }
            keep_private(database, url)?;
            lock = Some(MigrationLock::acquire(database, MIGRATION_WAIT).await?);
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await
        }
        .context(|| format!("open SQLite database {url}"))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "SQLite",
                source,
            })?;
        drop(lock);
        tracing::info!(store = %url, "store opened; its schema is up to date");
        Ok(Self { pool })
    }

    /// The connection pool, for tools and tests that need SQL the trait does not offer.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Keeps the database and its companion files readable by their owner only: they hold names
/// and emails (docs/security.md). A missing database is created here with mode 0600, before
/// SQLite opens it (SQLite would create it with the umask's mode, usually 0644); the `-wal` and
/// `-shm` files SQLite creates later take the database's mode. An existing file others may read
/// (created by an older release) is tightened to 0600 with a warning rather than refused: the
/// file is usersync's own, and refusing would only make every upgrade fail until an operator ran
/// the same `chmod`. One that cannot be tightened (another user owns it) is an error naming it.
fn keep_private(database: &Path, url: &str) -> Result<(), StoreError> {
    let failed = |path: &Path, what: &str, error: std::io::Error| {
        StoreError::url(
            url,
            format!(
                "cannot {what} {}: {error} (usersync keeps its store readable by its owner \
                 only: run it as the file's owner, or chmod 600 the file)",
                path.display()
            ),
        )
    };
    crate::private_file::create_if_missing(database).map_err(|e| failed(database, "create", e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        let was = crate::private_file::tighten(&path)
            .map_err(|e| failed(&path, "restrict the permissions of", e))?;
        if let Some(was) = was {
            tracing::warn!(
                path = %path.display(),
                was = format!("{was:o}"),
                "the store's file was readable by others; it is now 0600"
            );
        }
    }
    Ok(())
}

/// An exclusive lock on `<database>-migrations.lock`, taken before the first connection to the
/// database and released once its migrations have run, so that processes opening one file
/// migrate it one after the other. The lock is the operating system's (`flock` on Unix): it
/// dies with its holder, so a crashed opener leaves nothing to clean up. The file itself is
/// kept: deleting it could let a later opener lock a new file while an earlier one still holds
/// the old.
struct MigrationLock {
    _file: File,
}

impl MigrationLock {
    /// Waits (at most `wait`) until no other opener holds the lock of `database`.
    async fn acquire(database: &Path, wait: Duration) -> Result<MigrationLock, StoreError> {
        let path = Self::path(database);
        let failed = |problem: String| StoreError::MigrationLock {
            path: path.display().to_string(),
            problem,
        };
        crate::private_file::create_if_missing(&path)
            .map_err(|e| failed(format!("cannot create it: {e}")))?;
        let file = File::options()
            .write(true)
            .open(&path)
            .map_err(|e| failed(format!("cannot open it: {e}")))?;
        let started = Instant::now();
        let mut waiting = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(MigrationLock { _file: file }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(failed(format!("cannot lock it: {e}"))),
            }
            if started.elapsed() >= wait {
                return Err(failed(format!(
                    "another opener has held it for over {wait:?} (a long migration, or a \
                     stuck process)"
                )));
            }
            if !waiting {
                waiting = true;
                tracing::info!(lock = %path.display(), "another process is opening the store; waiting for its migrations");
            }
            tokio::time::sleep(MIGRATION_LOCK_POLL).await;
        }
    }

    fn path(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push("-migrations.lock");
        PathBuf::from(name)
    }
}

/// One pooled connection, or a transaction on one.
pub(crate) enum SqliteSession {
    Single(PoolConnection<Sqlite>),
    Transaction(Transaction<'static, Sqlite>),
}

impl SqliteSession {
    fn conn(&mut self) -> &mut SqliteConnection {
        match self {
            SqliteSession::Single(conn) => conn,
            SqliteSession::Transaction(tx) => tx,
        }
    }
}

#[async_trait::async_trait]
impl Backend for SqliteStore {
    type Session = SqliteSession;

    async fn session(&self, access: Access) -> sqlx::Result<SqliteSession> {
        Ok(match access {
            Access::Single => SqliteSession::Single(self.pool.acquire().await?),
            // A deferred transaction reads one snapshot from its first SELECT on.
            Access::Read => SqliteSession::Transaction(self.pool.begin().await?),
            Access::Write => {
                SqliteSession::Transaction(self.pool.begin_with("BEGIN IMMEDIATE").await?)
            }
        })
    }

    async fn commit(session: SqliteSession) -> sqlx::Result<()> {
        match session {
            SqliteSession::Single(_) => Ok(()),
            SqliteSession::Transaction(tx) => tx.commit().await,
        }
    }
}

/// A list of values as the JSON array `json_each` unpacks.
fn json_list<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).expect("a list of strings or integers serializes")
}

/// When a lease taken `now` for `ttl` expires.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)
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
impl Statements for SqliteSession {
    async fn salesforce_users_by_id(
        &mut self,
        ids: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>> {
        let sql = format!(
            "SELECT {SALESFORCE_USER_COLUMNS} FROM salesforce_users \
             WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(json_list(ids))
            .fetch_all(self.conn())
            .await
    }

    async fn salesforce_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<SalesforceUserRow>> {
        let sql = format!(
            "SELECT {SALESFORCE_USER_COLUMNS} FROM salesforce_users \
             WHERE email_normalized IN (SELECT value FROM json_each(?1)) ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(json_list(emails))
            .fetch_all(self.conn())
            .await
    }

    async fn outreach_users_by_id(&mut self, ids: &[i64]) -> sqlx::Result<Vec<OutreachUserRow>> {
        let sql = format!(
            "SELECT {OUTREACH_USER_COLUMNS} FROM outreach_users \
             WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(json_list(ids))
            .fetch_all(self.conn())
            .await
    }

    async fn outreach_users_by_email(
        &mut self,
        emails: &[String],
    ) -> sqlx::Result<Vec<OutreachUserRow>> {
        let sql = format!(
            "SELECT {OUTREACH_USER_COLUMNS} FROM outreach_users \
             WHERE email_normalized IN (SELECT value FROM json_each(?1)) ORDER BY id"
        );
        sqlx::query_as(&sql)
            .bind(json_list(emails))
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
             WHERE outreach_user_id IN (SELECT value FROM json_each(?1)) \
                OR salesforce_user_id IN (SELECT value FROM json_each(?2)) \
             ORDER BY outreach_user_id",
        )
        .bind(json_list(outreach_user_ids))
        .bind(json_list(salesforce_user_ids))
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
             WHERE (?1 IS NULL \
                    OR EXISTS (SELECT 1 FROM salesforce_users s \
                               WHERE s.id = m.salesforce_user_id AND s.email_normalized = ?1) \
                    OR EXISTS (SELECT 1 FROM outreach_users o \
                               WHERE o.id = m.outreach_user_id AND o.email_normalized = ?1)) \
               AND (?2 IS NULL OR m.salesforce_user_id = ?2) \
               AND (?3 IS NULL OR m.outreach_user_id = ?3) \
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
             WHERE event_id IN (SELECT value FROM json_each(?1)) ORDER BY event_id",
        )
        .bind(json_list(event_ids))
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
             WHERE (?1 IS NULL OR sequence < ?1) \
               AND (?2 IS NULL OR action = ?2) \
               AND (?3 IS NULL OR email = ?3) \
             ORDER BY sequence DESC LIMIT ?4"
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
        sqlx::query_scalar("SELECT document FROM settings WHERE id = 1")
            .fetch_optional(self.conn())
            .await
    }

    async fn authorization(&mut self, side: &str) -> sqlx::Result<Option<(Vec<u8>, i64)>> {
        sqlx::query_as("SELECT sealed, generation FROM authorizations WHERE side = ?1")
            .bind(side)
            .fetch_optional(self.conn())
            .await
    }

    async fn admin_actions_newest(&mut self, limit: i64) -> sqlx::Result<Vec<AdminActionRow>> {
        sqlx::query_as(
            "SELECT sequence, at, action, detail, actor FROM admin_actions \
             ORDER BY sequence DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(self.conn())
        .await
    }

    async fn checkpoint(&mut self, topic: &str) -> sqlx::Result<Option<CheckpointRow>> {
        sqlx::query_as(
            "SELECT topic, replay_id, commit_timestamp, updated_at FROM replay_checkpoints \
             WHERE topic = ?1",
        )
        .bind(topic)
        .fetch_optional(self.conn())
        .await
    }

    async fn versions_of(&mut self, parts: &[String]) -> sqlx::Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT part, version FROM state_versions \
             WHERE part IN (SELECT value FROM json_each(?1)) ORDER BY part",
        )
        .bind(json_list(parts))
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
             WHERE org_id = ?1 AND user_id IN (SELECT value FROM json_each(?2)) ORDER BY user_id"
        );
        sqlx::query_as(&sql)
            .bind(org_id)
            .bind(json_list(user_ids))
            .fetch_all(self.conn())
            .await
    }

    async fn lease(&mut self, name: &str, now: DateTime<Utc>) -> sqlx::Result<Option<LeaseRow>> {
        sqlx::query_as(
            "SELECT name, holder, epoch, acquired_at, renewed_at, expires_at, ?2 AS read_at \
             FROM subscriber_leases WHERE name = ?1",
        )
        .bind(name)
        .bind(now)
        .fetch_optional(self.conn())
        .await
    }

    async fn holds_lease(&mut self, claim: &LeaseClaim) -> sqlx::Result<bool> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT epoch FROM subscriber_leases WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
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
        now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>> {
        sqlx::query_as(
            "INSERT INTO subscriber_leases (name, holder, epoch, acquired_at, renewed_at, expires_at) \
             VALUES (?1, ?2, 1, ?3, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 epoch = subscriber_leases.epoch + 1, acquired_at = excluded.acquired_at, \
                 renewed_at = excluded.renewed_at, expires_at = excluded.expires_at \
             WHERE subscriber_leases.expires_at <= ?3 \
                OR subscriber_leases.holder = excluded.holder \
             RETURNING name, holder, epoch, acquired_at, renewed_at, expires_at, ?3 AS read_at",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(expiry(now, ttl))
        .fetch_optional(self.conn())
        .await
    }

    async fn renew_lease(
        &mut self,
        claim: &LeaseClaim,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Option<LeaseRow>> {
        sqlx::query_as(
            "UPDATE subscriber_leases SET renewed_at = ?4, expires_at = ?5 \
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3 \
             RETURNING name, holder, epoch, acquired_at, renewed_at, expires_at, ?4 AS read_at",
        )
        .bind(&claim.name)
        .bind(&claim.holder)
        .bind(claim.epoch)
        .bind(now)
        .bind(expiry(now, ttl))
        .fetch_optional(self.conn())
        .await
    }

    async fn release_lease(&mut self, claim: &LeaseClaim, now: DateTime<Utc>) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE subscriber_leases SET expires_at = ?4 \
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
        )
        .bind(&claim.name)
        .bind(&claim.holder)
        .bind(claim.epoch)
        .bind(now)
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
             WHERE org_id = ?1 AND commit_number IS NOT NULL \
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
                 ?14) \
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
        // Timestamps compare as text, which is time order here (see upsert_subscriber_user).
        let done = sqlx::query(
            "INSERT INTO outreach_users (id, email, email_normalized, username, first_name, \
                 last_name, title, locked, custom1, custom2, custom3, custom4, custom5, \
                 updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
                 email_normalized = excluded.email_normalized, username = excluded.username, \
                 first_name = excluded.first_name, last_name = excluded.last_name, \
                 title = excluded.title, locked = excluded.locked, \
                 custom1 = excluded.custom1, custom2 = excluded.custom2, \
                 custom3 = excluded.custom3, custom4 = excluded.custom4, \
                 custom5 = excluded.custom5, updated_at = excluded.updated_at \
             WHERE NOT ?15 OR outreach_users.updated_at IS NULL \
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
        let done = sqlx::query(
            "INSERT INTO state_versions (part, version) VALUES (?1, 1) \
             ON CONFLICT (part) DO UPDATE SET version = state_versions.version + 1 \
             WHERE ?2 IS NULL OR state_versions.version = ?2",
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
             VALUES (?1, ?2, ?3) \
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
            "DELETE FROM mappings WHERE outreach_user_id = ?1 \
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
            "INSERT INTO applied_events (event_id, applied_at) VALUES (?1, ?2) \
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
            "INSERT INTO settings (id, document, updated_at) VALUES (1, ?1, ?2) \
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
             VALUES (?1, ?2, ?3, ?4, ?5) \
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
             VALUES (?1, ?2, ?3, ?4) RETURNING sequence",
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
             (SELECT {key} FROM {table} WHERE {time} < ?1 LIMIT ?2)"
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
             VALUES (?1, ?2, ?3, ?4) \
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
        // Timestamps compare as text: sqlx writes them in UTC with 0, 3, 6 or 9 fraction digits
        // and a `+00:00` suffix, and '+' sorts below '.' and every digit, so text order is time
        // order down to the nanosecond.
        let done = sqlx::query(
            "INSERT INTO subscriber_users (org_id, user_id, email, username, first_name, \
                 last_name, title, is_active, created_date, last_modified_date, commit_number, \
                 commit_timestamp, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The file and its companions, by suffix.
    #[cfg(unix)]
    fn files_of(database: &Path) -> Vec<(String, u32)> {
        ["", "-wal", "-shm", "-migrations.lock"]
            .into_iter()
            .map(|suffix| {
                let mut name = database.as_os_str().to_owned();
                name.push(suffix);
                (suffix.to_owned(), mode(Path::new(&name)))
            })
            .collect()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_store_and_its_companion_files_are_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("state").join("usersync.db");
        let store = SqliteStore::open(&format!("sqlite://{}", database.display()))
            .await
            .unwrap();
        // A write, so that the WAL and its index exist.
        sqlx::query("CREATE TABLE probe (x INTEGER)")
            .execute(store.pool())
            .await
            .unwrap();
        for (suffix, mode) in files_of(&database) {
            assert_eq!(mode, 0o600, "usersync.db{suffix} is {mode:o}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_existing_store_others_may_read_is_tightened_at_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("usersync.db");
        let url = format!("sqlite://{}", database.display());
        let store = SqliteStore::open(&url).await.unwrap();
        store.pool().close().await;
        let wal = dir.path().join("usersync.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for path in [&database, &wal] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(mode(&database), 0o600);
        assert_eq!(mode(&wal), 0o600);
        store.pool().close().await;
    }

    #[tokio::test]
    async fn a_held_migration_lock_is_waited_for_then_reported_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("usersync.db");
        let held = MigrationLock::acquire(&database, Duration::ZERO)
            .await
            .unwrap();
        let lock_path = dir.path().join("usersync.db-migrations.lock");
        assert!(lock_path.exists());

        let started = Instant::now();
        let err = MigrationLock::acquire(&database, Duration::from_millis(200))
            .await
            .err()
            .expect("the lock is held");
        assert!(started.elapsed() >= Duration::from_millis(200));
        let message = err.to_string();
        assert!(
            matches!(err, StoreError::MigrationLock { .. })
                && message.contains(&lock_path.display().to_string())
                && message.contains("200ms"),
            "{message}"
        );

        drop(held);
        MigrationLock::acquire(&database, Duration::ZERO)
            .await
            .expect("free once its holder let go");
        assert!(lock_path.exists(), "the lock file is kept");
    }
}
