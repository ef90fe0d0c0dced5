//! The Salesforce Pub/Sub API's wire types and gRPC client, generated at build time from
//! `proto/pubsub_api.proto` (see `build.rs`) for the subscriber (`salesforce::pubsub`).
//!
//! The simulator's server is generated from the same file in its own crate (`sim/build.rs`):
//! the file is the wire format itself, so sharing it shares no product code.
//! `tests/pubsub_proto.rs` pins every field number and type against Salesforce's published
//! proto (docs/salesforce.md, "Pub/Sub: endpoint and call metadata").

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod eventbus {
    tonic::include_proto!("eventbus.v1");
}
