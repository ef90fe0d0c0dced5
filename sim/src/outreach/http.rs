//! The HTTP surface: which path goes where, request accounting, and response helpers.
//!
//! - `/api/v2/*` → [`api`](super::api) (the JSON:API pipeline);
//! - `/oauth/token`, `/oauth/authorize` → [`oauth`](super::oauth);
//! - `/_sim/*` → [`control`](super::control), the test control API.
//!
//! Every request to `/api/v2/*` and `/oauth/*` is recorded (method, path with query, final
//! status) by a middleware layered on those routes only, so control calls never count.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

use super::state::Shared;
use super::{api, control, oauth};
use crate::request_log;

/// JSON:API's media type, required on every API request and used on every API response.
pub const JSON_API: &str = "application/vnd.api+json";

/// The whole simulator as one router.
pub fn router(shared: Arc<Shared>) -> Router {
    let counted = Router::new()
        .route("/api/v2", any(api::serve))
        .route("/api/v2/{*path}", any(api::serve))
        .route(
            "/oauth/token",
            post(oauth::token).fallback(oauth::method_not_allowed),
        )
        .route(
            "/oauth/authorize",
            get(oauth::authorize).fallback(oauth::method_not_allowed),
        )
        .route("/oauth/{*path}", any(oauth::not_found))
        .layer(middleware::from_fn_with_state(
            shared.requests.clone(),
            request_log::record,
        ));
    counted
        .merge(control::router())
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Response {
    plain_json(StatusCode::NOT_FOUND, &json!({"error": "not_found"}))
}

/// A JSON:API document response.
pub fn json_api(status: StatusCode, body: &Value) -> Response {
    with_type(status, body, JSON_API)
}

/// A plain JSON response (the OAuth endpoints, the gateway, the control API).
pub fn plain_json(status: StatusCode, body: &Value) -> Response {
    with_type(status, body, "application/json; charset=utf-8")
}

fn with_type(status: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Sets a header from any displayable value.
pub fn set_header(response: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        response.headers_mut().insert(name, value);
    }
}
