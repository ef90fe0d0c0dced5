//! Simulators of the external services usersync talks to.
//!
//! They are test equipment of product quality: each speaks the real service's wire format
//! (media types, document shapes, status codes, headers, error bodies) as documented, keeps
//! the real service's rules, and takes no shortcut the real service would not take, so that
//! a client that passes against a simulator has been tested against the behaviour it will
//! meet in production. Each is an independent implementation of the wire format — this crate
//! does not depend on the product's crate at all — and each offers a handle for in-process
//! tests and a control API for running it as `usersync sim <service>`. Where the real
//! behaviour is not documented, the simulator's module says which default it chose.

pub mod outreach;
pub mod proto;
pub mod request_log;
pub mod salesforce;
