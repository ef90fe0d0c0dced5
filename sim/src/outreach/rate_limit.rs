//! The per-user request budget: a fixed window per token subject, pure arithmetic.
//!
//! Outreach limits each *user* (the authorizing user behind the token, whichever app or token
//! is used) to 10,000 requests per hour (docs/simulators.md). The simulator models a fixed
//! window that opens with the subject's first request and lasts `window`; a request after
//! the window's end opens a new one with a full budget. Anchoring at first use (rather than
//! at clock hours) is an inference that keeps tests with short windows deterministic.
//!
//! Every admitted or refused request gets the status needed for the headers:
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds of the
//! window's end, rounded up); a refused one also `Retry-After` (whole seconds until the
//! reset, at least 1) and the documented `rateLimitExceeded` detail.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

/// The budget of one subject as a response reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: u32,
    pub remaining: u32,
    /// When the current window ends.
    pub reset: DateTime<Utc>,
    /// Whether this request was admitted.
    pub admitted: bool,
}

impl RateStatus {
    /// `X-RateLimit-Reset`: epoch seconds of the window's end, rounded up.
    pub fn reset_epoch(&self) -> i64 {
        let seconds = self.reset.timestamp();
        if self.reset.timestamp_subsec_nanos() > 0 {
            seconds + 1
        } else {
            seconds
        }
    }

    /// `Retry-After`: whole seconds from `now` until the reset, at least 1.
    pub fn retry_after(&self, now: DateTime<Utc>) -> u64 {
        retry_after_seconds(now, self.reset)
    }

    /// The `detail` of the 429 `rateLimitExceeded` error; its instant (UTC, without a zone,
    /// as documented) is the same second as `X-RateLimit-Reset`.
    pub fn exceeded_detail(&self) -> String {
        let reset = DateTime::from_timestamp(self.reset_epoch(), 0).unwrap_or(self.reset);
        format!(
            "You have exceeded your permitted rate limit of {}; please try again at {}.",
            thousands(self.limit),
            reset.format("%Y-%m-%dT%H:%M:%S")
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: DateTime<Utc>,
    used: u32,
}

/// Fixed windows per subject.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: TimeDelta,
    windows: HashMap<String, Window>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: TimeDelta) -> RateLimiter {
        RateLimiter {
            limit,
            window,
            windows: HashMap::new(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts one request by `subject` at `now`, if the budget allows it.
    pub fn admit(&mut self, subject: &str, now: DateTime<Utc>) -> RateStatus {
        let limit = self.limit;
        let window = self.current(subject, now);
        let admitted = window.used < limit;
        if admitted {
            window.used += 1;
        }
        let (started, used) = (window.started, window.used);
        RateStatus {
            limit: self.limit,
            remaining: self.limit - used,
            reset: started + self.window,
            admitted,
        }
    }

    /// Spends the rest of the current window of every subject in `subjects`.
    pub fn exhaust<'a>(&mut self, subjects: impl IntoIterator<Item = &'a str>, now: DateTime<Utc>) {
        let limit = self.limit;
        for subject in subjects {
            self.current(subject, now).used = limit;
        }
    }

    /// Forgets every window.
    pub fn reset(&mut self) {
        self.windows.clear();
    }

    /// The subject's window at `now`, opening a new one if none is running.
    fn current(&mut self, subject: &str, now: DateTime<Utc>) -> &mut Window {
        let window = self.window;
        let entry = self.windows.entry(subject.to_owned()).or_insert(Window {
            started: now,
            used: 0,
        });
        if now >= entry.started + window {
            *entry = Window {
                started: now,
                used: 0,
            };
        }
        entry
    }
}

/// Whole seconds from `now` until `then`, rounded up, at least 1: a `Retry-After` value.
pub fn retry_after_seconds(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    let millis = u64::try_from((then - now).num_milliseconds()).unwrap_or(0);
    millis.div_ceil(1000).max(1)
}

/// `10000` → `"10,000"`, as the documented detail prints the limit.
fn thousands(number: u32) -> String {
    let digits = number.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn counts_down_then_refuses_until_the_window_ends() {
        let mut limiter = RateLimiter::new(2, TimeDelta::seconds(60));
        let first = limiter.admit("u", t0());
        assert!(first.admitted);
        assert_eq!((first.limit, first.remaining), (2, 1));
        assert_eq!(first.reset_epoch(), 1_700_000_060);
        assert_eq!(
            limiter.admit("u", t0() + TimeDelta::seconds(1)).remaining,
            0
        );
        let refused = limiter.admit("u", t0() + TimeDelta::seconds(2));
        assert!(!refused.admitted);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after(t0() + TimeDelta::seconds(2)), 58);
        let next_window = limiter.admit("u", t0() + TimeDelta::seconds(60));
        assert!(next_window.admitted);
        assert_eq!(next_window.remaining, 1);
        assert_eq!(next_window.reset_epoch(), 1_700_000_120);
    }

    #[test]
    fn subjects_have_separate_budgets() {
        let mut limiter = RateLimiter::new(1, TimeDelta::seconds(60));
        assert!(limiter.admit("a", t0()).admitted);
        assert!(!limiter.admit("a", t0()).admitted);
        assert!(limiter.admit("b", t0()).admitted);
    }

    #[test]
    fn exhausting_spends_the_current_window_only() {
        let mut limiter = RateLimiter::new(10, TimeDelta::seconds(60));
        limiter.admit("a", t0());
        limiter.exhaust(["a", "fresh"], t0() + TimeDelta::seconds(5));
        assert!(!limiter.admit("a", t0() + TimeDelta::seconds(6)).admitted);
        let fresh = limiter.admit("fresh", t0() + TimeDelta::seconds(6));
        assert!(!fresh.admitted);
        assert_eq!(fresh.reset_epoch(), 1_700_000_065);
        assert!(limiter.admit("a", t0() + TimeDelta::seconds(60)).admitted);
    }

    #[test]
    fn reset_and_retry_after_round_up() {
        let reset = t0() + TimeDelta::milliseconds(1500);
        let status = RateStatus {
            limit: 1,
            remaining: 0,
            reset,
            admitted: false,
        };
        assert_eq!(status.reset_epoch(), 1_700_000_002);
        assert_eq!(status.retry_after(t0()), 2);
        assert_eq!(status.retry_after(t0() + TimeDelta::seconds(5)), 1);
    }

    #[test]
    fn detail_prints_the_limit_and_reset_like_the_documentation() {
        let reset = DateTime::parse_from_rfc3339("2017-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let status = RateStatus {
            limit: 10_000,
            remaining: 0,
            reset,
            admitted: false,
        };
        assert_eq!(
            status.exceeded_detail(),
            "You have exceeded your permitted rate limit of 10,000; please try again at 2017-01-01T00:00:00."
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
