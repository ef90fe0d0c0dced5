//! The Salesforce Pub/Sub API's wire types and gRPC server trait, generated at build time from
//! `proto/pubsub_api.proto` (see `sim/build.rs`); the Salesforce simulator's
//! `salesforce::pubsub` implements the server.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod eventbus {
    tonic::include_proto!("eventbus.v1");
}
