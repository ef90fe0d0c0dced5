//! The Outreach user as usersync sees it, and the attributes a write sends.
//!
//! Plain data: the decision engine reads and plans with these types, the client turns them into
//! JSON:API documents. Only the attributes usersync reads or writes are modelled; Outreach's
//! other seventy-odd user attributes pass through untouched.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An Outreach user id (a JSON integer on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OutreachUserId(pub i64);

impl fmt::Display for OutreachUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The names of the five user custom fields, in slot order.
pub const CUSTOM_FIELDS: [&str; 5] = ["custom1", "custom2", "custom3", "custom4", "custom5"];

/// One Outreach user, as far as usersync cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutreachUser {
    pub id: OutreachUserId,
    pub email: String,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    /// Outreach's deactivation flag: a locked user cannot log in and holds no seat.
    pub locked: bool,
    /// `custom1`..`custom5`.
    pub custom: [Option<String>; 5],
    pub updated_at: Option<DateTime<Utc>>,
}

impl OutreachUser {
    /// The user's email, trimmed and lower-cased: its email group.
    pub fn email_normalized(&self) -> String {
        crate::model::event::normalize_email(&self.email)
    }
}

/// The attributes of a create or an update. The outer `Option` says whether the attribute is
/// sent at all (PATCH changes only what is sent); the inner one allows sending `null`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserAttributes {
    /// Create only: Outreach refuses to change an email through the API.
    pub email: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub title: Option<Option<String>>,
    pub locked: Option<bool>,
    pub custom: [Option<Option<String>>; 5],
}

impl UserAttributes {
    /// True when nothing would be sent.
    pub fn is_empty(&self) -> bool {
        self.email.is_none()
            && self.first_name.is_none()
            && self.last_name.is_none()
            && self.title.is_none()
            && self.locked.is_none()
            && self.custom.iter().all(Option::is_none)
    }

    /// The JSON:API `attributes` object, with Outreach's camelCase names.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut map = serde_json::Map::new();
        let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        if let Some(email) = &self.email {
            map.insert("email".into(), Value::String(email.clone()));
        }
        if let Some(v) = &self.first_name {
            map.insert("firstName".into(), text(v));
        }
        if let Some(v) = &self.last_name {
            map.insert("lastName".into(), text(v));
        }
        if let Some(v) = &self.title {
            map.insert("title".into(), text(v));
        }
        if let Some(locked) = self.locked {
            map.insert("locked".into(), Value::Bool(locked));
        }
        for (name, value) in CUSTOM_FIELDS.iter().zip(&self.custom) {
            if let Some(v) = value {
                map.insert((*name).into(), text(v));
            }
        }
        map
    }

    /// Applies these attributes to a user (what a successful PATCH does).
    pub fn apply_to(&self, user: &mut OutreachUser) {
        if let Some(email) = &self.email {
            user.email = email.clone();
        }
        if let Some(v) = &self.first_name {
            user.first_name = v.clone();
        }
        if let Some(v) = &self.last_name {
            user.last_name = v.clone();
        }
        if let Some(v) = &self.title {
            user.title = v.clone();
        }
        if let Some(locked) = self.locked {
            user.locked = locked;
        }
        for (slot, value) in user.custom.iter_mut().zip(&self.custom) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_serialize_only_what_is_sent() {
        let mut attrs = UserAttributes {
            first_name: Some(Some("Ann".into())),
            title: Some(None),
            locked: Some(false),
            ..Default::default()
        };
        attrs.custom[0] = Some(Some("005000000000001AAA".into()));
        let json = serde_json::Value::Object(attrs.to_json());
        assert_eq!(
            json,
            serde_json::json!({"firstName": "Ann", "title": null, "locked": false,
                               "custom1": "005000000000001AAA"})
        );
        assert!(UserAttributes::default().is_empty());
        assert!(!attrs.is_empty());
    }

    #[test]
    fn apply_changes_only_sent_attributes() {
        let mut user = OutreachUser {
            id: OutreachUserId(1),
            email: "abc@def.com".into(),
            username: None,
            first_name: Some("Ann".into()),
            last_name: Some("Lee".into()),
            title: Some("AE".into()),
            locked: true,
            custom: Default::default(),
            updated_at: None,
        };
        let mut attrs = UserAttributes {
            last_name: Some(Some("Li".into())),
            title: Some(None),
            locked: Some(false),
            ..Default::default()
        };
        attrs.custom[2] = Some(Some("x".into()));
        attrs.apply_to(&mut user);
        assert_eq!(user.first_name.as_deref(), Some("Ann"));
        assert_eq!(user.last_name.as_deref(), Some("Li"));
        assert_eq!(user.title, None);
        assert!(!user.locked);
        assert_eq!(user.custom[2].as_deref(), Some("x"));
    }
}
