//! Transactional mode's bookkeeping: which events wait for the next commit, and which stream
//! position that commit may record as the checkpoint.
//!
//! In transactional mode nothing is sent until the end of a stream batch; then the batch's
//! events and the position after them are one Kafka transaction. The rule kept here is the
//! transactional counterpart of the [`DeliveryFrontier`](crate::kafka::DeliveryFrontier): a
//! position is recorded only together with every event read at or before it, so the checkpoint
//! a crash resumes from never passes an event that was not committed. A batch that grows past
//! its limit (a resync of many users) is committed in slices, and a slice
//! taken in the middle of one position's events carries no checkpoint.

use super::StreamPosition;
use crate::model::event::UserChange;

/// Events read but not yet committed, and the newest position they complete.
#[derive(Debug)]
pub struct PendingTransaction {
    events: Vec<UserChange>,
    position: Option<StreamPosition>,
    limit: usize,
}

/// What one commit holds.
#[derive(Debug, PartialEq)]
pub struct Slice {
    pub events: Vec<UserChange>,
    /// The checkpoint to commit with the events; `None` keeps the stored one.
    pub position: Option<StreamPosition>,
}

impl PendingTransaction {
    /// A slice is cut when `limit` events wait (at least one).
    pub fn new(limit: usize) -> PendingTransaction {
        PendingTransaction {
            events: Vec::new(),
            position: None,
            limit: limit.max(1),
        }
    }

    /// Adds events of a position not yet complete; hands back full slices to commit now,
    /// without a checkpoint.
    pub fn add(&mut self, events: Vec<UserChange>) -> Vec<Slice> {
        let mut full = Vec::new();
        for event in events {
            self.events.push(event);
            if self.events.len() >= self.limit {
                full.push(Slice {
                    events: std::mem::take(&mut self.events),
                    position: None,
                });
            }
        }
        full
    }

    /// Every event of `position` has been added: the next commit may record it. A position
    /// that is not placed yet (snapshots read before the stream was pinned) records nothing.
    pub fn passed(&mut self, position: StreamPosition) {
        if !position.is_unplaced() {
            self.position = Some(position);
        }
    }

    /// What the next commit holds, or `None` when there is nothing to commit.
    pub fn take(&mut self) -> Option<Slice> {
        if self.events.is_empty() && self.position.is_none() {
            return None;
        }
        Some(Slice {
            events: std::mem::take(&mut self.events),
            position: self.position.take(),
        })
    }

    /// Forgets everything: after a failed commit the stream is read again from the
    /// checkpoint, which still stands before these events.
    pub fn clear(&mut self) {
        self.events.clear();
        self.position = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::salesforce_id::SalesforceId;
    use crate::model::salesforce_user::SalesforceUser;
    use crate::salesforce::snapshot::{ReadPosition, snapshot};

    fn event(n: u8) -> UserChange {
        let user = SalesforceUser {
            id: SalesforceId::parse(&format!("0055f00000GBZR{n}")).unwrap(),
            email: Some(format!("user{n}@example.com")),
            username: None,
            first_name: None,
            last_name: None,
            title: None,
            is_active: true,
            created_date: None,
            last_modified_date: None,
            applied: None,
        };
        let org = SalesforceId::parse("00D5g000004ZbcdEAC").unwrap();
        snapshot(&user, &org, &ReadPosition::default(), chrono::Utc::now())
    }

    fn at(replay: u8) -> StreamPosition {
        StreamPosition {
            replay_id: vec![0, replay],
            commit_timestamp: None,
        }
    }

    #[test]
    fn a_position_is_committed_with_the_events_before_it() {
        let mut pending = PendingTransaction::new(100);
        assert_eq!(pending.take(), None, "nothing read, nothing to commit");
        assert!(pending.add(vec![event(1), event(2)]).is_empty());
        pending.passed(at(1));
        assert!(pending.add(vec![event(3)]).is_empty());
        pending.passed(at(2));
        let slice = pending.take().unwrap();
        assert_eq!(slice.events.len(), 3);
        assert_eq!(slice.position, Some(at(2)));
        assert_eq!(pending.take(), None);
    }

    #[test]
    fn a_keepalive_position_alone_is_committed() {
        let mut pending = PendingTransaction::new(100);
        pending.passed(at(7));
        assert_eq!(
            pending.take(),
            Some(Slice {
                events: vec![],
                position: Some(at(7))
            })
        );
    }

    #[test]
    fn snapshots_before_the_first_position_commit_without_a_checkpoint() {
        let mut pending = PendingTransaction::new(100);
        pending.add(vec![event(1)]);
        pending.passed(StreamPosition {
            replay_id: Vec::new(),
            commit_timestamp: None,
        });
        let slice = pending.take().unwrap();
        assert_eq!(slice.events.len(), 1);
        assert_eq!(slice.position, None);
    }

    #[test]
    fn a_large_position_is_cut_into_slices_that_carry_no_checkpoint() {
        let mut pending = PendingTransaction::new(2);
        let full = pending.add((1..=5).map(event).collect());
        assert_eq!(full.len(), 2);
        assert!(
            full.iter()
                .all(|s| s.events.len() == 2 && s.position.is_none())
        );
        pending.passed(at(9));
        let last = pending.take().unwrap();
        assert_eq!(
            last.events.len(),
            1,
            "the fifth event waits for its position"
        );
        assert_eq!(last.position, Some(at(9)));
    }

    #[test]
    fn clearing_forgets_events_and_position() {
        let mut pending = PendingTransaction::new(10);
        pending.add(vec![event(1)]);
        pending.passed(at(1));
        pending.clear();
        assert_eq!(pending.take(), None);
    }
}
