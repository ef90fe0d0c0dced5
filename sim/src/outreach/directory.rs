//! The user directory: pure state and the rules Outreach enforces on it, with no I/O.
//!
//! Keeping the rules here (rather than in the HTTP handlers) lets them be tested directly
//! and shared by the two ways users arrive: API writes and test seeding. The rules:
//!
//! - ids are integers assigned as `max(existing ids) + 1`, at least 1, and never reused;
//! - `email` is required, must look like an address, and is unique across the whole
//!   directory, compared after trimming and case-insensitively (Outreach says the same
//!   address cannot be used twice, even in another instance; case-insensitivity is an
//!   inference);
//! - `email` never changes after create (the API cannot update it), which the
//!   [`UserChanges`] type enforces by not having the field;
//! - users are never deleted;
//! - `updatedAt` moves on every real change, strictly forward;
//! - listings are ordered by id, which is what makes the id-based cursor stable while
//!   users are added between pages.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use thiserror::Error;

use super::user::SimUser;

/// A rule the directory refused to break.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectoryError {
    #[error("Email can't be blank")]
    EmailBlank,
    #[error("Email is invalid")]
    EmailInvalid,
    #[error("Email has already been taken")]
    EmailTaken,
    #[error("Could not find 'user' with ID '{0}'.")]
    NotFound(i64),
    #[error("ID {0} is already taken")]
    IdTaken(i64),
    #[error("ID {0} is not a positive integer")]
    InvalidId(i64),
}

/// A partial update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserChanges {
    pub username: Option<Option<String>>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub title: Option<Option<String>>,
    pub locked: Option<bool>,
    pub custom: [Option<Option<String>>; 5],
}

/// One page of a filtered listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub users: Vec<SimUser>,
    /// How many users match the filter across all pages.
    pub total: usize,
    /// Whether users after the last one on this page match too.
    pub has_more: bool,
}

/// All users, keyed by id, with an index of emails (trimmed and lower-cased) for the
/// uniqueness check. Emails never change once a user exists (the API refuses it), so the
/// index is written on insert only.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    users: BTreeMap<i64, SimUser>,
    by_email: HashMap<String, i64>,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    /// The id the next created user receives.
    pub fn next_id(&self) -> i64 {
        self.users.keys().next_back().map_or(1, |max| max + 1)
    }

    /// Adds a user. An id of 0 means "assign the next id"; any other id must be positive
    /// and free. The email is stored trimmed.
    pub fn insert(&mut self, mut user: SimUser) -> Result<SimUser, DirectoryError> {
        user.email = user.email.trim().to_owned();
        validate_email(&user.email)?;
        if self.find_by_email(&user.email).is_some() {
            return Err(DirectoryError::EmailTaken);
        }
        if user.id == 0 {
            user.id = self.next_id();
        } else if user.id < 0 {
            return Err(DirectoryError::InvalidId(user.id));
        } else if self.users.contains_key(&user.id) {
            return Err(DirectoryError::IdTaken(user.id));
        }
        self.by_email.insert(email_key(&user.email), user.id);
        self.users.insert(user.id, user.clone());
        Ok(user)
    }

    /// Applies `changes`; `updated_at` moves to `now` only when something actually changed, and
    /// then always forward by at least a millisecond, so each change has its own `updatedAt`
    /// (which names its webhook event) even when two land in the same millisecond.
    pub fn update(
        &mut self,
        id: i64,
        changes: UserChanges,
        now: DateTime<Utc>,
    ) -> Result<SimUser, DirectoryError> {
        let user = self
            .users
            .get_mut(&id)
            .ok_or(DirectoryError::NotFound(id))?;
        let before = user.clone();
        let UserChanges {
            username,
            first_name,
            last_name,
            title,
            locked,
            custom,
        } = changes;
        apply(&mut user.username, username);
        apply(&mut user.first_name, first_name);
        apply(&mut user.last_name, last_name);
        apply(&mut user.title, title);
        apply(&mut user.locked, locked);
        for (field, change) in user.custom.iter_mut().zip(custom) {
            apply(field, change);
        }
        if *user != before {
            user.updated_at = now.max(before.updated_at + chrono::TimeDelta::milliseconds(1));
        }
        Ok(user.clone())
    }

    pub fn get(&self, id: i64) -> Option<&SimUser> {
        self.users.get(&id)
    }

    /// The user holding `email`, compared trimmed and case-insensitively.
    pub fn find_by_email(&self, email: &str) -> Option<&SimUser> {
        self.by_email
            .get(&email_key(email))
            .and_then(|id| self.users.get(id))
    }

    /// Every user, ordered by id.
    pub fn all(&self) -> impl Iterator<Item = &SimUser> {
        self.users.values()
    }

    /// The users matching `filter` with an id greater than `after`, at most `size` of them,
    /// ordered by id.
    pub fn page(&self, filter: impl Fn(&SimUser) -> bool, after: Option<i64>, size: usize) -> Page {
        let matching: Vec<&SimUser> = self.users.values().filter(|user| filter(user)).collect();
        let start = after.map_or(0, |after| matching.partition_point(|user| user.id <= after));
        let rest = &matching[start..];
        Page {
            users: rest.iter().take(size).map(|&user| user.clone()).collect(),
            total: matching.len(),
            has_more: rest.len() > size,
        }
    }
}

/// The form in which emails are compared for uniqueness and filtering.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

fn validate_email(email: &str) -> Result<(), DirectoryError> {
    if email.is_empty() {
        return Err(DirectoryError::EmailBlank);
    }
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(DirectoryError::EmailInvalid)
    }
}

fn apply<T>(field: &mut T, change: Option<T>) {
    if let Some(value) = change {
        *field = value;
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn directory_with(emails: &[&str]) -> Directory {
        let mut directory = Directory::new();
        for email in emails {
            directory.insert(SimUser::new(0, *email)).unwrap();
        }
        directory
    }

    #[test]
    fn first_id_is_one() {
        let mut directory = Directory::new();
        assert_eq!(directory.insert(SimUser::new(0, "a@x.test")).unwrap().id, 1);
    }

    #[test]
    fn assigned_ids_continue_after_the_largest_id() {
        let mut directory = Directory::new();
        directory.insert(SimUser::new(40, "a@x.test")).unwrap();
        directory.insert(SimUser::new(7, "b@x.test")).unwrap();
        assert_eq!(
            directory.insert(SimUser::new(0, "c@x.test")).unwrap().id,
            41
        );
    }

    #[test]
    fn explicit_ids_must_be_free_and_positive() {
        let mut directory = directory_with(&["a@x.test"]);
        assert_eq!(
            directory.insert(SimUser::new(1, "b@x.test")),
            Err(DirectoryError::IdTaken(1))
        );
        assert_eq!(
            directory.insert(SimUser::new(-3, "b@x.test")),
            Err(DirectoryError::InvalidId(-3))
        );
    }

    #[test]
    fn email_is_required_and_must_look_like_an_address() {
        let mut directory = Directory::new();
        assert_eq!(
            directory.insert(SimUser::new(0, "  ")),
            Err(DirectoryError::EmailBlank)
        );
        for bad in ["plain", "@x.test", "a@", "a@b@c", "a b@x.test"] {
            assert_eq!(
                directory.insert(SimUser::new(0, bad)),
                Err(DirectoryError::EmailInvalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn email_uniqueness_ignores_case_and_surrounding_space() {
        let mut directory = directory_with(&["Jane@Acme.test"]);
        assert_eq!(
            directory.insert(SimUser::new(0, " jane@acme.TEST ")),
            Err(DirectoryError::EmailTaken)
        );
    }

    #[test]
    fn locked_users_still_hold_their_email() {
        let mut directory = directory_with(&["a@x.test"]);
        let changes = UserChanges {
            locked: Some(true),
            ..UserChanges::default()
        };
        directory.update(1, changes, Utc::now()).unwrap();
        assert_eq!(
            directory.insert(SimUser::new(0, "a@x.test")),
            Err(DirectoryError::EmailTaken)
        );
    }

    #[test]
    fn stored_email_is_trimmed() {
        let directory = directory_with(&["  a@x.test "]);
        assert_eq!(directory.get(1).unwrap().email, "a@x.test");
    }

    #[test]
    fn update_changes_only_supplied_fields_and_can_clear() {
        let mut directory = Directory::new();
        let mut user = SimUser::new(0, "a@x.test");
        user.first_name = Some("Jane".into());
        user.title = Some("AE".into());
        directory.insert(user).unwrap();
        let changes = UserChanges {
            title: Some(None),
            locked: Some(true),
            custom: [None, Some(Some("c2".into())), None, None, None],
            ..UserChanges::default()
        };
        let updated = directory.update(1, changes, Utc::now()).unwrap();
        assert_eq!(updated.first_name.as_deref(), Some("Jane"));
        assert_eq!(updated.title, None);
        assert!(updated.locked);
        assert_eq!(updated.custom[1].as_deref(), Some("c2"));
        assert_eq!(directory.get(1), Some(&updated));
    }

    #[test]
    fn updated_at_moves_only_on_a_real_change() {
        let mut directory = directory_with(&["a@x.test"]);
        let original = directory.get(1).unwrap().updated_at;
        let later = original + Duration::seconds(5);
        let unchanged = directory
            .update(
                1,
                UserChanges {
                    locked: Some(false),
                    ..UserChanges::default()
                },
                later,
            )
            .unwrap();
        assert_eq!(unchanged.updated_at, original);
        let changed = directory
            .update(
                1,
                UserChanges {
                    locked: Some(true),
                    ..UserChanges::default()
                },
                later,
            )
            .unwrap();
        assert_eq!(changed.updated_at, later);
    }

    #[test]
    fn update_of_a_missing_user_is_not_found() {
        let mut directory = Directory::new();
        assert_eq!(
            directory.update(7, UserChanges::default(), Utc::now()),
            Err(DirectoryError::NotFound(7))
        );
        assert_eq!(
            DirectoryError::NotFound(7).to_string(),
            "Could not find 'user' with ID '7'."
        );
    }

    #[test]
    fn find_by_email_is_case_insensitive() {
        let directory = directory_with(&["a@x.test", "B@X.test"]);
        assert_eq!(directory.find_by_email("b@x.TEST").unwrap().id, 2);
        assert!(directory.find_by_email("c@x.test").is_none());
    }

    #[test]
    fn pages_walk_every_match_once_in_id_order() {
        let emails: Vec<String> = (0..7).map(|i| format!("u{i}@x.test")).collect();
        let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
        let directory = directory_with(&refs);
        let odd = |user: &SimUser| user.id % 2 == 1;
        let first = directory.page(odd, None, 2);
        assert_eq!(first.users.iter().map(|u| u.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((first.total, first.has_more), (4, true));
        let second = directory.page(odd, Some(3), 2);
        assert_eq!(
            second.users.iter().map(|u| u.id).collect::<Vec<_>>(),
            [5, 7]
        );
        assert!(!second.has_more);
        let past_end = directory.page(odd, Some(7), 2);
        assert!(past_end.users.is_empty());
        assert_eq!(past_end.total, 4);
    }

    #[test]
    fn a_cursor_after_a_filtered_out_id_still_resumes_correctly() {
        let directory = directory_with(&["a@x.test", "b@x.test", "c@x.test"]);
        let page = directory.page(|user| user.id != 2, Some(2), 10);
        assert_eq!(page.users.iter().map(|u| u.id).collect::<Vec<_>>(), [3]);
    }
}
