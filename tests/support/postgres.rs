//! The test PostgreSQL named by `USERSYNC_TEST_DATABASE_URL` (`scripts/postgres.sh` starts one
//! and sets it), shared by the store suite and the end-to-end tests.
//!
//! Without the variable a test that needs PostgreSQL is skipped with a notice, unless `CI` is
//! set: there it fails, because CI must prove both backends.

use std::io::Write;
use std::sync::Once;

use sqlx::{Connection, Executor, PgConnection};

pub const DATABASE_URL_VAR: &str = "USERSYNC_TEST_DATABASE_URL";

/// The test database's URL; `None` (after a notice) when none is configured outside CI.
pub fn database_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{DATABASE_URL_VAR} is not set, but CI is: the PostgreSQL tests must run in CI. \
             Start a server first: \
             `source scripts/postgres.sh && pg_start && cargo test --test store; pg_stop`"
        ),
        _ => {
            static NOTICE: Once = Once::new();
            NOTICE.call_once(|| {
                // Straight to stderr: the test harness would swallow eprintln! of a passing test.
                let _ = writeln!(
                    std::io::stderr(),
                    "NOTICE: {DATABASE_URL_VAR} is not set: skipping the PostgreSQL tests \
                     (source scripts/postgres.sh && pg_start to run them)"
                );
            });
            None
        }
    }
}

/// A new, empty database on the test server, for what must start from nothing (the store
/// lives in its `public` schema, as in production). Dropped by [`FreshDatabase::drop_now`];
/// a failed test leaves it for inspection.
pub struct FreshDatabase {
    /// The server's test database, from which this one is created and dropped.
    admin_url: String,
    pub name: String,
    /// The URL of the new database.
    pub url: String,
}

impl FreshDatabase {
    /// Creates `usersync_<tag>_<random>` next to the database of `admin_url`.
    pub async fn create(admin_url: &str, tag: &str) -> FreshDatabase {
        let name = format!("usersync_{tag}_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to the test PostgreSQL ({DATABASE_URL_VAR}): {e}"));
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        conn.close().await.ok();
        let mut url = url::Url::parse(admin_url).expect("the test database URL parses");
        url.set_path(&format!("/{name}"));
        FreshDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }

    /// Drops the database, ending the sessions still connected to it.
    pub async fn drop_now(self) {
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .expect("connect to the test PostgreSQL");
        conn.execute(format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name).as_str())
            .await
            .unwrap_or_else(|e| panic!("drop database {}: {e}", self.name));
        conn.close().await.ok();
    }
}
