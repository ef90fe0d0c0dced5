//! The log of requests a simulator answered, shared by every simulator.
//!
//! Tests count Outreach and Salesforce calls from the simulator's side ("a create costs one
//! call"), so the log is part of the equipment, not a debugging aid: one type, one middleware,
//! recorded after the response is built so the status is the one the client saw. The log sits
//! beside a simulator's state lock, not inside it, so recording never waits for a handler.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};

/// One request a simulator answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRequest {
    pub method: String,
    /// Path and query exactly as received.
    pub path: String,
    pub status: u16,
}

/// The requests answered since the last reset, oldest first. Clones share one log.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<SimRequest>>>);

impl RequestLog {
    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<SimRequest>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn all(&self) -> Vec<SimRequest> {
        self.entries().clone()
    }

    pub fn count(&self) -> u64 {
        self.entries().len() as u64
    }

    pub fn clear(&self) {
        self.entries().clear();
    }
}

/// Middleware: records every request that passes through it, with the status it got.
pub async fn record(State(log): State<RequestLog>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let response = next.run(request).await;
    let status = response.status().as_u16();
    log.entries().push(SimRequest {
        method,
        path,
        status,
    });
    response
}
