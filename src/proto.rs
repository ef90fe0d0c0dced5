//! The Salesforce Pub/Sub API's wire types and gRPC stubs, generated at build time from
//! `proto/pubsub_api.proto` (see `build.rs`).
//!
//! Both the subscriber's client (`salesforce::pubsub`) and the simulator's server
//! (`sim::salesforce::pubsub`) use them: they are the wire format itself, not product types.
//! `tests/pubsub_proto.rs` pins every field number and type against Salesforce's published
//! proto (docs/salesforce.md, "Pub/Sub: endpoint and call metadata").

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod eventbus {
    tonic::include_proto!("eventbus.v1");
}
