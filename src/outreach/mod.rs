//! The Outreach side: the REST API v2 client (the Outreach user it speaks of is
//! [`crate::model::outreach_user`]).
//!
//! Layers, from the wire up:
//!
//! - [`jsonapi`]: wire shapes only: JSON:API documents for users, both error-body shapes, and
//!   conversion to and from [`crate::model::outreach_user::OutreachUser`].
//! - [`rate_limit`]: the request budget: header parsing, pacing arithmetic, and the shared limiter
//!   that waits for the reset before the budget runs out.
//! - [`auth`]: tokens: the OAuth grants, persistence through a [`auth::TokenStore`], the mint
//!   interval, and one refresh for any number of concurrent 401s.
//! - `transport` (private): one HTTP attempt's outcome and the jittered retry of transient failures.
//! - [`client`]: requests and policy: what each operation sends, and how 401, 429 and 5xx are
//!   handled around it.
//! - [`error`]: the typed failures callers act on.
//! - [`checklist`]: the "test connection" steps, run with the client (as `salesforce::checklist`
//!   runs Salesforce's).
//! - [`webhooks`]: what Outreach POSTs when a user changes: the signature, the payloads, the
//!   HTTP receiver that turns them into `user_change.v1` events, and the webhook's registration.
//!
//! The engine sees only [`OutreachClient`], [`OutreachError`] and the user types.

pub mod auth;
pub mod checklist;
pub mod client;
pub mod error;
pub mod jsonapi;
pub mod rate_limit;
pub mod stats;
pub mod token_file;
mod transport;
pub mod webhooks;

pub use crate::model::outreach_user::{
    CUSTOM_FIELDS, OutreachUser, OutreachUserId, UserAttributes,
};
pub use auth::{MemoryTokenStore, OAuthApp, OAuthTokens, TokenStore, TokenStoreError};
pub use client::{OutreachClient, Reply, UserPage};
pub use error::{Operation, OutreachError};
pub use stats::ClientStats;
