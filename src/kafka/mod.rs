//! The subscriber's Kafka side: publishing `user_change.v1` events, dead letters, and knowing
//! how far the replay checkpoint may move.
//!
//! The promise from Salesforce to Kafka is at least once: the replay checkpoint moves only past
//! events Kafka has confirmed, so a crash at any point replays, and never skips, an event. The
//! parts:
//!
//! - [`producer`]: [`ChangePublisher`], the idempotent (`acks=all`) producer. Sending hands back
//!   a [`PendingDelivery`] to await later, so sends are pipelined; dead letters are awaited.
//! - [`frontier`]: [`DeliveryFrontier`], the pure rule that turns out-of-order confirmations
//!   into the newest position the checkpoint may take.
//! - [`client`]: what every client shares: the operator's TLS and SASL settings, errors that
//!   never show a secret, and a first contact that names the brokers' complaint.
//! - [`topics`]: the topics are checked, and created when allowed, before anything is sent.
//! - [`transactional`]: with `kafka.transactional_id`, each batch and its checkpoint are one
//!   Kafka transaction, and the checkpoint is read back with `read_committed`.
//!
//! `docs/kafka.md` describes the records and guarantees for people running usersync.

pub mod client;
pub mod frontier;
pub mod producer;
pub mod topics;
pub mod transactional;

pub use crate::config::KafkaConfig;
pub use frontier::{DeliveryFrontier, FrontierError, RecordId};
pub use producer::{ChangePublisher, DeadLetter, Delivered, PendingDelivery, PublishError};
pub use topics::{AdminTopicCreator, Creation, TopicCreator, TopicError, TopicSpec};
pub use transactional::{Checkpoint, TransactionError, TransactionalPublisher, read_checkpoint};
