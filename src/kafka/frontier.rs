//! Which stream position the replay checkpoint may move to, given Kafka's confirmations.
//!
//! The subscriber sends records without waiting for each confirmation (waiting would cost one
//! broker round trip per user change), so confirmations come back in any order, and a record
//! can fail after later ones succeeded. The checkpoint must still never pass an event Kafka has
//! not confirmed: on a restart, Salesforce replays from the checkpoint, and anything past it
//! that was never written would be lost. This tracker is that rule, kept pure so it can be
//! tested on every order of confirmations.
//!
//! Records are registered in send order with the position they belong to. One CDC event that
//! names several users becomes several records of one position; a keepalive's
//! `latest_replay_id`, or an event that produced no record, is a position with none. A position
//! is reached when it and everything registered before it is confirmed.

use std::collections::VecDeque;
use std::fmt;

/// One registered record, as handed back by [`DeliveryFrontier::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(u64);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record #{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordState {
    InFlight,
    Confirmed,
    Failed,
}

/// A confirmation or failure that the frontier cannot place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    #[error("{0} was never registered")]
    Unknown(RecordId),
    #[error("{0} is already confirmed; it cannot fail now")]
    AlreadyConfirmed(RecordId),
}

/// Send-ordered records and the positions they belong to; see the module documentation.
#[derive(Debug)]
pub struct DeliveryFrontier<P> {
    /// The id of `records[0]`: every record before it is confirmed and passed.
    base: u64,
    /// The state of every record not yet passed, in send order.
    records: VecDeque<RecordState>,
    /// Positions not yet passed, with the id one past their last record.
    positions: VecDeque<(P, u64)>,
    in_flight: usize,
    failed: usize,
}

impl<P> Default for DeliveryFrontier<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> DeliveryFrontier<P> {
    pub fn new() -> Self {
        Self {
            base: 0,
            records: VecDeque::new(),
            positions: VecDeque::new(),
            in_flight: 0,
            failed: 0,
        }
    }

    /// Registers the next position with `records` records (0 for a position that produced
    /// none), returning their ids in order. Positions must be registered in stream order.
    pub fn register(&mut self, position: P, records: usize) -> Vec<RecordId> {
        let first = self.base + self.records.len() as u64;
        self.records
            .extend(std::iter::repeat_n(RecordState::InFlight, records));
        self.in_flight += records;
        let end = first + records as u64;
        self.positions.push_back((position, end));
        (first..end).map(RecordId).collect()
    }

    /// Kafka confirmed the record. Confirming twice is harmless.
    pub fn confirm(&mut self, id: RecordId) -> Result<(), FrontierError> {
        let Some(index) = self.index(id)? else {
            return Ok(()); // Passed already, so confirmed before.
        };
        match self.records[index] {
            RecordState::InFlight => self.in_flight -= 1,
            RecordState::Failed => self.failed -= 1,
            RecordState::Confirmed => return Ok(()),
        }
        self.records[index] = RecordState::Confirmed;
        Ok(())
    }

    /// Kafka did not take the record: its position is not reached until the record is sent
    /// again ([`DeliveryFrontier::resend`]) and confirmed.
    pub fn fail(&mut self, id: RecordId) -> Result<(), FrontierError> {
        let index = self.index(id)?.ok_or(FrontierError::AlreadyConfirmed(id))?;
        match self.records[index] {
            RecordState::InFlight => self.in_flight -= 1,
            RecordState::Failed => return Ok(()),
            RecordState::Confirmed => return Err(FrontierError::AlreadyConfirmed(id)),
        }
        self.records[index] = RecordState::Failed;
        self.failed += 1;
        Ok(())
    }

    /// A failed record was sent again and is in flight once more, under the same id.
    pub fn resend(&mut self, id: RecordId) -> Result<(), FrontierError> {
        let index = self.index(id)?.ok_or(FrontierError::AlreadyConfirmed(id))?;
        match self.records[index] {
            RecordState::Failed => {
                self.failed -= 1;
                self.in_flight += 1;
                self.records[index] = RecordState::InFlight;
                Ok(())
            }
            RecordState::InFlight => Ok(()),
            RecordState::Confirmed => Err(FrontierError::AlreadyConfirmed(id)),
        }
    }

    /// The newest position not returned before such that it, and every record registered up
    /// to it, is confirmed; `None` when there is no such new position. Positions it returns are
    /// forgotten.
    pub fn advance(&mut self) -> Option<P> {
        while self.records.front() == Some(&RecordState::Confirmed) {
            self.records.pop_front();
            self.base += 1;
        }
        let mut reached = None;
        while self
            .positions
            .front()
            .is_some_and(|(_, end)| *end <= self.base)
        {
            reached = self.positions.pop_front().map(|(position, _)| position);
        }
        reached
    }

    /// Records sent and neither confirmed nor failed: what a caller bounds to limit memory.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Records that failed and were not sent again.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// The oldest failed record and the position it holds back.
    pub fn first_failure(&self) -> Option<(RecordId, &P)> {
        let index = self
            .records
            .iter()
            .position(|s| *s == RecordState::Failed)?;
        let id = self.base + index as u64;
        let (position, _) = self.positions.iter().find(|(_, end)| *end > id)?;
        Some((RecordId(id), position))
    }

    /// Positions registered and not yet returned by [`DeliveryFrontier::advance`].
    pub fn pending_positions(&self) -> usize {
        self.positions.len()
    }

    /// Where the record is in `records`, `None` when it is already passed (and so was
    /// confirmed).
    fn index(&self, id: RecordId) -> Result<Option<usize>, FrontierError> {
        match id.0.checked_sub(self.base) {
            None => Ok(None),
            Some(offset) if (offset as usize) < self.records.len() => Ok(Some(offset as usize)),
            Some(_) => Err(FrontierError::Unknown(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_position_waits_for_every_earlier_record() {
        let mut f = DeliveryFrontier::new();
        let a = f.register("a", 1);
        let b = f.register("b", 1);
        let c = f.register("c", 1);
        f.confirm(c[0]).unwrap();
        f.confirm(b[0]).unwrap();
        assert_eq!(
            f.advance(),
            None,
            "a is not confirmed, so nothing is reached"
        );
        f.confirm(a[0]).unwrap();
        assert_eq!(f.advance(), Some("c"), "the newest reached position wins");
        assert_eq!(f.advance(), None, "nothing new");
        assert_eq!(f.in_flight(), 0);
        assert_eq!(f.pending_positions(), 0);
    }

    #[test]
    fn a_fanned_out_event_is_reached_when_all_its_records_are() {
        let mut f = DeliveryFrontier::new();
        let one = f.register(1, 3);
        assert_eq!(one.len(), 3);
        f.confirm(one[0]).unwrap();
        f.confirm(one[2]).unwrap();
        assert_eq!(f.advance(), None);
        f.confirm(one[1]).unwrap();
        assert_eq!(f.advance(), Some(1));
    }

    #[test]
    fn positions_without_records_follow_what_came_before() {
        let mut f = DeliveryFrontier::new();
        assert!(f.register("keepalive-0", 0).is_empty());
        assert_eq!(f.advance(), Some("keepalive-0"), "nothing before it");
        let e = f.register("event", 1);
        f.register("keepalive-1", 0);
        assert_eq!(f.advance(), None, "the keepalive waits for the event");
        f.confirm(e[0]).unwrap();
        assert_eq!(f.advance(), Some("keepalive-1"));
    }

    #[test]
    fn a_failure_holds_the_position_until_resent_and_confirmed() {
        let mut f = DeliveryFrontier::new();
        let a = f.register("a", 1);
        let b = f.register("b", 1);
        f.confirm(a[0]).unwrap();
        f.fail(b[0]).unwrap();
        assert_eq!(f.advance(), Some("a"));
        f.register("c", 0);
        assert_eq!(f.advance(), None, "b failed, so c is not reached");
        assert_eq!(f.failed(), 1);
        assert_eq!(f.first_failure(), Some((b[0], &"b")));
        f.resend(b[0]).unwrap();
        assert_eq!(f.in_flight(), 1);
        f.confirm(b[0]).unwrap();
        assert_eq!(f.advance(), Some("c"));
        assert_eq!(f.first_failure(), None);
    }

    #[test]
    fn confirmations_it_cannot_place_are_refused() {
        let mut f = DeliveryFrontier::<u8>::new();
        let a = f.register(1, 1);
        assert_eq!(
            f.confirm(RecordId(7)),
            Err(FrontierError::Unknown(RecordId(7)))
        );
        f.confirm(a[0]).unwrap();
        f.confirm(a[0]).unwrap();
        assert_eq!(f.fail(a[0]), Err(FrontierError::AlreadyConfirmed(a[0])));
        assert_eq!(f.advance(), Some(1));
        f.confirm(a[0]).unwrap();
        assert_eq!(f.fail(a[0]), Err(FrontierError::AlreadyConfirmed(a[0])));
    }

    /// Records per position, and an order (a permutation seed) in which they are confirmed.
    fn history() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        prop::collection::vec(0usize..4, 1..30).prop_flat_map(|counts| {
            let total: usize = counts.iter().sum();
            (
                Just(counts),
                Just((0..total).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
    }

    proptest! {
        #[test]
        fn never_passes_an_unconfirmed_record((counts, order) in history()) {
            let mut f = DeliveryFrontier::new();
            // The position of every record, and the ids registered per position.
            let mut owner = Vec::new();
            for (position, count) in counts.iter().enumerate() {
                let ids = f.register(position, *count);
                for id in ids {
                    prop_assert_eq!(id.0 as usize, owner.len());
                    owner.push(position);
                }
            }
            let mut confirmed = vec![false; owner.len()];
            let mut last = f.advance();
            let check = |reached: usize, confirmed: &[bool]| {
                owner.iter().zip(confirmed).all(|(p, c)| *p > reached || *c)
            };
            if let Some(p) = last {
                prop_assert!(check(p, &confirmed));
            }
            for record in order {
                f.confirm(RecordId(record as u64)).unwrap();
                confirmed[record] = true;
                if let Some(p) = f.advance() {
                    prop_assert!(check(p, &confirmed), "position {} passed an unconfirmed record", p);
                    prop_assert!(last.is_none_or(|l| p > l), "positions only move forward");
                    last = Some(p);
                }
            }
            prop_assert_eq!(last, Some(counts.len() - 1));
            prop_assert_eq!(f.in_flight(), 0);
            prop_assert_eq!(f.pending_positions(), 0);
        }
    }
}
