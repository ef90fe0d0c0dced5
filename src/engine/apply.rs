//! Folding an applied decision back into the state.
//!
//! The engine plans; whoever executes the plan calls Outreach and then folds what came back
//! into the state with these functions, so the next decision sees it. They are pure and shared
//! by every executor: the processor, `usersync decide`, and the property tests' model.

use crate::engine::decide::Outcome;
use crate::engine::decision::{Decision, MappingChange, OutreachCall};
use crate::engine::state::{Mapping, MappingError, SyncState};
use crate::model::outreach_user::{OutreachUser, OutreachUserId};

/// Folds one decision after its Outreach call (if any) succeeded. `reply` is the user Outreach
/// returned for a create or an update. Returns the Outreach user the decision ended up about
/// (for a create, the new one).
pub fn fold_decision(
    state: &mut SyncState,
    decision: &Decision,
    reply: Option<OutreachUser>,
) -> Result<Option<OutreachUserId>, MappingError> {
    let mut outreach_id = decision.outreach_user_id;
    if let Some(user) = reply {
        if matches!(decision.call, Some(OutreachCall::Create(_))) {
            outreach_id = Some(user.id);
        }
        state.put_outreach_user(user);
    }
    let Some(o) = outreach_id else {
        return Ok(None);
    };
    match &decision.mapping {
        None => {}
        Some(MappingChange::Map { salesforce_user_id }) => state.map(Mapping {
            outreach_user_id: o,
            salesforce_user_id: salesforce_user_id.clone(),
            locked_by_usersync: false,
        })?,
        Some(MappingChange::Remap { to, .. }) => state.remap(o, to.clone(), false)?,
        Some(MappingChange::LockedByUsersync(locked)) => state.set_locked_by_usersync(o, *locked),
    }
    Ok(Some(o))
}

/// Folds the event-level part of an outcome: the user's new state and the applied event id.
pub fn fold_event(state: &mut SyncState, outcome: &Outcome, event_id: &str) {
    if let Some(user) = &outcome.salesforce_user {
        state.put_salesforce_user(user.clone());
    }
    if let Some(user) = &outcome.outreach_user {
        state.put_outreach_user(user.clone());
    }
    if outcome.record_event {
        state.mark_applied(event_id);
    }
}
