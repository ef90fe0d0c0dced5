//! The webhook endpoints: list and create, under the state lock, after the pipeline in
//! `api.rs` (faults, authentication, rate limit, media type, the `webhooks.*` scopes).

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};

use super::document::{WriteError, error, parameter_error, validation_errors};
use super::http::{json_api, set_header};
use super::state::SimState;
use super::webhooks::{parse_create, webhook_resource};

/// `GET /webhooks`, ordered by id, paged like users (`links.next` while more follow).
pub fn list(state: &SimState, pairs: &[(String, String)], api_url: &str) -> Response {
    let (hooks, next) = match state.webhooks.page(pairs) {
        Ok(page) => page,
        Err(detail) => {
            return json_api(
                StatusCode::BAD_REQUEST,
                &parameter_error("badRequest", "Bad Request", &detail, "page"),
            );
        }
    };
    let data: Vec<Value> = hooks
        .iter()
        .map(|hook| webhook_resource(hook, api_url))
        .collect();
    let mut document = json!({ "data": data });
    if let Some(cursor) = next {
        let size = pairs
            .iter()
            .find(|(key, _)| key == "page[size]")
            .map_or_else(|| "50".to_owned(), |(_, value)| value.clone());
        document["links"] = json!({
            "next": format!("{api_url}/webhooks?page[size]={size}&page[after]={cursor}")
        });
    }
    json_api(StatusCode::OK, &document)
}

/// `POST /webhooks`: 201 with the webhook (without its secret).
pub fn create(state: &mut SimState, body: &[u8], api_url: &str, now: DateTime<Utc>) -> Response {
    let new = match parse_create(body) {
        Ok(new) => new,
        Err(WriteError::Malformed(detail)) => {
            return json_api(
                StatusCode::BAD_REQUEST,
                &error("badRequest", "Bad Request", &detail),
            );
        }
        Err(WriteError::Invalid(problems)) => {
            return json_api(
                StatusCode::UNPROCESSABLE_ENTITY,
                &validation_errors(&problems),
            );
        }
    };
    let hook = state.webhooks.create(new, now.trunc_subsecs(3));
    let mut response = json_api(
        StatusCode::CREATED,
        &json!({ "data": webhook_resource(&hook, api_url) }),
    );
    set_header(
        &mut response,
        "location",
        format!("{api_url}/webhooks/{}", hook.id),
    );
    response
}
