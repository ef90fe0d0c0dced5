//! What a failure means for the connection it happened on.
//!
//! Each protocol module classifies its own errors (the token endpoint's `error` /
//! `error_description` pairs, REST error arrays, Pub/Sub `error-code` trailers, Outreach's
//! JSON:API errors). Here each of those errors gets one [`Verdict`], so the roles and the
//! admin surface speak of both sides the same way. The `tests` module is the table of
//! docs/operations.md: one row per upstream signal, each fed through the real parser with the
//! exact body the provider sends (docs/salesforce.md, docs/outreach.md), and the verdict it
//! must give.
//!
//! A 401 on an API call is not a row of its own: the clients refresh the token once and retry
//! first, so what reaches a verdict is either the retry's answer or the refresh's refusal.

use super::DisconnectReason;
use crate::outreach::OutreachError;
use crate::salesforce::auth::SalesforceAuthError;
use crate::salesforce::cometd::CometdError;
use crate::salesforce::pubsub::PubSubError;
use crate::salesforce::pubsub::failure::{FailureKind, PubSubFailure};
use crate::salesforce::rest::SalesforceRestError;
use crate::salesforce::subscriber::SubscriberError;

/// What one failure does to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: the connection works, the request failed on its own (a 422, a 404, a replay id
    /// the replay policy handles) or the failure was somewhere else (Kafka, the store).
    Unaffected,
    /// Transient trouble: `degraded`, retried with backoff, no admin action needed.
    Degraded,
    /// Only an admin can fix it: `disconnected` with this reason.
    Disconnected(DisconnectReason),
}

impl Verdict {
    fn from_reason(reason: Option<DisconnectReason>) -> Verdict {
        reason.map_or(Verdict::Degraded, Verdict::Disconnected)
    }
}

/// An error that can say what it means for its connection.
pub trait ConnectionFailure: std::fmt::Display {
    fn verdict(&self) -> Verdict;
}

impl ConnectionFailure for SalesforceAuthError {
    fn verdict(&self) -> Verdict {
        Verdict::from_reason(self.disconnect_reason())
    }
}

impl ConnectionFailure for SalesforceRestError {
    fn verdict(&self) -> Verdict {
        match self {
            // About one record or one query page, not about the connection.
            SalesforceRestError::Refused { code, .. }
                if matches!(code.as_str(), "NOT_FOUND" | "INVALID_QUERY_LOCATOR") =>
            {
                Verdict::Unaffected
            }
            other => Verdict::from_reason(other.disconnect_reason()),
        }
    }
}

impl ConnectionFailure for PubSubFailure {
    fn verdict(&self) -> Verdict {
        match self.kind {
            FailureKind::PermissionDenied => {
                Verdict::Disconnected(DisconnectReason::PermissionsChanged)
            }
            // User is not selected for Change Data Capture, or the client sent a request the
            // service refuses: retrying the same thing cannot help.
            FailureKind::TopicNotFound | FailureKind::ClientBug => {
                Verdict::Disconnected(DisconnectReason::Other)
            }
            // The replay policy handles it (resync, latest or fail); the session is fine.
            FailureKind::ReplayUnusable => Verdict::Unaffected,
            // A new token first; only a refused refresh disconnects.
            FailureKind::Unauthenticated
            | FailureKind::DeliveryLimit
            | FailureKind::Throttled
            | FailureKind::Transient => Verdict::Degraded,
        }
    }
}

impl ConnectionFailure for PubSubError {
    fn verdict(&self) -> Verdict {
        match self {
            PubSubError::Call { failure, .. } => failure.verdict(),
            PubSubError::CannotSubscribe { .. } => {
                Verdict::Disconnected(DisconnectReason::PermissionsChanged)
            }
            PubSubError::Endpoint { .. } | PubSubError::Header { .. } => {
                Verdict::Disconnected(DisconnectReason::Other)
            }
        }
    }
}

impl ConnectionFailure for CometdError {
    fn verdict(&self) -> Verdict {
        Verdict::from_reason(self.disconnect_reason())
    }
}

impl ConnectionFailure for SubscriberError {
    fn verdict(&self) -> Verdict {
        match self {
            SubscriberError::Auth(error) => error.verdict(),
            SubscriberError::PubSub(error) => error.verdict(),
            SubscriberError::Cometd(error) => error.verdict(),
            SubscriberError::Rest { source, .. } => source.verdict(),
            // Kafka, the store and a stopped stream are not the Salesforce connection.
            // A lost lease neither: another instance streams.
            SubscriberError::Stopped { .. }
            | SubscriberError::Kafka { .. }
            | SubscriberError::Transaction { .. }
            | SubscriberError::Store { .. }
            | SubscriberError::LeaseLost(_) => Verdict::Unaffected,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::StatusCode;
    use tonic::metadata::MetadataValue;

    use super::*;
    use crate::connection::DisconnectReason::*;
    use crate::outreach::error::{Operation, classify, classify_token_failure};
    use crate::outreach::jsonapi::ErrorBody;
    use crate::salesforce::auth::{AuthOperation, token_failure};
    use crate::salesforce::pubsub::failure;
    use crate::salesforce::rest::{RestOperation, refusal};

    const D: fn(DisconnectReason) -> Verdict = Verdict::Disconnected;

    /// Salesforce's token endpoint (docs/operations.md): HTTP 400 unless noted.
    #[test]
    fn salesforce_token_endpoint_refusals() {
        let rows: &[(u16, &str, Verdict)] = &[
            (
                400,
                r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"invalid assertion"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"authentication failure"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"inactive user"}"#,
                D(UserInactive),
            ),
            (
                400,
                r#"{"error":"inactive_user","error_description":"inactive user"}"#,
                D(UserInactive),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"user hasn't approved this consumer"}"#,
                D(NotApproved),
            ),
            (
                400,
                r#"{"error":"invalid_app_access","error_description":"user is not admin approved to access this app"}"#,
                D(NotApproved),
            ),
            (
                400,
                r#"{"error":"invalid_client_id","error_description":"client identifier invalid"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Audience validation failed"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"audience is invalid"}"#,
                D(CredentialsChanged),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#,
                D(Other),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"no client credentials user enabled"}"#,
                D(Other),
            ),
            (
                400,
                r#"{"error":"unheard_of","error_description":"something new"}"#,
                D(Other),
            ),
            (503, "<html>Service Unavailable</html>", Verdict::Degraded),
            (429, "<html>Too Many Requests</html>", Verdict::Degraded),
        ];
        for (status, body, expected) in rows {
            let error = token_failure(
                AuthOperation::ObtainToken { flow: "jwt-bearer" },
                StatusCode::from_u16(*status).unwrap(),
                body,
            );
            assert_eq!(error.verdict(), *expected, "{status} {body} ({error})");
        }
    }

    /// Salesforce REST errors (docs/operations.md).
    #[test]
    fn salesforce_rest_refusals() {
        let rows: &[(u16, &str, Verdict)] = &[
            (
                403,
                r#"[{"message":"Insufficient access rights on cross-reference id","errorCode":"INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"}]"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"[{"message":"insufficient access","errorCode":"INSUFFICIENT_ACCESS"}]"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"[{"message":"The REST API is not enabled for this Organization.","errorCode":"API_DISABLED_FOR_ORG"}]"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
                Verdict::Degraded,
            ),
            (
                404,
                r#"[{"message":"The requested resource does not exist","errorCode":"NOT_FOUND"}]"#,
                Verdict::Unaffected,
            ),
            (
                400,
                r#"[{"message":"No such column 'Foo__c' on entity 'User'.","errorCode":"INVALID_FIELD"}]"#,
                D(PermissionsChanged),
            ),
            (
                400,
                r#"[{"message":"unexpected token: FROM","errorCode":"MALFORMED_QUERY"}]"#,
                D(Other),
            ),
        ];
        for (status, body, expected) in rows {
            let error = refusal(
                RestOperation::ListVersions,
                StatusCode::from_u16(*status).unwrap(),
                body,
            );
            assert_eq!(error.verdict(), *expected, "{status} {body} ({error})");
        }
    }

    /// Pub/Sub API statuses and `error-code` trailers (docs/operations.md).
    #[test]
    fn pubsub_failures() {
        let trailer = |code: tonic::Code, suffix: Option<&str>| {
            let mut status = tonic::Status::new(code, "refused rpcId: 5e1f");
            if let Some(suffix) = suffix {
                status.metadata_mut().insert(
                    "error-code",
                    MetadataValue::try_from(format!("sfdc.platform.eventbus.grpc.{suffix}"))
                        .unwrap(),
                );
            }
            failure::classify(&status)
        };
        use tonic::Code;
        let rows: &[(Code, Option<&str>, Verdict)] = &[
            (
                Code::PermissionDenied,
                Some("subscription.topic.cannot.subscribe"),
                D(PermissionsChanged),
            ),
            (Code::PermissionDenied, None, D(PermissionsChanged)),
            (Code::NotFound, Some("topic.not.found"), D(Other)),
            (
                Code::InvalidArgument,
                Some("subscription.fetch.replayid.corrupted"),
                Verdict::Unaffected,
            ),
            (
                Code::InvalidArgument,
                Some("subscription.fetch.replayid.validation.failed"),
                Verdict::Unaffected,
            ),
            (
                Code::InvalidArgument,
                Some("subscription.fetch.topic.mismatch"),
                D(Other),
            ),
            (
                Code::Unauthenticated,
                Some("service.auth.error"),
                Verdict::Degraded,
            ),
            (
                Code::Internal,
                Some("service.unavailable"),
                Verdict::Degraded,
            ),
            (
                Code::ResourceExhausted,
                Some("service.protection.triggered"),
                Verdict::Degraded,
            ),
            (
                Code::Unknown,
                Some("subscription.limit.exceeded"),
                Verdict::Degraded,
            ),
            (Code::Unavailable, None, Verdict::Degraded),
        ];
        for (code, suffix, expected) in rows {
            let failure = trailer(*code, *suffix);
            assert_eq!(
                failure.verdict(),
                *expected,
                "{code:?} {suffix:?} ({failure})"
            );
        }
        let cannot = PubSubError::CannotSubscribe {
            topic: "/data/UserChangeEvent".into(),
        };
        assert_eq!(cannot.verdict(), D(PermissionsChanged));
    }

    /// Outreach API and token-endpoint errors (docs/operations.md).
    #[test]
    fn outreach_refusals() {
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
    fn failures_outside_salesforce_leave_its_connection_alone() {
        let stopped = SubscriberError::Stopped {
            reason: "the transactional producer was fenced".into(),
        };
        assert_eq!(stopped.verdict(), Verdict::Unaffected);
    }
}
