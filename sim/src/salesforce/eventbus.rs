//! The org's retained change event stream, shared by the Pub/Sub and CometD endpoints.
//!
//! Each published [`ChangeRecord`] is encoded once with the *current* writer schema and kept
//! with its replay position until the retention window (72 hours by default; docs/salesforce.md,
//! "Pub/Sub: replay ids") passes it.
//! What a subscriber can ask for follows the real rules:
//!
//! - replay ids are opaque 10-byte values (the size seen in the field; docs/salesforce.md,
//!   "Pub/Sub: replay ids"): the position
//!   as a big-endian u64 followed by two zero bytes. Positions are not contiguous: the event
//!   bus interleaves other orgs' traffic, which also moves [`EventBus::latest`] ahead of the
//!   last event of this org (the "replay tightening" a keepalive reports);
//! - `CUSTOM` resumes *after* the given id. An id whose next events were purged, one from
//!   the future, or bytes that are no replay id at all are refused with the trailer codes of
//!   docs/salesforce.md, "Pub/Sub: errors" ([`ReplayRefusal`]);
//! - CometD uses the same positions as plain numbers (`-1` newest, `-2` oldest retained).

use std::collections::VecDeque;

use rand::Rng;

use super::cdc;
use super::directory::ChangeRecord;
use super::schema::SchemaVersion;

/// 72 hours, in milliseconds.
pub const DEFAULT_RETENTION_MS: i64 = 72 * 3600 * 1000;

/// One retained event.
#[derive(Debug, Clone)]
pub struct BusEvent {
    pub position: u64,
    pub schema_id: String,
    pub change: ChangeRecord,
    /// The Pub/Sub payload, encoded with `schema_id`'s schema when it was published.
    pub avro: Vec<u8>,
    pub published_ms: i64,
}

impl BusEvent {
    pub fn replay_id(&self) -> Vec<u8> {
        replay_bytes(self.position)
    }
}

/// Why a requested start position is refused, with the `error-code` suffix it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// Not a replay id this bus ever issued (wrong size or shape): `validation.failed`.
    Malformed,
    /// Outside the retention window or ahead of the stream: `corrupted`.
    Unavailable,
}

impl ReplayRefusal {
    pub fn error_code(self) -> &'static str {
        match self {
            ReplayRefusal::Malformed => {
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"
            }
            ReplayRefusal::Unavailable => {
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
            }
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ReplayRefusal::Malformed => {
                "The Replay ID validation failed. Ensure that the Replay ID is valid."
            }
            ReplayRefusal::Unavailable => {
                "The Replay ID validation failed. Ensure that the replay_id field value in \
                 FetchRequest is valid and refers to an event that is within the retention window."
            }
        }
    }
}

/// The retained stream and the schema versions its events were written with.
#[derive(Debug)]
pub struct EventBus {
    events: VecDeque<BusEvent>,
    /// The highest position handed out, this org's or another's.
    latest: u64,
    /// Every position at or below this was purged (or predates the org).
    floor: u64,
    pub retention_ms: i64,
    versions: Vec<SchemaVersion>,
    custom_fields: Vec<String>,
}

impl Default for EventBus {
    fn default() -> Self {
        let start = 1_104_717;
        EventBus {
            events: VecDeque::new(),
            latest: start,
            floor: start,
            retention_ms: DEFAULT_RETENTION_MS,
            versions: vec![SchemaVersion::build(&[])],
            custom_fields: Vec::new(),
        }
    }
}

/// The 10-byte replay id of a position.
pub fn replay_bytes(position: u64) -> Vec<u8> {
    let mut bytes = position.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

/// The position of a replay id this bus issued.
pub fn position_of(replay_id: &[u8]) -> Option<u64> {
    if replay_id.len() != 10 || replay_id[8..] != [0, 0] {
        return None;
    }
    Some(u64::from_be_bytes(replay_id[..8].try_into().ok()?))
}

impl EventBus {
    /// The schema new events are written with.
    pub fn current_schema(&self) -> &SchemaVersion {
        self.versions.last().expect("there is always one version")
    }

    pub fn schema(&self, id: &str) -> Option<&SchemaVersion> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// Adds a custom string field (as an admin would in Setup): later events use a new schema
    /// with a new id; retained events keep theirs. Returns the new schema id.
    pub fn add_custom_field(&mut self, name: &str) -> String {
        self.custom_fields.push(name.to_owned());
        self.versions
            .push(SchemaVersion::build(&self.custom_fields));
        self.current_schema().id.clone()
    }

    /// Encodes and retains `change`; returns its position.
    pub fn publish(&mut self, change: ChangeRecord, now_ms: i64) -> u64 {
        self.purge(now_ms);
        self.latest += rand::rng().random_range(1..=3);
        let version = self.current_schema();
        let event = BusEvent {
            position: self.latest,
            schema_id: version.id.clone(),
            avro: cdc::to_avro(&change, version),
            change,
            published_ms: now_ms,
        };
        self.events.push_back(event);
        self.latest
    }

    /// Fault: retains `change` with its payload cut short, as a corrupted delivery would be.
    pub fn publish_truncated(&mut self, change: ChangeRecord, now_ms: i64) -> u64 {
        let position = self.publish(change, now_ms);
        if let Some(event) = self.events.back_mut() {
            let keep = event.avro.len() / 2;
            event.avro.truncate(keep);
        }
        position
    }

    /// Other orgs' traffic moves the stream's head without events for this org.
    pub fn foreign_traffic(&mut self, positions: u64) {
        self.latest += positions;
    }

    /// The newest position of the stream.
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// The position before the oldest retained event.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Drops events older than the retention window.
    pub fn purge(&mut self, now_ms: i64) {
        while let Some(oldest) = self.events.front() {
            if now_ms - oldest.published_ms < self.retention_ms {
                break;
            }
            self.floor = oldest.position;
            self.events.pop_front();
        }
    }

    /// Fault: the whole retention window passes at once; nothing retained is replayable.
    pub fn expire_replay_window(&mut self) {
        self.events.clear();
        self.floor = self.latest;
    }

    /// Where a subscription that resumes after `replay_id` starts, or why it cannot.
    pub fn resume_after(&self, replay_id: &[u8]) -> Result<u64, ReplayRefusal> {
        let position = position_of(replay_id).ok_or(ReplayRefusal::Malformed)?;
        if position < self.floor || position > self.latest {
            return Err(ReplayRefusal::Unavailable);
        }
        Ok(position)
    }

    /// Up to `max` retained events after `position`, oldest first.
    pub fn after(&self, position: u64, max: usize) -> Vec<BusEvent> {
        self.events
            .iter()
            .filter(|e| e.position > position)
            .take(max)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn change(n: i64) -> ChangeRecord {
        ChangeRecord {
            change_type: "UPDATE",
            record_ids: vec!["005SIM000000002AAA".into()],
            change_origin: String::new(),
            transaction_key: format!("k{n}"),
            sequence_number: 1,
            commit_timestamp: n,
            commit_number: n,
            commit_user: "005SIM000000001AAA".into(),
            changed: vec!["LastModifiedDate".into()],
            nulled: Vec::new(),
            body: BTreeMap::from([("LastModifiedDate".to_owned(), n.into())]),
        }
    }

    #[test]
    fn replay_ids_are_ten_opaque_bytes() {
        assert_eq!(
            replay_bytes(1_104_717),
            [0, 0, 0, 0, 0, 0x10, 0xDB, 0x4D, 0, 0]
        );
        assert_eq!(position_of(&replay_bytes(42)), Some(42));
        assert_eq!(
            position_of(b"18098301"),
            None,
            "ASCII digits are no replay id"
        );
        assert_eq!(position_of(&42u64.to_be_bytes()), None, "8 bytes");
    }

    #[test]
    fn custom_resumes_after_the_id_and_refuses_purged_or_future_ones() {
        let mut bus = EventBus::default();
        let first = bus.publish(change(1), 0);
        let second = bus.publish(change(2), 0);
        let events = bus.after(bus.resume_after(&replay_bytes(first)).unwrap(), 100);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].position, second);
        assert_eq!(
            bus.resume_after(&replay_bytes(bus.latest() + 1)),
            Err(ReplayRefusal::Unavailable)
        );
        assert_eq!(bus.resume_after(b"12"), Err(ReplayRefusal::Malformed));
        bus.expire_replay_window();
        assert_eq!(
            bus.resume_after(&replay_bytes(first)),
            Err(ReplayRefusal::Unavailable)
        );
        assert!(bus.after(0, 100).is_empty());
        assert!(bus.resume_after(&replay_bytes(bus.latest())).is_ok());
    }

    #[test]
    fn retention_purges_old_events() {
        let mut bus = EventBus {
            retention_ms: 1000,
            ..EventBus::default()
        };
        let old = bus.publish(change(1), 0);
        bus.publish(change(2), 900);
        bus.purge(1500);
        assert_eq!(bus.len(), 1);
        assert_eq!(bus.floor(), old);
        assert!(
            bus.resume_after(&replay_bytes(old)).is_ok(),
            "nothing after it is lost"
        );
        assert_eq!(
            bus.resume_after(&replay_bytes(old - 1)),
            Err(ReplayRefusal::Unavailable)
        );
    }

    #[test]
    fn a_new_field_makes_a_new_schema_and_old_events_keep_theirs() {
        let mut bus = EventBus::default();
        bus.publish(change(1), 0);
        let old_id = bus.current_schema().id.clone();
        let new_id = bus.add_custom_field("Badge__c");
        bus.publish(change(2), 0);
        let events = bus.after(0, 10);
        assert_eq!(events[0].schema_id, old_id);
        assert_eq!(events[1].schema_id, new_id);
        assert!(bus.schema(&old_id).is_some() && bus.schema(&new_id).is_some());
    }

    #[test]
    fn foreign_traffic_moves_the_head_past_the_last_event() {
        let mut bus = EventBus::default();
        let last = bus.publish(change(1), 0);
        bus.foreign_traffic(5);
        assert_eq!(bus.latest(), last + 5);
        assert!(bus.after(bus.latest(), 10).is_empty());
    }
}
