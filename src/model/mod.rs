//! The shared value types: who the users are on each side and the event that carries a change
//! between the roles. They depend on nothing else in the crate, so every layer (adapters,
//! engine, store, roles) can speak them without importing another layer.
//!
//! - [`salesforce_id`]: Salesforce record ids, 15 or 18 characters, compared as 18.
//! - [`salesforce_user`]: the last-known state of one Salesforce user.
//! - [`outreach_user`]: the Outreach user and the attributes a write sends.
//! - [`event`]: the `user_change.v1` event, its position and ordering.

pub mod event;
pub mod outreach_user;
pub mod salesforce_id;
pub mod salesforce_user;
