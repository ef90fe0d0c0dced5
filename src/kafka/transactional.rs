//! Transactional mode: a batch of events and the replay checkpoint after it, committed together.
//!
//! In the default (idempotent) mode the checkpoint lives outside Kafka and follows the
//! [`DeliveryFrontier`](super::DeliveryFrontier); a crash between Kafka's confirmation and the
//! checkpoint write replays a few events, which `event_id` makes recognizable. With
//! `kafka.transactional_id` set, the checkpoint is a record on a compacted Kafka topic (key =
//! the Salesforce topic name) written in the same transaction as the batch's events, so a
//! `read_committed` consumer sees either both or neither, and the checkpoint read back at start
//! is exactly the position after the last committed batch. Salesforce still cannot join the
//! transaction, so this narrows the replay window rather than giving exactly-once end to end.
//!
//! A `transactional_id` fences older producers with the same id: run one subscriber per id.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::client::{self, ReachError};
use super::producer::{self, Delivered, PublishError, change_headers};
use super::topics::{self, AdminTopicCreator, TopicCreator, TopicError, TopicSpec};
use crate::config::KafkaConfig;
use crate::model::event::UserChange;

/// The position after a committed batch, as stored on the checkpoint topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The opaque Pub/Sub replay id, stored as lower-case hex.
    #[serde(with = "hex_bytes")]
    pub replay_id: Vec<u8>,
    /// The commit time of the event at that replay id; `None` for a keepalive position, which
    /// names a replay id but no event. Tells at start whether the position is still inside
    /// Salesforce's retention.
    pub commit_timestamp: Option<DateTime<Utc>>,
}

/// Why a transaction or a checkpoint read failed.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error(transparent)]
    Unreachable(#[from] ReachError),
    #[error("kafka.transactional_id is not set; transactional mode needs one")]
    NoTransactionalId,
    #[error("cannot create the transactional Kafka producer for brokers {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("transactional id {transactional_id}: {step} failed: {source}")]
    Step {
        transactional_id: String,
        step: &'static str,
        #[source]
        source: Box<KafkaError>,
    },
    #[error(
        "batch for {salesforce_topic} aborted: {source}{}",
        abort_failure.as_ref().map(|e| format!(" (and the abort failed too: {e})")).unwrap_or_default()
    )]
    Aborted {
        salesforce_topic: String,
        #[source]
        source: Box<TransactionError>,
        abort_failure: Option<Box<TransactionError>>,
    },
    #[error("{step} did not finish: the runtime is shutting down")]
    Interrupted { step: &'static str },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(
        "cannot read the checkpoint of {salesforce_topic} from {topic} on brokers {brokers}: {source}"
    )]
    Read {
        salesforce_topic: String,
        topic: String,
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error(
        "the checkpoint of {salesforce_topic} at {topic} partition {partition} offset {offset} is not \
         a checkpoint: {source}"
    )]
    Malformed {
        salesforce_topic: String,
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading {topic} from brokers {brokers} to its end took longer than {timeout:?}")]
    ReadTimeout {
        topic: String,
        brokers: String,
        timeout: Duration,
    },
}

impl TransactionError {
    /// Whether the producer can never commit again: another producer with the same
    /// `transactional_id` fenced it, or librdkafka raised a fatal error. Retrying is pointless;
    /// the process must stop and an operator must look.
    pub fn is_fatal(&self) -> bool {
        match self {
            TransactionError::Step { source, .. } => match source.as_ref() {
                KafkaError::Transaction(error) => error.is_fatal(),
                _ => false,
            },
            TransactionError::Aborted {
                source,
                abort_failure,
                ..
            } => source.is_fatal() || abort_failure.as_ref().is_some_and(|e| e.is_fatal()),
            _ => false,
        }
    }
}

/// The transactional producer: events and checkpoint in one Kafka transaction per batch.
pub struct TransactionalPublisher {
    producer: FutureProducer,
    config: KafkaConfig,
    transactional_id: String,
    /// One transaction at a time: a producer has only one open transaction.
    batch: tokio::sync::Mutex<()>,
}

impl TransactionalPublisher {
    /// Creates the producer and registers its transactional id with the coordinator, which
    /// fences any older producer with that id and completes its open transaction.
    pub async fn start(config: &KafkaConfig) -> Result<Self, TransactionError> {
        let transactional_id = config
            .transactional_id
            .clone()
            .ok_or(TransactionError::NoTransactionalId)?;
        client::reach(config).await?;
        let mut client = producer::producer_config(config);
        client.set("transactional.id", &transactional_id);
        let producer: FutureProducer =
            client::create(config, &client).map_err(|source| TransactionError::Client {
                brokers: config.brokers.clone(),
                source: Box::new(source),
            })?;
        let publisher = Self {
            producer,
            config: config.clone(),
            transactional_id,
            batch: tokio::sync::Mutex::new(()),
        };
        let timeout = config.message_timeout;
        publisher
            .blocking("init_transactions", move |p| p.init_transactions(timeout))
            .await?;
        Ok(publisher)
    }

    /// Makes sure the event, dead-letter and (compacted) checkpoint topics exist.
    pub async fn ensure_topics(&self) -> Result<(), TopicError> {
        let creator = AdminTopicCreator::new(&self.config)?;
        self.ensure_topics_with(&creator).await
    }

    /// [`TransactionalPublisher::ensure_topics`] with another way to create topics.
    pub async fn ensure_topics_with(&self, creator: &impl TopicCreator) -> Result<(), TopicError> {
        let mut specs = TopicSpec::for_events(&self.config);
        specs.push(TopicSpec::for_checkpoints(&self.config));
        topics::ensure(self.producer.client(), creator, &self.config, &specs).await
    }

    /// Publishes `events` and then `checkpoint` under the key `salesforce_topic`, and commits;
    /// on any failure the transaction is aborted and neither is visible to `read_committed`
    /// consumers. Returns where each event landed, in order.
    ///
    /// `checkpoint` is `None` for events that have no stream position yet (the snapshots of an
    /// initial load read before the stream's first event) or that are only part of one
    /// position's events (a resync committed in slices): the stored checkpoint stays where it
    /// was, and a crash replays from there.
    pub async fn publish_batch(
        &self,
        salesforce_topic: &str,
        events: &[UserChange],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Vec<Delivered>, TransactionError> {
        let _one_at_a_time = self.batch.lock().await;
        self.producer
            .begin_transaction()
            .map_err(|source| self.step("begin_transaction", source))?;
        match self.fill(salesforce_topic, events, checkpoint).await {
            Ok(delivered) => Ok(delivered),
            Err(error) => {
                let timeout = self.config.message_timeout;
                let abort_failure = self
                    .blocking("abort_transaction", move |p| p.abort_transaction(timeout))
                    .await
                    .err()
                    .map(Box::new);
                Err(TransactionError::Aborted {
                    salesforce_topic: salesforce_topic.to_string(),
                    source: Box::new(error),
                    abort_failure,
                })
            }
        }
    }

    /// The inside of one transaction: every record, then the commit.
    async fn fill(
        &self,
        salesforce_topic: &str,
        events: &[UserChange],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Vec<Delivered>, TransactionError> {
        let timeout = self.config.message_timeout;
        let mut pending = Vec::with_capacity(events.len());
        for change in events {
            let record = format!("event {}", change.event_id);
            let payload = serde_json::to_vec(change).map_err(|source| PublishError::Encode {
                record: record.clone(),
                source,
            })?;
            pending.push(
                producer::enqueue(
                    &self.producer,
                    &self.config.topic,
                    &change.kafka_key(),
                    &payload,
                    change_headers(change),
                    record,
                    timeout,
                )
                .await?,
            );
        }
        let checkpoint_delivery = match checkpoint {
            Some(checkpoint) => {
                let record = format!("checkpoint of {salesforce_topic}");
                let value =
                    serde_json::to_vec(checkpoint).map_err(|source| PublishError::Encode {
                        record: record.clone(),
                        source,
                    })?;
                Some(
                    producer::enqueue(
                        &self.producer,
                        &self.config.checkpoint_topic,
                        salesforce_topic,
                        &value,
                        OwnedHeaders::new(),
                        record,
                        timeout,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let mut delivered = Vec::with_capacity(pending.len());
        for delivery in pending {
            delivered.push(delivery.await?);
        }
        if let Some(delivery) = checkpoint_delivery {
            delivery.await?;
        }
        self.blocking("commit_transaction", move |p| p.commit_transaction(timeout))
            .await?;
        Ok(delivered)
    }

    /// Runs a blocking librdkafka transaction call off the async threads.
    async fn blocking(
        &self,
        step: &'static str,
        call: impl FnOnce(&FutureProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), TransactionError> {
        let producer = self.producer.clone();
        match tokio::task::spawn_blocking(move || call(&producer)).await {
            Ok(result) => result.map_err(|source| self.step(step, source)),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(TransactionError::Interrupted { step }),
        }
    }

    fn step(&self, step: &'static str, source: KafkaError) -> TransactionError {
        TransactionError::Step {
            transactional_id: self.transactional_id.clone(),
            step,
            source: Box::new(source),
        }
    }

    /// Waits up to `timeout` for records outside a transaction to be confirmed; for shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer
            .flush(timeout)
            .map_err(|source| PublishError::Flush {
                in_flight: self.producer.in_flight_count(),
                timeout,
                source: Box::new(source),
            })
    }
}

/// Reads the last committed checkpoint of `salesforce_topic` from the checkpoint topic: every
/// partition from its beginning to its end with `isolation.level=read_committed`, keeping the
/// last value under that key (a null value, a tombstone, clears it). `None` when there is none.
pub async fn read_checkpoint(
    config: &KafkaConfig,
    salesforce_topic: &str,
    timeout: Duration,
) -> Result<Option<Checkpoint>, TransactionError> {
    let config = config.clone();
    let salesforce_topic = salesforce_topic.to_string();
    let read = move || read_checkpoint_blocking(&config, &salesforce_topic, timeout);
    match tokio::task::spawn_blocking(read).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Err(TransactionError::Interrupted {
            step: "reading the checkpoint",
        }),
    }
}

fn read_checkpoint_blocking(
    config: &KafkaConfig,
    salesforce_topic: &str,
    timeout: Duration,
) -> Result<Option<Checkpoint>, TransactionError> {
    let topic = &config.checkpoint_topic;
    let read_error = |source| TransactionError::Read {
        salesforce_topic: salesforce_topic.to_string(),
        topic: topic.clone(),
        brokers: config.brokers.clone(),
        source: Box::new(source),
    };
    let consumer: BaseConsumer =
        client::create(config, &checkpoint_reader_config(config)).map_err(read_error)?;
    let deadline = Instant::now() + timeout;

    let Some(partitions) =
        topics::partition_count(consumer.client(), topic, timeout).map_err(read_error)?
    else {
        return Ok(None);
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(read_error)?;
    }
    consumer.assign(&assignment).map_err(read_error)?;

    let mut unfinished: HashSet<i32> = (0..partitions as i32).collect();
    let mut last = None;
    while !unfinished.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransactionError::ReadTimeout {
                topic: topic.clone(),
                brokers: config.brokers.clone(),
                timeout,
            });
        }
        match consumer.poll(left.min(Duration::from_millis(100))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
            }
            Some(Err(source)) => return Err(read_error(source)),
            Some(Ok(message)) => {
                if message.key() != Some(salesforce_topic.as_bytes()) {
                    continue;
                }
                last = match message.payload() {
                    None => None,
                    Some(value) => Some(serde_json::from_slice::<Checkpoint>(value).map_err(
                        |source| TransactionError::Malformed {
                            salesforce_topic: salesforce_topic.to_string(),
                            topic: topic.clone(),
                            partition: message.partition(),
                            offset: message.offset(),
                            source,
                        },
                    )?),
                };
            }
        }
    }
    Ok(last)
}

/// The checkpoint reader's consumer: it sees only committed transactions, reports the end of
/// each partition, and never commits offsets (it reads from the beginning every time).
fn checkpoint_reader_config(config: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut client = client::base_config(config);
    client
        .set("group.id", "usersync-checkpoint-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    client
}

/// Bytes as lower-case hex in JSON, the form docs/event-schema.md gives replay ids.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("hex of odd length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| D::Error::custom(format!("not hex: {text:?}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_json_with_the_replay_id_in_hex() {
        let checkpoint = Checkpoint {
            replay_id: vec![0x00, 0x11, 0x4c, 0x17, 0xd0],
            commit_timestamp: Some("2024-06-18T11:30:45Z".parse().unwrap()),
        };
        let json = serde_json::to_value(&checkpoint).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "replay_id": "00114c17d0",
                "commit_timestamp": "2024-06-18T11:30:45Z"
            })
        );
        let back: Checkpoint = serde_json::from_value(json).unwrap();
        assert_eq!(back, checkpoint);
    }

    #[test]
    fn a_checkpoint_with_bad_hex_is_refused() {
        for bad in ["0", "zz", "0é"] {
            let text = format!(r#"{{"replay_id":"{bad}","commit_timestamp":null}}"#);
            assert!(
                serde_json::from_str::<Checkpoint>(&text).is_err(),
                "{bad:?} read as a replay id"
            );
        }
    }

    #[test]
    fn the_checkpoint_reader_sees_only_committed_transactions() {
        let client = checkpoint_reader_config(&KafkaConfig::default());
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.partition.eof"), Some("true"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
    }

    #[tokio::test]
    async fn transactional_mode_needs_an_id() {
        let err = TransactionalPublisher::start(&KafkaConfig::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, TransactionError::NoTransactionalId), "{err}");
    }
}
