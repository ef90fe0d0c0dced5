//! The Streaming API endpoint: Bayeux long-polling over HTTP POST on the My Domain host
//! (docs/simulators.md, "The Salesforce simulator"), reading the same retained event bus as the
//! Pub/Sub service.
//!
//! `POST /my-domain/cometd/{version}` takes a JSON array of messages and answers one. What it
//! enforces, each rule one a real client has tripped over:
//!
//! - the version is in the path and at least 37.0, else HTTP 400 (docs/salesforce.md, "CometD:
//!   messages, replay, timeouts, errors");
//! - every request carries `Authorization: Bearer <token>` of a live session: a bad one is
//!   `401::Authentication invalid` (advice `none`) on subscribe and connect, and on the
//!   handshake `403::Handshake denied` with `ext.sfdc.failureReason` `401::Authentication
//!   invalid`; no token at all is `401::Request requires authentication` (the same section);
//! - long-polling only (`400::Invalid connection type`); the handshake sets a
//!   `BAYEUX_BROWSER` cookie that every later message of that client must send back;
//! - a client id the server does not know (never issued, disconnected, expired by the fault
//!   switch, or silent for more than the 40 s reconnect deadline, the same section) is
//!   `403::Unknown client` with advice `handshake`;
//! - `/meta/subscribe` takes `/data/UserChangeEvent` only, needs View All Users (else
//!   `403::`), and reads the `replay` extension map: `-1` from the tip, `-2` from the oldest
//!   retained event, an id resumes after it; an id outside retention or ahead of the stream is
//!   `400::The replayId {N} you provided was invalid…` (docs/salesforce.md, "Failures seen in
//!   other clients": invalid replay id, silently), and a map without the channel is the `…wasn't
//!   found using the provided replay ID map…` error of
//!   the empty replay map after re-authentication in "Failures seen in other clients";
//! - `/meta/connect` holds until an event is retained after the client's position or the hold
//!   time passes (110 s by default, settable for tests), and answers the events as data
//!   messages followed by the connect reply with advice `retry`, interval 0 and the hold time
//!   as `timeout`.
//!
//! It also serves the REST event schema resource,
//! `GET /my-domain/services/data/v{version}/event/eventSchema/{schemaId}`, which a CometD
//! client needs to read an event by its writer schema (the JSON of `data.schema`).
//!
//! Choices where docs/salesforce.md is silent: the wording of the errors it does not quote (a
//! channel other than `/data/UserChangeEvent`, the missing permission, the missing cookie);
//! a held connect also answers when the bus moves for another reason, such as a revoked
//! token or an expired client being noticed then; a subscribe on a client that already has
//! one replaces it (position included).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, SimState, cdc, json_response};

/// The only channel served.
pub const USER_CHANGE_CHANNEL: &str = "/data/UserChangeEvent";
/// How long a connect is held when nothing arrives (docs/salesforce.md, "CometD: messages, replay,
/// timeouts, errors").
pub const DEFAULT_HOLD: Duration = Duration::from_secs(110);
/// A client that sends no connect for this long after a response is forgotten (the same
/// section).
pub const RECONNECT_DEADLINE: Duration = Duration::from_secs(40);
/// The routing cookie the handshake sets.
pub const COOKIE_NAME: &str = "BAYEUX_BROWSER";
/// At most this many events in one connect response.
const MAX_EVENTS_PER_CONNECT: usize = 100;

/// One subscribe as the server received it, for tests that check what a client resumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRecord {
    pub client_id: String,
    pub subscription: String,
    /// The replay map's value for the subscribed channel; `None` when the map lacked it.
    pub replay: Option<i64>,
    pub successful: bool,
}

/// One Bayeux client the server knows.
#[derive(Debug, Clone)]
struct BayeuxClient {
    cookie: String,
    /// The bus position after which events are still to be delivered, once subscribed.
    position: Option<u64>,
    /// When the last response to this client was sent.
    last_response: Instant,
}

/// The CometD server's state, inside the simulator's lock.
#[derive(Debug)]
pub struct CometdState {
    clients: HashMap<String, BayeuxClient>,
    pub hold: Duration,
    subscribes: Vec<SubscribeRecord>,
}

impl Default for CometdState {
    fn default() -> Self {
        CometdState {
            clients: HashMap::new(),
            hold: DEFAULT_HOLD,
            subscribes: Vec::new(),
        }
    }
}

impl CometdState {
    /// Fault: the server forgets every client (as after a network drop or a server restart).
    pub fn expire_clients(&mut self) {
        self.clients.clear();
    }

    pub fn subscribes(&self) -> Vec<SubscribeRecord> {
        self.subscribes.clone()
    }

    /// The client, if it exists and kept within the reconnect deadline.
    fn live_client(&mut self, id: &str) -> Option<&mut BayeuxClient> {
        let expired = self
            .clients
            .get(id)
            .is_some_and(|c| c.last_response.elapsed() > RECONNECT_DEADLINE);
        if expired {
            self.clients.remove(id);
        }
        self.clients.get_mut(id)
    }
}

fn random(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Who is calling, from the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    User(String),
    Invalid,
    Missing,
}

fn caller(state: &SimState, headers: &HeaderMap) -> Caller {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Caller::Missing;
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("OAuth "))
        .unwrap_or_default();
    match state.oauth.session_user(token) {
        Some(user) => Caller::User(user.username.clone()),
        None => Caller::Invalid,
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

fn advice(state: &SimState, reconnect: &str) -> Value {
    json!({
        "reconnect": reconnect,
        "interval": 0,
        "timeout": u64::try_from(state.cometd.hold.as_millis()).unwrap_or(u64::MAX),
    })
}

fn failure(message: &Value, error: &str) -> Value {
    let mut reply = json!({
        "channel": message["channel"],
        "successful": false,
        "error": error,
    });
    copy_ids(message, &mut reply);
    reply
}

fn copy_ids(message: &Value, reply: &mut Value) {
    for key in ["id", "clientId"] {
        if let Some(value) = message.get(key) {
            reply[key] = value.clone();
        }
    }
}

fn auth_failure(message: &Value, who: &Caller) -> Value {
    let error = match who {
        Caller::Missing => "401::Request requires authentication",
        _ => "401::Authentication invalid",
    };
    let mut reply = failure(message, error);
    reply["advice"] = json!({"reconnect": "none", "interval": 0});
    reply
}

/// `POST /my-domain/cometd/{version}`.
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let supported = version.parse::<f64>().is_ok_and(|v| v >= 37.0);
    if !supported {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!([{"successful": false,
                "error": format!("400::API version {version} is not supported; the Streaming API needs 37.0 or later")}]),
        );
    }
    let messages = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) if items.iter().all(Value::is_object) && !items.is_empty() => items,
        Ok(object @ Value::Object(_)) => vec![object],
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!([{"successful": false, "error": "400::Invalid message: expected a JSON array of Bayeux messages"}]),
            );
        }
    };
    let cookie = cookie_value(&headers);
    let mut replies = Vec::new();
    let mut set_cookie = None;
    for message in &messages {
        let channel = message["channel"].as_str().unwrap_or_default();
        match channel {
            "/meta/handshake" => {
                let (reply, cookie) = handshake(&shared, &headers, message);
                set_cookie = set_cookie.or(cookie);
                replies.push(reply);
            }
            "/meta/connect" => {
                replies.extend(connect(&shared, &headers, cookie.as_deref(), message).await);
            }
            "/meta/subscribe" => {
                replies.push(subscribe(&shared, &headers, cookie.as_deref(), message))
            }
            "/meta/unsubscribe" | "/meta/disconnect" => {
                replies.push(leave(&shared, &headers, cookie.as_deref(), message));
            }
            other => replies.push(failure(
                message,
                &format!("400::Unknown channel {{{other}}}: publishing is not supported"),
            )),
        }
    }
    let mut response = json_response(StatusCode::OK, &Value::Array(replies));
    if let Some(cookie) = set_cookie
        && let Ok(value) =
            HeaderValue::from_str(&format!("{COOKIE_NAME}={cookie}; Path=/; HttpOnly"))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn handshake(shared: &Shared, headers: &HeaderMap, message: &Value) -> (Value, Option<String>) {
    let mut state = shared.lock();
    let who = caller(&state, headers);
    if !matches!(who, Caller::User(_)) {
        let mut reply = failure(message, "403::Handshake denied");
        let reason = match who {
            Caller::Missing => "401::Request requires authentication",
            _ => "401::Authentication invalid",
        };
        reply["ext"] = json!({"sfdc": {"failureReason": reason}});
        reply["advice"] = json!({"reconnect": "none", "interval": 0});
        return (reply, None);
    }
    let long_polling = message["supportedConnectionTypes"]
        .as_array()
        .is_some_and(|types| types.iter().any(|t| t == "long-polling"));
    if !long_polling {
        let offered = message["supportedConnectionTypes"].to_string();
        return (
            failure(message, &format!("400::Invalid connection type {offered}")),
            None,
        );
    }
    let client_id = random(24).to_lowercase();
    let cookie = random(32);
    state.cometd.clients.insert(
        client_id.clone(),
        BayeuxClient {
            cookie: cookie.clone(),
            position: None,
            last_response: Instant::now(),
        },
    );
    let mut reply = json!({
        "channel": "/meta/handshake",
        "clientId": client_id,
        "successful": true,
        "version": "1.0",
        "minimumVersion": "1.0",
        "supportedConnectionTypes": ["long-polling"],
        "ext": {"replay": true, "payload.format": true},
        "advice": advice(&state, "retry"),
    });
    if let Some(id) = message.get("id") {
        reply["id"] = id.clone();
    }
    (reply, Some(cookie))
}

/// Checks the token, the client id and its cookie; on failure, the reply to send.
fn admit(
    state: &mut SimState,
    headers: &HeaderMap,
    cookie: Option<&str>,
    message: &Value,
) -> Result<(String, String), Value> {
    let username = match caller(state, headers) {
        Caller::User(username) => username,
        who => return Err(auth_failure(message, &who)),
    };
    let client_id = message["clientId"].as_str().unwrap_or_default().to_owned();
    let Some(client) = state.cometd.live_client(&client_id) else {
        let mut reply = failure(message, "403::Unknown client");
        reply["advice"] = json!({"reconnect": "handshake", "interval": 0});
        return Err(reply);
    };
    if cookie != Some(client.cookie.as_str()) {
        return Err(failure(
            message,
            &format!(
                "400::Client {client_id} has established a session, but no {COOKIE_NAME} cookie present"
            ),
        ));
    }
    Ok((username, client_id))
}

fn subscribe(shared: &Shared, headers: &HeaderMap, cookie: Option<&str>, message: &Value) -> Value {
    let mut state = shared.lock();
    let (username, client_id) = match admit(&mut state, headers, cookie, message) {
        Ok(admitted) => admitted,
        Err(reply) => return reply,
    };
    let subscription = message["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let replay = message["ext"]["replay"]
        .get(&subscription)
        .and_then(Value::as_i64);
    let outcome = subscribe_position(&state, &username, &subscription, message, replay);
    state.cometd.subscribes.push(SubscribeRecord {
        client_id: client_id.clone(),
        subscription: subscription.clone(),
        replay,
        successful: outcome.is_ok(),
    });
    match outcome {
        Ok(position) => {
            if let Some(client) = state.cometd.clients.get_mut(&client_id) {
                client.position = Some(position);
                client.last_response = Instant::now();
            }
            let mut reply = json!({
                "channel": "/meta/subscribe",
                "successful": true,
                "subscription": subscription,
            });
            copy_ids(message, &mut reply);
            reply
        }
        Err(error) => {
            let mut reply = failure(message, &error);
            reply["subscription"] = subscription.into();
            reply
        }
    }
}

/// Where a subscription starts, or the error string refusing it.
fn subscribe_position(
    state: &SimState,
    username: &str,
    subscription: &str,
    message: &Value,
    replay: Option<i64>,
) -> Result<u64, String> {
    if subscription != USER_CHANGE_CHANNEL {
        return Err(format!(
            "400::The channel {{{subscription}}} is not served; subscribe to {USER_CHANGE_CHANNEL}"
        ));
    }
    if state.without_view_all_users.contains(username) {
        return Err(format!(
            "403::Insufficient privileges: View All Users is required to subscribe to {USER_CHANGE_CHANNEL}"
        ));
    }
    let Some(replay) = replay else {
        let map = message["ext"]["replay"].to_string();
        let map = if map == "null" { "{}".to_owned() } else { map };
        return Err(format!(
            "400::The replayId for channel {{{subscription}}} wasn't found using the provided replay ID map {{{map}}}"
        ));
    };
    let bus = &state.bus;
    match replay {
        -1 => Ok(bus.latest()),
        -2 => Ok(bus.floor()),
        id => match u64::try_from(id) {
            Ok(position) if position >= bus.floor() && position <= bus.latest() => Ok(position),
            _ => Err(format!(
                "400::The replayId {{{id}}} you provided was invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay only new events."
            )),
        },
    }
}

async fn connect(
    shared: &Shared,
    headers: &HeaderMap,
    cookie: Option<&str>,
    message: &Value,
) -> Vec<Value> {
    let mut head = shared.head.subscribe();
    let deadline = {
        let state = shared.lock();
        tokio::time::Instant::now() + state.cometd.hold
    };
    loop {
        head.borrow_and_update();
        {
            let mut state = shared.lock();
            let (_, client_id) = match admit(&mut state, headers, cookie, message) {
                Ok(admitted) => admitted,
                Err(reply) => return vec![reply],
            };
            let position = state.cometd.clients[&client_id].position;
            let events = match position {
                Some(position) => state.bus.after(position, MAX_EVENTS_PER_CONNECT),
                None => Vec::new(),
            };
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let mut replies: Vec<Value> = events
                    .iter()
                    .map(|event| {
                        let payload = match state.bus.schema(&event.schema_id) {
                            Some(version) => cdc::to_cometd_payload(&event.change, version),
                            None => Value::Null,
                        };
                        json!({
                            "channel": USER_CHANGE_CHANNEL,
                            "data": {
                                "schema": event.schema_id,
                                "payload": payload,
                                "event": {"replayId": event.position},
                            }
                        })
                    })
                    .collect();
                let mut reply = json!({
                    "channel": "/meta/connect",
                    "successful": true,
                    "advice": advice(&state, "retry"),
                });
                copy_ids(message, &mut reply);
                replies.push(reply);
                if let Some(client) = state.cometd.clients.get_mut(&client_id) {
                    if let Some(last) = events.last() {
                        client.position = Some(last.position);
                    }
                    client.last_response = Instant::now();
                }
                return replies;
            }
        }
        // Nothing yet: wait for the bus to move or the hold to pass.
        let _ = tokio::time::timeout_at(deadline, head.changed()).await;
    }
}

fn leave(shared: &Shared, headers: &HeaderMap, cookie: Option<&str>, message: &Value) -> Value {
    let mut state = shared.lock();
    let client_id = match admit(&mut state, headers, cookie, message) {
        Ok((_, client_id)) => client_id,
        Err(reply) => return reply,
    };
    if message["channel"] == "/meta/disconnect" {
        state.cometd.clients.remove(&client_id);
    } else if let Some(client) = state.cometd.clients.get_mut(&client_id) {
        client.position = None;
    }
    let mut reply = json!({"channel": message["channel"], "successful": true});
    copy_ids(message, &mut reply);
    reply
}

#[derive(Debug, Deserialize)]
pub struct SchemaQuery {
    #[serde(rename = "payloadFormat")]
    pub payload_format: Option<String>,
}

/// `GET /my-domain/services/data/v{version}/event/eventSchema/{schemaId}`: the writer
/// schema's JSON.
pub async fn event_schema(
    State(shared): State<Arc<Shared>>,
    Path((_version, schema_id)): Path<(String, String)>,
    Query(_query): Query<SchemaQuery>,
    headers: HeaderMap,
) -> Response {
    let state = shared.lock();
    if !matches!(caller(&state, &headers), Caller::User(_)) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        );
    }
    match state.bus.schema(&schema_id) {
        Some(version) => {
            let mut response = (StatusCode::OK, version.json.clone()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=UTF-8"),
            );
            response
        }
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!([{"errorCode": "NOT_FOUND", "message": format!("No schema with id {schema_id}")}]),
        ),
    }
}
