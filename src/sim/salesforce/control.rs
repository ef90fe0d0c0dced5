//! The test control API under `/_sim/`: the [`SalesforceSim`] handle's seeding, inspection and
//! fault switches over HTTP, for a simulator running out of process (`usersync sim
//! salesforce`).
//!
//! A scenario run or a person with `curl` needs the same levers a Rust test has — write User
//! records so change events flow, break the connected app's credentials, cut the stream — and
//! must pull them without linking the crate. Each route calls one handle method, so the HTTP
//! surface adds no behaviour of its own that tests in process would miss.
//!
//! Conventions, the Outreach simulator's: plain JSON in and out (not Salesforce's error
//! arrays: this is test equipment, not Salesforce); control calls are never logged or
//! counted, and never meet authentication, API limits or injected REST failures. Errors are
//! `{"error": "…"}` naming what is wrong: 400 when the body cannot be read or a rule of the
//! simulated org refuses it (a missing or taken `Username`, a system field written, a custom
//! field that is not a valid API name), 404 when a User record or authorizing user is
//! unknown. Record ids are accepted in their 15- or 18-character forms.
//!
//! The routes are listed in `docs/simulators.md` ("Salesforce simulator", "Control API").

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::directory::SYSTEM_FIELDS;
use super::oauth::with_checksum;
use super::pubsub::StreamFault;
use super::{SalesforceSim, SfSimUser, Writer, eventbus, json_response, now_ms, object};

/// The control routes, with the handle as their state.
pub fn router(sim: SalesforceSim) -> Router {
    Router::new()
        .route(
            "/_sim/users",
            post(create_user).get(list_users).patch(update_users),
        )
        .route("/_sim/users/{id}", get(get_user).patch(update_user))
        .route("/_sim/users/{id}/deactivate", post(deactivate))
        .route("/_sim/login-users", post(add_login_user))
        .route("/_sim/requests", get(requests).delete(reset_requests))
        .route("/_sim/state", get(state))
        .route("/_sim/faults/revoke-tokens", post(revoke_tokens))
        .route(
            "/_sim/faults/rotate-client-secret",
            post(rotate_client_secret),
        )
        .route("/_sim/faults/view-all-users", post(view_all_users))
        .route(
            "/_sim/faults/deactivate-login-user",
            post(deactivate_login_user),
        )
        .route("/_sim/faults/revoke-approval", post(revoke_approval))
        .route(
            "/_sim/faults/expire-replay-window",
            post(expire_replay_window),
        )
        .route("/_sim/faults/retention", post(set_retention))
        .route("/_sim/faults/gap", post(gap))
        .route("/_sim/faults/overflow", post(overflow))
        .route("/_sim/faults/stream", post(stream_fault))
        .route("/_sim/faults/corrupt-event", post(corrupt_event))
        .route("/_sim/faults/custom-field", post(custom_field))
        .route("/_sim/faults/foreign-traffic", post(foreign_traffic))
        .route("/_sim/faults/rest-failures", post(rest_failures))
        .route(
            "/_sim/faults/expire-query-locators",
            post(expire_query_locators),
        )
        .with_state(sim)
}

/// Why a control call was refused.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("unreadable body: {0}")]
    Unreadable(String),
    #[error("unreadable query string: {0}")]
    UnreadableQuery(String),
    /// A rule of the simulated org, or of the control API, refused the input.
    #[error("{0}")]
    Refused(String),
    #[error("no User record {0}")]
    UnknownRecord(String),
    #[error("no authorizing user {0:?} (add it with POST /_sim/login-users or --user)")]
    UnknownLoginUser(String),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match self {
            ControlError::UnknownRecord(_) | ControlError::UnknownLoginUser(_) => {
                StatusCode::NOT_FOUND
            }
            _ => StatusCode::BAD_REQUEST,
        };
        json_response(status, &json!({"error": self.to_string()}))
    }
}

type Answer = Result<Response, ControlError>;

fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|error| ControlError::Unreadable(error.to_string()))
}

fn ok(status: StatusCode, body: &Value) -> Answer {
    Ok(json_response(status, body))
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Who writes, from the query string of a write: `commit_user` (an id) and `change_origin`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriterQuery {
    commit_user: Option<String>,
    change_origin: Option<String>,
}

fn writer(query: Option<String>) -> Result<Writer, ControlError> {
    let query: WriterQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|error| ControlError::UnreadableQuery(error.to_string()))?;
    let user_id = match query.commit_user {
        Some(id) => id_form(&id)?,
        None => String::new(),
    };
    Ok(Writer {
        user_id,
        change_origin: query.change_origin.unwrap_or_default(),
    })
}

/// The 18-character form of a record id given in either form.
fn id_form(raw: &str) -> Result<String, ControlError> {
    let shaped = raw.chars().all(|c| c.is_ascii_alphanumeric());
    match raw.len() {
        15 if shaped => Ok(with_checksum(raw)),
        18 if shaped => Ok(raw.to_owned()),
        _ => Err(ControlError::Refused(format!(
            "{raw:?} is not a 15- or 18-character Salesforce id"
        ))),
    }
}

/// The 18-character forms of `ids`, each the id of an existing User record.
fn known_ids(sim: &SalesforceSim, ids: &[String]) -> Result<Vec<String>, ControlError> {
    ids.iter()
        .map(|raw| {
            let id = id_form(raw)?;
            match sim.record(&id) {
                Some(_) => Ok(id),
                None => Err(ControlError::UnknownRecord(raw.clone())),
            }
        })
        .collect()
}

/// A JSON object of flat User fields, refusing the ones the system sets.
fn writable_fields(fields: Value) -> Result<Value, ControlError> {
    let map = object(fields).map_err(ControlError::Refused)?;
    if let Some(field) = map.keys().find(|k| SYSTEM_FIELDS.contains(&k.as_str())) {
        return Err(ControlError::Refused(format!("{field} is not writeable")));
    }
    Ok(Value::Object(map.into_iter().collect()))
}

// ---- User records ---------------------------------------------------------------------------

async fn create_user(
    State(sim): State<SalesforceSim>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Answer {
    let writer = writer(query)?;
    let fields: Value = read(&body)?;
    let id = sim
        .create_user(fields, &writer)
        .map_err(ControlError::Refused)?;
    ok(StatusCode::CREATED, &json!({ "id": id }))
}

async fn list_users(State(sim): State<SalesforceSim>) -> Answer {
    let records: Vec<BTreeMap<String, Value>> = sim
        .records()
        .into_iter()
        .map(|record| record.fields)
        .collect();
    ok(StatusCode::OK, &json!(records))
}

async fn get_user(State(sim): State<SalesforceSim>, Path(id): Path<String>) -> Answer {
    match sim.record(&id_form(&id)?) {
        Some(record) => ok(StatusCode::OK, &json!(record.fields)),
        None => Err(ControlError::UnknownRecord(id)),
    }
}

/// `PATCH /_sim/users`: one transaction over several records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkUpdate {
    ids: Vec<String>,
    fields: Value,
}

async fn update_users(
    State(sim): State<SalesforceSim>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Answer {
    let writer = writer(query)?;
    let request: BulkUpdate = read(&body)?;
    if request.ids.is_empty() {
        return Err(ControlError::Refused(
            "ids must name at least one User record".into(),
        ));
    }
    apply_update(&sim, &request.ids, request.fields, &writer)
}

async fn update_user(
    State(sim): State<SalesforceSim>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Answer {
    let writer = writer(query)?;
    let fields: Value = read(&body)?;
    apply_update(&sim, &[id], fields, &writer)
}

async fn deactivate(
    State(sim): State<SalesforceSim>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Answer {
    let writer = writer(query)?;
    apply_update(&sim, &[id], json!({"IsActive": false}), &writer)
}

/// Checks the ids, then updates: the answer says how many UPDATE events were published (0
/// when nothing changed).
fn apply_update(sim: &SalesforceSim, ids: &[String], fields: Value, writer: &Writer) -> Answer {
    let ids = known_ids(sim, ids)?;
    let events = sim
        .update_users(&ids, fields, writer)
        .map_err(ControlError::Refused)?;
    ok(StatusCode::OK, &json!({ "events": events }))
}

// ---- Authorizing users, the request log, the state -----------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Username {
    username: String,
}

fn login_user_json(user: &SfSimUser) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "active": user.active,
        "approved": user.approved,
    })
}

async fn add_login_user(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let Username { username } = read(&body)?;
    if username.trim().is_empty() {
        return Err(ControlError::Refused("username must not be blank".into()));
    }
    ok(StatusCode::OK, &login_user_json(&sim.add_user(&username)))
}

async fn requests(State(sim): State<SalesforceSim>) -> Answer {
    ok(
        StatusCode::OK,
        &json!({ "count": sim.request_count(), "requests": sim.requests() }),
    )
}

async fn reset_requests(State(sim): State<SalesforceSim>) -> Answer {
    sim.reset_requests();
    no_content()
}

async fn state(State(sim): State<SalesforceSim>) -> Answer {
    // Events past the retention window are dropped first, so the count is what a subscriber
    // could still replay.
    let (latest, schema_id, retained, users) = sim.shared.write(|state| {
        state.bus.purge(now_ms());
        (
            state.bus.latest(),
            state.bus.current_schema().id.clone(),
            state.bus.len(),
            state.directory.len(),
        )
    });
    let replay_id: String = eventbus::replay_bytes(latest)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ok(
        StatusCode::OK,
        &json!({
            "latest_replay_id": replay_id,
            "schema_id": schema_id,
            "retained_events": retained,
            "users": users,
        }),
    )
}

// ---- Faults: credentials and permissions ----------------------------------------------------

async fn revoke_tokens(State(sim): State<SalesforceSim>) -> Answer {
    sim.revoke_tokens();
    no_content()
}

async fn rotate_client_secret(State(sim): State<SalesforceSim>) -> Answer {
    // The simulator's own test secret: handing it back is the point of the switch.
    let secret = sim.rotate_client_secret();
    ok(StatusCode::OK, &json!({ "consumer_secret": secret }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewAllUsers {
    username: String,
    granted: bool,
}

async fn view_all_users(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let request: ViewAllUsers = read(&body)?;
    if sim.user(&request.username).is_none() {
        return Err(ControlError::UnknownLoginUser(request.username));
    }
    sim.set_view_all_users(&request.username, request.granted);
    no_content()
}

async fn deactivate_login_user(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let Username { username } = read(&body)?;
    if !sim.shared.lock().oauth.deactivate_user(&username) {
        return Err(ControlError::UnknownLoginUser(username));
    }
    no_content()
}

async fn revoke_approval(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let Username { username } = read(&body)?;
    if !sim.shared.lock().oauth.set_approved(&username, false) {
        return Err(ControlError::UnknownLoginUser(username));
    }
    no_content()
}

// ---- Faults: the event stream ---------------------------------------------------------------

async fn expire_replay_window(State(sim): State<SalesforceSim>) -> Answer {
    sim.expire_replay_window();
    no_content()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Retention {
    seconds: u64,
}

async fn set_retention(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let Retention { seconds } = read(&body)?;
    sim.set_retention(Duration::from_secs(seconds));
    no_content()
}

/// The body of the gap and overflow faults: the records changed and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilentChange {
    ids: Vec<String>,
    #[serde(default = "empty_object")]
    fields: Value,
}

fn empty_object() -> Value {
    json!({})
}

async fn gap(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let request: SilentChange = read(&body)?;
    if request.ids.is_empty() {
        return Err(ControlError::Refused(
            "ids must name at least one User record".into(),
        ));
    }
    let ids = known_ids(&sim, &request.ids)?;
    let fields = writable_fields(request.fields)?;
    sim.gap_update(&ids, fields)
        .map_err(ControlError::Refused)?;
    no_content()
}

async fn overflow(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let request: SilentChange = read(&body)?;
    let ids = known_ids(&sim, &request.ids)?;
    let fields = writable_fields(request.fields)?;
    sim.overflow(&ids, fields).map_err(ControlError::Refused)?;
    no_content()
}

/// The stream faults by their wire names.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StreamFaultName {
    ServiceUnavailable,
    ResetStream,
    Throttled,
    DeliveryLimit,
}

impl From<StreamFaultName> for StreamFault {
    fn from(name: StreamFaultName) -> StreamFault {
        match name {
            StreamFaultName::ServiceUnavailable => StreamFault::ServiceUnavailable,
            StreamFaultName::ResetStream => StreamFault::ResetStream,
            StreamFaultName::Throttled => StreamFault::Throttled,
            StreamFaultName::DeliveryLimit => StreamFault::DeliveryLimit,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamFaultRequest {
    fault: StreamFaultName,
}

async fn stream_fault(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let StreamFaultRequest { fault } = read(&body)?;
    sim.inject_stream_fault(fault.into());
    no_content()
}

async fn corrupt_event(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let fields: Value = read(&body)?;
    let id = sim
        .create_user_with_corrupt_event(fields)
        .map_err(ControlError::Refused)?;
    ok(StatusCode::CREATED, &json!({ "id": id }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomField {
    name: String,
}

/// Whether `name` is a custom field's API name: a letter, then letters, digits and single
/// underscores, ending in `__c` (the only double underscore). It becomes an Avro field name,
/// so nothing else may pass.
fn is_custom_field_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix("__c") else {
        return false;
    };
    stem.starts_with(|c: char| c.is_ascii_alphabetic())
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !stem.contains("__")
        && !stem.ends_with('_')
}

async fn custom_field(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let CustomField { name } = read(&body)?;
    if !is_custom_field_name(&name) {
        return Err(ControlError::Refused(format!(
            "{name:?} is not a custom field API name (letters, digits and underscores, \
             starting with a letter, ending in __c)"
        )));
    }
    let schema_id = sim.shared.write(|state| {
        if state.bus.current_schema().position(&name).is_some() {
            return Err(ControlError::Refused(format!(
                "User already has a field {name}"
            )));
        }
        Ok(state.bus.add_custom_field(&name))
    })?;
    ok(StatusCode::OK, &json!({ "schema_id": schema_id }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForeignTraffic {
    positions: u64,
}

async fn foreign_traffic(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let ForeignTraffic { positions } = read(&body)?;
    sim.foreign_traffic(positions);
    no_content()
}

// ---- Faults: the REST data API --------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestFailures {
    count: usize,
    status: u16,
}

async fn rest_failures(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let RestFailures { count, status } = read(&body)?;
    if !(400..=599).contains(&status) {
        return Err(ControlError::Refused(format!(
            "status must be an error status (400-599), not {status}"
        )));
    }
    sim.fail_next_rest_requests(count, status);
    no_content()
}

async fn expire_query_locators(State(sim): State<SalesforceSim>) -> Answer {
    sim.expire_query_locators();
    no_content()
}
