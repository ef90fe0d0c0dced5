//! The subscriber's Kafka side against librdkafka's in-process mock cluster: topic set-up,
//! the record an event becomes, dead letters, the frontier fed by real confirmations, and
//! transactional batches with their checkpoint.
//!
//! The mock has no `CreateTopics` API, so topic creation is exercised through a
//! [`TopicCreator`] that asks the mock to create the topic, and the Admin API path is exercised
//! where the mock refuses it (creation failing must name the topic).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use usersync::kafka::topics::partition_count;
use usersync::kafka::{
    ChangePublisher, Checkpoint, Creation, DeadLetter, DeliveryFrontier, KafkaConfig, TopicCreator,
    TopicSpec, TransactionalPublisher, read_checkpoint,
};
use usersync::model::event::UserChange;

const SHORT: Duration = Duration::from_secs(10);

/// The example of docs/event-schema.md.
const EXAMPLE: &str = r#"{
  "schema": "user_change.v1",
  "event_id": "sf:00D5g000004ZbcdEAC:0055f00000GBZR4AAP:0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42:1",
  "source": "salesforce",
  "org_id": "00D5g000004ZbcdEAC",
  "user_id": "0055f00000GBZR4AAP",
  "change": "update",
  "changed_fields": ["IsActive", "Title", "LastModifiedDate"],
  "user": {
    "email": "olga.brown@example.com",
    "email_normalized": "olga.brown@example.com",
    "username": "olga.brown@example.com.prod",
    "first_name": "Olga",
    "last_name": "Brown",
    "title": "Former Account Executive",
    "is_active": false,
    "created_date": "2024-01-09T17:02:11Z",
    "last_modified_date": "2024-06-18T11:30:45Z"
  },
  "origin": {
    "transport": "pubsub",
    "topic": "/data/UserChangeEvent",
    "replay_id": "000000000114c17d0000",
    "schema_id": "93etK5psDNYN7fkR6LeDVw",
    "change_type": "UPDATE",
    "transaction_key": "0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42",
    "sequence_number": 1,
    "commit_timestamp": "2024-06-18T11:30:45Z",
    "commit_number": 1100662289041,
    "commit_user": "0055f000005mc66AAA",
    "change_origin": "com/salesforce/api/rest/61.0;client=HRSync"
  },
  "observed_at": "2024-06-18T11:30:46.120Z"
}"#;

/// The example, changed by `edit`, parsed and validated.
fn event(edit: impl FnOnce(&mut Value)) -> UserChange {
    let mut value: Value = serde_json::from_str(EXAMPLE).unwrap();
    edit(&mut value);
    UserChange::from_json(value.to_string().as_bytes()).expect("a valid user_change.v1")
}

/// The example as the `sequence`-th change of one transaction, for `email`.
fn change(sequence: i64, email: &str) -> UserChange {
    event(|v| {
        let id = format!(
            "sf:00D5g000004ZbcdEAC:0055f00000GBZR4AAP:0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42:{sequence}"
        );
        v["event_id"] = id.into();
        v["origin"]["sequence_number"] = sequence.into();
        v["user"]["email"] = email.into();
        v["user"]["email_normalized"] = email.trim().to_lowercase().into();
    })
}

fn config(mock: &MockCluster<'_, DefaultProducerContext>) -> KafkaConfig {
    KafkaConfig {
        brokers: mock.bootstrap_servers(),
        partitions: 6,
        message_timeout: Duration::from_millis(5_000),
        ..KafkaConfig::default()
    }
}

/// Creates topics the way the mock can: through its own call, not the Admin API.
struct MockTopics<'a>(&'a MockCluster<'static, DefaultProducerContext>);

impl TopicCreator for MockTopics<'_> {
    fn create(
        &self,
        spec: &TopicSpec,
    ) -> impl Future<Output = Result<Creation, KafkaError>> + Send {
        let result = match self
            .0
            .create_topic(&spec.name, spec.partitions, spec.replication_factor)
        {
            Ok(()) => Ok(Creation::Created),
            Err(KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok(Creation::AlreadyExists)
            }
            Err(e) => Err(e),
        };
        std::future::ready(result)
    }
}

fn consumer(brokers: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-producer-test")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("the consumer starts")
}

/// Reads `count` records from every partition of `topic`, from the beginning.
async fn read(
    brokers: &str,
    topic: &str,
    count: usize,
    extra: &[(&str, &str)],
) -> Vec<OwnedMessage> {
    let consumer = consumer(brokers, extra);
    let partitions = partition_count(consumer.client(), topic, SHORT)
        .unwrap()
        .expect("the topic exists");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut got = Vec::new();
    while got.len() < count {
        let message = tokio::time::timeout(SHORT, consumer.recv())
            .await
            .expect("the records arrive")
            .unwrap();
        got.push(message.detach());
    }
    got
}

fn headers(message: &OwnedMessage) -> Vec<(String, String)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn topics_are_created_with_the_configured_partitions() {
    let mock = MockCluster::new(1).unwrap();
    let config = config(&mock);
    let publisher = ChangePublisher::new(&config).unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
    for topic in [&config.topic, &config.dead_letter_topic] {
        assert_eq!(partitions_of(&config, topic), Some(6), "{topic}");
    }
    // A second start finds them and creates nothing.
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
}

/// The partition count of `topic` as a separate client sees it; `None` when it is missing.
fn partitions_of(config: &KafkaConfig, topic: &str) -> Option<usize> {
    let reader: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .unwrap();
    partition_count(reader.client(), topic, SHORT).unwrap()
}

#[tokio::test]
async fn a_missing_topic_stops_the_start_when_creation_is_off() {
    let mock = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        create_topics: false,
        ..config(&mock)
    };
    mock.create_topic(&config.dead_letter_topic, 6, 1).unwrap();
    let publisher = ChangePublisher::new(&config).unwrap();
    let text = publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("usersync.user-changes.v1"), "{text}");
    assert!(text.contains(&config.brokers), "{text}");
    assert!(text.contains("kafka.create_topics"), "{text}");
    assert_eq!(
        partitions_of(&config, &config.topic),
        None,
        "checking did not create the topic"
    );

    mock.create_topic(&config.topic, 6, 1).unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .expect("existing topics need no creation");
}

#[tokio::test]
async fn a_refused_creation_names_the_topic_and_the_upstream_error() {
    // The mock cluster does not implement the Admin API's CreateTopics, like a broker that
    // refuses it: the real creator's failure must say which topic and why.
    let mock = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        message_timeout: Duration::from_millis(2_000),
        ..config(&mock)
    };
    let publisher = ChangePublisher::new(&config).unwrap();
    let text = publisher.ensure_topics().await.unwrap_err().to_string();
    assert!(
        text.contains("cannot create Kafka topic usersync.user-changes.v1"),
        "{text}"
    );
    assert!(text.contains(&config.brokers), "{text}");
}

#[tokio::test]
async fn a_published_event_reads_back_with_its_key_headers_and_value() {
    let mock = MockCluster::new(1).unwrap();
    let config = config(&mock);
    let publisher = ChangePublisher::new(&config).unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
    let sent = event(|_| {});
    let delivered = publisher.publish(&sent).await.unwrap().await.unwrap();

    let got = read(&config.brokers, &config.topic, 1, &[]).await;
    let message = &got[0];
    assert_eq!(message.partition(), delivered.partition);
    assert_eq!(message.offset(), delivered.offset);
    assert_eq!(message.key(), Some(&b"olga.brown@example.com"[..]));
    assert_eq!(
        headers(message),
        [
            ("schema", "user_change.v1"),
            ("event_id", sent.event_id.as_str()),
            ("source", "salesforce"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let back = UserChange::from_json(message.payload().unwrap()).unwrap();
    assert_eq!(back, sent);
}

#[tokio::test]
async fn one_email_one_partition() {
    let mock = MockCluster::new(1).unwrap();
    let config = config(&mock);
    let publisher = ChangePublisher::new(&config).unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
    // The same person under differently written emails, and other people around them.
    let spellings = [
        "olga.brown@example.com",
        "Olga.Brown@Example.com ",
        " OLGA.BROWN@EXAMPLE.COM",
    ];
    let others = (0..12).map(|n| format!("user{n}@example.com"));
    let mut olga = HashSet::new();
    let mut all = HashSet::new();
    let mut sequence = 0;
    for email in spellings.iter().map(|s| s.to_string()).chain(others) {
        sequence += 1;
        let change = change(sequence, &email);
        let delivered = publisher.publish(&change).await.unwrap().await.unwrap();
        if change.kafka_key() == "olga.brown@example.com" {
            olga.insert(delivered.partition);
        }
        all.insert(delivered.partition);
    }
    assert_eq!(
        olga.len(),
        1,
        "every spelling of one email on one partition"
    );
    assert!(
        all.len() > 1,
        "different emails spread over partitions: {all:?}"
    );
}

#[tokio::test]
async fn a_dead_letter_keeps_the_raw_bytes_and_the_reason() {
    let mock = MockCluster::new(1).unwrap();
    let config = config(&mock);
    let publisher = ChangePublisher::new(&config).unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
    let raw = b"\x02\xff not avro \x00";
    publisher
        .dead_letter(DeadLetter {
            key: "000000000114c17d0000",
            raw,
            reason: "payload: the Avro datum ends early",
            source: "salesforce",
            context: vec![
                ("schema_id", "93etK5psDNYN7fkR6LeDVw".into()),
                ("replay_id", "000000000114c17d0000".into()),
                ("topic", "/data/UserChangeEvent".into()),
            ],
        })
        .await
        .unwrap();

    let got = read(&config.brokers, &config.dead_letter_topic, 1, &[]).await;
    let message = &got[0];
    assert_eq!(message.payload(), Some(&raw[..]));
    assert_eq!(message.key(), Some(&b"000000000114c17d0000"[..]));
    let headers: BTreeMap<String, String> = headers(message).into_iter().collect();
    assert_eq!(headers["reason"], "payload: the Avro datum ends early");
    assert_eq!(headers["source"], "salesforce");
    assert_eq!(headers["schema_id"], "93etK5psDNYN7fkR6LeDVw");
    assert_eq!(headers["topic"], "/data/UserChangeEvent");
}

#[tokio::test]
async fn an_unwritable_dead_letter_is_an_error() {
    let mock = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        message_timeout: Duration::from_millis(500),
        ..config(&mock)
    };
    // The topic is never created and producers do not auto-create, so nothing confirms it.
    let publisher = ChangePublisher::new(&config).unwrap();
    let text = publisher
        .dead_letter(DeadLetter {
            key: "0001",
            raw: b"x",
            reason: "test",
            source: "salesforce",
            context: vec![],
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("dead letter 0001"), "{text}");
    assert!(text.contains(&config.dead_letter_topic), "{text}");
}

#[tokio::test]
async fn the_frontier_moves_only_on_real_confirmations() {
    let mock = MockCluster::new(1).unwrap();
    let config = config(&mock);
    let publisher = ChangePublisher::new(&config).unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
    let mut frontier = DeliveryFrontier::new();

    // Replay 1 fans out to two users, replay 2 to one; a keepalive names replay 3.
    let mut pending = Vec::new();
    let mut sequence = 0;
    for (replay, users) in [(1u8, 2), (2, 1)] {
        let ids = frontier.register(replay, users);
        for id in ids {
            sequence += 1;
            let change = change(sequence, &format!("user{sequence}@example.com"));
            pending.push((id, publisher.publish(&change).await.unwrap()));
        }
    }
    frontier.register(3, 0);
    assert_eq!(frontier.advance(), None, "nothing is confirmed yet");
    assert_eq!(frontier.in_flight(), 3);

    // Confirmations are taken newest first, the worst order for the checkpoint.
    let (last_id, last) = pending.pop().unwrap();
    last.await.unwrap();
    frontier.confirm(last_id).unwrap();
    assert_eq!(
        frontier.advance(),
        None,
        "replay 2 is confirmed but replay 1 is not"
    );
    for (id, delivery) in pending.into_iter().rev() {
        delivery.await.unwrap();
        frontier.confirm(id).unwrap();
    }
    assert_eq!(
        frontier.advance(),
        Some(3),
        "everything up to the keepalive"
    );

    // A record Kafka does not take holds its position back.
    let broken = KafkaConfig {
        topic: "never-created".into(),
        message_timeout: Duration::from_millis(500),
        ..config.clone()
    };
    let failing = ChangePublisher::new(&broken).unwrap();
    let id = frontier.register(4, 1)[0];
    let outcome = failing
        .publish(&change(99, "late@example.com"))
        .await
        .unwrap()
        .await;
    assert!(outcome.is_err());
    frontier.fail(id).unwrap();
    frontier.register(5, 0);
    assert_eq!(frontier.advance(), None, "replay 4 was not written");
    publisher.flush(SHORT).unwrap();
}

#[tokio::test]
async fn a_committed_batch_is_visible_with_its_checkpoint() {
    let mock = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        transactional_id: Some("usersync-test-committed".into()),
        ..config(&mock)
    };
    let publisher = TransactionalPublisher::start(&config).await.unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();
    assert_eq!(partitions_of(&config, &config.checkpoint_topic), Some(1));
    assert_eq!(
        read_checkpoint(&config, "/data/UserChangeEvent", SHORT)
            .await
            .unwrap(),
        None,
        "no batch yet"
    );

    let events = [change(1, "a@example.com"), change(2, "b@example.com")];
    let first = Checkpoint {
        replay_id: vec![0x00, 0x11, 0x4c, 0x17],
        commit_timestamp: Some("2024-06-18T11:30:45Z".parse().unwrap()),
    };
    let delivered = publisher
        .publish_batch("/data/UserChangeEvent", &events, Some(&first))
        .await
        .unwrap();
    assert_eq!(delivered.len(), 2);
    let second = Checkpoint {
        replay_id: vec![0x00, 0x11, 0x4c, 0x18],
        commit_timestamp: None,
    };
    publisher
        .publish_batch("/data/UserChangeEvent", &[], Some(&second))
        .await
        .unwrap();
    let other = Checkpoint {
        replay_id: vec![0x99],
        commit_timestamp: None,
    };
    publisher
        .publish_batch("/event/Other__e", &[], Some(&other))
        .await
        .unwrap();
    // Events without a position (an initial load's snapshots) leave the checkpoint alone.
    let unplaced = [change(3, "c@example.com")];
    publisher
        .publish_batch("/data/UserChangeEvent", &unplaced, None)
        .await
        .unwrap();

    let got = read(
        &config.brokers,
        &config.topic,
        3,
        &[("isolation.level", "read_committed")],
    )
    .await;
    let ids: HashSet<String> = got
        .iter()
        .map(|m| {
            UserChange::from_json(m.payload().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    assert_eq!(
        ids,
        events
            .iter()
            .chain(&unplaced)
            .map(|e| e.event_id.clone())
            .collect::<HashSet<_>>()
    );
    assert_eq!(
        read_checkpoint(&config, "/data/UserChangeEvent", SHORT)
            .await
            .unwrap(),
        Some(second),
        "the last checkpoint under the topic's key"
    );
    assert_eq!(
        read_checkpoint(&config, "/event/Other__e", SHORT)
            .await
            .unwrap(),
        Some(other)
    );
}

/// What the abort path owes: the batch fails as aborted, naming the step, and the producer
/// goes on committing. Whether a `read_committed` consumer then skips the aborted records is
/// the broker's part, and the mock cluster does not do it (its Fetch reports no aborted
/// transactions and a last stable offset equal to the high watermark), so that half needs a
/// real broker.
#[tokio::test]
async fn an_aborted_batch_fails_and_the_next_one_commits() {
    let mock = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        transactional_id: Some("usersync-test-aborted".into()),
        ..config(&mock)
    };
    let publisher = TransactionalPublisher::start(&config).await.unwrap();
    publisher
        .ensure_topics_with(&MockTopics(&mock))
        .await
        .unwrap();

    // The coordinator refuses the first commit: the batch must be aborted.
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN],
    );
    let refused = Checkpoint {
        replay_id: vec![0x01],
        commit_timestamp: None,
    };
    let err = publisher
        .publish_batch(
            "/data/UserChangeEvent",
            &[change(1, "a@example.com")],
            Some(&refused),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("batch for /data/UserChangeEvent aborted"),
        "{text}"
    );
    assert!(text.contains("commit_transaction"), "{text}");
    assert!(
        !text.contains("abort failed"),
        "the abort itself went through: {text}"
    );

    let next = Checkpoint {
        replay_id: vec![0x02],
        commit_timestamp: None,
    };
    publisher
        .publish_batch(
            "/data/UserChangeEvent",
            &[change(2, "b@example.com")],
            Some(&next),
        )
        .await
        .expect("the producer is usable after an abort");
    assert_eq!(
        read_checkpoint(&config, "/data/UserChangeEvent", SHORT)
            .await
            .unwrap(),
        Some(next)
    );
}
