//! The Outreach users API: requests, and the policy around each one.
//!
//! Every operation runs the same loop, so behaviour is identical for reads and writes:
//!
//! 1. take a bearer token (refreshed first if it has expired);
//! 2. pace: if the rate-limit budget is at the reserve, wait for the reset (bounded);
//! 3. send with `Content-Type` and `Accept: application/vnd.api+json` (Outreach answers 415
//!    without them, reads included), read the rate-limit headers of the answer;
//! 4. 5xx or network failure: retry with capped, jittered exponential backoff;
//!    429: wait `Retry-After` (or until the reset) and send again, within `max_rate_limit_wait`
//!    for the whole operation, then give up with `RateLimited` so the caller can pause;
//!    401: refresh the token once and send once more; every other 4xx is final.
//!
//! POST /users is retried on 5xx like everything else although Outreach has no idempotency keys:
//! a create whose response was lost may have happened, and the retry then fails with a 422
//! "email taken". That is safe because emails are globally unique in Outreach, so a create can
//! never be duplicated, and the processor looks the email up before any second create; the
//! alternative (not retrying) would turn every transient 502 into a failed event.
//!
//! The bearer token goes only to the configured API origin, whatever a page links to, and every
//! answer is read up to [`API_PAGE_CAP`] bytes (`endpoint`, docs/security.md).
//!
//! Each operation reports how many HTTP requests it cost ([`Reply::requests`]) because the
//! budget is counted in requests and the engine's tests assert on it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use super::auth::{
    AccessToken, KeeperPolicy, OAuthApp, OAuthTokens, TokenKeeper, TokenStore,
    exchange_code_counted,
};
use super::error::{Operation, OutreachError, classify};
use super::jsonapi::{
    Document, ErrorBody, MEDIA_TYPE, UserResource, create_user_document, update_user_document,
};
use super::rate_limit::{
    RESET_MARGIN, RateLimitHeaders, RateLimiter, WaitAllowance, WaitTooLong, until,
};
use super::stats::{ClientStats, Counters, Tally};
use super::transport::{Failure, RetryPolicy, read_failure, retry_after};
use super::webhooks::registration::{
    NewWebhook, Registration, Webhook, WebhookResource, find_registered,
};
use crate::config::OutreachConfig;
use crate::endpoint::body::{API_PAGE_CAP, read_capped};
use crate::model::outreach_user::{OutreachUser, OutreachUserId, UserAttributes};

/// The largest `page[size]` Outreach serves.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The shortest wait after a 429, so a `Retry-After: 0` cannot turn into a busy loop.
const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_millis(100);

/// The wait after a 429 that carries neither `Retry-After` nor `X-RateLimit-Reset`.
const UNHINTED_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// The `[outreach]` section as the client uses it: the section itself (every default is
/// declared there, in `crate::config`) and its two URLs, parsed once.
#[derive(Clone)]
struct Settings {
    section: OutreachConfig,
    /// The API root, e.g. `https://api.outreach.io/api/v2`: a base URL.
    api_url: Url,
    /// The token endpoint, e.g. `https://api.outreach.io/oauth/token`.
    token_url: Url,
}

impl Settings {
    /// Parses the URLs and checks what the client relies on; the message names the key.
    fn of(section: &OutreachConfig) -> Result<Settings, String> {
        let url = |key: &str, value: &str| {
            Url::parse(value).map_err(|e| format!("outreach.{key} {value:?} is not a URL: {e}"))
        };
        let settings = Settings {
            api_url: url("api_url", &section.api_url)?,
            token_url: url("token_url", &section.token_url)?,
            section: section.clone(),
        };
        if !(1..=MAX_PAGE_SIZE).contains(&section.page_size) {
            return Err(format!(
                "outreach.page_size must be between 1 and {MAX_PAGE_SIZE}, got {}",
                section.page_size
            ));
        }
        if settings.api_url.cannot_be_a_base() {
            return Err(format!(
                "outreach.api_url {} cannot be a base URL",
                settings.api_url
            ));
        }
        if section.backoff_min > section.backoff_max {
            return Err("outreach.backoff_min_ms exceeds outreach.backoff_max_ms".to_owned());
        }
        Ok(settings)
    }

    fn app(&self) -> OAuthApp {
        OAuthApp {
            token_url: self.token_url.clone(),
            client_id: self.section.client_id.clone(),
            client_secret: self.section.client_secret.expose().to_owned(),
            redirect_uri: self.section.redirect_uri.clone(),
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.section.max_retries,
            backoff_min: self.section.backoff_min,
            backoff_max: self.section.backoff_max,
            max_server_wait: self.section.max_rate_limit_wait,
        }
    }

    /// Per-request timeout; at least a second, as zero would fail every request.
    fn timeout(&self) -> Duration {
        self.section.timeout.max(Duration::from_secs(1))
    }
}

impl fmt::Debug for Settings {
    /// The section's own `Debug` leaves its secrets out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.section.fmt(f)
    }
}

/// An operation's result and the HTTP requests it took (retries and token refreshes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<T> {
    pub value: T,
    pub requests: u32,
}

/// One page of users and the URL of the next, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<OutreachUser>,
    pub next: Option<Url>,
}

/// A client of the Outreach users API for one authorized (user, app) pair. Cheap to clone;
/// clones share tokens, rate-limit budget and statistics.
#[derive(Clone)]
pub struct OutreachClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: Settings,
    keeper: TokenKeeper,
    limiter: RateLimiter,
    counters: Counters,
}

/// One API request, rebuilt for each attempt.
struct ApiRequest {
    method: Method,
    url: Url,
    body: Option<Bytes>,
    operation: Operation,
}

impl OutreachClient {
    /// A client using `tokens` (persisting every refresh through `store`).
    pub fn new(
        config: &OutreachConfig,
        tokens: OAuthTokens,
        store: Arc<dyn TokenStore>,
    ) -> Result<Self, OutreachError> {
        let config = settings(config)?;
        let http = build_http(&config)?;
        Ok(OutreachClient::assemble(
            http,
            config,
            tokens,
            store,
            Counters::default(),
        ))
    }

    /// Completes the authorization-code flow: exchanges `code` for tokens, persists them, and
    /// returns a client using them. The exchange counts as a mint for the mint interval.
    pub async fn from_authorization_code(
        config: &OutreachConfig,
        code: &str,
        store: Arc<dyn TokenStore>,
    ) -> Result<Self, OutreachError> {
        let config = settings(config)?;
        let http = build_http(&config)?;
        let counters = Counters::default();
        let tokens =
            exchange_code_counted(&http, &config.app(), code, &Tally::new(&counters)).await?;
        if let Err(e) = store.save(&tokens).await {
            return Err(OutreachError::Config {
                operation: Operation::ExchangeCode,
                detail: e.to_string(),
            });
        }
        counters.token_refresh();
        let client = OutreachClient::assemble(http, config, tokens, store, counters);
        client.inner.keeper.record_mint().await;
        Ok(client)
    }

    fn assemble(
        http: reqwest::Client,
        config: Settings,
        tokens: OAuthTokens,
        store: Arc<dyn TokenStore>,
        counters: Counters,
    ) -> OutreachClient {
        let keeper = TokenKeeper::new(
            http.clone(),
            config.app(),
            tokens,
            store,
            KeeperPolicy {
                mint_interval: config.section.mint_interval,
                max_rate_limit_wait: config.section.max_rate_limit_wait,
                retry: config.retry_policy(),
            },
        );
        let limiter = RateLimiter::new(config.section.rate_limit_reserve);
        OutreachClient {
            inner: Arc::new(Inner {
                http,
                config,
                keeper,
                limiter,
                counters,
            }),
        }
    }

    /// `POST /users`: creates (invites) a user; Outreach answers 201.
    pub async fn create_user(
        &self,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let operation = Operation::CreateUser {
            email: attrs.email.clone(),
        };
        let request = ApiRequest {
            method: Method::POST,
            url: self.users_url(&[]),
            body: Some(json_body(&create_user_document(attrs))),
            operation,
        };
        self.single_user(request, None).await
    }

    /// `PATCH /users/{id}`: changes only the attributes sent; Outreach answers 200.
    pub async fn update_user(
        &self,
        id: OutreachUserId,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let request = ApiRequest {
            method: Method::PATCH,
            url: self.users_url(&[&id.to_string()]),
            body: Some(json_body(&update_user_document(id, attrs))),
            operation: Operation::UpdateUser { id },
        };
        self.single_user(request, Some(id)).await
    }

    /// `GET /users/{id}`.
    pub async fn get_user(&self, id: OutreachUserId) -> Result<Reply<OutreachUser>, OutreachError> {
        let request = ApiRequest {
            method: Method::GET,
            url: self.users_url(&[&id.to_string()]),
            body: None,
            operation: Operation::GetUser { id },
        };
        self.single_user(request, Some(id)).await
    }

    /// `GET /users?filter[email]=...`: every user holding this email (at most one in practice,
    /// locked users included).
    pub async fn find_users_by_email(
        &self,
        email: &str,
    ) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
        let mut url = self.users_url(&[]);
        url.query_pairs_mut()
            .append_pair("filter[email]", email)
            .append_pair(
                "page[size]",
                &self.inner.config.section.page_size.to_string(),
            )
            .append_pair("count", "false");
        let operation = Operation::FindUsersByEmail {
            email: email.to_owned(),
        };
        self.all_pages(url, operation).await
    }

    /// `GET /users`, every page: `page[size]` from the configuration, following `links.next`
    /// until it is absent. Each user appears once.
    pub async fn list_users(&self) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
        self.all_pages(self.first_page_url(), Operation::ListUsers)
            .await
    }

    /// One page of `GET /users`: the first when `url` is `None`, else the page at `url` (a
    /// `links.next` of an earlier page). For callers that checkpoint between pages.
    pub async fn list_users_page(
        &self,
        url: Option<&Url>,
    ) -> Result<Reply<UserPage>, OutreachError> {
        let operation = Operation::ListUsers;
        let url = match url {
            Some(url) => self.check_same_origin(url, &operation)?,
            None => self.first_page_url(),
        };
        let tally = Tally::new(&self.inner.counters);
        let page = self.fetch_page(url, &operation, &tally).await?;
        Ok(Reply {
            value: page,
            requests: tally.requests(),
        })
    }

    /// Running totals since the client was built.
    pub fn stats(&self) -> ClientStats {
        self.inner.counters.snapshot(self.inner.limiter.waits())
    }

    /// Switches to a new authorization (an admin reconnected with a new refresh token): the
    /// next request mints an access token with it.
    pub fn replace_refresh_token(&self, refresh_token: String) {
        self.inner.keeper.replace_refresh_token(refresh_token);
    }

    /// The tokens in use (the newest refresh token included).
    pub async fn tokens(&self) -> OAuthTokens {
        self.inner.keeper.tokens()
    }

    fn users_url(&self, segments: &[&str]) -> Url {
        self.resource_url("users", segments)
    }

    fn resource_url(&self, collection: &str, segments: &[&str]) -> Url {
        let mut url = self.inner.config.api_url.clone();
        {
            // Checked in `validate`: the API URL can be a base.
            let mut path = url.path_segments_mut().expect("api_url can be a base URL");
            path.pop_if_empty().push(collection);
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }

    fn first_page_url(&self) -> Url {
        let mut url = self.users_url(&[]);
        url.query_pairs_mut()
            .append_pair(
                "page[size]",
                &self.inner.config.section.page_size.to_string(),
            )
            .append_pair("count", "false");
        url
    }

    /// Sends a request whose answer is one user; checks it is the user asked for.
    async fn single_user(
        &self,
        request: ApiRequest,
        expected: Option<OutreachUserId>,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let tally = Tally::new(&self.inner.counters);
        let body = self.execute(&request, &tally).await?;
        let user = read_single_user(&body, expected, &request.operation)?;
        Ok(Reply {
            value: user,
            requests: tally.requests(),
        })
    }

    /// Follows `links.next` from `first` until it is absent, collecting each user once.
    async fn all_pages(
        &self,
        first: Url,
        operation: Operation,
    ) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
        let tally = Tally::new(&self.inner.counters);
        let mut users = Vec::new();
        let mut seen = HashSet::new();
        let mut visited = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if !visited.insert(url.clone()) {
                return Err(OutreachError::Decode {
                    operation,
                    detail: format!("pagination loops back to {url}"),
                });
            }
            let page = self.fetch_page(url, &operation, &tally).await?;
            for user in page.users {
                if seen.insert(user.id) {
                    users.push(user);
                } else {
                    tracing::warn!(
                        operation = %operation,
                        user_id = user.id.0,
                        "Outreach returned a user twice while paging; keeping the first"
                    );
                }
            }
            next = page.next;
        }
        Ok(Reply {
            value: users,
            requests: tally.requests(),
        })
    }

    async fn fetch_page(
        &self,
        url: Url,
        operation: &Operation,
        tally: &Tally<'_>,
    ) -> Result<UserPage, OutreachError> {
        let request = ApiRequest {
            method: Method::GET,
            url,
            body: None,
            operation: operation.clone(),
        };
        let body = self.execute(&request, tally).await?;
        read_user_page(&body, &request.url, &self.inner.config.api_url, operation)
    }

    /// The bearer token goes only to the configured API origin, whatever a response links to
    /// (`endpoint::origin`).
    fn check_same_origin(&self, url: &Url, operation: &Operation) -> Result<Url, OutreachError> {
        same_origin(url, &self.inner.config.api_url, operation)
    }

    /// The policy loop of the module doc: token, 429 waits and the 401 refresh here; pacing and
    /// the transient retries inside.
    async fn execute(
        &self,
        request: &ApiRequest,
        tally: &Tally<'_>,
    ) -> Result<Bytes, OutreachError> {
        let inner = &*self.inner;
        let operation = &request.operation;
        let allowance = WaitAllowance::new(inner.config.section.max_rate_limit_wait);
        let retry = inner.config.retry_policy();
        let mut refreshed = false;
        loop {
            let token = inner.keeper.access(tally).await?;
            let result = retry
                .run(operation, &inner.counters, || {
                    self.attempt(request, &token, tally, &allowance)
                })
                .await;
            match result {
                Ok(body) => return Ok(body),
                Err(Failure::RateLimited { body, retry_after }) => {
                    let wait = retry_after
                        .unwrap_or(UNHINTED_RATE_LIMIT_WAIT)
                        .max(MIN_RATE_LIMIT_WAIT);
                    if !allowance.take(wait) {
                        return Err(Failure::RateLimited {
                            body,
                            retry_after: Some(wait),
                        }
                        .into_error(operation.clone()));
                    }
                    inner.limiter.record_wait();
                    crate::metrics::global().rate_limit_wait(wait);
                    inner.counters.retry();
                    tracing::warn!(
                        operation = %operation,
                        wait_ms = wait.as_millis() as u64,
                        "Outreach rate limit hit; waiting before sending again"
                    );
                    tokio::time::sleep(wait).await;
                    inner.limiter.retry_after_waited();
                }
                Err(Failure::Unauthorized { body }) if !refreshed => {
                    refreshed = true;
                    tracing::info!(
                        operation = %operation,
                        cause = %body.summary(),
                        "Outreach refused the access token; refreshing once"
                    );
                    crate::metrics::global().reconnect(
                        crate::metrics::Link::outreach,
                        crate::metrics::Reconnect::token_refused,
                    );
                    inner.keeper.refresh_after_rejection(&token, tally).await?;
                    inner.counters.retry();
                }
                Err(failure) => return Err(failure.into_error(operation.clone())),
            }
        }
    }

    /// One HTTP request: pace, send, record the budget, sort the answer.
    async fn attempt(
        &self,
        request: &ApiRequest,
        token: &AccessToken,
        tally: &Tally<'_>,
        allowance: &WaitAllowance,
    ) -> Result<Bytes, Failure> {
        let inner = &*self.inner;
        let operation = &request.operation;
        inner
            .limiter
            .pace(allowance)
            .await
            .map_err(|WaitTooLong(wait)| {
                Failure::Final(OutreachError::RateLimited {
                    operation: operation.clone(),
                    retry_after: wait,
                })
            })?;

        let mut builder = inner
            .http
            .request(request.method.clone(), request.url.clone())
            .bearer_auth(&token.bearer)
            .header(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE))
            .header(ACCEPT, HeaderValue::from_static(MEDIA_TYPE));
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        tally.request();
        let response = builder.send().await.map_err(Failure::Network)?;
        let status = response.status();
        let headers = response.headers().clone();
        let now = Utc::now();
        let budget = RateLimitHeaders::parse(&headers, now);
        inner.limiter.observe(budget);
        tracing::debug!(
            method = %request.method,
            path = request.url.path(),
            status = status.as_u16(),
            remaining = budget.remaining,
            "Outreach request"
        );
        let body = read_capped(response, API_PAGE_CAP)
            .await
            .map_err(|error| read_failure(error, operation))?;
        if status.is_success() {
            return Ok(body);
        }
        let error_body = ErrorBody::parse(&body);
        Err(match status {
            StatusCode::UNAUTHORIZED => Failure::Unauthorized { body: error_body },
            StatusCode::TOO_MANY_REQUESTS => {
                inner.limiter.observe_exhausted(budget.reset);
                let retry_after = retry_after(&headers)
                    .or_else(|| budget.reset.map(|reset| until(now, reset) + RESET_MARGIN));
                Failure::RateLimited {
                    body: error_body,
                    retry_after,
                }
            }
            s if s.is_server_error() => Failure::Server {
                status,
                body: error_body,
                retry_after: retry_after(&headers),
            },
            _ => Failure::Final(classify(operation.clone(), status, &error_body, None)),
        })
    }
}

/// Webhook registration (`/webhooks`), for the receiver of `outreach::webhooks`. The same loop
/// as every user operation: token, pacing, retries, 429 waits and the 401 refresh.
impl OutreachClient {
    /// `GET /webhooks`, every page. Needs the `webhooks.read` (or `webhooks.all`) scope.
    pub async fn list_webhooks(&self) -> Result<Reply<Vec<Webhook>>, OutreachError> {
        let operation = Operation::ListWebhooks;
        let tally = Tally::new(&self.inner.counters);
        let mut first = self.resource_url("webhooks", &[]);
        first
            .query_pairs_mut()
            .append_pair(
                "page[size]",
                &self.inner.config.section.page_size.to_string(),
            )
            .append_pair("count", "false");
        let mut webhooks: Vec<Webhook> = Vec::new();
        let mut visited = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if !visited.insert(url.clone()) {
                return Err(OutreachError::Decode {
                    operation,
                    detail: format!("pagination loops back to {url}"),
                });
            }
            let request = ApiRequest {
                method: Method::GET,
                url,
                body: None,
                operation: operation.clone(),
            };
            let body = self.execute(&request, &tally).await?;
            let document: Document<Vec<WebhookResource>> = decode(&body, &operation)?;
            for resource in document.data.unwrap_or_default() {
                let webhook = resource
                    .into_webhook()
                    .map_err(|detail| OutreachError::Decode {
                        operation: operation.clone(),
                        detail,
                    })?;
                if !webhooks.iter().any(|w| w.id == webhook.id) {
                    webhooks.push(webhook);
                }
            }
            if let Some(link) = document.links.and_then(|l| l.next) {
                let url = request.url.join(&link).map_err(|e| OutreachError::Decode {
                    operation: operation.clone(),
                    detail: format!("links.next {link:?} is not a URL: {e}"),
                })?;
                next = Some(self.check_same_origin(&url, &operation)?);
            }
        }
        Ok(Reply {
            value: webhooks,
            requests: tally.requests(),
        })
    }

    /// `POST /webhooks`: creates a webhook; Outreach answers 201. Needs `webhooks.write` (or
    /// `webhooks.all`). The request carries the secret, which no log line or error repeats.
    pub async fn create_webhook(&self, new: &NewWebhook) -> Result<Reply<Webhook>, OutreachError> {
        let operation = Operation::CreateWebhook {
            url: new.url.to_string(),
        };
        let request = ApiRequest {
            method: Method::POST,
            url: self.resource_url("webhooks", &[]),
            body: Some(json_body(&new.document())),
            operation,
        };
        let tally = Tally::new(&self.inner.counters);
        let body = self.execute(&request, &tally).await?;
        let operation = &request.operation;
        let document: Document<WebhookResource> = decode(&body, operation)?;
        let webhook = document
            .data
            .ok_or_else(|| "response has no data".to_owned())
            .and_then(WebhookResource::into_webhook)
            .map_err(|detail| OutreachError::Decode {
                operation: operation.clone(),
                detail,
            })?;
        Ok(Reply {
            value: webhook,
            requests: tally.requests(),
        })
    }

    /// Registers `new` unless a webhook already sends user events to its URL
    /// ([`find_registered`]): safe to call at every start. A found webhook that is inactive or
    /// covers only some user actions is kept and reported in a warning, not replaced.
    pub async fn ensure_webhook(
        &self,
        new: &NewWebhook,
    ) -> Result<Reply<Registration>, OutreachError> {
        let listed = self.list_webhooks().await?;
        if let Some(found) = find_registered(&listed.value, &new.url) {
            if found.active == Some(false) || !found.covers_user_events() {
                tracing::warn!(
                    webhook_id = found.id,
                    url = %new.url,
                    active = ?found.active,
                    resource = ?found.resource,
                    action = ?found.action,
                    "an Outreach webhook for this URL exists but is inactive or does not cover \
                     every user action; keeping it (fix or delete it in Outreach)"
                );
            }
            return Ok(Reply {
                value: Registration {
                    webhook: found.clone(),
                    created: false,
                },
                requests: listed.requests,
            });
        }
        let created = self.create_webhook(new).await?;
        tracing::info!(
            webhook_id = created.value.id,
            url = %new.url,
            "registered the Outreach webhook"
        );
        Ok(Reply {
            value: Registration {
                webhook: created.value,
                created: true,
            },
            requests: listed.requests + created.requests,
        })
    }
}

impl fmt::Debug for OutreachClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutreachClient")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The client's view of `section`, or a configuration error naming the key.
fn settings(section: &OutreachConfig) -> Result<Settings, OutreachError> {
    Settings::of(section).map_err(|detail| OutreachError::Config {
        operation: Operation::Configure,
        detail,
    })
}

fn build_http(config: &Settings) -> Result<reqwest::Client, OutreachError> {
    let fail = |detail: String| OutreachError::Config {
        operation: Operation::Configure,
        detail,
    };
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.timeout())
        .user_agent(concat!("usersync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(format!("building the HTTP client: {e}")))
}

/// Reads the answer to a request about one user: the user, who must be `expected` when the
/// request named one. Pure.
pub fn read_single_user(
    body: &[u8],
    expected: Option<OutreachUserId>,
    operation: &Operation,
) -> Result<OutreachUser, OutreachError> {
    let fail = |detail: String| OutreachError::Decode {
        operation: operation.clone(),
        detail,
    };
    let document: Document<UserResource> = decode(body, operation)?;
    let resource = document
        .data
        .ok_or_else(|| fail("response has no data".to_owned()))?;
    let user = resource.into_user().map_err(|e| fail(e.to_string()))?;
    if let Some(expected) = expected
        && user.id != expected
    {
        return Err(fail(format!(
            "asked for user {expected}, got user {}",
            user.id
        )));
    }
    Ok(user)
}

/// Reads a page of users fetched from `url`: its users, and the next page (`links.next`
/// resolved against `url`), which must be on `api_url`'s origin, the only place the bearer
/// token goes. Pure.
pub fn read_user_page(
    body: &[u8],
    url: &Url,
    api_url: &Url,
    operation: &Operation,
) -> Result<UserPage, OutreachError> {
    let document: Document<Vec<UserResource>> = decode(body, operation)?;
    let users = document
        .data
        .unwrap_or_default()
        .into_iter()
        .map(UserResource::into_user)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OutreachError::Decode {
            operation: operation.clone(),
            detail: e.to_string(),
        })?;
    let next = match document.links.and_then(|l| l.next) {
        Some(next) => {
            let next_url = url.join(&next).map_err(|e| OutreachError::Decode {
                operation: operation.clone(),
                detail: format!("links.next {next:?} is not a URL: {e}"),
            })?;
            Some(same_origin(&next_url, api_url, operation)?)
        }
        None => None,
    };
    Ok(UserPage { users, next })
}

/// `url`, if it is on `api_url`'s origin ([`crate::endpoint::origin`]).
fn same_origin(url: &Url, api_url: &Url, operation: &Operation) -> Result<Url, OutreachError> {
    crate::endpoint::origin::check_same_origin(api_url, url)
        .map(|()| url.clone())
        .map_err(|foreign| OutreachError::Decode {
            operation: operation.clone(),
            detail: foreign.to_string(),
        })
}

fn json_body(document: &serde_json::Value) -> Bytes {
    Bytes::from(document.to_string())
}

/// Decodes a success body, naming the path that failed.
fn decode<T: DeserializeOwned>(body: &[u8], operation: &Operation) -> Result<T, OutreachError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| OutreachError::Decode {
        operation: operation.clone(),
        detail: format!("at {}: {}", e.path(), e.inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::endpoint::test_support::oversized;
    use crate::outreach::auth::MemoryTokenStore;

    fn config() -> OutreachConfig {
        OutreachConfig {
            api_url: "https://api.outreach.io/api/v2".into(),
            token_url: "https://api.outreach.io/oauth/token".into(),
            client_id: "id".into(),
            client_secret: Secret::new("shh-secret"),
            redirect_uri: "https://usersync.example/callback".into(),
            ..OutreachConfig::default()
        }
    }

    fn client(config: OutreachConfig) -> Result<OutreachClient, OutreachError> {
        OutreachClient::new(
            &config,
            OAuthTokens {
                access_token: "a".into(),
                refresh_token: "r".into(),
                expires_at: None,
            },
            Arc::new(MemoryTokenStore::new()),
        )
    }

    #[test]
    fn urls_are_built_under_the_api_root() {
        let client = client(config()).unwrap();
        assert_eq!(
            client.users_url(&[]).as_str(),
            "https://api.outreach.io/api/v2/users"
        );
        assert_eq!(
            client.users_url(&["42"]).as_str(),
            "https://api.outreach.io/api/v2/users/42"
        );
        let first = client.first_page_url();
        let pairs: Vec<_> = first.query_pairs().collect();
        assert!(pairs.iter().any(|(k, v)| k == "page[size]" && v == "1000"));

        let mut slash = config();
        slash.api_url = "https://api.outreach.io/api/v2/".into();
        let client = OutreachClient::new(
            &slash,
            OAuthTokens {
                access_token: "a".into(),
                refresh_token: "r".into(),
                expires_at: None,
            },
            Arc::new(MemoryTokenStore::new()),
        )
        .unwrap();
        assert_eq!(
            client.users_url(&[]).as_str(),
            "https://api.outreach.io/api/v2/users"
        );
    }

    #[test]
    fn invalid_configurations_are_refused() {
        for page_size in [0, 1001] {
            let mut c = config();
            c.page_size = page_size;
            let err = client(c).unwrap_err();
            assert_eq!(err.code(), "config");
            assert!(err.to_string().contains("page_size"), "{err}");
        }
    }

    #[test]
    fn links_to_other_origins_are_not_followed() {
        let client = client(config()).unwrap();
        let evil: Url = "https://evil.example/api/v2/users?page[after]=x"
            .parse()
            .unwrap();
        assert!(
            client
                .check_same_origin(&evil, &Operation::ListUsers)
                .is_err()
        );
        let good: Url = "https://api.outreach.io/api/v2/users?page[after]=x"
            .parse()
            .unwrap();
        assert!(
            client
                .check_same_origin(&good, &Operation::ListUsers)
                .is_ok()
        );
    }

    fn local_config(address: std::net::SocketAddr) -> OutreachConfig {
        let mut config = config();
        config.api_url = format!("http://{address}/api/v2");
        config.token_url = format!("http://{address}/oauth/token");
        config.max_retries = 0;
        config
    }

    #[tokio::test]
    async fn an_api_answer_over_the_cap_is_refused_naming_the_endpoint() {
        let address = oversized(StatusCode::OK, API_PAGE_CAP + 1).await;
        let refused = client(local_config(address))
            .unwrap()
            .get_user(OutreachUserId(7))
            .await
            .unwrap_err();
        let message = refused.to_string();
        assert!(
            matches!(refused, OutreachError::Decode { .. })
                && message.contains(&format!("http://{address}/api/v2/users/7"))
                && message.contains(&format!("larger than {API_PAGE_CAP} bytes")),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_token_answer_over_the_cap_is_refused_naming_the_endpoint() {
        use crate::endpoint::body::OAUTH_ANSWER_CAP;
        let address = oversized(StatusCode::OK, OAUTH_ANSWER_CAP + 1).await;
        let refused = OutreachClient::from_authorization_code(
            &local_config(address),
            "code",
            Arc::new(MemoryTokenStore::new()),
        )
        .await
        .unwrap_err();
        let message = refused.to_string();
        assert!(
            matches!(refused, OutreachError::Decode { .. })
                && message.contains(&format!("http://{address}/oauth/token"))
                && message.contains(&format!("larger than {OAUTH_ANSWER_CAP} bytes")),
            "{message}"
        );
    }

    #[test]
    fn debug_hides_the_client_secret() {
        let shown = format!("{:?}", client(config()).unwrap());
        assert!(!shown.contains("shh-secret"), "{shown}");
    }

    #[test]
    fn decode_errors_name_the_path() {
        let err = decode::<Document<UserResource>>(
            br#"{"data":{"type":"user","id":true}}"#,
            &Operation::ListUsers,
        )
        .unwrap_err();
        assert!(err.to_string().contains("data.id"), "{err}");
    }
}
