//! The simulator's own model of an Outreach user.
//!
//! This is deliberately independent of the product's `usersync::outreach` types: the simulator
//! is a second implementation of the wire format, so a serialization bug in the product
//! cannot hide by being mirrored here. Only the attributes usersync relies on are modelled;
//! the JSON:API rendering lives in `document.rs`.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

/// One Outreach user as the simulator stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimUser {
    /// Outreach's integer id; `0` asks the directory to assign the next one.
    pub id: i64,
    /// Globally unique (case-insensitively), set on create, never changed through the API.
    pub email: String,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    /// Outreach's deactivation flag: a locked user cannot log in and holds no seat.
    pub locked: bool,
    /// `custom1` … `custom5`.
    pub custom: [Option<String>; 5],
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SimUser {
    /// An unlocked user with only an email, created and updated now (to the millisecond,
    /// the precision the wire format carries).
    pub fn new(id: i64, email: impl Into<String>) -> SimUser {
        let now = now_millis();
        SimUser {
            id,
            email: email.into(),
            username: None,
            first_name: None,
            last_name: None,
            title: None,
            locked: false,
            custom: Default::default(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The read-only `name` attribute: first and last name joined by a space, `None` when
    /// neither is set.
    pub fn name(&self) -> Option<String> {
        let parts: Vec<&str> = [&self.first_name, &self.last_name]
            .into_iter()
            .filter_map(|part| part.as_deref())
            .filter(|part| !part.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// The current instant truncated to milliseconds, so stored timestamps equal what the wire
/// shows.
pub(crate) fn now_millis() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_user_is_unlocked_with_equal_timestamps() {
        let user = SimUser::new(3, "a@b.test");
        assert_eq!(user.id, 3);
        assert!(!user.locked);
        assert_eq!(user.created_at, user.updated_at);
        assert_eq!(user.created_at.timestamp_subsec_nanos() % 1_000_000, 0);
    }

    #[test]
    fn name_joins_the_present_parts() {
        let mut user = SimUser::new(1, "a@b.test");
        assert_eq!(user.name(), None);
        user.last_name = Some("Doe".into());
        assert_eq!(user.name().as_deref(), Some("Doe"));
        user.first_name = Some("Jane".into());
        assert_eq!(user.name().as_deref(), Some("Jane Doe"));
    }
}
