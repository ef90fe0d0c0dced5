//! Sending webhook deliveries in the background, as Outreach does, and recording each one.
//!
//! docs/outreach.md, "Webhooks delivery": a delivery is a POST with a 5 s timeout; a network
//! failure (connection
//! refused, reset, timeout) is tried again about a second later, up to 4 attempts in all; any
//! HTTP answer, 4xx and 5xx included, counts as delivered and is never retried; redirects are
//! not followed. Each webhook has its own queue and worker, so deliveries to one URL leave in
//! the order the changes happened and a slow receiver holds up only itself.
//!
//! The record ([`SimDelivery`]) is the test's view: what was sent (payload, signature, event)
//! and how it ended (attempts, the status answered or the last network error). It is written
//! when a delivery ends, and [`Deliveries::wait_for`] lets a test wait for a number of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::webhooks::Outbound;

/// Attempts per delivery, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// One finished delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimDelivery {
    pub webhook_id: i64,
    pub url: String,
    /// `user.created` or `user.updated`.
    pub event_name: String,
    pub user_id: i64,
    /// The body sent, parsed.
    pub payload: Value,
    /// `Outreach-Webhook-Signature` as sent, if the webhook has a secret.
    pub signature: Option<String>,
    pub attempts: u32,
    /// The status the receiver answered; `None` when every attempt failed on the network.
    pub status: Option<u16>,
    /// The last network error, when no attempt got an answer.
    pub error: Option<String>,
}

/// How deliveries are sent.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryPolicy {
    pub timeout: Duration,
    pub retry_interval: Duration,
}

/// The handle on the background sender and its record. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deliveries {
    queue: mpsc::UnboundedSender<Outbound>,
    record: Arc<Mutex<Vec<SimDelivery>>>,
    finished: watch::Sender<usize>,
}

impl Deliveries {
    /// Starts the sender on the current tokio runtime.
    pub fn start(policy: DeliveryPolicy) -> Deliveries {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Outbound>();
        let record = Arc::new(Mutex::new(Vec::new()));
        let (finished, _) = watch::channel(0);
        let deliveries = Deliveries {
            queue,
            record,
            finished,
        };
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Outreach-Webhooks (usersync simulator)")
            .build()
            .expect("a plain HTTP client builds");
        let dispatcher = deliveries.clone();
        tokio::spawn(async move {
            let mut workers: HashMap<i64, mpsc::UnboundedSender<Outbound>> = HashMap::new();
            while let Some(outbound) = incoming.recv().await {
                let worker = workers.entry(outbound.webhook_id).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(work(rx, http.clone(), policy, dispatcher.clone()));
                    tx
                });
                // A worker only stops when its sender is dropped, which happens here only.
                let _ = worker.send(outbound);
            }
        });
        deliveries
    }

    /// Queues a delivery; never blocks (callers hold the simulator's state lock).
    pub fn send(&self, outbound: Outbound) {
        if self.queue.send(outbound).is_err() {
            tracing::warn!("the webhook sender has stopped; a delivery was dropped");
        }
    }

    /// Every finished delivery, oldest first.
    pub fn all(&self) -> Vec<SimDelivery> {
        self.lock().clone()
    }

    pub fn clear(&self) {
        self.lock().clear();
        self.finished.send_replace(0);
    }

    /// Waits until at least `n` deliveries have finished (or `timeout` passed) and returns
    /// them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SimDelivery> {
        let mut finished = self.finished.subscribe();
        let _ = tokio::time::timeout(timeout, finished.wait_for(|count| *count >= n)).await;
        self.all()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SimDelivery>> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, delivery: SimDelivery) {
        let count = {
            let mut record = self.lock();
            record.push(delivery);
            record.len()
        };
        self.finished.send_replace(count);
    }
}

async fn work(
    mut queue: mpsc::UnboundedReceiver<Outbound>,
    http: reqwest::Client,
    policy: DeliveryPolicy,
    deliveries: Deliveries,
) {
    while let Some(outbound) = queue.recv().await {
        let delivery = deliver(&http, policy, outbound).await;
        deliveries.finish(delivery);
    }
}

async fn deliver(http: &reqwest::Client, policy: DeliveryPolicy, out: Outbound) -> SimDelivery {
    let mut attempts = 0;
    let mut status = None;
    let mut error = None;
    while attempts < MAX_ATTEMPTS {
        attempts += 1;
        let mut request = http
            .post(&out.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("outreach-webhook-cleanup-token", &out.cleanup_token)
            .body(out.body.clone());
        if let Some(signature) = &out.signature {
            request = request.header("Outreach-Webhook-Signature", signature);
        }
        match request.send().await {
            Ok(response) => {
                status = Some(response.status().as_u16());
                error = None;
                // The answer's body is read and dropped; only the status counts.
                let _ = response.bytes().await;
                break;
            }
            Err(failure) => {
                error = Some(failure.to_string());
                if attempts < MAX_ATTEMPTS {
                    tokio::time::sleep(policy.retry_interval).await;
                }
            }
        }
    }
    SimDelivery {
        webhook_id: out.webhook_id,
        url: out.url,
        event_name: out.event_name,
        user_id: out.user_id,
        payload: serde_json::from_str(&out.body).unwrap_or(Value::Null),
        signature: out.signature,
        attempts,
        status,
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    fn outbound(url: String, id: i64) -> Outbound {
        Outbound {
            webhook_id: 1,
            url,
            event_name: "user.updated".into(),
            user_id: id,
            body: format!(r#"{{"n":{id}}}"#),
            signature: Some("ab".into()),
            cleanup_token: "t".into(),
        }
    }

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_millis(300),
            retry_interval: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn an_http_error_answer_counts_as_delivered_and_order_is_kept() {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = hits.clone();
        let app = Router::new().route(
            "/hook",
            post(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let deliveries = Deliveries::start(policy());
        for id in 1..=3 {
            deliveries.send(outbound(url.clone(), id));
        }
        let done = deliveries.wait_for(3, Duration::from_secs(10)).await;
        assert_eq!(done.len(), 3);
        assert_eq!(
            done.iter().map(|d| d.user_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(
            done.iter()
                .all(|d| d.status == Some(500) && d.attempts == 1)
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3, "a 500 is not retried");
    }

    #[tokio::test]
    async fn network_failures_are_tried_four_times() {
        // Bind and drop: nothing listens on the port any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let deliveries = Deliveries::start(policy());
        deliveries.send(outbound(format!("http://127.0.0.1:{port}/hook"), 9));
        let done = deliveries.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].attempts, MAX_ATTEMPTS);
        assert_eq!(done[0].status, None);
        assert!(done[0].error.is_some());
        deliveries.clear();
        assert!(deliveries.all().is_empty());
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_a_network_failure() {
        let app = Router::new().route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let deliveries = Deliveries::start(DeliveryPolicy {
            timeout: Duration::from_millis(100),
            retry_interval: Duration::from_millis(10),
        });
        deliveries.send(outbound(url, 1));
        let done = deliveries.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(done[0].attempts, MAX_ATTEMPTS);
        assert_eq!(done[0].status, None);
    }
}
