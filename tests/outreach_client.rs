//! The Outreach client against the Outreach simulator: request counts, error mapping, retries,
//! rate-limit pacing and OAuth refresh, observed through the simulator's request log.
//!
//! No test asserts an upper bound on time; waits are asserted through what the simulator
//! served (no 429, one token request) and the client's statistics.

use std::sync::Arc;
use std::time::Duration;

use usersync::config::{OutreachConfig, Secret};
use usersync::outreach::{
    MemoryTokenStore, OAuthTokens, OutreachClient, OutreachError, OutreachUserId, UserAttributes,
};
use usersync_sim::outreach::{OutreachSim, SimConfig, SimRequest, SimUser};

const SCOPES: &[&str] = &["users.read", "users.write"];

/// A simulator with a short mint throttle, so refresh tests do not wait a minute.
fn sim_config() -> SimConfig {
    SimConfig {
        mint_throttle: Duration::from_secs(1),
        ..SimConfig::default()
    }
}

fn client_config(sim: &OutreachSim, defaults: &SimConfig) -> OutreachConfig {
    OutreachConfig {
        api_url: sim.api_url(),
        token_url: sim.token_url(),
        client_id: defaults.client_id.clone(),
        client_secret: Secret::new(defaults.client_secret.clone()),
        redirect_uri: defaults.redirect_uri.clone(),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        mint_interval: defaults.mint_throttle,
        timeout: Duration::from_secs(10),
        ..OutreachConfig::default()
    }
}

struct Fixture {
    sim: OutreachSim,
    client: OutreachClient,
    store: Arc<MemoryTokenStore>,
    initial: OAuthTokens,
}

async fn fixture_with(sim_config: SimConfig, adjust: impl FnOnce(&mut OutreachConfig)) -> Fixture {
    let sim = OutreachSim::start(sim_config.clone())
        .await
        .expect("simulator starts");
    let issued = sim.issue_tokens(SCOPES);
    let initial = OAuthTokens {
        access_token: issued.access_token,
        refresh_token: issued.refresh_token,
        expires_at: Some(chrono::Utc::now() + chrono::TimeDelta::seconds(issued.expires_in as i64)),
    };
    let mut config = client_config(&sim, &sim_config);
    adjust(&mut config);
    let store = Arc::new(MemoryTokenStore::new());
    let client = OutreachClient::new(&config, initial.clone(), store.clone()).expect("client");
    Fixture {
        sim,
        client,
        store,
        initial,
    }
}

async fn fixture() -> Fixture {
    fixture_with(sim_config(), |_| {}).await
}

fn seed(sim: &OutreachSim, email: &str) -> OutreachUserId {
    OutreachUserId(sim.seed_user(SimUser::new(0, email)))
}

fn served(sim: &OutreachSim, status: u16) -> Vec<SimRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.status == status)
        .collect()
}

fn token_requests(sim: &OutreachSim) -> Vec<SimRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/oauth/token"))
        .collect()
}

fn query_value(path: &str, key: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_costs_one_request_and_returns_the_new_user() {
    let f = fixture().await;
    let existing = seed(&f.sim, "first@acme.test");
    let mut attrs = UserAttributes {
        email: Some("new.hire@acme.test".into()),
        first_name: Some(Some("New".into())),
        last_name: Some(Some("Hire".into())),
        locked: Some(true),
        ..Default::default()
    };
    attrs.custom[0] = Some(Some("005000000000001AAA".into()));

    let reply = f.client.create_user(&attrs).await.expect("created");

    assert_eq!(reply.requests, 1);
    let user = reply.value;
    assert_eq!(user.id, OutreachUserId(existing.0 + 1), "ids are max+1");
    assert_eq!(user.email, "new.hire@acme.test");
    assert_eq!(user.first_name.as_deref(), Some("New"));
    assert!(user.locked);
    assert_eq!(user.custom[0].as_deref(), Some("005000000000001AAA"));
    let stored = f.sim.user(user.id.0).expect("stored in the simulator");
    assert_eq!(stored.last_name.as_deref(), Some("Hire"));
    let log = f.sim.requests();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].method.as_str(), log[0].status), ("POST", 201));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_costs_one_request_and_changes_only_what_is_sent() {
    let f = fixture().await;
    let mut seeded = SimUser::new(0, "ann@acme.test");
    seeded.first_name = Some("Ann".into());
    seeded.title = Some("AE".into());
    let id = OutreachUserId(f.sim.seed_user(seeded));
    let attrs = UserAttributes {
        title: Some(Some("Senior AE".into())),
        locked: Some(true),
        ..Default::default()
    };

    let reply = f.client.update_user(id, &attrs).await.expect("updated");

    assert_eq!(reply.requests, 1);
    assert_eq!(reply.value.id, id);
    assert_eq!(reply.value.title.as_deref(), Some("Senior AE"));
    assert_eq!(reply.value.first_name.as_deref(), Some("Ann"));
    assert!(reply.value.locked);
    let stored = f.sim.user(id.0).unwrap();
    assert!(stored.locked);
    assert_eq!(stored.title.as_deref(), Some("Senior AE"));
    let log = f.sim.requests();
    assert_eq!((log[0].method.as_str(), log[0].status), ("PATCH", 200));
    assert_eq!(log[0].path, format!("/api/v2/users/{id}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_reads_one_user() {
    let f = fixture().await;
    let id = seed(&f.sim, "reader@acme.test");
    let reply = f.client.get_user(id).await.expect("read");
    assert_eq!(reply.requests, 1);
    assert_eq!(reply.value.email, "reader@acme.test");
    assert!(reply.value.updated_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_users_pages_through_2500_users_in_3_requests() {
    let f = fixture().await;
    for n in 0..2500 {
        seed(&f.sim, &format!("user{n:04}@acme.test"));
    }

    let reply = f.client.list_users().await.expect("listed");

    assert_eq!(reply.requests, 3);
    assert_eq!(reply.value.len(), 2500);
    let mut ids: Vec<_> = reply.value.iter().map(|u| u.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2500, "each user once");
    let log = f.sim.requests();
    assert_eq!(log.len(), 3);
    for request in &log {
        assert_eq!(request.status, 200);
        assert_eq!(
            query_value(&request.path, "page[size]").as_deref(),
            Some("1000"),
            "{}",
            request.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_users_page_exposes_the_cursor() {
    let f = fixture_with(sim_config(), |c| c.page_size = 2).await;
    for n in 0..3 {
        seed(&f.sim, &format!("p{n}@acme.test"));
    }
    let first = f.client.list_users_page(None).await.expect("first page");
    assert_eq!(first.value.users.len(), 2);
    let next = first.value.next.expect("a next page");
    let second = f
        .client
        .list_users_page(Some(&next))
        .await
        .expect("second page");
    assert_eq!(second.value.users.len(), 1);
    assert!(second.value.next.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_users_by_email_filters_on_email() {
    let f = fixture().await;
    seed(&f.sim, "a@acme.test");
    let b = seed(&f.sim, "b+tag@acme.test");
    seed(&f.sim, "c@acme.test");

    let found = f
        .client
        .find_users_by_email("b+tag@acme.test")
        .await
        .expect("found");
    assert_eq!(found.requests, 1);
    assert_eq!(found.value.len(), 1);
    assert_eq!(found.value[0].id, b);
    let query = &f.sim.requests()[0].path;
    assert_eq!(
        query_value(query, "filter[email]").as_deref(),
        Some("b+tag@acme.test")
    );

    let none = f
        .client
        .find_users_by_email("nobody@acme.test")
        .await
        .expect("searched");
    assert!(none.value.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_email_is_a_validation_error_with_the_email_pointer() {
    let f = fixture().await;
    seed(&f.sim, "taken@acme.test");
    let attrs = UserAttributes {
        email: Some("TAKEN@acme.test".into()),
        ..Default::default()
    };

    let err = f.client.create_user(&attrs).await.unwrap_err();

    assert!(err.is_email_taken(), "{err:?}");
    assert!(!err.is_retryable());
    match &err {
        OutreachError::Validation { pointer, .. } => {
            assert_eq!(pointer.as_deref(), Some("/data/attributes/email"));
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("while creating Outreach user TAKEN@acme.test:"),
        "{err}"
    );
    assert_eq!(f.sim.request_count(), 1, "a 422 is never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_in_a_patch_is_a_validation_error_but_not_email_taken() {
    let f = fixture().await;
    let id = seed(&f.sim, "fixed@acme.test");
    let attrs = UserAttributes {
        email: Some("changed@acme.test".into()),
        ..Default::default()
    };
    let err = f.client.update_user(id, &attrs).await.unwrap_err();
    assert_eq!(err.code(), "validation");
    assert!(!err.is_email_taken());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_user_is_not_found() {
    let f = fixture().await;
    let err = f.client.get_user(OutreachUserId(424242)).await.unwrap_err();
    assert!(matches!(err, OutreachError::NotFound { .. }), "{err:?}");
    assert_eq!(f.sim.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_is_a_scope_error() {
    let f = fixture().await;
    let id = seed(&f.sim, "scoped@acme.test");
    f.sim.remove_scope("users.read");
    let err = f.client.get_user(id).await.unwrap_err();
    assert!(matches!(err, OutreachError::Scope { .. }), "{err:?}");
    assert!(err.needs_reauthorization());
    assert_eq!(f.sim.request_count(), 1, "a 403 is never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_success() {
    let f = fixture().await;
    let id = seed(&f.sim, "flaky@acme.test");
    f.sim.fail_next(2, 503);

    let reply = f.client.get_user(id).await.expect("succeeds after retries");

    assert_eq!(reply.requests, 3);
    let statuses: Vec<u16> = f.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
    assert_eq!(f.client.stats().retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_retried_on_server_errors_too() {
    let f = fixture().await;
    f.sim.fail_next(1, 502);
    let attrs = UserAttributes {
        email: Some("retried@acme.test".into()),
        ..Default::default()
    };
    let reply = f.client.create_user(&attrs).await.expect("created");
    assert_eq!(reply.requests, 2);
    assert_eq!(f.sim.users().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_beyond_the_retries_are_server_errors() {
    let f = fixture_with(sim_config(), |c| c.max_retries = 2).await;
    let id = seed(&f.sim, "down@acme.test");
    f.sim.fail_next(10, 500);

    let err = f.client.get_user(id).await.unwrap_err();

    assert!(
        matches!(err, OutreachError::Server { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(f.sim.request_count(), 3, "one attempt and two retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_storm_is_waited_out() {
    let f = fixture().await;
    let id = seed(&f.sim, "patient@acme.test");
    f.sim.rate_limit_storm(2);

    let reply = f.client.get_user(id).await.expect("succeeds after waiting");

    assert_eq!(reply.requests, 3);
    let statuses: Vec<u16> = f.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 200]);
    assert!(f.client.stats().rate_limit_waits >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rate_limit_is_returned_to_the_caller() {
    let f = fixture_with(sim_config(), |c| {
        c.max_rate_limit_wait = Duration::from_secs(5)
    })
    .await;
    let id = seed(&f.sim, "later@acme.test");
    f.sim.exhaust_rate_limit();

    let err = f.client.get_user(id).await.unwrap_err();
    match &err {
        OutreachError::RateLimited { retry_after, .. } => {
            assert!(*retry_after > Duration::from_secs(5), "{retry_after:?}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(f.sim.request_count(), 1);

    // The client now knows the budget is spent and does not even ask.
    let again = f.client.get_user(id).await.unwrap_err();
    assert_eq!(again.code(), "rate_limited");
    assert_eq!(f.sim.request_count(), 1, "paced locally, nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_waits_for_the_reset_instead_of_hitting_429() {
    let config = SimConfig {
        rate_limit_per_window: 3,
        rate_limit_window: Duration::from_secs(2),
        ..sim_config()
    };
    let f = fixture_with(config, |_| {}).await;
    let id = seed(&f.sim, "paced@acme.test");

    for _ in 0..7 {
        f.client.get_user(id).await.expect("paced request succeeds");
    }

    assert_eq!(f.sim.request_count(), 7);
    assert!(served(&f.sim, 429).is_empty(), "{:?}", f.sim.requests());
    assert!(f.client.stats().rate_limit_waits >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_refreshed_once_and_persisted() {
    let f = fixture().await;
    let id = seed(&f.sim, "refresh@acme.test");
    f.sim.expire_access_tokens();

    let reply = f.client.get_user(id).await.expect("succeeds after refresh");

    assert_eq!(reply.requests, 3, "401, token refresh, retry");
    let statuses: Vec<(String, u16)> = f
        .sim
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(statuses[0].1, 401);
    assert_eq!(statuses[2].1, 200);
    assert_eq!(token_requests(&f.sim).len(), 1);
    let saved = f.store.latest().expect("the store got the new tokens");
    assert_ne!(saved.refresh_token, f.initial.refresh_token);
    assert_ne!(saved.access_token, f.initial.access_token);
    assert_eq!(f.client.tokens().await, saved);
    assert_eq!(f.store.saves(), 1);
    assert_eq!(f.client.stats().token_refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_past_its_expiry_is_refreshed_before_use() {
    let config = sim_config();
    let sim = OutreachSim::start(config.clone()).await.expect("sim");
    let id = seed(&sim, "proactive@acme.test");
    let issued = sim.issue_tokens(SCOPES);
    let tokens = OAuthTokens {
        access_token: issued.access_token,
        refresh_token: issued.refresh_token,
        expires_at: Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1)),
    };
    let store = Arc::new(MemoryTokenStore::new());
    let client =
        OutreachClient::new(&client_config(&sim, &config), tokens, store.clone()).expect("client");

    let reply = client.get_user(id).await.expect("read");

    assert_eq!(reply.requests, 2, "refresh, then the read");
    assert!(served(&sim, 401).is_empty(), "{:?}", sim.requests());
    assert_eq!(token_requests(&sim).len(), 1);
    assert_eq!(store.saves(), 1);
    let fresh = client.tokens().await;
    assert!(fresh.expires_at.unwrap() > chrono::Utc::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_end_in_a_token_error_after_one_refresh_attempt() {
    let f = fixture().await;
    let id = seed(&f.sim, "revoked@acme.test");
    f.sim.revoke_tokens();

    let err = f.client.get_user(id).await.unwrap_err();

    match &err {
        OutreachError::Token { error, .. } => assert_eq!(error, "invalid_grant"),
        other => panic!("expected Token, got {other:?}"),
    }
    assert!(err.needs_reauthorization());
    assert!(!err.is_retryable());
    assert_eq!(
        token_requests(&f.sim).len(),
        1,
        "exactly one refresh attempt"
    );
    assert_eq!(f.sim.request_count(), 2);
    assert_eq!(f.store.saves(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_expirations_inside_the_mint_interval_wait_instead_of_being_throttled() {
    let f = fixture().await;
    let id = seed(&f.sim, "throttle@acme.test");

    f.sim.expire_access_tokens();
    f.client.get_user(id).await.expect("first refresh");
    f.sim.expire_access_tokens();
    f.client
        .get_user(id)
        .await
        .expect("second refresh, after waiting");

    let tokens = token_requests(&f.sim);
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens.iter().all(|r| r.status == 200), "{tokens:?}");
    assert_eq!(f.client.stats().token_refreshes, 2);
    assert_eq!(f.store.saves(), 2);
    assert_eq!(
        f.store.latest().unwrap().refresh_token,
        f.client.tokens().await.refresh_token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_cause_one_refresh() {
    let f = fixture().await;
    let ids: Vec<_> = (0..8)
        .map(|n| seed(&f.sim, &format!("c{n}@acme.test")))
        .collect();
    f.sim.expire_access_tokens();

    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let client = f.client.clone();
            let id = *id;
            tokio::spawn(async move { client.get_user(id).await })
        })
        .collect();
    for (task, id) in tasks.into_iter().zip(&ids) {
        let reply = task.await.expect("task").expect("request succeeds");
        assert_eq!(reply.value.id, *id);
    }

    assert_eq!(token_requests(&f.sim).len(), 1, "{:?}", f.sim.requests());
    assert_eq!(f.client.stats().token_refreshes, 1);
    assert_eq!(f.store.saves(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_start_from_an_authorization_code() {
    let config = sim_config();
    let sim = OutreachSim::start(config.clone()).await.expect("sim");
    let id = seed(&sim, "code@acme.test");
    let code = sim.issue_authorization_code(SCOPES);
    let store = Arc::new(MemoryTokenStore::new());

    let client = OutreachClient::from_authorization_code(
        &client_config(&sim, &config),
        &code,
        store.clone(),
    )
    .await
    .expect("code exchanged");

    assert_eq!(store.saves(), 1);
    assert_eq!(client.tokens().await, store.latest().unwrap());
    client.get_user(id).await.expect("the new token works");
    let stats = client.stats();
    assert_eq!((stats.requests, stats.token_refreshes), (2, 1));

    // A code is single-use.
    let err = OutreachClient::from_authorization_code(
        &client_config(&sim, &config),
        &code,
        Arc::new(MemoryTokenStore::new()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, OutreachError::Token { error, .. } if error == "invalid_grant"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_access_token_is_refreshed_once() {
    // The refresh token works but the gateway cannot decode the access token: the client
    // refreshes once, and succeeds with the minted token.
    let config = sim_config();
    let sim = OutreachSim::start(config.clone()).await.expect("sim");
    let id = seed(&sim, "jwt@acme.test");
    let issued = sim.issue_tokens(SCOPES);
    let tokens = OAuthTokens {
        access_token: "not-a-jwt".into(),
        refresh_token: issued.refresh_token,
        expires_at: None,
    };
    let client = OutreachClient::new(
        &client_config(&sim, &config),
        tokens,
        Arc::new(MemoryTokenStore::new()),
    )
    .expect("client");
    let reply = client.get_user(id).await.expect("refreshed and retried");
    assert_eq!(reply.requests, 3);
    assert_eq!(sim.requests()[0].status, 401);
}

/// Two deployments (or a restarted one) share one Outreach user: the second mint inside the
/// throttle window gets Outreach's 429, and the client waits it out instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_throttled_by_the_token_endpoint_is_waited_out() {
    let config = sim_config();
    let sim = OutreachSim::start(config.clone()).await.expect("sim");
    let id = seed(&sim, "shared@acme.test");
    let client = |issued: usersync_sim::outreach::SimTokens| {
        OutreachClient::new(
            &client_config(&sim, &config),
            OAuthTokens {
                access_token: issued.access_token,
                refresh_token: issued.refresh_token,
                expires_at: None,
            },
            Arc::new(MemoryTokenStore::new()),
        )
        .expect("client")
    };
    let first = client(sim.issue_tokens(SCOPES));
    let second = client(sim.issue_tokens(SCOPES));

    sim.expire_access_tokens();
    first
        .get_user(id)
        .await
        .expect("the first client refreshes");
    second
        .get_user(id)
        .await
        .expect("the second client waits out the throttle, then refreshes");

    let tokens = token_requests(&sim);
    let statuses: Vec<u16> = tokens.iter().map(|r| r.status).collect();
    assert_eq!(statuses.first(), Some(&200), "{tokens:?}");
    assert!(statuses.contains(&429), "the throttle was met: {tokens:?}");
    assert_eq!(statuses.last(), Some(&200), "{tokens:?}");
    assert_eq!(second.stats().token_refreshes, 1);
}
