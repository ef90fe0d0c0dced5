//! `POST /api/v1/replay`: an admin moves the subscriber's replay position — to `earliest`
//! (every change Salesforce still holds), `latest` (the newest position) or after a replay id —
//! and `GET /api/v1/admin-actions`, the log of what admins asked of the running process
//! (replays, resyncs, settings saves, reconnects, disconnects), each with who asked.
//!
//! A replay is asked twice: without `"confirm": true` the answer is the plan (where the stream
//! is now, what will be read again, what will not be read) and nothing changes; with it, the
//! action is recorded, shown on the live feed, and the subscriber ends its stream and opens it
//! again from there ([`crate::roles::subscriber::ReplayRequest`]). Moving the position
//! skips or repeats changes, so the plan is what the admin agrees to, and the log keeps when it
//! happened and where the stream was before.
//!
//! A replay id is checked twice before anything moves: its form against
//! `salesforce.transport` (hex on Pub/Sub, a decimal number on CometD), then with Salesforce,
//! which is asked in a short subscription of its own whether it still holds the id; an id it
//! refuses is answered 422, not left to the replay policy of the running stream.
//!
//! The body must be sent as `application/json`, like every state-changing call (the guard,
//! `super::guard`, refuses anything else).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::actor::Actor;
use super::feed::admin_action_json;
use super::{AdminState, ApiError, bad_request, store_failed};
use crate::config::Config;
use crate::connection::{ConnectionState, Connections, LeaseRole, Side};
use crate::roles::subscriber::checkpoint_key;
use crate::salesforce::replay_from::{CheckpointView, RETENTION_HOURS, ReplayFrom, plan};
use crate::store::{AdminAction, AdminActionKind, MAX_ADMIN_ACTIONS};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    from: String,
    #[serde(default)]
    confirm: bool,
}

fn invalid_from(message: String) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_replay_from",
        message,
    }
}

/// The body, read strictly: an unknown field, a missing `from` or a wrong type is named.
fn parse(body: &[u8]) -> Result<ReplayBody, ApiError> {
    const SHAPE: &str = "the body is {\"from\": \"earliest\" | \"latest\" | \"<replay id>\", \
                         \"confirm\": true}";
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let problem = if inner.is_syntax() || inner.is_eof() {
            "the body is not JSON".to_owned()
        } else {
            let text = inner.to_string();
            text.split(" at line").next().unwrap_or(&text).to_owned()
        };
        let about_from = path == "from" || problem.starts_with("missing field `from`");
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: if about_from {
                "invalid_replay_from"
            } else {
                "invalid_replay_request"
            },
            message: format!("{path}: {problem} ({SHAPE})"),
        }
    })
}

/// Only a running Salesforce side, on the instance that streams, can replay or resync: 409
/// otherwise, saying what to do first.
pub(super) fn salesforce_running(state: &AdminState) -> Result<(), ApiError> {
    let (current, reason) = state.connections.state(Side::Salesforce);
    match current {
        ConnectionState::Connected | ConnectionState::Connecting | ConnectionState::Degraded => {
            streaming_here(&state.connections)
        }
        ConnectionState::Disconnected => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "salesforce_disconnected",
            message: format!(
                "Salesforce is disconnected ({}): reconnect it first; a reconnect resumes \
                 from the checkpoint, so nothing is lost meanwhile",
                reason.map_or("no reason", |r| r.code())
            ),
        }),
        ConnectionState::NotConfigured => Err(no_subscriber()),
    }
}

/// Only the instance that streams can move the stream: a standby (another instance holds the
/// subscriber lease) answers 409 naming the one to ask. A replay or resync taken here would
/// wait for the lease and then act on a stream that went on elsewhere meanwhile.
fn streaming_here(connections: &Connections) -> Result<(), ApiError> {
    let connection = connections.get(Side::Salesforce);
    match connection.subscriber {
        Some(lease) if lease.role == LeaseRole::Standby => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "subscriber_standby",
            message: format!(
                "this subscriber instance ({}) stands by: {} holds the subscriber lease and \
                 streams; ask its admin API",
                lease.instance,
                lease.holder.as_deref().unwrap_or("another instance")
            ),
        }),
        _ => Ok(()),
    }
}

fn no_subscriber() -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "no_subscriber",
        message: "no Salesforce subscriber runs in this process (usersync run or usersync \
                  subscriber does)"
            .into(),
    }
}

/// The subscriber's checkpoint as the store holds it now (in transactional mode, the copy kept
/// beside the one committed in Kafka).
async fn checkpoint_now(
    state: &AdminState,
    config: &Config,
) -> Result<Option<crate::store::ReplayCheckpoint>, ApiError> {
    let sf = &config.salesforce;
    state
        .store
        .checkpoint(&checkpoint_key(sf.transport, &sf.topic))
        .await
        .map_err(store_failed)
}

/// The admin action `actor` asks for now.
pub(super) fn action_by(actor: &Actor, action: AdminActionKind, detail: Value) -> AdminAction {
    AdminAction {
        at: Utc::now(),
        action,
        detail,
        actor: Some(actor.name.clone()),
    }
}

/// Appends the action, with who asked, to the log, then shows it on the live feed; its
/// sequence number. A store that cannot record it refuses the action (503): nothing happens
/// unrecorded.
pub(super) async fn record(
    state: &AdminState,
    actor: &Actor,
    action: AdminActionKind,
    detail: Value,
) -> Result<(i64, AdminAction), ApiError> {
    let action = action_by(actor, action, detail);
    let sequence = state
        .store
        .append_admin_action(&action)
        .await
        .map_err(store_failed)?;
    state.actions.announce(sequence, action.clone());
    Ok((sequence, action))
}

/// What a resync records: the checkpoint it starts from.
pub(super) async fn resync_detail(state: &AdminState) -> Result<Value, ApiError> {
    let Some(config) = state.config.clone() else {
        return Ok(json!({ "checkpoint_before": null }));
    };
    let before = checkpoint_now(state, &config)
        .await?
        .map(|c| CheckpointView::of(config.salesforce.transport, &c));
    Ok(json!({ "checkpoint_before": before }))
}

pub(super) async fn replay(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let asked = parse(&body)?;
    let config = state.config.clone().ok_or_else(no_subscriber)?;
    let sf = &config.salesforce;
    let from =
        ReplayFrom::parse(&asked.from, sf.transport).map_err(|e| invalid_from(e.to_string()))?;
    salesforce_running(&state)?;
    let checkpoint = checkpoint_now(&state, &config).await?;
    let checked = match &from {
        ReplayFrom::After(replay_id) => {
            Some(ask_salesforce(&state, &config, &from, replay_id).await?)
        }
        ReplayFrom::Earliest | ReplayFrom::Latest => None,
    };
    let mut plan = plan(
        &from,
        sf.transport,
        checkpoint.as_ref(),
        sf.replay_policy,
        config.kafka.transactional_id.is_some(),
        Utc::now(),
    );
    plan.checked = checked;
    if !asked.confirm {
        return Ok(Json(json!({
            "plan": plan,
            "confirm": "send the same request with \"confirm\": true to replay from there",
        }))
        .into_response());
    }
    let detail = json!({
        "from": plan.from,
        "transport": sf.transport,
        "checkpoint_before": plan.checkpoint,
    });
    let (sequence, action) = record(&state, &actor, AdminActionKind::Replay, detail).await?;
    state.connections.request_replay(from);
    tracing::info!(from = %plan.from, sequence, actor = %actor.name, "an admin asked the subscriber to replay");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "replay": "requested",
            "plan": plan,
            "admin_action": admin_action_json(sequence, &action),
            "follow": "GET /api/v1/feed",
        })),
    )
        .into_response())
}

/// Asks Salesforce whether it still holds `replay_id`: refused (422) when it does not; when it
/// cannot be asked, the plan says so and the replay policy of the stream decides later.
async fn ask_salesforce(
    state: &AdminState,
    config: &Config,
    from: &ReplayFrom,
    replay_id: &[u8],
) -> Result<String, ApiError> {
    let sf = &config.salesforce;
    let shown = from.render(sf.transport);
    let stored = super::connections::stored_salesforce(state).await?;
    match crate::salesforce::checklist::can_resume_after(config, stored.as_ref(), replay_id).await {
        Ok(true) => Ok(format!("Salesforce still holds replay id {shown}.")),
        Ok(false) => Err(invalid_from(format!(
            "from {shown:?}: Salesforce cannot resume after this replay id: it is older than \
             the {RETENTION_HOURS}-hour retention, or not an id of the {} stream of this org",
            sf.topic
        ))),
        Err(why) => {
            tracing::warn!(%why, replay_id = %shown, "could not ask Salesforce whether it still holds a replay id");
            Ok(format!(
                "Salesforce could not be asked whether it still holds replay id {shown} ({why})."
            ))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ListParams {
    limit: Option<String>,
}

/// `GET /api/v1/admin-actions?limit=`: the newest admin actions first (50 unless asked, at most
/// [`MAX_ADMIN_ACTIONS`]).
pub(super) async fn list(
    State(state): State<AdminState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = match params.limit.filter(|s| !s.is_empty()) {
        None => 50,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_ADMIN_ACTIONS).contains(n))
            .ok_or_else(|| {
                bad_request(format!(
                    "limit {raw:?} is not a number from 1 to {MAX_ADMIN_ACTIONS}"
                ))
            })?,
    };
    let actions = state
        .store
        .admin_actions(limit)
        .await
        .map_err(store_failed)?;
    let listed: Vec<Value> = actions
        .iter()
        .map(|(sequence, action)| admin_action_json(*sequence, action))
        .collect();
    Ok(Json(json!({ "admin_actions": listed })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_strictly_and_a_bad_from_is_named() {
        let read = parse(br#"{"from": "latest"}"#).unwrap();
        assert_eq!((read.from.as_str(), read.confirm), ("latest", false));
        let read = parse(br#"{"from": "earliest", "confirm": true}"#).unwrap();
        assert!(read.confirm);

        let missing = parse(br#"{"confirm": true}"#).unwrap_err();
        assert_eq!(missing.code, "invalid_replay_from");
        assert!(
            missing.message.contains("missing field `from`"),
            "{}",
            missing.message
        );
        let number = parse(br#"{"from": 42}"#).unwrap_err();
        assert_eq!(number.code, "invalid_replay_from");
        assert!(number.message.starts_with("from: "), "{}", number.message);
        let unknown = parse(br#"{"from": "latest", "force": true}"#).unwrap_err();
        assert_eq!(unknown.code, "invalid_replay_request");
        assert!(
            unknown.message.contains("unknown field `force`"),
            "{}",
            unknown.message
        );
        let confirm = parse(br#"{"from": "latest", "confirm": "yes"}"#).unwrap_err();
        assert_eq!(confirm.code, "invalid_replay_request");
        assert!(
            confirm.message.starts_with("confirm: "),
            "{}",
            confirm.message
        );
        let garbage = parse(b"from=latest").unwrap_err();
        assert!(
            garbage.message.contains("the body is not JSON"),
            "{}",
            garbage.message
        );
    }

    #[test]
    fn a_standby_instance_refuses_to_move_the_stream_and_names_the_one_that_streams() {
        use crate::connection::SubscriberLease;
        let board = Connections::new();
        assert!(
            streaming_here(&board).is_ok(),
            "no lease kept: this instance streams"
        );
        let lease = |role, holder: &str| SubscriberLease {
            instance: "host-2".into(),
            role,
            epoch: Some(3),
            holder: Some(holder.into()),
            expires_at: None,
        };
        board.subscriber(lease(LeaseRole::Active, "host-2"));
        assert!(streaming_here(&board).is_ok());
        board.subscriber(lease(LeaseRole::Standby, "host-1"));
        let refused = streaming_here(&board).unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::CONFLICT, "subscriber_standby")
        );
        assert!(
            refused
                .message
                .contains("(host-2) stands by: host-1 holds the subscriber lease"),
            "{}",
            refused.message
        );
    }
}
