//! The test control API under `/_sim/`: the handle's seeding, inspection and fault switches
//! over HTTP, for a simulator running out of process (`usersync sim outreach`).
//!
//! Plain JSON (not JSON:API: this is test equipment, not Outreach), never counted as
//! requests, never subject to faults, latency, auth or rate limits. Errors are
//! `{"error": "..."}` with 400 (unreadable body) or 422 (a rule refused it). The routes are
//! listed in the [module documentation](super).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::directory::{DirectoryError, UserChanges};
use super::http::plain_json;
use super::state::Shared;
use super::webhooks::NewSimWebhook;
use super::{OutreachSim, SimUser};

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/users", post(seed_user).get(list_users))
        .route("/_sim/users/{id}", patch(update_user))
        .route("/_sim/webhooks", post(add_webhook).get(list_webhooks))
        .route(
            "/_sim/webhook-deliveries",
            get(webhook_deliveries).delete(clear_webhook_deliveries),
        )
        .route("/_sim/tokens", post(issue_tokens))
        .route("/_sim/authorization-codes", post(issue_authorization_code))
        .route("/_sim/requests", get(requests).delete(reset_requests))
        .route("/_sim/faults", post(set_faults).delete(clear_faults))
}

/// A user to seed: a [`SimUser`] in which everything but `email` may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedUser {
    #[serde(default)]
    id: i64,
    email: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    locked: bool,
    #[serde(default)]
    custom: [Option<String>; 5],
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
}

impl From<SeedUser> for SimUser {
    fn from(seed: SeedUser) -> SimUser {
        let mut user = SimUser::new(seed.id, seed.email);
        user.username = seed.username;
        user.first_name = seed.first_name;
        user.last_name = seed.last_name;
        user.title = seed.title;
        user.locked = seed.locked;
        user.custom = seed.custom;
        user.created_at = seed.created_at.unwrap_or(user.created_at);
        user.updated_at = seed.updated_at.unwrap_or(user.created_at);
        user
    }
}

/// A change made "by hand": each field left out stays as it is; `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    #[serde(default, deserialize_with = "present")]
    username: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default)]
    custom: Option<[Option<String>; 5]>,
}

/// A present field, `null` included, as `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl From<UpdateUser> for UserChanges {
    fn from(update: UpdateUser) -> UserChanges {
        UserChanges {
            username: update.username,
            first_name: update.first_name,
            last_name: update.last_name,
            title: update.title,
            locked: update.locked,
            custom: update
                .custom
                .map_or_else(Default::default, |custom| custom.map(Some)),
        }
    }
}

/// A webhook to register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddWebhook {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "one")]
    payload_version: i64,
    #[serde(default = "user")]
    resource: String,
    #[serde(default = "star")]
    action: String,
}

fn one() -> i64 {
    1
}

fn user() -> String {
    "user".to_owned()
}

fn star() -> String {
    "*".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopesRequest {
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNext {
    n: u32,
    status: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsRequest {
    fail_next: Option<FailNext>,
    error_ratio: Option<f64>,
    latency_ms: Option<u64>,
    #[serde(default)]
    revoke_tokens: bool,
    remove_scope: Option<String>,
    rate_limit_storm: Option<u32>,
    #[serde(default)]
    exhaust_rate_limit: bool,
    #[serde(default)]
    expire_access_tokens: bool,
    corrupt_webhook_signatures: Option<u32>,
}

async fn seed_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let seed: SeedUser = match read(&body) {
        Ok(seed) => seed,
        Err(response) => return response,
    };
    match OutreachSim::from_shared(shared).try_seed_user(seed.into()) {
        Ok(user) => plain_json(StatusCode::CREATED, &json!(user)),
        Err(problem) => plain_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": problem.to_string()}),
        ),
    }
}

async fn list_users(State(shared): State<Arc<Shared>>) -> Response {
    plain_json(
        StatusCode::OK,
        &json!(OutreachSim::from_shared(shared).users()),
    )
}

async fn update_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let update: UpdateUser = match read(&body) {
        Ok(update) => update,
        Err(response) => return response,
    };
    match OutreachSim::from_shared(shared).update_user(id, update.into()) {
        Ok(user) => plain_json(StatusCode::OK, &json!(user)),
        Err(problem @ DirectoryError::NotFound(_)) => plain_json(
            StatusCode::NOT_FOUND,
            &json!({"error": problem.to_string()}),
        ),
        Err(problem) => plain_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": problem.to_string()}),
        ),
    }
}

async fn add_webhook(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let add: AddWebhook = match read(&body) {
        Ok(add) => add,
        Err(response) => return response,
    };
    if !matches!(add.payload_version, 1 | 2) {
        return plain_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": format!("payload_version must be 1 or 2, not {}", add.payload_version)}),
        );
    }
    let hook = OutreachSim::from_shared(shared).add_webhook(NewSimWebhook {
        url: add.url,
        resource: add.resource,
        action: add.action,
        secret: add.secret,
        payload_version: add.payload_version,
        active: true,
    });
    plain_json(StatusCode::CREATED, &json!(hook))
}

async fn list_webhooks(State(shared): State<Arc<Shared>>) -> Response {
    plain_json(
        StatusCode::OK,
        &json!(OutreachSim::from_shared(shared).webhooks()),
    )
}

async fn webhook_deliveries(State(shared): State<Arc<Shared>>) -> Response {
    plain_json(
        StatusCode::OK,
        &json!(OutreachSim::from_shared(shared).webhook_deliveries()),
    )
}

async fn clear_webhook_deliveries(State(shared): State<Arc<Shared>>) -> Response {
    OutreachSim::from_shared(shared).clear_webhook_deliveries();
    StatusCode::NO_CONTENT.into_response()
}

async fn issue_tokens(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: ScopesRequest = match read(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let scopes: Vec<&str> = request.scopes.iter().map(String::as_str).collect();
    plain_json(
        StatusCode::OK,
        &json!(OutreachSim::from_shared(shared).issue_tokens(&scopes)),
    )
}

async fn issue_authorization_code(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: ScopesRequest = match read(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let scopes: Vec<&str> = request.scopes.iter().map(String::as_str).collect();
    let code = OutreachSim::from_shared(shared).issue_authorization_code(&scopes);
    plain_json(StatusCode::OK, &json!({ "code": code }))
}

async fn requests(State(shared): State<Arc<Shared>>) -> Response {
    let sim = OutreachSim::from_shared(shared);
    plain_json(
        StatusCode::OK,
        &json!({ "count": sim.request_count(), "requests": sim.requests() }),
    )
}

async fn reset_requests(State(shared): State<Arc<Shared>>) -> Response {
    OutreachSim::from_shared(shared).reset_requests();
    StatusCode::NO_CONTENT.into_response()
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: FaultsRequest = match read(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Some(FailNext { status, .. }) = &request.fail_next
        && !(400..=599).contains(status)
    {
        return plain_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": format!("fail_next.status must be an error status (400-599), not {status}")}),
        );
    }
    let sim = OutreachSim::from_shared(shared);
    if let Some(FailNext { n, status }) = request.fail_next {
        sim.fail_next(n, status);
    }
    if let Some(ratio) = request.error_ratio {
        sim.set_error_ratio(ratio);
    }
    if let Some(latency) = request.latency_ms {
        sim.set_latency(Duration::from_millis(latency));
    }
    if request.revoke_tokens {
        sim.revoke_tokens();
    }
    if let Some(scope) = &request.remove_scope {
        sim.remove_scope(scope);
    }
    if let Some(n) = request.rate_limit_storm {
        sim.rate_limit_storm(n);
    }
    if request.exhaust_rate_limit {
        sim.exhaust_rate_limit();
    }
    if request.expire_access_tokens {
        sim.expire_access_tokens();
    }
    if let Some(n) = request.corrupt_webhook_signatures {
        sim.corrupt_webhook_signatures(n);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    OutreachSim::from_shared(shared).clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

#[allow(clippy::result_large_err)]
fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|error| {
        plain_json(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("unreadable body: {error}")}),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_needs_only_an_email() {
        let seed: SeedUser = serde_json::from_str(r#"{"email":"a@x.test"}"#).unwrap();
        let user = SimUser::from(seed);
        assert_eq!(
            (user.id, user.email.as_str(), user.locked),
            (0, "a@x.test", false)
        );
        assert_eq!(user.created_at, user.updated_at);
    }

    #[test]
    fn a_seed_takes_every_sim_user_field() {
        let full = serde_json::to_string(&SimUser::new(9, "b@x.test")).unwrap();
        let user = SimUser::from(serde_json::from_str::<SeedUser>(&full).unwrap());
        assert_eq!(user.id, 9);
        assert!(serde_json::from_str::<SeedUser>(r#"{"email":"a@x.test","salary":1}"#).is_err());
    }

    #[test]
    fn a_hand_update_tells_absent_from_null() {
        let update: UpdateUser =
            serde_json::from_str(r#"{"title":null,"locked":true,"first_name":"Ann"}"#).unwrap();
        let changes = UserChanges::from(update);
        assert_eq!(changes.title, Some(None));
        assert_eq!(changes.first_name, Some(Some("Ann".into())));
        assert_eq!(changes.last_name, None);
        assert_eq!(changes.locked, Some(true));
        assert!(serde_json::from_str::<UpdateUser>(r#"{"email":"x@y.z"}"#).is_err());
    }

    #[test]
    fn faults_fields_are_all_optional() {
        let request: FaultsRequest = serde_json::from_str("{}").unwrap();
        assert!(request.fail_next.is_none() && !request.revoke_tokens);
        let request: FaultsRequest = serde_json::from_str(
            r#"{"fail_next":{"n":2,"status":503},"latency_ms":5,"exhaust_rate_limit":true}"#,
        )
        .unwrap();
        assert_eq!(request.fail_next.map(|f| (f.n, f.status)), Some((2, 503)));
        assert!(request.exhaust_rate_limit);
    }
}
