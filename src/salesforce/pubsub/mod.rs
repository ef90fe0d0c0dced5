//! The Pub/Sub API side of the subscriber: the gRPC client ([`client`]), its flow-control
//! bookkeeping ([`credit`]), what a failure means ([`failure`]) and the schema cache
//! ([`schemas`]).
//!
//! The wire types are generated from `proto/pubsub_api.proto` into [`crate::proto`].

pub mod client;
pub mod credit;
pub mod failure;
pub mod schemas;

pub use client::{Batch, PubSubConnection, PubSubError, StartAt, StreamEnd, Subscription};
pub use failure::{FailureKind, PubSubFailure, classify};
pub use schemas::SchemaCache;
