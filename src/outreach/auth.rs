//! OAuth tokens for Outreach: minting, refreshing, persisting, and never minting too often.
//!
//! Outreach has only the authorization-code flow, two-hour access tokens and refresh tokens that
//! are re-issued on every refresh. Three rules shape this module:
//!
//! - **Persist the newest refresh token.** Every mint goes through the [`TokenStore`] before it
//!   is used, so a restart resumes with a token Outreach still honours. The refresh token is read
//!   from the response first and saved before anything else about the response is judged
//!   ([`read_token_response`]): Outreach has already retired the one redeemed, so a new one that
//!   is not saved leaves nothing to sign in with.
//! - **Believe a token's lifetime within bounds.** `expires_in` is clamped to
//!   [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`] (docs/security.md, "Provider input"): no
//!   number the endpoint sends can overflow the clock or keep a dead token in use for years.
//! - **One mint per (user, app) per 60 s.** Outreach answers a faster mint with 429. The
//!   [`TokenKeeper`] remembers when it last minted and waits out the rest of the interval instead
//!   of ever minting twice inside it.
//! - **Concurrent 401s refresh once.** Refreshes are serialized by a tokio mutex and each token
//!   carries a generation number: a request whose token was already replaced by someone else's
//!   refresh just retries with the new one.
//!
//! Secrets never reach a log: [`OAuthTokens`]' `Debug` prints fingerprints, and nothing here
//! formats a token into a message.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{ACCEPT, HeaderValue};
use tokio::time::Instant;

use super::error::{Operation, OutreachError, classify_token_failure};
use super::jsonapi::ErrorBody;
use super::rate_limit::WaitAllowance;
use super::stats::{Counters, Tally};
use super::transport::{Failure, RetryPolicy, read_failure, retry_after};
use crate::connection::Side;
use crate::connection::authorization::{OutreachAuthorization, StoredAuthorizations};
use crate::endpoint::body::{OAUTH_ANSWER_CAP, read_capped};

/// A token is refreshed before use once it is this close to its expiry, so it does not expire
/// in flight.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(30);

/// The longest an access token is believed to live: a day. Outreach issues two-hour tokens; a
/// longer `expires_in` is read as this, and a token that dies sooner is refreshed on its 401.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The shortest: one minute, Outreach's mint interval, and longer than [`EXPIRY_SKEW`]. A
/// smaller `expires_in` (zero, negative) is read as this, so a token is used at least briefly
/// instead of being refreshed before every request.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// What Outreach issued: the bearer token, the token to get the next one, and when the bearer
/// token stops working (if the endpoint said).
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl OAuthTokens {
    /// True when the access token has expired at `now` (or will within [`EXPIRY_SKEW`]).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        let skew = TimeDelta::from_std(EXPIRY_SKEW).unwrap_or_default();
        self.expires_at.is_some_and(|at| at <= now + skew)
    }
}

/// A short, non-reversible tag for a secret, so two tokens can be told apart in a log.
fn fingerprint(secret: &str) -> String {
    if secret.is_empty() {
        return "<empty>".to_owned();
    }
    let mut hasher = DefaultHasher::new();
    secret.hash(&mut hasher);
    format!("…{:04x}", hasher.finish() & 0xffff)
}

impl fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("access_token", &fingerprint(&self.access_token))
            .field("refresh_token", &fingerprint(&self.refresh_token))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A failure to persist tokens.
#[derive(Debug, thiserror::Error)]
#[error("could not persist Outreach tokens: {0}")]
pub struct TokenStoreError(pub String);

/// Where minted tokens are kept across restarts.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Persists the newest tokens; called after every mint, before the tokens are used.
    async fn save(&self, tokens: &OAuthTokens) -> Result<(), TokenStoreError>;
}

/// Keeps tokens in memory: for tests and for a process that is handed its tokens at start.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    saved: Mutex<Vec<OAuthTokens>>,
}

impl MemoryTokenStore {
    pub fn new() -> MemoryTokenStore {
        MemoryTokenStore::default()
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, Vec<OAuthTokens>> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tokens saved last.
    pub fn latest(&self) -> Option<OAuthTokens> {
        self.saved().last().cloned()
    }

    /// How many times tokens were saved.
    pub fn saves(&self) -> usize {
        self.saved().len()
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn save(&self, tokens: &OAuthTokens) -> Result<(), TokenStoreError> {
        self.saved().push(tokens.clone());
        Ok(())
    }
}

/// Keeps Outreach's newest tokens in the vault: Outreach mints a new refresh token on every
/// refresh, and the one a reconnect stored must not be the one a restart falls back to. The
/// vault (`connection::authorization`) seals either side's authorization without knowing how
/// a provider rotates its tokens; that Outreach rotates them on every mint is this module's
/// knowledge, so the vault is plugged in as a token store here.
#[async_trait]
impl TokenStore for StoredAuthorizations {
    async fn save(&self, tokens: &OAuthTokens) -> Result<(), TokenStoreError> {
        let authorization = OutreachAuthorization {
            refresh_token: tokens.refresh_token.clone(),
        };
        StoredAuthorizations::save(self, Side::Outreach, &authorization)
            .await
            .map_err(|e| TokenStoreError(e.to_string()))
    }
}

/// The registered OAuth application and where its tokens come from.
#[derive(Clone)]
pub struct OAuthApp {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

impl fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthApp")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &fingerprint(&self.client_secret))
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// A grant sent to the token endpoint.
#[derive(Clone, Copy)]
enum Grant<'a> {
    AuthorizationCode(&'a str),
    RefreshToken(&'a str),
}

impl Grant<'_> {
    fn operation(&self) -> Operation {
        match self {
            Grant::AuthorizationCode(_) => Operation::ExchangeCode,
            Grant::RefreshToken(_) => Operation::RefreshToken,
        }
    }
}

/// A successful token response, read as far as it goes.
///
/// The refresh token is read first and on its own, so a response whose other members are
/// unusable still yields it: Outreach rotates refresh tokens, and the one redeemed no longer
/// works once the response is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The refresh token to use from now on: the response's own (a non-empty string), else the
    /// one redeemed; `None` for a code exchange whose response carries none.
    pub refresh_token: Option<String>,
    /// True when `refresh_token` is a new one from the response.
    pub rotated: bool,
    /// The tokens, or what is wrong with the body (no secret in the message).
    pub tokens: Result<OAuthTokens, String>,
}

impl TokenResponse {
    /// What to persist: the tokens, or, when the body was unusable but brought a new refresh
    /// token, that token with no access token (expired, so a restart mints at once).
    pub fn to_keep(&self) -> Option<OAuthTokens> {
        match (&self.tokens, &self.refresh_token) {
            (Ok(tokens), _) => Some(tokens.clone()),
            (Err(_), Some(refresh_token)) if self.rotated => Some(OAuthTokens {
                access_token: String::new(),
                refresh_token: refresh_token.clone(),
                expires_at: Some(DateTime::UNIX_EPOCH),
            }),
            (Err(_), _) => None,
        }
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field(
                "refresh_token",
                &self.refresh_token.as_deref().map(fingerprint),
            )
            .field("rotated", &self.rotated)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// The JSON type of `value`, for messages that must not repeat a member's value.
fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the body of a successful token response: `access_token`, `refresh_token` and
/// `expires_in` (seconds, clamped to [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`] from
/// `now`). `redeemed` is the refresh token the request sent, kept when the response brings no
/// new one. Pure and total: any body gives an answer, and every refusal names the member.
pub fn read_token_response(
    body: &[u8],
    redeemed: Option<&str>,
    now: DateTime<Utc>,
) -> TokenResponse {
    use serde_json::Value;
    let redeemed = redeemed.map(str::to_owned);
    let unusable = |refresh_token: Option<String>, rotated: bool, problem: String| TokenResponse {
        refresh_token,
        rotated,
        tokens: Err(problem),
    };
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return unusable(
                redeemed,
                false,
                format!("the token response is {}, not an object", json_kind(&other)),
            );
        }
        Err(e) => {
            return unusable(
                redeemed,
                false,
                format!("the token response is not JSON: {e}"),
            );
        }
    };
    let (refresh_token, rotated, refresh_problem) = match object.get("refresh_token") {
        Some(Value::String(new)) if !new.trim().is_empty() => {
            let rotated = redeemed.as_deref() != Some(new.as_str());
            (Some(new.clone()), rotated, None)
        }
        None | Some(Value::Null) | Some(Value::String(_)) => (redeemed, false, None),
        Some(other) => (
            redeemed,
            false,
            Some(format!(
                "refresh_token is {}, not a string",
                json_kind(other)
            )),
        ),
    };
    if let Some(problem) = refresh_problem {
        return unusable(refresh_token, rotated, problem);
    }
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) if !token.trim().is_empty() => token.clone(),
        Some(Value::String(_)) => {
            return unusable(refresh_token, rotated, "access_token is empty".to_owned());
        }
        None | Some(Value::Null) => {
            return unusable(
                refresh_token,
                rotated,
                "the token response has no access_token".to_owned(),
            );
        }
        Some(other) => {
            return unusable(
                refresh_token,
                rotated,
                format!("access_token is {}, not a string", json_kind(other)),
            );
        }
    };
    let lifetime = match object.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::Number(seconds)) => Some(token_lifetime(seconds)),
        Some(other) => {
            return unusable(
                refresh_token,
                rotated,
                format!(
                    "expires_in is {}, not a number of seconds",
                    json_kind(other)
                ),
            );
        }
    };
    let Some(refresh) = refresh_token.clone() else {
        return unusable(
            None,
            false,
            "the token response has no refresh_token".to_owned(),
        );
    };
    let expires_at = lifetime.and_then(|lifetime| {
        TimeDelta::from_std(lifetime)
            .ok()
            .and_then(|lifetime| now.checked_add_signed(lifetime))
    });
    TokenResponse {
        refresh_token,
        rotated,
        tokens: Ok(OAuthTokens {
            access_token,
            refresh_token: refresh,
            expires_at,
        }),
    }
}

/// `expires_in` as a lifetime within [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`]. Clamped
/// as a float first: `TimeDelta::seconds` panics past `i64::MAX / 1000`, and
/// `Duration::from_secs_f64` past `u64::MAX`.
fn token_lifetime(seconds: &serde_json::Number) -> Duration {
    let seconds = seconds.as_f64().unwrap_or(f64::MAX);
    let clamped = seconds.clamp(
        MIN_TOKEN_LIFETIME.as_secs_f64(),
        MAX_TOKEN_LIFETIME.as_secs_f64(),
    );
    Duration::try_from_secs_f64(clamped).unwrap_or(MAX_TOKEN_LIFETIME)
}

/// One request to the token endpoint (form-encoded, as Outreach documents). A success is
/// handed back as read, usable or not, so the caller can keep a new refresh token first.
async fn token_request(
    http: &reqwest::Client,
    app: &OAuthApp,
    grant: Grant<'_>,
    tally: &Tally<'_>,
) -> Result<TokenResponse, Failure> {
    let mut form: Vec<(&str, &str)> = vec![
        ("client_id", &app.client_id),
        ("client_secret", &app.client_secret),
        ("redirect_uri", &app.redirect_uri),
    ];
    let previous_refresh = match grant {
        Grant::AuthorizationCode(code) => {
            form.extend([("grant_type", "authorization_code"), ("code", code)]);
            None
        }
        Grant::RefreshToken(token) => {
            form.extend([("grant_type", "refresh_token"), ("refresh_token", token)]);
            Some(token)
        }
    };
    tally.request();
    let response = http
        .post(app.token_url.clone())
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .form(&form)
        .send()
        .await
        .map_err(Failure::Network)?;
    let status = response.status();
    let headers = response.headers().clone();
    let operation = grant.operation();
    let body = read_capped(response, OAUTH_ANSWER_CAP)
        .await
        .map_err(|error| read_failure(error, &operation))?;
    if status.is_success() {
        return Ok(read_token_response(&body, previous_refresh, Utc::now()));
    }
    let body = ErrorBody::parse(&body);
    let retry_after = retry_after(&headers);
    Err(match status.as_u16() {
        429 => Failure::RateLimited { body, retry_after },
        s if s >= 500 => Failure::Server {
            status,
            body,
            retry_after,
        },
        _ => Failure::Final(classify_token_failure(
            operation,
            status,
            &body,
            retry_after,
        )),
    })
}

/// The tokens of a response, or a `Decode` error naming what is wrong with it.
fn usable(response: TokenResponse, operation: Operation) -> Result<OAuthTokens, OutreachError> {
    response
        .tokens
        .map_err(|detail| OutreachError::Decode { operation, detail })
}

/// Exchanges an authorization code for tokens: one request, no retries, no throttle.
pub async fn exchange_code(
    http: &reqwest::Client,
    app: &OAuthApp,
    code: &str,
) -> Result<OAuthTokens, OutreachError> {
    let counters = Counters::default();
    exchange_code_counted(http, app, code, &Tally::new(&counters)).await
}

/// [`exchange_code`], counting the request in `tally`.
pub(crate) async fn exchange_code_counted(
    http: &reqwest::Client,
    app: &OAuthApp,
    code: &str,
    tally: &Tally<'_>,
) -> Result<OAuthTokens, OutreachError> {
    let response = token_request(http, app, Grant::AuthorizationCode(code), tally)
        .await
        .map_err(|f| f.into_error(Operation::ExchangeCode))?;
    usable(response, Operation::ExchangeCode)
}

/// Redeems a refresh token for new tokens: one request, no retries, no throttle. The
/// [`TokenKeeper`] adds those; this is the bare grant.
pub async fn refresh(
    http: &reqwest::Client,
    app: &OAuthApp,
    refresh_token: &str,
) -> Result<OAuthTokens, OutreachError> {
    let counters = Counters::default();
    let tally = Tally::new(&counters);
    let response = token_request(http, app, Grant::RefreshToken(refresh_token), &tally)
        .await
        .map_err(|f| f.into_error(Operation::RefreshToken))?;
    usable(response, Operation::RefreshToken)
}

/// A bearer token handed to a request, with the generation it belongs to.
#[derive(Clone)]
pub(crate) struct AccessToken {
    pub(crate) bearer: String,
    pub(crate) generation: u64,
}

/// The tokens in use and their generation (bumped on every mint).
struct Current {
    tokens: OAuthTokens,
    generation: u64,
}

/// When this client last minted a token (tokio's clock, so tests can pause it).
#[derive(Default)]
struct MintClock {
    last_mint: Option<Instant>,
}

/// How the keeper behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeeperPolicy {
    pub mint_interval: Duration,
    pub max_rate_limit_wait: Duration,
    pub retry: RetryPolicy,
}

/// Holds the current tokens of one (user, app) pair and mints new ones by the rules above.
pub(crate) struct TokenKeeper {
    http: reqwest::Client,
    app: OAuthApp,
    store: Arc<dyn TokenStore>,
    current: RwLock<Current>,
    mint: tokio::sync::Mutex<MintClock>,
    policy: KeeperPolicy,
}

impl TokenKeeper {
    pub(crate) fn new(
        http: reqwest::Client,
        app: OAuthApp,
        tokens: OAuthTokens,
        store: Arc<dyn TokenStore>,
        policy: KeeperPolicy,
    ) -> TokenKeeper {
        TokenKeeper {
            http,
            app,
            store,
            current: RwLock::new(Current {
                tokens,
                generation: 0,
            }),
            mint: tokio::sync::Mutex::new(MintClock::default()),
            policy,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The tokens in use.
    pub(crate) fn tokens(&self) -> OAuthTokens {
        self.read().tokens.clone()
    }

    fn snapshot(&self) -> (AccessToken, bool) {
        let current = self.read();
        (
            AccessToken {
                bearer: current.tokens.access_token.clone(),
                generation: current.generation,
            },
            current.tokens.is_expired(Utc::now()),
        )
    }

    /// Takes a new authorization (a reconnect): the next request mints an access token from
    /// `refresh_token`, and any request still holding the old token retries with the new one.
    pub(crate) fn replace_refresh_token(&self, refresh_token: String) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.tokens = OAuthTokens {
            access_token: String::new(),
            refresh_token,
            expires_at: Some(chrono::DateTime::UNIX_EPOCH),
        };
        current.generation += 1;
    }

    /// Notes a mint made outside the keeper (the authorization-code exchange), so the next
    /// refresh respects the mint interval.
    pub(crate) async fn record_mint(&self) {
        self.mint.lock().await.last_mint = Some(Instant::now());
    }

    /// A token for the next request, refreshed first if it has expired.
    pub(crate) async fn access(&self, tally: &Tally<'_>) -> Result<AccessToken, OutreachError> {
        let (token, expired) = self.snapshot();
        if !expired {
            return Ok(token);
        }
        tracing::debug!("Outreach access token expired; refreshing before use");
        self.refresh_unless_replaced(token.generation, tally)
            .await?;
        Ok(self.snapshot().0)
    }

    /// Called when a request made with `rejected` got a 401: refreshes, unless another request
    /// already replaced that token (then the caller simply retries with the new one).
    pub(crate) async fn refresh_after_rejection(
        &self,
        rejected: &AccessToken,
        tally: &Tally<'_>,
    ) -> Result<(), OutreachError> {
        self.refresh_unless_replaced(rejected.generation, tally)
            .await
    }

    async fn refresh_unless_replaced(
        &self,
        seen_generation: u64,
        tally: &Tally<'_>,
    ) -> Result<(), OutreachError> {
        let mut clock = self.mint.lock().await;
        if self.read().generation != seen_generation {
            tracing::debug!("Outreach token already refreshed by a concurrent request");
            return Ok(());
        }
        let refresh_token = self.read().tokens.refresh_token.clone();
        let response = self.mint(&mut clock, &refresh_token, tally).await?;
        // Kept first: the refresh token just redeemed is retired, whatever else the response
        // holds.
        let Some(keep) = response.to_keep() else {
            return usable(response, Operation::RefreshToken).map(drop);
        };
        if let Err(e) = self.store.save(&keep).await {
            // The new tokens still work in this process, but the redeemed refresh token is spent
            // and the new one is not on disk: a restart before the next successful save has no
            // refresh token that works (docs/outreach.md, "OAuth and token rotation"). Say so
            // loudly.
            tracing::error!(error = %e, "newest Outreach refresh token was not persisted");
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.tokens = keep;
        current.generation += 1;
        if let Err(detail) = response.tokens {
            tracing::error!(
                %detail,
                "Outreach's token response is unusable; its new refresh token was kept"
            );
            return Err(OutreachError::Decode {
                operation: Operation::RefreshToken,
                detail,
            });
        }
        tally.counters().token_refresh();
        tracing::info!(
            generation = current.generation,
            expires_at = ?current.tokens.expires_at,
            "Outreach access token refreshed"
        );
        Ok(())
    }

    /// Mints with the refresh token, never twice within the mint interval: waits out the rest
    /// of the interval first, retries 5xx/network failures, and (should Outreach still throttle,
    /// e.g. because tokens were minted elsewhere) waits its `Retry-After` within the bound.
    async fn mint(
        &self,
        clock: &mut MintClock,
        refresh_token: &str,
        tally: &Tally<'_>,
    ) -> Result<TokenResponse, OutreachError> {
        let operation = Operation::RefreshToken;
        let allowance = WaitAllowance::new(self.policy.max_rate_limit_wait);
        loop {
            if let Some(last) = clock.last_mint {
                let next_allowed = last + self.policy.mint_interval;
                let now = Instant::now();
                if next_allowed > now {
                    let wait = next_allowed - now;
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "waiting out Outreach's token mint interval before refreshing"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            let result = self
                .policy
                .retry
                .run(&operation, tally.counters(), || {
                    token_request(
                        &self.http,
                        &self.app,
                        Grant::RefreshToken(refresh_token),
                        tally,
                    )
                })
                .await;
            match result {
                Ok(response) => {
                    clock.last_mint = Some(Instant::now());
                    return Ok(response);
                }
                Err(Failure::RateLimited { body, retry_after }) => {
                    let wait = retry_after.unwrap_or(self.policy.mint_interval);
                    if !allowance.take(wait) {
                        return Err(
                            Failure::RateLimited { body, retry_after }.into_error(operation)
                        );
                    }
                    tracing::warn!(
                        wait_ms = wait.as_millis() as u64,
                        "Outreach throttled a token mint; waiting"
                    );
                    tally.counters().retry();
                    crate::metrics::global().rate_limit_wait(wait);
                    tokio::time::sleep(wait).await;
                    // The server's window has passed once its Retry-After has; no further
                    // local wait before the next attempt.
                    clock.last_mint = None;
                }
                Err(failure) => return Err(failure.into_error(operation)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let tokens = OAuthTokens {
            access_token: "eyJhbGciOiJIUzI1NiJ9.secret-access".into(),
            refresh_token: "refresh-secret-value".into(),
            expires_at: None,
        };
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("secret-access"), "{shown}");
        assert!(!shown.contains("refresh-secret"), "{shown}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains('…'), "{shown}");
        // Different tokens are distinguishable, equal ones match.
        assert_eq!(
            fingerprint("refresh-secret-value"),
            fingerprint("refresh-secret-value")
        );
        assert_ne!(fingerprint("a-token"), fingerprint("b-token"));

        let app = OAuthApp {
            token_url: "https://api.outreach.io/oauth/token".parse().unwrap(),
            client_id: "client".into(),
            client_secret: "very-secret".into(),
            redirect_uri: "https://usersync.example/callback".into(),
        };
        assert!(!format!("{app:?}").contains("very-secret"));
    }

    #[test]
    fn expiry_includes_the_skew() {
        let now = Utc::now();
        let mut tokens = OAuthTokens {
            access_token: "a".into(),
            refresh_token: "r".into(),
            expires_at: None,
        };
        assert!(!tokens.is_expired(now), "unknown expiry is trusted");
        tokens.expires_at = Some(now + TimeDelta::seconds(3600));
        assert!(!tokens.is_expired(now));
        tokens.expires_at = Some(now + TimeDelta::seconds(10));
        assert!(tokens.is_expired(now));
        tokens.expires_at = Some(now - TimeDelta::seconds(1));
        assert!(tokens.is_expired(now));
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn read(body: &str, redeemed: Option<&str>) -> TokenResponse {
        read_token_response(body.as_bytes(), redeemed, now())
    }

    fn expiry(body: &str) -> Option<DateTime<Utc>> {
        read(body, Some("r1")).tokens.expect("usable").expires_at
    }

    fn after(lifetime: Duration) -> Option<DateTime<Utc>> {
        Some(now() + TimeDelta::from_std(lifetime).unwrap())
    }

    #[test]
    fn a_token_response_gives_the_tokens_and_their_expiry() {
        let response = read(
            r#"{"access_token":"a2","refresh_token":"r2","expires_in":7200,"token_type":"bearer"}"#,
            Some("r1"),
        );
        assert!(response.rotated);
        assert_eq!(
            response.tokens,
            Ok(OAuthTokens {
                access_token: "a2".into(),
                refresh_token: "r2".into(),
                expires_at: after(Duration::from_secs(7200)),
            })
        );
        assert_eq!(response.to_keep(), response.tokens.clone().ok());
        // No expiry said: none believed.
        assert_eq!(
            expiry(r#"{"access_token":"a2","refresh_token":"r2"}"#),
            None
        );
    }

    #[test]
    fn an_absurd_token_lifetime_is_clamped_into_its_bounds() {
        for huge in [
            "9223372036854775807",
            "18446744073709551615",
            "1e30",
            "1.7976931348623157e308",
            "9223372036854776",
            "86401",
        ] {
            let body = format!(r#"{{"access_token":"a","refresh_token":"r","expires_in":{huge}}}"#);
            assert_eq!(expiry(&body), after(MAX_TOKEN_LIFETIME), "{huge}");
        }
        for tiny in ["0", "-1", "-9223372036854775808", "-1e30", "0.5", "59"] {
            let body = format!(r#"{{"access_token":"a","refresh_token":"r","expires_in":{tiny}}}"#);
            assert_eq!(expiry(&body), after(MIN_TOKEN_LIFETIME), "{tiny}");
        }
        assert_eq!(
            expiry(r#"{"access_token":"a","refresh_token":"r","expires_in":7199.5}"#),
            after(Duration::from_millis(7_199_500))
        );
    }

    #[test]
    fn a_response_without_a_new_refresh_token_keeps_the_redeemed_one() {
        for body in [
            r#"{"access_token":"a2","expires_in":7200}"#,
            r#"{"access_token":"a2","refresh_token":null}"#,
            r#"{"access_token":"a2","refresh_token":"  "}"#,
        ] {
            let response = read(body, Some("r1"));
            assert!(!response.rotated, "{body}");
            assert_eq!(response.refresh_token.as_deref(), Some("r1"), "{body}");
            assert_eq!(response.tokens.unwrap().refresh_token, "r1", "{body}");
        }
        // Outreach may hand back the same one.
        assert!(!read(r#"{"access_token":"a2","refresh_token":"r1"}"#, Some("r1")).rotated);
        // A code exchange has nothing to fall back on.
        let exchange = read(r#"{"access_token":"a2"}"#, None);
        assert_eq!(
            exchange.tokens,
            Err("the token response has no refresh_token".to_owned())
        );
        assert_eq!(exchange.to_keep(), None);
    }

    #[test]
    fn an_unusable_response_still_yields_its_new_refresh_token() {
        for (body, problem) in [
            (
                r#"{"refresh_token":"r2","expires_in":7200}"#,
                "the token response has no access_token",
            ),
            (
                r#"{"refresh_token":"r2","access_token":42}"#,
                "access_token is a number, not a string",
            ),
            (
                r#"{"refresh_token":"r2","access_token":""}"#,
                "access_token is empty",
            ),
            (
                r#"{"refresh_token":"r2","access_token":"a2","expires_in":"soon"}"#,
                "expires_in is a string, not a number of seconds",
            ),
        ] {
            let response = read(body, Some("r1"));
            assert_eq!(response.tokens, Err(problem.to_owned()), "{body}");
            assert!(response.rotated, "{body}");
            assert_eq!(
                response.to_keep(),
                Some(OAuthTokens {
                    access_token: String::new(),
                    refresh_token: "r2".into(),
                    expires_at: Some(DateTime::UNIX_EPOCH),
                }),
                "{body}"
            );
        }
        // Nothing new: nothing to keep, and the message never repeats a token.
        for body in [
            "",
            "not json",
            "[]",
            r#"{"refresh_token":7,"access_token":"secret-a"}"#,
        ] {
            let response = read(body, Some("r1"));
            let problem = response.tokens.clone().unwrap_err();
            assert!(!problem.contains("secret-a"), "{problem}");
            assert_eq!(response.to_keep(), None, "{body}");
        }
        assert!(
            !format!("{:?}", read(r#"{"refresh_token":"r2-secret"}"#, None)).contains("r2-secret")
        );
    }

    /// A token endpoint on loopback that answers every grant with `body`.
    async fn token_endpoint(body: &'static str) -> url::Url {
        let app = axum::Router::new().route(
            "/oauth/token",
            axum::routing::post(
                move || async move { ([("content-type", "application/json")], body) },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}/oauth/token").parse().unwrap()
    }

    /// A keeper holding an expired access token and the refresh token `r1`.
    fn keeper(token_url: url::Url, store: Arc<MemoryTokenStore>) -> TokenKeeper {
        TokenKeeper::new(
            reqwest::Client::new(),
            OAuthApp {
                token_url,
                client_id: "client".into(),
                client_secret: "secret".into(),
                redirect_uri: "https://usersync.example/callback".into(),
            },
            OAuthTokens {
                access_token: "a1".into(),
                refresh_token: "r1".into(),
                expires_at: Some(DateTime::UNIX_EPOCH),
            },
            store,
            KeeperPolicy {
                mint_interval: Duration::ZERO,
                max_rate_limit_wait: Duration::ZERO,
                retry: RetryPolicy {
                    max_retries: 0,
                    backoff_min: Duration::from_millis(1),
                    backoff_max: Duration::from_millis(2),
                    max_server_wait: Duration::ZERO,
                },
            },
        )
    }

    #[tokio::test]
    async fn a_new_refresh_token_with_an_absurd_lifetime_is_saved_and_used() {
        let url = token_endpoint(
            r#"{"access_token":"a2","refresh_token":"r2","expires_in":9223372036854775807}"#,
        )
        .await;
        let store = Arc::new(MemoryTokenStore::new());
        let keeper = keeper(url, store.clone());
        let counters = Counters::default();

        let token = keeper
            .access(&Tally::new(&counters))
            .await
            .expect("refreshed");

        assert_eq!(token.bearer, "a2");
        let saved = store.latest().expect("saved");
        assert_eq!(saved.refresh_token, "r2");
        let latest = Utc::now() + TimeDelta::from_std(MAX_TOKEN_LIFETIME).unwrap();
        assert!(saved.expires_at.is_some_and(|at| at <= latest), "{saved:?}");
        assert_eq!(keeper.tokens(), saved);
    }

    #[tokio::test]
    async fn a_new_refresh_token_in_an_unusable_response_is_saved_before_the_error() {
        let url =
            token_endpoint(r#"{"access_token":"a2","refresh_token":"r2","expires_in":"2h"}"#).await;
        let store = Arc::new(MemoryTokenStore::new());
        let keeper = keeper(url, store.clone());
        let counters = Counters::default();

        let error = match keeper.access(&Tally::new(&counters)).await {
            Ok(_) => panic!("an unusable response is an error"),
            Err(error) => error,
        };

        assert_eq!(error.code(), "decode");
        assert!(error.to_string().contains("expires_in"), "{error}");
        assert_eq!(store.saves(), 1);
        assert_eq!(store.latest().unwrap().refresh_token, "r2");
        // The next refresh redeems the new token, not the retired one.
        assert_eq!(keeper.tokens().refresh_token, "r2");
        assert!(keeper.tokens().is_expired(Utc::now()));
    }

    #[tokio::test]
    async fn the_memory_store_keeps_every_save() {
        let store = MemoryTokenStore::new();
        assert!(store.latest().is_none());
        for n in 0..2 {
            store
                .save(&OAuthTokens {
                    access_token: format!("a{n}"),
                    refresh_token: format!("r{n}"),
                    expires_at: None,
                })
                .await
                .unwrap();
        }
        assert_eq!(store.saves(), 2);
        assert_eq!(store.latest().unwrap().refresh_token, "r1");
    }
}
