//! OAuth for Salesforce: getting a session, reading who it belongs to, and saying why it failed.
//!
//! usersync supports three ways in (docs/subscriber.md, "Pointing it at a real org"): the JWT
//! bearer flow (consumer key, private key, username; changing the username switches the
//! authorizing user), the client credentials flow (which only works on the org's My Domain host),
//! and a refresh token stored by the web authorization-code flow. All three end at the same token
//! endpoint and give the same [`SalesforceSession`]: the access token, the instance URL every
//! later call goes to, and the org and user ids read from the identity URL — the org id is the
//! `tenantid` every Pub/Sub call needs.
//!
//! When the token endpoint refuses, the integration stops until an admin acts, and the admin
//! needs to know *what* to do. Salesforce says it only through a pair of strings
//! (`error`, `error_description`), so [`classify`] maps them to a [`DisconnectReason`] with one
//! table, [`TOKEN_ERRORS`], built from the bodies listed in docs/salesforce.md
//! ("OAuth: flows and error bodies"). That table is the only place these bodies are given a
//! meaning: [`token_failure`] keeps the row's reason (and hint) on the error, and the error's
//! verdict for its connection (`connection::ConnectionFailure`, implemented here beside the
//! error) is that reason. Every row is tested once, with the exact body, on both the error and
//! its verdict; a body no row knows is `other` and is shown as it came.
//!
//! Secrets (private key, client secret, refresh token, access token) are held in [`Secret`],
//! whose `Debug` prints a short fingerprint; nothing here formats a secret into a message.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};

use crate::connection::{ConnectionFailure, Verdict};
use crate::endpoint::body::{BodyError, OAUTH_ANSWER_CAP, read_capped_text};
use crate::model::salesforce_id::{SalesforceId, SalesforceIdError};

/// How far ahead of now a JWT assertion expires. Salesforce tolerates about three minutes of
/// clock skew, so a short lifetime is enough and limits the damage of a leaked assertion.
pub const JWT_LIFETIME: Duration = Duration::from_secs(180);

/// The production login host, the JWT audience for production orgs.
pub const LOGIN_URL: &str = "https://login.salesforce.com";
/// The sandbox login host, the JWT audience for sandboxes.
pub const TEST_LOGIN_URL: &str = "https://test.salesforce.com";

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A secret string: usable through [`Secret::expose`], never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible tag, so two secrets can be told apart in a log.
    pub fn fingerprint(&self) -> String {
        if self.0.is_empty() {
            return "<empty>".to_owned();
        }
        let mut hasher = DefaultHasher::new();
        self.0.hash(&mut hasher);
        format!("…{:04x}", hasher.finish() & 0xffff)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

/// What usersync holds to get a Salesforce session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SalesforceCredentials {
    /// JWT bearer flow: an assertion signed with the private key whose certificate is uploaded
    /// to the connected app. The user must be pre-authorized (or have approved the app).
    JwtBearer {
        /// `https://login.salesforce.com`, `https://test.salesforce.com` or an Experience
        /// Cloud site URL: both where the token is asked for and the assertion's audience.
        login_url: String,
        consumer_key: String,
        /// The Salesforce username the session is for: the authorizing user.
        username: String,
        /// PEM, PKCS#1 or PKCS#8.
        private_key_pem: Secret,
    },
    /// Client credentials flow: the session belongs to the connected app's run-as user.
    ClientCredentials {
        /// `https://<MyDomain>.my.salesforce.com`; the login hosts refuse this flow.
        my_domain_url: String,
        client_id: String,
        client_secret: Secret,
    },
    /// A refresh token issued by the web authorization-code flow.
    RefreshToken {
        login_url: String,
        client_id: String,
        client_secret: Option<Secret>,
        refresh_token: Secret,
    },
}

impl SalesforceCredentials {
    /// The flow's name as admins see it.
    pub fn flow(&self) -> &'static str {
        match self {
            SalesforceCredentials::JwtBearer { .. } => "JWT bearer",
            SalesforceCredentials::ClientCredentials { .. } => "client credentials",
            SalesforceCredentials::RefreshToken { .. } => "refresh token",
        }
    }

    /// The host whose token endpoint this flow uses.
    pub(crate) fn host(&self) -> &str {
        match self {
            SalesforceCredentials::JwtBearer { login_url, .. }
            | SalesforceCredentials::RefreshToken { login_url, .. } => login_url,
            SalesforceCredentials::ClientCredentials { my_domain_url, .. } => my_domain_url,
        }
    }
}

/// An authenticated session: where to call, with what, on whose behalf.
#[derive(Clone, PartialEq, Eq)]
pub struct SalesforceSession {
    pub access_token: Secret,
    /// Scheme and host (no trailing slash) for REST calls and the `instanceurl` gRPC header.
    pub instance_url: String,
    /// The identity URL, `…/id/<org id>/<user id>`.
    pub identity_url: String,
    pub org_id: SalesforceId,
    pub user_id: SalesforceId,
}

impl fmt::Debug for SalesforceSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceSession")
            .field("access_token", &self.access_token)
            .field("instance_url", &self.instance_url)
            .field("identity_url", &self.identity_url)
            .field("org_id", &self.org_id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// Who a session belongs to, as `/services/oauth2/userinfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: SalesforceId,
    pub organization_id: SalesforceId,
    pub preferred_username: String,
    pub active: bool,
}

pub use crate::connection::DisconnectReason;

/// What the client was doing when something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOperation {
    /// Asking the token endpoint for a session with the named flow.
    ObtainToken {
        flow: &'static str,
    },
    ReadUserinfo,
}

impl fmt::Display for AuthOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthOperation::ObtainToken { flow } => {
                write!(f, "obtaining a Salesforce session ({flow} flow)")
            }
            AuthOperation::ReadUserinfo => f.write_str("reading the Salesforce userinfo"),
        }
    }
}

/// A Salesforce authentication failure.
#[derive(Debug, thiserror::Error)]
pub enum SalesforceAuthError {
    /// The token endpoint refused with an OAuth error body.
    #[error("while {operation}: Salesforce refused: {error}: {description} ({reason}){}", hint_suffix(.hint))]
    Token {
        operation: AuthOperation,
        status: u16,
        error: String,
        description: String,
        reason: DisconnectReason,
        /// For refusals caused by the setup rather than the credentials: what to fix.
        hint: Option<&'static str>,
    },
    /// The userinfo endpoint answered 401: the access token is expired or revoked.
    #[error("while {operation}: the access token was refused (HTTP 401)")]
    Unauthorized { operation: AuthOperation },
    /// An answer that is neither a success nor an OAuth error body (a 5xx, a proxy page).
    #[error("while {operation}: Salesforce answered HTTP {status}: {body}")]
    Status {
        operation: AuthOperation,
        status: u16,
        body: String,
    },
    #[error("while {operation}: network error: {source}")]
    Network {
        operation: AuthOperation,
        #[source]
        source: reqwest::Error,
    },
    #[error("while {operation}: unexpected answer: {detail}")]
    Decode {
        operation: AuthOperation,
        detail: String,
    },
    /// The private key could not be used to sign (not RSA, not PEM).
    #[error("while {operation}: the private key cannot sign a JWT: {detail}")]
    InvalidKey {
        operation: AuthOperation,
        detail: String,
    },
}

fn hint_suffix(hint: &Option<&'static str>) -> String {
    hint.map(|hint| format!("; {hint}")).unwrap_or_default()
}

impl SalesforceAuthError {
    /// The reason to disconnect with, or `None` when the failure is transient (network, 5xx,
    /// 429) and retrying may help.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match self {
            SalesforceAuthError::Token { reason, .. } => Some(*reason),
            SalesforceAuthError::Unauthorized { .. } => Some(DisconnectReason::CredentialsChanged),
            SalesforceAuthError::Status { status, .. } => {
                (*status != 429 && *status < 500).then_some(DisconnectReason::Other)
            }
            SalesforceAuthError::Network { .. } => None,
            SalesforceAuthError::Decode { .. } => Some(DisconnectReason::Other),
            SalesforceAuthError::InvalidKey { .. } => Some(DisconnectReason::CredentialsChanged),
        }
    }
}

/// The verdict is the reason above: a refusal's comes from its row of [`TOKEN_ERRORS`], so the
/// connection is told exactly what the classification found.
impl ConnectionFailure for SalesforceAuthError {
    fn verdict(&self) -> Verdict {
        Verdict::from_reason(self.disconnect_reason())
    }
}

/// One row of the token-error table: an `error` code, optionally narrowed by a phrase the
/// `error_description` contains (both compared case-insensitively).
#[derive(Debug, Clone, Copy)]
pub struct TokenErrorRule {
    pub error: &'static str,
    pub description: Option<&'static str>,
    pub reason: DisconnectReason,
    pub hint: Option<&'static str>,
}

const fn rule(
    error: &'static str,
    description: Option<&'static str>,
    reason: DisconnectReason,
) -> TokenErrorRule {
    TokenErrorRule {
        error,
        description,
        reason,
        hint: None,
    }
}

const WRONG_DOMAIN_HINT: &str = "the client credentials flow works only on the org's My Domain host (https://<MyDomain>.my.salesforce.com), not on login.salesforce.com or test.salesforce.com: fix the configured URL";
const NO_RUN_AS_HINT: &str = "the connected app has no run-as user for the client credentials flow: assign one in its policies";

/// The classification table, first match wins (docs/operations.md, "Disconnection reasons and what
/// to do").
pub static TOKEN_ERRORS: &[TokenErrorRule] = &[
    rule(
        "invalid_grant",
        Some("expired access/refresh token"),
        DisconnectReason::CredentialsChanged,
    ),
    rule(
        "invalid_grant",
        Some("inactive user"),
        DisconnectReason::UserInactive,
    ),
    rule("inactive_user", None, DisconnectReason::UserInactive),
    rule(
        "invalid_grant",
        Some("user hasn't approved this consumer"),
        DisconnectReason::NotApproved,
    ),
    rule("invalid_app_access", None, DisconnectReason::NotApproved),
    rule(
        "invalid_grant",
        Some("invalid assertion"),
        DisconnectReason::CredentialsChanged,
    ),
    rule(
        "invalid_grant",
        Some("authentication failure"),
        DisconnectReason::CredentialsChanged,
    ),
    rule(
        "invalid_grant",
        Some("audience is invalid"),
        DisconnectReason::CredentialsChanged,
    ),
    rule(
        "invalid_grant",
        Some("audience validation failed"),
        DisconnectReason::CredentialsChanged,
    ),
    TokenErrorRule {
        hint: Some(WRONG_DOMAIN_HINT),
        ..rule(
            "invalid_grant",
            Some("request not supported on this domain"),
            DisconnectReason::Other,
        )
    },
    TokenErrorRule {
        hint: Some(NO_RUN_AS_HINT),
        ..rule(
            "invalid_grant",
            Some("no client credentials user enabled"),
            DisconnectReason::Other,
        )
    },
    rule(
        "invalid_client_id",
        None,
        DisconnectReason::CredentialsChanged,
    ),
    rule("invalid_client", None, DisconnectReason::CredentialsChanged),
];

/// The row of [`TOKEN_ERRORS`] an OAuth error body matches, if any.
pub fn classify(error: &str, description: &str) -> Option<&'static TokenErrorRule> {
    let description = description.to_ascii_lowercase();
    TOKEN_ERRORS.iter().find(|row| {
        row.error.eq_ignore_ascii_case(error)
            && row
                .description
                .is_none_or(|phrase| description.contains(&phrase.to_ascii_lowercase()))
    })
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

/// The signed RS256 assertion of the JWT bearer flow, expiring [`JWT_LIFETIME`] after `now`.
pub fn jwt_assertion(
    consumer_key: &str,
    username: &str,
    audience: &str,
    private_key_pem: &Secret,
    now: SystemTime,
) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_rsa_pem(private_key_pem.expose().as_bytes())?;
    let exp = (now + JWT_LIFETIME)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = JwtClaims {
        iss: consumer_key,
        sub: username,
        aud: audience.trim_end_matches('/'),
        exp,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
}

/// `<base>/services/oauth2/<endpoint>`, whether or not `base` ends with a slash.
fn oauth_url(base: &str, endpoint: &str) -> String {
    format!("{}/services/oauth2/{endpoint}", base.trim_end_matches('/'))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
    id: String,
    /// Only the web server flow (and only with the `refresh_token` scope) leaves one.
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Asks the token endpoint for a session with `creds`.
pub async fn obtain_token(
    http: &reqwest::Client,
    creds: &SalesforceCredentials,
) -> Result<SalesforceSession, SalesforceAuthError> {
    let operation = AuthOperation::ObtainToken { flow: creds.flow() };
    let form: Vec<(&str, String)> = match creds {
        SalesforceCredentials::JwtBearer {
            login_url,
            consumer_key,
            username,
            private_key_pem,
        } => {
            let assertion = jwt_assertion(
                consumer_key,
                username,
                login_url,
                private_key_pem,
                SystemTime::now(),
            )
            .map_err(|error| SalesforceAuthError::InvalidKey {
                operation,
                detail: error.to_string(),
            })?;
            vec![
                ("grant_type", JWT_BEARER_GRANT.to_owned()),
                ("assertion", assertion),
            ]
        }
        SalesforceCredentials::ClientCredentials {
            client_id,
            client_secret,
            ..
        } => vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.expose().to_owned()),
        ],
        SalesforceCredentials::RefreshToken {
            client_id,
            client_secret,
            refresh_token,
            ..
        } => {
            let mut form = vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh_token.expose().to_owned()),
                ("client_id", client_id.clone()),
            ];
            if let Some(secret) = client_secret {
                form.push(("client_secret", secret.expose().to_owned()));
            }
            form
        }
    };
    let (session, _) = token_call(http, creds.host(), operation, &form).await?;
    Ok(session)
}

/// The web server flow's second half: redeems the authorization `code` the browser brought
/// back (with the PKCE `code_verifier` of the request that got it) at `login_url`. The
/// session and the refresh token it leaves, which the refresh-token flow signs in with from
/// then on.
pub async fn exchange_code(
    http: &reqwest::Client,
    login_url: &str,
    client_id: &str,
    client_secret: Option<&Secret>,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<(SalesforceSession, Secret), SalesforceAuthError> {
    let operation = AuthOperation::ObtainToken {
        flow: "authorization code",
    };
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("client_id", client_id.to_owned()),
        ("redirect_uri", redirect_uri.to_owned()),
        ("code_verifier", code_verifier.to_owned()),
    ];
    if let Some(secret) = client_secret {
        form.push(("client_secret", secret.expose().to_owned()));
    }
    let (session, refresh) = token_call(http, login_url, operation, &form).await?;
    let refresh = refresh.ok_or_else(|| SalesforceAuthError::Decode {
        operation,
        detail: "the token response has no refresh_token: the connected app's OAuth scopes \
                 must include refresh_token"
            .to_owned(),
    })?;
    Ok((session, refresh))
}

/// One request to `host`'s token endpoint: the session, and the refresh token if one came.
async fn token_call(
    http: &reqwest::Client,
    host: &str,
    operation: AuthOperation,
    form: &[(&str, String)],
) -> Result<(SalesforceSession, Option<Secret>), SalesforceAuthError> {
    let response = http
        .post(oauth_url(host, "token"))
        .header(ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|source| SalesforceAuthError::Network { operation, source })?;
    let status = response.status();
    let body = read_answer(response, operation).await?;
    if !status.is_success() {
        return Err(token_failure(operation, status, &body));
    }
    parse_token_response(&body, host)
        .map_err(|detail| SalesforceAuthError::Decode { operation, detail })
}

/// Reads a successful token response from the token endpoint of `host`: the session, and the
/// refresh token if a non-empty one came. The access token will be sent to `instance_url`, so
/// that must be an http(s) URL with a host, no credentials, query or fragment, and https when
/// `host` is (docs/security.md, "Provider input"). `issued_at` and `signature` are not read:
/// nothing depends on them. Pure; an error names the member and never repeats a token.
pub fn parse_token_response(
    body: &str,
    host: &str,
) -> Result<(SalesforceSession, Option<Secret>), String> {
    let token: TokenResponse =
        serde_json::from_str(body).map_err(|error| format!("token response: {error}"))?;
    if token.access_token.trim().is_empty() {
        return Err("token response: access_token is empty".to_owned());
    }
    let instance_url = checked_instance_url(&token.instance_url, host)?;
    let (org_id, user_id) = ids_from_identity_url(&token.id)?;
    let session = SalesforceSession {
        access_token: Secret(token.access_token),
        instance_url,
        identity_url: token.id,
        org_id,
        user_id,
    };
    let refresh = token
        .refresh_token
        .filter(|refresh| !refresh.trim().is_empty())
        .map(Secret);
    Ok((session, refresh))
}

/// `instance_url` without its trailing slash, if it is where an access token may go.
fn checked_instance_url(instance_url: &str, host: &str) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "token response: instance_url {instance_url:?} {why}"
        ))
    };
    let Ok(parsed) = url::Url::parse(instance_url) else {
        return refuse("is not a URL");
    };
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none_or(str::is_empty) {
        return refuse("is not an http(s) URL with a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return refuse("carries credentials");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return refuse("carries a query or a fragment");
    }
    let host_is_https = url::Url::parse(host).is_ok_and(|host| host.scheme() == "https");
    if host_is_https && parsed.scheme() != "https" {
        return refuse("is not https although the token endpoint is");
    }
    Ok(instance_url.trim_end_matches('/').to_owned())
}

/// A revocation that did not happen (`kind` names the token: `access token`, `refresh
/// token`; never its value).
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("while revoking the Salesforce {kind}: {source}")]
    Network {
        kind: &'static str,
        source: reqwest::Error,
    },
    #[error("while revoking the Salesforce {kind}: Salesforce answered {status}: {body}")]
    Refused {
        kind: &'static str,
        status: u16,
        body: String,
    },
}

/// Revokes `token` (of the `kind` named) at `host`'s `/services/oauth2/revoke`. Revoking a
/// refresh token also ends the sessions it gave. Salesforce answers 200 with no body; an
/// unknown or already revoked token is a 400 OAuth error (`unsupported_token_type`).
pub async fn revoke(
    http: &reqwest::Client,
    host: &str,
    kind: &'static str,
    token: &Secret,
) -> Result<(), RevokeError> {
    let network = |source| RevokeError::Network { kind, source };
    let response = http
        .post(oauth_url(host, "revoke"))
        .form(&[("token", token.expose())])
        .send()
        .await
        .map_err(network)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = match read_capped_text(response, OAUTH_ANSWER_CAP).await {
        Ok(body) => excerpt(&body),
        Err(BodyError::Network { source, .. }) => return Err(network(source)),
        Err(too_large @ BodyError::TooLarge { .. }) => too_large.to_string(),
    };
    Err(RevokeError::Refused {
        kind,
        status: status.as_u16(),
        body,
    })
}

/// The body of an OAuth answer, read up to [`OAUTH_ANSWER_CAP`] bytes (`endpoint::body`).
async fn read_answer(
    response: reqwest::Response,
    operation: AuthOperation,
) -> Result<String, SalesforceAuthError> {
    read_capped_text(response, OAUTH_ANSWER_CAP)
        .await
        .map_err(|error| match error {
            BodyError::Network { source, .. } => SalesforceAuthError::Network { operation, source },
            too_large @ BodyError::TooLarge { .. } => SalesforceAuthError::Decode {
                operation,
                detail: too_large.to_string(),
            },
        })
}

/// A refusal from the token endpoint, classified when it carries an OAuth error body.
pub fn token_failure(
    operation: AuthOperation,
    status: StatusCode,
    body: &str,
) -> SalesforceAuthError {
    match serde_json::from_str::<OAuthErrorBody>(body) {
        Ok(oauth) => {
            let row = classify(&oauth.error, &oauth.error_description);
            SalesforceAuthError::Token {
                operation,
                status: status.as_u16(),
                reason: row.map_or(DisconnectReason::Other, |row| row.reason),
                hint: row.and_then(|row| row.hint),
                error: oauth.error,
                description: oauth.error_description,
            }
        }
        Err(_) => SalesforceAuthError::Status {
            operation,
            status: status.as_u16(),
            body: excerpt(body),
        },
    }
}

/// At most 300 characters of a body, for an error message.
fn excerpt(body: &str) -> String {
    const LIMIT: usize = 300;
    match body.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

/// The org and user ids at the end of an identity URL, `…/id/<org id>/<user id>`.
pub fn ids_from_identity_url(url: &str) -> Result<(SalesforceId, SalesforceId), String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let (Some(user), Some(org), Some("id")) = (segments.next(), segments.next(), segments.next())
    else {
        return Err(format!(
            "identity URL {url:?} does not end in /id/<org id>/<user id>"
        ));
    };
    let parse = |raw: &str| SalesforceId::parse(raw).map_err(|e: SalesforceIdError| e.to_string());
    Ok((parse(org)?, parse(user)?))
}

#[derive(Deserialize)]
struct UserinfoBody {
    user_id: String,
    organization_id: String,
    preferred_username: String,
    active: bool,
}

/// Reads who `session` belongs to from `{instance_url}/services/oauth2/userinfo`: a cheap
/// check that the session works, needing no special permission.
pub async fn userinfo(
    http: &reqwest::Client,
    session: &SalesforceSession,
) -> Result<Identity, SalesforceAuthError> {
    let operation = AuthOperation::ReadUserinfo;
    let response = http
        .get(oauth_url(&session.instance_url, "userinfo"))
        .header(ACCEPT, "application/json")
        .bearer_auth(session.access_token.expose())
        .send()
        .await
        .map_err(|source| SalesforceAuthError::Network { operation, source })?;
    let status = response.status();
    let body = read_answer(response, operation).await?;
    if status == StatusCode::UNAUTHORIZED {
        return Err(SalesforceAuthError::Unauthorized { operation });
    }
    if !status.is_success() {
        return Err(SalesforceAuthError::Status {
            operation,
            status: status.as_u16(),
            body: excerpt(&body),
        });
    }
    parse_userinfo(&body).map_err(|detail| SalesforceAuthError::Decode { operation, detail })
}

/// Reads a userinfo body. Pure.
pub fn parse_userinfo(body: &str) -> Result<Identity, String> {
    let info: UserinfoBody =
        serde_json::from_str(body).map_err(|error| format!("userinfo: {error}"))?;
    let id = |field: &str, raw: &str| {
        SalesforceId::parse(raw).map_err(|e| format!("userinfo: {field}: {e}"))
    };
    Ok(Identity {
        user_id: id("user_id", &info.user_id)?,
        organization_id: id("organization_id", &info.organization_id)?,
        preferred_username: info.preferred_username,
        active: info.active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classifies a body exactly as the token endpoint sends it.
    fn reason_of(body: &str) -> (DisconnectReason, Option<&'static str>) {
        match token_failure(
            AuthOperation::ObtainToken { flow: "test" },
            StatusCode::BAD_REQUEST,
            body,
        ) {
            SalesforceAuthError::Token { reason, hint, .. } => (reason, hint),
            other => panic!("not a token error: {other}"),
        }
    }

    #[tokio::test]
    async fn a_token_answer_over_the_cap_is_refused_naming_the_endpoint() {
        // A refusal, so that the revocation reads its body too.
        let address =
            crate::endpoint::test_support::oversized(StatusCode::BAD_REQUEST, OAUTH_ANSWER_CAP + 1)
                .await;
        let host = format!("http://{address}");
        let refused = obtain_token(
            &reqwest::Client::new(),
            &SalesforceCredentials::ClientCredentials {
                my_domain_url: host.clone(),
                client_id: "3MVG9id".into(),
                client_secret: Secret::new("s"),
            },
        )
        .await
        .unwrap_err();
        let message = refused.to_string();
        assert!(
            matches!(refused, SalesforceAuthError::Decode { .. })
                && message.contains(&format!("{host}/services/oauth2/token"))
                && message.contains(&format!("larger than {OAUTH_ANSWER_CAP} bytes")),
            "{message}"
        );
        let refused = revoke(
            &reqwest::Client::new(),
            &host,
            "access token",
            &Secret::new("t"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(refused.contains("larger than"), "{refused}");
    }

    /// Salesforce's token endpoint (docs/operations.md): every body docs/salesforce.md lists
    /// ("OAuth: flows and error bodies"), as it comes, with the verdict its connection gets, and
    /// the hint when the row carries one.
    /// An OAuth error body is a [`SalesforceAuthError::Token`] with that hint (and no other);
    /// anything else keeps its status.
    #[test]
    fn token_endpoint_refusals_and_their_verdicts() {
        use crate::connection::DisconnectReason::*;
        const D: fn(DisconnectReason) -> Verdict = Verdict::Disconnected;
        let rows: &[(u16, &str, Verdict, Option<&str>)] = &[
            (
                400,
                r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"invalid assertion"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"authentication failure"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"inactive user"}"#,
                D(UserInactive),
                None,
            ),
            (
                400,
                r#"{"error":"inactive_user","error_description":"inactive user"}"#,
                D(UserInactive),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"user hasn't approved this consumer"}"#,
                D(NotApproved),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_app_access","error_description":"user is not admin approved to access this app"}"#,
                D(NotApproved),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_client_id","error_description":"client identifier invalid"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Audience validation failed"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"audience is invalid"}"#,
                D(CredentialsChanged),
                None,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#,
                D(Other),
                Some("My Domain"),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"no client credentials user enabled"}"#,
                D(Other),
                Some("run-as user"),
            ),
            (
                400,
                r#"{"error":"unheard_of","error_description":"something new"}"#,
                D(Other),
                None,
            ),
            (
                503,
                "<html>Service Unavailable</html>",
                Verdict::Degraded,
                None,
            ),
            (
                429,
                "<html>Too Many Requests</html>",
                Verdict::Degraded,
                None,
            ),
        ];
        for (status, body, expected, hint_phrase) in rows {
            let error = token_failure(
                AuthOperation::ObtainToken { flow: "jwt-bearer" },
                StatusCode::from_u16(*status).unwrap(),
                body,
            );
            assert_eq!(error.verdict(), *expected, "{status} {body} ({error})");
            match &error {
                SalesforceAuthError::Token { hint, .. } => match hint_phrase {
                    Some(phrase) => assert!(
                        hint.is_some_and(|hint| hint.contains(phrase)),
                        "{body}: {hint:?}"
                    ),
                    None => assert_eq!(*hint, None, "{body}"),
                },
                SalesforceAuthError::Status { .. } => {
                    assert!(body.starts_with("<html>"), "not a token error: {error}")
                }
                other => panic!("{body}: {other}"),
            }
        }
    }

    #[test]
    fn unknown_bodies_are_other_and_kept_verbatim() {
        let body =
            r#"{"error":"unsupported_grant_type","error_description":"grant type not supported"}"#;
        let error = token_failure(
            AuthOperation::ObtainToken { flow: "test" },
            StatusCode::BAD_REQUEST,
            body,
        );
        assert_eq!(error.disconnect_reason(), Some(DisconnectReason::Other));
        assert!(error.to_string().contains("grant type not supported"));
        let vague = r#"{"error":"invalid_grant","error_description":"something new"}"#;
        assert_eq!(reason_of(vague), (DisconnectReason::Other, None));
    }

    #[test]
    fn every_row_is_reachable() {
        for (index, row) in TOKEN_ERRORS.iter().enumerate() {
            let found = classify(row.error, row.description.unwrap_or("anything"))
                .and_then(|hit| TOKEN_ERRORS.iter().position(|r| std::ptr::eq(r, hit)));
            assert_eq!(
                found,
                Some(index),
                "row {index} is shadowed by an earlier row"
            );
        }
    }

    #[test]
    fn non_oauth_failures_are_transient_only_when_retrying_helps() {
        let op = AuthOperation::ObtainToken { flow: "test" };
        let gateway = token_failure(op, StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!(gateway.disconnect_reason(), None);
        let not_found = token_failure(op, StatusCode::NOT_FOUND, "nope");
        assert_eq!(not_found.disconnect_reason(), Some(DisconnectReason::Other));
    }

    const ORG: &str = "00D5e000000AbcdEAC";
    const USER: &str = "0055e000001XyzQAAS";

    fn token_body(instance_url: &str, extra: &str) -> String {
        format!(
            r#"{{"access_token":"00D!secret-access","instance_url":"{instance_url}","id":"https://login.salesforce.com/id/{ORG}/{USER}","token_type":"Bearer"{extra}}}"#
        )
    }

    #[test]
    fn a_token_response_gives_the_session_whatever_its_issued_at() {
        for issued_at in [
            r#","issued_at":"1278448832702""#,
            r#","issued_at":"99999999999999999999999999""#,
            r#","issued_at":-1"#,
            r#","issued_at":1e308"#,
            r#","issued_at":null,"signature":"not base64""#,
            "",
        ] {
            let (session, refresh) = parse_token_response(
                &token_body("https://acme.my.salesforce.com/", issued_at),
                LOGIN_URL,
            )
            .unwrap_or_else(|e| panic!("{issued_at}: {e}"));
            assert_eq!(session.instance_url, "https://acme.my.salesforce.com");
            assert_eq!(session.org_id.as_str(), ORG);
            assert_eq!(session.user_id.as_str(), USER);
            assert_eq!(session.access_token.expose(), "00D!secret-access");
            assert_eq!(refresh, None);
        }
        let (_, refresh) = parse_token_response(
            &token_body(
                "https://acme.my.salesforce.com",
                r#","refresh_token":"5Aep861""#,
            ),
            LOGIN_URL,
        )
        .unwrap();
        assert_eq!(refresh.unwrap().expose(), "5Aep861");
        let (_, empty) = parse_token_response(
            &token_body("https://acme.my.salesforce.com", r#","refresh_token":"""#),
            LOGIN_URL,
        )
        .unwrap();
        assert_eq!(empty, None, "an empty refresh token is none");
    }

    #[test]
    fn a_token_response_must_name_an_instance_the_token_may_go_to() {
        for (instance_url, why) in [
            ("acme.my.salesforce.com", "is not a URL"),
            (
                "ftp://acme.my.salesforce.com",
                "is not an http(s) URL with a host",
            ),
            ("https://user:pw@evil.example", "carries credentials"),
            (
                "https://acme.my.salesforce.com?x=1",
                "carries a query or a fragment",
            ),
            (
                "http://acme.my.salesforce.com",
                "is not https although the token endpoint is",
            ),
        ] {
            let error = parse_token_response(&token_body(instance_url, ""), LOGIN_URL)
                .expect_err(instance_url);
            assert!(error.contains(why), "{instance_url}: {error}");
            assert!(!error.contains("secret-access"), "{error}");
        }
        // A plain-HTTP token endpoint (the simulator on loopback) may name a plain-HTTP instance.
        let (session, _) = parse_token_response(
            &token_body("http://127.0.0.1:8080/", ""),
            "http://127.0.0.1:8080",
        )
        .unwrap();
        assert_eq!(session.instance_url, "http://127.0.0.1:8080");
        let empty = parse_token_response(
            &token_body("https://acme.my.salesforce.com", "").replace("00D!secret-access", " "),
            LOGIN_URL,
        );
        assert_eq!(empty.unwrap_err(), "token response: access_token is empty");
    }

    #[test]
    fn a_userinfo_body_gives_the_identity_or_names_the_bad_member() {
        let identity = parse_userinfo(&format!(
            r#"{{"user_id":"{USER}","organization_id":"{ORG}","preferred_username":"int@acme.example","active":true,"utcOffset":-28800000}}"#
        ))
        .unwrap();
        assert_eq!(identity.user_id.as_str(), USER);
        assert!(identity.active);
        let error = parse_userinfo(&format!(
            r#"{{"user_id":"nope","organization_id":"{ORG}","preferred_username":"u","active":true}}"#
        ))
        .unwrap_err();
        assert!(error.starts_with("userinfo: user_id:"), "{error}");
    }

    #[test]
    fn identity_url_gives_org_and_user() {
        let (org, user) = ids_from_identity_url(
            "https://login.salesforce.com/id/00D5e000000Abcd/0055e000001XyzQ",
        )
        .unwrap();
        assert_eq!(org.key_prefix(), "00D");
        assert!(user.is_user());
        assert_eq!(org.as_str().len(), 18);
        assert!(ids_from_identity_url("https://login.salesforce.com/id/00D5e000000Abcd").is_err());
        assert!(ids_from_identity_url("https://x/id/not-an-id/0055e000001XyzQ").is_err());
    }

    #[test]
    fn jwt_assertion_carries_the_salesforce_claims() {
        // Throwaway test keys; see tests/fixtures/salesforce_jwt_keys.md.
        let private = Secret::new(include_str!(
            "../../tests/fixtures/salesforce_jwt_test_key.pem"
        ));
        let public = include_str!("../../tests/fixtures/salesforce_jwt_test_key_pub.pem");
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let token = jwt_assertion(
            "3MVG9key",
            "a@x.example",
            "https://test.salesforce.com/",
            &private,
            now,
        )
        .expect("signs");

        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_audience(&[TEST_LOGIN_URL]);
        let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
            .expect("verifies with the public key");
        assert_eq!(decoded.header.alg, Algorithm::RS256);
        assert_eq!(
            decoded.claims,
            serde_json::json!({
                "iss": "3MVG9key",
                "sub": "a@x.example",
                "aud": TEST_LOGIN_URL,
                "exp": 2_000_000_180u64,
            })
        );
        assert!(jwt_assertion("k", "u", LOGIN_URL, &Secret::new("not a key"), now).is_err());
    }

    #[test]
    fn secrets_print_as_fingerprints() {
        let creds = SalesforceCredentials::RefreshToken {
            login_url: LOGIN_URL.to_owned(),
            client_id: "client".to_owned(),
            client_secret: Some(Secret::new("very-secret-value")),
            refresh_token: Secret::new("refresh-token-value"),
        };
        let printed = format!("{creds:?}");
        assert!(!printed.contains("very-secret-value"));
        assert!(!printed.contains("refresh-token-value"));
        assert!(printed.contains("client"));
    }
}
