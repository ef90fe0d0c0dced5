//! Request accounting: totals for the whole client and the count for one operation.
//!
//! Outreach's budget is counted in requests, so every caller-visible operation reports how many
//! HTTP requests it really made (retries and token refreshes included) and the client keeps
//! running totals for metrics. Both are bumped at the single place a request is sent.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Running totals of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStats {
    /// HTTP requests sent, to the API and the token endpoint.
    pub requests: u64,
    /// Requests sent again after a 5xx, a network error, a 429 or a 401.
    pub retries: u64,
    /// Waits for the rate limit: pacing before the budget ran out, and 429 `Retry-After`s.
    pub rate_limit_waits: u64,
    /// Successful token mints (refreshes and code exchanges).
    pub token_refreshes: u64,
}

/// The client's counters (the rate-limit waits live with the rate limiter).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    token_refreshes: AtomicU64,
}

impl Counters {
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn token_refresh(&self) {
        self.token_refreshes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, rate_limit_waits: u64) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rate_limit_waits,
            token_refreshes: self.token_refreshes.load(Ordering::Relaxed),
        }
    }
}

/// The requests of one operation, feeding the client totals as well.
#[derive(Debug)]
pub(crate) struct Tally<'a> {
    counters: &'a Counters,
    requests: AtomicU32,
}

impl<'a> Tally<'a> {
    pub(crate) fn new(counters: &'a Counters) -> Tally<'a> {
        Tally {
            counters,
            requests: AtomicU32::new(0),
        }
    }

    /// Counts one HTTP request about to be sent.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().outreach_request();
    }

    pub(crate) fn counters(&self) -> &'a Counters {
        self.counters
    }

    /// Requests made by this operation so far.
    pub(crate) fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }
}
