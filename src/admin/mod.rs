//! The admin HTTP server: what an operator or admin reads while usersync runs.
//!
//! This is the core of `admin.md`'s surface — health, readiness, mapping lookup, the decision
//! log, and the connections' status with reconnect and disconnect (`connections`) — served in
//! every role that keeps state. It binds to loopback by default:
//! the bearer-token protection that would allow another address comes with the rest of the
//! admin API (settings, connections, the page and the live feed). Errors are JSON
//! `{"error": {"code", "message"}}`, and a query parameter that does not parse is named.

pub mod client;
mod connections;
pub mod feed;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
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
use crate::outreach::OutreachUserId;
use crate::salesforce::id::SalesforceId;
use crate::store::{DecisionQuery, MappingFilter, Store};

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
}

/// The routes of the admin server. Other parts (the webhook receiver) merge theirs into it.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/api/v1/mappings", get(mappings))
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
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Binds the admin address; a non-loopback one is refused until the API has its token.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "admin.listen {listen} is not a loopback address; without an admin token the admin \
             server listens on loopback only"
        );
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin.listen {listen}: {e}"))
}

/// A JSON error with its status.
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

async fn ready(State(state): State<AdminState>) -> Result<&'static str, ApiError> {
    state.store.settings().await.map_err(store_failed)?;
    Ok("ready")
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
        .map(|raw| {
            raw.parse::<i64>()
                .map(OutreachUserId)
                .map_err(|_| bad_request(format!("outreach_user_id {raw:?} is not an Outreach id")))
        })
        .transpose()?;
    let filter = MappingFilter {
        email: params
            .email
            .filter(|s| !s.is_empty())
            .map(|e| crate::event::normalize_email(&e)),
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
            .map(|e| crate::event::normalize_email(&e)),
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
mod tests {
    use super::*;

    async fn serve_test() -> (String, watch::Sender<bool>) {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, shutdown) = watch::channel(false);
        let state = AdminState {
            store,
            connections: Connections::new(),
            authorizations: None,
            decisions: None,
            config: None,
            outreach: None,
        };
        tokio::spawn(serve(listener, router(state), shutdown));
        (url, stop)
    }

    #[tokio::test]
    async fn health_readiness_and_an_empty_mapping_list() {
        let (url, _stop) = serve_test().await;
        let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
        let body: serde_json::Value = reqwest::get(format!("{url}/api/v1/mappings?email=A@B.com"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body, json!({"mappings": []}));
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
        let status: serde_json::Value = http
            .get(format!("{url}/api/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            status["connections"]["salesforce"]["state"],
            "not_configured"
        );
        assert_eq!(status["connections"]["outreach"]["state"], "not_configured");

        let disconnected = http
            .post(format!("{url}/api/v1/connections/outreach/disconnect"))
            .send()
            .await
            .unwrap();
        assert_eq!(disconnected.status(), 200);
        let body: serde_json::Value = disconnected.json().await.unwrap();
        assert_eq!(body["connection"]["state"], "disconnected");
        assert_eq!(body["connection"]["reason"], "manual");

        let reconnecting = http
            .post(format!("{url}/api/v1/connections/outreach/reconnect"))
            .send()
            .await
            .unwrap();
        assert_eq!(reconnecting.status(), 202);
        let body: serde_json::Value = reconnecting.json().await.unwrap();
        assert_eq!(body["connection"]["state"], "connecting");
        assert_eq!(body["connection"]["reason"], serde_json::Value::Null);

        let unknown = http
            .post(format!("{url}/api/v1/connections/hubspot/reconnect"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        let body: serde_json::Value = unknown.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_side");
    }

    #[tokio::test]
    async fn a_public_address_is_refused_without_a_token() {
        let error = bind("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
    }
}
