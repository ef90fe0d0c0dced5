//! The PostgreSQL store: shared by several processor replicas.
//!
//! Single statements run on a pooled connection; `load_state` reads in one `REPEATABLE READ`
//! read-only transaction (one snapshot for all its queries); writes run in `READ COMMITTED`
//! transactions, where the unique keys of `mappings` and `applied_events` settle races between
//! replicas: a second writer of the same event waits on the first and then finds it applied.
//! With a schema name, the store lives in that schema — created if missing and put first on
//! every pooled connection's `search_path` — which is how tests get a fresh store each in one
//! database.
//!
//! The statements are written once for both databases (`super::sql`); what PostgreSQL spells
//! its own way is its [`Dialect`] here: a list of ids travels as an array (`= ANY($1)`), JSON
//! documents are `jsonb`, rows are locked (`FOR SHARE`, `FOR UPDATE SKIP LOCKED`) where
//! replicas meet, and leases run on the database's clock, so that instances on different
//! machines agree on when one expires.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use backon::Retryable;
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgConnectOptions, PgConnection, PgHasArrayType, PgPool,
    PgPoolOptions, PgQueryResult, PgTypeInfo,
};
use sqlx::{Arguments, Connection, Encode, Executor, Postgres, Type};

use super::dialect::{Dialect, LeaseClock, List};
use super::sql::Sql;
use super::statements::Backend;
use super::{Context, StoreError, redact_password};

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

impl Backend for PostgresStore {
    type Dialect = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Every statement in PostgreSQL's words, rendered at the first one run.
static SQL: LazyLock<Sql> = LazyLock::new(Sql::render::<Postgres>);

impl Dialect for Postgres {
    /// One snapshot for every query of a read (`load_state`'s rows and their versions).
    const BEGIN_READ: Option<&'static str> =
        Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    /// `READ COMMITTED`, the server's default: a second writer of a row waits for the first,
    /// then evaluates its conditions on the row the first left.
    const BEGIN_WRITE: Option<&'static str> = None;
    /// A lease row read by its holder cannot be taken over until the holder's write ends.
    const LOCK_SHARED: &'static str = " FOR SHARE";
    /// Replicas pruning at once share the old rows instead of waiting for each other.
    const LOCK_SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn sql() -> &'static Sql {
        &SQL
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn in_list(column: &str, param: &str) -> String {
        format!("{column} = ANY({param})")
    }

    fn json_document(param: &str) -> String {
        format!("{param}::jsonb")
    }

    fn json_text(column: &str) -> String {
        format!("{column}::text")
    }

    /// The database's clock, so that instances on different machines agree on expiry; only
    /// the lease's length is a parameter, in whole milliseconds.
    fn lease_clock(first: usize) -> LeaseClock {
        LeaseClock {
            now: "now()".into(),
            expiry: format!("now() + ${first} * interval '1 millisecond'"),
        }
    }

    fn add_lease_clock(
        arguments: &mut PgArguments,
        _now: DateTime<Utc>,
        ttl: Option<Duration>,
    ) -> Result<(), BoxDynError> {
        match ttl {
            Some(ttl) => arguments.add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            None => Ok(()),
        }
    }
}

/// A list travels as a PostgreSQL array of its values, read with `= ANY($n)`.
impl<T: PgHasArrayType> Type<Postgres> for List<'_, T> {
    fn type_info() -> PgTypeInfo {
        <[T] as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <[T] as Type<Postgres>>::compatible(ty)
    }
}

impl<'q, T> Encode<'q, Postgres> for List<'_, T>
where
    T: Encode<'q, Postgres> + Type<Postgres>,
{
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&[T] as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
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
