//! [`ReplayFrom`]: where an admin asks the Salesforce stream to start again.
//!
//! The request is made on the admin surface (`usersync replay --from …`,
//! `POST /api/v1/replay`) and carried to the subscriber by the board
//! (`Connections::request_replay`), the same way a reconnect or a resync is. The value lives here,
//! beside the board that carries it, so that the connection model does not depend on the
//! Salesforce adapter: the board only hands the request on. Reading it from an admin's text and
//! writing it back in a transport's form (Pub/Sub hex, CometD decimal) is Salesforce's business
//! and stays in `salesforce::replay_from`, which also re-exports this type for its callers.

/// Where the stream starts when an admin moves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The oldest change Salesforce still holds.
    Earliest,
    /// The newest position: nothing before it is read.
    Latest,
    /// After this replay id, in the stored form: Pub/Sub's bytes, or a CometD id as 8
    /// big-endian bytes.
    After(Vec<u8>),
}
