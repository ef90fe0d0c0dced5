//! The connection routes of docs/operations.md: `GET /api/v1/status` and, per side,
//! `POST /api/v1/connections/{side}/reconnect`, `…/disconnect` and `…/test`.
//!
//! They talk to the [`Connections`](crate::connection::Connections) board: a reconnect asks the
//! side's role to sign in again (it was parked, or the admin wants the new identity and
//! permissions read at once) — with a body, after sealing and storing the new authorization
//! it carries (a secret in the body is never echoed, logged or returned);
//! a disconnect marks the side `disconnected` with reason `manual`, which stops it: the
//! subscriber ends its stream, the processor applies nothing. Both keep the checkpoint and the
//! mappings, so a later reconnect resumes where the side stopped. The answer is the side's
//! connection as it is right after the request; the change itself follows on the board (and
//! the live feed) when the role acts. A reconnect and a disconnect are recorded as admin
//! actions, with the side and who asked, before they are carried out (a store that cannot
//! record them refuses them, 503); a test changes nothing and is only logged.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::actor::Actor;
use super::feed::admin_action_json;
use super::replay::record;
use super::{AdminState, ApiError};
use crate::connection::authorization::{
    AuthorizationError, OutreachAuthorization, SalesforceAuthorization,
};
use crate::connection::vault::VaultError;
use crate::connection::{Checklist, Side};
use crate::store::AdminActionKind;

pub(super) fn side_of(raw: &str) -> Result<Side, ApiError> {
    raw.parse::<Side>().map_err(|message| ApiError {
        status: StatusCode::NOT_FOUND,
        code: "unknown_side",
        message,
    })
}

/// Both connections.
pub(super) async fn status(State(state): State<AdminState>) -> Json<Value> {
    let connections = &state.connections;
    Json(json!({
        "connections": {
            "salesforce": connections.get(Side::Salesforce),
            "outreach": connections.get(Side::Outreach),
        }
    }))
}

/// Asks the side to sign in again. A JSON body is a new authorization (the side's type in
/// `connection::authorization`): it is sealed and stored first, and the sign-in uses it.
pub(super) async fn reconnect(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(side): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let side = side_of(&side)?;
    let mut stored_with_key = None;
    let new_authorization = !body.iter().all(u8::is_ascii_whitespace);
    // What the body carries is read whole before anything is recorded or stored: a body that
    // does not parse is refused and leaves no trail.
    let parsed = if new_authorization {
        let authorizations = state
            .authorizations
            .as_ref()
            .ok_or_else(|| no_key(VaultError::NoKey))?;
        let new = match side {
            Side::Salesforce => NewAuthorization::Salesforce(parse(&body)?),
            Side::Outreach => NewAuthorization::Outreach(parse(&body)?),
        };
        Some((authorizations, new))
    } else {
        None
    };
    let (sequence, action) = record(
        &state,
        &actor,
        AdminActionKind::Reconnect,
        json!({ "side": side, "new_authorization": new_authorization }),
    )
    .await?;
    if let Some((authorizations, new)) = parsed {
        let saved = match &new {
            NewAuthorization::Salesforce(new) => authorizations.save(side, new).await,
            NewAuthorization::Outreach(new) => authorizations.save(side, new).await,
        };
        match saved {
            Ok(()) => stored_with_key = authorizations.key_fingerprint(),
            Err(AuthorizationError::Vault(error)) => return Err(no_key(error)),
            Err(error) => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "store_unavailable",
                    message: error.to_string(),
                });
            }
        }
    }
    state.connections.connecting(side);
    state.connections.request_reconnect(side);
    tracing::info!(%side, new_authorization, sequence, actor = %actor.name, "reconnect requested by an admin");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "connection": state.connections.get(side),
            "stored_with_key": stored_with_key,
            "admin_action": admin_action_json(sequence, &action),
        })),
    ))
}

/// The authorization a reconnect's body brings, read before it is stored.
enum NewAuthorization {
    Salesforce(SalesforceAuthorization),
    Outreach(OutreachAuthorization),
}

/// A reconnect body, read strictly: the error names the field (never its value, which may be
/// a secret).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let problem = if inner.is_syntax() || inner.is_eof() {
            "the body is not JSON".to_owned()
        } else {
            let text = inner.to_string();
            let text = text.split(" at line").next().unwrap_or(&text);
            // "invalid type: string \"…\", expected …" quotes the value: keep only what was
            // expected. Unknown and missing fields name only the field.
            match text.find("expected") {
                Some(at) if text.starts_with("invalid") => format!("wrong value, {}", &text[at..]),
                _ => text.to_owned(),
            }
        };
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_authorization",
            message: format!("{path}: {problem}"),
        }
    })
}

fn no_key(error: VaultError) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "no_secret_key",
        message: error.to_string(),
    }
}

/// Runs the side's checklist now, keeps it on the side's connection, and answers with every
/// step.
/// Test connection changes nothing but what the board shows of the last check, so it is not
/// an admin action; its log line names who asked.
pub(super) async fn test(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(side): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let side = side_of(&side)?;
    tracing::info!(%side, actor = %actor.name, "test connection asked by an admin");
    let checklist = run_checklist(&state, side).await?;
    Ok(Json(json!({ "checklist": checklist })))
}

/// The checklist of docs/operations.md ("Test connection") for `side`, with this process's
/// configuration and stored authorization; logged step by step and kept on the board (status,
/// feed, page).
pub(super) async fn run_checklist(state: &AdminState, side: Side) -> Result<Checklist, ApiError> {
    let untestable = |what: &str| ApiError {
        status: StatusCode::CONFLICT,
        code: "not_testable",
        message: format!("{side} cannot be tested from this process: {what}"),
    };
    let config = state
        .config
        .as_ref()
        .ok_or_else(|| untestable("no configuration"))?;
    let checklist = match side {
        Side::Salesforce => {
            let stored = stored_salesforce(state).await?;
            crate::salesforce::checklist::test_connection(
                config,
                stored.as_ref(),
                state.store.as_ref(),
            )
            .await
        }
        Side::Outreach => {
            let client = state
                .outreach
                .as_ref()
                .ok_or_else(|| untestable("no processor"))?;
            crate::outreach::checklist::test_connection(client, &config.outreach).await
        }
    };
    for line in checklist.lines() {
        tracing::info!(%side, passed = checklist.passed, "test connection: {line}");
    }
    state.connections.checked(side, checklist.clone());
    Ok(checklist)
}

/// The Salesforce authorization a reconnect stored, if any, opened with the secret key.
pub(super) async fn stored_salesforce(
    state: &AdminState,
) -> Result<Option<SalesforceAuthorization>, ApiError> {
    match &state.authorizations {
        Some(authorizations) => authorizations
            .load::<SalesforceAuthorization>(Side::Salesforce)
            .await
            .map_err(|error| ApiError {
                status: StatusCode::CONFLICT,
                code: "stored_authorization",
                message: error.to_string(),
            }),
        None => Ok(None),
    }
}

/// Recorded as an admin action, with who asked, before the side is stopped.
pub(super) async fn disconnect(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(side): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let side = side_of(&side)?;
    let (sequence, action) = record(
        &state,
        &actor,
        AdminActionKind::Disconnect,
        json!({ "side": side }),
    )
    .await?;
    state.connections.disconnect_manually(side);
    tracing::info!(%side, sequence, actor = %actor.name, "disconnect asked by an admin");
    Ok(Json(json!({
        "connection": state.connections.get(side),
        "admin_action": admin_action_json(sequence, &action),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_body_names_the_field_but_never_the_value() {
        let error = parse::<OutreachAuthorization>(br#"{"refresh_token": 271828}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            error.message.starts_with("refresh_token: "),
            "{}",
            error.message
        );
        assert!(!error.message.contains("271828"), "{}", error.message);
        let unknown = parse::<OutreachAuthorization>(br#"{"refresh_tokn": "x"}"#).unwrap_err();
        assert!(
            unknown.message.contains("unknown field `refresh_tokn`"),
            "{}",
            unknown.message
        );
        let garbage = parse::<OutreachAuthorization>(b"{not json").unwrap_err();
        assert!(
            garbage.message.ends_with("the body is not JSON"),
            "{}",
            garbage.message
        );
    }
}
