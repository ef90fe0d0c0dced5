//! Outreach's request budget: reading it from every response and pacing before it runs out.
//!
//! Outreach allows about 10,000 requests per hour per user and reports the budget on every
//! response (`X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`). A 429 costs a
//! round trip and, on a busy hour, a long pause for every worker at once; waiting for the reset
//! ourselves when the budget is spent is cheaper and keeps the server's view and ours aligned.
//!
//! The module splits in two so the arithmetic is testable without a clock or a server:
//!
//! - pure parts: header parsing ([`RateLimitHeaders::parse`], [`parse_count`], [`parse_reset`],
//!   [`parse_retry_after`]) and the [`Budget`] state machine that says "go" or "wait until";
//! - the [`RateLimiter`], shared by all requests of a client, which holds the budget behind a lock,
//!   sleeps when told to, and counts its waits.
//!
//! Parsing is defensive because the published material disagrees with itself:
//! `X-RateLimit-Remaining` has been seen as `"9999, 19988"` (the first number is the hourly user
//! budget), and `X-RateLimit-Reset` is epoch seconds per the connectors that use it, though small
//! values are read as "seconds from now" in case a deployment sends a delta.
//!
//! Parsing is also bounded, because every 429 and 5xx passes through it and no header may crash
//! the process or park a worker for years (docs/security.md, "Provider input"): a `Retry-After`
//! or a reset further ahead than [`MAX_SERVER_WAIT`] is read as that far, counts are clamped to
//! `0..=u32::MAX`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use reqwest::header::HeaderMap;

/// Header names, lower-case as `http` stores them.
pub const LIMIT_HEADER: &str = "x-ratelimit-limit";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";
pub const RESET_HEADER: &str = "x-ratelimit-reset";
pub const RETRY_AFTER_HEADER: &str = "retry-after";

/// Added to every wait for a reset: the reset is reported in whole seconds and the server's clock
/// is not ours, so arriving a moment late is better than arriving a moment early.
pub const RESET_MARGIN: Duration = Duration::from_secs(1);

/// Reset values below this are not plausible epoch seconds (2001-09-09) and are read as a delta.
const EPOCH_THRESHOLD: i64 = 1_000_000_000;

/// The furthest ahead a response can push a wait: one hour, Outreach's rate-limit window. A
/// longer `Retry-After`, or a reset further away, is read as this much: the window has renewed
/// by then, and a maintenance window that has not ended answers again with a new wait.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// What one response said about the budget. Any header may be missing or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitHeaders {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub reset: Option<DateTime<Utc>>,
}

impl RateLimitHeaders {
    /// Reads the three headers of one response; `now` resolves a delta-style reset.
    pub fn parse(headers: &HeaderMap, now: DateTime<Utc>) -> RateLimitHeaders {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        RateLimitHeaders {
            limit: text(LIMIT_HEADER).and_then(parse_count),
            remaining: text(REMAINING_HEADER).and_then(parse_count),
            reset: text(RESET_HEADER).and_then(|v| parse_reset(v, now)),
        }
    }

    /// True when the response carried none of the headers.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// A count header: the first number of a possibly comma-separated list (`"9999, 19988"` → 9999).
pub fn parse_count(value: &str) -> Option<u32> {
    let first = value.split(',').next()?.trim();
    if let Ok(n) = first.parse::<u32>() {
        return Some(n);
    }
    // Tolerate a decimal or a negative count: a negative remaining budget is an empty one.
    let n = first.parse::<f64>().ok()?;
    if !n.is_finite() {
        return None;
    }
    Some(n.max(0.0).min(f64::from(u32::MAX)) as u32)
}

/// `X-RateLimit-Reset`: epoch seconds, or (for implausibly small values) seconds from `now`. A
/// reset more than [`MAX_SERVER_WAIT`] after `now` is read as `now + MAX_SERVER_WAIT`.
pub fn parse_reset(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let secs = value.split(',').next()?.trim().parse::<i64>().ok()?;
    if secs < 0 {
        return None;
    }
    let reset = if secs >= EPOCH_THRESHOLD {
        DateTime::from_timestamp(secs, 0)
    } else {
        // Below EPOCH_THRESHOLD: `TimeDelta::seconds` cannot overflow.
        now.checked_add_signed(TimeDelta::seconds(secs))
    };
    // Past the end of chrono's calendar is as far as the bound allows.
    let latest = latest_reset(now);
    Some(reset.map_or(latest, |reset| reset.min(latest)))
}

/// `now + MAX_SERVER_WAIT`, or `now` at the very end of chrono's calendar.
fn latest_reset(now: DateTime<Utc>) -> DateTime<Utc> {
    TimeDelta::from_std(MAX_SERVER_WAIT)
        .ok()
        .and_then(|bound| now.checked_add_signed(bound))
        .unwrap_or(now)
}

/// `Retry-After`: delta seconds, an HTTP date, or an ISO-8601 instant (Outreach's maintenance
/// 503 sends one; a zone-less instant is read as UTC). Instants in the past give zero; a wait
/// longer than [`MAX_SERVER_WAIT`] (`1e30`, a date centuries ahead) gives [`MAX_SERVER_WAIT`].
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        // Outreach documents Retry-After as an alias of the reset, which may be an instant:
        // a number this large is epoch seconds, not a delay of decades.
        if secs >= EPOCH_THRESHOLD as u64 {
            let instant = i64::try_from(secs)
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, 0));
            return Some(instant.map_or(MAX_SERVER_WAIT, |instant| until(now, instant)));
        }
        return Some(bounded(Duration::from_secs(secs)));
    }
    if let Ok(secs) = value.parse::<f64>() {
        // Bounded before converting: `Duration::from_secs_f64` panics past `u64::MAX` seconds.
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        return Duration::try_from_secs_f64(secs.min(MAX_SERVER_WAIT.as_secs_f64())).ok();
    }
    let instant = DateTime::parse_from_rfc2822(value)
        .or_else(|_| DateTime::parse_from_rfc3339(value))
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
                .map(|naive| naive.and_utc())
        })?;
    Some(until(now, instant))
}

/// `wait`, at most [`MAX_SERVER_WAIT`].
fn bounded(wait: Duration) -> Duration {
    wait.min(MAX_SERVER_WAIT)
}

/// The time from `now` to `instant`: zero if it has passed, at most [`MAX_SERVER_WAIT`].
pub fn until(now: DateTime<Utc>, instant: DateTime<Utc>) -> Duration {
    bounded((instant - now).to_std().unwrap_or(Duration::ZERO))
}

/// What to do before sending a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Send now (one unit of the budget has been set aside for it).
    Go,
    /// The budget is at the reserve: send nothing before this instant.
    WaitUntil(DateTime<Utc>),
}

/// The client's view of the current rate-limit window.
///
/// `remaining` is the server's last word minus the requests sent since, so concurrent requests
/// cannot all spend the last unit at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub reset: Option<DateTime<Utc>>,
}

impl Budget {
    /// Folds in what a response reported. A later window replaces ours; within the same window
    /// the lower count wins (responses of concurrent requests arrive in any order); a response
    /// about an older window is ignored.
    pub fn observe(&mut self, seen: RateLimitHeaders) {
        if seen.is_empty() {
            return;
        }
        match (self.reset, seen.reset) {
            (Some(ours), Some(theirs)) if theirs < ours => {}
            (Some(ours), Some(theirs)) if theirs == ours => {
                self.limit = seen.limit.or(self.limit);
                self.remaining = match (self.remaining, seen.remaining) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => b.or(a),
                };
            }
            _ => {
                self.limit = seen.limit.or(self.limit);
                self.remaining = seen.remaining;
                self.reset = seen.reset.or(self.reset);
            }
        }
    }

    /// Records a 429: nothing is left until the reset.
    pub fn exhausted_until(&mut self, reset: Option<DateTime<Utc>>) {
        self.remaining = Some(0);
        if let Some(reset) = reset {
            self.reset = Some(reset);
        }
    }

    /// Forgets an exhausted window once its `Retry-After` has been waited out: the server asked
    /// for exactly that wait, so the next request goes and its answer re-informs the budget.
    pub fn retry_after_waited(&mut self) {
        if self.remaining == Some(0) {
            self.remaining = None;
            self.reset = None;
        }
    }

    /// Decides whether a request may go at `now`, keeping `reserve` units unspent, and sets one
    /// unit aside when it may. Once the reset has passed the window is assumed renewed.
    pub fn acquire(&mut self, now: DateTime<Utc>, reserve: u32) -> Pacing {
        if let Some(reset) = self.reset
            && now >= reset
        {
            self.remaining = self.limit;
            self.reset = None;
        }
        match (self.remaining, self.reset) {
            (Some(remaining), Some(reset)) if remaining <= reserve => Pacing::WaitUntil(reset),
            (Some(remaining), _) => {
                self.remaining = Some(remaining.saturating_sub(1));
                Pacing::Go
            }
            (None, _) => Pacing::Go,
        }
    }
}

/// Per operation: how much rate-limit waiting it may still do before giving up with
/// `RateLimited` so its caller can pause instead. Shared by the attempts of one operation, hence
/// atomic rather than `&mut`.
#[derive(Debug)]
pub struct WaitAllowance {
    max_nanos: u64,
    waited_nanos: AtomicU64,
}

impl WaitAllowance {
    pub fn new(max: Duration) -> WaitAllowance {
        WaitAllowance {
            max_nanos: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            waited_nanos: AtomicU64::new(0),
        }
    }

    /// Takes `wait` from the allowance if it fits; false (and nothing taken) if not.
    pub fn take(&self, wait: Duration) -> bool {
        let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.waited_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waited| {
                waited
                    .checked_add(wait)
                    .filter(|total| *total <= self.max_nanos)
            })
            .is_ok()
    }
}

/// A pacing wait that would exceed the operation's allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTooLong(pub Duration);

/// The budget shared by all requests of one client.
#[derive(Debug)]
pub struct RateLimiter {
    budget: Mutex<Budget>,
    reserve: u32,
    waits: AtomicU64,
}

impl RateLimiter {
    pub fn new(reserve: u32) -> RateLimiter {
        RateLimiter {
            budget: Mutex::new(Budget::default()),
            reserve,
            waits: AtomicU64::new(0),
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        // The budget is plain data; a panic elsewhere cannot leave it inconsistent.
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current view of the window.
    pub fn snapshot(&self) -> Budget {
        *self.budget()
    }

    /// Folds in a response's headers.
    pub fn observe(&self, seen: RateLimitHeaders) {
        self.budget().observe(seen);
    }

    /// Folds in a 429.
    pub fn observe_exhausted(&self, reset: Option<DateTime<Utc>>) {
        self.budget().exhausted_until(reset);
    }

    /// Waits, if the budget is at the reserve, until the window resets; then sets one unit aside.
    /// Returns the wait that did not fit the allowance instead of waiting it.
    pub async fn pace(&self, allowance: &WaitAllowance) -> Result<(), WaitTooLong> {
        loop {
            let decision = self.budget().acquire(Utc::now(), self.reserve);
            match decision {
                Pacing::Go => return Ok(()),
                Pacing::WaitUntil(reset) => {
                    let wait = until(Utc::now(), reset) + RESET_MARGIN;
                    if !allowance.take(wait) {
                        return Err(WaitTooLong(wait));
                    }
                    self.record_wait();
                    crate::metrics::global().rate_limit_wait(wait);
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        reset = %reset,
                        "Outreach rate-limit budget spent; waiting for the reset"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A 429's `Retry-After` has been waited out.
    pub fn retry_after_waited(&self) {
        self.budget().retry_after_waited();
    }

    /// Counts a wait done elsewhere (a 429's `Retry-After`).
    pub fn record_wait(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits so far, pacing and 429s together.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_retry_after_that_is_an_epoch_instant_is_read_as_one() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(
            parse_retry_after("1700000030", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
    }

    use super::*;
    use reqwest::header::HeaderValue;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn counts_take_the_first_number() {
        assert_eq!(parse_count("9999, 19988"), Some(9999));
        assert_eq!(parse_count("9999,19988"), Some(9999));
        assert_eq!(parse_count(" 10000 "), Some(10000));
        assert_eq!(parse_count("-3"), Some(0));
        assert_eq!(parse_count("12.0"), Some(12));
        assert_eq!(parse_count(""), None);
        assert_eq!(parse_count("lots"), None);
    }

    #[test]
    fn reset_is_epoch_seconds_or_a_delta() {
        let now = at(NOW);
        assert_eq!(parse_reset("1700003600", now), Some(at(NOW + 3600)));
        assert_eq!(parse_reset("30", now), Some(at(NOW + 30)));
        assert_eq!(parse_reset("-1", now), None);
        assert_eq!(parse_reset("soon", now), None);
    }

    #[test]
    fn headers_parse_together() {
        let mut headers = HeaderMap::new();
        headers.insert("X-RateLimit-Limit", HeaderValue::from_static("10000"));
        headers.insert(
            "X-RateLimit-Remaining",
            HeaderValue::from_static("9999, 19988"),
        );
        headers.insert("X-RateLimit-Reset", HeaderValue::from_static("1700003600"));
        let seen = RateLimitHeaders::parse(&headers, at(NOW));
        assert_eq!(
            seen,
            RateLimitHeaders {
                limit: Some(10000),
                remaining: Some(9999),
                reset: Some(at(NOW + 3600)),
            }
        );
        assert!(RateLimitHeaders::parse(&HeaderMap::new(), at(NOW)).is_empty());
    }

    #[test]
    fn retry_after_in_every_documented_form() {
        let now = at(NOW);
        assert_eq!(parse_retry_after("17", now), Some(Duration::from_secs(17)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        // HTTP date.
        let http = now + TimeDelta::seconds(90);
        let http = http.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        assert_eq!(parse_retry_after(&http, now), Some(Duration::from_secs(90)));
        // ISO instant with and without a zone.
        let iso = (now + TimeDelta::seconds(60)).to_rfc3339();
        assert_eq!(parse_retry_after(&iso, now), Some(Duration::from_secs(60)));
        let naive = (now + TimeDelta::seconds(5))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string();
        assert_eq!(parse_retry_after(&naive, now), Some(Duration::from_secs(5)));
        // The past is "now"; garbage is nothing.
        assert_eq!(
            parse_retry_after("2017-01-01T00:00:00", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("later", now), None);
        assert_eq!(parse_retry_after("-4", now), None);
    }

    #[test]
    fn a_retry_after_of_any_size_is_at_most_the_bound() {
        let now = at(NOW);
        for huge in [
            "1e30",
            "1.8e19",
            "18446744073709551615",
            "9223372036854775807",
            "999999999",
            "99999999999999",
            "3601",
            "3600.5",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59",
        ] {
            assert_eq!(
                parse_retry_after(huge, now),
                Some(MAX_SERVER_WAIT),
                "{huge}"
            );
        }
        assert_eq!(parse_retry_after("3600", now), Some(MAX_SERVER_WAIT));
        for nothing in ["NaN", "inf", "-inf", "-1e30", "1e400"] {
            assert_eq!(parse_retry_after(nothing, now), None, "{nothing}");
        }
        assert!(parse_retry_after("-0", now).is_none_or(|wait| wait == Duration::ZERO));
        assert!(parse_retry_after("-0.0", now).is_none_or(|wait| wait == Duration::ZERO));
    }

    #[test]
    fn a_reset_is_at_most_the_bound_ahead() {
        let now = at(NOW);
        let latest = now + TimeDelta::from_std(MAX_SERVER_WAIT).unwrap();
        for far in [
            "999999999",
            "9223372036854775807",
            "99999999999999",
            "4102444800",
        ] {
            assert_eq!(parse_reset(far, now), Some(latest), "{far}");
        }
        assert_eq!(parse_reset("1700003599", now), Some(at(NOW + 3599)));
        // At the very end of the calendar, "now" is as far as anything goes.
        assert_eq!(
            parse_reset("9223372036854775807", DateTime::<Utc>::MAX_UTC),
            Some(DateTime::<Utc>::MAX_UTC)
        );
    }

    #[test]
    fn a_wait_until_a_far_reset_is_at_most_the_bound() {
        let now = at(NOW);
        assert_eq!(until(now, DateTime::<Utc>::MAX_UTC), MAX_SERVER_WAIT);
        assert_eq!(until(now, at(NOW - 10)), Duration::ZERO);
    }

    #[test]
    fn pacing_goes_while_budget_is_above_the_reserve() {
        let mut budget = Budget::default();
        assert_eq!(
            budget.acquire(at(NOW), 0),
            Pacing::Go,
            "unknown budget goes"
        );
        budget.observe(RateLimitHeaders {
            limit: Some(3),
            remaining: Some(2),
            reset: Some(at(NOW + 10)),
        });
        assert_eq!(budget.acquire(at(NOW), 0), Pacing::Go);
        assert_eq!(budget.acquire(at(NOW), 0), Pacing::Go);
        assert_eq!(budget.remaining, Some(0));
        assert_eq!(budget.acquire(at(NOW), 0), Pacing::WaitUntil(at(NOW + 10)));
        // After the reset the window is renewed to the limit.
        assert_eq!(budget.acquire(at(NOW + 10), 0), Pacing::Go);
        assert_eq!(budget.remaining, Some(2));
        assert_eq!(budget.reset, None);
    }

    #[test]
    fn pacing_keeps_the_reserve() {
        let mut budget = Budget::default();
        budget.observe(RateLimitHeaders {
            limit: Some(100),
            remaining: Some(6),
            reset: Some(at(NOW + 60)),
        });
        let sent = (0..10)
            .take_while(|_| budget.acquire(at(NOW), 5) == Pacing::Go)
            .count();
        assert_eq!(sent, 1);
        assert_eq!(budget.acquire(at(NOW), 5), Pacing::WaitUntil(at(NOW + 60)));
    }

    #[test]
    fn observations_within_a_window_keep_the_lowest_count() {
        let mut budget = Budget::default();
        let window = Some(at(NOW + 60));
        budget.observe(RateLimitHeaders {
            limit: Some(10),
            remaining: Some(4),
            reset: window,
        });
        // A late response of an earlier request reports more than we know is left.
        budget.observe(RateLimitHeaders {
            limit: Some(10),
            remaining: Some(7),
            reset: window,
        });
        assert_eq!(budget.remaining, Some(4));
        // A response about the previous window is stale.
        budget.observe(RateLimitHeaders {
            limit: Some(10),
            remaining: Some(9),
            reset: Some(at(NOW)),
        });
        assert_eq!(budget.remaining, Some(4));
        // A new window replaces ours.
        budget.observe(RateLimitHeaders {
            limit: Some(10),
            remaining: Some(9),
            reset: Some(at(NOW + 120)),
        });
        assert_eq!(budget.remaining, Some(9));
        assert_eq!(budget.reset, Some(at(NOW + 120)));
    }

    #[test]
    fn a_429_empties_the_window() {
        let mut budget = Budget::default();
        budget.exhausted_until(Some(at(NOW + 5)));
        assert_eq!(budget.acquire(at(NOW), 0), Pacing::WaitUntil(at(NOW + 5)));
    }

    #[test]
    fn a_waited_out_retry_after_reopens_the_budget() {
        let mut budget = Budget::default();
        budget.exhausted_until(Some(at(NOW + 2)));
        budget.retry_after_waited();
        assert_eq!(budget.acquire(at(NOW + 1), 0), Pacing::Go);
        // A budget that is not exhausted is left alone.
        let mut open = Budget {
            limit: Some(10),
            remaining: Some(3),
            reset: Some(at(NOW + 60)),
        };
        open.retry_after_waited();
        assert_eq!(open.remaining, Some(3));
    }

    #[test]
    fn the_wait_allowance_is_cumulative() {
        let allowance = WaitAllowance::new(Duration::from_secs(10));
        assert!(allowance.take(Duration::from_secs(6)));
        assert!(!allowance.take(Duration::from_secs(5)));
        assert!(allowance.take(Duration::from_secs(4)));
        assert!(!allowance.take(Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn the_limiter_refuses_a_wait_beyond_the_allowance_and_counts_waits() {
        let limiter = RateLimiter::new(0);
        limiter.observe_exhausted(Some(Utc::now() + TimeDelta::seconds(3600)));
        let allowance = WaitAllowance::new(Duration::from_secs(60));
        let err = limiter.pace(&allowance).await.unwrap_err();
        assert!(err.0 > Duration::from_secs(3500));
        assert_eq!(limiter.waits(), 0);

        // A reset already passed: no wait at all.
        limiter.observe(RateLimitHeaders {
            limit: Some(5),
            remaining: Some(0),
            reset: Some(Utc::now() + TimeDelta::seconds(7200)),
        });
        limiter.budget().reset = Some(Utc::now() - TimeDelta::seconds(1));
        limiter.pace(&allowance).await.unwrap();
        assert_eq!(limiter.snapshot().remaining, Some(4));
    }
}
