//! The decision engine: for one email group, which Outreach user should be mapped to which
//! Salesforce user, and what must change in Outreach to get there.
//!
//! Everything here is pure: no I/O, no clock, no randomness. The processor and
//! `usersync decide` load state, call [`decide::decide`], make the Outreach calls the plan asks
//! for, and fold the results back with [`apply`].

pub mod apply;
pub mod decide;
pub mod decision;
pub mod settings;
pub mod state;

#[cfg(test)]
pub(crate) mod model;

#[cfg(test)]
mod invariants;

pub use decide::{Outcome, decide};
pub use decision::{Action, Decision, DecisionRecord, MappingChange, OutreachCall, Reason};
pub use settings::{Dedupe, SyncSettings};
pub use state::{Mapping, StateScope, SyncState};
