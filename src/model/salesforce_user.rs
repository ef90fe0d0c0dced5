//! The last-known state of one Salesforce user: what the engine decides on, the store keeps
//! and a `usersync decide` scenario starts from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::event::{Position, UserChange, normalize_email};
use crate::model::salesforce_id::SalesforceId;

/// The last-known state of one Salesforce user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesforceUser {
    pub id: SalesforceId,
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub is_active: bool,
    pub created_date: Option<DateTime<Utc>>,
    pub last_modified_date: Option<DateTime<Utc>>,
    /// The position of the newest change applied to this user; older events are stale.
    pub applied: Option<Position>,
}

impl SalesforceUser {
    /// The email group of this user, if it has an email.
    pub fn email_normalized(&self) -> Option<String> {
        self.email
            .as_deref()
            .map(normalize_email)
            .filter(|e| !e.is_empty())
    }

    /// The full state a Salesforce event carries, as a last-known user.
    pub fn from_event(id: SalesforceId, event: &UserChange) -> Self {
        Self {
            id,
            email: event.user.email.clone(),
            username: event.user.username.clone(),
            first_name: event.user.first_name.clone(),
            last_name: event.user.last_name.clone(),
            title: event.user.title.clone(),
            is_active: event.is_active(),
            created_date: event.user.created_date,
            last_modified_date: event.user.last_modified_date,
            applied: Some(event.position()),
        }
    }
}
