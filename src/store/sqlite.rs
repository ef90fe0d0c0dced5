//! The SQLite store: one file, the embedded default for a single usersync process.
//!
//! The file runs in WAL mode (readers never wait for the writer), with foreign keys on and a
//! busy timeout so that a second writer waits instead of failing. Write transactions begin
//! `IMMEDIATE`: they take the write lock up front, so two writers queue on the busy timeout
//! rather than one failing when it upgrades from reading to writing. Timestamps are stored as
//! RFC 3339 text in UTC.
//!
//! The statements are written once for both databases (`super::sql`); what SQLite spells its
//! own way is its [`Dialect`] here: a list of ids travels as one JSON array parameter unpacked
//! with `json_each` (SQLite has no arrays), JSON documents are plain text, there are no row
//! locks (a write transaction holds the whole file), and leases run on the process's clock.
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
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteArgumentValue, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteQueryResult, SqliteTypeInfo,
};
use sqlx::{Arguments, Encode, Sqlite, Type};

use super::dialect::{Dialect, LeaseClock, List};
use super::sql::Sql;
use super::statements::Backend;
use super::{Context, StoreError};

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

impl Backend for SqliteStore {
    type Dialect = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Every statement in SQLite's words, rendered at the first one run.
static SQL: LazyLock<Sql> = LazyLock::new(Sql::render::<Sqlite>);

impl Dialect for Sqlite {
    /// A deferred transaction reads one snapshot from its first SELECT on.
    const BEGIN_READ: Option<&'static str> = None;
    /// The write lock up front: two writers queue on the busy timeout rather than one failing
    /// when it upgrades from reading to writing.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    /// None: a write transaction holds the whole file.
    const LOCK_SHARED: &'static str = "";
    const LOCK_SKIP_LOCKED: &'static str = "";

    fn sql() -> &'static Sql {
        &SQL
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn in_list(column: &str, param: &str) -> String {
        format!("{column} IN (SELECT value FROM json_each({param}))")
    }

    /// JSON is stored as text (checked by `json_valid` in the schema).
    fn json_document(param: &str) -> String {
        param.into()
    }

    fn json_text(column: &str) -> String {
        column.into()
    }

    /// The process's clock: now, and when a lease taken now expires, are both parameters.
    fn lease_clock(first: usize) -> LeaseClock {
        LeaseClock {
            now: format!("${first}"),
            expiry: format!("${}", first + 1),
        }
    }

    fn add_lease_clock(
        arguments: &mut SqliteArguments<'_>,
        now: DateTime<Utc>,
        ttl: Option<Duration>,
    ) -> Result<(), BoxDynError> {
        arguments.add(now)?;
        match ttl {
            Some(ttl) => arguments
                .add(now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)),
            None => Ok(()),
        }
    }
}

/// A list travels as one JSON array, text that `json_each` unpacks: SQLite has no arrays, and
/// one parameter keeps the statement one text for every length.
impl<T> Type<Sqlite> for List<'_, T> {
    fn type_info() -> SqliteTypeInfo {
        <str as Type<Sqlite>>::type_info()
    }
}

impl<'q, T: Serialize> Encode<'q, Sqlite> for List<'_, T> {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(serde_json::to_string(self.0)?, buf)
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
