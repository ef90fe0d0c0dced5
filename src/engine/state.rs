//! What a decision sees: last-known Salesforce users, the Outreach user index, the mappings and
//! the events already applied.
//!
//! `SyncState` is plain in-memory data with the two indexes a decision needs (users by
//! normalized email, on both sides). The processor loads the slice around one event from the
//! store into it; `usersync decide` and the property tests keep a whole one in memory. Either
//! way the engine reads it and never writes it: changes come back as a plan, and whoever
//! applies the plan updates the state.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::event::UserChange;
use crate::model::outreach_user::{OutreachUser, OutreachUserId};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

/// One link between an Outreach user and a Salesforce user (1:1 on both sides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub outreach_user_id: OutreachUserId,
    pub salesforce_user_id: SalesforceId,
    /// usersync locked the Outreach user (`lock_when_inactive`) and may unlock it again.
    #[serde(default)]
    pub locked_by_usersync: bool,
}

/// Which part of the state one event needs: the store loads this slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateScope {
    pub event_ids: Vec<String>,
    pub salesforce_user_ids: Vec<SalesforceId>,
    pub outreach_user_ids: Vec<OutreachUserId>,
    /// Normalized emails whose whole group is needed.
    pub emails: Vec<String>,
}

impl StateScope {
    /// The scope of one event: its user, its new email group, and (through the stored user)
    /// the group it may have left.
    pub fn of_event(event: &UserChange) -> Self {
        let mut scope = StateScope {
            event_ids: vec![event.event_id.clone()],
            ..Default::default()
        };
        if let Some(id) = event.salesforce_user_id() {
            scope.salesforce_user_ids.push(id);
        }
        if let Ok(id) = event.user_id.parse::<i64>()
            && event.source == crate::model::event::Source::Outreach
        {
            scope.outreach_user_ids.push(OutreachUserId(id));
        }
        if let Some(email) = &event.user.email_normalized {
            scope.emails.push(email.clone());
        }
        scope
    }
}

/// The version of each part of the store a state was loaded from (an email group, a
/// Salesforce user), by the store's name for the part. The engine never reads it: the store
/// hands it out with a loaded state and checks it again when the decisions made on that state
/// are recorded, so that two replicas cannot both record a decision about the same part.
pub type StateVersions = BTreeMap<String, i64>;

/// Everything usersync knows that a decision may read.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    salesforce: BTreeMap<SalesforceId, SalesforceUser>,
    salesforce_by_email: BTreeMap<String, BTreeSet<SalesforceId>>,
    outreach: BTreeMap<OutreachUserId, OutreachUser>,
    outreach_by_email: BTreeMap<String, BTreeSet<OutreachUserId>>,
    by_outreach: BTreeMap<OutreachUserId, Mapping>,
    by_salesforce: BTreeMap<SalesforceId, OutreachUserId>,
    applied_events: HashSet<String>,
    versions: StateVersions,
}

/// A mapping that would break the 1:1 rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("Outreach user {0} is already mapped to Salesforce user {1}")]
    OutreachTaken(OutreachUserId, SalesforceId),
    #[error("Salesforce user {0} is already mapped to Outreach user {1}")]
    SalesforceTaken(SalesforceId, OutreachUserId),
}

impl SyncState {
    pub fn new() -> Self {
        Self::default()
    }

    // ----- Salesforce users -----

    pub fn salesforce_user(&self, id: &SalesforceId) -> Option<&SalesforceUser> {
        self.salesforce.get(id)
    }

    pub fn salesforce_users(&self) -> impl Iterator<Item = &SalesforceUser> {
        self.salesforce.values()
    }

    /// The Salesforce users whose email normalizes to `email`, in id order.
    pub fn salesforce_group(&self, email: &str) -> impl Iterator<Item = &SalesforceUser> {
        self.salesforce_by_email
            .get(email)
            .into_iter()
            .flatten()
            .filter_map(|id| self.salesforce.get(id))
    }

    /// Inserts or replaces a last-known Salesforce user, keeping the email index true.
    pub fn put_salesforce_user(&mut self, user: SalesforceUser) {
        if let Some(old) = self.salesforce.get(&user.id)
            && let Some(email) = old.email_normalized()
        {
            remove_from_index(&mut self.salesforce_by_email, &email, &user.id);
        }
        if let Some(email) = user.email_normalized() {
            self.salesforce_by_email
                .entry(email)
                .or_default()
                .insert(user.id.clone());
        }
        self.salesforce.insert(user.id.clone(), user);
    }

    // ----- Outreach users -----

    pub fn outreach_user(&self, id: OutreachUserId) -> Option<&OutreachUser> {
        self.outreach.get(&id)
    }

    pub fn outreach_users(&self) -> impl Iterator<Item = &OutreachUser> {
        self.outreach.values()
    }

    /// The Outreach users with this normalized email: at most one, unless Outreach broke its
    /// own uniqueness rule.
    pub fn outreach_group(&self, email: &str) -> impl Iterator<Item = &OutreachUser> {
        self.outreach_by_email
            .get(email)
            .into_iter()
            .flatten()
            .filter_map(|id| self.outreach.get(id))
    }

    /// Inserts or replaces an Outreach user in the index.
    pub fn put_outreach_user(&mut self, user: OutreachUser) {
        if let Some(old) = self.outreach.get(&user.id) {
            remove_from_index(
                &mut self.outreach_by_email,
                &old.email_normalized(),
                &user.id,
            );
        }
        self.outreach_by_email
            .entry(user.email_normalized())
            .or_default()
            .insert(user.id);
        self.outreach.insert(user.id, user);
    }

    // ----- Mappings -----

    pub fn mapping_of_outreach(&self, id: OutreachUserId) -> Option<&Mapping> {
        self.by_outreach.get(&id)
    }

    pub fn mapping_of_salesforce(&self, id: &SalesforceId) -> Option<&Mapping> {
        self.by_salesforce
            .get(id)
            .and_then(|o| self.by_outreach.get(o))
    }

    /// All mappings, by Outreach id.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.by_outreach.values()
    }

    /// Adds a mapping; refuses one that would break 1:1. Replacing the Salesforce side of an
    /// Outreach user is `remap`, not this.
    pub fn map(&mut self, mapping: Mapping) -> Result<(), MappingError> {
        if let Some(existing) = self.by_outreach.get(&mapping.outreach_user_id)
            && existing.salesforce_user_id != mapping.salesforce_user_id
        {
            return Err(MappingError::OutreachTaken(
                mapping.outreach_user_id,
                existing.salesforce_user_id.clone(),
            ));
        }
        if let Some(&other) = self.by_salesforce.get(&mapping.salesforce_user_id)
            && other != mapping.outreach_user_id
        {
            return Err(MappingError::SalesforceTaken(
                mapping.salesforce_user_id.clone(),
                other,
            ));
        }
        self.by_salesforce
            .insert(mapping.salesforce_user_id.clone(), mapping.outreach_user_id);
        self.by_outreach.insert(mapping.outreach_user_id, mapping);
        Ok(())
    }

    /// Moves an Outreach user's mapping to another Salesforce user.
    pub fn remap(
        &mut self,
        outreach_user_id: OutreachUserId,
        to: SalesforceId,
        locked_by_usersync: bool,
    ) -> Result<(), MappingError> {
        if let Some(&other) = self.by_salesforce.get(&to)
            && other != outreach_user_id
        {
            return Err(MappingError::SalesforceTaken(to, other));
        }
        self.unmap(outreach_user_id);
        self.map(Mapping {
            outreach_user_id,
            salesforce_user_id: to,
            locked_by_usersync,
        })
    }

    /// Removes the mapping of an Outreach user, returning it.
    pub fn unmap(&mut self, outreach_user_id: OutreachUserId) -> Option<Mapping> {
        let mapping = self.by_outreach.remove(&outreach_user_id)?;
        self.by_salesforce.remove(&mapping.salesforce_user_id);
        Some(mapping)
    }

    /// Sets whether usersync holds the lock on a mapped Outreach user.
    pub fn set_locked_by_usersync(&mut self, outreach_user_id: OutreachUserId, locked: bool) {
        if let Some(m) = self.by_outreach.get_mut(&outreach_user_id) {
            m.locked_by_usersync = locked;
        }
    }

    // ----- Applied events -----

    pub fn is_applied(&self, event_id: &str) -> bool {
        self.applied_events.contains(event_id)
    }

    pub fn mark_applied(&mut self, event_id: impl Into<String>) {
        self.applied_events.insert(event_id.into());
    }

    // ----- Where it was read from -----

    /// The versions of the store's parts this state was loaded from; empty for a state the
    /// store did not load.
    pub fn versions(&self) -> &StateVersions {
        &self.versions
    }

    pub fn set_versions(&mut self, versions: StateVersions) {
        self.versions = versions;
    }
}

fn remove_from_index<K: Ord>(index: &mut BTreeMap<String, BTreeSet<K>>, email: &str, id: &K) {
    if let Some(set) = index.get_mut(email) {
        set.remove(id);
        if set.is_empty() {
            index.remove(email);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(id: &str, email: &str) -> SalesforceUser {
        SalesforceUser {
            id: SalesforceId::parse(id).unwrap(),
            email: Some(email.into()),
            username: None,
            first_name: None,
            last_name: None,
            title: None,
            is_active: true,
            created_date: None,
            last_modified_date: None,
            applied: None,
        }
    }

    #[test]
    fn email_index_follows_email_changes() {
        let mut state = SyncState::new();
        state.put_salesforce_user(sf("005000000000001", "A@x.com "));
        assert_eq!(state.salesforce_group("a@x.com").count(), 1);
        state.put_salesforce_user(sf("005000000000001", "b@x.com"));
        assert_eq!(state.salesforce_group("a@x.com").count(), 0);
        assert_eq!(state.salesforce_group("b@x.com").count(), 1);
    }

    #[test]
    fn mappings_stay_one_to_one() {
        let mut state = SyncState::new();
        let x = SalesforceId::parse("005000000000001").unwrap();
        let y = SalesforceId::parse("005000000000002").unwrap();
        let m = |o: i64, s: &SalesforceId| Mapping {
            outreach_user_id: OutreachUserId(o),
            salesforce_user_id: s.clone(),
            locked_by_usersync: false,
        };
        state.map(m(1, &x)).unwrap();
        assert!(matches!(
            state.map(m(2, &x)),
            Err(MappingError::SalesforceTaken(..))
        ));
        assert!(matches!(
            state.map(m(1, &y)),
            Err(MappingError::OutreachTaken(..))
        ));
        state.remap(OutreachUserId(1), y.clone(), false).unwrap();
        assert_eq!(
            state
                .mapping_of_outreach(OutreachUserId(1))
                .unwrap()
                .salesforce_user_id,
            y
        );
        assert!(state.mapping_of_salesforce(&x).is_none());
        state.map(m(2, &x)).unwrap();
        assert!(state.remap(OutreachUserId(2), y, false).is_err());
    }
}
