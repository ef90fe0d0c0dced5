//! OAuth tokens for Outreach: minting, refreshing, persisting, and never minting too often.
//!
//! Outreach has only the authorization-code flow, two-hour access tokens and refresh tokens that
//! are re-issued on every refresh. Three rules shape this module:
//!
//! - **Persist the newest refresh token.** Every mint goes through the [`TokenStore`] before it
//!   is used, so a restart resumes with a token Outreach still honours.
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
use serde::Deserialize;
use tokio::time::Instant;

use super::error::{Operation, OutreachError, classify_token_failure};
use super::jsonapi::ErrorBody;
use super::rate_limit::WaitAllowance;
use super::stats::{Counters, Tally};
use super::transport::{Failure, RetryPolicy, read_failure, retry_after};
use crate::endpoint::body::{OAUTH_ANSWER_CAP, read_capped};

/// A token is refreshed before use once it is this close to its expiry, so it does not expire
/// in flight.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(30);

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

/// The token endpoint's success body.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// One request to the token endpoint (form-encoded, as Outreach documents).
async fn token_request(
    http: &reqwest::Client,
    app: &OAuthApp,
    grant: Grant<'_>,
    tally: &Tally<'_>,
) -> Result<OAuthTokens, Failure> {
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
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Failure::Final(OutreachError::Decode {
                operation: operation.clone(),
                detail: format!("token response: {e}"),
            })
        })?;
        let refresh_token = parsed
            .refresh_token
            .or_else(|| previous_refresh.map(str::to_owned))
            .ok_or_else(|| {
                Failure::Final(OutreachError::Decode {
                    operation: operation.clone(),
                    detail: "token response has no refresh_token".to_owned(),
                })
            })?;
        return Ok(OAuthTokens {
            access_token: parsed.access_token,
            refresh_token,
            expires_at: parsed
                .expires_in
                .map(|secs| Utc::now() + TimeDelta::seconds(secs)),
        });
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
    token_request(http, app, Grant::AuthorizationCode(code), tally)
        .await
        .map_err(|f| f.into_error(Operation::ExchangeCode))
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
    token_request(http, app, Grant::RefreshToken(refresh_token), &tally)
        .await
        .map_err(|f| f.into_error(Operation::RefreshToken))
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
        let tokens = self.mint(&mut clock, &refresh_token, tally).await?;
        if let Err(e) = self.store.save(&tokens).await {
            // The new tokens still work in this process; the previous refresh token stays
            // valid until its own expiry, so a restart can still recover. Say so loudly.
            tracing::error!(error = %e, "newest Outreach refresh token was not persisted");
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.tokens = tokens;
        current.generation += 1;
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
    ) -> Result<OAuthTokens, OutreachError> {
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
                Ok(tokens) => {
                    clock.last_mint = Some(Instant::now());
                    return Ok(tokens);
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
