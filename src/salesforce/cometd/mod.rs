//! The Streaming API (CometD / Bayeux long-polling) path of the subscriber: the fallback for
//! orgs where the Pub/Sub API cannot be used (docs/subscriber.md).
//!
//! CometD is the legacy transport and the one where the public clients went wrong most often
//! (docs/salesforce.md, "Failures seen in other clients"), so this module is shaped around
//! those failures rather than around the protocol's happy path:
//!
//! - [`message`]: the Bayeux messages of one HTTP response, parsed by a pure function
//!   ([`message::parse_messages`]) that never panics and names what is wrong (a fuzz entry
//!   point), and the Salesforce error strings (`401::Authentication invalid`,
//!   `403::Unknown client`, `400::The replayId … was invalid`) classified into a [`Refusal`],
//!   one table for the whole client.
//! - [`payload`]: a CDC data message (`data.schema`, `data.payload`, `data.event.replayId`)
//!   turned into the very [`ChangeEvent`](crate::salesforce::avro::ChangeEvent) the Pub/Sub
//!   path decodes, using the event's writer schema: CometD sends only the fields that were
//!   sent, in an order of its own, with ISO dates and compound fields as nested objects, and
//!   everything downstream (the normalizer, the field lists of `user_change.v1`) must not be
//!   able to tell the transports apart.
//! - [`client`]: the long-polling client: handshake, subscribe with the replay extension,
//!   the connect loop, and recovery (new token on 401, re-handshake on 403, the replay policy
//!   on a rejected replay id), always resubscribing with the replay id of the last event the
//!   caller *acknowledged*.

pub mod client;
pub mod message;
pub mod payload;

pub use client::{
    ClientStats, CometdClient, CometdConfig, CometdError, CredentialsTokenSource, Delivered, Poll,
    ReplayRejected, TokenSource, UnreadableEvent,
};
pub use message::{Advice, CometdParseError, Message, Reconnect, Refusal, parse_messages};
pub use payload::{CdcEvent, PayloadError};

/// The channel of User change events; the Pub/Sub topic has the same name (docs/salesforce.md,
/// "The User object").
pub const USER_CHANGE_CHANNEL: &str = "/data/UserChangeEvent";

/// Replay from the newest event on: only events published after the subscription
/// (docs/salesforce.md, "CometD: messages, replay, timeouts, errors").
pub const REPLAY_FROM_TIP: i64 = -1;

/// Replay every retained event (72 hours for CDC; docs/salesforce.md,
/// "CometD: messages, replay, timeouts, errors").
pub const REPLAY_FROM_EARLIEST: i64 = -2;

/// The oldest Streaming API version Salesforce still serves (docs/salesforce.md,
/// "CometD: messages, replay, timeouts, errors").
pub const MIN_API_VERSION: f64 = 37.0;

/// Whether Salesforce still resumes the User change channel after `replay_id`
/// ([`CometdClient::can_resume_after`]).
pub async fn can_resume_after(
    api_version: &str,
    tokens: std::sync::Arc<CredentialsTokenSource>,
    replay_id: i64,
    wait: std::time::Duration,
) -> Result<bool, CometdError> {
    CometdClient::can_resume_after(api_version, tokens, replay_id, wait).await
}
