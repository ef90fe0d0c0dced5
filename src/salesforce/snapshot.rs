//! A user's full state read through REST, as a `snapshot` event.
//!
//! Gap re-reads, overflow and expired-replay resyncs, and the initial load all read users with
//! SOQL instead of receiving their changes, and publish what they read as `snapshot` events
//! (design/events.md). A snapshot has no transaction and no commit number; its `event_id` is
//! `sf:<org>:<user>:snapshot:<last_modified_date>` so that reading an unchanged user twice
//! gives the same id (the processor skips the second one), and its position in the user's
//! history is its `LastModifiedDate`. A snapshot therefore never overrides a CDC event of the
//! same commit or later.

use chrono::{DateTime, SecondsFormat, Utc};

use super::id::SalesforceId;
use crate::engine::state::SalesforceUser;
use crate::event::{
    ChangeKind, Origin, SCHEMA, Source, UserChange, UserState, normalize_email, snapshot_event_id,
};

/// The snapshot event of `user` in org `org_id`, read at `observed_at`.
pub fn snapshot(
    user: &SalesforceUser,
    org_id: &SalesforceId,
    observed_at: DateTime<Utc>,
) -> UserChange {
    let marker = user.last_modified_date.map_or_else(
        || observed_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        |at| at.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    UserChange {
        schema: SCHEMA.to_owned(),
        event_id: snapshot_event_id(org_id.as_str(), &user.id, &marker),
        source: Source::Salesforce,
        org_id: Some(org_id.to_string()),
        user_id: user.id.to_string(),
        change: ChangeKind::Snapshot,
        changed_fields: Vec::new(),
        user: UserState {
            email: user.email.clone(),
            email_normalized: user.email.as_deref().map(normalize_email),
            username: user.username.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            title: user.title.clone(),
            is_active: Some(user.is_active),
            created_date: user.created_date,
            last_modified_date: user.last_modified_date,
            locked: None,
        },
        origin: Origin {
            transport: "rest".to_owned(),
            ..Origin::default()
        },
        observed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> SalesforceUser {
        SalesforceUser {
            id: SalesforceId::parse("0055f00000GBZR4AAP").unwrap(),
            email: Some("Olga.Brown@Example.com ".into()),
            username: Some("olga@example.com.prod".into()),
            first_name: Some("Olga".into()),
            last_name: Some("Brown".into()),
            title: None,
            is_active: false,
            created_date: None,
            last_modified_date: Some("2024-06-18T11:30:45Z".parse().unwrap()),
            applied: None,
        }
    }

    #[test]
    fn a_snapshot_is_a_valid_event_with_a_repeatable_id() {
        let org = SalesforceId::parse("00D5g000004ZbcdEAC").unwrap();
        let first = snapshot(&user(), &org, Utc::now());
        let again = snapshot(&user(), &org, Utc::now());
        first.validate().expect("valid user_change.v1");
        assert_eq!(first.event_id, again.event_id);
        assert_eq!(
            first.event_id,
            "sf:00D5g000004ZbcdEAC:0055f00000GBZR4AAP:snapshot:2024-06-18T11:30:45.000Z"
        );
        assert_eq!(first.change, ChangeKind::Snapshot);
        assert_eq!(
            first.user.email_normalized.as_deref(),
            Some("olga.brown@example.com")
        );
        assert_eq!(first.user.is_active, Some(false));
        assert_eq!(first.origin.transport, "rest");
        assert_eq!(first.kafka_key(), "olga.brown@example.com");
        let json = serde_json::to_vec(&first).unwrap();
        assert_eq!(UserChange::from_json(&json).unwrap(), first);
    }

    #[test]
    fn a_snapshot_sits_at_the_users_last_modified_date() {
        let org = SalesforceId::parse("00D5g000004ZbcdEAC").unwrap();
        let event = snapshot(&user(), &org, Utc::now());
        assert_eq!(
            event.position().commit_timestamp,
            user().last_modified_date.unwrap()
        );
        assert_eq!(event.position().commit_number, None);
    }
}
