//! The Salesforce OAuth client against the Salesforce simulator, over real sockets: each grant's
//! success, and each refusal classified into the disconnect reason an admin would be shown.
//!
//! The RSA keys in `tests/fixtures/salesforce_jwt_*.pem` are throwaway test keys generated once
//! with `openssl genrsa 2048` (see `tests/fixtures/salesforce_jwt_keys.md`); they protect
//! nothing.

use usersync::salesforce::auth::{
    DisconnectReason, SalesforceAuthError, SalesforceCredentials, SalesforceSession, Secret,
    obtain_token, userinfo,
};
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig};

const PRIVATE_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key_pub.pem");
const WRONG_KEY: &str = include_str!("fixtures/salesforce_jwt_wrong_key.pem");

const ADMIN: &str = "integration@acme.example";
const OTHER_ADMIN: &str = "second.admin@acme.example";

async fn sim() -> SalesforceSim {
    let sim = SalesforceSim::start(SfSimConfig::new(PUBLIC_KEY))
        .await
        .expect("simulator starts");
    sim.add_user(ADMIN);
    sim
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn jwt(sim: &SalesforceSim, username: &str, key: &str) -> SalesforceCredentials {
    SalesforceCredentials::JwtBearer {
        login_url: sim.login_url(),
        consumer_key: sim.consumer_key(),
        username: username.to_owned(),
        private_key_pem: Secret::new(key),
    }
}

fn client_credentials(sim: &SalesforceSim, host: String) -> SalesforceCredentials {
    SalesforceCredentials::ClientCredentials {
        my_domain_url: host,
        client_id: sim.consumer_key(),
        client_secret: Secret::new(sim.consumer_secret()),
    }
}

/// The refresh-token flow with a refresh token the simulator issues now for `ADMIN`.
fn refresh_token_of_admin(sim: &SalesforceSim) -> SalesforceCredentials {
    SalesforceCredentials::RefreshToken {
        login_url: sim.login_url(),
        client_id: sim.consumer_key(),
        client_secret: Some(Secret::new(sim.consumer_secret())),
        refresh_token: Secret::new(sim.issue_refresh_token(ADMIN)),
    }
}

async fn session(creds: &SalesforceCredentials) -> SalesforceSession {
    obtain_token(&http(), creds)
        .await
        .unwrap_or_else(|error| panic!("{} grant fails: {error}", creds.flow()))
}

/// The refusal's `error`, `error_description` and reason.
async fn refusal(creds: &SalesforceCredentials) -> (String, String, DisconnectReason) {
    match obtain_token(&http(), creds).await {
        Err(SalesforceAuthError::Token {
            error,
            description,
            reason,
            ..
        }) => (error, description, reason),
        other => panic!("expected a token refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn jwt_bearer_gives_a_session_for_the_user_and_org() {
    let sim = sim().await;
    let admin = sim.user(ADMIN).expect("seeded");
    let session = session(&jwt(&sim, ADMIN, PRIVATE_KEY)).await;
    assert_eq!(session.org_id.as_str(), sim.org_id());
    assert_eq!(session.user_id.as_str(), admin.id);
    assert_eq!(session.instance_url, sim.my_domain_url());
    assert!(
        session
            .identity_url
            .ends_with(&format!("/id/{}/{}", sim.org_id(), admin.id))
    );

    let identity = userinfo(&http(), &session).await.expect("userinfo");
    assert_eq!(identity.user_id, session.user_id);
    assert_eq!(identity.organization_id, session.org_id);
    assert_eq!(identity.preferred_username, ADMIN);
    assert!(identity.active);

    let paths: Vec<_> = sim
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        paths,
        [
            ("/services/oauth2/token".to_owned(), 200),
            ("/my-domain/services/oauth2/userinfo".to_owned(), 200),
        ]
    );
}

#[tokio::test]
async fn an_assertion_signed_with_another_key_is_credentials_changed() {
    let sim = sim().await;
    let (error, description, reason) = refusal(&jwt(&sim, ADMIN, WRONG_KEY)).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_grant", "invalid assertion")
    );
    assert_eq!(reason, DisconnectReason::CredentialsChanged);
}

#[tokio::test]
async fn a_wrong_audience_or_consumer_key_is_credentials_changed() {
    let sim = sim().await;
    let wrong_audience = SalesforceCredentials::JwtBearer {
        login_url: format!("{}/", sim.my_domain_url()),
        consumer_key: sim.consumer_key(),
        username: ADMIN.to_owned(),
        private_key_pem: Secret::new(PRIVATE_KEY),
    };
    let (error, description, reason) = refusal(&wrong_audience).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_grant", "Audience validation failed")
    );
    assert_eq!(reason, DisconnectReason::CredentialsChanged);

    let wrong_key = SalesforceCredentials::JwtBearer {
        login_url: sim.login_url(),
        consumer_key: "3MVG9someone.else".to_owned(),
        username: ADMIN.to_owned(),
        private_key_pem: Secret::new(PRIVATE_KEY),
    };
    let (error, _, reason) = refusal(&wrong_key).await;
    assert_eq!(error, "invalid_client_id");
    assert_eq!(reason, DisconnectReason::CredentialsChanged);
}

#[tokio::test]
async fn an_unknown_username_is_credentials_changed() {
    let sim = sim().await;
    let (error, description, reason) =
        refusal(&jwt(&sim, "nobody@acme.example", PRIVATE_KEY)).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_grant", "authentication failure")
    );
    assert_eq!(reason, DisconnectReason::CredentialsChanged);
}

#[tokio::test]
async fn a_deactivated_user_is_user_inactive_and_their_session_ends() {
    let sim = sim().await;
    let creds = jwt(&sim, ADMIN, PRIVATE_KEY);
    let before = session(&creds).await;
    sim.deactivate_user(ADMIN);

    let (error, description, reason) = refusal(&creds).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_grant", "inactive user")
    );
    assert_eq!(reason, DisconnectReason::UserInactive);
    assert!(matches!(
        userinfo(&http(), &before).await,
        Err(SalesforceAuthError::Unauthorized { .. })
    ));
}

#[tokio::test]
async fn an_unapproved_user_is_not_approved() {
    let sim = sim().await;
    sim.revoke_approval(ADMIN);
    let (error, description, reason) = refusal(&jwt(&sim, ADMIN, PRIVATE_KEY)).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_grant", "user hasn't approved this consumer")
    );
    assert_eq!(reason, DisconnectReason::NotApproved);

    let mut config = SfSimConfig::new(PUBLIC_KEY);
    config.admin_approved_only = true;
    let strict = SalesforceSim::start(config)
        .await
        .expect("simulator starts");
    strict.add_user(ADMIN);
    strict.revoke_approval(ADMIN);
    let (error, _, reason) = refusal(&jwt(&strict, ADMIN, PRIVATE_KEY)).await;
    assert_eq!(error, "invalid_app_access");
    assert_eq!(reason, DisconnectReason::NotApproved);
}

#[tokio::test]
async fn client_credentials_work_only_on_the_my_domain_host() {
    let sim = sim().await;
    sim.set_run_as_user(Some(ADMIN));

    let on_login = obtain_token(&http(), &client_credentials(&sim, sim.login_url()))
        .await
        .expect_err("the login host refuses client credentials");
    let message = on_login.to_string();
    assert!(
        message.contains("request not supported on this domain"),
        "{message}"
    );
    assert!(message.contains("My Domain"), "{message}");
    assert_eq!(on_login.disconnect_reason(), Some(DisconnectReason::Other));

    let session = session(&client_credentials(&sim, sim.my_domain_url())).await;
    assert_eq!(
        session.user_id.as_str(),
        sim.user(ADMIN).expect("seeded").id
    );
    let identity = userinfo(&http(), &session).await.expect("userinfo");
    assert_eq!(identity.preferred_username, ADMIN);
}

#[tokio::test]
async fn client_credentials_without_a_run_as_user_is_other() {
    let sim = sim().await;
    let error = obtain_token(&http(), &client_credentials(&sim, sim.my_domain_url()))
        .await
        .expect_err("no run-as user");
    assert!(error.to_string().contains("run-as user"), "{error}");
    assert_eq!(error.disconnect_reason(), Some(DisconnectReason::Other));
}

#[tokio::test]
async fn a_rotated_secret_is_credentials_changed() {
    let sim = sim().await;
    sim.set_run_as_user(Some(ADMIN));
    let old = client_credentials(&sim, sim.my_domain_url());
    let new_secret = sim.rotate_client_secret();

    let (error, description, reason) = refusal(&old).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_client", "invalid client credentials")
    );
    assert_eq!(reason, DisconnectReason::CredentialsChanged);

    let current = SalesforceCredentials::ClientCredentials {
        my_domain_url: sim.my_domain_url(),
        client_id: sim.consumer_key(),
        client_secret: Secret::new(new_secret),
    };
    session(&current).await;
}

#[tokio::test]
async fn a_revoked_refresh_token_is_credentials_changed() {
    let sim = sim().await;
    let creds = refresh_token_of_admin(&sim);
    let before = session(&creds).await;
    assert_eq!(before.user_id.as_str(), sim.user(ADMIN).expect("seeded").id);

    sim.revoke_tokens();
    let (error, description, reason) = refusal(&creds).await;
    assert_eq!(
        (error.as_str(), description.as_str()),
        ("invalid_grant", "expired access/refresh token")
    );
    assert_eq!(reason, DisconnectReason::CredentialsChanged);
    let stale = userinfo(&http(), &before).await.expect_err("revoked");
    assert_eq!(
        stale.disconnect_reason(),
        Some(DisconnectReason::CredentialsChanged)
    );
}

/// A manual disconnect's revocation: with the refresh-token flow both the session and the
/// refresh token end (a reconnect needs a new authorization); revoking again is refused with
/// Salesforce's error.
#[tokio::test]
async fn revoking_ends_the_session_and_the_refresh_token() {
    use usersync::salesforce::auth::revoke;
    use usersync::salesforce::rest::CredentialsTokenSource;
    let sim = sim().await;
    let creds = refresh_token_of_admin(&sim);
    let tokens = CredentialsTokenSource::new(http(), creds.clone());
    let held = tokens.session().await.expect("a session");
    assert_eq!(
        tokens.revoke().await.expect("revoked"),
        ["access token", "refresh token"]
    );
    let kinds: Vec<&str> = sim.revocations().iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["access", "refresh"]);
    let stale = userinfo(&http(), &held)
        .await
        .expect_err("the session ended");
    assert_eq!(
        stale.disconnect_reason(),
        Some(DisconnectReason::CredentialsChanged)
    );
    let (error, _, reason) = refusal(&creds).await;
    assert_eq!(error, "invalid_grant");
    assert_eq!(reason, DisconnectReason::CredentialsChanged);

    let again = revoke(
        &http(),
        &sim.login_url(),
        "access token",
        &held.access_token,
    )
    .await
    .expect_err("already revoked");
    let message = again.to_string();
    assert!(
        message.contains("revoking the Salesforce access token")
            && message.contains("unsupported_token_type"),
        "{message}"
    );
    assert!(!message.contains(held.access_token.expose()), "{message}");
}

/// JWT bearer can always mint again: only its session is revoked.
#[tokio::test]
async fn revoking_a_jwt_source_ends_only_its_session() {
    use usersync::salesforce::rest::CredentialsTokenSource;
    let sim = sim().await;
    let tokens = CredentialsTokenSource::new(http(), jwt(&sim, ADMIN, PRIVATE_KEY));
    assert_eq!(
        tokens.revoke().await.expect("nothing held"),
        Vec::<&str>::new()
    );
    tokens.session().await.expect("a session");
    assert_eq!(tokens.revoke().await.expect("revoked"), ["access token"]);
    let fresh = tokens
        .session()
        .await
        .expect("a new session after revocation");
    userinfo(&http(), &fresh)
        .await
        .expect("the new session works");
}

#[tokio::test]
async fn changing_the_jwt_username_switches_the_authorizing_user() {
    let sim = sim().await;
    let second = sim.add_user(OTHER_ADMIN);

    let first = session(&jwt(&sim, ADMIN, PRIVATE_KEY)).await;
    let switched = session(&jwt(&sim, OTHER_ADMIN, PRIVATE_KEY)).await;
    assert_eq!(switched.user_id.as_str(), second.id);
    assert_eq!(switched.org_id, first.org_id);
    assert_ne!(switched.user_id, first.user_id);

    let identity = userinfo(&http(), &switched).await.expect("userinfo");
    assert_eq!(identity.preferred_username, OTHER_ADMIN);
    assert_eq!(identity.user_id.as_str(), second.id);
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output() {
    let sim = sim().await;
    sim.set_run_as_user(Some(ADMIN));
    let refresh_token = sim.issue_refresh_token(ADMIN);
    let all = [
        jwt(&sim, ADMIN, PRIVATE_KEY),
        client_credentials(&sim, sim.my_domain_url()),
        SalesforceCredentials::RefreshToken {
            login_url: sim.login_url(),
            client_id: sim.consumer_key(),
            client_secret: Some(Secret::new(sim.consumer_secret())),
            refresh_token: Secret::new(refresh_token.clone()),
        },
    ];
    let key_body = PRIVATE_KEY.lines().nth(1).expect("a PEM body line");
    for creds in &all {
        let printed = format!("{creds:?}");
        assert!(!printed.contains(key_body), "{printed}");
        assert!(!printed.contains(&sim.consumer_secret()), "{printed}");
        assert!(!printed.contains(&refresh_token), "{printed}");

        let session = session(creds).await;
        let printed = format!("{session:?}");
        assert!(
            !printed.contains(session.access_token.expose()),
            "{printed}"
        );
        assert!(printed.contains(session.org_id.as_str()), "{printed}");
    }
}
