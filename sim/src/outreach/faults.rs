//! Injected faults: the ways a test makes the API misbehave, pure and deterministic.
//!
//! Faults apply to *API requests* (`/api/v2/*`), never to the OAuth endpoints or the
//! control API, and they are decided before authentication — the way a load balancer or
//! maintenance switch in front of Outreach would answer. Per request, in this order:
//!
//! 1. `fail_next(n, status)`: queued; the next `n` requests answer `status`. Several calls
//!    queue up in call order.
//! 2. `rate_limit_storm(n)`: the next `n` requests answer 429 with `Retry-After: 1`.
//! 3. `set_error_ratio(r)`: deterministic, no randomness — counting the requests that reach
//!    this step since the ratio was set as k = 1, 2, 3…, request k answers 500 exactly when
//!    ⌊k·r⌋ > ⌊(k−1)·r⌋. So r = 0.25 fails requests 4, 8, 12…, r = 0.5 every second one,
//!    r = 1 all of them; over any run the failed fraction stays within one request of r.
//!
//! Latency is not a per-request fault: it is added to every API response, faulty or not.

use std::collections::VecDeque;
use std::time::Duration;

/// What an injected fault makes a request answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status (from `fail_next` or the error ratio).
    Status(u16),
    /// 429 with `Retry-After: 1`.
    RateLimitStorm,
}

#[derive(Debug, Default)]
pub struct Faults {
    fail_next: VecDeque<(u32, u16)>,
    storm: u32,
    error_ratio: f64,
    ratio_count: u64,
    latency: Duration,
}

impl Faults {
    pub fn fail_next(&mut self, n: u32, status: u16) {
        if n > 0 {
            self.fail_next.push_back((n, status));
        }
    }

    pub fn rate_limit_storm(&mut self, n: u32) {
        self.storm += n;
    }

    /// Sets the ratio (clamped to 0..=1; NaN counts as 0) and restarts its count.
    pub fn set_error_ratio(&mut self, ratio: f64) {
        self.error_ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.ratio_count = 0;
    }

    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    pub fn latency(&self) -> Duration {
        self.latency
    }

    pub fn clear(&mut self) {
        *self = Faults::default();
    }

    /// Decides the fault, if any, for the next API request.
    pub fn next_fault(&mut self) -> Option<Fault> {
        if let Some((remaining, status)) = self.fail_next.front_mut() {
            let status = *status;
            *remaining -= 1;
            if *remaining == 0 {
                self.fail_next.pop_front();
            }
            return Some(Fault::Status(status));
        }
        if self.storm > 0 {
            self.storm -= 1;
            return Some(Fault::RateLimitStorm);
        }
        if self.error_ratio > 0.0 {
            self.ratio_count += 1;
            let k = self.ratio_count as f64;
            // The epsilon absorbs float error in products such as 10 × 0.1.
            let crossed = (k * self.error_ratio + 1e-9).floor()
                > ((k - 1.0) * self.error_ratio + 1e-9).floor();
            if crossed {
                return Some(Fault::Status(500));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(faults: &mut Faults, requests: usize) -> Vec<Option<Fault>> {
        (0..requests).map(|_| faults.next_fault()).collect()
    }

    #[test]
    fn no_faults_by_default() {
        assert_eq!(run(&mut Faults::default(), 5), vec![None; 5]);
    }

    #[test]
    fn fail_next_queues_in_call_order() {
        let mut faults = Faults::default();
        faults.fail_next(2, 503);
        faults.fail_next(1, 502);
        faults.fail_next(0, 500);
        let s = |status| Some(Fault::Status(status));
        assert_eq!(run(&mut faults, 4), vec![s(503), s(503), s(502), None]);
    }

    #[test]
    fn storm_follows_fail_next() {
        let mut faults = Faults::default();
        faults.rate_limit_storm(2);
        faults.fail_next(1, 500);
        let storm = Some(Fault::RateLimitStorm);
        assert_eq!(
            run(&mut faults, 4),
            vec![Some(Fault::Status(500)), storm, storm, None]
        );
    }

    #[test]
    fn error_ratio_fails_a_deterministic_every_kth_request() {
        let failed_positions = |ratio: f64, requests: usize| {
            let mut faults = Faults::default();
            faults.set_error_ratio(ratio);
            run(&mut faults, requests)
                .iter()
                .enumerate()
                .filter(|(_, fault)| fault.is_some())
                .map(|(index, _)| index + 1)
                .collect::<Vec<_>>()
        };
        assert_eq!(failed_positions(0.25, 12), [4, 8, 12]);
        assert_eq!(failed_positions(0.5, 6), [2, 4, 6]);
        assert_eq!(failed_positions(1.0, 3), [1, 2, 3]);
        assert_eq!(failed_positions(0.1, 30), [10, 20, 30]);
        assert!(failed_positions(0.0, 10).is_empty());
        assert_eq!(failed_positions(0.3, 100).len(), 30);
    }

    #[test]
    fn ratio_is_clamped_and_clear_removes_everything() {
        let mut faults = Faults::default();
        faults.set_error_ratio(7.0);
        assert_eq!(faults.next_fault(), Some(Fault::Status(500)));
        faults.set_error_ratio(f64::NAN);
        assert_eq!(faults.next_fault(), None);
        faults.fail_next(3, 503);
        faults.rate_limit_storm(3);
        faults.set_latency(Duration::from_millis(5));
        faults.clear();
        assert_eq!(faults.next_fault(), None);
        assert_eq!(faults.latency(), Duration::ZERO);
    }
}
