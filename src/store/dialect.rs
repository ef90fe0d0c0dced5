//! What truly differs between the SQLite and the PostgreSQL statements, and nothing more.
//!
//! Every statement is written once, in [`sql`](super::sql), and bound once, in
//! [`session`](super::session); a dialect supplies only the pieces that cannot be the same
//! text or the same values in both databases:
//!
//! | | SQLite | PostgreSQL |
//! |---|---|---|
//! | a list of values as one parameter ([`List`]) | a JSON array, `col IN (SELECT value FROM json_each($n))` | an array, `col = ANY($n)` |
//! | a JSON document ([`json_document`](Dialect::json_document), [`json_text`](Dialect::json_text)) | text, written and read as it is | `jsonb`: `$n::jsonb` to write, `col::text` to read |
//! | row locks ([`LOCK_SHARED`](Dialect::LOCK_SHARED), [`LOCK_SKIP_LOCKED`](Dialect::LOCK_SKIP_LOCKED)) | none: one writer holds the whole file | `FOR SHARE`, `FOR UPDATE SKIP LOCKED` |
//! | the lease clock ([`lease_clock`](Dialect::lease_clock)) | the process's, bound as parameters | the database's `now()` |
//! | transactions ([`BEGIN_READ`](Dialect::BEGIN_READ), [`BEGIN_WRITE`](Dialect::BEGIN_WRITE)) | a deferred `BEGIN` to read, `BEGIN IMMEDIATE` to write | `REPEATABLE READ READ ONLY` to read, a plain `BEGIN` (`READ COMMITTED`) to write |
//!
//! Placeholders are not among them: both are written `$n`, which PostgreSQL numbers itself and
//! sqlx's SQLite driver binds by the number after the `$` (SQLite takes `$1` as a parameter
//! named `$1`; one name used twice is one parameter). Upserts (`INSERT … ON CONFLICT … DO
//! UPDATE … WHERE`), `RETURNING` and `excluded.` are the same text in both.
//!
//! The dialect is the sqlx database type itself ([`sqlx::Postgres`], [`sqlx::Sqlite`]): each
//! backend implements this trait beside its connection code.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Database;
use sqlx::error::BoxDynError;

use super::sql::Sql;

/// The pieces of statement text and parameter values that differ between databases.
pub(crate) trait Dialect: Database {
    /// How a session that reads one snapshot begins; `None`: sqlx's plain `BEGIN`.
    const BEGIN_READ: Option<&'static str>;
    /// How a session that writes begins; `None`: sqlx's plain `BEGIN`.
    const BEGIN_WRITE: Option<&'static str>;
    /// Ends a `SELECT` whose rows must stay as read until the transaction ends: another
    /// writer of them waits.
    const LOCK_SHARED: &'static str;
    /// Ends the `SELECT` of rows about to be deleted, so that concurrent deleters each take
    /// rows no other holds instead of waiting for them.
    const LOCK_SKIP_LOCKED: &'static str;

    /// Every statement in this dialect, rendered once ([`Sql::render`]).
    fn sql() -> &'static Sql;

    /// How many rows a statement changed (each driver has it, but no sqlx trait does).
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// A condition: `column` is one of the values of parameter `param`, bound as a [`List`].
    fn in_list(column: &str, param: &str) -> String;
    /// Parameter `param`, JSON text, as the type a JSON document is stored as.
    fn json_document(param: &str) -> String;
    /// The stored JSON document `column`, as text.
    fn json_text(column: &str) -> String;
    /// The lease clock of a statement whose own parameters end before `first`: the values
    /// [`add_lease_clock`](Dialect::add_lease_clock) adds are parameters `first`, `first + 1`…
    fn lease_clock(first: usize) -> LeaseClock;
    /// Adds the parameters [`lease_clock`](Dialect::lease_clock) reads: `now` is the machine's
    /// clock, `ttl` (when the statement sets an expiry) the lease's length.
    fn add_lease_clock(
        arguments: &mut Self::Arguments<'_>,
        now: DateTime<Utc>,
        ttl: Option<Duration>,
    ) -> Result<(), BoxDynError>;
}

/// The lease statements' clock, as statement text.
pub(crate) struct LeaseClock {
    /// The time now.
    pub now: String,
    /// The time a lease taken or renewed now expires.
    pub expiry: String,
}

/// A list of values bound as one parameter, whatever its length, so that a statement reading
/// "any of these" is one text (and one prepared statement) for every length. Each dialect
/// encodes it its own way and reads it with [`Dialect::in_list`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct List<'a, T>(pub &'a [T]);
