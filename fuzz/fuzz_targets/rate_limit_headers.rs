//! Rate-limit headers, one `Name: value` a line: Outreach's `X-RateLimit-*` through
//! `RateLimitHeaders::parse` into the `Budget`, every value through `parse_retry_after`,
//! `parse_reset` and `parse_count`, and Salesforce's `Sforce-Limit-Info` through
//! `ApiUsage::parse`.
//!
//! Besides never panicking: no wait is longer than `MAX_SERVER_WAIT` and no reset further
//! ahead, so pacing never waits past it either; a plain count reads as itself; an API usage
//! reads back the same from its own rendering; once a 429's wait is over, a request goes.

#![no_main]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use usersync::outreach::rate_limit::{
    Budget, MAX_SERVER_WAIT, Pacing, RESET_MARGIN, RateLimitHeaders, WaitAllowance, parse_count,
    parse_reset, parse_retry_after, until,
};
use usersync::salesforce::rest::ApiUsage;
use usersync_fuzz::providers::{now, rate_limit_seeds};
use usersync_fuzz::write_seeds_if_asked;

fn latest(now: DateTime<Utc>) -> DateTime<Utc> {
    now + TimeDelta::from_std(MAX_SERVER_WAIT).expect("an hour")
}

fn check_value(value: &str, now: DateTime<Utc>) {
    if let Some(wait) = parse_retry_after(value, now) {
        assert!(
            wait <= MAX_SERVER_WAIT,
            "Retry-After {value:?} gives {wait:?}"
        );
    }
    if let Some(reset) = parse_reset(value, now) {
        assert!(reset <= latest(now), "reset {value:?} gives {reset}");
    }
    let count = parse_count(value);
    if let Ok(exact) = value
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .parse::<u32>()
    {
        assert_eq!(count, Some(exact), "{value:?}");
    }
    if let Some(usage) = ApiUsage::parse(value) {
        let rendered = format!("api-usage={}/{}", usage.used, usage.limit);
        assert_eq!(ApiUsage::parse(&rendered), Some(usage));
    }
}

fuzz_target!(
    init: {
        write_seeds_if_asked(rate_limit_seeds);
    },
    |data: &[u8]| {
        let now = now();
        let text = String::from_utf8_lossy(data);
        let mut headers = HeaderMap::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(':') else {
                check_value(line, now);
                continue;
            };
            check_value(value, now);
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
        let seen = RateLimitHeaders::parse(&headers, now);
        if let Some(reset) = seen.reset {
            assert!(reset <= latest(now));
        }
        let mut budget = Budget::default();
        budget.observe(seen);
        budget.exhausted_until(seen.reset);
        let allowance = WaitAllowance::new(Duration::from_secs(120));
        for reserve in [0, 1, 5] {
            if let Pacing::WaitUntil(reset) = budget.acquire(now, reserve) {
                assert!(reset <= latest(now), "pacing waits until {reset}");
                let wait = until(now, reset) + RESET_MARGIN;
                assert!(wait <= MAX_SERVER_WAIT + RESET_MARGIN);
                let _ = allowance.take(wait);
            }
        }
        // A Retry-After waited out reopens a spent window: the next request goes.
        budget.retry_after_waited();
        assert_eq!(budget.acquire(now, 0), Pacing::Go);
    }
);
