//! usersync keeps Outreach users mapped to the right Salesforce users.
//!
//! The folders tell the architecture, in the order data flows:
//!
//! - [`salesforce`]: what reads Salesforce: ids, and the pure half of the CDC subscriber
//!   (bitmap and Avro decoding, normalization); its I/O comes with its issue.
//! - [`event`]: the normalized `user_change.v1` event, the contract between the roles.
//! - [`kafka`]: the subscriber's producer (events, dead letters, transactional batches) and
//!   the rule that keeps the replay checkpoint behind Kafka's confirmations.
//! - [`engine`]: the pure decision engine: settings, the state a decision sees, the rules.
//! - [`outreach`]: what writes to Outreach: the JSON:API client with its rate limit,
//!   retries and OAuth.
//! - [`store`]: durable state (SQLite or PostgreSQL) behind one trait.
//! - `scenario`: `usersync decide`, the engine run offline against the Outreach simulator.
//! - `demo` and `sim_command`: `usersync demo` and `usersync sim`, the glue to the simulators
//!   of the `usersync-sim` crate (test equipment that speaks the real wire formats). These
//!   three come with the `sim` feature (a default); without it the binary holds no simulator.
//! - [`proto`]: the Salesforce Pub/Sub API's generated gRPC types.
//! - [`config`]: the configuration file and its environment overrides.
//! - [`endpoint`]: the guards on every exchange with a provider: same origin, no plain HTTP
//!   off this machine, capped answers.
//! - [`private_file`]: files only their owner may read (store, token file, vault key).

pub mod admin;
pub mod apply;
pub mod cli;
pub mod config;
pub mod connection;
#[cfg(feature = "sim")]
pub mod demo;
pub mod endpoint;
pub mod engine;
pub mod event;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod outreach;
pub mod private_file;
pub mod processor;
pub mod proto;
pub mod run;
pub mod salesforce;
#[cfg(feature = "sim")]
pub mod scenario;
#[cfg(feature = "sim")]
pub mod sim_command;
pub mod store;
