//! The topics usersync writes to, checked (and created when allowed) before the first send.
//!
//! Producers run with `allow.auto.create.topics=false`: a broker that auto-creates would make
//! the topic with its own default partition count, and the partition count decides which
//! partition each email lands on. So a missing topic is created here with the configured
//! partitions, or, when creation is off, start fails with the topic and brokers named, before
//! a single event is read from Salesforce.
//!
//! Creation goes through [`TopicCreator`] so it can be exercised without a real broker:
//! librdkafka's mock cluster has no `CreateTopics` API, only its own `create_topic` call.

use std::future::Future;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::client::{self, ReachError};
use crate::config::KafkaConfig;

/// One topic usersync needs, and how to create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level settings, e.g. `cleanup.policy=compact` for the checkpoint topic.
    pub settings: Vec<(&'static str, &'static str)>,
}

impl TopicSpec {
    /// The event topic and the dead-letter topic, with the configured partitions.
    pub fn for_events(config: &KafkaConfig) -> Vec<TopicSpec> {
        [&config.topic, &config.dead_letter_topic]
            .into_iter()
            .map(|name| TopicSpec {
                name: name.clone(),
                partitions: config.partitions,
                replication_factor: config.replication_factor,
                settings: Vec::new(),
            })
            .collect()
    }

    /// The checkpoint topic of transactional mode: compacted, because only the last checkpoint
    /// of each Salesforce topic matters, and one partition, because it holds a handful of keys
    /// and is read whole at start.
    pub fn for_checkpoints(config: &KafkaConfig) -> TopicSpec {
        TopicSpec {
            name: config.checkpoint_topic.clone(),
            partitions: 1,
            replication_factor: config.replication_factor,
            settings: vec![("cleanup.policy", "compact")],
        }
    }
}

/// What creating a topic found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    Created,
    /// Someone else created it in the meantime; as good as created.
    AlreadyExists,
}

/// Creates one topic on the cluster.
pub trait TopicCreator {
    fn create(&self, spec: &TopicSpec)
    -> impl Future<Output = Result<Creation, KafkaError>> + Send;
}

/// Creates topics with the Kafka Admin API.
pub struct AdminTopicCreator {
    admin: AdminClient<DefaultClientContext>,
    timeout: Duration,
}

impl AdminTopicCreator {
    pub fn new(config: &KafkaConfig) -> Result<Self, TopicError> {
        let admin = client::create(config, &client::base_config(config)).map_err(|source| {
            TopicError::Client {
                brokers: config.brokers.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(Self {
            admin,
            timeout: config.message_timeout,
        })
    }
}

impl TopicCreator for AdminTopicCreator {
    async fn create(&self, spec: &TopicSpec) -> Result<Creation, KafkaError> {
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        );
        for (key, value) in &spec.settings {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = self.admin.create_topics([&topic], &options).await?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(Creation::Created),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Creation::AlreadyExists),
            Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
            None => Err(KafkaError::AdminOpCreation(format!(
                "the broker answered nothing for topic {}",
                spec.name
            ))),
        }
    }
}

/// Why the topics are not ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Unreachable(#[from] ReachError),
    #[error("cannot create a Kafka client for brokers {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot read the metadata of Kafka topic {topic} from brokers {brokers}: {source}")]
    Metadata {
        topic: String,
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error(
        "Kafka topic {topic} does not exist on brokers {brokers} and kafka.create_topics is \
         false: create it ({partitions} partitions) or set kafka.create_topics = true"
    )]
    Missing {
        topic: String,
        brokers: String,
        partitions: i32,
    },
    #[error("cannot create Kafka topic {topic} on brokers {brokers}: {source}")]
    Create {
        topic: String,
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
}

/// The partition count of `topic`, or `None` when the cluster does not have it.
pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error() {
        None => Ok(Some(found.partitions().len())),
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Ok(None)
        }
        Some(code) => Err(KafkaError::MetadataFetch(code.into())),
    }
}

/// Makes sure every topic in `specs` exists: first that the brokers answer at all (naming
/// their complaint when not), then each topic through `client`'s metadata, creating a missing
/// one with `creator` when `config.create_topics` allows.
pub async fn ensure<C: ClientContext>(
    client: &Client<C>,
    creator: &impl TopicCreator,
    config: &KafkaConfig,
    specs: &[TopicSpec],
) -> Result<(), TopicError> {
    client::reach(config).await?;
    let timeout = config.message_timeout;
    for spec in specs {
        let found = partition_count(client, &spec.name, timeout).map_err(|source| {
            TopicError::Metadata {
                topic: spec.name.clone(),
                brokers: config.brokers.clone(),
                source: Box::new(source),
            }
        })?;
        match found {
            Some(partitions) => {
                if partitions != spec.partitions as usize {
                    tracing::warn!(
                        topic = %spec.name,
                        partitions,
                        configured = spec.partitions,
                        "the topic exists with another partition count than configured; using it as it is"
                    );
                }
            }
            None if !config.create_topics => {
                return Err(TopicError::Missing {
                    topic: spec.name.clone(),
                    brokers: config.brokers.clone(),
                    partitions: spec.partitions,
                });
            }
            None => {
                let creation = creator
                    .create(spec)
                    .await
                    .map_err(|source| TopicError::Create {
                        topic: spec.name.clone(),
                        brokers: config.brokers.clone(),
                        source: Box::new(source),
                    })?;
                tracing::info!(
                    topic = %spec.name,
                    partitions = spec.partitions,
                    replication_factor = spec.replication_factor,
                    ?creation,
                    "Kafka topic ready"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_topics_take_the_configured_shape_and_checkpoints_are_compacted() {
        let config = KafkaConfig {
            partitions: 6,
            replication_factor: 3,
            ..KafkaConfig::default()
        };
        let specs = TopicSpec::for_events(&config);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["usersync.user-changes.v1", "usersync.user-changes.dlq"]
        );
        assert!(
            specs
                .iter()
                .all(|s| s.partitions == 6 && s.replication_factor == 3)
        );
        let checkpoints = TopicSpec::for_checkpoints(&config);
        assert_eq!(checkpoints.name, "usersync.subscriber-checkpoints");
        assert_eq!(checkpoints.partitions, 1);
        assert_eq!(checkpoints.settings, [("cleanup.policy", "compact")]);
    }
}
