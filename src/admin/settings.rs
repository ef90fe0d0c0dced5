//! `GET /api/v1/settings` and `PUT /api/v1/settings`: the CRM page's User <> User and
//! Email <> Email settings (`decisions.md`), in the names of `[sync]`.
//!
//! The settings in force are the ones an admin saved in the store, else the configuration's.
//! A save is checked whole before anything is written: a body that does not parse is refused
//! naming the field (422 `invalid_settings`), settings that break a rule are refused with the
//! rule as the code (422 `remap_requires_inbound_create`, …) and a message in the page's words;
//! either way the settings in force stay. The processor reads them for each event, so a save
//! applies from the next event on. A save is recorded as an admin action (`settings`, with the
//! settings before and after and who saved them) in the transaction that saves it, and shown
//! on the live feed.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::actor::Actor;
use super::feed::admin_action_json;
use super::replay::action_by;
use super::{AdminState, ApiError, store_failed};
use crate::engine::settings::SyncSettings;
use crate::store::AdminActionKind;

/// What is in force: saved by an admin, else from the configuration.
pub(super) async fn in_force(state: &AdminState) -> Result<SyncSettings, ApiError> {
    let saved = state.store.settings().await.map_err(store_failed)?;
    Ok(saved.unwrap_or_else(|| {
        state
            .config
            .as_ref()
            .map(|c| c.sync.clone())
            .unwrap_or_default()
    }))
}

pub(super) async fn get(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "settings": in_force(&state).await? })))
}

pub(super) async fn put(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let settings = parse(&body)?;
    settings.validate().map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: e.rule(),
        message: format!("not saved, the settings in force stay: {e}"),
    })?;
    let before = in_force(&state).await?;
    let action = action_by(
        &actor,
        AdminActionKind::Settings,
        json!({ "before": before, "after": settings }),
    );
    let sequence = state
        .store
        .save_settings_recorded(&settings, &action)
        .await
        .map_err(store_failed)?;
    state.actions.announce(sequence, action.clone());
    tracing::info!(settings = ?settings, sequence, actor = %actor.name, "sync settings saved by an admin");
    Ok(Json(json!({
        "settings": settings,
        "admin_action": admin_action_json(sequence, &action),
    })))
}

/// The body as settings; omitted keys take their defaults, unknown keys are refused by name.
fn parse(body: &[u8]) -> Result<SyncSettings, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_settings",
        message: format!("not saved: {} — {}", e.path(), e.inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_does_not_parse_names_the_field() {
        let error = parse(br#"{"user_mapping": {"inbound_create": "yes"}}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.code, "invalid_settings");
        assert!(
            error.message.contains("user_mapping.inbound_create"),
            "{}",
            error.message
        );
        let error = parse(br#"{"user_mapping": {"auto_remap": true}}"#).unwrap_err();
        assert!(error.message.contains("auto_remap"), "{}", error.message);
        let error = parse(br#"{"email_field": {"dedupe": "sometimes"}}"#).unwrap_err();
        assert!(
            error.message.contains("email_field.dedupe"),
            "{}",
            error.message
        );
    }

    #[test]
    fn omitted_keys_take_their_defaults() {
        let settings = parse(br#"{"email_field": {"dedupe": "inbound"}}"#).unwrap();
        assert!(settings.user_mapping.inbound_create);
        assert_eq!(settings.email_field.dedupe.as_str(), "inbound");
    }
}
