//! What a failed Pub/Sub call means, read from its status and `error-code` trailer.
//!
//! Any error ends a Subscribe stream (docs/salesforce.md, "Pub/Sub: errors"), and what to do
//! next depends on *why*. The gRPC status alone is ambiguous (a delivery-limit error and a
//! connection-limit error share statuses, and which status some codes use is undocumented:
//! "What Salesforce leaves open"), so [`classify`] goes by the trailer first and falls back to
//! the status only when the trailer is missing or unknown — a missing trailer is normal
//! ("Failures seen in other clients": missing error trailer).
//!
//! The outcome is a [`FailureKind`] the subscriber turns into an action:
//!
//! | kind | action |
//! |---|---|
//! | `ReplayUnusable` | the configured replay policy (`resync`, `latest`, `fail`) |
//! | `Unauthenticated` | a new token, then resume from the checkpoint |
//! | `PermissionDenied`, `TopicNotFound` | stop: only an admin can fix it |
//! | `DeliveryLimit` | a long backoff (the allocation is per rolling 24 h) |
//! | `Throttled` | backoff |
//! | `Transient` | backoff, then resume from the checkpoint |
//! | `ClientBug` | stop and report: retrying the same request cannot help |

use std::fmt;

use tonic::{Code, Status};

/// What kind of failure a status is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The replay id is outside the retention window or not valid.
    ReplayUnusable,
    /// The session is invalid or expired.
    Unauthenticated,
    /// The authorizing user may not read the topic (View All Users removed).
    PermissionDenied,
    /// The topic does not exist or CDC is not enabled for User.
    TopicNotFound,
    /// The org's daily event delivery allocation is used up.
    DeliveryLimit,
    /// Too many connections or requests.
    Throttled,
    /// Network trouble or a service outage: retry.
    Transient,
    /// The request itself is wrong (bad credit, topic mismatch).
    ClientBug,
}

impl FailureKind {
    /// Whether retrying (after the kind's own remedy) can succeed without an admin.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            FailureKind::PermissionDenied | FailureKind::TopicNotFound | FailureKind::ClientBug
        )
    }
}

/// A classified failure: the kind, and what the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubFailure {
    pub kind: FailureKind,
    pub status: Code,
    /// The `error-code` trailer, when there was one.
    pub error_code: Option<String>,
    pub message: String,
}

impl fmt::Display for PubSubFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.status, self.message)?;
        if let Some(code) = &self.error_code {
            write!(f, " (error-code {code})")?;
        }
        Ok(())
    }
}

/// Trailer suffixes (after `sfdc.platform.eventbus.grpc.`) and their kinds (docs/salesforce.md,
/// "Pub/Sub: errors"; what each kind leads to: docs/subscriber.md, "When the stream ends").
pub const TRAILER_KINDS: &[(&str, FailureKind)] = &[
    (
        "subscription.fetch.replayid.corrupted",
        FailureKind::ReplayUnusable,
    ),
    (
        "subscription.fetch.replayid.validation.failed",
        FailureKind::ReplayUnusable,
    ),
    (
        "subscription.fetch.requested.events.invalid",
        FailureKind::ClientBug,
    ),
    ("subscription.fetch.topic.mismatch", FailureKind::ClientBug),
    (
        "subscription.topic.cannot.subscribe",
        FailureKind::PermissionDenied,
    ),
    ("topic.not.found", FailureKind::TopicNotFound),
    ("subscription.limit.exceeded", FailureKind::DeliveryLimit),
    ("service.unavailable", FailureKind::Transient),
    ("service.auth.error", FailureKind::Unauthenticated),
    ("concurrent.client.limit.exceeded", FailureKind::Throttled),
    ("subscription.internal.error", FailureKind::Transient),
    ("service.protection.triggered", FailureKind::Throttled),
    ("stream.limit.triggered", FailureKind::Throttled),
];

/// Classifies a failed call.
pub fn classify(status: &Status) -> PubSubFailure {
    let error_code = status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let by_trailer = error_code.as_deref().and_then(|code| {
        TRAILER_KINDS
            .iter()
            .find(|(suffix, _)| code.ends_with(suffix))
            .map(|(_, kind)| *kind)
    });
    let kind = by_trailer.unwrap_or(match status.code() {
        Code::Unauthenticated => FailureKind::Unauthenticated,
        Code::PermissionDenied => FailureKind::PermissionDenied,
        Code::NotFound => FailureKind::TopicNotFound,
        Code::ResourceExhausted => FailureKind::Throttled,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            FailureKind::ClientBug
        }
        _ => FailureKind::Transient,
    });
    PubSubFailure {
        kind,
        status: status.code(),
        error_code,
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::{MetadataMap, MetadataValue};

    use super::*;

    fn with_trailer(code: Code, suffix: &str) -> Status {
        let mut trailers = MetadataMap::new();
        let value = format!("sfdc.platform.eventbus.grpc.{suffix}");
        trailers.insert("error-code", MetadataValue::try_from(value).unwrap());
        Status::with_metadata(code, "from the server rpcId: 1", trailers)
    }

    #[test]
    fn every_trailer_row_classifies_as_its_kind() {
        for (suffix, kind) in TRAILER_KINDS {
            // The status is deliberately unhelpful: the trailer decides.
            let failure = classify(&with_trailer(Code::Unknown, suffix));
            assert_eq!(failure.kind, *kind, "{suffix}");
            assert!(failure.error_code.unwrap().ends_with(suffix));
        }
    }

    #[test]
    fn the_reference_examples_classify_as_the_reference_says() {
        let corrupted = with_trailer(
            Code::InvalidArgument,
            "subscription.fetch.replayid.corrupted",
        );
        assert_eq!(classify(&corrupted).kind, FailureKind::ReplayUnusable);
        let unavailable = with_trailer(Code::Internal, "service.unavailable");
        assert_eq!(classify(&unavailable).kind, FailureKind::Transient);
        let auth = Status::unauthenticated("An authentication exception occurred.");
        assert_eq!(classify(&auth).kind, FailureKind::Unauthenticated);
    }

    #[test]
    fn a_missing_trailer_falls_back_to_the_status() {
        let reset = Status::unavailable("RST_STREAM closed stream. HTTP/2 error code: NO_ERROR");
        let failure = classify(&reset);
        assert_eq!(failure.kind, FailureKind::Transient);
        assert_eq!(failure.error_code, None);
        assert_eq!(
            classify(&Status::not_found("x")).kind,
            FailureKind::TopicNotFound
        );
        assert_eq!(
            classify(&Status::permission_denied("x")).kind,
            FailureKind::PermissionDenied
        );
        assert_eq!(
            classify(&Status::resource_exhausted("x")).kind,
            FailureKind::Throttled
        );
        assert_eq!(
            classify(&Status::internal("x")).kind,
            FailureKind::Transient
        );
        assert_eq!(
            classify(&Status::cancelled("x")).kind,
            FailureKind::Transient
        );
    }

    #[test]
    fn an_unknown_trailer_falls_back_to_the_status() {
        let odd = with_trailer(Code::PermissionDenied, "something.new");
        assert_eq!(classify(&odd).kind, FailureKind::PermissionDenied);
    }

    #[test]
    fn only_admin_problems_and_client_bugs_are_final() {
        assert!(!FailureKind::PermissionDenied.is_retryable());
        assert!(!FailureKind::TopicNotFound.is_retryable());
        assert!(!FailureKind::ClientBug.is_retryable());
        assert!(FailureKind::DeliveryLimit.is_retryable());
        assert!(FailureKind::ReplayUnusable.is_retryable());
    }
}
