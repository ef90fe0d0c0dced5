//! usersync keeps Outreach users mapped to the right Salesforce users.
//!
//! The folders tell the architecture. From the bottom up:
//!
//! - [`model`]: the shared value types (ids, the Salesforce and Outreach users, the
//!   `user_change.v1` event); they depend on nothing else here.
//! - [`engine`]: the pure decision engine: settings, the state a decision sees, the rules.
//! - [`salesforce`], [`outreach`], [`kafka`], [`store`]: the adapters, each the only door to
//!   its system, each classifying its own errors for the connection board. `salesforce` reads
//!   Salesforce (OAuth, Pub/Sub, CometD, REST, Avro and bitmap decoding, normalization);
//!   `outreach` writes to Outreach (the JSON:API client, rate limits, OAuth, webhook parsing);
//!   `kafka` produces events, dead letters and transactional batches; `store` keeps durable
//!   state in SQLite or PostgreSQL. [`proto`] is the Pub/Sub API's generated gRPC client.
//! - [`connection`]: the connection model every side reports into: states, reasons, the board,
//!   the sealed authorizations; it imports no provider adapter.
//! - [`roles`]: the long-running jobs (subscriber, processor, webhook receiver) that wire the
//!   adapters, the engine and the store together.
//! - [`admin`]: the admin server (API, page, feed, metrics) and its client.
//! - [`app`]: the command line and what it starts; `usersync decide`, `demo` and `sim` come with
//!   the default `sim` feature (the simulators of the `usersync-sim` crate).
//! - Beside them: [`config`] (the configuration, each section declared once), [`endpoint`] (the
//!   guards on every exchange with a provider), [`metrics`] (the Prometheus series),
//!   [`private_file`] (files only their owner may read).

pub mod admin;
pub mod app;
pub mod config;
pub mod connection;
pub mod endpoint;
pub mod engine;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod outreach;
pub mod private_file;
pub mod proto;
pub mod roles;
pub mod salesforce;
pub mod store;
