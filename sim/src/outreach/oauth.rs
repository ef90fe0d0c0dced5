//! The OAuth 2.0 endpoints: `POST /oauth/token` and `GET /oauth/authorize`.
//!
//! Outreach's token endpoint behaves like the Ruby Doorkeeper server (docs/simulators.md):
//! the token response is `{"access_token","token_type":"bearer","expires_in","refresh_token",
//! "scope","created_at"}` and errors follow RFC 6749 §5.2 (`{"error","error_description"}`).
//! The simulator registers exactly one client (`client_id`, `client_secret`, `redirect_uri`
//! from [`SimConfig`](super::SimConfig)). Parameters arrive form-encoded, or as a JSON object
//! of strings (one connector sends JSON).
//!
//! Checks, in order: parseable body (`invalid_request`), `grant_type` present
//! (`invalid_request`) and supported (`unsupported_grant_type`), client credentials (401
//! `invalid_client`), the grant's own parameters (`invalid_request`), the grant itself (400
//! `invalid_grant`, also for a redirect URI other than the registered one), then the mint
//! throttle. A throttled mint answers 429 with `Retry-After` (seconds) and a JSON:API
//! `rateLimitExceeded` errors body — Outreach documents the 429 but not its body, so the
//! shape of its API 429 is an inference.
//!
//! `/oauth/authorize` approves at once, as the simulator's authorizing user, and redirects
//! (302) to the registered redirect URI with `code` and the echoed `state`. An unknown
//! client or a foreign redirect URI is answered directly (never redirected, per RFC 6749
//! §4.1.2.1); other problems are redirected as `error=…`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::DEFAULT_SUBJECT;
use super::credentials::{Grant, GrantError, Minted, parse_scopes};
use super::http::{plain_json, set_header};
use super::rate_limit::retry_after_seconds;
use super::state::Shared;

const INVALID_GRANT: &str = "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.";
const INVALID_CLIENT: &str = "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.";

/// `POST /oauth/token`.
pub async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match parse_params(&headers, &body) {
        Ok(params) => params,
        Err(detail) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &detail),
    };
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    };
    let Some(grant_type) = param("grant_type") else {
        return missing("grant_type");
    };
    if grant_type != "authorization_code" && grant_type != "refresh_token" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!(
                "The grant type '{grant_type}' is not supported; use authorization_code or refresh_token."
            ),
        );
    }
    let config = &shared.config;
    if param("client_id") != Some(config.client_id.as_str())
        || param("client_secret") != Some(config.client_secret.as_str())
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", INVALID_CLIENT);
    }
    let now = Utc::now();
    let throttle = shared.mint_throttle();
    let outcome = if grant_type == "authorization_code" {
        let (Some(code), Some(redirect_uri)) = (param("code"), param("redirect_uri")) else {
            return missing(if param("code").is_none() {
                "code"
            } else {
                "redirect_uri"
            });
        };
        shared.lock().credentials.exchange_code(
            code,
            &config.client_id,
            redirect_uri,
            throttle,
            now,
        )
    } else {
        let (Some(refresh_token), Some(redirect_uri)) =
            (param("refresh_token"), param("redirect_uri"))
        else {
            return missing(if param("refresh_token").is_none() {
                "refresh_token"
            } else {
                "redirect_uri"
            });
        };
        if redirect_uri != config.redirect_uri {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", INVALID_GRANT);
        }
        let scopes: Option<BTreeSet<String>> = param("scope").map(parse_scopes);
        shared
            .lock()
            .credentials
            .refresh(refresh_token, &config.client_id, scopes, throttle, now)
    };
    match outcome {
        Ok(minted) => token_response(&minted),
        Err(GrantError::Invalid) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", INVALID_GRANT)
        }
        Err(GrantError::InvalidScope) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "The requested scope exceeds the scope granted by the resource owner.",
        ),
        Err(GrantError::Throttled { retry_at }) => throttled(retry_at, now),
    }
}

/// `GET /oauth/authorize`.
pub async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params: HashMap<String, String> = query
        .map(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    };
    let config = &shared.config;
    let (Some(client_id), Some(redirect_uri)) = (param("client_id"), param("redirect_uri")) else {
        return missing(if param("client_id").is_none() {
            "client_id"
        } else {
            "redirect_uri"
        });
    };
    if client_id != config.client_id {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", INVALID_CLIENT);
    }
    if redirect_uri != config.redirect_uri {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "The redirect URI is not registered for this client.",
        );
    }
    let state = param("state");
    let mut reply: Vec<(&str, String)> = Vec::new();
    let scopes = param("scope").map(parse_scopes).unwrap_or_default();
    if param("response_type") != Some("code") {
        reply.push(("error", "unsupported_response_type".to_owned()));
    } else if scopes.is_empty() {
        reply.push(("error", "invalid_scope".to_owned()));
    } else {
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let grant = Grant::new(DEFAULT_SUBJECT, client_id, &scopes);
        let code = shared
            .lock()
            .credentials
            .issue_code(grant, redirect_uri, Utc::now());
        reply.push(("code", code));
    }
    if let Some(state) = state {
        reply.push(("state", state.to_owned()));
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(reply)
        .finish();
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut response = plain_json(StatusCode::FOUND, &json!({}));
    set_header(
        &mut response,
        "location",
        format!("{redirect_uri}{separator}{query}"),
    );
    response
}

/// Any other method on an OAuth endpoint.
pub async fn method_not_allowed() -> Response {
    oauth_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "This method is not supported here.",
    )
}

/// An unknown path under `/oauth`.
pub async fn not_found() -> Response {
    plain_json(StatusCode::NOT_FOUND, &json!({"error": "not_found"}))
}

/// Reads the parameters from a form-encoded (or absent content type) or JSON body.
fn parse_params(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        None | Some("application/x-www-form-urlencoded") => {
            Ok(url::form_urlencoded::parse(body).into_owned().collect())
        }
        Some("application/json") => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|error| format!("The body is not valid JSON: {error}."))?;
            let object = value
                .as_object()
                .ok_or("The JSON body must be an object.")?;
            object
                .iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key.clone(), text.clone())),
                    _ => Err(format!("The parameter '{key}' must be a string.")),
                })
                .collect()
        }
        Some(other) => Err(format!(
            "Unsupported content type '{other}'; send form-encoded parameters."
        )),
    }
}

fn token_response(minted: &Minted) -> Response {
    let mut response = plain_json(
        StatusCode::OK,
        &json!({
            "access_token": minted.access_token,
            "token_type": "bearer",
            "expires_in": minted.expires_in,
            "refresh_token": minted.refresh_token,
            "scope": minted.grant.scope_string(),
            "created_at": minted.created_at.timestamp(),
        }),
    );
    set_header(&mut response, "cache-control", "no-store");
    set_header(&mut response, "pragma", "no-cache");
    response
}

fn throttled(retry_at: DateTime<Utc>, now: DateTime<Utc>) -> Response {
    let seconds = retry_after_seconds(now, retry_at);
    let mut response = plain_json(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"errors": [{
            "id": "rateLimitExceeded",
            "title": "Rate Limit Exceeded",
            "detail": format!(
                "An access token was already issued for this user and application recently; please try again at {}.",
                retry_at.format("%Y-%m-%dT%H:%M:%S")
            ),
        }]}),
    );
    set_header(&mut response, "retry-after", seconds);
    response
}

fn missing(parameter: &str) -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &format!("The required parameter '{parameter}' is missing."),
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    plain_json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(content_type: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        headers
    }

    #[test]
    fn reads_form_and_json_parameters() {
        let form = parse_params(
            &headers(Some("application/x-www-form-urlencoded")),
            b"a=1&b=x+y",
        )
        .unwrap();
        assert_eq!(form["b"], "x y");
        let bare = parse_params(&headers(None), b"a=1").unwrap();
        assert_eq!(bare["a"], "1");
        let json = parse_params(
            &headers(Some("application/json; charset=utf-8")),
            br#"{"a":"1"}"#,
        )
        .unwrap();
        assert_eq!(json["a"], "1");
    }

    #[test]
    fn refuses_other_bodies() {
        assert!(parse_params(&headers(Some("application/json")), b"[1]").is_err());
        assert!(parse_params(&headers(Some("application/json")), br#"{"a":1}"#).is_err());
        assert!(parse_params(&headers(Some("text/plain")), b"a=1").is_err());
    }
}
