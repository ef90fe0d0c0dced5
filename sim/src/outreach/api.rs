//! The `/api/v2` request pipeline: the checks every API request passes, in order.
//!
//! 1. **Faults** (`faults.rs`): an injected 5xx or rate-limit storm answers before anything
//!    else, as infrastructure in front of the service would.
//! 2. **Gateway**: the `Authorization: Bearer` token must decode as a JWT, else 401 with the
//!    gateway's bare body `{"error":"Invalid JWT token.","description":"The JWT token could
//!    not be decoded."}` (docs/simulators.md); a missing header is treated the same way.
//! 3. **Token**: a decodable token that is unknown, revoked or expired gets a 401 with a
//!    JSON:API body `{"errors":[{"id":"unauthorized","title":"Unauthorized","detail":…}]}`.
//!    Outreach does not document this body; its shape and wording are an inference.
//! 4. **Rate limit** (`rate_limit.rs`): one request off the subject's budget; from here on
//!    every response carries `X-RateLimit-Limit/Remaining/Reset`; an empty budget is a 429.
//! 5. **Media type**: `Content-Type` must be exactly `application/vnd.api+json` — reads
//!    included, and (as JSON:API 1.0 requires) without media-type parameters — else 415
//!    with the documented `details` key.
//! 6. **Route**: unknown paths 404, unsupported methods 405 (users cannot be deleted).
//! 7. **Scope**: reads need `<resource>.read` or `<resource>.all`, writes `<resource>.write`
//!    or `<resource>.all` (`users.*`, `webhooks.*`); scopes are not additive. Else 403
//!    `unauthorizedOauthScope`.
//! 8. **Handler** (`users.rs`, `webhook_routes.rs`).
//!
//! Configured latency is added after the response is computed, to every API response.

use std::sync::Arc;

use axum::body::{Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::json;

use super::credentials::{Authentication, Grant};
use super::document::error;
use super::faults::Fault;
use super::http::{JSON_API, json_api, plain_json, set_header};
use super::rate_limit::RateStatus;
use super::state::Shared;
use super::users;
use super::webhook_routes;

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// Entry point for every `/api/v2` request.
pub async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let latency = shared.lock().faults.latency();
    let response = respond(&shared, request).await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    response
}

async fn respond(shared: &Shared, request: Request) -> Response {
    let now = Utc::now();
    let fault = shared.lock().faults.next_fault();
    if let Some(fault) = fault {
        return fault_response(shared, fault, now);
    }
    let Some(token) = bearer_token(request.headers()) else {
        return gateway_unauthorized();
    };
    let authentication = shared.lock().credentials.authenticate(token, now);
    let grant = match authentication {
        Authentication::Valid(grant) => grant,
        Authentication::Undecodable => return gateway_unauthorized(),
        Authentication::Unknown => return unauthorized("The access token is invalid."),
        Authentication::Revoked => return unauthorized("The access token was revoked."),
        Authentication::Expired => return unauthorized("The access token expired."),
    };
    let budget = shared.lock().rate_limiter.admit(&grant.subject, now);
    let mut response = if budget.admitted {
        authorized(shared, &grant, request, now).await
    } else {
        rate_limit_exceeded(&budget, now)
    };
    rate_limit_headers(&mut response, &budget);
    response
}

/// Steps 5–8, for an authenticated request within budget.
async fn authorized(
    shared: &Shared,
    grant: &Grant,
    request: Request,
    now: DateTime<Utc>,
) -> Response {
    if !is_json_api(request.headers()) {
        return json_api(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &json!({"errors": [{
                "id": "unsupportedMediaType",
                "title": "Unsupported Media Type",
                "details": format!("Requests must be sent with 'Content-Type: {JSON_API}'."),
            }]}),
        );
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().strip_prefix("/api/v2").unwrap_or_default();
    let route = match Route::resolve(&parts.method, path) {
        Ok(route) => route,
        Err(response) => return *response,
    };
    let scope = route.required_scope();
    let all = route.all_scope();
    if !grant.has_scope(scope) && !grant.has_scope(all) {
        return json_api(
            StatusCode::FORBIDDEN,
            &error(
                "unauthorizedOauthScope",
                "Unauthorized OAuth Scope",
                &format!("Your authorization does not include the required scope '{scope}'."),
            ),
        );
    }
    let body: Bytes = match to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return json_api(
                StatusCode::PAYLOAD_TOO_LARGE,
                &error(
                    "payloadTooLarge",
                    "Payload Too Large",
                    "The request body is too large.",
                ),
            );
        }
    };
    let pairs: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let api_url = shared.api_url();
    let mut state = shared.lock();
    match route {
        Route::List => users::list(&state, &pairs, &api_url),
        Route::Get(id) => users::get(&state, &id, &pairs, &api_url),
        Route::Create => users::create(&mut state, &body, &pairs, &api_url, now),
        Route::Update(id) => users::update(&mut state, &id, &body, &pairs, &api_url, now),
        Route::ListWebhooks => webhook_routes::list(&state, &pairs, &api_url),
        Route::CreateWebhook => webhook_routes::create(&mut state, &body, &api_url, now),
    }
}

/// The user and webhook endpoints.
enum Route {
    List,
    Create,
    Get(String),
    Update(String),
    ListWebhooks,
    CreateWebhook,
}

impl Route {
    fn resolve(method: &Method, path: &str) -> Result<Route, Box<Response>> {
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        match segments[..] {
            ["users"] => match *method {
                Method::GET => Ok(Route::List),
                Method::POST => Ok(Route::Create),
                _ => Err(Box::new(method_not_allowed(method, path, "GET, POST"))),
            },
            ["users", id] if !id.is_empty() => match *method {
                Method::GET => Ok(Route::Get(id.to_owned())),
                Method::PATCH => Ok(Route::Update(id.to_owned())),
                _ => Err(Box::new(method_not_allowed(method, path, "GET, PATCH"))),
            },
            ["webhooks"] => match *method {
                Method::GET => Ok(Route::ListWebhooks),
                Method::POST => Ok(Route::CreateWebhook),
                _ => Err(Box::new(method_not_allowed(method, path, "GET, POST"))),
            },
            _ => Err(Box::new(json_api(
                StatusCode::NOT_FOUND,
                &error(
                    "notFound",
                    "Not Found",
                    &format!("No route matches {method} /api/v2{path}."),
                ),
            ))),
        }
    }

    fn required_scope(&self) -> &'static str {
        match self {
            Route::List | Route::Get(_) => "users.read",
            Route::Create | Route::Update(_) => "users.write",
            Route::ListWebhooks => "webhooks.read",
            Route::CreateWebhook => "webhooks.write",
        }
    }

    fn all_scope(&self) -> &'static str {
        match self {
            Route::List | Route::Get(_) | Route::Create | Route::Update(_) => "users.all",
            Route::ListWebhooks | Route::CreateWebhook => "webhooks.all",
        }
    }
}

fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> Response {
    let mut response = json_api(
        StatusCode::METHOD_NOT_ALLOWED,
        &error(
            "methodNotAllowed",
            "Method Not Allowed",
            &format!("{method} is not supported on /api/v2{path}; allowed: {allow}."),
        ),
    );
    set_header(&mut response, "allow", allow);
    response
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_json_api(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(JSON_API))
}

fn gateway_unauthorized() -> Response {
    plain_json(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "Invalid JWT token.", "description": "The JWT token could not be decoded."}),
    )
}

fn unauthorized(detail: &str) -> Response {
    json_api(
        StatusCode::UNAUTHORIZED,
        &error("unauthorized", "Unauthorized", detail),
    )
}

fn rate_limit_exceeded(budget: &RateStatus, now: DateTime<Utc>) -> Response {
    let mut response = json_api(
        StatusCode::TOO_MANY_REQUESTS,
        &error(
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            &budget.exceeded_detail(),
        ),
    );
    set_header(&mut response, "retry-after", budget.retry_after(now));
    response
}

fn rate_limit_headers(response: &mut Response, budget: &RateStatus) {
    set_header(response, "x-ratelimit-limit", budget.limit);
    set_header(response, "x-ratelimit-remaining", budget.remaining);
    set_header(response, "x-ratelimit-reset", budget.reset_epoch());
}

/// The answer to an injected fault.
fn fault_response(shared: &Shared, fault: Fault, now: DateTime<Utc>) -> Response {
    match fault {
        Fault::RateLimitStorm | Fault::Status(429) => {
            let limit = shared.lock().rate_limiter.limit();
            let budget = RateStatus {
                limit,
                remaining: 0,
                reset: now + TimeDelta::seconds(1),
                admitted: false,
            };
            let mut response = rate_limit_exceeded(&budget, now);
            set_header(&mut response, "retry-after", 1);
            rate_limit_headers(&mut response, &budget);
            response
        }
        Fault::Status(503) => {
            // Outreach's maintenance answer carries an ISO-8601 instant in Retry-After
            // (docs/simulators.md), not a number of seconds.
            let retry_at = (now + TimeDelta::seconds(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
            let mut response = json_api(
                StatusCode::SERVICE_UNAVAILABLE,
                &error(
                    "scheduledServerMaintenance",
                    "Scheduled Server Maintenance",
                    &format!(
                        "Outreach is undergoing scheduled maintenance; please try again at {retry_at}."
                    ),
                ),
            );
            set_header(&mut response, "retry-after", retry_at);
            response
        }
        Fault::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let title = status.canonical_reason().unwrap_or("Server Error");
            json_api(
                status,
                &error(
                    &camel_case(title),
                    title,
                    "The request failed; please try again.",
                ),
            )
        }
    }
}

/// `"Bad Gateway"` → `"badGateway"`, the style of Outreach's error ids.
fn camel_case(title: &str) -> String {
    let mut out = String::new();
    for (index, word) in title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            if index == 0 {
                out.extend(first.to_lowercase());
            } else {
                out.extend(first.to_uppercase());
            }
            out.push_str(&chars.as_str().to_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn error_ids_are_camel_cased_titles() {
        assert_eq!(camel_case("Internal Server Error"), "internalServerError");
        assert_eq!(camel_case("Bad Gateway"), "badGateway");
        assert_eq!(camel_case("Gateway Timeout"), "gatewayTimeout");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn media_type_must_be_exact() {
        let check = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json_api(&headers)
        };
        assert!(check("application/vnd.api+json"));
        assert!(check("Application/VND.API+JSON"));
        assert!(!check("application/json"));
        assert!(!check("application/vnd.api+json; charset=utf-8"));
        assert!(!is_json_api(&HeaderMap::new()));
    }

    #[test]
    fn routes_resolve_by_path_and_method() {
        assert!(matches!(
            Route::resolve(&Method::GET, "/users"),
            Ok(Route::List)
        ));
        assert!(matches!(
            Route::resolve(&Method::POST, "/users"),
            Ok(Route::Create)
        ));
        assert!(
            matches!(Route::resolve(&Method::GET, "/users/7"), Ok(Route::Get(id)) if id == "7")
        );
        assert!(matches!(
            Route::resolve(&Method::PATCH, "/users/7"),
            Ok(Route::Update(_))
        ));
        let status = |method, path| Route::resolve(&method, path).err().map(|r| r.status());
        assert_eq!(
            status(Method::DELETE, "/users/7"),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(Method::PUT, "/users"),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(Method::GET, "/prospects"),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(status(Method::GET, "/users/"), Some(StatusCode::NOT_FOUND));
        assert!(matches!(
            Route::resolve(&Method::POST, "/webhooks"),
            Ok(Route::CreateWebhook)
        ));
        assert!(matches!(
            Route::resolve(&Method::GET, "/webhooks"),
            Ok(Route::ListWebhooks)
        ));
        assert_eq!(
            status(Method::DELETE, "/webhooks"),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(Method::GET, "/users/7/extra"),
            Some(StatusCode::NOT_FOUND)
        );
    }
}
