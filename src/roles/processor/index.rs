//! The Outreach user index: every Outreach user, by id and email, kept in the store.
//!
//! Decisions read Outreach users from the store, never from Outreach, so one decision costs
//! no lookup. The index is loaded whole at start (`GET /users`, 1 000 a page) and again on the
//! reconcile interval, and kept current in between by what the processor itself writes and by
//! Outreach webhooks (events with `source: outreach`). It can still be behind — a user created
//! by hand a moment ago — and that is why a create refused for a taken email turns into a
//! lookup and a link ([`crate::roles::processor::apply`]), never a second create.

use crate::outreach::client::OutreachClient;
use crate::outreach::error::OutreachError;
use crate::store::{Store, StoreError};

/// Why the index could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("reading the Outreach users: {0}")]
    Outreach(#[from] OutreachError),
    #[error("saving {users} Outreach users in the store: {source}")]
    Store {
        users: usize,
        #[source]
        source: StoreError,
    },
}

/// What one load read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub users: usize,
    /// HTTP requests it took.
    pub requests: u32,
}

/// Reads every Outreach user and upserts them into the store, in one store transaction.
pub async fn load(outreach: &OutreachClient, store: &dyn Store) -> Result<Loaded, IndexError> {
    let reply = outreach.list_users().await?;
    let users = reply.value.len();
    store
        .put_outreach_users(&reply.value)
        .await
        .map_err(|source| IndexError::Store { users, source })?;
    Ok(Loaded {
        users,
        requests: reply.requests,
    })
}
