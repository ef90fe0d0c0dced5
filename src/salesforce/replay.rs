//! Where a subscription starts, and what to do when its stream ends.
//!
//! The subscriber keeps one [`ReplayCheckpoint`](crate::store::ReplayCheckpoint) per topic:
//! the replay id of the newest position whose events (and every earlier one's) Kafka
//! confirmed. [`recovery`] turns a stream's end into the next step, following docs/subscriber.md:
//!
//! - transient failures (UNAVAILABLE, INTERNAL, RST_STREAM, a dead stream) → back off, then
//!   resume *after the checkpoint* — never LATEST, which would skip the backlog;
//! - UNAUTHENTICATED → a new token first, then resume after the checkpoint;
//! - a replay id that is no longer usable (outside the 72-hour retention, or invalid) → the
//!   configured [`ReplayPolicy`]: `resync` (the default) subscribes at LATEST and reads every
//!   user changed since the last checkpoint's commit time (minus a safety margin) through
//!   REST, so nothing is lost; `latest` subscribes at LATEST and accepts the loss; `fail`
//!   stops and leaves the decision to an operator;
//! - the delivery allocation used up → a long back-off (the allocation is per rolling 24 h);
//! - permission or topic problems → stop: only an admin can fix them, and the connection
//!   shows why.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pubsub::{FailureKind, PubSubFailure};

/// What to do when the stored replay id can no longer be resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayPolicy {
    /// Subscribe at the newest position and re-read every user changed since the checkpoint.
    #[default]
    Resync,
    /// Subscribe at the newest position; changes in between are not recovered.
    Latest,
    /// Stop the subscriber with an error.
    Fail,
}

impl ReplayPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayPolicy::Resync => "resync",
            ReplayPolicy::Latest => "latest",
            ReplayPolicy::Fail => "fail",
        }
    }
}

/// The next step after a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Wait `after`, then subscribe again after the checkpoint (or as at start when there is
    /// none).
    Resume { after: Duration },
    /// Get a new token, then resume.
    Reauthenticate,
    /// Subscribe at LATEST; with `resync`, first re-read the users changed since the
    /// checkpoint.
    StartOver { resync: bool },
    /// Stop: retrying cannot help. The reason is for the connection status and the log.
    Stop { reason: String },
}

/// Back-off after the delivery allocation is used up.
pub const DELIVERY_LIMIT_BACKOFF: Duration = Duration::from_secs(3600);

/// The step after `failure`, given the policy and the back-off for this attempt.
pub fn recovery(failure: &PubSubFailure, policy: ReplayPolicy, backoff: Duration) -> Recovery {
    match failure.kind {
        FailureKind::Transient | FailureKind::Throttled => Recovery::Resume { after: backoff },
        FailureKind::DeliveryLimit => Recovery::Resume {
            after: DELIVERY_LIMIT_BACKOFF.max(backoff),
        },
        FailureKind::Unauthenticated => Recovery::Reauthenticate,
        FailureKind::ReplayUnusable => match policy {
            ReplayPolicy::Resync => Recovery::StartOver { resync: true },
            ReplayPolicy::Latest => Recovery::StartOver { resync: false },
            ReplayPolicy::Fail => Recovery::Stop {
                reason: format!(
                    "the stored replay id cannot be resumed ({failure}) and replay_policy is \
                     \"fail\": resync by hand or set replay_policy to \"resync\""
                ),
            },
        },
        FailureKind::PermissionDenied | FailureKind::TopicNotFound | FailureKind::ClientBug => {
            Recovery::Stop {
                reason: failure.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: FailureKind) -> PubSubFailure {
        PubSubFailure {
            kind,
            status: tonic::Code::Unknown,
            error_code: None,
            message: "m".into(),
        }
    }

    const BACKOFF: Duration = Duration::from_secs(2);

    #[test]
    fn transient_failures_resume_from_the_checkpoint_after_the_backoff() {
        for kind in [FailureKind::Transient, FailureKind::Throttled] {
            assert_eq!(
                recovery(&failure(kind), ReplayPolicy::Resync, BACKOFF),
                Recovery::Resume { after: BACKOFF }
            );
        }
        assert_eq!(
            recovery(
                &failure(FailureKind::DeliveryLimit),
                ReplayPolicy::Resync,
                BACKOFF
            ),
            Recovery::Resume {
                after: DELIVERY_LIMIT_BACKOFF
            }
        );
    }

    #[test]
    fn an_unusable_replay_id_follows_the_policy() {
        let unusable = failure(FailureKind::ReplayUnusable);
        assert_eq!(
            recovery(&unusable, ReplayPolicy::Resync, BACKOFF),
            Recovery::StartOver { resync: true }
        );
        assert_eq!(
            recovery(&unusable, ReplayPolicy::Latest, BACKOFF),
            Recovery::StartOver { resync: false }
        );
        assert!(matches!(
            recovery(&unusable, ReplayPolicy::Fail, BACKOFF),
            Recovery::Stop { reason } if reason.contains("replay_policy")
        ));
    }

    #[test]
    fn auth_needs_a_token_and_admin_problems_stop() {
        assert_eq!(
            recovery(
                &failure(FailureKind::Unauthenticated),
                ReplayPolicy::Resync,
                BACKOFF
            ),
            Recovery::Reauthenticate
        );
        for kind in [
            FailureKind::PermissionDenied,
            FailureKind::TopicNotFound,
            FailureKind::ClientBug,
        ] {
            assert!(matches!(
                recovery(&failure(kind), ReplayPolicy::Resync, BACKOFF),
                Recovery::Stop { .. }
            ));
        }
    }

    #[test]
    fn the_policy_reads_as_configured() {
        let policy: ReplayPolicy = serde_json::from_str("\"latest\"").unwrap();
        assert_eq!(policy, ReplayPolicy::Latest);
        assert_eq!(ReplayPolicy::default(), ReplayPolicy::Resync);
        assert!(serde_json::from_str::<ReplayPolicy>("\"earliest\"").is_err());
    }
}
