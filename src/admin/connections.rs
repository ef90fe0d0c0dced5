//! The connection routes of `admin.md`: `GET /api/v1/status` and, per side,
//! `POST /api/v1/connections/{side}/reconnect` and `…/disconnect`.
//!
//! They only talk to the [`Connections`] board: a reconnect asks the side's role to sign in
//! again (it was parked, or the admin wants the new identity and permissions read at once),
//! a disconnect marks the side `disconnected` with reason `manual`, which stops it: the
//! subscriber ends its stream, the processor applies nothing. Both keep the checkpoint and the
//! mappings, so a later reconnect resumes where the side stopped. The answer is the side's
//! connection as it is right after the request; the change itself follows on the board (and
//! the live feed) when the role acts.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AdminState, ApiError};
use crate::connection::Side;

fn side_of(raw: &str) -> Result<Side, ApiError> {
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

pub(super) async fn reconnect(
    State(state): State<AdminState>,
    Path(side): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let side = side_of(&side)?;
    state.connections.connecting(side);
    state.connections.request_reconnect(side);
    tracing::info!(%side, "reconnect requested by an admin");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"connection": state.connections.get(side)})),
    ))
}

pub(super) async fn disconnect(
    State(state): State<AdminState>,
    Path(side): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let side = side_of(&side)?;
    state.connections.disconnect_manually(side);
    Ok(Json(json!({"connection": state.connections.get(side)})))
}
