//! What can go wrong talking to Outreach, typed so callers decide without parsing strings.
//!
//! The processor treats failures very differently: a taken email means "look the user up and
//! link", a missing scope or a revoked grant means "stop and ask an admin", a rate limit means
//! "pause the whole worker", and a 5xx that outlived the retries means "try the event again
//! later". Each variant therefore maps to one of those reactions, carries the [`Operation`] that
//! failed (so every message reads "while creating Outreach user abc@def.com: ..."), and has a
//! stable [`OutreachError::code`] for metrics and the decision log.
//!
//! [`classify`] is the single table from an HTTP status and error body to a variant; the client
//! handles 401, 429 and 5xx itself before a status ever reaches the caller, so those rows only
//! surface once the client's own remedies (refresh, wait, retry) are used up.
//!
//! What each variant means for the Outreach connection (`connection::ConnectionFailure`) is said
//! here as well, next to the variants, so the connection model needs to know nothing of
//! Outreach; the tests feed the bodies of docs/operations.md through [`classify`] and
//! [`classify_token_failure`] and check the verdict of each.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;

use super::jsonapi::ErrorBody;
use crate::connection::{ConnectionFailure, DisconnectReason, Verdict};
use crate::model::outreach_user::OutreachUserId;

/// The JSON pointer Outreach sets on a 422 about the email attribute.
pub const EMAIL_POINTER: &str = "/data/attributes/email";

/// What the client was doing when something failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    CreateUser { email: Option<String> },
    UpdateUser { id: OutreachUserId },
    GetUser { id: OutreachUserId },
    FindUsersByEmail { email: String },
    ListUsers,
    ListWebhooks,
    CreateWebhook { url: String },
    RefreshToken,
    ExchangeCode,
    Configure,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::CreateUser { email: Some(email) } => {
                write!(f, "creating Outreach user {email}")
            }
            Operation::CreateUser { email: None } => f.write_str("creating an Outreach user"),
            Operation::UpdateUser { id } => write!(f, "updating Outreach user {id}"),
            Operation::GetUser { id } => write!(f, "reading Outreach user {id}"),
            Operation::FindUsersByEmail { email } => {
                write!(f, "looking up Outreach users by email {email}")
            }
            Operation::ListUsers => f.write_str("listing Outreach users"),
            Operation::ListWebhooks => f.write_str("listing Outreach webhooks"),
            Operation::CreateWebhook { url } => {
                write!(f, "registering an Outreach webhook for {url}")
            }
            Operation::RefreshToken => f.write_str("refreshing the Outreach access token"),
            Operation::ExchangeCode => {
                f.write_str("exchanging an Outreach authorization code for tokens")
            }
            Operation::Configure => f.write_str("configuring the Outreach client"),
        }
    }
}

/// An Outreach failure, after the client's own retries.
#[derive(Debug, thiserror::Error)]
pub enum OutreachError {
    /// 422 `validationError`.
    #[error("while {operation}: Outreach rejected the request: {detail}{}", pointer_suffix(.pointer))]
    Validation {
        operation: Operation,
        detail: String,
        pointer: Option<String>,
    },
    /// 404 `resourceNotFound` (also when the record exists but is not visible to the user).
    #[error("while {operation}: not found: {detail}")]
    NotFound {
        operation: Operation,
        detail: String,
    },
    /// 403 `unauthorizedOauthScope`: the grant lacks a scope; an admin must re-authorize.
    #[error("while {operation}: the OAuth grant lacks a required scope: {detail}")]
    Scope {
        operation: Operation,
        detail: String,
    },
    /// 403 `unauthorizedRequest` (or any other 403): the user's governance profile forbids it.
    #[error("while {operation}: forbidden by the Outreach user's governance profile: {detail}")]
    Governance {
        operation: Operation,
        detail: String,
    },
    /// 429 still there after the longest wait the client may do (or a pacing wait that long).
    #[error("while {operation}: rate limited by Outreach; retry after {}s", .retry_after.as_secs())]
    RateLimited {
        operation: Operation,
        retry_after: Duration,
    },
    /// 401 after one token refresh and one retry.
    #[error("while {operation}: Outreach refused the access token: {detail}")]
    Auth {
        operation: Operation,
        detail: String,
    },
    /// The token endpoint refused a grant (`invalid_grant`, `invalid_client`, ...).
    #[error("while {operation}: the token endpoint answered {error}{}", description_suffix(.description))]
    Token {
        operation: Operation,
        error: String,
        description: Option<String>,
    },
    /// 415: the request lacked `Content-Type: application/vnd.api+json` (a client bug).
    #[error("while {operation}: unsupported media type: {detail}")]
    UnsupportedMediaType {
        operation: Operation,
        detail: String,
    },
    /// A 5xx that outlived the retries.
    #[error("while {operation}: Outreach server error {status}: {detail}")]
    Server {
        operation: Operation,
        status: u16,
        detail: String,
    },
    /// Another 4xx none of the above explains.
    #[error("while {operation}: Outreach answered {status}: {detail}")]
    Rejected {
        operation: Operation,
        status: u16,
        detail: String,
    },
    /// Connection, TLS or timeout failure that outlived the retries.
    #[error("while {operation}: network error: {source}")]
    Network {
        operation: Operation,
        #[source]
        source: reqwest::Error,
    },
    /// A success response whose body was not what the API documents.
    #[error("while {operation}: unexpected response: {detail}")]
    Decode {
        operation: Operation,
        detail: String,
    },
    /// The client could not be built (bad URL, TLS setup).
    #[error("while {operation}: {detail}")]
    Config {
        operation: Operation,
        detail: String,
    },
}

fn pointer_suffix(pointer: &Option<String>) -> String {
    pointer
        .as_ref()
        .map(|p| format!(" (at {p})"))
        .unwrap_or_default()
}

fn description_suffix(description: &Option<String>) -> String {
    description
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl OutreachError {
    /// A stable, lower-case code per variant, for metrics labels and decision records.
    pub fn code(&self) -> &'static str {
        match self {
            OutreachError::Validation { .. } => "validation",
            OutreachError::NotFound { .. } => "not_found",
            OutreachError::Scope { .. } => "scope",
            OutreachError::Governance { .. } => "governance",
            OutreachError::RateLimited { .. } => "rate_limited",
            OutreachError::Auth { .. } => "auth",
            OutreachError::Token { .. } => "token",
            OutreachError::UnsupportedMediaType { .. } => "unsupported_media_type",
            OutreachError::Server { .. } => "server",
            OutreachError::Rejected { .. } => "rejected",
            OutreachError::Network { .. } => "network",
            OutreachError::Decode { .. } => "decode",
            OutreachError::Config { .. } => "config",
        }
    }

    /// True when the same request may succeed later without anyone changing anything: rate
    /// limits, server errors and network trouble. Everything else needs a different request or
    /// a human.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OutreachError::RateLimited { .. }
                | OutreachError::Server { .. }
                | OutreachError::Network { .. }
        )
    }

    /// True for a create refused because the email already belongs to a user (Outreach emails
    /// are unique across all instances): the caller should look the user up and link instead.
    pub fn is_email_taken(&self) -> bool {
        matches!(
            self,
            OutreachError::Validation {
                operation: Operation::CreateUser { .. },
                pointer: Some(pointer),
                ..
            } if pointer == EMAIL_POINTER
        )
    }

    /// True when only a new authorization by an admin can fix this (revoked or expired grant,
    /// bad client credentials, missing scope).
    pub fn needs_reauthorization(&self) -> bool {
        matches!(
            self,
            OutreachError::Auth { .. } | OutreachError::Token { .. } | OutreachError::Scope { .. }
        )
    }

    /// The operation that failed.
    pub fn operation(&self) -> &Operation {
        match self {
            OutreachError::Validation { operation, .. }
            | OutreachError::NotFound { operation, .. }
            | OutreachError::Scope { operation, .. }
            | OutreachError::Governance { operation, .. }
            | OutreachError::RateLimited { operation, .. }
            | OutreachError::Auth { operation, .. }
            | OutreachError::Token { operation, .. }
            | OutreachError::UnsupportedMediaType { operation, .. }
            | OutreachError::Server { operation, .. }
            | OutreachError::Rejected { operation, .. }
            | OutreachError::Network { operation, .. }
            | OutreachError::Decode { operation, .. }
            | OutreachError::Config { operation, .. } => operation,
        }
    }
}

/// What a failure means for the Outreach connection, beside the variants it reads: a missing
/// scope or a governance refusal is a permission change, a refused token or grant is changed
/// credentials, what the client retries is transient, and a refusal about one request leaves
/// the connection alone.
impl ConnectionFailure for OutreachError {
    fn verdict(&self) -> Verdict {
        match self {
            OutreachError::Scope { .. } | OutreachError::Governance { .. } => {
                Verdict::Disconnected(DisconnectReason::PermissionsChanged)
            }
            // A 401 that outlived one refresh and one retry.
            OutreachError::Auth { .. } => {
                Verdict::Disconnected(DisconnectReason::CredentialsChanged)
            }
            OutreachError::Token { error, .. } => match error.as_str() {
                "invalid_grant" | "invalid_client" | "unauthorized_client" => {
                    Verdict::Disconnected(DisconnectReason::CredentialsChanged)
                }
                _ => Verdict::Disconnected(DisconnectReason::Other),
            },
            OutreachError::RateLimited { .. }
            | OutreachError::Server { .. }
            | OutreachError::Network { .. } => Verdict::Degraded,
            OutreachError::Validation { .. }
            | OutreachError::NotFound { .. }
            | OutreachError::UnsupportedMediaType { .. }
            | OutreachError::Rejected { .. }
            | OutreachError::Decode { .. } => Verdict::Unaffected,
            OutreachError::Config { .. } => Verdict::Disconnected(DisconnectReason::Other),
        }
    }
}

/// Maps a final (non-success) response to an error. `retry_after` is what the response's
/// headers said, used for 429.
pub fn classify(
    operation: Operation,
    status: StatusCode,
    body: &ErrorBody,
    retry_after: Option<Duration>,
) -> OutreachError {
    let detail = body.summary();
    let code = body.code();
    match status.as_u16() {
        401 => OutreachError::Auth { operation, detail },
        403 if code == Some("unauthorizedOauthScope") => OutreachError::Scope { operation, detail },
        403 => OutreachError::Governance { operation, detail },
        404 => OutreachError::NotFound { operation, detail },
        415 => OutreachError::UnsupportedMediaType { operation, detail },
        422 => {
            // The first error that names a pointer says which attribute failed.
            let pointer = match body {
                ErrorBody::JsonApi(entries) => entries.iter().find_map(|e| e.pointer.clone()),
                _ => None,
            };
            OutreachError::Validation {
                operation,
                detail,
                pointer,
            }
        }
        429 => OutreachError::RateLimited {
            operation,
            retry_after: retry_after.unwrap_or_default(),
        },
        s if s >= 500 => OutreachError::Server {
            operation,
            status: s,
            detail,
        },
        s => OutreachError::Rejected {
            operation,
            status: s,
            detail,
        },
    }
}

/// Maps a failed token-endpoint response: OAuth `{"error", "error_description"}` bodies become
/// [`OutreachError::Token`]; a 5xx stays a server error.
pub fn classify_token_failure(
    operation: Operation,
    status: StatusCode,
    body: &ErrorBody,
    retry_after: Option<Duration>,
) -> OutreachError {
    match body {
        ErrorBody::Bare { error, description }
            if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS =>
        {
            OutreachError::Token {
                operation,
                error: error.clone(),
                description: description.clone(),
            }
        }
        _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST => {
            OutreachError::Token {
                operation,
                error: body.code().unwrap_or("unknown_error").to_owned(),
                description: Some(body.summary()),
            }
        }
        _ => classify(operation, status, body, retry_after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ErrorBody {
        ErrorBody::parse(json.as_bytes())
    }

    fn create() -> Operation {
        Operation::CreateUser {
            email: Some("abc@def.com".into()),
        }
    }

    const TAKEN: &str = r#"{"errors":[{"id":"validationError","title":"Validation Error",
        "detail":"Email has already been taken","source":{"pointer":"/data/attributes/email"}}]}"#;

    #[test]
    fn classification_table() {
        let get = Operation::GetUser {
            id: OutreachUserId(1),
        };
        let cases: &[(u16, &str, &str)] = &[
            (
                401,
                r#"{"error":"Invalid JWT token.","description":"x"}"#,
                "auth",
            ),
            (
                401,
                r#"{"errors":[{"id":"unauthorized","detail":"expired"}]}"#,
                "auth",
            ),
            (
                403,
                r#"{"errors":[{"id":"unauthorizedOauthScope"}]}"#,
                "scope",
            ),
            (
                403,
                r#"{"errors":[{"id":"unauthorizedRequest"}]}"#,
                "governance",
            ),
            (
                404,
                r#"{"errors":[{"id":"resourceNotFound"}]}"#,
                "not_found",
            ),
            (
                415,
                r#"{"errors":[{"id":"unsupportedMediaType"}]}"#,
                "unsupported_media_type",
            ),
            (422, TAKEN, "validation"),
            (
                429,
                r#"{"errors":[{"id":"rateLimitExceeded"}]}"#,
                "rate_limited",
            ),
            (500, "oops", "server"),
            (
                503,
                r#"{"errors":[{"id":"scheduledServerMaintenance"}]}"#,
                "server",
            ),
            (400, "", "rejected"),
            (409, "", "rejected"),
        ];
        for (status, text, code) in cases {
            let err = classify(
                get.clone(),
                StatusCode::from_u16(*status).unwrap(),
                &body(text),
                None,
            );
            assert_eq!(err.code(), *code, "status {status} body {text}");
        }
    }

    #[test]
    fn retryable_variants() {
        let op = Operation::ListUsers;
        let retryable = [
            OutreachError::RateLimited {
                operation: op.clone(),
                retry_after: Duration::from_secs(3),
            },
            OutreachError::Server {
                operation: op.clone(),
                status: 502,
                detail: "bad gateway".into(),
            },
        ];
        assert!(retryable.iter().all(OutreachError::is_retryable));
        let final_ = [
            classify(op.clone(), StatusCode::NOT_FOUND, &body(""), None),
            classify(
                op.clone(),
                StatusCode::UNPROCESSABLE_ENTITY,
                &body(TAKEN),
                None,
            ),
            classify(op.clone(), StatusCode::FORBIDDEN, &body(""), None),
            classify(op, StatusCode::UNAUTHORIZED, &body(""), None),
        ];
        assert!(final_.iter().all(|e| !e.is_retryable()));
    }

    #[test]
    fn email_taken_only_on_a_create_with_the_email_pointer() {
        let err = classify(
            create(),
            StatusCode::UNPROCESSABLE_ENTITY,
            &body(TAKEN),
            None,
        );
        assert!(err.is_email_taken());
        match &err {
            OutreachError::Validation {
                pointer, detail, ..
            } => {
                assert_eq!(pointer.as_deref(), Some(EMAIL_POINTER));
                assert_eq!(detail, "Email has already been taken");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "while creating Outreach user abc@def.com: Outreach rejected the request: \
             Email has already been taken (at /data/attributes/email)"
        );

        let update = Operation::UpdateUser {
            id: OutreachUserId(9),
        };
        let on_update = classify(update, StatusCode::UNPROCESSABLE_ENTITY, &body(TAKEN), None);
        assert!(!on_update.is_email_taken());

        let other_pointer = body(
            r#"{"errors":[{"id":"validationError","detail":"Name can't be blank.",
                "source":{"pointer":"/data/attributes/firstName"}}]}"#,
        );
        let blank = classify(
            create(),
            StatusCode::UNPROCESSABLE_ENTITY,
            &other_pointer,
            None,
        );
        assert!(!blank.is_email_taken());
    }

    #[test]
    fn token_endpoint_errors_keep_the_oauth_code() {
        let err = classify_token_failure(
            Operation::RefreshToken,
            StatusCode::BAD_REQUEST,
            &body(r#"{"error":"invalid_grant","error_description":"revoked"}"#),
            None,
        );
        match &err {
            OutreachError::Token {
                error, description, ..
            } => {
                assert_eq!(error, "invalid_grant");
                assert_eq!(description.as_deref(), Some("revoked"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.needs_reauthorization());
        assert_eq!(
            err.to_string(),
            "while refreshing the Outreach access token: the token endpoint answered \
             invalid_grant: revoked"
        );
        let client = classify_token_failure(
            Operation::RefreshToken,
            StatusCode::UNAUTHORIZED,
            &body(r#"{"error":"invalid_client"}"#),
            None,
        );
        assert_eq!(client.code(), "token");
        let throttled = classify_token_failure(
            Operation::RefreshToken,
            StatusCode::TOO_MANY_REQUESTS,
            &body(r#"{"errors":[{"id":"rateLimitExceeded"}]}"#),
            Some(Duration::from_secs(42)),
        );
        assert!(matches!(
            throttled,
            OutreachError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(42)
        ));
        let down = classify_token_failure(
            Operation::RefreshToken,
            StatusCode::BAD_GATEWAY,
            &body(""),
            None,
        );
        assert_eq!(down.code(), "server");
    }

    /// Outreach API and token-endpoint errors (docs/operations.md).
    #[test]
    fn outreach_refusals() {
        use crate::connection::DisconnectReason::*;
        const D: fn(DisconnectReason) -> Verdict = Verdict::Disconnected;
        let api: &[(u16, &str, Verdict)] = &[
            (
                403,
                r#"{"errors":[{"id":"unauthorizedOauthScope","title":"Unauthorized OAuth Scope","detail":"Your authorization does not include the required scope 'users.write'."}]}"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"{"errors":[{"id":"unauthorizedRequest","title":"Unauthorized Request","detail":"You are not authorized to perform that request."}]}"#,
                D(PermissionsChanged),
            ),
            (
                401,
                r#"{"error":"Invalid JWT token.","description":"The JWT token could not be decoded."}"#,
                D(CredentialsChanged),
            ),
            (
                422,
                r#"{"errors":[{"id":"validationError","title":"Validation Error","detail":"Email has already been taken","source":{"pointer":"/data/attributes/email"}}]}"#,
                Verdict::Unaffected,
            ),
            (
                404,
                r#"{"errors":[{"id":"resourceNotFound","title":"Resource Not Found","detail":"Could not find 'user' with ID '9'."}]}"#,
                Verdict::Unaffected,
            ),
            (
                415,
                r#"{"errors":[{"id":"unsupportedMediaType","title":"Unsupported Media Type"}]}"#,
                Verdict::Unaffected,
            ),
            (
                429,
                r#"{"errors":[{"id":"rateLimitExceeded","title":"Rate Limit Exceeded","detail":"You have exceeded your permitted rate limit of 10,000; please try again at 2017-01-01T00:00:00."}]}"#,
                Verdict::Degraded,
            ),
            (
                503,
                r#"{"errors":[{"id":"scheduledServerMaintenance","title":"Scheduled Server Maintenance"}]}"#,
                Verdict::Degraded,
            ),
        ];
        for (status, body, expected) in api {
            let error = classify(
                Operation::ListUsers,
                StatusCode::from_u16(*status).unwrap(),
                &ErrorBody::parse(body.as_bytes()),
                Some(Duration::from_secs(1)),
            );
            assert_eq!(error.verdict(), *expected, "{status} {body} ({error})");
        }
        let token: &[(u16, &str, Verdict)] = &[
            (
                400,
                r#"{"error":"invalid_grant","error_description":"The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."}"#,
                D(CredentialsChanged),
            ),
            (
                401,
                r#"{"error":"invalid_client","error_description":"Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_request","error_description":"The request is missing a required parameter."}"#,
                D(Other),
            ),
            (
                429,
                r#"{"errors":[{"id":"rateLimitExceeded","title":"Rate Limit Exceeded"}]}"#,
                Verdict::Degraded,
            ),
            (500, "Internal Server Error", Verdict::Degraded),
        ];
        for (status, body, expected) in token {
            let error = classify_token_failure(
                Operation::RefreshToken,
                StatusCode::from_u16(*status).unwrap(),
                &ErrorBody::parse(body.as_bytes()),
                None,
            );
            assert_eq!(error.verdict(), *expected, "{status} {body} ({error})");
        }
    }

    #[test]
    fn messages_say_what_the_client_was_doing() {
        let err = classify(
            Operation::GetUser {
                id: OutreachUserId(12),
            },
            StatusCode::NOT_FOUND,
            &body(
                r#"{"errors":[{"id":"resourceNotFound","detail":"Could not find 'user' with ID '12'."}]}"#,
            ),
            None,
        );
        assert_eq!(
            err.to_string(),
            "while reading Outreach user 12: not found: Could not find 'user' with ID '12'."
        );
        assert_eq!(
            err.operation(),
            &Operation::GetUser {
                id: OutreachUserId(12)
            }
        );
    }
}
