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
//! - [`scenario`]: `usersync decide`, the engine run offline against the simulator.
//! - [`sim`]: simulators of the external services, test equipment that speaks the real
//!   wire formats.
//! - [`proto`]: the Salesforce Pub/Sub API's generated gRPC types.
//! - [`config`]: the configuration file and its environment overrides.
//! - [`response_body`]: how every provider client reads a response body: bounded.

pub mod admin;
pub mod apply;
pub mod cli;
pub mod config;
pub mod connection;
pub mod demo;
pub mod engine;
pub mod event;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod outreach;
pub mod processor;
pub mod proto;
pub mod response_body;
pub mod run;
pub mod salesforce;
pub mod scenario;
pub mod sim;
pub mod store;
