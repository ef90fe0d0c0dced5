//! The text of every statement the store runs, written once for both databases.
//!
//! [`Sql::render`] writes each statement of the [`Statements`](super::statements::Statements)
//! vocabulary (a field per statement, named as its method) in one [`Dialect`], filling in only
//! the pieces that dialect supplies: list parameters, JSON documents, row locks and the lease
//! clock. Placeholders are `$n` in both ([`dialect`](super::dialect) says why).
//!
//! Why rendered text rather than sqlx's `QueryBuilder` or its `Any` driver: a statement here is
//! fixed text with fixed parameters, so it is rendered once per dialect, when the backend
//! first runs one (each backend keeps its [`Sql`] in a `LazyLock`), never per call; sqlx then
//! prepares and caches each text per connection as it would a literal. `QueryBuilder` builds a
//! new string at every call and has no answer to the list parameter, whose text *and* value
//! differ. The `Any` driver would pick the database at run time but binds only plain numbers,
//! strings and bytes: timestamps, PostgreSQL arrays and the typed rows would all be converted
//! by hand, and the SQL would still differ in the same places.

use super::dialect::Dialect;
use super::statements::PrunedLog;

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

const LEASE_COLUMNS: &str = "name, holder, epoch, acquired_at, renewed_at, expires_at";

/// Every statement in one dialect. Each field is the text of the
/// [`Statements`](super::statements::Statements) method of the same name, which documents it
/// and binds its parameters in order.
pub(crate) struct Sql {
    // ----- reads -----
    pub salesforce_users_by_id: String,
    pub salesforce_users_by_email: String,
    pub outreach_users_by_id: String,
    pub outreach_users_by_email: String,
    pub mappings_touching: String,
    pub mappings_matching: String,
    pub applied_among: String,
    pub decisions_before: String,
    pub settings_document: String,
    pub authorization: String,
    pub admin_actions_newest: String,
    pub checkpoint: String,
    pub versions_of: String,
    pub subscriber_users_by_id: String,
    pub newest_subscriber_commit: String,
    pub lease: String,
    pub holds_lease: String,
    // ----- writes -----
    pub take_lease: String,
    pub renew_lease: String,
    pub release_lease: String,
    pub upsert_salesforce_user: String,
    pub upsert_outreach_user: String,
    pub advance_version: String,
    pub upsert_mapping: String,
    pub delete_mapping: String,
    pub insert_applied_event: String,
    pub append_decision: String,
    pub save_settings_document: String,
    pub save_checkpoint: String,
    pub append_admin_action: String,
    delete_older_decisions: String,
    delete_older_applied_events: String,
    pub save_authorization: String,
    pub upsert_subscriber_user: String,
}

impl Sql {
    /// The `delete_older` statement of one log.
    pub(crate) fn delete_older(&self, log: PrunedLog) -> &str {
        match log {
            PrunedLog::Decisions => &self.delete_older_decisions,
            PrunedLog::AppliedEvents => &self.delete_older_applied_events,
        }
    }

    /// Every statement in dialect `D`.
    pub(crate) fn render<D: Dialect>() -> Sql {
        let among = D::in_list;
        let delete_older = |log: PrunedLog| {
            let (table, key, time) = log.columns();
            format!(
                "DELETE FROM {table} WHERE {key} IN \
                 (SELECT {key} FROM {table} WHERE {time} < $1 LIMIT $2{})",
                D::LOCK_SKIP_LOCKED
            )
        };
        // The lease statements: their own parameters first, then the clock's.
        let read_lease = D::lease_clock(2);
        let take_lease = D::lease_clock(3);
        let held_lease = D::lease_clock(4);
        Sql {
            salesforce_users_by_id: format!(
                "SELECT {SALESFORCE_USER_COLUMNS} FROM salesforce_users WHERE {} ORDER BY id",
                among("id", "$1")
            ),
            salesforce_users_by_email: format!(
                "SELECT {SALESFORCE_USER_COLUMNS} FROM salesforce_users WHERE {} ORDER BY id",
                among("email_normalized", "$1")
            ),
            outreach_users_by_id: format!(
                "SELECT {OUTREACH_USER_COLUMNS} FROM outreach_users WHERE {} ORDER BY id",
                among("id", "$1")
            ),
            outreach_users_by_email: format!(
                "SELECT {OUTREACH_USER_COLUMNS} FROM outreach_users WHERE {} ORDER BY id",
                among("email_normalized", "$1")
            ),
            mappings_touching: format!(
                "SELECT outreach_user_id, salesforce_user_id, locked_by_usersync FROM mappings \
                 WHERE {} OR {} ORDER BY outreach_user_id",
                among("outreach_user_id", "$1"),
                among("salesforce_user_id", "$2")
            ),
            mappings_matching: "SELECT m.outreach_user_id, m.salesforce_user_id, \
                     m.locked_by_usersync \
                 FROM mappings m \
                 WHERE ($1 IS NULL \
                        OR EXISTS (SELECT 1 FROM salesforce_users s \
                                   WHERE s.id = m.salesforce_user_id \
                                     AND s.email_normalized = $1) \
                        OR EXISTS (SELECT 1 FROM outreach_users o \
                                   WHERE o.id = m.outreach_user_id \
                                     AND o.email_normalized = $1)) \
                   AND ($2 IS NULL OR m.salesforce_user_id = $2) \
                   AND ($3 IS NULL OR m.outreach_user_id = $3) \
                 ORDER BY m.outreach_user_id"
                .into(),
            applied_among: format!(
                "SELECT event_id FROM applied_events WHERE {} ORDER BY event_id",
                among("event_id", "$1")
            ),
            decisions_before: format!(
                "SELECT {DECISION_COLUMNS} FROM decisions \
                 WHERE ($1 IS NULL OR sequence < $1) \
                   AND ($2 IS NULL OR action = $2) \
                   AND ($3 IS NULL OR email = $3) \
                 ORDER BY sequence DESC LIMIT $4"
            ),
            settings_document: format!(
                "SELECT {} FROM settings WHERE id = 1",
                D::json_text("document")
            ),
            authorization: "SELECT sealed, generation FROM authorizations WHERE side = $1".into(),
            admin_actions_newest: format!(
                "SELECT sequence, at, action, {} AS detail, actor FROM admin_actions \
                 ORDER BY sequence DESC LIMIT $1",
                D::json_text("detail")
            ),
            checkpoint: "SELECT topic, replay_id, commit_timestamp, updated_at \
                 FROM replay_checkpoints WHERE topic = $1"
                .into(),
            versions_of: format!(
                "SELECT part, version FROM state_versions WHERE {} ORDER BY part",
                among("part", "$1")
            ),
            subscriber_users_by_id: format!(
                "SELECT {SUBSCRIBER_USER_COLUMNS} FROM subscriber_users \
                 WHERE org_id = $1 AND {} ORDER BY user_id",
                among("user_id", "$2")
            ),
            newest_subscriber_commit: "SELECT commit_number, commit_timestamp \
                 FROM subscriber_users \
                 WHERE org_id = $1 AND commit_number IS NOT NULL \
                 ORDER BY commit_number DESC LIMIT 1"
                .into(),
            lease: format!(
                "SELECT {LEASE_COLUMNS}, {} AS read_at FROM subscriber_leases WHERE name = $1",
                read_lease.now
            ),
            holds_lease: format!(
                "SELECT epoch FROM subscriber_leases \
                 WHERE name = $1 AND holder = $2 AND epoch = $3{}",
                D::LOCK_SHARED
            ),
            take_lease: format!(
                "INSERT INTO subscriber_leases ({LEASE_COLUMNS}) \
                 VALUES ($1, $2, 1, {now}, {now}, {expiry}) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     epoch = subscriber_leases.epoch + 1, acquired_at = excluded.acquired_at, \
                     renewed_at = excluded.renewed_at, expires_at = excluded.expires_at \
                 WHERE subscriber_leases.expires_at <= {now} \
                    OR subscriber_leases.holder = excluded.holder \
                 RETURNING {LEASE_COLUMNS}, {now} AS read_at",
                now = take_lease.now,
                expiry = take_lease.expiry
            ),
            renew_lease: format!(
                "UPDATE subscriber_leases SET renewed_at = {now}, expires_at = {expiry} \
                 WHERE name = $1 AND holder = $2 AND epoch = $3 \
                 RETURNING {LEASE_COLUMNS}, {now} AS read_at",
                now = held_lease.now,
                expiry = held_lease.expiry
            ),
            release_lease: format!(
                "UPDATE subscriber_leases SET expires_at = {} \
                 WHERE name = $1 AND holder = $2 AND epoch = $3",
                held_lease.now
            ),
            upsert_salesforce_user: "INSERT INTO salesforce_users (id, email, email_normalized, \
                     username, first_name, last_name, title, is_active, created_date, \
                     last_modified_date, commit_number, commit_timestamp, sequence_number, \
                     snapshot_read_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
                     email_normalized = excluded.email_normalized, username = excluded.username, \
                     first_name = excluded.first_name, last_name = excluded.last_name, \
                     title = excluded.title, is_active = excluded.is_active, \
                     created_date = excluded.created_date, \
                     last_modified_date = excluded.last_modified_date, \
                     commit_number = excluded.commit_number, \
                     commit_timestamp = excluded.commit_timestamp, \
                     sequence_number = excluded.sequence_number, \
                     snapshot_read_at = excluded.snapshot_read_at"
                .into(),
            // On SQLite timestamps compare as text, which is time order there (see
            // upsert_subscriber_user).
            upsert_outreach_user: "INSERT INTO outreach_users (id, email, email_normalized, \
                     username, first_name, last_name, title, locked, custom1, custom2, custom3, \
                     custom4, custom5, updated_at) \
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
                    OR excluded.updated_at >= outreach_users.updated_at"
                .into(),
            // On PostgreSQL (READ COMMITTED) a writer that finds the row locked waits for the
            // other transaction, then evaluates the WHERE on the row that one left: it sees the
            // move and writes nothing. sqlx declares the type of `$2` (bigint), so `$2 IS NULL`
            // needs no cast.
            advance_version: "INSERT INTO state_versions (part, version) VALUES ($1, 1) \
                 ON CONFLICT (part) DO UPDATE SET version = state_versions.version + 1 \
                 WHERE $2 IS NULL OR state_versions.version = $2"
                .into(),
            upsert_mapping: "INSERT INTO mappings (outreach_user_id, salesforce_user_id, \
                     locked_by_usersync) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (outreach_user_id) DO UPDATE \
                     SET locked_by_usersync = excluded.locked_by_usersync \
                     WHERE mappings.salesforce_user_id = excluded.salesforce_user_id"
                .into(),
            delete_mapping: "DELETE FROM mappings WHERE outreach_user_id = $1 \
                 RETURNING outreach_user_id, salesforce_user_id, locked_by_usersync"
                .into(),
            insert_applied_event: "INSERT INTO applied_events (event_id, applied_at) \
                 VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING"
                .into(),
            append_decision: "INSERT INTO decisions (event_id, at, action, reason, email, \
                     outreach_user_id, salesforce_user_id, previous_salesforce_user_id, message, \
                     outreach_calls, actor) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                .into(),
            save_settings_document: format!(
                "INSERT INTO settings (id, document, updated_at) VALUES (1, {}, $2) \
                 ON CONFLICT (id) DO UPDATE \
                     SET document = excluded.document, updated_at = excluded.updated_at",
                D::json_document("$1")
            ),
            save_checkpoint: "INSERT INTO replay_checkpoints (topic, replay_id, \
                     commit_timestamp, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (topic) DO UPDATE SET replay_id = excluded.replay_id, \
                     commit_timestamp = excluded.commit_timestamp, \
                     updated_at = excluded.updated_at"
                .into(),
            append_admin_action: format!(
                "INSERT INTO admin_actions (at, action, detail, actor) \
                 VALUES ($1, $2, {}, $4) RETURNING sequence",
                D::json_document("$3")
            ),
            delete_older_decisions: delete_older(PrunedLog::Decisions),
            delete_older_applied_events: delete_older(PrunedLog::AppliedEvents),
            save_authorization: "INSERT INTO authorizations (side, sealed, key_fingerprint, \
                     generation, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (side) DO UPDATE SET sealed = excluded.sealed, \
                     key_fingerprint = excluded.key_fingerprint, \
                     generation = excluded.generation, updated_at = excluded.updated_at \
                 WHERE authorizations.generation = excluded.generation - 1"
                .into(),
            // On SQLite timestamps compare as text: sqlx writes them in UTC with 0, 3, 6 or 9
            // fraction digits and a `+00:00` suffix, and '+' sorts below '.' and every digit,
            // so text order is time order down to the nanosecond.
            upsert_subscriber_user: "INSERT INTO subscriber_users (org_id, user_id, email, \
                     username, first_name, last_name, title, is_active, created_date, \
                     last_modified_date, commit_number, commit_timestamp, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (org_id, user_id) DO UPDATE SET email = excluded.email, \
                     username = excluded.username, first_name = excluded.first_name, \
                     last_name = excluded.last_name, title = excluded.title, \
                     is_active = excluded.is_active, created_date = excluded.created_date, \
                     last_modified_date = excluded.last_modified_date, \
                     commit_number = excluded.commit_number, \
                     commit_timestamp = excluded.commit_timestamp, \
                     updated_at = excluded.updated_at \
                 WHERE excluded.commit_timestamp IS NULL \
                    OR subscriber_users.commit_timestamp IS NULL \
                    OR CASE WHEN excluded.commit_number IS NOT NULL \
                                 AND subscriber_users.commit_number IS NOT NULL \
                            THEN excluded.commit_number >= subscriber_users.commit_number \
                            WHEN subscriber_users.commit_number IS NOT NULL THEN FALSE \
                            WHEN excluded.commit_number IS NOT NULL THEN TRUE \
                            ELSE excluded.commit_timestamp >= subscriber_users.commit_timestamp \
                       END"
            .into(),
        }
    }
}
