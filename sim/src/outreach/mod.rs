//! A simulator of Outreach's REST API v2 (users, webhooks) and its OAuth endpoints.
//!
//! Test equipment for usersync's Outreach client: it speaks Outreach's wire format (JSON:API
//! with integer ids, the documented error documents, OAuth à la Doorkeeper, per-user rate
//! limits with their headers) as described in docs/simulators.md, and lets a test
//! seed users, issue credentials, inspect requests and inject faults. It is an independent
//! implementation — it never uses the product's `usersync::outreach` types — so a bug in the
//! product's serialization cannot hide by being shared with its test equipment. Where the
//! docs/outreach.md leaves behaviour open, the module that implements it says what was chosen.
//!
//! Layout, one responsibility each:
//! - [`OutreachSim`] (here): the handle — start, seed, inspect, fault switches;
//! - `user` / `directory`: the user model and the pure rules of the user directory;
//! - `query` / `cursor`: collection query parameters and opaque cursors;
//! - `document`: JSON:API rendering and write-body validation;
//! - `credentials` / `oauth`: token state and the `/oauth` endpoints;
//! - `rate_limit` / `faults`: per-user budgets and injected failures, both pure;
//! - `http` / `api` / `users`: the router, the `/api/v2` pipeline, the user handlers;
//! - `webhooks` / `webhook_routes` / `delivery`: the webhook resource and the payloads a user
//!   change causes (pure), its handlers, and the background sender with its record;
//! - `control`: the test control API;
//! - `state`: the shared, locked state.
//!
//! # Control API
//!
//! For out-of-process use (`usersync sim outreach --listen ADDR`), the handle's direct calls
//! are also served under `/_sim/` as plain JSON. Control calls are never counted as requests
//! and never meet faults, latency, authentication or rate limits.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `POST /_sim/users` | a [`SimUser`] in JSON; only `email` is required (`id` 0 or absent = next id) | 201 the stored user (and a `user.created` delivery); 422 `{"error"}` if a rule refuses it |
//! | `PATCH /_sim/users/{id}` | any of `username`, `first_name`, `last_name`, `title` (string or null), `locked`, `custom` (five strings or nulls) | 200 the user (and a `user.updated` delivery if something changed); 404 |
//! | `POST /_sim/webhooks` | `{"url", "secret"?, "payload_version"? (1), "resource"? ("user"), "action"? ("*")}` | 201 the webhook |
//! | `GET /_sim/webhooks` | | 200 the webhooks (secrets left out) |
//! | `GET /_sim/webhook-deliveries` | | 200 every finished delivery ([`SimDelivery`]), oldest first |
//! | `DELETE /_sim/webhook-deliveries` | | 204, record cleared |
//! | `GET /_sim/users` | | 200 all users, by id |
//! | `POST /_sim/tokens` | `{"scopes":["users.all"]}` | 200 [`SimTokens`] |
//! | `POST /_sim/authorization-codes` | `{"scopes":[…]}` | 200 `{"code":"…"}` |
//! | `GET /_sim/requests` | | 200 `{"count":N,"requests":[{"method","path","status"}]}` |
//! | `DELETE /_sim/requests` | | 204, log cleared |
//! | `POST /_sim/faults` | any of `fail_next: {n, status}`, `error_ratio`, `latency_ms`, `revoke_tokens: true`, `remove_scope: "…"`, `rate_limit_storm: n`, `exhaust_rate_limit: true`, `expire_access_tokens: true`, `corrupt_webhook_signatures: n` | 204 |
//! | `DELETE /_sim/faults` | | 204, faults cleared |

mod api;
pub(crate) mod base64url;
mod control;
mod credentials;
mod cursor;
mod delivery;
mod directory;
mod document;
mod faults;
mod http;
mod oauth;
mod query;
mod rate_limit;
mod state;
mod user;
mod users;
mod webhook_routes;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde::{Deserialize, Serialize};

pub use delivery::{MAX_ATTEMPTS as WEBHOOK_MAX_ATTEMPTS, SimDelivery};
pub use directory::{DirectoryError, UserChanges};
pub use user::SimUser;
pub use webhooks::{NewSimWebhook, SimWebhook};

use delivery::{Deliveries, DeliveryPolicy};
use webhooks::UserEvent;

use credentials::Grant;
use state::Shared;

/// The Outreach user on whose behalf every credential is issued ("the authorizing user").
pub const DEFAULT_SUBJECT: &str = "admin@sim.outreach";
pub const DEFAULT_CLIENT_ID: &str = "usersync-test-client";
pub const DEFAULT_CLIENT_SECRET: &str = "usersync-test-secret";
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1/oauth/outreach/callback";
pub const DEFAULT_RATE_LIMIT: u32 = 10_000;
pub const DEFAULT_RATE_LIMIT_WINDOW_SECS: u64 = 3600;
pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: u64 = 7200;
pub const DEFAULT_MINT_THROTTLE_SECS: u64 = 60;

/// How a simulator is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The one registered OAuth client.
    pub client_id: String,
    pub client_secret: String,
    /// The client's registered redirect URI.
    pub redirect_uri: String,
    /// Requests per window per authorizing user.
    pub rate_limit_per_window: u32,
    pub rate_limit_window: Duration,
    pub access_token_ttl: Duration,
    /// One token mint per (user, client) per this long, else 429; zero disables.
    pub mint_throttle: Duration,
    /// How long a webhook delivery waits for an answer (Outreach: 5 s).
    pub webhook_timeout: Duration,
    /// The pause before a delivery that failed on the network is tried again (Outreach: ~1 s).
    pub webhook_retry_interval: Duration,
    /// The URL clients reach the simulator at, when it is not the listen address (a container
    /// behind its service name); `links` in its answers are built on it. `None`:
    /// `http://<listen>`, loopback for a wildcard address.
    pub public_url: Option<String>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            redirect_uri: DEFAULT_REDIRECT_URI.to_owned(),
            rate_limit_per_window: DEFAULT_RATE_LIMIT,
            rate_limit_window: Duration::from_secs(DEFAULT_RATE_LIMIT_WINDOW_SECS),
            access_token_ttl: Duration::from_secs(DEFAULT_ACCESS_TOKEN_TTL_SECS),
            mint_throttle: Duration::from_secs(DEFAULT_MINT_THROTTLE_SECS),
            webhook_timeout: Duration::from_secs(5),
            webhook_retry_interval: Duration::from_secs(1),
            public_url: None,
        }
    }
}

/// A token pair issued directly by a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

pub use crate::request_log::SimRequest;

/// A running simulator. Cloning is cheap; every clone controls the same simulator. It
/// serves until the tokio runtime that started it shuts down.
#[derive(Debug, Clone)]
pub struct OutreachSim {
    shared: Arc<Shared>,
}

impl OutreachSim {
    /// Binds `config.listen` and serves in a tokio task.
    ///
    /// Fails if the address cannot be bound or the rate-limit window is zero.
    pub async fn start(config: SimConfig) -> std::io::Result<OutreachSim> {
        if config.rate_limit_window.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the rate-limit window must be longer than zero",
            ));
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let deliveries = Deliveries::start(DeliveryPolicy {
            timeout: config.webhook_timeout,
            retry_interval: config.webhook_retry_interval,
        });
        let shared = Arc::new(Shared::new(config, listener.local_addr()?, deliveries));
        let app = http::router(shared.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "Outreach simulator stopped serving");
            }
        });
        Ok(OutreachSim { shared })
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> OutreachSim {
        OutreachSim { shared }
    }

    /// `http://127.0.0.1:PORT` (the loopback address when listening on all interfaces).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `{base}/api/v2`.
    pub fn api_url(&self) -> String {
        self.shared.api_url()
    }

    /// `{base}/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.shared.base_url)
    }

    /// `{base}/oauth/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth/authorize", self.shared.base_url)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Adds a user (id 0 = the next id) and returns its id. Not counted as a request.
    ///
    /// # Panics
    ///
    /// If the directory refuses the user (blank, invalid or taken email; taken or negative
    /// id): seeding an impossible state is a bug in the test. Use
    /// [`try_seed_user`](Self::try_seed_user) to handle it instead.
    pub fn seed_user(&self, user: SimUser) -> i64 {
        match self.try_seed_user(user) {
            Ok(user) => user.id,
            Err(problem) => panic!("cannot seed Outreach user: {problem}"),
        }
    }

    /// Adds a user (id 0 = the next id) and returns it as stored. Like a create through the
    /// API, it sends `user.created` to the registered webhooks.
    pub fn try_seed_user(&self, user: SimUser) -> Result<SimUser, DirectoryError> {
        let mut state = self.shared.lock();
        let user = state.directory.insert(user)?;
        state.announce(UserEvent::Created(&user), Utc::now());
        Ok(user)
    }

    /// Changes a user as an admin would in Outreach's UI (not counted as a request); sends
    /// `user.updated` to the registered webhooks when something changed.
    pub fn update_user(&self, id: i64, changes: UserChanges) -> Result<SimUser, DirectoryError> {
        let now = Utc::now();
        let mut state = self.shared.lock();
        let before = state
            .directory
            .get(id)
            .cloned()
            .ok_or(DirectoryError::NotFound(id))?;
        let after = state.directory.update(id, changes, now.trunc_subsecs(3))?;
        state.announce(
            UserEvent::Updated {
                before: &before,
                after: &after,
            },
            now,
        );
        Ok(after)
    }

    /// Registers a webhook as `POST /webhooks` would, without a request.
    pub fn add_webhook(&self, new: NewSimWebhook) -> SimWebhook {
        let now = user::now_millis();
        self.shared.lock().webhooks.create(new, now)
    }

    /// Every registered webhook, by id (each with its secret, for tests).
    pub fn webhooks(&self) -> Vec<SimWebhook> {
        self.shared.lock().webhooks.all().cloned().collect()
    }

    /// Every finished webhook delivery, oldest first.
    pub fn webhook_deliveries(&self) -> Vec<SimDelivery> {
        self.shared.deliveries.all()
    }

    /// Waits until at least `n` deliveries have finished, or `timeout` passed; returns them all.
    pub async fn wait_for_webhook_deliveries(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<SimDelivery> {
        self.shared.deliveries.wait_for(n, timeout).await
    }

    pub fn clear_webhook_deliveries(&self) {
        self.shared.deliveries.clear();
    }

    /// The next `n` signed deliveries carry a signature made with the wrong key.
    pub fn corrupt_webhook_signatures(&self, n: u32) {
        self.shared.lock().webhooks.corrupt_signatures(n);
    }

    /// Every user, sorted by id.
    pub fn users(&self) -> Vec<SimUser> {
        self.shared.lock().directory.all().cloned().collect()
    }

    pub fn user(&self, id: i64) -> Option<SimUser> {
        self.shared.lock().directory.get(id).cloned()
    }

    /// Issues an access and refresh token to the configured client for the authorizing user.
    /// This is not a mint: it is neither throttled nor does it start the mint throttle.
    pub fn issue_tokens(&self, scopes: &[&str]) -> SimTokens {
        let grant = self.grant(scopes);
        let minted = self.shared.lock().credentials.issue(grant, Utc::now());
        SimTokens {
            access_token: minted.access_token,
            refresh_token: minted.refresh_token,
            expires_in: minted.expires_in,
        }
    }

    /// Makes `refresh_token` (chosen by the caller) a valid refresh token of the default
    /// authorizing user for `scopes`, as if issued now (14 days, evicted like any other; not a
    /// mint, so the throttle does not see it).
    pub fn accept_refresh_token(&self, refresh_token: &str, scopes: &[&str]) {
        let grant = self.grant(scopes);
        self.shared
            .lock()
            .credentials
            .accept_refresh_token(refresh_token, grant, Utc::now());
    }

    /// The registered OAuth application: client id, secret and redirect URI.
    pub fn app(&self) -> (String, String, String) {
        let config = &self.shared.config;
        (
            config.client_id.clone(),
            config.client_secret.clone(),
            config.redirect_uri.clone(),
        )
    }

    /// Issues an authorization code for the configured client and redirect URI, as
    /// `/oauth/authorize` would.
    pub fn issue_authorization_code(&self, scopes: &[&str]) -> String {
        let grant = self.grant(scopes);
        let redirect_uri = self.shared.config.redirect_uri.clone();
        self.shared
            .lock()
            .credentials
            .issue_code(grant, &redirect_uri, Utc::now())
    }

    /// How many requests to `/api/v2/*` and `/oauth/*` were answered since the last reset.
    pub fn request_count(&self) -> u64 {
        self.shared.requests.count()
    }

    /// Those requests, oldest first.
    pub fn requests(&self) -> Vec<SimRequest> {
        self.shared.requests.all()
    }

    pub fn reset_requests(&self) {
        self.shared.requests.clear();
    }

    /// The next `n` API requests answer `status` (503 as scheduled maintenance with an
    /// ISO-8601 `Retry-After`, 429 as a rate-limit storm, others with a plain errors body).
    /// Calls queue up.
    ///
    /// # Panics
    ///
    /// If `status` is not an error status (400–599).
    pub fn fail_next(&self, n: u32, status: u16) {
        assert!(
            (400..=599).contains(&status),
            "fail_next needs an error status, not {status}"
        );
        self.shared.lock().faults.fail_next(n, status);
    }

    /// Answers a deterministic fraction of API requests with 500: counting from this call,
    /// request k fails exactly when ⌊k·ratio⌋ > ⌊(k−1)·ratio⌋ (0.25 fails every 4th).
    pub fn set_error_ratio(&self, ratio: f64) {
        self.shared.lock().faults.set_error_ratio(ratio);
    }

    /// Added to every API response.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().faults.set_latency(latency);
    }

    /// Every issued access token, refresh token and outstanding authorization code stops
    /// working (API 401, token endpoint `invalid_grant`). Credentials issued later work.
    pub fn revoke_tokens(&self) {
        self.shared.lock().credentials.revoke_all();
    }

    /// Every outstanding credential loses `scope`; using it for that scope answers 403.
    pub fn remove_scope(&self, scope: &str) {
        self.shared.lock().credentials.remove_scope(scope);
    }

    /// The next `n` API requests answer 429 with `Retry-After: 1`.
    pub fn rate_limit_storm(&self, n: u32) {
        self.shared.lock().faults.rate_limit_storm(n);
    }

    /// Every authorizing user's budget for the current window drops to 0 (a window opens now
    /// for users without one).
    pub fn exhaust_rate_limit(&self) {
        let mut state = self.shared.lock();
        let mut subjects = state.credentials.subjects();
        subjects.insert(DEFAULT_SUBJECT.to_owned());
        state
            .rate_limiter
            .exhaust(subjects.iter().map(String::as_str), Utc::now());
    }

    /// Every issued access token expires now; refresh tokens stay valid.
    pub fn expire_access_tokens(&self) {
        self.shared
            .lock()
            .credentials
            .expire_access_tokens(Utc::now());
    }

    /// Removes the injected faults and latency, and restores every rate-limit budget.
    /// Credentials revoked, expired or narrowed stay so.
    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.faults.clear();
        state.webhooks.clear_faults();
        state.rate_limiter.reset();
    }

    fn grant(&self, scopes: &[&str]) -> Grant {
        Grant::new(DEFAULT_SUBJECT, &self.shared.config.client_id, scopes)
    }
}
