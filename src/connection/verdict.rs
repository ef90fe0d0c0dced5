//! What a failure means for the connection it happened on.
//!
//! Each provider adapter knows its own errors (the token endpoint's `error` /
//! `error_description` pairs, REST error arrays, Pub/Sub `error-code` trailers, Outreach's
//! JSON:API errors), so each implements [`ConnectionFailure`] for them next to where they are
//! classified: `salesforce::auth`, `salesforce::rest`, `salesforce::pubsub`,
//! `salesforce::cometd`, `roles::subscriber` and `outreach::error`. Their tests are the
//! table of docs/operations.md, one row per upstream signal fed through the real parser with
//! the exact body the provider sends (docs/salesforce.md, docs/outreach.md), and the verdict it
//! must give. This module holds only the vocabulary they share, so the roles and the admin
//! surface speak of both sides the same way without the connection model depending on any
//! adapter.
//!
//! A 401 on an API call is not a row of its own: the clients refresh the token once and retry
//! first, so what reaches a verdict is either the retry's answer or the refresh's refusal.

use super::DisconnectReason;

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
    /// The verdict of an error that says only whether it disconnects: with a reason it does,
    /// without one it is transient.
    pub fn from_reason(reason: Option<DisconnectReason>) -> Verdict {
        reason.map_or(Verdict::Degraded, Verdict::Disconnected)
    }
}

/// An error that can say what it means for its connection.
pub trait ConnectionFailure: std::fmt::Display {
    fn verdict(&self) -> Verdict;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_disconnects_and_no_reason_degrades() {
        assert_eq!(
            Verdict::from_reason(Some(DisconnectReason::UserInactive)),
            Verdict::Disconnected(DisconnectReason::UserInactive)
        );
        assert_eq!(Verdict::from_reason(None), Verdict::Degraded);
    }
}
