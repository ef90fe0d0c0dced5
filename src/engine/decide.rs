//! The rules of `decisions.md` as one pure function.

use crate::engine::decision::Decision;
use crate::engine::settings::SyncSettings;
use crate::engine::state::{SalesforceUser, SyncState};
use crate::event::UserChange;
use crate::outreach::user::OutreachUser;

/// What one event leads to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    /// The Salesforce user's new last-known state, to record.
    pub salesforce_user: Option<SalesforceUser>,
    /// The Outreach user's new state in the index (Outreach events).
    pub outreach_user: Option<OutreachUser>,
    /// Whether the event id is to be recorded as applied (false for a duplicate).
    pub record_event: bool,
}

/// Decides what one event means for its email group(s).
pub fn decide(_settings: &SyncSettings, _state: &SyncState, _event: &UserChange) -> Outcome {
    Outcome::default()
}
