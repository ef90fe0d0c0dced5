//! The org's OAuth state and the `/services/oauth2/*` endpoints.
//!
//! [`OAuthState`] is pure: one connected app, the org's users, and the tokens issued so far.
//! It decides every answer of the token and userinfo endpoints from the request alone, so the
//! rules can be read (and tested) without HTTP. The handlers below only parse and render.
//!
//! Answers follow docs/simulators.md ("The Salesforce simulator", OAuth). Where docs/salesforce.md
//! is
//! silent, the choices are:
//! - an unknown JWT `sub` gets `invalid_grant` / `authentication failure` (the generic "who is
//!   this" refusal);
//! - an expired or not-yet-valid assertion, like a bad signature or a malformed JWT, gets
//!   `invalid_grant` / `invalid assertion`; `exp` is checked with 3 minutes of leeway;
//! - `invalid_client` (wrong secret) is HTTP 400, as every row of docs/salesforce.md, "OAuth: flows
//!   and error bodies", without a note;
//! - the client credentials host check comes before the client check, so a right secret sent to
//!   the login host still gets `request not supported on this domain`;
//! - a userinfo 401 carries the REST body `[{"message":"Session expired or invalid",
//!   "errorCode":"INVALID_SESSION_ID"}]`;
//! - deactivating a user ends their sessions; revoking a user's approval also revokes the
//!   refresh tokens issued to them;
//! - the token response's `signature` is an opaque random string (usersync does not check it);
//! - the web server flow (`GET /services/oauth2/authorize`, `grant_type=authorization_code`)
//!   follows [`super::authorize`]; its token response adds `refresh_token` and `scope`;
//! - `POST /services/oauth2/revoke` (form `token`) answers 200 with no body; revoking a refresh
//!   token also ends the sessions obtained with it; an unknown or already revoked token gets
//!   400 `unsupported_token_type` / `this token type is not supported`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::authorize::{AuthorizePage, AuthorizeRequest, WebServerFlow};

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Host, Shared, json_response};

/// Clock skew tolerated on a JWT's `exp`.
pub const JWT_LEEWAY_SECS: u64 = 180;

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A user of the simulated org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfSimUser {
    /// 18-character id, `005…`.
    pub id: String,
    pub username: String,
    pub active: bool,
    /// Pre-authorized for the connected app (or approved it earlier).
    pub approved: bool,
}

/// What an access token stands for.
#[derive(Debug, Clone)]
struct Session {
    username: String,
    /// The refresh token this session was obtained with, if any: revoking it ends the session.
    refresh_token: Option<String>,
}

/// What `POST /services/oauth2/revoke` ended, for tests to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// `access` or `refresh`.
    pub kind: &'static str,
    /// Whose token it was.
    pub username: String,
}

/// An OAuth refusal: HTTP status, `error`, `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: &'static str,
}

const fn refuse(error: &'static str, description: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error,
        description,
    }
}

const INVALID_ASSERTION: Refusal = refuse("invalid_grant", "invalid assertion");
const BAD_AUDIENCE: Refusal = refuse("invalid_grant", "Audience validation failed");
const UNKNOWN_USER: Refusal = refuse("invalid_grant", "authentication failure");
const INACTIVE_USER: Refusal = refuse("invalid_grant", "inactive user");
const NOT_APPROVED: Refusal = refuse("invalid_grant", "user hasn't approved this consumer");
const NOT_ADMIN_APPROVED: Refusal = refuse(
    "invalid_app_access",
    "user is not admin approved to access this app",
);
const WRONG_DOMAIN: Refusal = refuse("invalid_grant", "request not supported on this domain");
const NO_RUN_AS: Refusal = refuse("invalid_grant", "no client credentials user enabled");
const BAD_CLIENT_ID: Refusal = refuse("invalid_client_id", "client identifier invalid");
const BAD_SECRET: Refusal = refuse("invalid_client", "invalid client credentials");
const BAD_REFRESH: Refusal = refuse("invalid_grant", "expired access/refresh token");
const BAD_GRANT_TYPE: Refusal = refuse("unsupported_grant_type", "grant type not supported");

/// The connected app, the users and the tokens of one org.
pub struct OAuthState {
    pub org_id: String,
    /// The consumer key, which is also the OAuth `client_id`.
    pub consumer_key: String,
    pub consumer_secret: String,
    /// Verifies assertions: the public half of the certificate uploaded to the app; `None`
    /// for an app without a certificate, which refuses every JWT bearer assertion.
    jwt_key: Option<DecodingKey>,
    /// The JWT audience accepted: the login URL.
    pub audience: String,
    /// The client credentials flow's run-as user.
    pub run_as: Option<String>,
    /// "Admin approved users are pre-authorized": unapproved users get `invalid_app_access`
    /// instead of `user hasn't approved this consumer`.
    pub admin_approved_only: bool,
    users: BTreeMap<String, SfSimUser>,
    next_user: u64,
    access_tokens: HashMap<String, Session>,
    refresh_tokens: HashMap<String, String>,
    revocations: Vec<Revocation>,
    /// The web server flow: callback URLs, who signs in, codes issued.
    pub web: WebServerFlow,
}

/// What the token endpoint grants: the user the session is for.
pub type Granted = Result<String, Refusal>;

impl OAuthState {
    /// Fails when `jwt_public_key_pem` is not an RSA public key in PEM; an empty one means the
    /// app has no certificate (client credentials and refresh tokens only).
    pub fn new(
        org_id: String,
        consumer_key: String,
        consumer_secret: String,
        jwt_public_key_pem: &str,
        audience: String,
    ) -> Result<OAuthState, jsonwebtoken::errors::Error> {
        Ok(OAuthState {
            org_id,
            consumer_key,
            consumer_secret,
            jwt_key: match jwt_public_key_pem.trim() {
                "" => None,
                pem => Some(DecodingKey::from_rsa_pem(pem.as_bytes())?),
            },
            audience,
            run_as: None,
            admin_approved_only: false,
            users: BTreeMap::new(),
            next_user: 1,
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            revocations: Vec::new(),
            web: WebServerFlow::default(),
        })
    }

    /// Adds an active, approved user (or returns the one with that username).
    pub fn add_user(&mut self, username: &str) -> SfSimUser {
        if let Some(user) = self.users.get(username) {
            return user.clone();
        }
        let id = with_checksum(&format!("005SIM{:09}", self.next_user));
        self.next_user += 1;
        let user = SfSimUser {
            id,
            username: username.to_owned(),
            active: true,
            approved: true,
        };
        self.users.insert(username.to_owned(), user.clone());
        user
    }

    pub fn user(&self, username: &str) -> Option<&SfSimUser> {
        self.users.get(username)
    }

    /// Deactivates a user and ends their sessions. False if there is no such user.
    pub fn deactivate_user(&mut self, username: &str) -> bool {
        let Some(user) = self.users.get_mut(username) else {
            return false;
        };
        user.active = false;
        self.access_tokens
            .retain(|_, session| session.username != username);
        true
    }

    /// Sets whether a user is approved; revoking also revokes their refresh tokens.
    pub fn set_approved(&mut self, username: &str, approved: bool) -> bool {
        let Some(user) = self.users.get_mut(username) else {
            return false;
        };
        user.approved = approved;
        if !approved {
            self.refresh_tokens.retain(|_, owner| owner != username);
        }
        true
    }

    /// Every issued access and refresh token stops working.
    pub fn revoke_tokens(&mut self) {
        self.access_tokens.clear();
        self.refresh_tokens.clear();
    }

    /// A refresh token for `username`, as the web authorization-code flow would leave.
    pub fn issue_refresh_token(&mut self, username: &str) -> String {
        let token = format!("5Aep{}", random_string(60));
        self.refresh_tokens
            .insert(token.clone(), username.to_owned());
        token
    }

    /// An access token for `username`, opaque in Salesforce's `<org id>!<random>` style;
    /// `refresh_token` is the one it was obtained with, if any.
    pub fn issue_access_token(&mut self, username: &str, refresh_token: Option<&str>) -> String {
        let token = format!("{}!{}", &self.org_id[..15], random_string(96));
        self.access_tokens.insert(
            token.clone(),
            Session {
                username: username.to_owned(),
                refresh_token: refresh_token.map(str::to_owned),
            },
        );
        token
    }

    /// Revokes an access token (its session ends) or a refresh token (it and every session it
    /// gave end). False for a token that is unknown or already revoked.
    pub fn revoke(&mut self, token: &str) -> bool {
        if let Some(session) = self.access_tokens.remove(token) {
            self.revocations.push(Revocation {
                kind: "access",
                username: session.username,
            });
            return true;
        }
        let Some(username) = self.refresh_tokens.remove(token) else {
            return false;
        };
        self.access_tokens
            .retain(|_, session| session.refresh_token.as_deref() != Some(token));
        self.revocations.push(Revocation {
            kind: "refresh",
            username,
        });
        true
    }

    /// Every revocation so far, oldest first.
    pub fn revocations(&self) -> &[Revocation] {
        &self.revocations
    }

    /// The user behind an access token that still works.
    pub fn session_user(&self, access_token: &str) -> Option<&SfSimUser> {
        let session = self.access_tokens.get(access_token)?;
        self.users.get(&session.username).filter(|user| user.active)
    }

    /// The JWT bearer grant: signature, issuer, audience, expiry, then the user.
    pub fn jwt_bearer(&self, assertion: &str) -> Granted {
        #[derive(Deserialize)]
        struct Claims {
            iss: String,
            sub: String,
            aud: Audience,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Audience {
            One(String),
            Many(Vec<String>),
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let key = self.jwt_key.as_ref().ok_or(INVALID_ASSERTION)?;
        let claims = jsonwebtoken::decode::<Claims>(assertion, key, &validation)
            .map_err(|_| INVALID_ASSERTION)?
            .claims;
        if claims.iss != self.consumer_key {
            return Err(BAD_CLIENT_ID);
        }
        let audience = self.audience.trim_end_matches('/');
        let audience_ok = match &claims.aud {
            Audience::One(aud) => aud.trim_end_matches('/') == audience,
            Audience::Many(auds) => auds.iter().any(|aud| aud.trim_end_matches('/') == audience),
        };
        if !audience_ok {
            return Err(BAD_AUDIENCE);
        }
        self.authorizing_user(&claims.sub)
    }

    /// The client credentials grant; only the My Domain host serves it.
    pub fn client_credentials(&self, host: Host, client_id: &str, secret: &str) -> Granted {
        if host != Host::MyDomain {
            return Err(WRONG_DOMAIN);
        }
        self.check_client(client_id, Some(secret))?;
        let run_as = self.run_as.as_deref().ok_or(NO_RUN_AS)?;
        let user = self.users.get(run_as).ok_or(NO_RUN_AS)?;
        if !user.active {
            return Err(INACTIVE_USER);
        }
        Ok(user.username.clone())
    }

    /// The refresh token grant.
    pub fn refresh(&self, client_id: &str, secret: Option<&str>, refresh_token: &str) -> Granted {
        self.check_client(client_id, secret)?;
        let owner = self.refresh_tokens.get(refresh_token).ok_or(BAD_REFRESH)?;
        let user = self.users.get(owner).ok_or(BAD_REFRESH)?;
        if !user.active {
            return Err(INACTIVE_USER);
        }
        Ok(user.username.clone())
    }

    /// The authorization-code grant of the web server flow: the code's user, who must still
    /// be active.
    pub fn authorization_code(
        &mut self,
        client_id: &str,
        secret: Option<&str>,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Granted {
        self.check_client(client_id, secret)?;
        let username = self
            .web
            .redeem(code, client_id, redirect_uri, verifier, Utc::now())?;
        let user = self.users.get(&username).ok_or(UNKNOWN_USER)?;
        if !user.active {
            return Err(INACTIVE_USER);
        }
        Ok(username)
    }

    /// Answers `GET /services/oauth2/authorize`.
    pub fn authorize(&mut self, request: &AuthorizeRequest) -> AuthorizePage {
        let users = &self.users;
        let can_sign_in = |username: &str| users.get(username).is_some_and(|u| u.active);
        let code = format!("aPrx{}", random_string(80));
        self.web
            .authorize(&self.consumer_key, request, can_sign_in, code, Utc::now())
    }

    fn check_client(&self, client_id: &str, secret: Option<&str>) -> Result<(), Refusal> {
        if client_id != self.consumer_key {
            return Err(BAD_CLIENT_ID);
        }
        match secret {
            Some(secret) if secret != self.consumer_secret => Err(BAD_SECRET),
            _ => Ok(()),
        }
    }

    /// The user a JWT names, if it may have a session.
    fn authorizing_user(&self, username: &str) -> Granted {
        let user = self.users.get(username).ok_or(UNKNOWN_USER)?;
        if !user.active {
            return Err(INACTIVE_USER);
        }
        if !user.approved {
            return Err(if self.admin_approved_only {
                NOT_ADMIN_APPROVED
            } else {
                NOT_APPROVED
            });
        }
        Ok(user.username.clone())
    }
}

/// Appends the 3-character case checksum that makes a 15-character id 18 characters long.
pub fn with_checksum(id15: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let mut id = id15.to_owned();
    for chunk in id15.as_bytes().chunks(5) {
        let mut bits = 0;
        for (position, byte) in chunk.iter().enumerate() {
            if byte.is_ascii_uppercase() {
                bits |= 1 << position;
            }
        }
        id.push(ALPHABET[bits] as char);
    }
    id
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The form of `POST /services/oauth2/token`, all grants together.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    assertion: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
}

/// `POST /services/oauth2/token` on `host`.
pub fn token(shared: &Arc<Shared>, host: Host, form: TokenForm) -> Response {
    let mut state = shared.lock();
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    let granted = match form.grant_type.as_deref() {
        Some(JWT_BEARER_GRANT) => state.oauth.jwt_bearer(&field(&form.assertion)),
        Some("client_credentials") => state.oauth.client_credentials(
            host,
            &field(&form.client_id),
            &field(&form.client_secret),
        ),
        Some("refresh_token") => state.oauth.refresh(
            &field(&form.client_id),
            form.client_secret.as_deref(),
            &field(&form.refresh_token),
        ),
        Some("authorization_code") => state.oauth.authorization_code(
            &field(&form.client_id),
            form.client_secret.as_deref(),
            &field(&form.code),
            &field(&form.redirect_uri),
            form.code_verifier.as_deref(),
        ),
        _ => Err(BAD_GRANT_TYPE),
    };
    let username = match granted {
        Ok(username) => username,
        Err(refusal) => {
            return json_response(
                refusal.status,
                &json!({"error": refusal.error, "error_description": refusal.description}),
            );
        }
    };
    // The web server flow leaves a refresh token (the app's scopes include refresh_token);
    // a refresh grant's session belongs to the token it used.
    let refresh_token = match form.grant_type.as_deref() {
        Some("refresh_token") => Some(field(&form.refresh_token)),
        Some("authorization_code") => Some(state.oauth.issue_refresh_token(&username)),
        _ => None,
    };
    let access_token = state
        .oauth
        .issue_access_token(&username, refresh_token.as_deref());
    let user_id = state.oauth.user(&username).map(|u| u.id.clone());
    let mut body = json!({
        "access_token": access_token,
        "instance_url": shared.my_domain_url(),
        "id": format!("{}/id/{}/{}", shared.host_url(host), state.oauth.org_id, user_id.unwrap_or_default()),
        "token_type": "Bearer",
        "issued_at": Utc::now().timestamp_millis().to_string(),
        "signature": random_string(44),
    });
    if form.grant_type.as_deref() == Some("authorization_code") {
        body["refresh_token"] = json!(refresh_token);
        body["scope"] = json!("api refresh_token");
    }
    json_response(StatusCode::OK, &body)
}

/// `GET /services/oauth2/authorize`: a redirect to the callback, an error page, or the login
/// page (see [`super::authorize`]).
pub fn authorize(shared: &Arc<Shared>, query: Option<&str>) -> Response {
    let params: HashMap<String, String> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let request = AuthorizeRequest {
        response_type: param("response_type"),
        client_id: param("client_id"),
        redirect_uri: param("redirect_uri"),
        state: param("state"),
        code_challenge: param("code_challenge"),
        code_challenge_method: param("code_challenge_method"),
    };
    let page = shared.lock().oauth.authorize(&request);
    let html = |status: StatusCode, text: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!("<!doctype html><title>Salesforce</title><p>{text}</p>"),
        )
            .into_response()
    };
    match page {
        AuthorizePage::Redirect(to) => {
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        AuthorizePage::Error { error, description } => html(
            StatusCode::BAD_REQUEST,
            format!("error={error}&amp;error_description={description}"),
        ),
        AuthorizePage::Login => html(
            StatusCode::OK,
            "Login | Salesforce (simulator): nobody signs in here; a test chooses who does".into(),
        ),
    }
}

/// The form of `POST /services/oauth2/revoke`.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
}

/// `POST /services/oauth2/revoke`: 200 with no body, or Salesforce's 400 for a token it does
/// not know (or no longer knows).
pub fn revoke(shared: &Arc<Shared>, form: RevokeForm) -> Response {
    let mut state = shared.lock();
    if state
        .oauth
        .revoke(form.token.as_deref().unwrap_or_default())
    {
        return StatusCode::OK.into_response();
    }
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "unsupported_token_type", "error_description": "this token type is not supported"}),
    )
}

/// `GET /services/oauth2/userinfo`.
pub fn userinfo(shared: &Arc<Shared>, host: Host, headers: &HeaderMap) -> Response {
    let state = shared.lock();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let Some(user) = state.oauth.session_user(token) else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        );
    };
    let org = &state.oauth.org_id;
    let instance = shared.my_domain_url();
    let body: Value = json!({
        "sub": format!("{}/id/{org}/{}", shared.host_url(host), user.id),
        "user_id": user.id,
        "organization_id": org,
        "preferred_username": user.username,
        "email": user.username,
        "email_verified": true,
        "active": user.active,
        "user_type": "STANDARD",
        "urls": {
            "rest": format!("{instance}/services/data/v{{version}}/"),
            "sobjects": format!("{instance}/services/data/v{{version}}/sobjects/"),
            "query": format!("{instance}/services/data/v{{version}}/query/"),
        },
    });
    json_response(StatusCode::OK, &body)
}

/// Axum handlers, one per host.
pub mod handlers {
    use super::*;

    pub async fn token_login(
        State(shared): State<Arc<Shared>>,
        Form(form): Form<TokenForm>,
    ) -> Response {
        token(&shared, Host::Login, form)
    }

    pub async fn token_my_domain(
        State(shared): State<Arc<Shared>>,
        Form(form): Form<TokenForm>,
    ) -> Response {
        token(&shared, Host::MyDomain, form)
    }

    pub async fn authorize(
        State(shared): State<Arc<Shared>>,
        axum::extract::RawQuery(query): axum::extract::RawQuery,
    ) -> Response {
        super::authorize(&shared, query.as_deref())
    }

    pub async fn revoke(
        State(shared): State<Arc<Shared>>,
        Form(form): Form<RevokeForm>,
    ) -> Response {
        super::revoke(&shared, form)
    }

    pub async fn userinfo_login(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
        userinfo(&shared, Host::Login, &headers)
    }

    pub async fn userinfo_my_domain(
        State(shared): State<Arc<Shared>>,
        headers: HeaderMap,
    ) -> Response {
        userinfo(&shared, Host::MyDomain, &headers)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    // Throwaway test keys; see tests/fixtures/salesforce_jwt_keys.md.
    const PRIVATE_KEY: &str = include_str!("../../../tests/fixtures/salesforce_jwt_test_key.pem");
    const PUBLIC_KEY: &str =
        include_str!("../../../tests/fixtures/salesforce_jwt_test_key_pub.pem");
    const AUDIENCE: &str = "http://login.sim";

    fn state() -> OAuthState {
        let mut state = OAuthState::new(
            with_checksum("00DSIM000000001"),
            "key".to_owned(),
            "secret".to_owned(),
            PUBLIC_KEY,
            AUDIENCE.to_owned(),
        )
        .expect("public key");
        state.add_user("a@x.example");
        state
    }

    /// An assertion for `a@x.example` expiring `exp_offset` seconds from now.
    fn assertion(exp_offset: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims =
            json!({"iss": "key", "sub": "a@x.example", "aud": AUDIENCE, "exp": now + exp_offset});
        let key = EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
    }

    #[test]
    fn an_app_without_a_certificate_refuses_every_assertion() {
        let state = OAuthState::new(
            "00D000000000001".into(),
            "key".into(),
            "secret".into(),
            "",
            AUDIENCE.into(),
        )
        .unwrap();
        assert_eq!(state.jwt_bearer(&assertion(120)), Err(INVALID_ASSERTION));
    }

    #[test]
    fn expiry_is_checked_with_three_minutes_of_skew() {
        let state = state();
        assert_eq!(
            state.jwt_bearer(&assertion(120)),
            Ok("a@x.example".to_owned())
        );
        assert_eq!(
            state.jwt_bearer(&assertion(-60)),
            Ok("a@x.example".to_owned())
        );
        assert_eq!(state.jwt_bearer(&assertion(-600)), Err(INVALID_ASSERTION));
        assert_eq!(state.jwt_bearer("not.a.jwt"), Err(INVALID_ASSERTION));
    }

    #[test]
    fn revoking_a_refresh_token_ends_the_sessions_it_gave_and_only_those() {
        let mut state = state();
        state.add_user("a@x.example");
        let refresh = state.issue_refresh_token("a@x.example");
        let from_refresh = state.issue_access_token("a@x.example", Some(&refresh));
        let other = state.issue_access_token("a@x.example", None);
        assert!(state.revoke(&refresh));
        assert!(state.session_user(&from_refresh).is_none());
        assert!(state.session_user(&other).is_some(), "a JWT session stays");
        assert_eq!(state.refresh("key", None, &refresh), Err(BAD_REFRESH));
        assert!(!state.revoke(&refresh), "already revoked");
        assert!(state.revoke(&other));
        assert!(state.session_user(&other).is_none());
        let kinds: Vec<&str> = state.revocations().iter().map(|r| r.kind).collect();
        assert_eq!(kinds, ["refresh", "access"]);
        assert!(
            state
                .revocations()
                .iter()
                .all(|r| r.username == "a@x.example")
        );
    }

    #[test]
    fn refresh_tokens_follow_the_user() {
        let mut state = state();
        let token = state.issue_refresh_token("a@x.example");
        assert!(state.refresh("key", None, &token).is_ok());
        assert_eq!(state.refresh("key", Some("wrong"), &token), Err(BAD_SECRET));
        assert_eq!(state.refresh("other", None, &token), Err(BAD_CLIENT_ID));
        state.deactivate_user("a@x.example");
        assert_eq!(state.refresh("key", None, &token), Err(INACTIVE_USER));
        state.set_approved("a@x.example", false);
        assert_eq!(state.refresh("key", None, &token), Err(BAD_REFRESH));
    }

    #[test]
    fn access_tokens_carry_the_org_prefix_and_end_with_deactivation() {
        let mut state = state();
        let token = state.issue_access_token("a@x.example", None);
        assert!(token.starts_with("00DSIM000000001!"));
        assert!(state.session_user(&token).is_some());
        state.deactivate_user("a@x.example");
        assert!(state.session_user(&token).is_none());
    }

    #[test]
    fn checksum_marks_upper_case_positions() {
        // One letter per 5-character chunk, bit i set when character i is upper case.
        assert_eq!(with_checksum("005000000000001"), "005000000000001AAA");
        assert_eq!(with_checksum("00D5e000000Abcd"), "00D5e000000AbcdEAC");
    }
}
