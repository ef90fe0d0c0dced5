//! A simulator of one Salesforce org, for the subscriber's tests and for running beside it.
//!
//! Every surface the subscriber uses, each in its own module, all over one shared state:
//!
//! - [`oauth`]: the token endpoint (JWT bearer with signature checks, client credentials,
//!   refresh token) with the real error bodies of docs/simulators.md ("The Salesforce simulator"),
//!   and userinfo;
//! - [`directory`]: the org's User records; every write produces the change records
//!   Salesforce would publish, which [`eventbus`] retains with replay ids, encoded by [`cdc`]
//!   with the writer schemas of [`schema`];
//! - [`pubsub`]: the Pub/Sub API over gRPC; [`cometd`]: the Streaming API; [`query`]: the REST
//!   data API (SOQL subset, paging);
//! - [`control`]: the control API under `/_sim/` for a standalone simulator (`usersync sim
//!   salesforce`), with the fault switches.
//!
//! Like the Outreach simulator it is independent of the product's types (it shares only the
//! generated Pub/Sub wire types, which are the protocol itself), so a bug in a client cannot
//! hide by being shared with its test equipment.
//!
//! # Two hosts on one port
//!
//! Salesforce answers on two kinds of host: the login hosts (`login.salesforce.com`,
//! `test.salesforce.com`) and the org's My Domain host, which is also the instance URL. The
//! client credentials flow works only on the latter. The simulator serves both from one
//! listener and tells them apart by **path prefix**, not by `Host` header, so that a client
//! needs no DNS or resolver override:
//!
//! - login host: [`SalesforceSim::login_url`] = `http://127.0.0.1:PORT`;
//! - My Domain host: [`SalesforceSim::my_domain_url`] = `http://127.0.0.1:PORT/my-domain`,
//!   returned as `instance_url` by every grant.
//!
//! Both serve `POST /services/oauth2/token`, `GET /services/oauth2/userinfo`,
//! `POST /services/oauth2/revoke` and `GET /services/oauth2/authorize` (the web server flow). The JWT audience accepted is the login URL.
//!
//! Every request to those endpoints is logged (method, path, status); see
//! [`SalesforceSim::requests`].

pub mod authorize;
pub mod cdc;
pub mod cometd;
pub mod control;
pub mod directory;
pub mod eventbus;
pub mod oauth;
pub mod pubsub;
pub mod query;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::Value;

pub use directory::{ChangeRecord, UserRecord, Writer};
use directory::{Directory, OVERFLOW_RECORD_ID};
use eventbus::EventBus;
pub use oauth::SfSimUser;
use oauth::{OAuthState, handlers, with_checksum};

/// The org id's 15-character form; the simulator uses the 18-character one.
pub const DEFAULT_ORG_ID: &str = "00DSIM000000001";
pub const DEFAULT_CONSUMER_KEY: &str = "3MVG9usersync.sim.consumer.key";
pub const DEFAULT_CONSUMER_SECRET: &str = "usersync-sim-consumer-secret";
/// The path prefix that stands for the My Domain host.
pub const MY_DOMAIN_PREFIX: &str = "/my-domain";

/// Which Salesforce host a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Login,
    MyDomain,
}

/// How a simulator is set up.
#[derive(Debug, Clone)]
pub struct SfSimConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// 15 characters, `00D…`.
    pub org_id: String,
    /// The connected app's consumer key (its OAuth `client_id`) and secret.
    pub consumer_key: String,
    pub consumer_secret: String,
    /// The public key of the certificate uploaded to the connected app, PEM.
    pub jwt_public_key_pem: String,
    /// Unapproved users get `invalid_app_access` instead of "user hasn't approved this
    /// consumer".
    pub admin_approved_only: bool,
    /// Where the Pub/Sub API (gRPC, plaintext HTTP/2) listens; port 0 picks a free port.
    pub pubsub_listen: SocketAddr,
    /// Keepalive and zero-credit timeouts of a subscription.
    pub stream_timing: pubsub::StreamTiming,
    /// The URL clients reach the HTTP port at, when it is not the listen address (a container
    /// behind its service name): the login host, the JWT audience and every URL the simulator
    /// answers with (`instance_url`, identity URLs) are built on it. `None`: `http://<listen>`,
    /// loopback for a wildcard address.
    pub public_url: Option<String>,
}

impl SfSimConfig {
    /// Defaults on 127.0.0.1:0, verifying assertions with `jwt_public_key_pem`.
    pub fn new(jwt_public_key_pem: impl Into<String>) -> SfSimConfig {
        SfSimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            org_id: DEFAULT_ORG_ID.to_owned(),
            consumer_key: DEFAULT_CONSUMER_KEY.to_owned(),
            consumer_secret: DEFAULT_CONSUMER_SECRET.to_owned(),
            jwt_public_key_pem: jwt_public_key_pem.into(),
            admin_approved_only: false,
            pubsub_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            stream_timing: pubsub::StreamTiming::default(),
            public_url: None,
        }
    }
}

pub use crate::request_log::SimRequest;
use crate::request_log::{self, RequestLog};

/// Everything behind the lock.
pub(crate) struct SimState {
    pub(crate) oauth: OAuthState,
    pub(crate) directory: Directory,
    pub(crate) bus: EventBus,
    /// Usernames whose profile lost View All Users: they may not read `/data/UserChangeEvent`.
    pub(crate) without_view_all_users: BTreeSet<String>,
    /// The REST data API: query locators, page size, API access, injected failures.
    pub(crate) rest: query::RestState,
    /// The Streaming API's Bayeux clients.
    pub(crate) cometd: cometd::CometdState,
    /// Fault: commits are stamped at this time (epoch milliseconds) instead of the wall
    /// clock's, so a test can make several changes of one user within one second.
    pub(crate) commit_clock: Option<i64>,
}

impl SimState {
    /// The time the next commit is stamped with.
    fn commit_ms(&self) -> i64 {
        self.commit_clock.unwrap_or_else(now_ms)
    }

    /// Publishes each change on the bus.
    fn publish(&mut self, changes: Vec<ChangeRecord>) -> Vec<u64> {
        let now = now_ms();
        changes
            .into_iter()
            .map(|change| self.bus.publish(change, now))
            .collect()
    }
}

/// Where a client on this machine reaches a listener: loopback for a wildcard address.
fn reachable(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    }
}

/// The simulator's clock, epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// State shared by the handle and the handlers.
pub struct Shared {
    state: Mutex<SimState>,
    /// The bus's newest position, for streams waiting for events.
    pub(crate) head: tokio::sync::watch::Sender<u64>,
    base_url: String,
    /// Every request answered, outside the state lock.
    requests: RequestLog,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `write` on the state, then wakes the streams if the bus moved.
    pub(crate) fn write<T>(&self, write: impl FnOnce(&mut SimState) -> T) -> T {
        let (result, head) = {
            let mut state = self.lock();
            let result = write(&mut state);
            (result, state.bus.latest())
        };
        self.head.send_if_modified(|seen| {
            let moved = *seen != head;
            *seen = head;
            moved
        });
        result
    }

    fn my_domain_url(&self) -> String {
        format!("{}{MY_DOMAIN_PREFIX}", self.base_url)
    }

    fn host_url(&self, host: Host) -> String {
        match host {
            Host::Login => self.base_url.clone(),
            Host::MyDomain => self.my_domain_url(),
        }
    }
}

/// A running simulator. Cloning is cheap; every clone controls the same simulator. It serves
/// until the tokio runtime that started it shuts down.
#[derive(Clone)]
pub struct SalesforceSim {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    pubsub_addr: SocketAddr,
    faults: tokio::sync::broadcast::Sender<pubsub::StreamFault>,
}

impl std::fmt::Debug for SalesforceSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceSim")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl SalesforceSim {
    /// Binds `config.listen` and serves in a tokio task. Fails if the address cannot be bound,
    /// the org id is not 15 characters, or the public key is not an RSA public key in PEM.
    pub async fn start(config: SfSimConfig) -> std::io::Result<SalesforceSim> {
        let invalid =
            |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
        if config.org_id.len() != 15 || !config.org_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "org id {:?} must be 15 letters or digits",
                config.org_id
            )));
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let base_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", reachable(local_addr)),
        };
        let mut oauth = OAuthState::new(
            with_checksum(&config.org_id),
            config.consumer_key,
            config.consumer_secret,
            &config.jwt_public_key_pem,
            base_url.clone(),
        )
        .map_err(|error| invalid(format!("the JWT public key is unusable: {error}")))?;
        oauth.admin_approved_only = config.admin_approved_only;
        let directory = Directory::new(&config.org_id);
        let bus = EventBus::default();
        let (head, _) = tokio::sync::watch::channel(bus.latest());
        let shared = Arc::new(Shared {
            head,
            state: Mutex::new(SimState {
                oauth,
                directory,
                bus,
                without_view_all_users: BTreeSet::new(),
                rest: query::RestState::default(),
                cometd: cometd::CometdState::default(),
                commit_clock: None,
            }),
            base_url,
            requests: RequestLog::default(),
        });
        let grpc_listener = tokio::net::TcpListener::bind(config.pubsub_listen).await?;
        let pubsub_addr = grpc_listener.local_addr()?;
        let (faults, _) = tokio::sync::broadcast::channel(16);
        let service = pubsub::PubSubService {
            shared: shared.clone(),
            faults: faults.clone(),
            timing: config.stream_timing,
        };
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(crate::proto::eventbus::pub_sub_server::PubSubServer::new(
                    service,
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    grpc_listener,
                ))
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "Salesforce Pub/Sub simulator stopped serving");
            }
        });
        let sim = SalesforceSim {
            shared: shared.clone(),
            local_addr,
            pubsub_addr,
            faults,
        };
        // The control API is merged outside the request log's layer: control calls never count.
        let app = router(shared).merge(control::router(sim.clone()));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "Salesforce simulator stopped serving");
            }
        });
        Ok(sim)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The login host, also the JWT audience: the base URL.
    pub fn login_url(&self) -> String {
        self.base_url()
    }

    /// The My Domain host and instance URL: `{base}/my-domain`.
    pub fn my_domain_url(&self) -> String {
        self.shared.my_domain_url()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Pub/Sub API endpoint, plaintext: `http://127.0.0.1:PORT` (loopback when listening
    /// on every interface).
    pub fn pubsub_url(&self) -> String {
        format!("http://{}", reachable(self.pubsub_addr))
    }

    /// Fault: every open Subscribe stream ends with this error.
    pub fn inject_stream_fault(&self, fault: pubsub::StreamFault) {
        let _ = self.faults.send(fault);
    }

    /// The org id, 18 characters.
    pub fn org_id(&self) -> String {
        self.shared.lock().oauth.org_id.clone()
    }

    pub fn consumer_key(&self) -> String {
        self.shared.lock().oauth.consumer_key.clone()
    }

    /// The current consumer secret.
    pub fn consumer_secret(&self) -> String {
        self.shared.lock().oauth.consumer_secret.clone()
    }

    /// Adds an active, approved user and returns it (the existing one if the username is
    /// taken).
    pub fn add_user(&self, username: &str) -> SfSimUser {
        self.shared.lock().oauth.add_user(username)
    }

    pub fn user(&self, username: &str) -> Option<SfSimUser> {
        self.shared.lock().oauth.user(username).cloned()
    }

    /// Makes `username` the connected app's run-as user for client credentials (`None`:
    /// no run-as user).
    pub fn set_run_as_user(&self, username: Option<&str>) {
        self.shared.lock().oauth.run_as = username.map(str::to_owned);
    }

    /// A refresh token for `username`, as the web authorization-code flow would leave.
    pub fn issue_refresh_token(&self, username: &str) -> String {
        self.shared.lock().oauth.issue_refresh_token(username)
    }

    /// Fault: deactivates the user and ends their sessions.
    ///
    /// # Panics
    ///
    /// If there is no such user: a test bug.
    pub fn deactivate_user(&self, username: &str) {
        assert!(
            self.shared.lock().oauth.deactivate_user(username),
            "no Salesforce sim user {username:?}"
        );
    }

    /// Fault: the user is no longer approved for the app; their refresh tokens are revoked.
    ///
    /// # Panics
    ///
    /// If there is no such user.
    pub fn revoke_approval(&self, username: &str) {
        assert!(
            self.shared.lock().oauth.set_approved(username, false),
            "no Salesforce sim user {username:?}"
        );
    }

    /// Approves the user again.
    ///
    /// # Panics
    ///
    /// If there is no such user.
    pub fn approve(&self, username: &str) {
        assert!(
            self.shared.lock().oauth.set_approved(username, true),
            "no Salesforce sim user {username:?}"
        );
    }

    /// Fault: the consumer secret changes; returns the new one.
    pub fn rotate_client_secret(&self) -> String {
        let secret: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        self.shared.lock().oauth.consumer_secret = secret.clone();
        secret
    }

    /// Fault: every issued access and refresh token stops working.
    pub fn revoke_tokens(&self) {
        self.shared.lock().oauth.revoke_tokens();
    }

    /// Adds a callback URL to the connected app (the web server flow redirects only there).
    pub fn add_callback_url(&self, url: &str) {
        self.shared.lock().oauth.web.add_callback_url(url);
    }

    /// Who signs in at the authorize page of the web server flow (`None`: nobody does, the
    /// browser stays on the login page).
    pub fn sign_in_at_authorize(&self, username: Option<&str>) {
        self.shared.lock().oauth.web.signs_in(username);
    }

    /// Fault: the user who signs in at the authorize page denies the app access.
    pub fn deny_authorizations(&self, denies: bool) {
        self.shared.lock().oauth.web.set_denies(denies);
    }

    /// What clients revoked through `POST /services/oauth2/revoke`, oldest first.
    pub fn revocations(&self) -> Vec<oauth::Revocation> {
        self.shared.lock().oauth.revocations().to_vec()
    }

    // ---- The REST data API -----------------------------------------------------------------

    /// The page size of query results when the client asks for none (2,000 by default; any
    /// size from 1, so tests can page through a few users).
    pub fn set_query_page_size(&self, size: usize) {
        self.shared.lock().rest.default_page_size = size.max(1);
    }

    /// Fault: every open query locator expires, as after 15 idle minutes.
    pub fn expire_query_locators(&self) {
        self.shared.lock().rest.locators.close_all();
    }

    /// Fault: the user's REST API access is switched off (`403 API_DISABLED_FOR_ORG`) or on.
    pub fn set_api_enabled(&self, username: &str, enabled: bool) {
        let mut state = self.shared.lock();
        if enabled {
            state.rest.api_disabled.remove(username);
        } else {
            state.rest.api_disabled.insert(username.to_owned());
        }
    }

    /// Fault: the next `count` REST data requests fail with `status` (a 5xx, say) before
    /// anything else is checked.
    pub fn fail_next_rest_requests(&self, count: usize, status: u16) {
        let mut state = self.shared.lock();
        state
            .rest
            .failures
            .extend(std::iter::repeat_n(status, count));
    }

    // ---- User records and their change events -------------------------------------------

    /// Creates a User record (flat SOQL field names; `Username` required) and publishes its
    /// CREATE event. Returns the new 18-character id.
    pub fn create_user(&self, fields: Value, writer: &Writer) -> Result<String, String> {
        let fields = object(fields)?;
        self.shared.write(|state| {
            let now = state.commit_ms();
            let (id, change) = state.directory.create(fields, writer, now)?;
            state.publish(vec![change]);
            Ok(id)
        })
    }

    /// Changes `ids` in one transaction and publishes the UPDATE event(s): one merged event for
    /// users changed alike. Returns how many events were published.
    pub fn update_users(
        &self,
        ids: &[String],
        changes: Value,
        writer: &Writer,
    ) -> Result<usize, String> {
        let changes = object(changes)?;
        self.shared.write(|state| {
            let now = state.commit_ms();
            let events = state.directory.update(ids, &changes, writer, now)?;
            Ok(state.publish(events).len())
        })
    }

    /// Deactivates a User record (Salesforce users are never deleted).
    pub fn deactivate(&self, id: &str) -> Result<usize, String> {
        self.update_users(
            &[id.to_owned()],
            serde_json::json!({"IsActive": false}),
            &Writer::default(),
        )
    }

    /// A record as SOQL would return it.
    pub fn record(&self, id: &str) -> Option<UserRecord> {
        self.shared.lock().directory.get(id).cloned()
    }

    /// Every record, by id.
    pub fn records(&self) -> Vec<UserRecord> {
        self.shared.lock().directory.all().cloned().collect()
    }

    /// Fault: `changes` happen to `ids` but only a `GAP_UPDATE` header is published (as for an
    /// event over 1 MB or a change made directly in the database).
    pub fn gap_update(&self, ids: &[String], changes: Value) -> Result<(), String> {
        let changes = object(changes)?;
        self.shared.write(|state| {
            let now = state.commit_ms();
            state.directory.update_silently(ids, &changes, now);
            let gap = state.directory.gap("GAP_UPDATE", ids.to_vec(), now);
            state.publish(vec![gap]);
            Ok(())
        })
    }

    /// Fault: a transaction past 100,000 changes: `changes` happen to `ids` and one
    /// `GAP_OVERFLOW` event is all that is published.
    pub fn overflow(&self, ids: &[String], changes: Value) -> Result<(), String> {
        let changes = object(changes)?;
        self.shared.write(|state| {
            let now = state.commit_ms();
            state.directory.update_silently(ids, &changes, now);
            let overflow =
                state
                    .directory
                    .gap("GAP_OVERFLOW", vec![OVERFLOW_RECORD_ID.to_owned()], now);
            state.publish(vec![overflow]);
            Ok(())
        })
    }

    /// Fault: creates a user whose CREATE event reaches subscribers with its Avro payload cut
    /// in half (undecodable). Returns the new user's id.
    pub fn create_user_with_corrupt_event(&self, fields: Value) -> Result<String, String> {
        let fields = object(fields)?;
        self.shared.write(|state| {
            let now = state.commit_ms();
            let (id, change) = state.directory.create(fields, &Writer::default(), now)?;
            state.bus.publish_truncated(change, now_ms());
            Ok(id)
        })
    }

    /// Fault: commits are stamped at `at` from now on (never before an earlier commit: commit
    /// times do not go backwards), or at the wall clock's time again with `None`. Records keep
    /// their dates to the whole second, so changes stamped within one second share a
    /// `LastModifiedDate`.
    pub fn set_commit_clock(&self, at: Option<DateTime<Utc>>) {
        self.shared
            .write(|state| state.commit_clock = at.map(|at| at.timestamp_millis()));
    }

    /// An admin adds a custom text field to User: later events carry a new schema id.
    pub fn add_custom_field(&self, name: &str) -> String {
        self.shared.write(|state| state.bus.add_custom_field(name))
    }

    /// The id of the schema new events are written with.
    pub fn current_schema_id(&self) -> String {
        self.shared.lock().bus.current_schema().id.clone()
    }

    /// Fault: the retention window passes; every retained replay id becomes unusable.
    pub fn expire_replay_window(&self) {
        self.shared.write(|state| state.bus.expire_replay_window());
    }

    /// How long events are retained (72 hours by default).
    pub fn set_retention(&self, retention: std::time::Duration) {
        self.shared.write(|state| {
            state.bus.retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        });
    }

    /// Other orgs' traffic moves the stream head (keepalives then report a newer position).
    pub fn foreign_traffic(&self, positions: u64) {
        self.shared
            .write(|state| state.bus.foreign_traffic(positions));
    }

    /// The stream head as a replay id.
    pub fn latest_replay_id(&self) -> Vec<u8> {
        eventbus::replay_bytes(self.shared.lock().bus.latest())
    }

    /// Fault: the user's profile loses (or regains) View All Users.
    pub fn set_view_all_users(&self, username: &str, granted: bool) {
        let mut state = self.shared.lock();
        if granted {
            state.without_view_all_users.remove(username);
        } else {
            state.without_view_all_users.insert(username.to_owned());
        }
    }

    // ---- Streaming API (CometD) ---------------------------------------------------------

    /// How long a CometD connect is held when no event arrives (110 s by default).
    pub fn set_cometd_hold(&self, hold: std::time::Duration) {
        self.shared.lock().cometd.hold = hold;
    }

    /// Fault: the CometD server forgets every client; their next message gets
    /// `403::Unknown client`. Held connects answer when the bus next moves.
    pub fn expire_cometd_clients(&self) {
        self.shared.lock().cometd.expire_clients();
    }

    /// The retained events, oldest first, each with its Pub/Sub (Avro) payload: what both
    /// transports deliver, for tests that compare them.
    pub fn retained_events(&self) -> Vec<eventbus::BusEvent> {
        self.shared.lock().bus.after(0, usize::MAX)
    }

    /// The JSON of writer schema `schema_id`, as `GetSchema` returns it.
    pub fn schema_json(&self, schema_id: &str) -> Option<String> {
        self.shared
            .lock()
            .bus
            .schema(schema_id)
            .map(|v| v.json.clone())
    }

    /// Every CometD subscribe received, oldest first, with the replay id it asked for.
    pub fn cometd_subscribes(&self) -> Vec<cometd::SubscribeRecord> {
        self.shared.lock().cometd.subscribes()
    }

    /// How many requests were answered since the last reset.
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
}

fn router(shared: Arc<Shared>) -> Router {
    let oauth_routes = |token, userinfo| {
        Router::new()
            .route("/services/oauth2/token", token)
            .route("/services/oauth2/userinfo", userinfo)
            .route("/services/oauth2/revoke", post(handlers::revoke))
            .route("/services/oauth2/authorize", get(handlers::authorize))
    };
    let login = oauth_routes(post(handlers::token_login), get(handlers::userinfo_login));
    let my_domain = oauth_routes(
        post(handlers::token_my_domain),
        get(handlers::userinfo_my_domain),
    )
    .merge(query::routes())
    .route("/cometd/{version}", post(cometd::handle))
    .route(
        "/services/data/{version}/event/eventSchema/{schema_id}",
        get(cometd::event_schema),
    );
    login
        .nest(MY_DOMAIN_PREFIX, my_domain)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.requests.clone(),
            request_log::record,
        ))
        .with_state(shared)
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
    )
}

/// The fields of a JSON object.
fn object(value: Value) -> Result<BTreeMap<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map.into_iter().collect()),
        other => Err(format!(
            "expected a JSON object of User fields, got {other}"
        )),
    }
}

/// A JSON response.
fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}
