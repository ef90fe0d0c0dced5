//! The roles: the long-running jobs a deployment starts, each wiring adapters, the engine
//! and the store together. Every I/O of a role goes through an adapter; what it decides, the
//! engine decides.
//!
//! - [`subscriber`]: Salesforce change events in, `user_change.v1` events out to Kafka, a
//!   replay checkpoint that never passes an event Kafka has not confirmed, and the lease that
//!   lets one of several instances stream.
//! - [`processor`]: `user_change.v1` events in, decisions applied to Outreach and recorded.
//! - [`webhook_receiver`]: Outreach's webhook deliveries in, `user_change.v1` events out.

pub mod processor;
pub mod subscriber;
pub mod webhook_receiver;
