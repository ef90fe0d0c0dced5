//! The subscriber's producer: `user_change.v1` events to their topic, undecodable records to
//! the dead-letter topic.
//!
//! Sending and confirmation are separate steps. [`ChangePublisher::publish`] only waits for
//! room in librdkafka's queue (the backpressure a slow broker should cause) and hands back a
//! [`PendingDelivery`]; the caller awaits that whenever it likes, typically feeding the result
//! to a [`DeliveryFrontier`](super::DeliveryFrontier), so one broker round trip is not paid per
//! event while the checkpoint still moves only past confirmed events.
//!
//! The producer is idempotent with `acks=all`: librdkafka's retries after a lost response do
//! not duplicate or reorder records within a partition, and a confirmation means every in-sync
//! replica has the record. Keys are murmur2-partitioned like the Java client, so tools outside
//! usersync agree on which partition an email lives in.
//!
//! A dead letter, unlike an event, is awaited on the spot: a record the stream cannot decode
//! is only safe to pass once it is written down somewhere a person can find it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::client;
use super::topics::{self, AdminTopicCreator, TopicCreator, TopicError, TopicSpec};
use crate::config::KafkaConfig;
use crate::model::event::{SCHEMA, UserChange};

/// Header names of an event record (docs/event-schema.md, "Kafka record").
pub const HEADER_SCHEMA: &str = "schema";
pub const HEADER_EVENT_ID: &str = "event_id";
pub const HEADER_SOURCE: &str = "source";
/// Header names of a dead letter.
pub const HEADER_REASON: &str = "reason";

/// Where Kafka put a confirmed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record did not reach Kafka. `record` names it: `event <event_id>` or
/// `dead letter <key>`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot create the Kafka producer for brokers {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("{record}: cannot encode it as JSON: {source}")]
    Encode {
        record: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{record}: the producer refused it for topic {topic}: {source}")]
    Enqueue {
        record: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("{record}: Kafka did not confirm it on topic {topic}: {source}")]
    Delivery {
        record: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("{record}: the producer was dropped before Kafka confirmed it on topic {topic}")]
    Abandoned { record: String, topic: String },
    #[error("{in_flight} records still unconfirmed after flushing for {timeout:?}: {source}")]
    Flush {
        in_flight: i32,
        timeout: Duration,
        #[source]
        source: Box<KafkaError>,
    },
}

/// Kafka's answer for one sent record, to be awaited without holding up the next send.
#[must_use = "a record counts as published only once its delivery is confirmed"]
pub struct PendingDelivery {
    inner: DeliveryFuture,
    record: String,
    topic: String,
}

impl PendingDelivery {
    /// What the record is: `event <event_id>` or `dead letter <key>`.
    pub fn record(&self) -> &str {
        &self.record
    }
}

impl Future for PendingDelivery {
    type Output = Result<Delivered, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(answer) => answer,
        };
        let record = std::mem::take(&mut self.record);
        let topic = std::mem::take(&mut self.topic);
        Poll::Ready(match answer {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((source, _message))) => Err(PublishError::Delivery {
                record,
                topic,
                source: Box::new(source),
            }),
            Err(_canceled) => Err(PublishError::Abandoned { record, topic }),
        })
    }
}

/// A record that could not become an event, for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// A stable key, e.g. the replay id as hex, so redeliveries of one record share a key.
    pub key: &'a str,
    /// The bytes as received.
    pub raw: &'a [u8],
    /// Why it was refused, in words a person can act on.
    pub reason: &'a str,
    /// What produced it, e.g. `salesforce`.
    pub source: &'a str,
    /// More headers after `reason` and `source`, e.g. `schema_id`, `replay_id`, `topic`.
    pub context: Vec<(&'a str, String)>,
}

/// The idempotent producer of `user_change.v1` events and dead letters.
pub struct ChangePublisher {
    producer: FutureProducer,
    config: KafkaConfig,
}

impl ChangePublisher {
    /// Creates the producer. It connects lazily; [`ChangePublisher::ensure_topics`] is the
    /// first call that needs the brokers.
    pub fn new(config: &KafkaConfig) -> Result<Self, PublishError> {
        let producer = client::create(config, &producer_config(config)).map_err(|source| {
            PublishError::Client {
                brokers: config.brokers.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(Self {
            producer,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Makes sure the event and dead-letter topics exist, creating them through the Admin API
    /// when `kafka.create_topics` allows.
    pub async fn ensure_topics(&self) -> Result<(), TopicError> {
        let creator = AdminTopicCreator::new(&self.config)?;
        self.ensure_topics_with(&creator).await
    }

    /// [`ChangePublisher::ensure_topics`] with another way to create topics.
    pub async fn ensure_topics_with(&self, creator: &impl TopicCreator) -> Result<(), TopicError> {
        topics::ensure(
            self.producer.client(),
            creator,
            &self.config,
            &TopicSpec::for_events(&self.config),
        )
        .await
    }

    /// Sends one event: key = [`UserChange::kafka_key`], value = its JSON, headers `schema`,
    /// `event_id` and `source`. Waits only while librdkafka's queue is full.
    pub async fn publish(&self, change: &UserChange) -> Result<PendingDelivery, PublishError> {
        let record = format!("event {}", change.event_id);
        let payload = serde_json::to_vec(change).map_err(|source| PublishError::Encode {
            record: record.clone(),
            source,
        })?;
        enqueue(
            &self.producer,
            &self.config.topic,
            &change.kafka_key(),
            &payload,
            change_headers(change),
            record,
            self.config.message_timeout,
        )
        .await
    }

    /// Writes a dead letter and waits for Kafka to confirm it.
    pub async fn dead_letter(&self, letter: DeadLetter<'_>) -> Result<Delivered, PublishError> {
        enqueue(
            &self.producer,
            &self.config.dead_letter_topic,
            letter.key,
            letter.raw,
            dead_letter_headers(&letter),
            format!("dead letter {}", letter.key),
            self.config.message_timeout,
        )
        .await?
        .await
    }

    /// Waits up to `timeout` for every sent record to be confirmed or failed; for shutdown,
    /// since dropping a librdkafka producer discards what is still queued.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer
            .flush(timeout)
            .map_err(|source| PublishError::Flush {
                in_flight: self.producer.in_flight_count(),
                timeout,
                source: Box::new(source),
            })
    }

    /// Records sent and not yet confirmed or failed.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// A fatal error of the idempotent producer (e.g. a broken sequence): the producer is
    /// unusable and must be recreated, resuming from the last checkpoint.
    pub fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.producer.client().fatal_error()
    }
}

/// The producer settings both modes share. Fixed settings come last so no extra property can
/// weaken them.
pub(super) fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = client::base_config(config);
    client
        .set("partitioner", "murmur2_random")
        .set("allow.auto.create.topics", "false")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        );
    client
}

/// The headers of an event record: exactly `schema`, `event_id`, `source`.
pub fn change_headers(change: &UserChange) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: HEADER_SCHEMA,
            value: Some(SCHEMA),
        })
        .insert(Header {
            key: HEADER_EVENT_ID,
            value: Some(change.event_id.as_str()),
        })
        .insert(Header {
            key: HEADER_SOURCE,
            value: Some(change.source.as_str()),
        })
}

fn dead_letter_headers(letter: &DeadLetter<'_>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(2 + letter.context.len())
        .insert(Header {
            key: HEADER_REASON,
            value: Some(letter.reason),
        })
        .insert(Header {
            key: HEADER_SOURCE,
            value: Some(letter.source),
        });
    for (key, value) in &letter.context {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    headers
}

/// Hands one record to librdkafka, waiting (up to `timeout`) while its queue is full.
pub(super) async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
    record: String,
    timeout: Duration,
) -> Result<PendingDelivery, PublishError> {
    let deadline = Instant::now() + timeout;
    let mut pending = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers);
    loop {
        match producer.send_result(pending) {
            Ok(inner) => {
                return Ok(PendingDelivery {
                    inner,
                    record,
                    topic: topic.to_string(),
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                pending = back;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((source, _)) => {
                return Err(PublishError::Enqueue {
                    record,
                    topic: topic.to_string(),
                    source: Box::new(source),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn event() -> UserChange {
        UserChange::from_json(crate::model::event::tests::DESIGN_EXAMPLE.as_bytes()).unwrap()
    }

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn an_event_carries_exactly_the_three_contract_headers() {
        let change = event();
        let got = pairs(&change_headers(&change));
        let want = [
            ("schema", "user_change.v1"),
            ("event_id", change.event_id.as_str()),
            ("source", "salesforce"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn a_dead_letter_leads_with_reason_and_source() {
        let letter = DeadLetter {
            key: "000000000114c17d0000",
            raw: b"\x00\x01",
            reason: "payload: not Avro",
            source: "salesforce",
            context: vec![("replay_id", "000000000114c17d0000".into())],
        };
        let got = pairs(&dead_letter_headers(&letter));
        assert_eq!(got[0], ("reason".into(), "payload: not Avro".into()));
        assert_eq!(got[1], ("source".into(), "salesforce".into()));
        assert_eq!(got[2], ("replay_id".into(), "000000000114c17d0000".into()));
    }

    #[test]
    fn the_delivery_promise_cannot_be_configured_away() {
        let mut config = KafkaConfig::default();
        config.properties.insert("acks".into(), "1".into());
        config
            .properties
            .insert("enable_idempotence".into(), "false".into());
        let client = producer_config(&config);
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("message.timeout.ms"), Some("30000"));
        assert_eq!(client.get("allow.auto.create.topics"), Some("false"));
    }
}
