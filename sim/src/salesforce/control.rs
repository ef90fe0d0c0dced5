//! The test control API under `/_sim/`: the [`SalesforceSim`] handle's seeding, inspection and
//! fault switches over HTTP, for a simulator running out of process (`usersync sim
//! salesforce`).
//!
//! A scenario run or a person with `curl` needs the same levers a Rust test has — write User
//! records so change events flow, break the connected app's credentials, cut the stream — and
//! must pull them without linking the crate. Each route is a thin wrapper over one handle
//! method, so the HTTP surface adds no behaviour that tests in process would miss; where the
//! handle would panic or accept input that breaks the simulator (an unknown user, a custom
//! field name Avro cannot take), the route checks first and answers with an error instead.
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
use super::pubsub::StreamFault;
use super::{SalesforceSim, SfSimUser, Writer, eventbus, json_response, now_ms, object, query};

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
        .route("/_sim/faults/commit-clock", post(commit_clock))
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

/// The 18-character form of a record id given in either form, as the REST API reads it.
fn id_form(raw: &str) -> Result<String, ControlError> {
    query::normalize_id(raw).ok_or_else(|| {
        ControlError::Refused(format!(
            "{raw:?} is not a 15- or 18-character Salesforce id"
        ))
    })
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

/// `POST /_sim/login-users`: an authorizing user, optionally the run-as user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginUser {
    username: String,
    #[serde(default)]
    run_as: bool,
}

async fn add_login_user(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let LoginUser { username, run_as } = read(&body)?;
    if username.trim().is_empty() {
        return Err(ControlError::Refused("username must not be blank".into()));
    }
    let user = sim.add_user(&username);
    if run_as {
        sim.set_run_as_user(Some(&username));
    }
    ok(StatusCode::OK, &login_user_json(&user))
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

/// The body of the commit-clock fault: when later commits are stamped; null is the wall
/// clock again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitClock {
    at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn commit_clock(State(sim): State<SalesforceSim>, body: Bytes) -> Answer {
    let CommitClock { at } = read(&body)?;
    sim.set_commit_clock(at);
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

#[cfg(test)]
mod tests {
    use reqwest::{Client, Method};

    use super::super::SfSimConfig;
    use super::*;

    const PUBLIC_KEY: &str =
        include_str!("../../../tests/fixtures/salesforce_jwt_test_key_pub.pem");

    async fn start() -> (SalesforceSim, Control) {
        let sim = SalesforceSim::start(SfSimConfig::new(PUBLIC_KEY))
            .await
            .unwrap();
        let control = Control {
            http: Client::new(),
            base: sim.base_url(),
        };
        (sim, control)
    }

    /// A client of the control API.
    struct Control {
        http: Client,
        base: String,
    }

    impl Control {
        /// Sends `body` (None: no body) and returns the status and the JSON answer (null when
        /// there is none).
        async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
            let mut request = self.http.request(method, format!("{}{path}", self.base));
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let body = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            };
            (status, body)
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            self.call(Method::POST, path, Some(body)).await
        }

        async fn create(&self, fields: Value) -> String {
            let (status, body) = self.post("/_sim/users", fields).await;
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().unwrap().to_owned()
        }
    }

    fn error_of(body: &Value) -> &str {
        body["error"].as_str().expect("an error body")
    }

    #[tokio::test]
    async fn users_are_created_read_updated_and_deactivated() {
        let (sim, control) = start().await;
        let ann = control
            .create(json!({"Username": "ann@x.test", "Email": "ann@x.test", "FirstName": "Ann"}))
            .await;
        let record = sim.record(&ann).expect("the record exists");
        assert_eq!(record.get("FirstName"), "Ann");
        let events = sim.retained_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].change.change_type, "CREATE");
        assert_eq!(events[0].change.record_ids, std::slice::from_ref(&ann));

        let (status, listed) = control.call(Method::GET, "/_sim/users", None).await;
        assert_eq!(status, 200);
        assert_eq!(listed[0]["Id"], ann.as_str());
        assert_eq!(listed[0]["Username"], "ann@x.test");
        let (status, one) = control
            .call(Method::GET, &format!("/_sim/users/{}", &ann[..15]), None)
            .await;
        assert_eq!((status, one["Id"].as_str()), (200, Some(ann.as_str())));

        let (status, body) = control
            .call(
                Method::PATCH,
                &format!("/_sim/users/{ann}?change_origin=com/salesforce/api/rest/61.0"),
                Some(json!({"Title": "AE"})),
            )
            .await;
        assert_eq!((status, body["events"].as_u64()), (200, Some(1)), "{body}");
        assert_eq!(sim.record(&ann).unwrap().get("Title"), "AE");
        let update = sim.retained_events().swap_remove(1).change;
        assert_eq!(update.change_type, "UPDATE");
        assert_eq!(update.change_origin, "com/salesforce/api/rest/61.0");

        let bob = control.create(json!({"Username": "bob@x.test"})).await;
        let (status, body) = control
            .call(
                Method::PATCH,
                "/_sim/users",
                Some(json!({"ids": [ann, bob], "fields": {"Department": "Sales"}})),
            )
            .await;
        assert_eq!((status, body["events"].as_u64()), (200, Some(1)), "{body}");
        let merged = sim.retained_events().pop().unwrap().change;
        assert_eq!(
            merged.record_ids,
            [ann.clone(), bob.clone()],
            "one merged event"
        );

        let (status, body) = control
            .call(Method::POST, &format!("/_sim/users/{bob}/deactivate"), None)
            .await;
        assert_eq!((status, body["events"].as_u64()), (200, Some(1)), "{body}");
        assert_eq!(sim.record(&bob).unwrap().get("IsActive"), false);
        let (_, again) = control
            .call(Method::POST, &format!("/_sim/users/{bob}/deactivate"), None)
            .await;
        assert_eq!(again["events"], 0, "nothing changed, nothing published");
    }

    #[tokio::test]
    async fn user_writes_are_refused_with_a_message() {
        let (sim, control) = start().await;
        let ann = control.create(json!({"Username": "ann@x.test"})).await;

        let (status, body) = control
            .post("/_sim/users", json!({"Email": "a@x.test"}))
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("Username"), "{body}");
        let (status, body) = control
            .post("/_sim/users", json!({"Username": "ann@x.test"}))
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("DUPLICATE_USERNAME"), "{body}");
        let (status, body) = control.post("/_sim/users", json!(["Username"])).await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("JSON object"), "{body}");
        let response = control
            .http
            .post(format!("{}/_sim/users", control.base))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert!(error_of(&body).starts_with("unreadable body"), "{body}");

        let unknown = "005SIM000000099AAA";
        let (status, body) = control
            .call(
                Method::PATCH,
                &format!("/_sim/users/{unknown}"),
                Some(json!({"Title": "X"})),
            )
            .await;
        assert_eq!(status, 404);
        assert!(error_of(&body).contains(unknown), "{body}");
        let (status, _) = control
            .call(
                Method::POST,
                &format!("/_sim/users/{unknown}/deactivate"),
                None,
            )
            .await;
        assert_eq!(status, 404);
        let (status, _) = control
            .call(Method::GET, &format!("/_sim/users/{unknown}"), None)
            .await;
        assert_eq!(status, 404);
        let (status, body) = control
            .call(Method::GET, "/_sim/users/not-an-id", None)
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("not-an-id"), "{body}");

        let (status, body) = control
            .call(
                Method::PATCH,
                &format!("/_sim/users/{ann}"),
                Some(json!({"CreatedDate": 1})),
            )
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("CreatedDate"), "{body}");
        let (status, body) = control
            .call(
                Method::PATCH,
                "/_sim/users",
                Some(json!({"ids": [], "fields": {}})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = control
            .call(
                Method::PATCH,
                &format!("/_sim/users/{ann}?commit_user=nobody"),
                Some(json!({"Title": "X"})),
            )
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("nobody"), "{body}");
        assert_eq!(sim.retained_events().len(), 1, "only the first CREATE");
    }

    #[tokio::test]
    async fn state_reports_the_stream_and_the_directory_and_control_calls_are_not_logged() {
        let (sim, control) = start().await;
        control.create(json!({"Username": "ann@x.test"})).await;
        let (status, state) = control.call(Method::GET, "/_sim/state", None).await;
        assert_eq!(status, 200);
        let hex: String = sim
            .latest_replay_id()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(state["latest_replay_id"], hex.as_str());
        assert_eq!(state["schema_id"], sim.current_schema_id().as_str());
        assert_eq!(
            (state["retained_events"].as_u64(), state["users"].as_u64()),
            (Some(1), Some(1))
        );

        let (_, log) = control.call(Method::GET, "/_sim/requests", None).await;
        assert_eq!(log["count"], 0, "{log}");
        assert_eq!(sim.request_count(), 0);
        let token_call = control
            .http
            .post(format!("{}/services/oauth2/token", control.base))
            .send()
            .await
            .unwrap();
        assert!(token_call.status().is_client_error());
        let (_, log) = control.call(Method::GET, "/_sim/requests", None).await;
        assert_eq!(log["count"], 1);
        assert_eq!(log["requests"][0]["path"], "/services/oauth2/token");
        let (status, _) = control.call(Method::DELETE, "/_sim/requests", None).await;
        assert_eq!((status, sim.request_count()), (204, 0));
    }

    /// A REST session for `username`, through the refresh-token grant.
    async fn access_token(
        sim: &SalesforceSim,
        control: &Control,
        username: &str,
    ) -> reqwest::Response {
        let refresh = sim.issue_refresh_token(username);
        control
            .http
            .post(format!("{}/services/oauth2/token", control.base))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", sim.consumer_key().as_str()),
                ("client_secret", sim.consumer_secret().as_str()),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn credential_and_permission_faults_hit_the_authorizing_user() {
        let (sim, control) = start().await;
        let (status, user) = control
            .post("/_sim/login-users", json!({"username": "int@x.test"}))
            .await;
        assert_eq!(
            (status, user["active"].as_bool()),
            (200, Some(true)),
            "{user}"
        );
        assert_eq!(user["id"], sim.user("int@x.test").unwrap().id.as_str());
        control
            .post(
                "/_sim/login-users",
                json!({"username": "robot@x.test", "run_as": true}),
            )
            .await;
        assert_eq!(
            sim.shared.lock().oauth.run_as.as_deref(),
            Some("robot@x.test")
        );

        let (status, _) = control
            .post(
                "/_sim/faults/view-all-users",
                json!({"username": "int@x.test", "granted": false}),
            )
            .await;
        assert_eq!(status, 204);
        assert!(
            sim.shared
                .lock()
                .without_view_all_users
                .contains("int@x.test")
        );
        control
            .post(
                "/_sim/faults/view-all-users",
                json!({"username": "int@x.test", "granted": true}),
            )
            .await;
        assert!(sim.shared.lock().without_view_all_users.is_empty());

        let (status, rotated) = control
            .call(Method::POST, "/_sim/faults/rotate-client-secret", None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(rotated["consumer_secret"], sim.consumer_secret().as_str());
        assert_ne!(sim.consumer_secret(), super::super::DEFAULT_CONSUMER_SECRET);

        let refresh = sim.issue_refresh_token("int@x.test");
        let (status, _) = control
            .call(Method::POST, "/_sim/faults/revoke-tokens", None)
            .await;
        assert_eq!(status, 204);
        let refused = control
            .http
            .post(format!("{}/services/oauth2/token", control.base))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", sim.consumer_key().as_str()),
                ("client_secret", sim.consumer_secret().as_str()),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "a revoked refresh token");
        assert_eq!(
            access_token(&sim, &control, "int@x.test").await.status(),
            200,
            "a new one works"
        );

        let (status, _) = control
            .post(
                "/_sim/faults/revoke-approval",
                json!({"username": "int@x.test"}),
            )
            .await;
        assert_eq!(status, 204);
        assert!(!sim.user("int@x.test").unwrap().approved);
        let (status, _) = control
            .post(
                "/_sim/faults/deactivate-login-user",
                json!({"username": "int@x.test"}),
            )
            .await;
        assert_eq!(status, 204);
        assert!(!sim.user("int@x.test").unwrap().active);

        let (status, body) = control
            .post(
                "/_sim/faults/view-all-users",
                json!({"username": "ghost@x.test", "granted": false}),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        assert!(error_of(&body).contains("ghost@x.test"), "{body}");
        for path in [
            "/_sim/faults/revoke-approval",
            "/_sim/faults/deactivate-login-user",
        ] {
            let (status, body) = control
                .post(path, json!({"username": "ghost@x.test"}))
                .await;
            assert_eq!(status, 404, "{path}: {body}");
            assert!(error_of(&body).contains("ghost@x.test"), "{body}");
        }
    }

    #[tokio::test]
    async fn gap_and_overflow_change_records_but_publish_only_a_header() {
        let (sim, control) = start().await;
        let ann = control.create(json!({"Username": "ann@x.test"})).await;
        let (status, body) = control
            .post(
                "/_sim/faults/gap",
                json!({"ids": [ann], "fields": {"Title": "Boss"}}),
            )
            .await;
        assert_eq!(status, 204, "{body}");
        assert_eq!(sim.record(&ann).unwrap().get("Title"), "Boss");
        let gap = sim.retained_events().pop().unwrap().change;
        assert_eq!(gap.change_type, "GAP_UPDATE");
        assert_eq!(gap.record_ids, std::slice::from_ref(&ann));
        assert!(gap.body.is_empty(), "a header only");

        let (status, _) = control
            .post(
                "/_sim/faults/overflow",
                json!({"ids": [ann], "fields": {"Title": "CEO"}}),
            )
            .await;
        assert_eq!(status, 204);
        assert_eq!(sim.record(&ann).unwrap().get("Title"), "CEO");
        let overflow = sim.retained_events().pop().unwrap().change;
        assert_eq!(overflow.change_type, "GAP_OVERFLOW");

        let (status, body) = control
            .post("/_sim/faults/gap", json!({"ids": ["005SIM000000099AAA"]}))
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = control
            .post(
                "/_sim/faults/gap",
                json!({"ids": [ann], "fields": {"LastModifiedById": "x"}}),
            )
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("LastModifiedById"), "{body}");
        assert_eq!(sim.retained_events().len(), 3, "refusals publish nothing");
    }

    #[tokio::test]
    async fn the_commit_clock_puts_several_changes_of_one_user_in_one_second() {
        let (sim, control) = start().await;
        let ann = control.create(json!({"Username": "ann@x.test"})).await;
        let (status, body) = control
            .post(
                "/_sim/faults/commit-clock",
                json!({"at": "2031-06-18T11:30:46.500Z"}),
            )
            .await;
        assert_eq!(status, 204, "{body}");
        let (status, _) = control
            .call(
                Method::PATCH,
                &format!("/_sim/users/{ann}"),
                Some(json!({"LastName": "Brown"})),
            )
            .await;
        assert_eq!(status, 200);
        control
            .post(
                "/_sim/faults/commit-clock",
                json!({"at": "2031-06-18T11:30:46.900Z"}),
            )
            .await;
        control
            .post(
                "/_sim/faults/gap",
                json!({"ids": [ann], "fields": {"LastName": "Green"}}),
            )
            .await;
        let events = sim.retained_events();
        let [.., update, gap] = events.as_slice() else {
            panic!("two changes published")
        };
        assert_eq!(update.change.change_type, "UPDATE");
        assert_eq!(update.change.commit_timestamp, 1_939_548_646_500);
        assert_eq!(gap.change.change_type, "GAP_UPDATE");
        assert_eq!(gap.change.commit_timestamp, 1_939_548_646_900);
        assert!(gap.change.commit_number > update.change.commit_number);
        // The record keeps the whole second: both changes share it.
        let record = sim.record(&ann).unwrap();
        assert_eq!(
            record.get("LastModifiedDate"),
            &json!(1_939_548_646_000_i64)
        );
        assert_eq!(record.get("LastName"), "Green");

        let (status, body) = control
            .post("/_sim/faults/commit-clock", json!({"at": "soon"}))
            .await;
        assert_eq!(status, 400, "{body}");
        let (status, _) = control
            .post("/_sim/faults/commit-clock", json!({"at": null}))
            .await;
        assert_eq!(status, 204);
    }

    #[tokio::test]
    async fn stream_faults_reach_the_streams() {
        let (sim, control) = start().await;
        let mut faults = sim.faults.subscribe();
        let (status, _) = control
            .post("/_sim/faults/stream", json!({"fault": "reset_stream"}))
            .await;
        assert_eq!(status, 204);
        assert_eq!(faults.recv().await.unwrap(), StreamFault::ResetStream);
        for (name, fault) in [
            ("service_unavailable", StreamFault::ServiceUnavailable),
            ("throttled", StreamFault::Throttled),
            ("delivery_limit", StreamFault::DeliveryLimit),
        ] {
            control
                .post("/_sim/faults/stream", json!({"fault": name}))
                .await;
            assert_eq!(faults.recv().await.unwrap(), fault);
        }
        let (status, body) = control
            .post("/_sim/faults/stream", json!({"fault": "meteor"}))
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("meteor"), "{body}");
    }

    #[tokio::test]
    async fn schema_replay_and_corruption_faults() {
        let (sim, control) = start().await;
        let before = sim.current_schema_id();
        let (status, body) = control
            .post("/_sim/faults/custom-field", json!({"name": "Badge__c"}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["schema_id"], sim.current_schema_id().as_str());
        assert_ne!(sim.current_schema_id(), before);
        for bad in ["Badge__c", "Badge", "1st__c", "A__b__c", "Bad-name__c"] {
            let (status, body) = control
                .post("/_sim/faults/custom-field", json!({"name": bad}))
                .await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(error_of(&body).contains(bad), "{body}");
        }

        let (status, body) = control
            .post(
                "/_sim/faults/corrupt-event",
                json!({"Username": "bad@x.test"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap();
        assert!(sim.record(id).is_some());
        let corrupt = sim.retained_events().pop().unwrap();
        assert_eq!(corrupt.change.change_type, "CREATE");
        let schema = sim
            .shared
            .lock()
            .bus
            .schema(&corrupt.schema_id)
            .unwrap()
            .schema
            .clone();
        assert!(
            apache_avro::reader::datum::GenericDatumReader::builder(&schema)
                .build()
                .unwrap()
                .read_value(&mut corrupt.avro.as_slice())
                .is_err(),
            "the payload does not decode"
        );

        let head = sim.shared.lock().bus.latest();
        let (status, _) = control
            .post("/_sim/faults/foreign-traffic", json!({"positions": 7}))
            .await;
        assert_eq!(status, 204);
        assert_eq!(sim.shared.lock().bus.latest(), head + 7);

        let (status, _) = control
            .post("/_sim/faults/retention", json!({"seconds": 3600}))
            .await;
        assert_eq!(status, 204);
        assert_eq!(sim.shared.lock().bus.retention_ms, 3_600_000);
        let (status, _) = control
            .call(Method::POST, "/_sim/faults/expire-replay-window", None)
            .await;
        assert_eq!(status, 204);
        assert!(sim.retained_events().is_empty());
        let (_, state) = control.call(Method::GET, "/_sim/state", None).await;
        assert_eq!(state["retained_events"], 0);
        let (status, body) = control
            .post("/_sim/faults/retention", json!({"seconds": -1}))
            .await;
        assert_eq!(status, 400, "{body}");
    }

    #[tokio::test]
    async fn rest_faults_fail_requests_and_expire_locators() {
        let (sim, control) = start().await;
        sim.add_user("int@x.test");
        for n in 0..2 {
            control
                .create(json!({"Username": format!("u{n}@x.test")}))
                .await;
        }
        let token: Value = access_token(&sim, &control, "int@x.test")
            .await
            .json()
            .await
            .unwrap();
        let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
        let query = format!(
            "{}/services/data/v64.0/query?q=SELECT+Id+FROM+User",
            sim.my_domain_url()
        );

        let (status, body) = control
            .post(
                "/_sim/faults/rest-failures",
                json!({"count": 1, "status": 503}),
            )
            .await;
        assert_eq!(status, 204, "{body}");
        let failed = control
            .http
            .get(&query)
            .header("Authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), 503);
        let (status, body) = control
            .post(
                "/_sim/faults/rest-failures",
                json!({"count": 1, "status": 200}),
            )
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("200"), "{body}");

        sim.set_query_page_size(1);
        let first: Value = control
            .http
            .get(&query)
            .header("Authorization", &bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let next = first["nextRecordsUrl"].as_str().expect("a second page");
        let (status, _) = control
            .call(Method::POST, "/_sim/faults/expire-query-locators", None)
            .await;
        assert_eq!(status, 204);
        let expired = control
            .http
            .get(format!("{}{next}", sim.my_domain_url()))
            .header("Authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(expired.status(), 400);
        let body: Value = expired.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], "INVALID_QUERY_LOCATOR");
    }
}
