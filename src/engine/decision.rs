//! What the engine decides: actions, reason codes, and the record every decision leaves.
//!
//! A `Decision` is a plan: what to tell an admin, which Outreach call to make (if any), and how
//! the mappings change once the call succeeded. A `DecisionRecord` is what is left after it was
//! applied: it goes to the decision log and the live feed, and into `usersync decide`'s output.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::outreach_user::{OutreachUserId, UserAttributes};
use crate::model::salesforce_id::SalesforceId;

/// The kind of decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Link,
    Remap,
    Update,
    Lock,
    Unlock,
    Skip,
    Conflict,
    /// An admin removed a mapping by hand; the engine never decides it.
    Unlink,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Create,
        Action::Link,
        Action::Remap,
        Action::Update,
        Action::Lock,
        Action::Unlock,
        Action::Skip,
        Action::Conflict,
        Action::Unlink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Link => "link",
            Action::Remap => "remap",
            Action::Update => "update",
            Action::Lock => "lock",
            Action::Unlock => "unlock",
            Action::Skip => "skip",
            Action::Conflict => "conflict",
            Action::Unlink => "unlink",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why: a stable snake_case code. `docs/decisions.md` lists each with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // create / link / remap / update / lock / unlock
    /// An active Salesforce user has no Outreach user with its email: one is created.
    NewActiveUser,
    /// An unmapped Outreach user has the email of an active Salesforce user (dedupe on).
    EmailMatch,
    /// The mapped Salesforce user is inactive: remapped to the active one, or locked.
    MappedUserInactive,
    /// The mapped Salesforce user's names, title or id mirror differ from Outreach.
    MappedUserChanged,
    /// The mapped Salesforce user is active again: usersync lifts the lock it set.
    MappedUserReactivated,
    // skips
    /// The event id was applied before.
    DuplicateEvent,
    /// The event is older than what was applied for its user.
    StaleEvent,
    /// Inactive Salesforce users are never created or linked.
    InactiveUser,
    /// Creating is switched off (User <> User "Create").
    InboundCreateDisabled,
    /// The mapped Salesforce user's email no longer equals the Outreach email.
    EmailDiverged,
    /// Nothing differs: the mapping holds and Outreach is up to date.
    UpToDate,
    /// The mapped user is inactive and no active user shares the email.
    NoActiveReplacement,
    /// Updates are switched off (`inbound_update = false`) while something differs.
    InboundUpdateDisabled,
    /// The Salesforce user has no email, so it has no email group.
    NoEmail,
    /// The Outreach user is mapped to a Salesforce user usersync has not seen yet: nothing
    /// moves until its state is known.
    MappedUserUnknown,
    /// The event names no valid user (validation normally refuses it before the engine).
    InvalidEvent,
    // conflicts
    /// An Outreach user has the email, matching by email is off: a create would collide.
    OutreachEmailTaken,
    /// Several active Salesforce users share one email; Outreach allows one user per email.
    MultipleActiveSalesforceUsers,
    /// The email's Outreach user is mapped to another active Salesforce user.
    EmailMappedToOtherActiveUser,
    /// The email's Outreach user is mapped to an inactive user, and remapping is off.
    AutoRemapDisabled,
    /// More than one Outreach user has this email (Outreach's uniqueness rule broken).
    MultipleOutreachUsers,
    /// Outreach refused a create because the email is taken (the index was behind); the
    /// holder is looked up and the event decided again.
    OutreachRefusedCreate,
    // by hand (the admin API; the engine never gives these)
    /// An admin mapped (or remapped) an Outreach user to a Salesforce user.
    ManualLink,
    /// An admin removed a mapping.
    ManualUnlink,
}

impl Reason {
    pub const ALL: [Reason; 24] = [
        Reason::NewActiveUser,
        Reason::EmailMatch,
        Reason::MappedUserInactive,
        Reason::MappedUserChanged,
        Reason::MappedUserReactivated,
        Reason::DuplicateEvent,
        Reason::StaleEvent,
        Reason::InactiveUser,
        Reason::InboundCreateDisabled,
        Reason::EmailDiverged,
        Reason::UpToDate,
        Reason::NoActiveReplacement,
        Reason::InboundUpdateDisabled,
        Reason::NoEmail,
        Reason::MappedUserUnknown,
        Reason::InvalidEvent,
        Reason::OutreachEmailTaken,
        Reason::MultipleActiveSalesforceUsers,
        Reason::EmailMappedToOtherActiveUser,
        Reason::AutoRemapDisabled,
        Reason::MultipleOutreachUsers,
        Reason::OutreachRefusedCreate,
        Reason::ManualLink,
        Reason::ManualUnlink,
    ];

    /// The reason whose code is `s` (the inverse of [`Reason::as_str`]).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewActiveUser => "new_active_user",
            Reason::EmailMatch => "email_match",
            Reason::MappedUserInactive => "mapped_user_inactive",
            Reason::MappedUserChanged => "mapped_user_changed",
            Reason::MappedUserReactivated => "mapped_user_reactivated",
            Reason::DuplicateEvent => "duplicate_event",
            Reason::StaleEvent => "stale_event",
            Reason::InactiveUser => "inactive_user",
            Reason::InboundCreateDisabled => "inbound_create_disabled",
            Reason::EmailDiverged => "email_diverged",
            Reason::UpToDate => "up_to_date",
            Reason::NoActiveReplacement => "no_active_replacement",
            Reason::InboundUpdateDisabled => "inbound_update_disabled",
            Reason::NoEmail => "no_email",
            Reason::MappedUserUnknown => "mapped_user_unknown",
            Reason::InvalidEvent => "invalid_event",
            Reason::OutreachEmailTaken => "outreach_email_taken",
            Reason::MultipleActiveSalesforceUsers => "multiple_active_salesforce_users",
            Reason::EmailMappedToOtherActiveUser => "email_mapped_to_other_active_user",
            Reason::AutoRemapDisabled => "auto_remap_disabled",
            Reason::MultipleOutreachUsers => "multiple_outreach_users",
            Reason::OutreachRefusedCreate => "outreach_refused_create",
            Reason::ManualLink => "manual_link",
            Reason::ManualUnlink => "manual_unlink",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Outreach request a decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutreachCall {
    /// `POST /users`.
    Create(UserAttributes),
    /// `PATCH /users/{id}`.
    Update(OutreachUserId, UserAttributes),
}

/// How the mappings change once the call (if any) succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingChange {
    /// Map the decision's Outreach user (for a create: the created one) to a Salesforce user.
    Map { salesforce_user_id: SalesforceId },
    /// Move the decision's Outreach user from one Salesforce user to another.
    Remap {
        from: SalesforceId,
        to: SalesforceId,
    },
    /// Record whether usersync holds the lock on the decision's Outreach user.
    LockedByUsersync(bool),
}

/// One planned decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
    /// The email group the decision is about.
    pub email: Option<String>,
    pub outreach_user_id: Option<OutreachUserId>,
    pub salesforce_user_id: Option<SalesforceId>,
    pub previous_salesforce_user_id: Option<SalesforceId>,
    /// A sentence an admin understands.
    pub message: String,
    pub call: Option<OutreachCall>,
    pub mapping: Option<MappingChange>,
}

impl Decision {
    /// A decision that calls nothing and changes nothing.
    pub fn note(action: Action, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            action,
            reason,
            email: None,
            outreach_user_id: None,
            salesforce_user_id: None,
            previous_salesforce_user_id: None,
            message: message.into(),
            call: None,
            mapping: None,
        }
    }

    pub fn email(mut self, email: Option<&str>) -> Self {
        self.email = email.map(str::to_string);
        self
    }

    pub fn outreach(mut self, id: OutreachUserId) -> Self {
        self.outreach_user_id = Some(id);
        self
    }

    pub fn salesforce(mut self, id: &SalesforceId) -> Self {
        self.salesforce_user_id = Some(id.clone());
        self
    }

    pub fn previous(mut self, id: &SalesforceId) -> Self {
        self.previous_salesforce_user_id = Some(id.clone());
        self
    }

    pub fn call(mut self, call: OutreachCall) -> Self {
        self.call = Some(call);
        self
    }

    pub fn mapping(mut self, change: MappingChange) -> Self {
        self.mapping = Some(change);
        self
    }

    /// Whether this decision names the Salesforce user (as target or previous).
    pub fn concerns(&self, id: &SalesforceId) -> bool {
        self.salesforce_user_id.as_ref() == Some(id)
            || self.previous_salesforce_user_id.as_ref() == Some(id)
    }
}

/// A decision after it was applied: the decision log, the live feed, `usersync decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub action: Action,
    pub reason: Reason,
    /// The normalized email the decision is about, for searching the log.
    pub email: Option<String>,
    pub outreach_user_id: Option<OutreachUserId>,
    pub salesforce_user_id: Option<SalesforceId>,
    pub previous_salesforce_user_id: Option<SalesforceId>,
    pub message: String,
    /// HTTP requests made to Outreach to apply it (retries and token refreshes included).
    pub outreach_calls: u32,
    /// Who made it by hand: the name of the admin token that carried the call (`local` on a
    /// server without tokens). `None` for the engine's decisions, and for those recorded
    /// before the actor was kept; then it is left out of the JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_back_and_match_serde() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::String(reason.as_str().into())
            );
        }
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Reason::parse("no_such_reason"), None);
    }
}
