//! Why a connection is `disconnected`: stable codes, each with the sentence that tells the admin
//! what to do. The codes are the API's, the metrics' and the page's; the sentences are the
//! ones `docs/operations.md` explains.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Side;

/// The reasons of docs/operations.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The authorizing user lost a permission (API Enabled, View All Users, an OAuth scope).
    PermissionsChanged,
    /// The stored credentials stopped working: key, secret or token changed, expired, revoked.
    CredentialsChanged,
    /// The authorizing user was deactivated (left the company).
    UserInactive,
    /// The authorizing user is not approved for the connected app.
    NotApproved,
    /// An admin disconnected.
    Manual,
    /// Anything else that retrying cannot fix; the upstream error is shown as it came.
    Other,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 6] = [
        DisconnectReason::PermissionsChanged,
        DisconnectReason::CredentialsChanged,
        DisconnectReason::UserInactive,
        DisconnectReason::NotApproved,
        DisconnectReason::Manual,
        DisconnectReason::Other,
    ];

    /// The stable code, for the API, metrics and the decision log.
    pub fn code(self) -> &'static str {
        match self {
            DisconnectReason::PermissionsChanged => "permissions_changed",
            DisconnectReason::CredentialsChanged => "credentials_changed",
            DisconnectReason::UserInactive => "user_inactive",
            DisconnectReason::NotApproved => "not_approved",
            DisconnectReason::Manual => "manual",
            DisconnectReason::Other => "other",
        }
    }

    /// One sentence telling the admin of `side` what to do.
    pub fn advice(self, side: Side) -> &'static str {
        match (self, side) {
            (DisconnectReason::PermissionsChanged, Side::Salesforce) => {
                "The authorizing Salesforce user lost a permission usersync needs (API Enabled, View All Users); restore it, or reconnect as a user who has it, and test the connection."
            }
            (DisconnectReason::PermissionsChanged, Side::Outreach) => {
                "The Outreach authorization lacks a scope or the user's profile forbids the call; reconnect with the users.all scope as an Outreach admin and test the connection."
            }
            (DisconnectReason::CredentialsChanged, Side::Salesforce) => {
                "The stored Salesforce credentials no longer work (key, secret or token changed, expired or revoked); reconnect with current credentials."
            }
            (DisconnectReason::CredentialsChanged, Side::Outreach) => {
                "The Outreach authorization was revoked or expired, or the client secret changed; reconnect (authorize again) with current credentials."
            }
            (DisconnectReason::UserInactive, _) => {
                "The authorizing user was deactivated; reconnect as an active user."
            }
            (DisconnectReason::NotApproved, _) => {
                "The authorizing user is not approved for the connected app; pre-authorize them (profile or permission set) or reconnect as an approved user."
            }
            (DisconnectReason::Manual, _) => {
                "An admin disconnected this side; reconnect when it should run again."
            }
            (DisconnectReason::Other, _) => {
                "The provider refused for a reason usersync does not recognise; read the upstream error, fix the setup, and reconnect."
            }
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_serde_and_every_reason_has_advice_for_each_side() {
        for reason in DisconnectReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.code()));
            for side in Side::ALL {
                let advice = reason.advice(side);
                assert!(advice.ends_with('.'), "{reason} on {side}: {advice}");
            }
        }
        assert_ne!(
            DisconnectReason::PermissionsChanged.advice(Side::Salesforce),
            DisconnectReason::PermissionsChanged.advice(Side::Outreach),
            "each side names its own permissions"
        );
    }
}
