//! The guards on every HTTP exchange with a provider (Salesforce, Outreach and their OAuth
//! hosts), written once for both clients (docs/security.md, "Secrets at rest and in transit"):
//!
//! - [`origin`]: where a request carrying a bearer token may go — only to the origin it was
//!   configured for, whatever a response links to — and which endpoints may be plain HTTP.
//! - [`body`]: how much of a response usersync reads — up to a cap per endpoint, so that no
//!   answer, however large, can exhaust the memory of the process.

pub mod body;
pub mod origin;
