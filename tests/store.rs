//! One suite of store behaviours, run against both backends.
//!
//! Every check is written once, against `&Harness` (a `dyn Store` plus raw SQL access to the
//! same database), and `store_suite!` instantiates it twice: `sqlite::<check>` on a file in a
//! temporary directory and `postgres::<check>` in a fresh schema of the database named by
//! `USERSYNC_TEST_DATABASE_URL` (see `scripts/postgres.sh`). Without that variable the
//! PostgreSQL half is skipped with a notice — unless `CI` is set, where it fails: CI must prove
//! both backends.
//!
//! After the suite, openers race on fresh stores of both backends (tasks, and for SQLite
//! processes of the binary too): roles started together must all get past the migrations.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

use support::postgres::{DATABASE_URL_VAR, FreshDatabase, database_url};
use support::process::Process;
use usersync::engine::decision::{Action, DecisionRecord, Reason};
use usersync::engine::settings::{Dedupe, SyncSettings};
use usersync::engine::state::{Mapping, StateScope, StateVersions, SyncState};
use usersync::model::event::Position;
use usersync::model::outreach_user::{OutreachUser, OutreachUserId};
use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;
use usersync::store::{
    AdminAction, AdminActionKind, AppliedEvent, DecisionQuery, Lease, LeaseAnswer, MappingFilter,
    MappingWrite, PostgresStore, Pruned, ReplayCheckpoint, SealedAuthorization, SqliteStore, Store,
    StoreError,
};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

enum Database {
    Sqlite {
        url: String,
        pool: SqlitePool,
        _dir: TempDir,
    },
    Postgres {
        url: String,
        schema: String,
        pool: PgPool,
    },
}

/// A store under test, and a way around it for the checks that must prove the schema itself.
struct Harness {
    store: Arc<dyn Store>,
    database: Database,
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("usersync.db").display());
        let store = SqliteStore::open(&url).await.expect("open SQLite store");
        let pool = store.pool().clone();
        Harness {
            store: Arc::new(store),
            database: Database::Sqlite {
                url,
                pool,
                _dir: dir,
            },
        }
    }

    /// `None` (after a notice) when no PostgreSQL is configured outside CI.
    async fn postgres() -> Option<Self> {
        let url = database_url()?;
        let schema = format!("store_test_{:016x}", rand::random::<u64>());
        let store = PostgresStore::connect(&url, Some(&schema))
            .await
            .unwrap_or_else(|e| panic!("connect to the test PostgreSQL ({DATABASE_URL_VAR}): {e}"));
        let pool = store.pool().clone();
        Some(Harness {
            store: Arc::new(store),
            database: Database::Postgres { url, schema, pool },
        })
    }

    /// A second store on the same database: its migrations run again.
    async fn reopen(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match &self.database {
            Database::Sqlite { url, .. } => Arc::new(SqliteStore::open(url).await?),
            Database::Postgres { url, schema, .. } => {
                Arc::new(PostgresStore::connect(url, Some(schema)).await?)
            }
        })
    }

    /// Runs SQL around the store (plain SQL both dialects accept).
    async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.database {
            Database::Sqlite { pool, .. } => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Database::Postgres { pool, .. } => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match &self.database {
            Database::Sqlite { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
            Database::Postgres { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Drops the test's PostgreSQL schema (a failed test leaves it for inspection).
    async fn finish(self) {
        if let Database::Postgres { schema, pool, .. } = &self.database {
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(pool)
                .await
                .expect("drop the test schema");
            pool.close().await;
        }
    }
}

/// Instantiates every check once per backend: `sqlite::<check>` and `postgres::<check>`.
macro_rules! store_suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let harness = super::Harness::sqlite().await;
                    super::$check(&harness).await;
                    harness.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let Some(harness) = super::Harness::postgres().await else { return };
                    super::$check(&harness).await;
                    harness.finish().await;
                }
            )*
        }
    };
}

store_suite!(
    migrations_run_twice_harmlessly,
    salesforce_users_round_trip,
    outreach_users_round_trip,
    mappings_are_one_to_one,
    concurrent_writers_cannot_break_one_to_one,
    record_remaps_in_one_transaction,
    record_is_atomic,
    record_of_an_applied_event_changes_nothing,
    a_record_decided_on_a_stale_state_is_refused,
    every_write_to_a_group_refuses_records_read_before_it,
    concurrent_writers_on_one_group_exactly_one_wins,
    superseded_calls_are_kept_with_their_decisions_never_over_a_newer_state,
    load_state_returns_the_closure,
    decision_log_is_newest_first_with_paging_and_filters,
    settings_round_trip,
    checkpoints_round_trip,
    admin_actions_are_appended_and_listed_newest_first,
    decisions_keep_who_made_them_by_hand,
    a_settings_save_by_an_admin_is_recorded_with_it_or_not_at_all,
    pruning_deletes_only_what_is_older_in_batches,
    authorizations_round_trip_and_are_replaced,
    corrupt_stored_values_are_reported,
    last_known_users_round_trip,
    last_known_users_batch_read_returns_only_known_ids,
    last_known_users_never_go_back_to_an_older_position,
    last_known_users_are_separate_per_org,
    newest_commit_is_the_subscribers_newest_of_its_org,
    a_lease_has_one_holder_at_a_time_and_fences_the_old_one,
    a_lease_taken_by_many_at_once_goes_to_one,
);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

/// The Salesforce user id number `n` (18-character form).
fn sf_id(n: u32) -> SalesforceId {
    SalesforceId::parse(&format!("005{n:012}")).expect("test Salesforce id")
}

fn sf_user(n: u32, email: &str) -> SalesforceUser {
    SalesforceUser {
        id: sf_id(n),
        email: Some(email.to_string()),
        username: Some(format!("user{n}@example.org.sandbox")),
        first_name: Some(format!("First{n}")),
        last_name: Some(format!("Last{n}")),
        title: Some("Account Executive".into()),
        is_active: true,
        created_date: Some(at("2024-01-02T03:04:05Z")),
        last_modified_date: Some(at("2025-02-03T04:05:06.123456Z")),
        applied: Some(Position {
            commit_number: Some(1000 + i64::from(n)),
            commit_timestamp: at("2025-02-03T04:05:06.5Z"),
            sequence_number: Some(1),
            read_at: None,
        }),
    }
}

/// The Salesforce org id number `n` (18-character form).
fn org_id(n: u32) -> SalesforceId {
    SalesforceId::parse(&format!("00D{n:012}")).expect("test org id")
}

/// A position of a change: with a commit number, or without (a read made before any commit
/// was seen).
fn position(commit_number: Option<i64>, commit_timestamp: &str) -> Position {
    Position {
        commit_number,
        commit_timestamp: at(commit_timestamp),
        sequence_number: None,
        read_at: None,
    }
}

/// A user as the subscriber reads it back: its own state never carries `applied`.
fn without_applied(user: &SalesforceUser) -> SalesforceUser {
    SalesforceUser {
        applied: None,
        ..user.clone()
    }
}

/// The title of the subscriber's stored state of one user, which the tests vary to tell states
/// apart.
async fn last_known_title(h: &Harness, org: &SalesforceId, id: &SalesforceId) -> Option<String> {
    let users = h
        .store
        .last_known_users(org, std::slice::from_ref(id))
        .await
        .unwrap();
    assert_eq!(
        users.len(),
        1,
        "exactly one stored state of {id}: {users:?}"
    );
    users.into_iter().next().unwrap().title
}

fn outreach_user(id: i64, email: &str) -> OutreachUser {
    OutreachUser {
        id: OutreachUserId(id),
        email: email.to_string(),
        username: None,
        first_name: Some(format!("Ofirst{id}")),
        last_name: Some(format!("Olast{id}")),
        title: None,
        locked: false,
        custom: Default::default(),
        updated_at: Some(at("2025-01-01T00:00:00Z")),
    }
}

fn mapping(outreach: i64, salesforce: u32) -> Mapping {
    Mapping {
        outreach_user_id: OutreachUserId(outreach),
        salesforce_user_id: sf_id(salesforce),
        locked_by_usersync: false,
    }
}

fn decision(event_id: &str, action: Action, reason: Reason, email: &str) -> DecisionRecord {
    DecisionRecord {
        event_id: event_id.to_string(),
        at: at("2025-06-01T12:00:00.25Z"),
        action,
        reason,
        email: Some(email.to_string()),
        outreach_user_id: Some(OutreachUserId(1)),
        salesforce_user_id: Some(sf_id(2)),
        previous_salesforce_user_id: Some(sf_id(1)),
        message: format!("{action} because {reason}"),
        outreach_calls: 2,
        actor: None,
    }
}

fn event(event_id: &str) -> AppliedEvent {
    AppliedEvent {
        event_id: event_id.to_string(),
        read_versions: StateVersions::new(),
        salesforce_user: None,
        outreach_users: Vec::new(),
        mapping_changes: Vec::new(),
        decisions: Vec::new(),
    }
}

async fn all_mappings(store: &dyn Store) -> Vec<Mapping> {
    store.mappings(&MappingFilter::default()).await.unwrap()
}

async fn all_decisions(store: &dyn Store) -> Vec<DecisionRecord> {
    let query = DecisionQuery {
        limit: 500,
        ..Default::default()
    };
    let page = store.decisions(&query).await.unwrap();
    page.records.into_iter().map(|(_, r)| r).collect()
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

async fn migrations_run_twice_harmlessly(h: &Harness) {
    let user = sf_user(1, "ann@example.com");
    h.store
        .put_salesforce_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    let again = h.reopen().await.expect("second open runs migrations again");
    assert_eq!(again.salesforce_user(&user.id).await.unwrap(), Some(user));
    let third = h.reopen().await.expect("third open");
    assert!(!third.is_applied("nothing").await.unwrap());
    // Every migration the binary carries, each recorded once.
    assert_eq!(
        h.count("_sqlx_migrations").await,
        SQLITE_MIGRATIONS.iter().count() as i64
    );
    assert_eq!(
        SQLITE_MIGRATIONS.iter().count(),
        POSTGRES_MIGRATIONS.iter().count(),
        "both backends carry the same migrations"
    );
}

async fn salesforce_users_round_trip(h: &Harness) {
    let full = sf_user(1, "Ann.Lee@Example.com ");
    // A snapshot's position: the commit it was read after and its read time, no sequence
    // number.
    let mut snapshot = sf_user(2, "bob@example.com");
    snapshot.applied = Some(Position {
        commit_number: Some(77),
        commit_timestamp: at("2025-03-04T05:06:07.000001Z"),
        sequence_number: None,
        read_at: Some(at("2025-03-04T05:06:08.123457Z")),
    });
    // A read made before any commit was seen: its read time alone.
    let mut unplaced = sf_user(4, "cy@example.com");
    unplaced.applied = Some(Position {
        commit_number: None,
        commit_timestamp: at("2025-03-04T05:06:09.5Z"),
        sequence_number: None,
        read_at: Some(at("2025-03-04T05:06:09.5Z")),
    });
    // Everything optional absent.
    let bare = SalesforceUser {
        id: sf_id(3),
        email: None,
        username: None,
        first_name: None,
        last_name: None,
        title: None,
        is_active: false,
        created_date: None,
        last_modified_date: None,
        applied: None,
    };
    let users = [
        full.clone(),
        snapshot.clone(),
        unplaced.clone(),
        bare.clone(),
    ];
    h.store.put_salesforce_users(&users).await.unwrap();
    for user in &users {
        assert_eq!(
            h.store.salesforce_user(&user.id).await.unwrap().as_ref(),
            Some(user)
        );
    }
    assert_eq!(h.store.salesforce_user(&sf_id(99)).await.unwrap(), None);

    // Upsert replaces the last-known state, email group included.
    let mut moved = full.clone();
    moved.email = Some("ann@new.example.com".into());
    moved.is_active = false;
    moved.applied = None;
    h.store
        .put_salesforce_users(std::slice::from_ref(&moved))
        .await
        .unwrap();
    assert_eq!(
        h.store.salesforce_user(&full.id).await.unwrap(),
        Some(moved)
    );
    let old_group = StateScope {
        emails: vec!["ann.lee@example.com".into()],
        ..Default::default()
    };
    let state = h.store.load_state(&old_group).await.unwrap();
    assert_eq!(state.salesforce_users().count(), 0);
    assert_eq!(h.count("salesforce_users").await, 4);
}

async fn outreach_users_round_trip(h: &Harness) {
    let mut full = outreach_user(10, "Ann@Example.com");
    full.username = Some("ann".into());
    full.title = Some("AE".into());
    full.locked = true;
    full.custom = [
        Some("005000000000001AAA".into()),
        Some("two".into()),
        None,
        Some("four".into()),
        Some("five".into()),
    ];
    full.updated_at = Some(at("2025-04-05T06:07:08.654321Z"));
    let mut bare = outreach_user(11, "bare@example.com");
    bare.first_name = None;
    bare.last_name = None;
    bare.updated_at = None;
    // Outreach's uniqueness broken: a second user with the same email must be representable.
    let twin = outreach_user(12, "  ANN@example.COM");
    h.store
        .put_outreach_users(&[twin.clone(), full.clone(), bare.clone()])
        .await
        .unwrap();

    for user in [&full, &bare, &twin] {
        assert_eq!(
            h.store.outreach_user(user.id).await.unwrap().as_ref(),
            Some(user)
        );
    }
    assert_eq!(
        h.store.outreach_user(OutreachUserId(99)).await.unwrap(),
        None
    );
    assert_eq!(
        h.store
            .outreach_users_by_email("ann@example.com")
            .await
            .unwrap(),
        vec![full.clone(), twin.clone()]
    );

    let mut renamed = twin.clone();
    renamed.email = "twin@example.com".into();
    h.store
        .put_outreach_users(std::slice::from_ref(&renamed))
        .await
        .unwrap();
    assert_eq!(
        h.store
            .outreach_users_by_email("ann@example.com")
            .await
            .unwrap(),
        vec![full]
    );
    assert_eq!(
        h.store
            .outreach_users_by_email("twin@example.com")
            .await
            .unwrap(),
        vec![renamed]
    );
    assert!(
        h.store
            .outreach_users_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn mappings_are_one_to_one(h: &Harness) {
    h.store
        .put_salesforce_users(&[sf_user(1, "x@example.com"), sf_user(2, "y@example.com")])
        .await
        .unwrap();
    h.store
        .put_outreach_users(&[
            outreach_user(1, "x@example.com"),
            outreach_user(2, "o2@example.com"),
        ])
        .await
        .unwrap();

    h.store.put_mapping(&mapping(1, 1)).await.unwrap();
    // The same pair again is fine and may change the lock flag.
    let locked = Mapping {
        locked_by_usersync: true,
        ..mapping(1, 1)
    };
    h.store.put_mapping(&locked).await.unwrap();
    assert_eq!(all_mappings(&*h.store).await, vec![locked.clone()]);

    // A second mapping on either side is refused, naming both sides and the holder.
    for wanted in [mapping(2, 1), mapping(1, 2)] {
        match h.store.put_mapping(&wanted).await {
            Err(StoreError::MappingConflict {
                wanted: w,
                existing,
            }) => {
                assert_eq!(w, wanted);
                assert_eq!(existing, Some(locked.clone()));
            }
            other => panic!("expected a mapping conflict for {wanted:?}, got {other:?}"),
        }
    }
    let message = h
        .store
        .put_mapping(&mapping(2, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("Outreach user 2"), "{message}");
    assert!(message.contains(sf_id(1).as_str()), "{message}");
    assert!(message.contains("Outreach user 1 is mapped"), "{message}");

    // The schema itself refuses them, whoever writes.
    let x = sf_id(1);
    let y = sf_id(2);
    for sql in [
        format!(
            "INSERT INTO mappings (outreach_user_id, salesforce_user_id, locked_by_usersync) VALUES (2, '{x}', FALSE)"
        ),
        format!(
            "INSERT INTO mappings (outreach_user_id, salesforce_user_id, locked_by_usersync) VALUES (1, '{y}', FALSE)"
        ),
    ] {
        let err = h.execute(&sql).await.expect_err(&sql);
        let db = err.as_database_error().expect("a database error");
        assert!(db.is_unique_violation(), "{sql}: {db}");
    }
    // ... and a mapping of users it does not know.
    assert!(h
        .execute(&format!(
            "INSERT INTO mappings (outreach_user_id, salesforce_user_id, locked_by_usersync) VALUES (77, '{}', FALSE)",
            sf_id(77)
        ))
        .await
        .is_err());
    assert!(matches!(
        h.store.put_mapping(&mapping(77, 77)).await,
        Err(StoreError::UnknownMappedUser { .. })
    ));
    assert_eq!(all_mappings(&*h.store).await, vec![locked.clone()]);

    // Filters; results sorted by Outreach id.
    h.store.put_mapping(&mapping(2, 2)).await.unwrap();
    assert_eq!(
        all_mappings(&*h.store).await,
        vec![locked.clone(), mapping(2, 2)]
    );
    let by = |email: Option<&str>, sf: Option<u32>, o: Option<i64>| MappingFilter {
        email: email.map(str::to_string),
        salesforce_user_id: sf.map(sf_id),
        outreach_user_id: o.map(OutreachUserId),
    };
    let cases = [
        (by(None, Some(2), None), vec![mapping(2, 2)]),
        (by(None, None, Some(1)), vec![locked.clone()]),
        (by(Some("x@example.com"), None, None), vec![locked.clone()]),
        // Through the Salesforce side's email, and through the Outreach side's.
        (by(Some("y@example.com"), None, None), vec![mapping(2, 2)]),
        (by(Some("o2@example.com"), None, None), vec![mapping(2, 2)]),
        (by(Some("nobody@example.com"), None, None), vec![]),
        (by(Some("x@example.com"), Some(2), None), vec![]),
        (by(None, Some(1), Some(1)), vec![locked.clone()]),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            h.store.mappings(&filter).await.unwrap(),
            expected,
            "{filter:?}"
        );
    }

    // Removing frees both sides.
    assert_eq!(
        h.store.remove_mapping(OutreachUserId(1)).await.unwrap(),
        Some(locked)
    );
    assert_eq!(
        h.store.remove_mapping(OutreachUserId(1)).await.unwrap(),
        None
    );
    h.store.remove_mapping(OutreachUserId(2)).await.unwrap();
    h.store.put_mapping(&mapping(2, 1)).await.unwrap();
    h.store.put_mapping(&mapping(1, 2)).await.unwrap();
    assert_eq!(
        all_mappings(&*h.store).await,
        vec![mapping(1, 2), mapping(2, 1)]
    );
}

async fn concurrent_writers_cannot_break_one_to_one(h: &Harness) {
    h.store
        .put_salesforce_users(&[sf_user(1, "x@example.com")])
        .await
        .unwrap();
    let outreach: Vec<_> = (1..=6).map(|i| outreach_user(i, "x@example.com")).collect();
    h.store.put_outreach_users(&outreach).await.unwrap();
    let tasks: Vec<_> = (1..=6)
        .map(|i| {
            let store = h.store.clone();
            tokio::spawn(async move {
                let mut applied = event(&format!("race-{i}"));
                applied.mapping_changes = vec![MappingWrite::Put(mapping(i, 1))];
                store.record(&applied).await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::MappingConflict { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(all_mappings(&*h.store).await.len(), 1);
    assert_eq!(h.count("applied_events").await, 1);
}

async fn record_remaps_in_one_transaction(h: &Harness) {
    let mut x = sf_user(1, "abc@def.com");
    let y = sf_user(2, "abc@def.com");
    h.store
        .put_salesforce_users(&[x.clone(), y.clone()])
        .await
        .unwrap();
    let mut o1 = outreach_user(1, "abc@def.com");
    o1.custom[0] = Some(x.id.to_string());
    h.store
        .put_outreach_users(std::slice::from_ref(&o1))
        .await
        .unwrap();
    h.store.put_mapping(&mapping(1, 1)).await.unwrap();

    // X is deactivated; the processor moved Outreach user 1 to Y and mirrored Y's id.
    x.is_active = false;
    x.applied = Some(Position {
        commit_number: Some(5000),
        commit_timestamp: at("2025-07-01T00:00:00Z"),
        sequence_number: Some(3),
        read_at: None,
    });
    o1.custom[0] = Some(y.id.to_string());
    o1.first_name = y.first_name.clone();
    let remap = DecisionRecord {
        outreach_calls: 1,
        ..decision(
            "ev-remap",
            Action::Remap,
            Reason::MappedUserInactive,
            "abc@def.com",
        )
    };
    let applied = AppliedEvent {
        event_id: "ev-remap".into(),
        read_versions: StateVersions::new(),
        salesforce_user: Some(x.clone()),
        outreach_users: vec![o1.clone()],
        mapping_changes: vec![
            MappingWrite::Remove(OutreachUserId(1)),
            MappingWrite::Put(mapping(1, 2)),
        ],
        decisions: vec![remap.clone()],
    };
    h.store.record(&applied).await.unwrap();

    assert_eq!(all_mappings(&*h.store).await, vec![mapping(1, 2)]);
    assert_eq!(h.store.salesforce_user(&x.id).await.unwrap(), Some(x));
    assert_eq!(h.store.outreach_user(o1.id).await.unwrap(), Some(o1));
    assert!(h.store.is_applied("ev-remap").await.unwrap());
    assert_eq!(all_decisions(&*h.store).await, vec![remap]);

    // The order matters: a Put before its Remove is a conflict, and nothing is kept.
    let mut backwards = event("ev-backwards");
    backwards.mapping_changes = vec![
        MappingWrite::Put(mapping(1, 1)),
        MappingWrite::Remove(OutreachUserId(1)),
    ];
    assert!(matches!(
        h.store.record(&backwards).await,
        Err(StoreError::MappingConflict { .. })
    ));
    assert_eq!(all_mappings(&*h.store).await, vec![mapping(1, 2)]);
    assert!(!h.store.is_applied("ev-backwards").await.unwrap());
}

async fn record_is_atomic(h: &Harness) {
    let y = sf_user(2, "y@example.com");
    h.store
        .put_salesforce_users(&[sf_user(1, "x@example.com"), y.clone()])
        .await
        .unwrap();
    let o2 = outreach_user(2, "o2@example.com");
    h.store
        .put_outreach_users(&[outreach_user(1, "x@example.com"), o2.clone()])
        .await
        .unwrap();
    h.store.put_mapping(&mapping(1, 1)).await.unwrap();

    let mut changed_y = y.clone();
    changed_y.title = Some("VP".into());
    let mut changed_o2 = o2.clone();
    changed_o2.locked = true;
    let failing = AppliedEvent {
        event_id: "ev-atomic".into(),
        read_versions: StateVersions::new(),
        salesforce_user: Some(changed_y.clone()),
        outreach_users: vec![changed_o2.clone(), outreach_user(3, "y@example.com")],
        mapping_changes: vec![
            MappingWrite::Put(mapping(3, 2)),
            // Salesforce user 1 belongs to Outreach user 1: the last change fails.
            MappingWrite::Put(mapping(2, 1)),
        ],
        decisions: vec![decision(
            "ev-atomic",
            Action::Link,
            Reason::EmailMatch,
            "y@example.com",
        )],
    };
    match h.store.record(&failing).await {
        Err(StoreError::MappingConflict { wanted, existing }) => {
            assert_eq!(wanted, mapping(2, 1));
            assert_eq!(existing, Some(mapping(1, 1)));
        }
        other => panic!("expected a mapping conflict, got {other:?}"),
    }

    // Nothing of it was written.
    assert_eq!(h.store.salesforce_user(&y.id).await.unwrap(), Some(y));
    assert_eq!(h.store.outreach_user(o2.id).await.unwrap(), Some(o2));
    assert_eq!(
        h.store.outreach_user(OutreachUserId(3)).await.unwrap(),
        None
    );
    assert_eq!(all_mappings(&*h.store).await, vec![mapping(1, 1)]);
    assert!(!h.store.is_applied("ev-atomic").await.unwrap());
    assert!(all_decisions(&*h.store).await.is_empty());

    // The event id is not burnt: the corrected result records.
    let mut fixed = failing.clone();
    fixed.mapping_changes.pop();
    h.store.record(&fixed).await.unwrap();
    assert_eq!(
        h.store.salesforce_user(&changed_y.id).await.unwrap(),
        Some(changed_y)
    );
    assert_eq!(
        all_mappings(&*h.store).await,
        vec![mapping(1, 1), mapping(3, 2)]
    );
    assert!(h.store.is_applied("ev-atomic").await.unwrap());
    assert_eq!(all_decisions(&*h.store).await.len(), 1);
}

async fn record_of_an_applied_event_changes_nothing(h: &Harness) {
    let x = sf_user(1, "x@example.com");
    h.store
        .put_outreach_users(&[outreach_user(1, "x@example.com")])
        .await
        .unwrap();
    let first = AppliedEvent {
        salesforce_user: Some(x.clone()),
        mapping_changes: vec![MappingWrite::Put(mapping(1, 1))],
        decisions: vec![decision(
            "ev-1",
            Action::Link,
            Reason::EmailMatch,
            "x@example.com",
        )],
        ..event("ev-1")
    };
    h.store.record(&first).await.unwrap();

    let mut x_later = x.clone();
    x_later.is_active = false;
    let replay = AppliedEvent {
        salesforce_user: Some(x_later),
        outreach_users: vec![outreach_user(2, "x@example.com")],
        mapping_changes: vec![MappingWrite::Remove(OutreachUserId(1))],
        decisions: vec![decision(
            "ev-1",
            Action::Skip,
            Reason::UpToDate,
            "x@example.com",
        )],
        ..event("ev-1")
    };
    h.store.record(&replay).await.unwrap();
    h.store.record(&first).await.unwrap();

    assert_eq!(h.store.salesforce_user(&x.id).await.unwrap(), Some(x));
    assert_eq!(
        h.store.outreach_user(OutreachUserId(2)).await.unwrap(),
        None
    );
    assert_eq!(all_mappings(&*h.store).await, vec![mapping(1, 1)]);
    assert_eq!(all_decisions(&*h.store).await, first.decisions);
    assert_eq!(h.count("applied_events").await, 1);
}

/// The scope of an event of X (Salesforce user 1) in group x@example.com.
fn scope_of_x(event_id: &str) -> StateScope {
    StateScope {
        event_ids: vec![event_id.into()],
        salesforce_user_ids: vec![sf_id(1)],
        emails: vec!["x@example.com".into()],
        ..StateScope::default()
    }
}

/// What an event that gave X a new title records, decided on `read`.
fn retitle_x(event_id: &str, read: &SyncState, title: &str) -> AppliedEvent {
    let mut x = sf_user(1, "x@example.com");
    x.title = Some(title.into());
    AppliedEvent {
        read_versions: read.versions().clone(),
        salesforce_user: Some(x),
        decisions: vec![decision(
            event_id,
            Action::Skip,
            Reason::UpToDate,
            "x@example.com",
        )],
        ..event(event_id)
    }
}

async fn stored_title_of_x(h: &Harness) -> Option<String> {
    h.store
        .salesforce_user(&sf_id(1))
        .await
        .unwrap()
        .expect("X is stored")
        .title
}

fn assert_stale(result: Result<(), StoreError>, event_id: &str, after: &str) {
    match result {
        Err(StoreError::StaleState {
            event_id: refused, ..
        }) => assert_eq!(refused, event_id),
        other => panic!("{event_id} after {after}: expected StaleState, got {other:?}"),
    }
}

async fn a_record_decided_on_a_stale_state_is_refused(h: &Harness) {
    h.store
        .put_salesforce_users(&[sf_user(1, "x@example.com")])
        .await
        .unwrap();
    h.store
        .put_outreach_users(&[outreach_user(1, "x@example.com")])
        .await
        .unwrap();
    let late_read = h.store.load_state(&scope_of_x("ev-late")).await.unwrap();
    assert!(
        late_read
            .versions()
            .keys()
            .any(|part| part.contains("x@example.com")),
        "the group's version is read with it: {:?}",
        late_read.versions()
    );

    // Another writer links X on its own read of the same group and records first.
    let first_read = h.store.load_state(&scope_of_x("ev-first")).await.unwrap();
    let link = AppliedEvent {
        read_versions: first_read.versions().clone(),
        mapping_changes: vec![MappingWrite::Put(mapping(1, 1))],
        decisions: vec![decision(
            "ev-first",
            Action::Link,
            Reason::EmailMatch,
            "x@example.com",
        )],
        ..event("ev-first")
    };
    h.store.record(&link).await.unwrap();

    // Decided on the group before the link: refused, and nothing of it written.
    let late = retitle_x("ev-late", &late_read, "VP");
    assert_stale(h.store.record(&late).await, "ev-late", "the link");
    assert_eq!(
        stored_title_of_x(h).await.as_deref(),
        Some("Account Executive")
    );
    assert!(!h.store.is_applied("ev-late").await.unwrap());
    assert_eq!(all_decisions(&*h.store).await, link.decisions);
    assert_eq!(all_mappings(&*h.store).await, vec![mapping(1, 1)]);

    // Read again, the same event records.
    let fresh = h.store.load_state(&scope_of_x("ev-late")).await.unwrap();
    assert!(fresh.mapping_of_outreach(OutreachUserId(1)).is_some());
    h.store
        .record(&retitle_x("ev-late", &fresh, "VP"))
        .await
        .unwrap();
    assert_eq!(stored_title_of_x(h).await.as_deref(), Some("VP"));
    assert!(h.store.is_applied("ev-late").await.unwrap());
}

async fn every_write_to_a_group_refuses_records_read_before_it(h: &Harness) {
    h.store
        .put_salesforce_users(&[sf_user(1, "x@example.com"), sf_user(2, "y@example.com")])
        .await
        .unwrap();
    h.store
        .put_outreach_users(&[outreach_user(1, "x@example.com")])
        .await
        .unwrap();
    let read_x = async |event_id: &str| h.store.load_state(&scope_of_x(event_id)).await.unwrap();

    // A Salesforce user joins the group.
    let read = read_x("ev-1").await;
    let mut y = sf_user(2, "x@example.com");
    y.title = Some("joined".into());
    h.store.put_salesforce_users(&[y]).await.unwrap();
    let late = retitle_x("ev-1", &read, "T1");
    assert_stale(h.store.record(&late).await, "ev-1", "Y joining");

    // The Outreach index gains a user of the group.
    let read = read_x("ev-2").await;
    h.store
        .put_outreach_users(&[outreach_user(2, "x@example.com")])
        .await
        .unwrap();
    let late = retitle_x("ev-2", &read, "T2");
    assert_stale(h.store.record(&late).await, "ev-2", "an index load");

    // An admin maps, then unmaps, by hand.
    let read = read_x("ev-3").await;
    h.store.put_mapping(&mapping(1, 1)).await.unwrap();
    let late = retitle_x("ev-3", &read, "T3");
    assert_stale(h.store.record(&late).await, "ev-3", "a mapping by hand");
    let read = read_x("ev-4").await;
    h.store.remove_mapping(OutreachUserId(1)).await.unwrap();
    let late = retitle_x("ev-4", &read, "T4");
    assert_stale(h.store.record(&late).await, "ev-4", "an unmapping by hand");

    // What Outreach answered to calls whose record was refused.
    let read = read_x("ev-5").await;
    let mut replied = outreach_user(1, "x@example.com");
    replied.updated_at = Some(at("2025-01-02T00:00:00Z"));
    h.store
        .keep_superseded_calls(&[replied], &[])
        .await
        .unwrap();
    let late = retitle_x("ev-5", &read, "T5");
    assert_stale(h.store.record(&late).await, "ev-5", "kept Outreach replies");

    // Two events of Z, a user the store does not know yet, each with another email: their
    // groups have nothing in common, but Z does.
    let z_scope = |event_id: &str, email: &str| StateScope {
        event_ids: vec![event_id.into()],
        salesforce_user_ids: vec![sf_id(5)],
        emails: vec![email.into()],
        ..StateScope::default()
    };
    let z_in = |event_id: &str, email: &str, read: &SyncState| AppliedEvent {
        read_versions: read.versions().clone(),
        salesforce_user: Some(sf_user(5, email)),
        ..event(event_id)
    };
    let older = h
        .store
        .load_state(&z_scope("ev-z1", "a@example.com"))
        .await
        .unwrap();
    let newer = h
        .store
        .load_state(&z_scope("ev-z2", "b@example.com"))
        .await
        .unwrap();
    h.store
        .record(&z_in("ev-z2", "b@example.com", &newer))
        .await
        .unwrap();
    let late = z_in("ev-z1", "a@example.com", &older);
    assert_stale(h.store.record(&late).await, "ev-z1", "Z's other event");
    let z = h.store.salesforce_user(&sf_id(5)).await.unwrap().unwrap();
    assert_eq!(z.email.as_deref(), Some("b@example.com"));

    // A write to another group leaves the read valid.
    let read = read_x("ev-7").await;
    h.store
        .put_outreach_users(&[outreach_user(3, "elsewhere@example.com")])
        .await
        .unwrap();
    h.store
        .record(&retitle_x("ev-7", &read, "T7"))
        .await
        .unwrap();
    assert_eq!(stored_title_of_x(h).await.as_deref(), Some("T7"));
}

async fn concurrent_writers_on_one_group_exactly_one_wins(h: &Harness) {
    const WRITERS: usize = 8;
    h.store
        .put_salesforce_users(&[sf_user(1, "x@example.com")])
        .await
        .unwrap();
    // Every writer decides on the same state, then all record at once.
    let mut reads = Vec::new();
    for i in 0..WRITERS {
        let read = h
            .store
            .load_state(&scope_of_x(&format!("ev-{i}")))
            .await
            .unwrap();
        reads.push(read);
    }
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = reads
        .into_iter()
        .enumerate()
        .map(|(i, read)| {
            let store = h.store.clone();
            let start = start.clone();
            tokio::spawn(async move {
                let applied = retitle_x(&format!("ev-{i}"), &read, &format!("T{i}"));
                start.wait().await;
                (i, store.record(&applied).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(())) => winners.push(i),
            (i, refused) => assert_stale(refused, &format!("ev-{i}"), "another writer"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let winner = winners[0];
    assert_eq!(stored_title_of_x(h).await, Some(format!("T{winner}")));
    assert_eq!(h.count("applied_events").await, 1);
    let decisions = all_decisions(&*h.store).await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].event_id, format!("ev-{winner}"));
}

/// What the calls of a refused record did: the users as Outreach returned them, except over a
/// newer stored state, and the decisions that made the calls, in the log as given.
async fn superseded_calls_are_kept_with_their_decisions_never_over_a_newer_state(h: &Harness) {
    let mut newer = outreach_user(1, "x@example.com");
    newer.first_name = Some("Newer".into());
    newer.updated_at = Some(at("2025-03-01T00:00:00.5Z"));
    h.store
        .put_outreach_users(std::slice::from_ref(&newer))
        .await
        .unwrap();

    let mut older = newer.clone();
    older.first_name = Some("Older".into());
    older.updated_at = Some(at("2025-03-01T00:00:00Z"));
    let unknown = outreach_user(2, "y@example.com");
    let created = DecisionRecord {
        outreach_user_id: Some(unknown.id),
        ..decision(
            "ev-1",
            Action::Create,
            Reason::NewActiveUser,
            "y@example.com",
        )
    };
    let updated = decision(
        "ev-1",
        Action::Update,
        Reason::MappedUserChanged,
        "x@example.com",
    );
    h.store
        .keep_superseded_calls(
            &[older, unknown.clone()],
            &[created.clone(), updated.clone()],
        )
        .await
        .unwrap();
    assert_eq!(
        h.store.outreach_user(newer.id).await.unwrap(),
        Some(newer.clone())
    );
    assert_eq!(
        h.store.outreach_user(unknown.id).await.unwrap(),
        Some(unknown)
    );
    assert_eq!(
        all_decisions(&*h.store).await,
        [updated, created],
        "the log, newest first"
    );
    assert!(
        !h.store.is_applied("ev-1").await.unwrap(),
        "the event itself is not recorded"
    );

    let mut later = newer.clone();
    later.first_name = Some("Later".into());
    later.updated_at = Some(at("2025-03-01T00:00:01Z"));
    h.store
        .keep_superseded_calls(std::slice::from_ref(&later), &[])
        .await
        .unwrap();
    assert_eq!(h.store.outreach_user(later.id).await.unwrap(), Some(later));
    assert_eq!(all_decisions(&*h.store).await.len(), 2);
}

fn salesforce_ids(state: &SyncState) -> Vec<SalesforceId> {
    state.salesforce_users().map(|u| u.id.clone()).collect()
}

fn outreach_ids(state: &SyncState) -> Vec<i64> {
    state.outreach_users().map(|u| u.id.0).collect()
}

async fn load_state_returns_the_closure(h: &Harness) {
    // Group a@x: X (mapped to Outreach 1) and Y, one spelled with capitals and spaces.
    // Z is moving from old@x to new@x (the store still has old@x); W stays in old@x,
    // mapped to Outreach 2; Outreach 3 has new@x.
    // Outreach 4 (b@x) is mapped to M, whose email diverged to m@x; N shares m@x.
    // Outreach 6 is named by id and mapped to V; P shares Outreach 6's stored email, the
    // group an Outreach user leaves when a webhook changes its email.
    // Z is also mapped to Outreach 7 (k@x), kept after an email change; K shares k@x: the
    // group of a listed user's Outreach user is loaded too.
    // U and Outreach 5 (u@x) are unrelated.
    let (x, y, z, w, m, n, v, u, p, k) = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
    let mut upper_y = sf_user(y, " A@X.com");
    upper_y.is_active = false;
    h.store
        .put_salesforce_users(&[
            sf_user(x, "a@x.com"),
            upper_y,
            sf_user(z, "old@x.com"),
            sf_user(w, "old@x.com"),
            sf_user(m, "m@x.com"),
            sf_user(n, "m@x.com"),
            sf_user(v, "v@x.com"),
            sf_user(u, "u@x.com"),
            sf_user(p, "O6@x.com"),
            sf_user(k, "k@x.com"),
        ])
        .await
        .unwrap();
    h.store
        .put_outreach_users(&[
            outreach_user(1, "a@x.com"),
            outreach_user(2, "OLD@x.com"),
            outreach_user(3, "new@x.com"),
            outreach_user(4, "b@x.com"),
            outreach_user(5, "u@x.com"),
            outreach_user(6, "o6@x.com"),
            outreach_user(7, "k@x.com"),
        ])
        .await
        .unwrap();
    for (o, s) in [(1, x), (2, w), (4, m), (5, u), (6, v), (7, z)] {
        h.store.put_mapping(&mapping(o, s)).await.unwrap();
    }
    let mut applied = event("ev-done");
    applied.decisions = vec![decision(
        "ev-done",
        Action::Skip,
        Reason::UpToDate,
        "a@x.com",
    )];
    h.store.record(&applied).await.unwrap();

    let scope = StateScope {
        event_ids: vec!["ev-done".into(), "ev-new".into()],
        salesforce_user_ids: vec![sf_id(z)],
        outreach_user_ids: vec![OutreachUserId(6)],
        emails: vec!["new@x.com".into(), "a@x.com".into(), "b@x.com".into()],
    };
    let state = h.store.load_state(&scope).await.unwrap();

    let expected_salesforce: Vec<_> = [x, y, z, w, m, v, p, k].into_iter().map(sf_id).collect();
    assert_eq!(salesforce_ids(&state), expected_salesforce);
    assert_eq!(outreach_ids(&state), vec![1, 2, 3, 4, 6, 7]);
    let mappings: Vec<_> = state.mappings().cloned().collect();
    assert_eq!(
        mappings,
        vec![
            mapping(1, x),
            mapping(2, w),
            mapping(4, m),
            mapping(6, v),
            mapping(7, z)
        ]
    );
    assert!(state.is_applied("ev-done"));
    assert!(!state.is_applied("ev-new"));

    // The indexes a decision reads are right: groups by normalized email, both sides.
    let group = |email: &str| -> Vec<SalesforceId> {
        state
            .salesforce_group(email)
            .map(|u| u.id.clone())
            .collect()
    };
    assert_eq!(group("a@x.com"), vec![sf_id(x), sf_id(y)]);
    assert_eq!(group("old@x.com"), vec![sf_id(z), sf_id(w)]);
    assert_eq!(group("m@x.com"), vec![sf_id(m)]);
    assert_eq!(state.outreach_group("old@x.com").count(), 1);
    assert_eq!(
        state
            .mapping_of_salesforce(&sf_id(m))
            .unwrap()
            .outreach_user_id,
        OutreachUserId(4)
    );
    // Full values, not only ids.
    assert_eq!(
        state.salesforce_user(&sf_id(x)),
        h.store.salesforce_user(&sf_id(x)).await.unwrap().as_ref()
    );
    assert_eq!(
        state.outreach_user(OutreachUserId(4)),
        h.store
            .outreach_user(OutreachUserId(4))
            .await
            .unwrap()
            .as_ref()
    );

    // An empty scope loads nothing.
    let empty = h.store.load_state(&StateScope::default()).await.unwrap();
    assert_eq!(empty.salesforce_users().count(), 0);
    assert_eq!(empty.outreach_users().count(), 0);
    assert_eq!(empty.mappings().count(), 0);
}

async fn decision_log_is_newest_first_with_paging_and_filters(h: &Harness) {
    let actions = [
        Action::Create,
        Action::Skip,
        Action::Conflict,
        Action::Skip,
        Action::Remap,
        Action::Skip,
        Action::Link,
    ];
    let mut written = Vec::new();
    for (i, action) in actions.into_iter().enumerate() {
        let email = if i % 2 == 0 { "a@x.com" } else { "b@x.com" };
        let event_id = format!("ev-{i}");
        let mut record = decision(&event_id, action, Reason::UpToDate, email);
        record.outreach_calls = i as u32;
        if i == 3 {
            record.email = None;
            record.outreach_user_id = None;
            record.salesforce_user_id = None;
            record.previous_salesforce_user_id = None;
        }
        let mut applied = event(&event_id);
        applied.decisions = vec![record.clone()];
        h.store.record(&applied).await.unwrap();
        written.push(record);
    }
    let newest_first: Vec<_> = written.iter().rev().cloned().collect();

    // Pages of three, following the cursor.
    let mut query = DecisionQuery {
        limit: 3,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut sequences = Vec::new();
    let mut pages = 0;
    loop {
        let page = h.store.decisions(&query).await.unwrap();
        pages += 1;
        assert!(page.records.len() <= 3);
        for (sequence, record) in page.records {
            sequences.push(sequence);
            seen.push(record);
        }
        match page.next_after {
            Some(cursor) => query.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first);
    assert!(sequences.windows(2).all(|w| w[0] > w[1]), "{sequences:?}");

    // Filters, alone and together, with paging.
    let skips = |q: DecisionQuery| {
        let store = h.store.clone();
        async move { store.decisions(&q).await.unwrap() }
    };
    let page = skips(DecisionQuery {
        action: Some(Action::Skip),
        limit: 2,
        ..Default::default()
    })
    .await;
    let ids: Vec<_> = page
        .records
        .iter()
        .map(|(_, r)| r.event_id.as_str())
        .collect();
    assert_eq!(ids, ["ev-5", "ev-3"]);
    let page = skips(DecisionQuery {
        action: Some(Action::Skip),
        after: page.next_after,
        limit: 2,
        ..Default::default()
    })
    .await;
    let ids: Vec<_> = page
        .records
        .iter()
        .map(|(_, r)| r.event_id.as_str())
        .collect();
    assert_eq!(ids, ["ev-1"]);
    assert_eq!(page.next_after, None);

    let page = skips(DecisionQuery {
        email: Some("A@X.com".into()),
        limit: 100,
        ..Default::default()
    })
    .await;
    let ids: Vec<_> = page
        .records
        .iter()
        .map(|(_, r)| r.event_id.as_str())
        .collect();
    assert_eq!(ids, ["ev-6", "ev-4", "ev-2", "ev-0"]);

    let page = skips(DecisionQuery {
        email: Some("b@x.com".into()),
        action: Some(Action::Skip),
        limit: 100,
        ..Default::default()
    })
    .await;
    let ids: Vec<_> = page
        .records
        .iter()
        .map(|(_, r)| r.event_id.as_str())
        .collect();
    assert_eq!(ids, ["ev-5", "ev-1"]);

    // The limit is clamped to 1..=500.
    let page = skips(DecisionQuery {
        limit: 0,
        ..Default::default()
    })
    .await;
    assert_eq!(page.records.len(), 1);
    assert!(page.next_after.is_some());
    let page = skips(DecisionQuery {
        limit: 100_000,
        ..Default::default()
    })
    .await;
    assert_eq!(page.records.len(), 7);
    assert_eq!(page.next_after, None);
}

async fn settings_round_trip(h: &Harness) {
    assert_eq!(h.store.settings().await.unwrap(), None);
    let mut settings = SyncSettings::default();
    settings.user_mapping.auto_remap_on_inactive = false;
    settings.user_mapping.lock_when_inactive = true;
    settings.user_mapping.mirror_id_field = "custom3".into();
    settings.email_field.dedupe = Dedupe::Inbound;
    h.store.save_settings(&settings).await.unwrap();
    assert_eq!(h.store.settings().await.unwrap(), Some(settings));
    h.store
        .save_settings(&SyncSettings::default())
        .await
        .unwrap();
    assert_eq!(
        h.store.settings().await.unwrap(),
        Some(SyncSettings::default())
    );
    assert_eq!(h.count("settings").await, 1);
}

async fn authorizations_round_trip_and_are_replaced(h: &Harness) {
    assert_eq!(h.store.authorization("salesforce").await.unwrap(), None);
    assert!(
        h.store
            .save_authorization("salesforce", &[1, 2, 3, 0, 255], "00aa11bb22cc33dd", 1)
            .await
            .unwrap()
    );
    assert!(
        h.store
            .save_authorization("salesforce", &[9, 9], "44ee55ff66aa77bb", 2)
            .await
            .unwrap()
    );
    let current = SealedAuthorization {
        sealed: vec![9, 9],
        generation: 2,
    };
    assert_eq!(
        h.store.authorization("salesforce").await.unwrap(),
        Some(current.clone())
    );
    // A writer that read generation 1, and one that skips a generation, write nothing.
    for generation in [2, 4] {
        assert!(
            !h.store
                .save_authorization("salesforce", &[7], "44ee55ff66aa77bb", generation)
                .await
                .unwrap(),
            "generation {generation}"
        );
    }
    assert_eq!(
        h.store.authorization("salesforce").await.unwrap(),
        Some(current)
    );
    assert_eq!(h.store.authorization("outreach").await.unwrap(), None);
    let refused = h
        .store
        .save_authorization("hubspot", &[1], "00", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("save the hubspot authorization"),
        "{refused}"
    );
}

async fn checkpoints_round_trip(h: &Harness) {
    let topic = "/data/UserChangeEvent";
    assert_eq!(h.store.checkpoint(topic).await.unwrap(), None);
    let first = ReplayCheckpoint {
        topic: topic.into(),
        replay_id: vec![0x00, 0x01, 0x7f, 0x80, 0xff, 0x00, 0x10, 0x20, 0xfe, 0x00],
        commit_timestamp: Some(at("2025-08-01T10:00:00.123456Z")),
        updated_at: at("2025-08-01T10:00:01Z"),
    };
    h.store.save_checkpoint(&first).await.unwrap();
    assert_eq!(
        h.store.checkpoint(topic).await.unwrap(),
        Some(first.clone())
    );

    let second = ReplayCheckpoint {
        topic: topic.into(),
        replay_id: vec![0xff; 10],
        commit_timestamp: None,
        updated_at: at("2025-08-01T11:00:00Z"),
    };
    h.store.save_checkpoint(&second).await.unwrap();
    assert_eq!(
        h.store.checkpoint(topic).await.unwrap(),
        Some(second.clone())
    );

    let other = ReplayCheckpoint {
        topic: "/event/Other__e".into(),
        ..first
    };
    h.store.save_checkpoint(&other).await.unwrap();
    assert_eq!(h.store.checkpoint(topic).await.unwrap(), Some(second));
    assert_eq!(
        h.store.checkpoint("/event/Other__e").await.unwrap(),
        Some(other)
    );
    assert_eq!(h.count("replay_checkpoints").await, 2);
}

async fn admin_actions_are_appended_and_listed_newest_first(h: &Harness) {
    assert!(h.store.admin_actions(10).await.unwrap().is_empty());
    let replay = AdminAction {
        at: at("2025-08-01T10:00:00.123456Z"),
        action: AdminActionKind::Replay,
        detail: serde_json::json!({
            "from": "earliest",
            "transport": "pubsub",
            "checkpoint_before": {"replay_id": "00ff", "commit_timestamp": "2025-08-01T09:00:00Z"},
        }),
        actor: Some("ops".into()),
    };
    let resync = AdminAction {
        at: at("2025-08-01T10:05:00Z"),
        action: AdminActionKind::Resync,
        detail: serde_json::json!({"checkpoint_before": null}),
        actor: Some("local".into()),
    };
    let first = h.store.append_admin_action(&replay).await.unwrap();
    let second = h.store.append_admin_action(&resync).await.unwrap();
    let third = h.store.append_admin_action(&replay).await.unwrap();
    assert!(first < second && second < third, "{first} {second} {third}");
    assert_eq!(
        h.store.admin_actions(10).await.unwrap(),
        vec![
            (third, replay.clone()),
            (second, resync.clone()),
            (first, replay.clone())
        ],
        "newest first, each as it was appended"
    );
    assert_eq!(
        h.store.admin_actions(2).await.unwrap(),
        vec![(third, replay.clone()), (second, resync)],
        "limited to the newest"
    );
    assert_eq!(
        h.store.admin_actions(0).await.unwrap().len(),
        1,
        "at least one"
    );
    assert_eq!(h.count("admin_actions").await, 3);

    // Every kind reads back, with its actor; a row from before the actor was kept has none.
    let mut kinds = Vec::new();
    for kind in AdminActionKind::ALL {
        let action = AdminAction {
            at: at("2025-08-01T11:00:00Z"),
            action: kind,
            detail: serde_json::json!({"side": "outreach"}),
            actor: Some("dashboard.ops-2".into()),
        };
        let sequence = h.store.append_admin_action(&action).await.unwrap();
        kinds.push((sequence, action));
    }
    h.execute(
        "INSERT INTO admin_actions (at, action, detail) \
         VALUES ('2025-08-01T12:00:00+00:00', 'resync', '{\"checkpoint_before\": null}')",
    )
    .await
    .unwrap();
    let listed = h.store.admin_actions(10).await.unwrap();
    assert_eq!(listed[0].1.action, AdminActionKind::Resync);
    assert_eq!(listed[0].1.actor, None, "an older row names no actor");
    kinds.reverse();
    assert_eq!(listed[1..=AdminActionKind::ALL.len()], kinds[..]);

    h.execute(
        "INSERT INTO admin_actions (at, action, detail) \
         VALUES ('2025-08-02T00:00:00Z', 'reboot', '{}')",
    )
    .await
    .unwrap();
    let err = h
        .store
        .admin_actions(10)
        .await
        .expect_err("an unknown action code");
    assert!(
        matches!(&err, StoreError::Corrupt { table: "admin_actions", column: "action", value, .. } if value == "reboot"),
        "{err:?}"
    );
}

async fn decisions_keep_who_made_them_by_hand(h: &Harness) {
    let by_hand = DecisionRecord {
        actor: Some("ops".into()),
        ..decision(
            "admin:1",
            Action::Unlink,
            Reason::ManualUnlink,
            "a@example.com",
        )
    };
    let by_the_engine = decision(
        "ev-2",
        Action::Update,
        Reason::MappedUserChanged,
        "b@example.com",
    );
    for (event_id, record) in [("admin:1", &by_hand), ("ev-2", &by_the_engine)] {
        let applied = AppliedEvent {
            decisions: vec![record.clone()],
            ..event(event_id)
        };
        h.store.record(&applied).await.unwrap();
    }
    assert_eq!(
        all_decisions(h.store.as_ref()).await,
        [by_the_engine, by_hand]
    );
}

async fn a_settings_save_by_an_admin_is_recorded_with_it_or_not_at_all(h: &Harness) {
    let mut settings = SyncSettings::default();
    settings.user_mapping.inbound_update = false;
    let action = AdminAction {
        at: at("2025-08-01T10:00:00Z"),
        action: AdminActionKind::Settings,
        detail: serde_json::json!({"before": SyncSettings::default(), "after": &settings}),
        actor: Some("ops".into()),
    };
    let sequence = h
        .store
        .save_settings_recorded(&settings, &action)
        .await
        .unwrap();
    assert_eq!(h.store.settings().await.unwrap(), Some(settings.clone()));
    assert_eq!(
        h.store.admin_actions(10).await.unwrap(),
        [(sequence, action.clone())]
    );

    // A record that cannot be written takes the save back with it.
    h.execute("DROP TABLE admin_actions").await.unwrap();
    let mut other = settings.clone();
    other.user_mapping.inbound_update = true;
    let refused = h
        .store
        .save_settings_recorded(&other, &action)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("record the admin action settings"),
        "{refused}"
    );
    assert_eq!(h.store.settings().await.unwrap(), Some(settings));
}

async fn pruning_deletes_only_what_is_older_in_batches(h: &Harness) {
    let cutoff = at("2025-03-01T00:00:00Z");
    // Five decisions before the cutoff, one at it, two after; their events are applied now.
    let mut kept = Vec::new();
    for (n, when) in [
        "2025-01-01T00:00:00Z",
        "2025-01-02T00:00:00.5Z",
        "2025-02-03T00:00:00.123456Z",
        "2025-02-28T23:59:59.999Z",
        "2025-02-28T23:59:59Z",
        "2025-03-01T00:00:00Z",
        "2025-03-01T00:00:00.000001Z",
        "2025-06-01T00:00:00Z",
    ]
    .into_iter()
    .enumerate()
    {
        let record = DecisionRecord {
            at: at(when),
            ..decision(
                &format!("ev-{n}"),
                Action::Skip,
                Reason::UpToDate,
                "a@example.com",
            )
        };
        if at(when) >= cutoff {
            kept.push(record.clone());
        }
        let applied = AppliedEvent {
            decisions: vec![record],
            ..event(&format!("ev-{n}"))
        };
        h.store.record(&applied).await.unwrap();
    }
    // Five events applied before the cutoff (written as the store writes times), one at it.
    for (n, when) in [
        "2025-01-01T00:00:00+00:00",
        "2025-01-15T12:30:00.25+00:00",
        "2025-02-01T00:00:00+00:00",
        "2025-02-20T00:00:00+00:00",
        "2025-02-28T23:59:59.999999+00:00",
        "2025-03-01T00:00:00+00:00",
    ]
    .into_iter()
    .enumerate()
    {
        h.execute(&format!(
            "INSERT INTO applied_events (event_id, applied_at) VALUES ('old-{n}', '{when}')"
        ))
        .await
        .unwrap();
    }
    let action = AdminAction {
        at: at("2025-01-01T00:00:00Z"),
        action: AdminActionKind::Resync,
        detail: serde_json::json!({}),
        actor: Some("ops".into()),
    };
    h.store.append_admin_action(&action).await.unwrap();

    let pruned = h.store.prune_before(cutoff, 2).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            decisions: 5,
            applied_events: 5
        },
        "batches of two until none is left"
    );
    kept.reverse();
    assert_eq!(all_decisions(h.store.as_ref()).await, kept, "newest first");
    for n in 0..5 {
        assert!(!h.store.is_applied(&format!("old-{n}")).await.unwrap());
    }
    assert!(
        h.store.is_applied("old-5").await.unwrap(),
        "at the cutoff: kept"
    );
    for n in 0..8 {
        assert!(
            h.store.is_applied(&format!("ev-{n}")).await.unwrap(),
            "applied now: kept"
        );
    }
    assert_eq!(h.count("admin_actions").await, 1, "the admin actions stay");
    assert_eq!(
        h.store.prune_before(cutoff, 2).await.unwrap(),
        Pruned::default(),
        "nothing older is left"
    );
}

async fn corrupt_stored_values_are_reported(h: &Harness) {
    // An 18-character id whose checksum suffix was mangled (the real one is AAA).
    let mangled = "005000000000001XXX";
    h.execute(&format!(
        "INSERT INTO salesforce_users (id, email, email_normalized, is_active) \
         VALUES ('{mangled}', 'bad@x.com', 'bad@x.com', TRUE)"
    ))
    .await
    .unwrap();
    let scope = StateScope {
        emails: vec!["bad@x.com".into()],
        ..Default::default()
    };
    match h.store.load_state(&scope).await {
        Err(err @ StoreError::Corrupt { .. }) => {
            let StoreError::Corrupt {
                table,
                column,
                value,
                ..
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(
                (*table, *column, value.as_str()),
                ("salesforce_users", "id", mangled)
            );
            assert!(err.to_string().contains(mangled), "{err}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    h.execute(
        "INSERT INTO decisions (event_id, at, action, reason, message, outreach_calls) \
         VALUES ('ev-x', '2025-01-01T00:00:00Z', 'explode', 'up_to_date', 'm', 0)",
    )
    .await
    .unwrap();
    let err = h
        .store
        .decisions(&DecisionQuery::default())
        .await
        .expect_err("an unknown action code");
    assert!(
        matches!(&err, StoreError::Corrupt { table: "decisions", column: "action", value, .. } if value == "explode"),
        "{err:?}"
    );
}

async fn last_known_users_round_trip(h: &Harness) {
    let org = org_id(1);
    let full = sf_user(1, "Ann.Lee@Example.com ");
    let snapshot = sf_user(2, "bob@example.com");
    let bare = SalesforceUser {
        id: sf_id(3),
        email: None,
        username: None,
        first_name: None,
        last_name: None,
        title: None,
        is_active: false,
        created_date: None,
        last_modified_date: None,
        applied: None,
    };
    let cdc = position(Some(42), "2025-05-06T07:08:09.123Z");
    let snapshot_position = position(None, "2025-05-06T07:08:10.000001Z");
    h.store
        .put_last_known_users(
            &org,
            &[
                (full.clone(), Some(cdc)),
                (snapshot.clone(), Some(snapshot_position)),
                (bare.clone(), None),
            ],
        )
        .await
        .unwrap();
    let ids = [full.id.clone(), snapshot.id.clone(), bare.id.clone()];
    assert_eq!(
        h.store.last_known_users(&org, &ids).await.unwrap(),
        vec![
            without_applied(&full),
            without_applied(&snapshot),
            bare.clone()
        ]
    );
    // The positions are stored beside the state, not taken from `applied`.
    assert_eq!(
        h.count("subscriber_users WHERE commit_number = 42 AND commit_timestamp IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        h.count("subscriber_users WHERE commit_number IS NULL AND commit_timestamp IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        h.count("subscriber_users WHERE commit_timestamp IS NULL")
            .await,
        1
    );

    // A newer state replaces the stored one, every field included.
    let mut changed = full.clone();
    changed.email = Some("ann@new.example.com".into());
    changed.title = None;
    changed.is_active = false;
    changed.last_modified_date = Some(at("2025-05-06T07:08:09.123Z"));
    h.store
        .put_last_known_users(
            &org,
            &[(
                changed.clone(),
                Some(position(Some(43), "2025-05-06T07:08:09.123Z")),
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        h.store
            .last_known_users(&org, std::slice::from_ref(&full.id))
            .await
            .unwrap(),
        vec![without_applied(&changed)]
    );
    assert_eq!(h.count("subscriber_users").await, 3);

    // The subscriber's rows and the processor's never meet: neither write shows in the other's
    // read, and the processor's applied position stays what the processor wrote.
    assert_eq!(h.count("salesforce_users").await, 0);
    assert_eq!(h.store.salesforce_user(&full.id).await.unwrap(), None);
    let processor = sf_user(1, "ann.lee@example.com");
    h.store
        .put_salesforce_users(std::slice::from_ref(&processor))
        .await
        .unwrap();
    h.store
        .put_last_known_users(
            &org,
            &[(
                full.clone(),
                Some(position(Some(99_999), "2030-01-01T00:00:00Z")),
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        h.store.salesforce_user(&full.id).await.unwrap(),
        Some(processor)
    );
    let other = sf_user(4, "dan@example.com");
    h.store
        .put_salesforce_users(std::slice::from_ref(&other))
        .await
        .unwrap();
    assert!(
        h.store
            .last_known_users(&org, std::slice::from_ref(&other.id))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn last_known_users_batch_read_returns_only_known_ids(h: &Harness) {
    let org = org_id(1);
    let known: Vec<SalesforceUser> = (1..=3)
        .map(|n| sf_user(n, &format!("user{n}@example.com")))
        .collect();
    let batch: Vec<(SalesforceUser, Option<Position>)> = known
        .iter()
        .map(|u| (u.clone(), Some(position(Some(7), "2025-01-01T00:00:00Z"))))
        .collect();
    h.store.put_last_known_users(&org, &batch).await.unwrap();

    // Unknown ids are absent, a repeated id comes once, and the result is in id order.
    let asked = [sf_id(3), sf_id(99), sf_id(1), sf_id(98), sf_id(1)];
    assert_eq!(
        h.store.last_known_users(&org, &asked).await.unwrap(),
        vec![without_applied(&known[0]), without_applied(&known[2])]
    );
    assert!(
        h.store
            .last_known_users(&org, &[sf_id(97), sf_id(96)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        h.store
            .last_known_users(&org, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // An empty batch writes nothing and is not an error.
    h.store.put_last_known_users(&org, &[]).await.unwrap();
    assert_eq!(h.count("subscriber_users").await, 3);
}

async fn last_known_users_never_go_back_to_an_older_position(h: &Harness) {
    let org = org_id(1);
    let id = sf_id(1);
    let state = |title: &str| SalesforceUser {
        title: Some(title.to_string()),
        ..sf_user(1, "ann@example.com")
    };
    let put = |title: &'static str, at: Option<Position>| {
        let user = state(title);
        let org = org.clone();
        async move {
            h.store
                .put_last_known_users(&org, &[(user, at)])
                .await
                .unwrap()
        }
    };

    // Commit numbers on both sides decide, whatever the timestamps say.
    put("cn10", Some(position(Some(10), "2025-01-01T00:00:10Z"))).await;
    put(
        "cn9-later-time",
        Some(position(Some(9), "2025-01-01T00:00:59Z")),
    )
    .await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("cn10")
    );
    put(
        "cn11-earlier-time",
        Some(position(Some(11), "2025-01-01T00:00:01Z")),
    )
    .await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("cn11-earlier-time")
    );
    // An equal position is not older: a later change of the same transaction writes.
    put(
        "cn11-again",
        Some(position(Some(11), "2025-01-01T00:00:01Z")),
    )
    .await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("cn11-again")
    );

    // A position without a commit number (a read made before the stream showed any commit)
    // is older than any position with one, whatever the times say.
    put(
        "unplaced-late",
        Some(position(None, "2030-01-01T00:00:00Z")),
    )
    .await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("cn11-again")
    );

    // No position always writes, and a stored state without one is replaced by any.
    put("no-position", None).await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("no-position")
    );
    // Between positions without a commit number, timestamps decide, to the microsecond and
    // across different numbers of fraction digits.
    put("snap-half", Some(position(None, "2025-01-01T00:00:05.5Z"))).await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("snap-half")
    );
    put(
        "snap-whole-second",
        Some(position(None, "2025-01-01T00:00:05Z")),
    )
    .await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("snap-half")
    );
    put(
        "snap-1us-newer",
        Some(position(None, "2025-01-01T00:00:05.500001Z")),
    )
    .await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("snap-1us-newer")
    );
    // A commit number is newer than none.
    put("ancient", Some(position(Some(1), "2000-01-01T00:00:00Z"))).await;
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("ancient")
    );

    // Within one batch the guard holds entry by entry: the older entry after the newer one is
    // refused, and the other user of the batch is written all the same.
    let second = sf_user(2, "bob@example.com");
    h.store
        .put_last_known_users(
            &org,
            &[
                (
                    state("batch-newer"),
                    Some(position(Some(5), "2000-01-01T00:00:05Z")),
                ),
                (
                    second.clone(),
                    Some(position(Some(1), "2000-01-01T00:00:00Z")),
                ),
                (
                    state("batch-older"),
                    Some(position(Some(4), "2000-01-01T00:00:04Z")),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        last_known_title(h, &org, &id).await.as_deref(),
        Some("batch-newer")
    );
    assert_eq!(
        h.store
            .last_known_users(&org, std::slice::from_ref(&second.id))
            .await
            .unwrap(),
        vec![without_applied(&second)]
    );
    assert_eq!(h.count("subscriber_users WHERE commit_number = 5").await, 1);
}

async fn last_known_users_are_separate_per_org(h: &Harness) {
    let (org_a, org_b) = (org_id(1), org_id(2));
    let id = sf_id(1);
    let in_a = SalesforceUser {
        title: Some("in A".into()),
        ..sf_user(1, "ann@a.example.com")
    };
    let in_b = SalesforceUser {
        title: Some("in B".into()),
        ..sf_user(1, "ann@b.example.com")
    };
    let only_in_a = sf_user(2, "bob@a.example.com");
    h.store
        .put_last_known_users(
            &org_a,
            &[
                (
                    in_a.clone(),
                    Some(position(Some(100), "2025-01-01T00:00:00Z")),
                ),
                (only_in_a.clone(), None),
            ],
        )
        .await
        .unwrap();
    // The same user id in another org: an older position there is no reason to refuse it, and
    // writing it leaves org A's row alone.
    h.store
        .put_last_known_users(
            &org_b,
            &[(
                in_b.clone(),
                Some(position(Some(1), "2024-01-01T00:00:00Z")),
            )],
        )
        .await
        .unwrap();

    let both = [id.clone(), only_in_a.id.clone()];
    assert_eq!(
        h.store.last_known_users(&org_a, &both).await.unwrap(),
        vec![without_applied(&in_a), without_applied(&only_in_a)]
    );
    assert_eq!(
        h.store.last_known_users(&org_b, &both).await.unwrap(),
        vec![without_applied(&in_b)]
    );
    assert!(
        h.store
            .last_known_users(&org_id(3), &both)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.count("subscriber_users").await, 3);
}

// ---------------------------------------------------------------------------------------------
// Opening by URL (no PostgreSQL needed)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn open_picks_the_backend_by_url() {
    let memory = usersync::store::open("sqlite::memory:").await.unwrap();
    memory
        .save_settings(&SyncSettings::default())
        .await
        .unwrap();
    assert_eq!(
        memory.settings().await.unwrap(),
        Some(SyncSettings::default())
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("folder").join("usersync.db");
    let file = usersync::store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    file.put_outreach_users(&[outreach_user(1, "a@x.com")])
        .await
        .unwrap();
    assert!(path.exists());
    drop(file);
    let reopened = usersync::store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(
        reopened
            .outreach_user(OutreachUserId(1))
            .await
            .unwrap()
            .is_some()
    );

    match usersync::store::open("mysql://admin:hunter2@db.example/usersync").await {
        Err(err @ StoreError::Url { .. }) => {
            let message = err.to_string();
            assert!(message.contains("mysql://"), "{message}");
            assert!(!message.contains("hunter2"), "password leaked: {message}");
        }
        Err(other) => panic!("expected a URL error, got {other}"),
        Ok(_) => panic!("expected a URL error"),
    }
}

async fn a_lease_has_one_holder_at_a_time_and_fences_the_old_one(h: &Harness) {
    const NAME: &str = "subscriber:/data/UserChangeEvent";
    let minute = Duration::from_secs(60);
    assert_eq!(h.store.lease(NAME).await.unwrap(), None);
    let LeaseAnswer::Granted(a) = h.store.take_lease(NAME, "a", minute).await.unwrap() else {
        panic!("a free lease is granted")
    };
    assert_eq!((a.holder.as_str(), a.epoch), ("a", 1));
    assert!(a.remaining() > Duration::from_secs(50), "{a:?}");

    // Another instance waits, told who holds it and for how long.
    match h.store.take_lease(NAME, "b", minute).await.unwrap() {
        LeaseAnswer::HeldBy(held) => {
            assert_eq!((held.holder.as_str(), held.epoch), ("a", 1));
            assert!(held.remaining() > Duration::from_secs(50), "{held:?}");
        }
        granted => panic!("a valid lease went to b: {granted:?}"),
    }
    // The holder taking it again (a restart with the same instance id) starts a new epoch,
    // which fences whatever the old epoch still tries.
    let LeaseAnswer::Granted(a2) = h.store.take_lease(NAME, "a", minute).await.unwrap() else {
        panic!("the holder takes its own lease again")
    };
    assert_eq!(a2.epoch, 2);
    assert_eq!(h.store.renew_lease(&a.claim(), minute).await.unwrap(), None);
    let renewed = h
        .store
        .renew_lease(&a2.claim(), minute)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.epoch, 2);
    assert!(renewed.renewed_at >= a2.renewed_at);

    // The holder writes its checkpoint; the fenced epoch cannot.
    let checkpoint = |replay: u8| ReplayCheckpoint {
        topic: "/data/UserChangeEvent".into(),
        replay_id: vec![0, replay],
        commit_timestamp: None,
        updated_at: at("2025-08-01T10:00:00Z"),
    };
    h.store
        .save_checkpoint_as(&checkpoint(1), &a2.claim())
        .await
        .unwrap();
    let stale = h.store.save_checkpoint_as(&checkpoint(9), &a.claim()).await;
    assert!(
        matches!(stale, Err(StoreError::LeaseLost { epoch: 1, .. })),
        "{stale:?}"
    );

    // Released, it goes to the next instance at once, at the next epoch; the old holder's
    // writes and renewals are refused from then on.
    h.store.release_lease(&a2.claim()).await.unwrap();
    let LeaseAnswer::Granted(b) = h.store.take_lease(NAME, "b", minute).await.unwrap() else {
        panic!("a released lease is granted")
    };
    assert_eq!((b.holder.as_str(), b.epoch), ("b", 3));
    let fenced = h
        .store
        .save_checkpoint_as(&checkpoint(2), &a2.claim())
        .await;
    assert!(
        matches!(&fenced, Err(StoreError::LeaseLost { holder, .. }) if holder == "a"),
        "{fenced:?}"
    );
    assert_eq!(
        h.store
            .checkpoint("/data/UserChangeEvent")
            .await
            .unwrap()
            .unwrap()
            .replay_id,
        vec![0, 1],
        "nothing written by a fenced holder"
    );
    assert_eq!(
        h.store.renew_lease(&a2.claim(), minute).await.unwrap(),
        None
    );
    assert_eq!(h.store.lease(NAME).await.unwrap().unwrap().holder, "b");

    // A lease its holder stopped renewing expires and is taken over.
    let short = Duration::from_millis(200);
    let LeaseAnswer::Granted(c) = h.store.take_lease("other", "c", short).await.unwrap() else {
        panic!("granted")
    };
    assert!(matches!(
        h.store.take_lease("other", "d", short).await.unwrap(),
        LeaseAnswer::HeldBy(_)
    ));
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let LeaseAnswer::Granted(d) = h.store.take_lease("other", "d", short).await.unwrap() else {
        panic!("an expired lease is taken over")
    };
    assert_eq!(d.epoch, c.epoch + 1);
    assert!(d.acquired_at >= c.expires_at, "{c:?} then {d:?}");
}

async fn a_lease_taken_by_many_at_once_goes_to_one(h: &Harness) {
    let minute = Duration::from_secs(60);
    let tries = (0..8).map(|n| {
        let store = h.store.clone();
        tokio::spawn(async move { store.take_lease("race", &format!("i{n}"), minute).await })
    });
    let answers: Vec<LeaseAnswer> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();
    let granted: Vec<&Lease> = answers
        .iter()
        .filter_map(|a| match a {
            LeaseAnswer::Granted(lease) => Some(lease),
            LeaseAnswer::HeldBy(_) => None,
        })
        .collect();
    assert_eq!(granted.len(), 1, "{answers:?}");
    let holder = &granted[0].holder;
    for answer in &answers {
        if let LeaseAnswer::HeldBy(held) = answer {
            assert_eq!(&held.holder, holder);
        }
    }
}

async fn newest_commit_is_the_subscribers_newest_of_its_org(h: &Harness) {
    let (org_a, org_b) = (org_id(1), org_id(2));
    assert_eq!(h.store.newest_commit(&org_a).await.unwrap(), None);
    // Rows without a commit number (a read before any commit was seen) do not count.
    h.store
        .put_last_known_users(
            &org_a,
            &[
                (
                    sf_user(1, "ann@a.example.com"),
                    Some(position(None, "2031-01-01T00:00:00Z")),
                ),
                (sf_user(2, "bob@a.example.com"), None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(h.store.newest_commit(&org_a).await.unwrap(), None);
    h.store
        .put_last_known_users(
            &org_a,
            &[
                (
                    sf_user(3, "cy@a.example.com"),
                    Some(position(
                        Some(1_100_662_289_050),
                        "2025-01-01T00:00:02.250Z",
                    )),
                ),
                (
                    sf_user(4, "dan@a.example.com"),
                    Some(position(Some(1_100_662_289_041), "2025-01-01T00:00:09Z")),
                ),
            ],
        )
        .await
        .unwrap();
    h.store
        .put_last_known_users(
            &org_b,
            &[(
                sf_user(5, "eve@b.example.com"),
                Some(position(Some(9_000_000_000_000), "2026-01-01T00:00:00Z")),
            )],
        )
        .await
        .unwrap();
    // The largest commit number, with its own time, not the latest time.
    assert_eq!(
        h.store.newest_commit(&org_a).await.unwrap(),
        Some((1_100_662_289_050, at("2025-01-01T00:00:02.250Z")))
    );
    assert_eq!(
        h.store.newest_commit(&org_b).await.unwrap(),
        Some((9_000_000_000_000, at("2026-01-01T00:00:00Z")))
    );
}

// ---------------------------------------------------------------------------------------------
// A fresh store opened from many places at once
// ---------------------------------------------------------------------------------------------
//
// Roles started together (by a compose file or a supervisor) each open the store, and so run
// its migrations, at the same moment. Every opener must succeed, every migration must be
// applied exactly once, and the schema must be the one a lone opener builds.

/// How many openers race on one fresh store.
const OPENERS: usize = 12;

/// How many processes of the binary race on one fresh SQLite file.
const PROCESSES: usize = 6;

/// What the store logs once its migrations are done.
const STORE_READY: &str = "schema is up to date";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

type Opening = std::pin::Pin<Box<dyn Future<Output = Result<Arc<dyn Store>, StoreError>> + Send>>;

/// Starts `OPENERS` openings at the same moment, each in a task of the multi-thread runtime.
fn spawn_openers(
    open: impl Fn() -> Opening,
) -> Vec<tokio::task::JoinHandle<Result<Arc<dyn Store>, StoreError>>> {
    let start = Arc::new(tokio::sync::Barrier::new(OPENERS));
    (0..OPENERS)
        .map(|_| {
            let start = start.clone();
            let opening = open();
            tokio::spawn(async move {
                start.wait().await;
                opening.await
            })
        })
        .collect()
}

/// The stores of the openers, once every one of them succeeded.
async fn opened(
    openers: Vec<tokio::task::JoinHandle<Result<Arc<dyn Store>, StoreError>>>,
) -> Vec<Arc<dyn Store>> {
    let mut stores = Vec::new();
    let mut failures = Vec::new();
    for (i, opener) in openers.into_iter().enumerate() {
        match opener.await.expect("an opener panicked") {
            Ok(store) => stores.push(store),
            Err(e) => failures.push(format!("opener {i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {OPENERS} openers of one fresh store failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    stores
}

/// Runs `OPENERS` openings at the same moment; their stores, once every one succeeded.
async fn open_at_once(open: impl Fn() -> Opening) -> Vec<Arc<dyn Store>> {
    opened(spawn_openers(open)).await
}

/// Every store works: each writes one Outreach user, and the first reads them all.
async fn each_store_writes(stores: &[Arc<dyn Store>]) {
    for (i, store) in (1..).zip(stores) {
        store
            .put_outreach_users(&[outreach_user(i, &format!("opener{i}@example.com"))])
            .await
            .unwrap_or_else(|e| panic!("store of opener {i}: {e}"));
    }
    for i in 1..=i64::try_from(stores.len()).unwrap() {
        assert!(
            stores[0]
                .outreach_user(OutreachUserId(i))
                .await
                .unwrap()
                .is_some(),
            "the write of opener {i} is missing"
        );
    }
}

/// Each migration the binary carries, as `_sqlx_migrations` records it once applied.
fn expected_migrations(migrator: &sqlx::migrate::Migrator) -> Vec<(i64, bool, Vec<u8>)> {
    migrator
        .iter()
        .map(|m| (m.version, true, m.checksum.to_vec()))
        .collect()
}

const APPLIED_MIGRATIONS: &str =
    "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";

/// The tables and indexes of a SQLite file, with their SQL.
async fn sqlite_schema(pool: &SqlitePool) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Checks a SQLite store after racing openers: each migration applied once, and the schema a
/// lone opener builds.
async fn assert_sqlite_schema_built_once(url: &str) {
    let pool = SqlitePool::connect(url).await.unwrap();
    let applied: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(APPLIED_MIGRATIONS)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(applied, expected_migrations(&SQLITE_MIGRATIONS));

    let alone_dir = tempfile::tempdir().unwrap();
    let alone = SqliteStore::open(&format!(
        "sqlite://{}",
        alone_dir.path().join("alone.db").display()
    ))
    .await
    .unwrap();
    assert_eq!(
        sqlite_schema(&pool).await,
        sqlite_schema(alone.pool()).await,
        "the schema differs from the one a lone opener builds"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_fresh_store_opened_by_many_tasks_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("usersync.db").display());
    let stores = open_at_once(|| {
        let url = url.clone();
        Box::pin(async move { Ok(Arc::new(SqliteStore::open(&url).await?) as Arc<dyn Store>) })
    })
    .await;
    each_store_writes(&stores).await;
    assert_sqlite_schema_built_once(&url).await;
}

/// Processes of the real binary, as a supervisor starts the roles: `usersync processor` opens
/// the store before it needs Kafka, so no broker is needed to see every one of them past its
/// migrations. Processes start a few milliseconds apart, so the race is run a few times.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_fresh_store_opened_by_many_processes_at_once() {
    // A loopback port nothing listens on: the processors stop at Kafka, after the store.
    let no_broker = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("usersync.db").display());
        let env: Vec<(String, String)> = [
            ("USERSYNC_STORE__URL", url.clone()),
            ("USERSYNC_KAFKA__BROKERS", no_broker.clone()),
            ("USERSYNC_OUTREACH__REFRESH_TOKEN", "never-used".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut processes: Vec<Process> = (0..PROCESSES)
            .map(|i| Process::spawn(&format!("processor-{i}"), &["processor"], &env, dir.path()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let failures: Vec<String> = processes
            .iter_mut()
            .filter_map(|p| p.wait_for_log(STORE_READY, deadline).err())
            .collect();
        drop(processes);
        assert!(
            failures.is_empty(),
            "round {round}: {} of {PROCESSES} processes did not open the fresh store:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
        assert_sqlite_schema_built_once(&url).await;
    }
}

/// The tables, columns and indexes of one PostgreSQL schema.
async fn postgres_schema(pool: &PgPool, schema: &str) -> Vec<(String, String, String, String)> {
    let mut shape: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = $1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let indexes: Vec<(String, String)> =
        sqlx::query_as("SELECT tablename::text, indexdef FROM pg_indexes WHERE schemaname = $1")
            .bind(schema)
            .fetch_all(pool)
            .await
            .unwrap();
    shape.extend(indexes.into_iter().map(|(table, definition)| {
        // The definition names the schema; only the rest is compared.
        let definition = definition.replace(&format!("{schema}."), "");
        (table, "index".into(), definition, String::new())
    }));
    shape.sort();
    shape
}

/// Checks a PostgreSQL store after racing openers: each migration applied once, and the
/// schema a lone opener builds (in a fresh schema of the test database).
async fn assert_postgres_schema_built_once(pool: &PgPool, schema: &str) {
    let applied: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT version, success, checksum FROM \"{schema}\"._sqlx_migrations ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(applied, expected_migrations(&POSTGRES_MIGRATIONS));

    let alone = Harness::postgres().await.expect("the test PostgreSQL");
    let Database::Postgres {
        schema: alone_schema,
        pool: alone_pool,
        ..
    } = &alone.database
    else {
        unreachable!()
    };
    assert_eq!(
        postgres_schema(pool, schema).await,
        postgres_schema(alone_pool, alone_schema).await,
        "the schema differs from the one a lone opener builds"
    );
    alone.finish().await;
}

/// As the roles open it: the `public` schema of a database nobody has opened yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_fresh_database_opened_by_many_tasks_at_once() {
    let Some(admin_url) = database_url() else {
        return;
    };
    let fresh = FreshDatabase::create(&admin_url, "open_at_once").await;
    let stores = open_at_once(|| {
        let url = fresh.url.clone();
        Box::pin(async move {
            Ok(Arc::new(PostgresStore::connect(&url, None).await?) as Arc<dyn Store>)
        })
    })
    .await;
    each_store_writes(&stores).await;
    drop(stores);
    let pool = PgPool::connect(&fresh.url).await.unwrap();
    assert_postgres_schema_built_once(&pool, "public").await;
    pool.close().await;
    fresh.drop_now().await;
}

/// `url` with an application name, which tells the sessions of one test's openers apart in
/// `pg_stat_activity`.
fn with_application_name(url: &str, application: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.query_pairs_mut()
        .append_pair("application_name", application);
    url.to_string()
}

/// Polls until `count` sessions named `application` wait on a lock, the same ones twice in a
/// row (not a passing moment), and `settled` holds for their wait events; those events, sorted
/// (what was seen last, if that never happens within 30 s).
async fn lock_waits(
    observer: &PgPool,
    application: &str,
    count: usize,
    settled: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut previous = Vec::new();
    loop {
        let waits: Vec<String> = sqlx::query_scalar(
            "SELECT wait_event::text FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock' ORDER BY 1",
        )
        .bind(application)
        .fetch_all(observer)
        .await
        .unwrap();
        if (waits.len() == count && settled(&waits) && waits == previous)
            || Instant::now() >= deadline
        {
            return waits;
        }
        previous = waits;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// As the store suite opens it: a schema that does not exist yet, created by the openers.
/// Two `CREATE SCHEMA IF NOT EXISTS` collide only if they overlap, so the test makes them: its
/// own transaction creates the same schema first, every opener waits to see whether that
/// commits, and the test rolls it back once all of them wait, releasing them together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_fresh_schema_opened_by_many_tasks_at_once() {
    let Some(url) = database_url() else { return };
    let schema = format!("store_test_{:016x}", rand::random::<u64>());
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut hold = holder.begin().await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut *hold)
        .await
        .unwrap();

    let application = format!("usersync-open-{schema}");
    let opener_url = with_application_name(&url, &application);
    let openers = spawn_openers(|| {
        let (url, schema) = (opener_url.clone(), schema.clone());
        Box::pin(async move {
            Ok(Arc::new(PostgresStore::connect(&url, Some(&schema)).await?) as Arc<dyn Store>)
        })
    });
    let observer = PgPool::connect(&url).await.unwrap();
    let waits = lock_waits(&observer, &application, OPENERS, |_| true).await;
    assert_eq!(waits.len(), OPENERS, "openers waiting: {waits:?}");
    hold.rollback().await.unwrap();
    holder.close().await.ok();

    let stores = opened(openers).await;
    each_store_writes(&stores).await;
    drop(stores);
    assert_postgres_schema_built_once(&observer, &schema).await;
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&observer)
        .await
        .unwrap();
    observer.close().await;
}

/// The migrations of concurrent openers run one at a time, under PostgreSQL's advisory lock:
/// with the first opener held up inside its migrations (the test's own transaction is creating
/// `_sqlx_migrations` in the same schema, and the opener waits to see whether that commits),
/// every other opener waits on the advisory lock rather than migrating beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_openers_wait_on_the_migration_lock() {
    let Some(url) = database_url() else { return };
    let schema = format!("store_test_{:016x}", rand::random::<u64>());
    let mut holder = PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut holder)
        .await
        .unwrap();
    let mut hold = holder.begin().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\"._sqlx_migrations (version BIGINT)"
    ))
    .execute(&mut *hold)
    .await
    .unwrap();

    let application = format!("usersync-lock-{schema}");
    let opener_url = with_application_name(&url, &application);
    let openers = spawn_openers(|| {
        let (url, schema) = (opener_url.clone(), schema.clone());
        Box::pin(async move {
            Ok(Arc::new(PostgresStore::connect(&url, Some(&schema)).await?) as Arc<dyn Store>)
        })
    });
    let observer = PgPool::connect(&url).await.unwrap();
    // All of them may wait on the advisory lock for a while, when another test's opener (of
    // another schema of the same database) holds it: the state that counts is the one where
    // one of them migrates.
    let waits = lock_waits(&observer, &application, OPENERS, |waits| {
        waits.iter().any(|wait| wait == "transactionid")
    })
    .await;
    hold.rollback().await.unwrap();
    holder.close().await.ok();
    let mut expected = vec!["advisory"; OPENERS - 1];
    expected.push("transactionid");
    assert_eq!(
        waits, expected,
        "one opener migrates (waiting on the test's transaction), the others wait for the \
         migration lock"
    );

    let stores = opened(openers).await;
    each_store_writes(&stores).await;
    drop(stores);
    assert_postgres_schema_built_once(&observer, &schema).await;
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&observer)
        .await
        .unwrap();
    observer.close().await;
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// The test server's certificate authority and an unrelated one (`scripts/postgres.sh` makes
/// both); under CI both must be there, as the server always speaks TLS.
fn database_certificate_authorities() -> Option<(String, String)> {
    let read = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    match (
        read("USERSYNC_TEST_DATABASE_CA"),
        read("USERSYNC_TEST_DATABASE_OTHER_CA"),
    ) {
        (Some(ca), Some(other)) => Some((ca, other)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "USERSYNC_TEST_DATABASE_CA and USERSYNC_TEST_DATABASE_OTHER_CA are not set, but CI \
             is: scripts/postgres.sh sets them with the server it starts"
        ),
        _ => None,
    }
}

/// The test server's URL with `localhost` as the host (the name its certificate carries) and
/// the given TLS parameters.
fn tls_url(url: &str, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(url).expect("the test database URL parses");
    url.set_host(Some("localhost")).unwrap();
    for (key, value) in params {
        url.query_pairs_mut().append_pair(key, value);
    }
    url.to_string()
}

/// `sslmode=verify-full` with the authority that signed the server's certificate opens the
/// store over TLS; with another authority the open fails naming the certificate problem, and
/// `sslmode=require` encrypts without checking whom it talks to.
#[tokio::test]
async fn postgres_over_tls_checks_the_server_certificate() {
    let Some(url) = database_url() else { return };
    let Some((ca, other_ca)) = database_certificate_authorities() else {
        return;
    };
    let schema = format!("store_tls_{:016x}", rand::random::<u64>());
    for params in [
        vec![("sslmode", "verify-full"), ("sslrootcert", ca.as_str())],
        vec![("sslmode", "verify-ca"), ("sslrootcert", ca.as_str())],
        vec![("sslmode", "require")],
    ] {
        let url = tls_url(&url, &params);
        let store = PostgresStore::connect(&url, Some(&schema))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        assert!(store.mappings(&MappingFilter::default()).await.is_ok());
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(encrypted, "{params:?}: the session is not encrypted");
        conn.close().await.ok();
    }

    let wrong = tls_url(
        &url,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", other_ca.as_str()),
        ],
    );
    let error = match usersync::store::open(&wrong).await {
        Ok(_) => panic!("a server certificate from another authority was accepted"),
        // As the binary prints it: each error of the chain, outermost first.
        Err(e) => format!("{:#}", anyhow::Error::new(e)),
    };
    assert!(
        error.contains("localhost") && error.to_lowercase().contains("certificate"),
        "the error names neither the server nor the certificate problem: {error}"
    );

    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
}

/// A PostgreSQL that cannot be reached at first — here a proxy in front of the test server
/// that cuts its first connections, as a database container still starting does, or a name
/// not yet in the network's DNS — is waited for: the open succeeds once the server answers.
#[tokio::test]
async fn a_postgres_that_cuts_the_first_connections_is_waited_for() {
    let Some(url) = database_url() else { return };
    let parsed = url::Url::parse(&url).expect("the test database URL parses");
    let server = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut proxied = parsed.clone();
    proxied
        .set_port(Some(proxy.local_addr().unwrap().port()))
        .unwrap();
    let cut = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = proxy.accept().await.unwrap();
            // The first three connections are closed before a byte is read.
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
                drop(client);
                continue;
            }
            let server = server.clone();
            tokio::spawn(async move {
                let mut upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    let schema = format!("store_late_{:016x}", rand::random::<u64>());
    let store = PostgresStore::connect(proxied.as_str(), Some(&schema))
        .await
        .expect("the open waits until the server answers");
    assert!(cut.load(std::sync::atomic::Ordering::SeqCst) > 3);
    store.settings().await.expect("the store answers");
}
