//! The one place the processor tells Kafka how far it got.
//!
//! librdkafka has two ways to store an offset and they disagree by one: the legacy
//! `rd_kafka_offset_store` (rust-rdkafka's `store_offset`) stores the offset *plus one*,
//! `rd_kafka_offsets_store` (`store_offsets`) stores it as given. A committed offset names the
//! next record to read, so after processing the record at offset `n` the processor must end
//! up with `n + 1` committed. Every store goes through [`store_processed`], which uses the
//! as-given call with `n + 1`, so the rule is written once and tested once
//! (`tests/processor.rs` reads the committed position back from the broker).

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

/// The offset to commit once the record at `processed` is done: the next one to read.
pub fn next_to_read(processed: i64) -> Offset {
    Offset::Offset(processed + 1)
}

/// Marks the record at `offset` of `topic`/`partition` as processed; the background commit
/// takes it from there. A partition taken away by a rebalance answers `ERR__STATE`: that is
/// not an error here (the new owner reads the record again and skips it by `event_id`), so it
/// is logged and `Ok` is returned.
pub fn store_processed<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, next_to_read(offset))?;
    match consumer.store_offsets(&list) {
        Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
            tracing::info!(
                topic,
                partition,
                offset,
                "partition no longer assigned: its new owner reads this record again"
            );
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_offset_is_the_next_record_to_read() {
        assert_eq!(next_to_read(0), Offset::Offset(1));
        assert_eq!(next_to_read(41), Offset::Offset(42));
    }
}
