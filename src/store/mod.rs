//! Durable state behind one trait.
//!
//! Why it exists: every role of usersync owns some state that must survive a restart and, with
//! several processor replicas, be shared — the subscriber's replay checkpoints and its own
//! last-known Salesforce users (what it merges partial updates into), the processor's
//! last-known Salesforce users, mappings, Outreach user index, applied-event log and decision
//! log, the admin's settings and the log of what admins asked of the running process. Each
//! role's state is its own: the subscriber's users are kept apart from the processor's because
//! each carries the position of a different role. The store
//! keeps exactly that and nothing else: it is never a queue (events travel only through Kafka),
//! and it holds no rules of its own beyond one: a mapping is 1:1, and the schema itself
//! enforces it (`mappings.outreach_user_id` is the primary key, `mappings.salesforce_user_id`
//! is unique), so no code path, present or future, can record an Outreach user mapped twice or
//! a Salesforce user claimed by two Outreach users.
//!
//! Two implementations share one trait, [`Store`]: [`SqliteStore`] (a file, the embedded
//! default) and [`PostgresStore`] (several processor replicas). Everything but their
//! connections is written once, in layers:
//!
//! - [`procedures`]: what a multi-statement operation means (which slice of state a decision
//!   needs, what recording an event writes, in which order), over
//! - [`statements`]: the small statement vocabulary both databases speak, whose
//! - [`sql`]: text is written once, with `$n` placeholders in both, and which
//! - [`session`]: runs and binds once, generically over the database;
//! - [`dialect`]: the few pieces the two databases spell differently (a list parameter, a
//!   JSON document, row locks, the lease clock, how a transaction begins), which each backend
//!   supplies beside its connection, pool and migration code;
//! - [`rows`]: stored rows turned into domain values.
//!
//! [`open`] picks a backend by URL.

mod dialect;
pub mod postgres;
mod procedures;
mod rows;
mod session;
mod sql;
pub mod sqlite;
mod statements;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::decision::{Action, DecisionRecord};
use crate::engine::settings::SyncSettings;
use crate::engine::state::{Mapping, StateScope, StateVersions, SyncState};
use crate::model::event::Position;
use crate::model::outreach_user::{OutreachUser, OutreachUserId};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The most decision records one page of the log returns.
pub const MAX_DECISION_PAGE: u32 = 500;

/// The most admin actions one read of their log returns.
pub const MAX_ADMIN_ACTIONS: u32 = 500;

/// Durable state of the roles. All methods are safe to call from several tasks (and, with
/// PostgreSQL, several processes) at once.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The slice of state one decision needs, as a SyncState: every SF user listed by id; every
    /// SF user whose normalized email equals an email in scope OR the email of any SF user loaded
    /// by id (so an email change also brings the group the user left); every Outreach user listed
    /// by id or whose normalized email is in that set of emails; every mapping touching a loaded
    /// SF or Outreach user, plus the user at the other end of each such mapping (so rule "O is
    /// mapped to M" sees M even if M's email differs); and, in applied_events, those of
    /// scope.event_ids already applied. One read transaction.
    async fn load_state(&self, scope: &StateScope) -> Result<SyncState, StoreError>;

    /// Records the result of applying one event, atomically (one transaction): upsert the SF
    /// user's last-known state, upsert Outreach users in the index, apply the mapping changes in
    /// order, insert the applied event id, append the decision records. If the event id is
    /// already applied, it changes nothing and returns Ok.
    ///
    /// The versions in `applied.read_versions` (those [`load_state`](Store::load_state) put in
    /// the state the decisions were made on) must still be the stored ones: if a part of the
    /// state moved since, nothing is written and the answer is [`StoreError::StaleState`]. Every
    /// part the record reads or writes gets a new version.
    async fn record(&self, applied: &AppliedEvent) -> Result<(), StoreError>;

    /// The last-known state of one Salesforce user.
    async fn salesforce_user(
        &self,
        id: &SalesforceId,
    ) -> Result<Option<SalesforceUser>, StoreError>;

    /// Bulk upsert of last-known Salesforce users (initial load, resync), in one transaction.
    async fn put_salesforce_users(&self, users: &[SalesforceUser]) -> Result<(), StoreError>;

    async fn outreach_user(&self, id: OutreachUserId) -> Result<Option<OutreachUser>, StoreError>;

    /// The Outreach users whose normalized email is this one, by id: normally zero or one, more
    /// when Outreach broke its own uniqueness rule.
    async fn outreach_users_by_email(
        &self,
        email_normalized: &str,
    ) -> Result<Vec<OutreachUser>, StoreError>;

    /// Bulk upsert of the Outreach user index (index load), in one transaction.
    async fn put_outreach_users(&self, users: &[OutreachUser]) -> Result<(), StoreError>;

    /// What the Outreach calls of a decision that could not be recorded
    /// ([`StoreError::StaleState`]) did, in one transaction: the Outreach users as Outreach
    /// returned them, so that deciding again sees what those calls did (a stored user whose
    /// `updated_at` is newer than the reply is kept: another writer already stored a later
    /// state of it), and `decisions`, the decisions that made those calls, appended to the
    /// decision log. Neither depends on how the event is finally decided, or whether it is.
    async fn keep_superseded_calls(
        &self,
        users: &[OutreachUser],
        decisions: &[DecisionRecord],
    ) -> Result<(), StoreError>;

    /// The mappings matching every set field of the filter, sorted by Outreach id.
    async fn mappings(&self, filter: &MappingFilter) -> Result<Vec<Mapping>, StoreError>;

    /// Adds a mapping (or updates `locked_by_usersync` of the same pair).
    /// [`StoreError::MappingConflict`] if either side is mapped elsewhere;
    /// [`StoreError::UnknownMappedUser`] if either user is not in the store.
    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError>;

    /// Removes the mapping of an Outreach user, returning it.
    async fn remove_mapping(
        &self,
        outreach_user_id: OutreachUserId,
    ) -> Result<Option<Mapping>, StoreError>;

    async fn is_applied(&self, event_id: &str) -> Result<bool, StoreError>;

    /// One page of the decision log, newest first.
    async fn decisions(&self, query: &DecisionQuery) -> Result<DecisionPage, StoreError>;

    async fn settings(&self) -> Result<Option<SyncSettings>, StoreError>;
    /// Saves the settings with no trail: for tools and tests. The admin API saves with
    /// [`save_settings_recorded`](Store::save_settings_recorded).
    async fn save_settings(&self, settings: &SyncSettings) -> Result<(), StoreError>;
    /// Saves the settings and appends `action` (an admin's [`AdminActionKind::Settings`],
    /// with its actor) to the admin-action log, in one transaction: a save is never without
    /// its record, nor a record without its save. Returns the action's sequence number.
    async fn save_settings_recorded(
        &self,
        settings: &SyncSettings,
        action: &AdminAction,
    ) -> Result<i64, StoreError>;

    /// The sealed authorization a reconnect stored for `side` (`salesforce`, `outreach`), with
    /// its generation; the store never sees it in the clear (`connection::vault`).
    async fn authorization(&self, side: &str) -> Result<Option<SealedAuthorization>, StoreError>;
    /// Stores the side's sealed authorization, sealed at `generation`, and the fingerprint of
    /// its key — only if the stored one is at `generation - 1` (or none is stored). `false`,
    /// with nothing written, when another writer stored a newer one first.
    async fn save_authorization(
        &self,
        side: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        generation: i64,
    ) -> Result<bool, StoreError>;

    /// Appends what an admin asked of the running process (a replay, a resync, a reconnect, a
    /// disconnect), with who asked, to the admin-action log; returns its sequence number. The
    /// log is only ever appended to.
    async fn append_admin_action(&self, action: &AdminAction) -> Result<i64, StoreError>;

    /// The newest `limit` admin actions (at most [`MAX_ADMIN_ACTIONS`]), newest first, each
    /// with its sequence number.
    async fn admin_actions(&self, limit: u32) -> Result<Vec<(i64, AdminAction)>, StoreError>;

    /// Deletes the decisions recorded and the applied events applied before `before`, in
    /// batches of at most `batch` rows, each batch its own short statement, until none is
    /// left; returns how many of each went. Pruning is the retention of docs/store.md
    /// ("Retention"); several processes may prune at once without waiting on each other.
    async fn prune_before(&self, before: DateTime<Utc>, batch: u32) -> Result<Pruned, StoreError>;

    async fn checkpoint(&self, topic: &str) -> Result<Option<ReplayCheckpoint>, StoreError>;
    /// Inserts or overwrites the checkpoint of `checkpoint.topic`.
    async fn save_checkpoint(&self, checkpoint: &ReplayCheckpoint) -> Result<(), StoreError>;
    /// The same, by the holder of a lease: written only while `claim` still holds it, in the
    /// same transaction, else [`StoreError::LeaseLost`] and nothing written.
    async fn save_checkpoint_as(
        &self,
        checkpoint: &ReplayCheckpoint,
        claim: &LeaseClaim,
    ) -> Result<(), StoreError>;

    /// Takes lease `name` for `holder`, for `ttl` from now by the store's clock, when nobody
    /// holds it, its holder let it expire, or `holder` holds it already — at a new epoch each
    /// time. Otherwise answers who holds it, until when.
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseAnswer, StoreError>;
    /// Extends the lease `claim` holds by `ttl` from now; `None` when another holder took it
    /// (its epoch moved on).
    async fn renew_lease(
        &self,
        claim: &LeaseClaim,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError>;
    /// Ends the lease `claim` holds now, so that another instance may take it at once.
    async fn release_lease(&self, claim: &LeaseClaim) -> Result<(), StoreError>;
    /// Lease `name` as it stands, if it was ever taken.
    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;

    /// The subscriber's last-known state of those of `ids` it holds for `org_id`, by id, read
    /// in one query; an id it does not hold is simply absent. These are the subscriber's own
    /// rows, never the processor's [`salesforce_user`](Store::salesforce_user)s, so `applied`
    /// is always `None`.
    async fn last_known_users(
        &self,
        org_id: &SalesforceId,
        ids: &[SalesforceId],
    ) -> Result<Vec<SalesforceUser>, StoreError>;

    /// The newest commit of `org_id` the subscriber has published a user state at (commit
    /// number and time): every change up to it had happened before now, so a REST read made
    /// from now on may be placed there.
    async fn newest_commit(
        &self,
        org_id: &SalesforceId,
    ) -> Result<Option<(i64, DateTime<Utc>)>, StoreError>;

    /// Upserts the subscriber's last-known state of users of `org_id`, each with the position
    /// of the change that produced it, in one transaction. A user whose stored state has a
    /// newer position keeps it ([`Position::compare`] on commit numbers and timestamps; sequence
    /// numbers and read times are not kept, so an equal position writes). A `None` position,
    /// or a stored row without one, always writes. The users' `applied` is not stored: the
    /// position beside each user is.
    async fn put_last_known_users(
        &self,
        org_id: &SalesforceId,
        users: &[(SalesforceUser, Option<Position>)],
    ) -> Result<(), StoreError>;
}

/// Everything applying one event changed, recorded in one transaction by [`Store::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    pub event_id: String,
    /// The versions of the state the decisions were made on ([`SyncState::versions`]); empty
    /// when nothing was read, and then nothing is checked.
    pub read_versions: StateVersions,
    /// The Salesforce user's new last-known state (none for Outreach events).
    pub salesforce_user: Option<SalesforceUser>,
    /// Outreach users created or changed while applying (their state after the calls).
    pub outreach_users: Vec<OutreachUser>,
    /// Applied in order.
    pub mapping_changes: Vec<MappingWrite>,
    pub decisions: Vec<DecisionRecord>,
}

/// A side's authorization as the store holds it: sealed, and bound to `generation`, which
/// rises by one at every seal (0: sealed before generations existed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedAuthorization {
    pub sealed: Vec<u8>,
    pub generation: i64,
}

/// One change to the mapping table. A remap is `Remove` then `Put`, in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingWrite {
    Put(Mapping),
    Remove(OutreachUserId),
}

/// Which mappings [`Store::mappings`] returns: those matching every field that is set; all
/// `None` means all mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingFilter {
    /// Mappings whose Salesforce user or Outreach user has this normalized email.
    pub email: Option<String>,
    pub salesforce_user_id: Option<SalesforceId>,
    pub outreach_user_id: Option<OutreachUserId>,
}

/// One page request of the decision log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionQuery {
    /// Cursor: return records older than this sequence (the previous page's `next_after`).
    pub after: Option<i64>,
    pub action: Option<Action>,
    /// The normalized email the decisions are about.
    pub email: Option<String>,
    /// Page size, clamped to `1..=MAX_DECISION_PAGE`.
    pub limit: u32,
}

impl Default for DecisionQuery {
    fn default() -> Self {
        Self {
            after: None,
            action: None,
            email: None,
            limit: 50,
        }
    }
}

/// One page of the decision log, newest first, each record with its sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionPage {
    pub records: Vec<(i64, DecisionRecord)>,
    /// The cursor of the next (older) page; `None` when this page is the last.
    pub next_after: Option<i64>,
}

/// How many rows one [`Store::prune_before`] deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub decisions: u64,
    pub applied_events: u64,
}

/// Something an admin asked of the running process, kept in the admin-action log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminAction {
    pub at: DateTime<Utc>,
    pub action: AdminActionKind,
    /// What the action was about, as JSON: for a replay, where from and the checkpoint before
    /// it; for a resync, the checkpoint before it; for a settings save, the settings before
    /// and after; for a reconnect or disconnect, the side (and whether a reconnect brought a
    /// new authorization).
    pub detail: serde_json::Value,
    /// Who asked: the name of the admin token the call carried (`local` on a server without
    /// tokens). `None` only for actions recorded before the actor was kept.
    pub actor: Option<String>,
}

/// What kind of admin action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminActionKind {
    /// The subscriber's replay position was moved (`POST /api/v1/replay`).
    Replay,
    /// Every Salesforce user was read again (`POST /api/v1/resync`).
    Resync,
    /// The sync settings were saved (`PUT /api/v1/settings`).
    Settings,
    /// A side was asked to sign in again, maybe with a new authorization
    /// (`POST /api/v1/connections/{side}/reconnect`, or a browser authorization's callback).
    Reconnect,
    /// A side was stopped by hand (`POST /api/v1/connections/{side}/disconnect`).
    Disconnect,
}

impl AdminActionKind {
    pub const ALL: [AdminActionKind; 5] = [
        AdminActionKind::Replay,
        AdminActionKind::Resync,
        AdminActionKind::Settings,
        AdminActionKind::Reconnect,
        AdminActionKind::Disconnect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminActionKind::Replay => "replay",
            AdminActionKind::Resync => "resync",
            AdminActionKind::Settings => "settings",
            AdminActionKind::Reconnect => "reconnect",
            AdminActionKind::Disconnect => "disconnect",
        }
    }

    pub fn parse(code: &str) -> Option<AdminActionKind> {
        AdminActionKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == code)
    }
}

impl fmt::Display for AdminActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a subscriber resumes one Salesforce topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCheckpoint {
    pub topic: String,
    /// Opaque Pub/Sub API replay id bytes.
    pub replay_id: Vec<u8>,
    pub commit_timestamp: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// Rises by one at every taking of the lease.
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The store's clock when this was read, so a waiter knows how long until `expires_at`.
    pub read_at: DateTime<Utc>,
}

impl Lease {
    /// What the holder shows to write as the holder.
    pub fn claim(&self) -> LeaseClaim {
        LeaseClaim {
            name: self.name.clone(),
            holder: self.holder.clone(),
            epoch: self.epoch,
        }
    }

    /// How long until it expires, by the store's clock; zero when it has.
    pub fn remaining(&self) -> std::time::Duration {
        (self.expires_at - self.read_at)
            .to_std()
            .unwrap_or(std::time::Duration::ZERO)
    }
}

/// Which lease a holder holds: its name, the holder and the epoch it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
}

/// The answer to [`Store::take_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The lease is the caller's, at this epoch.
    Granted(Lease),
    /// Another holder's lease is still valid.
    HeldBy(Lease),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The mapping would break 1:1: one of its sides is mapped elsewhere.
    #[error("cannot map Outreach user {} to Salesforce user {}: {}",
        .wanted.outreach_user_id, .wanted.salesforce_user_id, ConflictHolder(.existing))]
    MappingConflict {
        wanted: Mapping,
        /// The mapping holding a side, when it could be read.
        existing: Option<Mapping>,
    },
    /// A part of the state the event was decided on changed before the decisions could be
    /// recorded (another replica recorded first): nothing was written. Load the state again
    /// and decide again.
    #[error(
        "cannot record event {event_id}: {part} changed after the event's state was read \
         (read at version {read}); decide it again on the new state"
    )]
    StaleState {
        event_id: String,
        /// The part that moved (`email:<group>` or `salesforce:<id>`).
        part: String,
        read: i64,
    },
    /// A mapping names an Outreach or Salesforce user the store does not hold.
    #[error(
        "cannot map Outreach user {outreach_user_id} to Salesforce user {salesforce_user_id}: \
         one of them is not in the store"
    )]
    UnknownMappedUser {
        outreach_user_id: OutreachUserId,
        salesforce_user_id: SalesforceId,
    },
    /// The database refused or failed; `operation` says what the store was doing.
    #[error("store could not {operation}: {source}")]
    Database {
        operation: String,
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("store could not migrate the {backend} schema: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The lock that serializes the migrations of processes opening one SQLite file could not
    /// be taken.
    #[error("store could not lock {path} to migrate the SQLite schema: {problem}")]
    MigrationLock { path: String, problem: String },
    /// A stored value does not parse: someone wrote it around the store, or a bug did.
    #[error("corrupt value in {table}.{column}: {value:?}: {problem}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        value: String,
        problem: String,
    },
    /// A write made as the holder of a lease that another instance has taken since.
    #[error(
        "lease {name:?} is no longer held by {holder} at epoch {epoch}: another instance took \
         it; nothing was written"
    )]
    LeaseLost {
        name: String,
        holder: String,
        epoch: i64,
    },
    /// The store URL or a connection option is not usable.
    #[error("store URL {url:?}: {problem}")]
    Url { url: String, problem: String },
}

/// Formats who holds a side of a refused mapping.
struct ConflictHolder<'a>(&'a Option<Mapping>);

impl fmt::Display for ConflictHolder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(m) => write!(
                f,
                "Outreach user {} is mapped to Salesforce user {}",
                m.outreach_user_id, m.salesforce_user_id
            ),
            None => f.write_str("one side was mapped by a concurrent writer"),
        }
    }
}

impl StoreError {
    pub(crate) fn url(url: &str, problem: impl fmt::Display) -> Self {
        StoreError::Url {
            url: redact_password(url),
            problem: problem.to_string(),
        }
    }
}

/// A URL with its password (if any) replaced, fit for an error message or a log line.
pub fn redact_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    // sqlx also takes the password as a query parameter.
    if parsed.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Adds the operation to a database error.
pub(crate) trait Context<T> {
    fn context(self, operation: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn context(self, operation: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database {
            operation: operation(),
            source,
        })
    }
}

/// Opens the store a URL names and brings its schema up to date: `sqlite://path` (the file is
/// created if missing), `sqlite::memory:`, or `postgres://…` / `postgresql://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, None).await?))
    } else {
        Err(StoreError::url(
            url,
            "expected sqlite://PATH, sqlite::memory: or postgres://…",
        ))
    }
}
