//! The Salesforce side: ids, and the pure half of the Change Data Capture subscriber.
//!
//! The subscriber reads `UserChangeEvent`s and publishes `user_change.v1`. Its
//! pure parts live here so they can be tested without a network:
//!
//! - [`id`]: Salesforce ids, always emitted in the 18-character form.
//! - [`bitmap`]: the `changedFields` / `nulledFields` / `diffFields` lists, bitmaps on Pub/Sub
//!   and names on CometD, decoded to field names against the event's writer schema.
//! - [`avro`]: one Pub/Sub payload (a raw Avro datum) decoded with its own writer schema into
//!   a [`avro::ChangeEvent`]: a typed header and a flat map of field values.
//! - [`normalize`]: one decoded event into normalized events, one per record id, or the
//!   REST re-read / resync the subscriber must do instead.
//!
//! - [`cometd`]: the Streaming API (CometD) client, the legacy transport, delivering the same
//!   [`avro::ChangeEvent`] as the Pub/Sub path.
//! - [`auth`]: OAuth (JWT bearer, client credentials, refresh token), userinfo, and the
//!   table that turns a token refusal into a disconnect reason.
//! - [`rest`]: User records over the REST API: the initial load, the re-read of the users a
//!   gap event names, and the resync after an overflow or an expired replay id.
//! - [`replay_from`]: where an admin asks the stream to start again (earliest, latest, or
//!   after a replay id), and the plan shown before it is confirmed.
//!
//! - [`lease`]: which of several subscriber instances sharing a store streams.
//!
//! The rest of the I/O (the gRPC stream, the schema cache, Kafka) comes with the rest
//! of the subscriber.

pub mod auth;
pub mod avro;
pub mod bitmap;
pub mod checklist;
pub mod cometd;
pub mod normalize;
pub mod pubsub;
pub mod replay;
pub mod replay_from;
pub mod rest;
pub mod snapshot;
