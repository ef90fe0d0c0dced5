//! The simulator's mutable state behind one lock, shared by the handle and the routes.
//!
//! One `std::sync::Mutex` over everything keeps each request's view consistent (a token
//! check, a budget decrement and a directory write happen as one step, as they would in a
//! transaction) and is never held across an `.await`: handlers lock, compute a response,
//! and unlock before any sleeping or I/O.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::TimeDelta;

use chrono::{DateTime, Utc};

use super::SimConfig;
use super::credentials::Credentials;
use super::delivery::Deliveries;
use super::directory::Directory;
use super::faults::Faults;
use super::rate_limit::RateLimiter;
use super::webhooks::{UserEvent, Webhooks};
use crate::request_log::RequestLog;

/// Everything the simulator remembers.
#[derive(Debug)]
pub struct SimState {
    pub directory: Directory,
    pub credentials: Credentials,
    pub rate_limiter: RateLimiter,
    pub faults: Faults,
    pub webhooks: Webhooks,
    /// The background sender of webhook deliveries (never blocks).
    pub deliveries: Deliveries,
}

impl SimState {
    /// Queues the webhook deliveries a user change causes.
    pub fn announce(&mut self, event: UserEvent<'_>, now: DateTime<Utc>) {
        for outbound in self.webhooks.outbound(event, now) {
            self.deliveries.send(outbound);
        }
    }
}

/// The configuration, the address, and the locked state.
#[derive(Debug)]
pub struct Shared {
    pub config: SimConfig,
    pub local_addr: SocketAddr,
    pub base_url: String,
    /// Every request to `/api/v2` and `/oauth`, outside the state lock.
    pub requests: RequestLog,
    /// The webhook deliveries and their record, outside the state lock.
    pub deliveries: Deliveries,
    state: Mutex<SimState>,
}

impl Shared {
    pub fn new(config: SimConfig, local_addr: SocketAddr, deliveries: Deliveries) -> Shared {
        let host = if local_addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], local_addr.port()))
        } else {
            local_addr
        };
        let base_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{host}"),
        };
        let state = SimState {
            directory: Directory::new(),
            credentials: Credentials::new(delta(config.access_token_ttl)),
            rate_limiter: RateLimiter::new(
                config.rate_limit_per_window,
                delta(config.rate_limit_window),
            ),
            faults: Faults::default(),
            webhooks: Webhooks::default(),
            deliveries: deliveries.clone(),
        };
        Shared {
            config,
            local_addr,
            base_url,
            requests: RequestLog::default(),
            deliveries,
            state: Mutex::new(state),
        }
    }

    /// The state; a panic in another holder does not make it unusable (every mutation
    /// leaves it consistent).
    pub fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/v2", self.base_url)
    }

    pub fn mint_throttle(&self) -> TimeDelta {
        delta(self.config.mint_throttle)
    }
}

/// A std duration as chrono's, saturating at chrono's maximum.
pub fn delta(duration: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}
