//! The Salesforce REST client against the Salesforce simulator, over real sockets: the initial
//! load in pages, the re-read of gap users in chunks, the resync since a moment, the renewal
//! of a refused token, and the failures a caller must tell apart.
//!
//! Sessions come from the JWT bearer flow with the throwaway keys in `tests/fixtures` (see
//! `tests/fixtures/salesforce_jwt_keys.md`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::json;
use usersync::model::salesforce_id::SalesforceId;
use usersync::salesforce::auth::{
    DisconnectReason, SalesforceAuthError, SalesforceCredentials, Secret,
};
use usersync::salesforce::rest::{
    CredentialsTokenSource, RestRetry, SalesforceRest, SalesforceRestError, TokenSource, UserQuery,
};
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

const PRIVATE_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key_pub.pem");

const ADMIN: &str = "integration@acme.example";

async fn sim() -> SalesforceSim {
    let sim = SalesforceSim::start(SfSimConfig::new(PUBLIC_KEY))
        .await
        .expect("simulator starts");
    sim.add_user(ADMIN);
    sim
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

fn jwt(sim: &SalesforceSim) -> SalesforceCredentials {
    SalesforceCredentials::JwtBearer {
        login_url: sim.login_url(),
        consumer_key: sim.consumer_key(),
        username: ADMIN.to_owned(),
        private_key_pem: Secret::new(PRIVATE_KEY),
    }
}

/// Retries without waiting long.
fn fast_retry() -> RestRetry {
    RestRetry {
        max_retries: 3,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// A client on a JWT bearer session of the admin.
async fn client(sim: &SalesforceSim) -> SalesforceRest {
    let tokens = Arc::new(CredentialsTokenSource::new(http(), jwt(sim)));
    let session = tokens.session().await.expect("a session");
    SalesforceRest::new(&session.instance_url, tokens)
        .expect("client")
        .with_retry(fast_retry())
}

/// Creates `n` users `user<start+i>@acme.example`; returns their ids.
fn create_users(sim: &SalesforceSim, start: usize, n: usize) -> Vec<String> {
    (start..start + n)
        .map(|i| {
            sim.create_user(
                json!({
                    "Username": format!("user{i}@acme.example"),
                    "Email": format!("User{i}@Acme.example"),
                    "FirstName": "Ann",
                    "LastName": format!("Number{i}"),
                    "Title": "AE",
                }),
                &Writer::default(),
            )
            .expect("user created")
        })
        .collect()
}

/// The REST data requests the simulator answered: (path with query, status).
fn data_requests(sim: &SalesforceSim) -> Vec<(String, u16)> {
    sim.requests()
        .into_iter()
        .filter(|r| r.path.contains("/services/data/"))
        .map(|r| (r.path, r.status))
        .collect()
}

fn ids_of(users: &[usersync::model::salesforce_user::SalesforceUser]) -> BTreeSet<String> {
    users.iter().map(|u| u.id.as_str().to_owned()).collect()
}

fn parse_ids(ids: &[String]) -> Vec<SalesforceId> {
    ids.iter()
        .map(|id| SalesforceId::parse(id).unwrap())
        .collect()
}

#[tokio::test]
async fn the_initial_load_reads_4500_users_in_three_pages() {
    let sim = sim().await;
    let ids = create_users(&sim, 0, 4500);
    let rest = client(&sim).await;
    sim.reset_requests();

    let users = rest.all_users().await.expect("all users");
    assert_eq!(users.len(), 4500);
    assert_eq!(ids_of(&users), ids.iter().cloned().collect());
    let first = users
        .iter()
        .find(|u| u.id.as_str() == ids[0])
        .expect("first user");
    assert_eq!(first.username.as_deref(), Some("user0@acme.example"));
    assert_eq!(first.email.as_deref(), Some("User0@Acme.example"));
    assert_eq!(first.last_name.as_deref(), Some("Number0"));
    assert!(first.is_active);
    let record = sim.record(&ids[0]).unwrap();
    let created = record.fields["CreatedDate"].as_i64().unwrap();
    assert_eq!(
        first.created_date,
        DateTime::<Utc>::from_timestamp_millis(created)
    );

    let requests = data_requests(&sim);
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests[0]
            .0
            .starts_with("/my-domain/services/data/v62.0/query?q=SELECT")
    );
    assert!(requests[1].0.ends_with("-2000"), "{requests:?}");
    assert!(requests[2].0.ends_with("-4000"), "{requests:?}");
    assert!(requests.iter().all(|(_, status)| *status == 200));

    // Page by page: what the initial load of a large org holds at once.
    let pages: Vec<_> = rest.user_pages(UserQuery::All).try_collect().await.unwrap();
    let shape: Vec<_> = pages
        .iter()
        .map(|p| (p.number, p.records.len(), p.total_size, p.done))
        .collect();
    assert_eq!(
        shape,
        [
            (1, 2000, 4500, false),
            (2, 2000, 4500, false),
            (3, 500, 4500, true)
        ]
    );
    let usage = rest.last_api_usage().expect("Sforce-Limit-Info read");
    assert_eq!(usage.used, 6);
}

#[tokio::test]
async fn users_by_ids_reads_450_users_in_chunks_and_nothing_else() {
    let sim = sim().await;
    let ids = create_users(&sim, 0, 600);
    let rest = client(&sim).await;
    sim.reset_requests();

    // Every even user and the odd ones among the first 300; the first ten named twice.
    let wanted: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0 || *i < 300)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(wanted.len(), 450);
    let mut asked = parse_ids(&wanted);
    asked.extend(parse_ids(&wanted[..10]));
    let users = rest.users_by_ids(&asked).await.expect("re-read");

    assert_eq!(users.len(), 450, "each user once");
    assert_eq!(ids_of(&users), wanted.iter().cloned().collect());
    let requests = data_requests(&sim);
    assert_eq!(
        requests.len(),
        3,
        "200 + 200 + 50 ids: {:?}",
        requests.len()
    );
    assert!(
        requests
            .iter()
            .all(|(path, status)| *status == 200 && path.len() < 8 * 1024)
    );

    // Unknown ids are absent, and no ids cost no request.
    let unknown = SalesforceId::parse("005SIM999999999").unwrap();
    let known = SalesforceId::parse(&ids[0]).unwrap();
    let users = rest.users_by_ids(&[unknown, known]).await.unwrap();
    assert_eq!(ids_of(&users), BTreeSet::from([ids[0].clone()]));
    sim.reset_requests();
    assert!(rest.users_by_ids(&[]).await.unwrap().is_empty());
    assert!(data_requests(&sim).is_empty());
}

#[tokio::test]
async fn users_modified_since_returns_only_the_changed_users() {
    let sim = sim().await;
    let ids = create_users(&sim, 0, 40);
    // SOQL datetimes have whole seconds: start the changes in a later second than the creates.
    let created = sim.record(&ids[39]).unwrap().fields["LastModifiedDate"]
        .as_i64()
        .unwrap();
    while Utc::now().timestamp_millis() / 1000 <= created / 1000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = Utc::now();
    // A published change, a deactivation, and changes lost to an overflow.
    sim.update_users(&ids[0..3], json!({"Title": "VP"}), &Writer::default())
        .unwrap();
    sim.deactivate(&ids[5]).unwrap();
    sim.overflow(&ids[20..30], json!({"Title": "CEO"})).unwrap();
    sim.set_query_page_size(4);
    let rest = client(&sim).await;
    sim.reset_requests();

    let users = rest.users_modified_since(since).await.expect("resync");
    let expected: BTreeSet<String> = ids[0..3]
        .iter()
        .chain(&ids[5..6])
        .chain(&ids[20..30])
        .cloned()
        .collect();
    assert_eq!(ids_of(&users), expected);
    let deactivated = users.iter().find(|u| u.id.as_str() == ids[5]).unwrap();
    assert!(!deactivated.is_active);
    let overflowed = users.iter().find(|u| u.id.as_str() == ids[25]).unwrap();
    assert_eq!(overflowed.title.as_deref(), Some("CEO"));
    assert!(users.iter().all(|u| u.last_modified_date.unwrap()
        >= since.with_timezone(&Utc) - chrono::Duration::seconds(1)));
    assert_eq!(data_requests(&sim).len(), 4, "14 users in pages of 4");
}

#[tokio::test]
async fn a_revoked_token_is_renewed_once_and_the_call_succeeds() {
    let sim = sim().await;
    let ids = create_users(&sim, 0, 3);
    let rest = client(&sim).await;
    sim.revoke_tokens();
    sim.reset_requests();

    let users = rest.users_by_ids(&parse_ids(&ids)).await.expect("renewed");
    assert_eq!(users.len(), 3);
    let calls: Vec<(String, u16)> = sim
        .requests()
        .into_iter()
        .map(|r| (r.path.split('?').next().unwrap().to_owned(), r.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("/my-domain/services/data/v62.0/query".to_owned(), 401),
            ("/services/oauth2/token".to_owned(), 200),
            ("/my-domain/services/data/v62.0/query".to_owned(), 200),
        ]
    );
}

/// Tokens Salesforce never issued: every one is refused.
struct ForgedTokens(AtomicU32);

#[async_trait]
impl TokenSource for ForgedTokens {
    async fn access_token(&self) -> Result<Secret, SalesforceAuthError> {
        Ok(Secret::new(format!(
            "00DSIM000000001!forged{}",
            self.0.load(Ordering::SeqCst)
        )))
    }

    async fn renew(&self, _rejected: &Secret) -> Result<Secret, SalesforceAuthError> {
        let next = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Secret::new(format!("00DSIM000000001!forged{next}")))
    }
}

#[tokio::test]
async fn a_session_refused_after_renewal_is_session_invalid() {
    let sim = sim().await;
    create_users(&sim, 0, 2);
    let rest = SalesforceRest::new(
        &sim.my_domain_url(),
        Arc::new(ForgedTokens(AtomicU32::new(0))),
    )
    .unwrap()
    .with_retry(fast_retry());

    let error = rest.all_users().await.expect_err("refused twice");
    match &error {
        SalesforceRestError::SessionInvalid { code, message, .. } => {
            assert_eq!(code, "INVALID_SESSION_ID");
            assert_eq!(message, "Session expired or invalid");
        }
        other => panic!("expected SessionInvalid, got {other:?}"),
    }
    assert_eq!(
        error.disconnect_reason(),
        Some(DisconnectReason::CredentialsChanged)
    );
    assert!(
        error
            .to_string()
            .starts_with("while query page 1 of SELECT Id, Username")
    );
    assert!(
        !error.to_string().contains("forged"),
        "no token in the message"
    );
    let statuses: Vec<u16> = data_requests(&sim).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, [401, 401], "one renewal, one repeat");
}

#[tokio::test]
async fn a_deactivated_integration_user_fails_with_the_token_refusal() {
    let sim = sim().await;
    create_users(&sim, 0, 2);
    let rest = client(&sim).await;
    sim.deactivate_user(ADMIN);

    let error = rest.all_users().await.expect_err("no session");
    assert!(
        matches!(error, SalesforceRestError::Token { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.disconnect_reason(),
        Some(DisconnectReason::UserInactive)
    );
}

#[tokio::test]
async fn an_unknown_field_is_a_typed_invalid_field_error() {
    let sim = sim().await;
    create_users(&sim, 0, 2);
    let rest = client(&sim).await;

    let error = rest
        .query_all("SELECT Id, Foo FROM User")
        .await
        .expect_err("no such column");
    match &error {
        SalesforceRestError::Refused {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (400, "INVALID_FIELD"));
            assert!(
                message.contains("No such column 'Foo' on entity 'User'"),
                "{message}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(error.error_code(), Some("INVALID_FIELD"));

    let error = rest.query_all("SELECT Id FROM Account").await.unwrap_err();
    assert_eq!(error.error_code(), Some("INVALID_TYPE"));
    let error = rest
        .query_all("SELECT Id FROM User WHERE")
        .await
        .unwrap_err();
    assert_eq!(error.error_code(), Some("MALFORMED_QUERY"));
}

#[tokio::test]
async fn lost_api_access_is_permission_denied() {
    let sim = sim().await;
    create_users(&sim, 0, 2);
    let rest = client(&sim).await;
    sim.set_api_enabled(ADMIN, false);

    let error = rest.all_users().await.expect_err("forbidden");
    assert!(
        matches!(&error, SalesforceRestError::PermissionDenied { code, .. } if code == "API_DISABLED_FOR_ORG"),
        "{error:?}"
    );
    assert_eq!(
        error.disconnect_reason(),
        Some(DisconnectReason::PermissionsChanged)
    );

    sim.set_api_enabled(ADMIN, true);
    assert_eq!(rest.all_users().await.unwrap().len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_a_few_times() {
    let sim = sim().await;
    create_users(&sim, 0, 2);
    let rest = client(&sim).await;
    sim.reset_requests();

    sim.fail_next_rest_requests(2, 503);
    assert_eq!(rest.all_users().await.expect("third attempt").len(), 2);
    let statuses: Vec<u16> = data_requests(&sim).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, [503, 503, 200]);

    sim.reset_requests();
    sim.fail_next_rest_requests(10, 500);
    let error = rest.all_users().await.expect_err("retries used up");
    match &error {
        SalesforceRestError::Server {
            status, attempts, ..
        } => assert_eq!((*status, *attempts), (500, 4)),
        other => panic!("expected Server, got {other:?}"),
    }
    assert_eq!(error.disconnect_reason(), None, "pause, do not disconnect");
    assert_eq!(data_requests(&sim).len(), 4);
}

#[tokio::test]
async fn an_expired_locator_is_invalid_query_locator() {
    let sim = sim().await;
    create_users(&sim, 0, 12);
    sim.set_query_page_size(5);
    let rest = client(&sim).await;

    let mut pages = std::pin::pin!(rest.user_pages(UserQuery::All));
    let first = pages.try_next().await.unwrap().expect("a first page");
    assert_eq!((first.records.len(), first.done), (5, false));
    sim.expire_query_locators();
    let error = pages.try_next().await.expect_err("the locator is gone");
    assert_eq!(error.error_code(), Some("INVALID_QUERY_LOCATOR"));
    assert!(
        error.to_string().starts_with("while query page 2 of "),
        "{error}"
    );
}

#[tokio::test]
async fn the_batch_size_option_sets_the_page_size() {
    let sim = sim().await;
    create_users(&sim, 0, 450);
    let rest = client(&sim).await.with_batch_size(200);
    let pages: Vec<_> = rest.user_pages(UserQuery::All).try_collect().await.unwrap();
    let sizes: Vec<usize> = pages.iter().map(|p| p.records.len()).collect();
    assert_eq!(sizes, [200, 200, 50]);
}

#[tokio::test]
async fn one_user_by_id_and_the_version_list() {
    let sim = sim().await;
    let ids = create_users(&sim, 0, 2);
    let rest = client(&sim).await;

    // The 15-character form is accepted and answered in the 18-character one.
    let id15 = SalesforceId::parse(&ids[1][..15]).unwrap();
    let user = rest.user(&id15).await.unwrap().expect("found");
    assert_eq!(user.id.as_str(), ids[1]);
    assert_eq!(user.username.as_deref(), Some("user1@acme.example"));
    let missing = SalesforceId::parse("005SIM999999999").unwrap();
    assert_eq!(rest.user(&missing).await.unwrap(), None);

    let versions = rest.versions().await.unwrap();
    let v62 = versions
        .iter()
        .find(|v| v.version == "62.0")
        .expect("v62.0 served");
    assert_eq!(v62.url, "/services/data/v62.0");
    assert_eq!(v62.label, "Winter '25");
}
