//! The admin token: every `/api` call carries `Authorization: Bearer <admin.token>`.
//!
//! Without a token configured the server binds to loopback only ([`super::bind`]) and lets
//! every call through: whoever can reach a loopback port already runs on the machine. With a
//! token, any address may be bound and a call without the right token is answered 401 before
//! any handler runs. The comparison takes the same time wherever the tokens first differ
//! (`subtle`), so timing tells a guesser nothing. A browser cannot set a header on a WebSocket,
//! so the live feed also takes the token as `?access_token=` (RFC 6750 §2.3); no request line
//! is logged by usersync, so it does not end up in a log.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::Secret;

/// Lets the request through when no token is configured or when it carries the right one.
pub(super) async fn require_token(
    State(token): State<Option<Secret>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = token.filter(|t| !t.expose().is_empty()) else {
        return next.run(request).await;
    };
    let given = bearer(request.headers()).or_else(|| feed_query_token(&request));
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) => {
            next.run(request).await
        }
        given => {
            let message = if given.is_some() {
                "the admin token given is not this server's admin.token"
            } else {
                "this call needs the admin token: send Authorization: Bearer <admin.token>"
            };
            let mut response = ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: message.into(),
            }
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a valid header"),
            );
            response
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// `?access_token=` on the live feed only: the one route a browser cannot send a header to.
fn feed_query_token(request: &Request) -> Option<String> {
    if request.uri().path() != "/api/v1/feed" {
        return None;
    }
    url::form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
}
