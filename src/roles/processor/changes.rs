//! What applying one event changed, as the store records it.
//!
//! The processor loads the slice of state an event needs, lets
//! [`crate::roles::processor::apply::apply_event`]
//! decide and call Outreach against it, and then records the difference in one store
//! transaction. This module computes that difference — a pure function of the state before,
//! the state after, the event and its decision records — so the rule "what recording writes"
//! is tested without a database and cannot drift between the two store backends.
//!
//! Mapping changes come out removals first, then additions: a remap (Outreach user 1 moves
//! from X to Y) is `Remove(1)` then `Put(1 → Y)`, and an exchange between two Outreach users
//! never holds a Salesforce user twice in between, so the schema's 1:1 constraints hold at
//! every statement. A change of `locked_by_usersync` alone is a `Put` of the same pair.

use crate::engine::decision::DecisionRecord;
use crate::engine::state::SyncState;
use crate::model::event::UserChange;
use crate::store::{AppliedEvent, MappingWrite};

/// A decision whose Outreach call was made but whose state changed before it could be
/// recorded, as the log keeps it: the call happened, so it is told, with what became of it.
pub fn superseded(record: DecisionRecord) -> DecisionRecord {
    DecisionRecord {
        message: format!(
            "{} Not recorded as decided: another replica changed this state first, so the \
             event is decided again on the new state, which sees what this call did.",
            record.message
        ),
        ..record
    }
}

/// The store write that takes the store from `before` to `after` for `event`.
pub fn applied_event(
    before: &SyncState,
    after: &SyncState,
    event: &UserChange,
    decisions: Vec<DecisionRecord>,
) -> AppliedEvent {
    let salesforce_user = event
        .salesforce_user_id()
        .and_then(|id| after.salesforce_user(&id).cloned())
        .filter(|user| before.salesforce_user(&user.id) != Some(user));
    let outreach_users = after
        .outreach_users()
        .filter(|user| before.outreach_user(user.id) != Some(*user))
        .cloned()
        .collect();
    let mut mapping_changes = Vec::new();
    for old in before.mappings() {
        let kept = after
            .mapping_of_outreach(old.outreach_user_id)
            .is_some_and(|new| new.salesforce_user_id == old.salesforce_user_id);
        if !kept {
            mapping_changes.push(MappingWrite::Remove(old.outreach_user_id));
        }
    }
    for new in after.mappings() {
        if before.mapping_of_outreach(new.outreach_user_id) != Some(new) {
            mapping_changes.push(MappingWrite::Put(new.clone()));
        }
    }
    AppliedEvent {
        event_id: event.event_id.clone(),
        read_versions: before.versions().clone(),
        salesforce_user,
        outreach_users,
        mapping_changes,
        decisions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::Mapping;
    use crate::model::outreach_user::{OutreachUser, OutreachUserId};
    use crate::model::salesforce_id::SalesforceId;
    use crate::model::salesforce_user::SalesforceUser;

    fn sf(id: &str, active: bool) -> SalesforceUser {
        SalesforceUser {
            id: SalesforceId::parse(id).unwrap(),
            email: Some("abc@def.com".into()),
            username: None,
            first_name: Some("Ann".into()),
            last_name: Some("Lee".into()),
            title: None,
            is_active: active,
            created_date: None,
            last_modified_date: None,
            applied: None,
        }
    }

    fn outreach(id: i64, first_name: &str) -> OutreachUser {
        OutreachUser {
            id: OutreachUserId(id),
            email: "abc@def.com".into(),
            username: None,
            first_name: Some(first_name.into()),
            last_name: Some("Lee".into()),
            title: None,
            locked: false,
            custom: Default::default(),
            updated_at: None,
        }
    }

    fn mapping(outreach: i64, salesforce: &str) -> Mapping {
        Mapping {
            outreach_user_id: OutreachUserId(outreach),
            salesforce_user_id: SalesforceId::parse(salesforce).unwrap(),
            locked_by_usersync: false,
        }
    }

    const X: &str = "005000000000001";
    const Y: &str = "005000000000002";

    fn event_of(user: &SalesforceUser) -> UserChange {
        let org = SalesforceId::parse("00D000000000001").unwrap();
        crate::salesforce::snapshot::snapshot(
            user,
            &org,
            &crate::salesforce::snapshot::ReadPosition::default(),
            chrono::Utc::now(),
        )
    }

    #[test]
    fn a_remap_removes_before_it_puts_and_records_only_what_changed() {
        let mut before = SyncState::new();
        before.put_salesforce_user(sf(X, false));
        before.put_salesforce_user(sf(Y, true));
        before.put_outreach_user(outreach(1, "Ann"));
        before.put_outreach_user(outreach(2, "Bob"));
        before.map(mapping(1, X)).unwrap();

        let mut after = before.clone();
        after.unmap(OutreachUserId(1));
        after.map(mapping(1, Y)).unwrap();
        after.put_outreach_user(outreach(1, "Annie"));
        let y = sf(Y, true);
        let applied = applied_event(&before, &after, &event_of(&y), vec![]);

        assert_eq!(
            applied.mapping_changes,
            vec![
                MappingWrite::Remove(OutreachUserId(1)),
                MappingWrite::Put(mapping(1, Y))
            ]
        );
        assert_eq!(applied.outreach_users, vec![outreach(1, "Annie")]);
        assert_eq!(applied.salesforce_user, None, "Y's state did not change");
    }

    #[test]
    fn a_new_salesforce_state_and_a_new_mapping_are_recorded() {
        let before = SyncState::new();
        let mut after = SyncState::new();
        let y = sf(Y, true);
        after.put_salesforce_user(y.clone());
        after.put_outreach_user(outreach(3, "Ann"));
        after.map(mapping(3, Y)).unwrap();
        let applied = applied_event(&before, &after, &event_of(&y), vec![]);
        assert_eq!(applied.salesforce_user, Some(y));
        assert_eq!(applied.outreach_users.len(), 1);
        assert_eq!(
            applied.mapping_changes,
            vec![MappingWrite::Put(mapping(3, Y))]
        );
    }

    #[test]
    fn a_lock_flag_change_is_a_put_of_the_same_pair() {
        let mut before = SyncState::new();
        before.put_salesforce_user(sf(X, false));
        before.put_outreach_user(outreach(1, "Ann"));
        before.map(mapping(1, X)).unwrap();
        let mut after = before.clone();
        after.set_locked_by_usersync(OutreachUserId(1), true);
        let applied = applied_event(&before, &after, &event_of(&sf(X, false)), vec![]);
        let locked = Mapping {
            locked_by_usersync: true,
            ..mapping(1, X)
        };
        assert_eq!(applied.mapping_changes, vec![MappingWrite::Put(locked)]);
    }

    #[test]
    fn nothing_changed_records_nothing_but_the_event() {
        let mut state = SyncState::new();
        state.put_salesforce_user(sf(X, true));
        let applied = applied_event(&state, &state, &event_of(&sf(X, true)), vec![]);
        assert_eq!(applied.salesforce_user, None);
        assert!(applied.outreach_users.is_empty());
        assert!(applied.mapping_changes.is_empty());
    }
}
