//! The admin HTTP server: what an operator or admin reads and changes while usersync runs.
//!
//! The admin surface of docs/operations.md ("The admin API and its token"): health, readiness and
//! `/metrics` for the operator; under `/api/v1` (behind the admin tokens, `auth`, `tokens`)
//! mapping lookup, the decision log, the settings (`settings`), the connections' status with
//! reconnect, disconnect and test (`connections`), a resync and a replay from elsewhere with
//! the log of admin actions (`replay`), and the live feed (`feed`). Without a token it binds to
//! loopback only; beyond loopback every token must be at least [`MIN_TOKEN_CHARS`] long. Each
//! call is made by an actor (`actor`): the name of its token, whose role says whether it may
//! change anything; what it changes is recorded with that name. Beside them the API's OpenAPI
//! document (`openapi`, no token).
//!
//! Everything but the probes sits behind the guard (`guard`): a request must name this server
//! in `Host`, come from its own page when a browser sends `Origin`, and change state only as
//! JSON; every answer carries the security headers (`headers`). docs/security.md ("Admin
//! server") has the threat model. Errors are JSON `{"error": {"code", "message"}}`, and a
//! parameter that does not parse is named.

pub mod actor;
#[cfg(test)]
mod actor_tests;
mod auth;
mod authorize;
pub mod checks;
pub mod client;
mod conflicts;
mod connections;
pub mod feed;
pub mod guard;
mod headers;
mod mappings;
pub mod openapi;
mod replay;
#[cfg(test)]
mod security_tests;
mod settings;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::connection::Connections;
use crate::connection::authorization::StoredAuthorizations;
use crate::engine::decision::Action;
use crate::model::salesforce_id::SalesforceId;
use crate::outreach::OutreachUserId;
use crate::store::{DecisionQuery, MappingFilter, Store};
pub use actor::{Actor, Role};
pub use authorize::PendingAuthorizations;
pub use guard::AdminAddresses;
pub use tokens::AdminToken;

/// The shortest admin token accepted when the server listens beyond loopback: 32 characters
/// (`openssl rand -hex 24` makes 48), far beyond guessing even at full speed; docs/security.md.
pub const MIN_TOKEN_CHARS: usize = 32;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    /// Both connections, shared with the roles that report them.
    pub connections: Connections,
    /// Where a reconnect with new credentials stores them; `None`: reconnects retry the
    /// configured credentials only.
    pub authorizations: Option<StoredAuthorizations>,
    /// The processor's decisions as they are recorded, for the live feed (`None`: no
    /// processor in this process).
    pub decisions: Option<tokio::sync::broadcast::Sender<crate::engine::decision::DecisionRecord>>,
    /// What "test connection" needs: the configuration and the processor's Outreach client
    /// (`None`: that side cannot be tested from this process).
    pub config: Option<Arc<crate::config::Config>>,
    pub outreach: Option<crate::outreach::OutreachClient>,
    /// The tokens every `/api` call must carry one of (`admin.token`, `[[admin.tokens]]`,
    /// checked by [`tokens::configured`]); empty: loopback only, no token asked, every call
    /// is the actor `local`.
    pub tokens: Arc<[AdminToken]>,
    /// Browser authorizations started and not back yet.
    pub pending: PendingAuthorizations,
    /// Admin actions (replay, resync) as they are recorded, for the live feed.
    pub actions: feed::AdminActionFeed,
    /// The names this server answers to (`Host`, `Origin`): built from the bound address,
    /// `admin.public_url` and `admin.allowed_hosts`.
    pub addresses: AdminAddresses,
}

/// The routes of the admin server. Other parts (the webhook receiver) merge theirs into it.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/v1/mappings", get(mappings).post(mappings::map))
        .route(
            "/api/v1/mappings/{outreach_user_id}",
            axum::routing::delete(mappings::unmap),
        )
        .route("/api/v1/conflicts", get(conflicts::open))
        .route("/api/v1/resync", post(resync))
        .route("/api/v1/replay", post(replay::replay))
        .route("/api/v1/admin-actions", get(replay::list))
        .route("/api/v1/settings", get(settings::get).put(settings::put))
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/status", get(connections::status))
        .route("/api/v1/feed", get(feed::feed))
        .route(
            "/api/v1/connections/{side}/reconnect",
            post(connections::reconnect),
        )
        .route(
            "/api/v1/connections/{side}/disconnect",
            post(connections::disconnect),
        )
        .route("/api/v1/connections/{side}/test", post(connections::test))
        .route(
            "/api/v1/connections/{side}/authorize",
            get(authorize::start),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            auth::TokenGate::new(&state.tokens),
            auth::require_token,
        ));
    let guarded = Router::new()
        .route("/", get(page))
        .route("/page.js", get(page_script))
        .route("/page.css", get(page_style))
        .route("/oauth/{side}/callback", get(authorize::callback))
        .route("/api/v1/openapi.yaml", get(openapi::document))
        .merge(api)
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(state.addresses.clone()),
            guard::same_site_only,
        ));
    // The probes answer whatever `Host` they are asked by (a pod IP): they change nothing and
    // return no secret.
    let probes = crate::app::health::Probes::alive()
        .with_store(state.store.clone())
        .with_metrics(state.connections.clone())
        .router();
    guarded.with_state(state).merge(probes)
}

/// Serves `router` on `listener` until `shutdown` turns true. Each request knows its client's
/// address (the token check slows a client that sent wrong tokens, not the others).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
}

/// Binds the admin address; a non-loopback one only when the API has tokens, each of at
/// least [`MIN_TOKEN_CHARS`] characters ([`tokens::refuse_beyond_loopback`]).
pub async fn bind(
    listen: SocketAddr,
    tokens: &[AdminToken],
) -> anyhow::Result<tokio::net::TcpListener> {
    tokens::refuse_beyond_loopback(listen, tokens).map_err(anyhow::Error::msg)?;
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin.listen {listen}: {e}"))
}

/// A JSON error with its status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message,
    }
}

fn store_failed(error: crate::store::StoreError) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "store_unavailable",
        message: error.to_string(),
    }
}

/// The admin page (`page.html`, `page.js`, `page.css`, in the binary): plain HTML, CSS and a
/// little JavaScript over this API, laid out like Outreach's CRM page. It needs no token
/// itself; it asks for one when the API answers 401. Its script and style are files of their
/// own, so its policy (`headers::PAGE_POLICY`) allows no inline script or style at all.
async fn page() -> Response {
    (
        [(
            axum::http::header::CONTENT_SECURITY_POLICY,
            headers::PAGE_POLICY,
        )],
        axum::response::Html(include_str!("page.html")),
    )
        .into_response()
}

async fn page_script() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("page.js"),
    )
        .into_response()
}

async fn page_style() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("page.css"),
    )
        .into_response()
}

/// `POST /api/v1/resync`: the subscriber reads every Salesforce user again and publishes each
/// as a snapshot; the stream goes on after it from a position pinned before the read. Only a
/// running Salesforce side can: 409 otherwise, saying what to do first. Recorded as an admin
/// action, with who asked, before it is asked for.
async fn resync(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    replay::salesforce_running(&state)?;
    let detail = replay::resync_detail(&state).await?;
    let (sequence, action) = replay::record(
        &state,
        &actor,
        crate::store::AdminActionKind::Resync,
        detail,
    )
    .await?;
    state.connections.request_resync();
    tracing::info!(sequence, actor = %actor.name, "an admin asked for a full Salesforce resync");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "resync": "requested",
            "admin_action": feed::admin_action_json(sequence, &action),
            "follow": "GET /api/v1/feed",
        })),
    )
        .into_response())
}

/// An Outreach user id from a path or a query, named when it does not parse.
fn outreach_user_id(raw: &str) -> Result<OutreachUserId, ApiError> {
    raw.parse::<i64>()
        .map(OutreachUserId)
        .map_err(|_| bad_request(format!("outreach_user_id {raw:?} is not an Outreach id")))
}

#[derive(Deserialize)]
struct MappingParams {
    email: Option<String>,
    salesforce_user_id: Option<String>,
    outreach_user_id: Option<String>,
}

async fn mappings(
    State(state): State<AdminState>,
    Query(params): Query<MappingParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let salesforce_user_id = params
        .salesforce_user_id
        .filter(|s| !s.is_empty())
        .map(|raw| {
            SalesforceId::parse(&raw)
                .map_err(|e| bad_request(format!("salesforce_user_id {raw:?}: {e}")))
        })
        .transpose()?;
    let outreach_user_id = params
        .outreach_user_id
        .filter(|s| !s.is_empty())
        .map(|raw| outreach_user_id(&raw))
        .transpose()?;
    let filter = MappingFilter {
        email: params
            .email
            .filter(|s| !s.is_empty())
            .map(|e| crate::model::event::normalize_email(&e)),
        salesforce_user_id,
        outreach_user_id,
    };
    let found = state.store.mappings(&filter).await.map_err(store_failed)?;
    Ok(Json(json!({ "mappings": found })))
}

#[derive(Deserialize)]
struct DecisionParams {
    after: Option<String>,
    action: Option<String>,
    email: Option<String>,
    limit: Option<String>,
}

async fn decisions(
    State(state): State<AdminState>,
    Query(params): Query<DecisionParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let number = |name: &str, raw: Option<String>| -> Result<Option<i64>, ApiError> {
        raw.filter(|s| !s.is_empty())
            .map(|raw| {
                raw.parse::<i64>()
                    .map_err(|_| bad_request(format!("{name} {raw:?} is not a number")))
            })
            .transpose()
    };
    let action = params
        .action
        .filter(|s| !s.is_empty())
        .map(|raw| {
            Action::parse(&raw).ok_or_else(|| {
                bad_request(format!(
                    "action {raw:?} is not one of create, link, remap, update, lock, unlock, skip, conflict"
                ))
            })
        })
        .transpose()?;
    let query = DecisionQuery {
        after: number("after", params.after)?,
        action,
        email: params
            .email
            .filter(|s| !s.is_empty())
            .map(|e| crate::model::event::normalize_email(&e)),
        limit: number("limit", params.limit)?.map_or(50, |n| {
            n.clamp(1, i64::from(crate::store::MAX_DECISION_PAGE)) as u32
        }),
    };
    let page = state.store.decisions(&query).await.map_err(store_failed)?;
    let records: Vec<serde_json::Value> = page
        .records
        .into_iter()
        .map(|(sequence, record)| json!({"sequence": sequence, "decision": record}))
        .collect();
    Ok(Json(
        json!({"decisions": records, "next_after": page.next_after}),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    async fn serve_test() -> (String, watch::Sender<bool>) {
        serve_with_token(None).await
    }

    pub(crate) async fn serve_with_token(token: Option<&str>) -> (String, watch::Sender<bool>) {
        let tokens: Vec<AdminToken> = token
            .map(|token| AdminToken::new("admin", Role::Admin, token))
            .into_iter()
            .collect();
        serve_with_tokens(tokens).await
    }

    async fn serve_with_tokens(tokens: Vec<AdminToken>) -> (String, watch::Sender<bool>) {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap(), &tokens).await.unwrap();
        let local = listener.local_addr().unwrap();
        let url = format!("http://{local}");
        let (stop, shutdown) = watch::channel(false);
        let state = AdminState {
            store,
            connections: Connections::new(),
            authorizations: None,
            decisions: None,
            config: None,
            outreach: None,
            tokens: tokens.into(),
            pending: Default::default(),
            actions: Default::default(),
            addresses: AdminAddresses::loopback(local),
        };
        tokio::spawn(serve(listener, router(state), shutdown));
        (url, stop)
    }

    /// `GET url` and its JSON body.
    async fn get_json(url: String) -> serde_json::Value {
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    #[tokio::test]
    async fn health_readiness_and_an_empty_mapping_list() {
        let (url, _stop) = serve_test().await;
        let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
        let body = get_json(format!("{url}/api/v1/mappings?email=A@B.com")).await;
        assert_eq!(body, json!({"mappings": []}));
    }

    #[tokio::test]
    async fn the_page_is_served_from_the_binary_without_a_token() {
        let (url, _stop) = serve_with_token(Some("page-token")).await;
        let response = reqwest::get(format!("{url}/")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = response.text().await.unwrap();
        for part in [
            "id=\"card-salesforce\"",
            "id=\"card-outreach\"",
            "Automatically remap when Salesforce User is marked Inactive",
            "When syncing both ways",
            "id=\"feed\"",
            "id=\"conflicts\"",
            "id=\"mapping-search\"",
        ] {
            assert!(page.contains(part), "the page has {part}");
        }
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let (url, _stop) = serve_test().await;
        let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
        );
        let page = response.text().await.unwrap();
        assert_eq!(
            crate::metrics::sample(
                &page,
                "usersync_connection_state{side=\"outreach\",state=\"not_configured\"}"
            ),
            Some(1.0),
            "{page}"
        );
    }

    #[tokio::test]
    async fn a_bad_parameter_is_named_in_a_json_error() {
        let (url, _stop) = serve_test().await;
        let response = reqwest::get(format!("{url}/api/v1/decisions?action=explode"))
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("action \"explode\""),
            "{body}"
        );
        let response = reqwest::get(format!("{url}/api/v1/mappings?outreach_user_id=x1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }

    #[tokio::test]
    async fn status_shows_both_sides_and_a_manual_disconnect_then_a_reconnect() {
        let (url, _stop) = serve_test().await;
        let http = reqwest::Client::new();
        let status = get_json(format!("{url}/api/v1/status")).await;
        assert_eq!(
            status["connections"]["salesforce"]["state"],
            "not_configured"
        );
        assert_eq!(status["connections"]["outreach"]["state"], "not_configured");

        let disconnected = http
            .post(format!("{url}/api/v1/connections/outreach/disconnect"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(disconnected.status(), 200);
        let body: serde_json::Value = disconnected.json().await.unwrap();
        assert_eq!(body["connection"]["state"], "disconnected");
        assert_eq!(body["connection"]["reason"], "manual");

        let reconnecting = http
            .post(format!("{url}/api/v1/connections/outreach/reconnect"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(reconnecting.status(), 202);
        let body: serde_json::Value = reconnecting.json().await.unwrap();
        assert_eq!(body["connection"]["state"], "connecting");
        assert_eq!(body["connection"]["reason"], serde_json::Value::Null);

        let unknown = http
            .post(format!("{url}/api/v1/connections/hubspot/reconnect"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        let body: serde_json::Value = unknown.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_side");
    }

    #[tokio::test]
    async fn with_a_token_every_api_call_needs_it_and_health_and_metrics_do_not() {
        let (url, _stop) = serve_with_token(Some("s3cret-admin")).await;
        let http = reqwest::Client::new();
        let call = |path: &str, token: Option<&str>| {
            let request = http.get(format!("{url}{path}"));
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
            .send()
        };
        let refused = call("/api/v1/status", None).await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer"),
            "{body}"
        );
        let wrong = call("/api/v1/settings", Some("s3cret-admim"))
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let text = wrong.text().await.unwrap();
        assert!(
            !text.contains("s3cret"),
            "the token is never echoed: {text}"
        );
        assert_eq!(
            call("/api/v1/status", Some("s3cret-admin"))
                .await
                .unwrap()
                .status(),
            200
        );
        // The feed alone also takes it in the query (browsers cannot set WebSocket headers).
        assert_eq!(
            call("/api/v1/mappings?access_token=s3cret-admin", None)
                .await
                .unwrap()
                .status(),
            401
        );
        for open in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(call(open, None).await.unwrap().status(), 200, "{open}");
        }
    }

    #[tokio::test]
    async fn a_refused_settings_save_names_the_rule_and_keeps_the_settings_in_force() {
        let (url, _stop) = serve_test().await;
        let http = reqwest::Client::new();
        let current = get_json(format!("{url}/api/v1/settings")).await;
        assert_eq!(current["settings"]["email_field"]["dedupe"], "both");
        assert_eq!(
            current["settings"]["user_mapping"]["auto_remap_on_inactive"],
            true
        );

        let mut breaking = current["settings"].clone();
        breaking["email_field"]["dedupe"] = json!("inbound");
        let refused = http
            .put(format!("{url}/api/v1/settings"))
            .json(&breaking)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "remap_requires_dedupe_both");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("When syncing both ways"),
            "{body}"
        );
        let after = get_json(format!("{url}/api/v1/settings")).await;
        assert_eq!(after, current, "a refused save changes nothing");

        // Turning the remap off first makes the same deduping choice valid.
        breaking["user_mapping"]["auto_remap_on_inactive"] = json!(false);
        let saved = http
            .put(format!("{url}/api/v1/settings"))
            .json(&breaking)
            .send()
            .await
            .unwrap();
        assert_eq!(saved.status(), 200);
        let after = get_json(format!("{url}/api/v1/settings")).await;
        assert_eq!(after["settings"], breaking);
    }

    #[tokio::test]
    async fn a_public_address_is_refused_without_a_token() {
        let error = bind("0.0.0.0:0".parse().unwrap(), &[]).await.unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
        let long = AdminToken::new("admin", Role::Admin, "0123456789abcdef0123456789abcdef");
        assert!(bind("0.0.0.0:0".parse().unwrap(), &[long]).await.is_ok());
    }

    #[tokio::test]
    async fn a_short_token_is_refused_beyond_loopback_only() {
        let config = crate::config::AdminConfig {
            token: crate::config::Secret::new("s3cret-admin-token-of-31-chars!"),
            ..Default::default()
        };
        let tokens = tokens::configured(&config).unwrap();
        let short = tokens[0].token.expose().to_owned();
        assert_eq!(short.len(), MIN_TOKEN_CHARS - 1);
        let error = bind("0.0.0.0:0".parse().unwrap(), &tokens)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("31 characters")
                && error.contains("at least 32")
                && error.contains("admin.token"),
            "{error}"
        );
        assert!(!error.contains(&short), "the token is never shown: {error}");
        assert!(bind("127.0.0.1:0".parse().unwrap(), &tokens).await.is_ok());
    }
}
