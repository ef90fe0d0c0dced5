//! The user endpoints: list, get, create, update. Each runs under the state lock, after the
//! pipeline in `api.rs` has authenticated, counted and authorized the request. A create or an
//! update that changed something queues its webhook deliveries (`webhooks.rs`).
//!
//! Collections are ordered by id and paged with an opaque id cursor. Top-level `links` holds
//! full URLs: `first` (the query without a cursor, with the effective `page[size]` spelled
//! out) and `next` (only while more results follow); when no results come back `links` is
//! omitted entirely, as connectors have observed. `meta.count` (with
//! `count_truncated: false`) appears only for `count=true`: the simulator takes the default
//! of apps registered after 2024-10-13, counting off.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};

use super::cursor;
use super::directory::DirectoryError;
use super::document::{
    WriteError, error, parameter_error, parse_create, parse_update, pointer_error, user_resource,
    validation_errors,
};
use super::http::{json_api, set_header};
use super::query::{self, QueryError};
use super::state::SimState;
use super::webhooks::UserEvent;

/// `GET /users`.
pub fn list(state: &SimState, pairs: &[(String, String)], api_url: &str) -> Response {
    let query = match query::parse_collection(pairs) {
        Ok(query) => query,
        Err(problem) => return query_error(problem),
    };
    let page = state
        .directory
        .page(|user| query.matches(user), query.after, query.page_size);
    let data: Vec<Value> = page
        .users
        .iter()
        .map(|user| user_resource(user, api_url, query.fields.as_deref()))
        .collect();
    let mut document = json!({ "data": data });
    if let Some(last) = page.users.last() {
        let mut kept: Vec<(String, String)> = pairs
            .iter()
            .filter(|(key, _)| key != "page[size]" && key != "page[after]")
            .cloned()
            .collect();
        kept.push(("page[size]".to_owned(), query.page_size.to_string()));
        let mut links = json!({ "first": collection_url(api_url, &kept) });
        if page.has_more {
            kept.push(("page[after]".to_owned(), cursor::encode(last.id)));
            links["next"] = json!(collection_url(api_url, &kept));
        }
        document["links"] = links;
    }
    if query.count {
        document["meta"] = json!({ "count": page.total, "count_truncated": false });
    }
    json_api(StatusCode::OK, &document)
}

/// `GET /users/{id}`.
pub fn get(state: &SimState, id: &str, pairs: &[(String, String)], api_url: &str) -> Response {
    let fields = match query::parse_single(pairs) {
        Ok(fields) => fields,
        Err(problem) => return query_error(problem),
    };
    match id.parse().ok().and_then(|id| state.directory.get(id)) {
        Some(user) => json_api(
            StatusCode::OK,
            &json!({ "data": user_resource(user, api_url, fields.as_deref()) }),
        ),
        None => not_found(id),
    }
}

/// `POST /users`.
pub fn create(
    state: &mut SimState,
    body: &[u8],
    pairs: &[(String, String)],
    api_url: &str,
    now: DateTime<Utc>,
) -> Response {
    let fields = match query::parse_single(pairs) {
        Ok(fields) => fields,
        Err(problem) => return query_error(problem),
    };
    let mut user = match parse_create(body) {
        Ok(user) => user,
        Err(problem) => return write_error(problem),
    };
    user.created_at = now.trunc_subsecs(3);
    user.updated_at = user.created_at;
    match state.directory.insert(user) {
        Ok(user) => {
            state.announce(UserEvent::Created(&user), now);
            let mut response = json_api(
                StatusCode::CREATED,
                &json!({ "data": user_resource(&user, api_url, fields.as_deref()) }),
            );
            set_header(
                &mut response,
                "location",
                format!("{api_url}/users/{}", user.id),
            );
            response
        }
        Err(problem) => directory_error(&problem),
    }
}

/// `PATCH /users/{id}`.
pub fn update(
    state: &mut SimState,
    id: &str,
    body: &[u8],
    pairs: &[(String, String)],
    api_url: &str,
    now: DateTime<Utc>,
) -> Response {
    let fields = match query::parse_single(pairs) {
        Ok(fields) => fields,
        Err(problem) => return query_error(problem),
    };
    let Some(user_id) = id
        .parse()
        .ok()
        .filter(|id| state.directory.get(*id).is_some())
    else {
        return not_found(id);
    };
    let changes = match parse_update(body, user_id) {
        Ok(changes) => changes,
        Err(problem) => return write_error(problem),
    };
    let before = state.directory.get(user_id).cloned();
    match state
        .directory
        .update(user_id, changes, now.trunc_subsecs(3))
    {
        Ok(user) => {
            if let Some(before) = &before {
                state.announce(
                    UserEvent::Updated {
                        before,
                        after: &user,
                    },
                    now,
                );
            }
            json_api(
                StatusCode::OK,
                &json!({ "data": user_resource(&user, api_url, fields.as_deref()) }),
            )
        }
        Err(problem) => directory_error(&problem),
    }
}

/// `{api_url}/users?k=v&…`, values percent-encoded, brackets in keys kept literal as
/// Outreach's own links show them.
fn collection_url(api_url: &str, pairs: &[(String, String)]) -> String {
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let query: Vec<String> = pairs
        .iter()
        .map(|(key, value)| {
            let key = encode(key).replace("%5B", "[").replace("%5D", "]");
            format!("{key}={}", encode(value))
        })
        .collect();
    format!("{api_url}/users?{}", query.join("&"))
}

fn not_found(id: &str) -> Response {
    json_api(
        StatusCode::NOT_FOUND,
        &error(
            "resourceNotFound",
            "Resource Not Found",
            &format!("Could not find 'user' with ID '{id}'."),
        ),
    )
}

fn query_error(problem: QueryError) -> Response {
    match problem {
        QueryError::BadParameter { parameter, detail } => json_api(
            StatusCode::BAD_REQUEST,
            &parameter_error("badRequest", "Bad Request", &detail, &parameter),
        ),
        QueryError::InvalidFilter { parameter, detail } => json_api(
            StatusCode::UNPROCESSABLE_ENTITY,
            &parameter_error("validationError", "Validation Error", &detail, &parameter),
        ),
    }
}

fn write_error(problem: WriteError) -> Response {
    match problem {
        WriteError::Malformed(detail) => json_api(
            StatusCode::BAD_REQUEST,
            &error("badRequest", "Bad Request", &detail),
        ),
        WriteError::Invalid(problems) => json_api(
            StatusCode::UNPROCESSABLE_ENTITY,
            &validation_errors(&problems),
        ),
    }
}

fn directory_error(problem: &DirectoryError) -> Response {
    match problem {
        DirectoryError::NotFound(id) => not_found(&id.to_string()),
        DirectoryError::EmailBlank | DirectoryError::EmailInvalid | DirectoryError::EmailTaken => {
            json_api(
                StatusCode::UNPROCESSABLE_ENTITY,
                &pointer_error(
                    "validationError",
                    "Validation Error",
                    &problem.to_string(),
                    "/data/attributes/email",
                ),
            )
        }
        DirectoryError::IdTaken(_) | DirectoryError::InvalidId(_) => json_api(
            StatusCode::UNPROCESSABLE_ENTITY,
            &pointer_error(
                "validationError",
                "Validation Error",
                &problem.to_string(),
                "/data/id",
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_urls_keep_brackets_and_encode_values() {
        let pairs = vec![
            ("filter[email]".to_owned(), "a+b@x.test".to_owned()),
            ("page[size]".to_owned(), "2".to_owned()),
        ];
        assert_eq!(
            collection_url("http://sim/api/v2", &pairs),
            "http://sim/api/v2/users?filter[email]=a%2Bb%40x.test&page[size]=2"
        );
    }
}
