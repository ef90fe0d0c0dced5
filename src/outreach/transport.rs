//! One HTTP attempt and the transient-failure retry around it, shared by the API client and the
//! token endpoint.
//!
//! An attempt ends in a [`Failure`] that says which remedy applies: a 5xx or a network error is
//! *transient* and retried here with capped exponential backoff and jitter (`backon`); a 429 or a
//! 401 is handed up, because waiting for a rate-limit window and refreshing a token are policies
//! of the caller, with their own bounds; anything else is final.
//!
//! Jitter matters because every worker of a deployment shares one rate budget and sees the same
//! outage: without it, they retry in lockstep. A 503 `Retry-After` (Outreach's maintenance answer)
//! stretches the backoff delay; one longer than the rate-limit wait bound ends the retries so the
//! caller can pause instead of holding a worker.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::error::{Operation, OutreachError, classify};
use super::jsonapi::ErrorBody;
use super::rate_limit::{RETRY_AFTER_HEADER, parse_retry_after};
use super::stats::Counters;
use crate::response_body::BodyError;

/// How a single attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Connection, TLS, timeout or body-read failure.
    Network(reqwest::Error),
    /// A 5xx.
    Server {
        status: StatusCode,
        body: ErrorBody,
        retry_after: Option<Duration>,
    },
    /// A 429; `retry_after` from `Retry-After` or, failing that, the rate-limit reset.
    RateLimited {
        body: ErrorBody,
        retry_after: Option<Duration>,
    },
    /// A 401 from the API.
    Unauthorized { body: ErrorBody },
    /// Nothing the client can do about it.
    Final(OutreachError),
}

impl Failure {
    /// 5xx and network failures: the same request may work in a moment.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Failure::Network(_) | Failure::Server { .. })
    }

    /// The server's own `Retry-After` on a 503, which the backoff honours.
    fn maintenance_retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Server {
                status,
                retry_after,
                ..
            } if *status == StatusCode::SERVICE_UNAVAILABLE => *retry_after,
            _ => None,
        }
    }

    /// The caller-facing error once no remedy is left.
    pub(crate) fn into_error(self, operation: Operation) -> OutreachError {
        match self {
            Failure::Network(source) => OutreachError::Network { operation, source },
            Failure::Server {
                status,
                body,
                retry_after,
            } => classify(operation, status, &body, retry_after),
            Failure::RateLimited { body, retry_after } => {
                classify(operation, StatusCode::TOO_MANY_REQUESTS, &body, retry_after)
            }
            Failure::Unauthorized { body } => {
                classify(operation, StatusCode::UNAUTHORIZED, &body, None)
            }
            Failure::Final(err) => err,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Network(e) => write!(f, "network error: {e}"),
            Failure::Server { status, body, .. } => {
                write!(f, "server error {}: {}", status.as_u16(), body.summary())
            }
            Failure::RateLimited { body, .. } => write!(f, "rate limited: {}", body.summary()),
            Failure::Unauthorized { body } => write!(f, "unauthorized: {}", body.summary()),
            Failure::Final(e) => write!(f, "{e}"),
        }
    }
}

/// The bounds of the transient-failure retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The longest server-requested (503 `Retry-After`) delay worth waiting for.
    pub max_server_wait: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with jitter, capped at `backoff_max`. backon adds its jitter (up to
    /// the delay again) after applying its cap, so it is given half of ours.
    fn backoff(&self) -> ExponentialBuilder {
        let cap = self.backoff_max / 2;
        ExponentialBuilder::default()
            .with_min_delay(self.backoff_min.min(cap))
            .with_max_delay(cap)
            .with_max_times(self.max_retries)
            .with_jitter()
    }

    /// Runs `attempt` until it succeeds, fails for a non-transient reason, or the retries are
    /// used up. Each retry is counted and logged with the attempt number and the cause.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        operation: &Operation,
        counters: &Counters,
        attempt: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let max_server_wait = self.max_server_wait;
        let mut attempts = 0_u32;
        attempt
            .retry(self.backoff())
            .when(Failure::is_transient)
            .adjust(move |failure, delay| {
                let delay = delay?;
                match failure.maintenance_retry_after() {
                    Some(asked) if asked > max_server_wait => None,
                    Some(asked) => Some(delay.max(asked)),
                    None => Some(delay),
                }
            })
            .notify(|failure, delay| {
                attempts += 1;
                counters.retry();
                tracing::warn!(
                    operation = %operation,
                    attempt = attempts,
                    delay_ms = delay.as_millis() as u64,
                    cause = %failure,
                    "Outreach request failed; retrying"
                );
            })
            .await
    }
}

/// The body of a response, bounded ([`crate::response_body`]): a body too long to keep is
/// final, a connection lost while it arrives is a network failure like any other.
pub(crate) async fn read_body(
    response: reqwest::Response,
    operation: &Operation,
) -> Result<Bytes, Failure> {
    crate::response_body::read(response)
        .await
        .map_err(|error| match error {
            BodyError::Network(source) => Failure::Network(source),
            too_large @ BodyError::TooLarge { .. } => Failure::Final(OutreachError::Decode {
                operation: operation.clone(),
                detail: too_large.to_string(),
            }),
        })
}

/// `Retry-After` of a response, relative to now.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn no_backoff_delay_exceeds_the_cap_even_with_jitter() {
        use backon::BackoffBuilder;
        let policy = RetryPolicy {
            max_retries: 200,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            max_server_wait: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = policy.backoff().build().collect();
        assert_eq!(delays.len(), 200);
        assert!(
            delays.iter().all(|d| *d <= policy.backoff_max),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|d| *d > policy.backoff_max / 4),
            "it does grow"
        );
    }

    fn policy(max_retries: usize) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            max_server_wait: Duration::from_secs(1),
        }
    }

    fn server(status: u16, retry_after: Option<Duration>) -> Failure {
        Failure::Server {
            status: StatusCode::from_u16(status).unwrap(),
            body: ErrorBody::Other(String::new()),
            retry_after,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let counters = Counters::default();
        let calls = AtomicU32::new(0);
        let result = policy(5)
            .run(&Operation::ListUsers, &counters, || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(server(502, None)),
                    _ => Ok("done"),
                }
            })
            .await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(counters.snapshot(0).retries, 2);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let counters = Counters::default();
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = policy(2)
            .run(&Operation::ListUsers, &counters, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(server(500, None))
            })
            .await;
        assert!(matches!(result, Err(Failure::Server { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn final_and_caller_handled_failures_are_not_retried() {
        let counters = Counters::default();
        for failure in [
            || Failure::RateLimited {
                body: ErrorBody::Other(String::new()),
                retry_after: None,
            },
            || Failure::Unauthorized {
                body: ErrorBody::Other(String::new()),
            },
        ] {
            let calls = AtomicU32::new(0);
            let result: Result<(), _> = policy(5)
                .run(&Operation::ListUsers, &counters, || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(failure())
                })
                .await;
            assert!(result.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_maintenance_window_longer_than_the_bound_ends_the_retries() {
        let counters = Counters::default();
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = policy(5)
            .run(&Operation::ListUsers, &counters, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(server(503, Some(Duration::from_secs(3600))))
            })
            .await;
        assert!(matches!(result, Err(Failure::Server { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
