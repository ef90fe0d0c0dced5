//! The connections to Salesforce and Outreach as an admin sees them: connected, degraded or
//! disconnected, why, and what to do about it (docs/operations.md).
//!
//! Real integrations get disconnected: the authorizing user's permissions change, their
//! credentials change, they leave the company, or somebody disconnects by hand. This module is
//! the vocabulary both sides share for that, and only that; it imports no provider adapter.
//! What each provider's failures mean is the adapter's knowledge, so each adapter says it next
//! to its errors (`salesforce::auth`, `salesforce::rest`, `salesforce::pubsub`,
//! `salesforce::cometd`, `roles::subscriber`, `outreach::error`) in the words defined here:
//!
//! - [`Verdict`] and [`ConnectionFailure`] (in `verdict`): what a failure means for the
//!   *connection* — nothing (the request failed on its own, like a 422), transient trouble
//!   (degraded, retrying), or a [`DisconnectReason`] (in `reason`) only an admin can fix. Each
//!   adapter maps the real error bodies (docs/salesforce.md, docs/outreach.md) to verdicts, and
//!   every row is a unit test there with the exact body.
//! - [`Connections`] (in `board`): the live state of both sides, shared by the roles that make
//!   the calls and the admin surface that shows them. A change is logged once, when the state
//!   or the reason changes, never once per failing call; watchers (status, metrics, the live
//!   feed) see every transition. It also carries the admin's requests to the roles: reconnect,
//!   resync, and replay from a [`ReplayFrom`] (in `replay`).
//! - [`Checklist`] (in `checklist`): a "test connection" result; the steps run in each adapter
//!   (`salesforce::checklist`, `outreach::checklist`).
//! - `vault` and `authorization`: the credentials a reconnect stores, sealed.
//!
//! The states are `not_configured`, `connecting`, `connected`, `degraded` and `disconnected`.
//! A side that is disconnected stops; the other side goes on.

pub mod authorization;
mod board;
pub mod checklist;
pub mod pkce;
mod reason;
mod replay;
pub mod vault;
mod verdict;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use board::Connections;
pub use checklist::Checklist;
pub use reason::DisconnectReason;
pub use replay::ReplayFrom;
pub use verdict::{ConnectionFailure, Verdict};

/// Which external system a connection is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Salesforce,
    Outreach,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Salesforce, Side::Outreach];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Salesforce => "salesforce",
            Side::Outreach => "outreach",
        }
    }

    /// The system's name as admins write it.
    pub fn title(self) -> &'static str {
        match self {
            Side::Salesforce => "Salesforce",
            Side::Outreach => "Outreach",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Side {
    type Err = String;

    fn from_str(s: &str) -> Result<Side, String> {
        match s {
            "salesforce" => Ok(Side::Salesforce),
            "outreach" => Ok(Side::Outreach),
            other => Err(format!(
                "no side {other:?}: the sides are salesforce and outreach"
            )),
        }
    }
}

/// The state of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// No authorization is stored: nothing runs on that side.
    NotConfigured,
    /// Briefly, while signing in, reconnecting or testing.
    Connecting,
    /// The last call succeeded.
    Connected,
    /// Transient failures (network, 5xx, 429, UNAVAILABLE): retrying, no admin action needed.
    Degraded,
    /// A failure only an admin can fix; the connection carries the reason.
    Disconnected,
}

impl ConnectionState {
    pub const ALL: [ConnectionState; 5] = [
        ConnectionState::NotConfigured,
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Degraded,
        ConnectionState::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::NotConfigured => "not_configured",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Degraded => "degraded",
            ConnectionState::Disconnected => "disconnected",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a connection is authorized as: the authorizing user, as the provider reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedIdentity {
    /// The provider's user id (Salesforce `005…`; Outreach's numeric id as text).
    pub user_id: String,
    /// The login name (Salesforce username, Outreach email).
    pub username: String,
    /// The Salesforce org id; `None` for Outreach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

/// One side's connection, as status, metrics and the live feed show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub side: Side,
    pub state: ConnectionState,
    /// Why it is `disconnected`; `None` in every other state.
    pub reason: Option<DisconnectReason>,
    /// What the admin should do, in one sentence, when disconnected.
    pub advice: Option<String>,
    /// The provider's error as it came, when degraded or disconnected (never a secret: error
    /// bodies carry codes and descriptions, not credentials).
    pub upstream_error: Option<String>,
    /// Who the connection is authorized as, once known; kept while degraded or disconnected so
    /// the admin sees whose authorization broke.
    pub identity: Option<AuthorizedIdentity>,
    /// When the connection entered this state.
    pub since: DateTime<Utc>,
    /// When the identity and permission checks last passed.
    pub permissions_checked_at: Option<DateTime<Utc>>,
    /// The last "test connection" checklist: run at start, after every reconnect, and when an
    /// admin asks. Kept across state changes (it says when it ran).
    #[serde(default)]
    pub last_check: Option<Checklist>,
    /// Salesforce only, when this process runs a subscriber: whether it is the instance that
    /// streams (it holds the lease) or a standby. Kept across state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<SubscriberLease>,
}

/// Which subscriber instance streams the org, as this process sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberLease {
    /// This process's subscriber instance (`subscriber.instance_id`).
    pub instance: String,
    pub role: LeaseRole,
    /// The lease's epoch this instance holds (active), or the holder's (standby).
    pub epoch: Option<i64>,
    /// The instance holding the lease, as last seen; this one when active.
    pub holder: Option<String>,
    /// When the holder's lease runs out unless renewed, by the store's clock.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A subscriber instance's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseRole {
    /// Holds the lease: reads the stream and publishes.
    Active,
    /// Another instance holds the lease: this one waits to take over.
    Standby,
    /// No lease is kept (SQLite: one machine, one subscriber): streams.
    Unleased,
}

impl LeaseRole {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseRole::Active => "active",
            LeaseRole::Standby => "standby",
            LeaseRole::Unleased => "unleased",
        }
    }
}

impl Connection {
    /// A side with no authorization stored.
    pub fn not_configured(side: Side) -> Connection {
        Connection {
            side,
            state: ConnectionState::NotConfigured,
            reason: None,
            advice: None,
            upstream_error: None,
            identity: None,
            since: Utc::now(),
            permissions_checked_at: None,
            last_check: None,
            subscriber: None,
        }
    }

    /// One line for logs and the CLI: `salesforce: disconnected (user_inactive) — …`.
    pub fn summary(&self) -> String {
        let mut line = format!("{}: {}", self.side, self.state);
        if let Some(reason) = self.reason {
            line.push_str(&format!(" ({reason})"));
        }
        if let Some(identity) = &self.identity {
            line.push_str(&format!(" as {}", identity.username));
        }
        if let Some(error) = &self.upstream_error {
            line.push_str(&format!(": {error}"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_sides_use_their_stable_codes_everywhere() {
        for state in ConnectionState::ALL {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        for side in Side::ALL {
            assert_eq!(side.as_str().parse::<Side>().unwrap(), side);
            assert_eq!(serde_json::to_string(&side).unwrap(), format!("\"{side}\""));
        }
        let unknown = "hubspot".parse::<Side>().unwrap_err();
        assert!(unknown.contains("\"hubspot\""), "{unknown}");
    }

    #[test]
    fn a_summary_names_the_state_the_reason_the_user_and_the_error() {
        let mut connection = Connection::not_configured(Side::Salesforce);
        assert_eq!(connection.summary(), "salesforce: not_configured");
        connection.state = ConnectionState::Disconnected;
        connection.reason = Some(DisconnectReason::UserInactive);
        connection.identity = Some(AuthorizedIdentity {
            user_id: "005000000000001AAA".into(),
            username: "admin@acme.example".into(),
            org_id: Some("00D000000000001EAA".into()),
        });
        connection.upstream_error = Some("invalid_grant: inactive user".into());
        assert_eq!(
            connection.summary(),
            "salesforce: disconnected (user_inactive) as admin@acme.example: invalid_grant: inactive user"
        );
    }
}
