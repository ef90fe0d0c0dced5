//! Flow-control bookkeeping for one Subscribe stream.
//!
//! The server sends events only against credit (`num_requested`), at most 100 outstanding for
//! the whole call, and closes a stream whose credit stays at zero for 60 s (docs/salesforce.md,
//! "Pub/Sub: flow control"). Public clients stopped after 100 or 200 events because their own
//! count drifted from the server's (docs/salesforce.md, "Failures seen in other clients":
//! credit drift), so [`Credit`] never counts on its own: it takes the server's
//! `pending_num_requested` from every response as the truth, and asks for more whenever that
//! falls to the low-water mark — *before* the caller starts on the batch, so slow work never
//! leaves the stream without credit (credit starved by slow processing).

/// The most credit a subscription may have outstanding.
pub const MAX_CREDIT: i32 = 100;

/// Outstanding credit as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pending: i32,
    low_water: i32,
}

impl Credit {
    /// Credit for a new stream whose first request asks for [`MAX_CREDIT`]; more is asked for
    /// once the pending credit falls to `low_water` (clamped to `0..MAX_CREDIT`).
    pub fn new(low_water: i32) -> Credit {
        Credit {
            pending: MAX_CREDIT,
            low_water: low_water.clamp(0, MAX_CREDIT - 1),
        }
    }

    /// The first request's `num_requested`.
    pub fn initial_request(&self) -> i32 {
        MAX_CREDIT
    }

    /// Takes the server's `pending_num_requested` from a response; returns how many events to
    /// request now (never zero or negative, never past the cap), if any.
    pub fn on_response(&mut self, pending_num_requested: i32) -> Option<i32> {
        self.pending = pending_num_requested.clamp(0, MAX_CREDIT);
        if self.pending > self.low_water {
            return None;
        }
        let top_up = MAX_CREDIT - self.pending;
        self.pending = MAX_CREDIT;
        Some(top_up)
    }

    pub fn pending(&self) -> i32 {
        self.pending
    }
}

/// The credit still to send once a top-up of `more` is asked for while `unsent` (asked for
/// earlier) has not gone out yet. The server's report is the truth and the unsent credit is not
/// in it, so `more` already covers everything the server lacks: the larger of the two, never
/// their sum, which would grow without bound while the request stream stays full.
pub fn unsent_after(unsent: i32, more: i32) -> i32 {
    unsent.max(more).clamp(0, MAX_CREDIT)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tops_up_to_the_cap_at_the_low_water_mark() {
        let mut credit = Credit::new(50);
        assert_eq!(credit.initial_request(), 100);
        assert_eq!(credit.on_response(80), None);
        assert_eq!(credit.on_response(50), Some(50));
        assert_eq!(credit.pending(), 100);
        assert_eq!(credit.on_response(0), Some(100));
    }

    #[test]
    fn the_server_count_wins_over_any_local_guess() {
        let mut credit = Credit::new(10);
        // A keepalive reports the same credit: nothing to do.
        assert_eq!(credit.on_response(100), None);
        // Out-of-range values from a server are clamped, never sent back.
        assert_eq!(credit.on_response(-5), Some(100));
        assert_eq!(credit.on_response(1000), None);
    }

    #[test]
    fn credit_that_cannot_be_sent_does_not_pile_up() {
        let mut credit = Credit::new(50);
        let mut unsent = 0;
        for report in (0..1_000).map(|n| n % 40) {
            if let Some(more) = credit.on_response(report) {
                unsent = unsent_after(unsent, more);
            }
            assert!(unsent <= MAX_CREDIT, "{unsent}");
        }
        assert_eq!(unsent, MAX_CREDIT);
        assert_eq!(unsent_after(30, 20), 30);
        assert_eq!(unsent_after(i32::MAX, i32::MAX), MAX_CREDIT);
    }

    proptest! {
        /// Whatever the server reports, a top-up is positive, the credit never passes 100,
        /// and it is never left at or below the low-water mark.
        #[test]
        fn credit_never_starves_nor_overflows(
            low_water in 0i32..100,
            reports in proptest::collection::vec(-10i32..120, 1..300),
        ) {
            let mut credit = Credit::new(low_water);
            for report in reports {
                let before = report.clamp(0, MAX_CREDIT);
                if let Some(top_up) = credit.on_response(report) {
                    prop_assert!(top_up > 0);
                    prop_assert!(before + top_up <= MAX_CREDIT);
                }
                prop_assert!(credit.pending() > credit.low_water);
            }
        }
    }
}
