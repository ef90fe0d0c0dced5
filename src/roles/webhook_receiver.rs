//! The HTTP receiver: `POST /webhooks/outreach`, from a signed delivery to a published event.
//!
//! Each delivery goes through the same steps, and each step has one answer:
//!
//! | step | when it fails | answer | the delivery |
//! |---|---|---|---|
//! | signature ([`verify_signature`]) | missing, not hex, wrong | 401, a warning | dropped: it may not come from Outreach |
//! | parse ([`parse_delivery`]) | another resource or action | 200 `ignored` | dropped |
//! | parse | broken payload | 400 naming the member | dead-lettered with the reason |
//! | freshness ([`check_fresh`]) | `meta.deliveredAt` absent, or more than 5 minutes from now | 400 | dead-lettered with the reason |
//! | complete (read the user, when the payload is partial) | the read fails | 503 | dead-lettered |
//! | build and validate the event | the event would be invalid | 400 naming the field | dead-lettered |
//! | [`WebhookSink::accept`] | not accepted | 503 | dead-lettered when the sink still can |
//! | | accepted | 200 `accepted` with the event id | published |
//!
//! Outreach counts every answer other than a network failure as delivered, 4xx and 5xx
//! included, and never retries it. The status is therefore information for people reading
//! Outreach's delivery log, not a way to get a second try: a signed delivery that cannot become
//! an event is handed to [`WebhookSink::refuse`] (the dead-letter topic) before it is answered,
//! so it is never silently lost. Only a timeout or a dropped connection makes Outreach send
//! again (up to 4 attempts, about a second apart, 5 s each), and the stable event id makes
//! those copies harmless.
//!
//! A copy sent by someone else is not: whoever captured a signed delivery could post it again
//! later and set the user back to what it said. The signature covers the body, and the body
//! carries `meta.deliveredAt`, so a delivery sent more than [`REPLAY_WINDOW`] ago (or dated
//! that far ahead) is refused — dead-lettered, never applied — and so is one without that
//! time. Outreach's own copies come within seconds, well inside the window.
//!
//! Once the signature is good, the rest runs in its own task, awaited by the request: if
//! Outreach gives up on a slow answer and closes the connection, the delivery is still
//! published or dead-lettered instead of being cut off half-way.
//!
//! The secret is only ever used to check signatures: no log line, error or answer carries it,
//! nor the signature, nor the `outreach-webhook-cleanup-token` header (which can delete the
//! webhook). Answers to failures that are usersync's own (a read or a publish that failed) say
//! so without internal details; those go to the log.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::kafka::{ChangePublisher, DeadLetter, PublishError};
use crate::model::event::UserChange;
use crate::outreach::webhooks::{Delivery, SIGNATURE_HEADER, parse_delivery, verify_signature};
use crate::outreach::webhooks::{SignatureError, UserDelivery};
use crate::outreach::{OutreachClient, OutreachError, OutreachUser, OutreachUserId};

/// The path Outreach POSTs to.
pub const PATH: &str = "/webhooks/outreach";

/// The largest body accepted; a user delivery is a few kilobytes.
pub const MAX_BODY: usize = 1 << 20;

/// How far `meta.deliveredAt` may be from the receiver's clock, either way.
pub const REPLAY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Whether a delivery sent at `delivered_at` may be taken at `now`; the reason when not.
pub fn check_fresh(
    delivered_at: Option<chrono::DateTime<Utc>>,
    now: chrono::DateTime<Utc>,
) -> Result<(), String> {
    let Some(sent) = delivered_at else {
        return Err(
            "meta.deliveredAt is absent: without the signed time of sending, a replayed \
             delivery cannot be told from a fresh one"
                .into(),
        );
    };
    let minutes = REPLAY_WINDOW.num_minutes();
    if now - sent > REPLAY_WINDOW {
        return Err(format!(
            "meta.deliveredAt {} is more than {minutes} minutes before this receiver's clock \
             ({}): a replayed or held-up delivery is not applied",
            sent.to_rfc3339(),
            now.to_rfc3339()
        ));
    }
    if sent - now > REPLAY_WINDOW {
        return Err(format!(
            "meta.deliveredAt {} is more than {minutes} minutes after this receiver's clock \
             ({}): check the clocks",
            sent.to_rfc3339(),
            now.to_rfc3339()
        ));
    }
    Ok(())
}

/// The `source` header of a dead letter from this receiver.
pub const DEAD_LETTER_SOURCE: &str = "outreach";

/// Why a sink did not take an event or a dead letter.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SinkError(Box<dyn StdError + Send + Sync>);

impl SinkError {
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync>>) -> SinkError {
        SinkError(error.into())
    }
}

impl From<PublishError> for SinkError {
    fn from(error: PublishError) -> SinkError {
        SinkError::new(error)
    }
}

/// A signed delivery that could not become an event.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// Stable for one delivery: the event id when the payload named one, else
    /// `or:sha256:<hex of the body's SHA-256>`, so resent copies share a key.
    pub key: &'a str,
    /// The body as received.
    pub raw: &'a [u8],
    /// Why, in words a person can act on (the member that is wrong, or what failed).
    pub reason: &'a str,
    /// `meta.eventName`, when the payload could be read that far.
    pub event_name: Option<&'a str>,
}

/// Where the receiver hands what it received: events to publish, refusals to keep.
#[async_trait]
pub trait WebhookSink: Send + Sync {
    /// Publishes one event. Returns once it is durably taken (for Kafka: confirmed), because
    /// the answer tells Outreach the delivery is done.
    async fn accept(&self, change: &UserChange) -> Result<(), SinkError>;
    /// Keeps a delivery that could not become an event (for Kafka: the dead-letter topic).
    async fn refuse(&self, refusal: &Refusal<'_>) -> Result<(), SinkError>;
}

/// Reads the current state of a user, to complete a partial payload.
#[async_trait]
pub trait UserReader: Send + Sync {
    async fn read_user(&self, id: OutreachUserId) -> Result<OutreachUser, OutreachError>;
}

#[async_trait]
impl UserReader for OutreachClient {
    /// `GET /users/{id}`, with the client's rate limiting and retries.
    async fn read_user(&self, id: OutreachUserId) -> Result<OutreachUser, OutreachError> {
        self.get_user(id).await.map(|reply| reply.value)
    }
}

/// The Kafka sink: events through [`ChangePublisher::publish`] (awaiting Kafka's
/// confirmation), refusals through [`ChangePublisher::dead_letter`] with `source: outreach`
/// and, when known, an `event_name` header.
pub struct KafkaSink {
    publisher: Arc<ChangePublisher>,
}

impl KafkaSink {
    pub fn new(publisher: Arc<ChangePublisher>) -> KafkaSink {
        KafkaSink { publisher }
    }
}

#[async_trait]
impl WebhookSink for KafkaSink {
    async fn accept(&self, change: &UserChange) -> Result<(), SinkError> {
        self.publisher.publish(change).await?.await?;
        Ok(())
    }

    async fn refuse(&self, refusal: &Refusal<'_>) -> Result<(), SinkError> {
        let context = refusal
            .event_name
            .map(|name| vec![("event_name", name.to_owned())])
            .unwrap_or_default();
        self.publisher
            .dead_letter(DeadLetter {
                key: refusal.key,
                raw: refusal.raw,
                reason: refusal.reason,
                source: DEAD_LETTER_SOURCE,
                context,
            })
            .await?;
        Ok(())
    }
}

/// Why a receiver cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    #[error(
        "outreach.webhook_secret is empty: without it anyone could post user changes, so the \
         webhook receiver does not start (set USERSYNC_OUTREACH__WEBHOOK_SECRET)"
    )]
    NoSecret,
}

/// How one delivery was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200: the event was published.
    Accepted { event_id: String },
    /// 200: not a user.created or user.updated delivery.
    Ignored { event_name: String, reason: String },
    /// 401: the signature did not check out.
    Unauthorized(SignatureError),
    /// 400: the payload cannot become an event; `problem` names the member.
    Refused {
        problem: String,
        dead_lettered: bool,
    },
    /// 503: usersync could not complete or publish it (details in the log).
    Failed {
        problem: String,
        dead_lettered: bool,
    },
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Accepted { .. } | Outcome::Ignored { .. } => StatusCode::OK,
            Outcome::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Outcome::Refused { .. } => StatusCode::BAD_REQUEST,
            Outcome::Failed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON answer: `{"status": …}` on success, `{"error": …}` otherwise.
    pub fn body(&self) -> Value {
        match self {
            Outcome::Accepted { event_id } => json!({"status": "accepted", "event_id": event_id}),
            Outcome::Ignored { event_name, reason } => {
                json!({"status": "ignored", "event_name": event_name, "reason": reason})
            }
            Outcome::Unauthorized(problem) => json!({"error": problem.to_string()}),
            Outcome::Refused {
                problem,
                dead_lettered,
            } => json!({"error": format!("payload: {problem}"), "dead_lettered": dead_lettered}),
            Outcome::Failed { dead_lettered, .. } => json!({
                "error": "usersync could not take this delivery now",
                "dead_lettered": dead_lettered,
            }),
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body().to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The receiver: the secret, the sink and the reader. Cheap to clone.
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

struct Inner {
    secret: Secret,
    sink: Arc<dyn WebhookSink>,
    reader: Arc<dyn UserReader>,
}

impl fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("secret", &self.inner.secret)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// A receiver checking signatures with `secret`, handing events and refusals to `sink`, and
    /// completing partial payloads with `reader`. Refuses an empty secret.
    pub fn new(
        secret: Secret,
        sink: Arc<dyn WebhookSink>,
        reader: Arc<dyn UserReader>,
    ) -> Result<WebhookReceiver, ReceiverError> {
        if secret.expose().is_empty() {
            return Err(ReceiverError::NoSecret);
        }
        Ok(WebhookReceiver {
            inner: Arc::new(Inner {
                secret,
                sink,
                reader,
            }),
        })
    }

    /// `POST /webhooks/outreach` (bodies up to [`MAX_BODY`]), ready to merge into a server's
    /// router.
    pub fn router(&self) -> Router {
        Router::new()
            .route(PATH, post(receive))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    /// One delivery, from its headers and raw body to its answer.
    pub async fn handle(&self, headers: &HeaderMap, body: Bytes) -> Outcome {
        let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
        if let Err(problem) =
            verify_signature(self.inner.secret.expose().as_bytes(), signature, &body)
        {
            tracing::warn!(
                reason = %problem,
                bytes = body.len(),
                "refused an Outreach webhook delivery: its signature does not check out"
            );
            return Outcome::Unauthorized(problem);
        }
        let this = self.clone();
        match tokio::spawn(async move { this.process(&body).await }).await {
            Ok(outcome) => outcome,
            Err(join) => {
                tracing::error!(error = %join, "processing an Outreach webhook delivery failed");
                Outcome::Failed {
                    problem: format!("processing the delivery did not finish: {join}"),
                    dead_lettered: false,
                }
            }
        }
    }

    /// Everything after the signature.
    async fn process(&self, body: &[u8]) -> Outcome {
        let observed_at = Utc::now();
        let delivery = match parse_delivery(body) {
            Ok(Delivery::User(delivery)) => *delivery,
            Ok(Delivery::Ignored { event_name, reason }) => {
                tracing::debug!(event_name, reason, "ignored an Outreach webhook delivery");
                return Outcome::Ignored { event_name, reason };
            }
            Err(problem) => {
                let key = body_key(body);
                return self
                    .refuse(&key, body, None, problem.to_string(), Kind::Refused)
                    .await;
            }
        };
        let key = delivery.event_id();
        let event_name = delivery.event_name.clone();
        if let Err(reason) = check_fresh(delivery.delivered_at, observed_at) {
            tracing::warn!(
                event_name,
                %reason,
                "refused an Outreach webhook delivery: not sent within the replay window"
            );
            return self
                .refuse(&key, body, Some(&event_name), reason, Kind::Refused)
                .await;
        }
        let current = match self.complete(&delivery).await {
            Ok(current) => current,
            Err(reason) => {
                return self
                    .refuse(&key, body, Some(&event_name), reason, Kind::Failed)
                    .await;
            }
        };
        let change = match delivery.into_change(current.as_ref(), observed_at) {
            Ok(change) => change,
            Err(problem) => {
                return self
                    .refuse(
                        &key,
                        body,
                        Some(&event_name),
                        problem.to_string(),
                        Kind::Refused,
                    )
                    .await;
            }
        };
        match self.inner.sink.accept(&change).await {
            Ok(()) => {
                tracing::info!(
                    event_id = %change.event_id,
                    event_name,
                    "published an Outreach webhook delivery"
                );
                Outcome::Accepted {
                    event_id: change.event_id,
                }
            }
            Err(error) => {
                let reason = format!("publishing event {} failed: {error}", change.event_id);
                self.refuse(&key, body, Some(&event_name), reason, Kind::Failed)
                    .await
            }
        }
    }

    /// The user as read through the API when the payload lacks attributes the event needs.
    async fn complete(&self, delivery: &UserDelivery) -> Result<Option<OutreachUser>, String> {
        let missing = delivery.missing();
        if missing.is_empty() {
            return Ok(None);
        }
        tracing::debug!(
            %delivery,
            missing = ?missing,
            "reading the Outreach user to complete a partial payload"
        );
        self.inner
            .reader
            .read_user(delivery.id)
            .await
            .map(Some)
            .map_err(|error| {
                format!(
                    "the payload lacks {} and reading the user failed: {error}",
                    missing.join(", ")
                )
            })
    }

    async fn refuse(
        &self,
        key: &str,
        raw: &[u8],
        event_name: Option<&str>,
        reason: String,
        kind: Kind,
    ) -> Outcome {
        let refusal = Refusal {
            key,
            raw,
            reason: &reason,
            event_name,
        };
        let dead_lettered = match self.inner.sink.refuse(&refusal).await {
            Ok(()) => {
                tracing::warn!(
                    key,
                    event_name,
                    reason,
                    "dead-lettered an Outreach webhook delivery"
                );
                true
            }
            Err(error) => {
                tracing::error!(
                    key,
                    event_name,
                    reason,
                    %error,
                    "an Outreach webhook delivery could be neither published nor dead-lettered; \
                     it is lost unless Outreach sends the user again"
                );
                false
            }
        };
        match kind {
            Kind::Refused => Outcome::Refused {
                problem: reason,
                dead_lettered,
            },
            Kind::Failed => Outcome::Failed {
                problem: reason,
                dead_lettered,
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Refused,
    Failed,
}

/// The dead-letter key of a delivery whose payload names no event.
fn body_key(body: &[u8]) -> String {
    format!("or:sha256:{}", hex::encode(Sha256::digest(body)))
}

async fn receive(
    State(receiver): State<WebhookReceiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receiver.handle(&headers, body).await.into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::HeaderValue;

    use super::*;
    use crate::outreach::Operation;
    use crate::outreach::webhooks::sign;

    const SECRET: &str = "whsec-unit";

    /// Key, raw body, reason, event name.
    type Refused = (String, Vec<u8>, String, Option<String>);

    #[derive(Default)]
    struct Recorder {
        accepted: Mutex<Vec<UserChange>>,
        refused: Mutex<Vec<Refused>>,
        fail_accept: bool,
        fail_refuse: bool,
    }

    #[async_trait]
    impl WebhookSink for Recorder {
        async fn accept(&self, change: &UserChange) -> Result<(), SinkError> {
            if self.fail_accept {
                return Err(SinkError::new("broker down"));
            }
            self.accepted.lock().unwrap().push(change.clone());
            Ok(())
        }

        async fn refuse(&self, r: &Refusal<'_>) -> Result<(), SinkError> {
            if self.fail_refuse {
                return Err(SinkError::new("broker down"));
            }
            self.refused.lock().unwrap().push((
                r.key.to_owned(),
                r.raw.to_vec(),
                r.reason.to_owned(),
                r.event_name.map(str::to_owned),
            ));
            Ok(())
        }
    }

    /// Knows user 42 only; counts reads.
    #[derive(Default)]
    struct Directory {
        reads: Mutex<u32>,
    }

    #[async_trait]
    impl UserReader for Directory {
        async fn read_user(&self, id: OutreachUserId) -> Result<OutreachUser, OutreachError> {
            *self.reads.lock().unwrap() += 1;
            if id != OutreachUserId(42) {
                return Err(OutreachError::NotFound {
                    operation: Operation::GetUser { id },
                    detail: format!("Could not find 'user' with ID '{id}'."),
                });
            }
            Ok(OutreachUser {
                id,
                email: "jane@acme.test".into(),
                username: Some("jdoe".into()),
                first_name: Some("Jane".into()),
                last_name: Some("Doe".into()),
                title: None,
                locked: false,
                custom: Default::default(),
                updated_at: None,
            })
        }
    }

    fn receiver(sink: Arc<Recorder>, reader: Arc<Directory>) -> WebhookReceiver {
        WebhookReceiver::new(Secret::new(SECRET), sink, reader).unwrap()
    }

    fn signed(body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&sign(SECRET.as_bytes(), body)).unwrap(),
        );
        headers
    }

    /// A signed-able delivery locking user `id`, sent now.
    fn locked(id: i64) -> Bytes {
        locked_sent(id, Some(Utc::now()))
    }

    fn locked_sent(id: i64, delivered_at: Option<chrono::DateTime<Utc>>) -> Bytes {
        let mut body = json!({
            "data": {"type": "user", "id": id.to_string(),
                     "attributes": {"locked": true, "updatedAt": "2025-02-03T04:05:06.789Z"}},
            "meta": {"eventName": "user.updated"}
        });
        if let Some(sent) = delivered_at {
            body["meta"]["deliveredAt"] = json!(sent.to_rfc3339());
        }
        Bytes::from(body.to_string())
    }

    #[test]
    fn a_delivery_is_fresh_within_five_minutes_of_the_clock_either_way() {
        let now = Utc::now();
        let minutes = |m: i64| Some(now + chrono::TimeDelta::minutes(m));
        assert_eq!(check_fresh(minutes(0), now), Ok(()));
        assert_eq!(check_fresh(minutes(-5), now), Ok(()));
        assert_eq!(check_fresh(minutes(5), now), Ok(()));
        let old = check_fresh(minutes(-6), now).unwrap_err();
        assert!(old.contains("more than 5 minutes before"), "{old}");
        let ahead = check_fresh(minutes(6), now).unwrap_err();
        assert!(ahead.contains("more than 5 minutes after"), "{ahead}");
        let absent = check_fresh(None, now).unwrap_err();
        assert!(absent.starts_with("meta.deliveredAt is absent"), "{absent}");
    }

    #[tokio::test]
    async fn a_replayed_or_undated_delivery_is_dead_lettered_not_published() {
        let hour_ago = Utc::now() - chrono::TimeDelta::hours(1);
        for body in [locked_sent(42, Some(hour_ago)), locked_sent(42, None)] {
            let sink = Arc::new(Recorder::default());
            let directory = Arc::new(Directory::default());
            let receiver =
                WebhookReceiver::new(Secret::new(SECRET), sink.clone(), directory).unwrap();
            let outcome = receiver.handle(&signed(&body), body.clone()).await;
            assert_eq!(outcome.status(), StatusCode::BAD_REQUEST, "{outcome:?}");
            let answer = outcome.body().to_string();
            assert!(answer.contains("meta.deliveredAt"), "{answer}");
            assert!(
                sink.accepted.lock().unwrap().is_empty(),
                "nothing published"
            );
            let refused = sink.refused.lock().unwrap().clone();
            assert_eq!(refused.len(), 1, "dead-lettered with the reason");
            assert_eq!(refused[0].1, body.to_vec(), "the raw body");
        }
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let err = WebhookReceiver::new(
            Secret::default(),
            Arc::new(Recorder::default()),
            Arc::new(Directory::default()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("outreach.webhook_secret"), "{err}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let r = receiver(Arc::default(), Arc::default());
        assert!(!format!("{r:?}").contains(SECRET));
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_refused_before_it_is_read() {
        let sink = Arc::new(Recorder::default());
        let reader = Arc::new(Directory::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = receiver(sink.clone(), reader.clone()).router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let post = |body: Vec<u8>| {
            let headers = signed(&body);
            reqwest::Client::new()
                .post(format!("http://{address}{PATH}"))
                .headers(headers)
                .body(body)
                .send()
        };

        let too_long = post(vec![b' '; MAX_BODY + 1]).await.unwrap();

        assert_eq!(too_long.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(sink.accepted.lock().unwrap().is_empty());
        assert!(sink.refused.lock().unwrap().is_empty());
        // At the bound, the body is read (and refused for what it is, not for its size).
        let at_bound = post(vec![b' '; MAX_BODY]).await.unwrap();
        assert_eq!(at_bound.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_bad_signature_reaches_neither_the_sink_nor_the_reader() {
        let sink = Arc::new(Recorder::default());
        let reader = Arc::new(Directory::default());
        let r = receiver(sink.clone(), reader.clone());
        let body = locked(42);
        let outcome = r.handle(&HeaderMap::new(), body.clone()).await;
        assert_eq!(outcome, Outcome::Unauthorized(SignatureError::Missing));
        assert_eq!(outcome.status(), StatusCode::UNAUTHORIZED);
        let mut wrong = signed(b"another body");
        assert_eq!(
            r.handle(&wrong, body.clone()).await,
            Outcome::Unauthorized(SignatureError::Mismatch)
        );
        wrong.insert(SIGNATURE_HEADER, HeaderValue::from_static("nope"));
        assert_eq!(
            r.handle(&wrong, body).await,
            Outcome::Unauthorized(SignatureError::NotHex)
        );
        assert!(sink.accepted.lock().unwrap().is_empty());
        assert!(sink.refused.lock().unwrap().is_empty());
        assert_eq!(*reader.reads.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_partial_update_is_completed_by_one_read_and_published() {
        let sink = Arc::new(Recorder::default());
        let reader = Arc::new(Directory::default());
        let r = receiver(sink.clone(), reader.clone());
        let body = locked(42);
        let outcome = r.handle(&signed(&body), body).await;
        assert_eq!(
            outcome,
            Outcome::Accepted {
                event_id: "or:42:2025-02-03T04:05:06.789Z".into()
            }
        );
        assert_eq!(*reader.reads.lock().unwrap(), 1);
        let accepted = sink.accepted.lock().unwrap();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].user.email.as_deref(), Some("jane@acme.test"));
        assert_eq!(accepted[0].user.locked, Some(true));
        assert_eq!(
            outcome.body(),
            json!({"status": "accepted", "event_id": "or:42:2025-02-03T04:05:06.789Z"})
        );
    }

    #[tokio::test]
    async fn a_broken_payload_is_dead_lettered_and_answered_400_naming_the_member() {
        let sink = Arc::new(Recorder::default());
        let r = receiver(sink.clone(), Arc::default());
        let body = Bytes::from_static(
            br#"{"data":{"type":"user","id":"42","attributes":{"locked":"yes","updatedAt":"2025-02-03T04:05:06Z"}},"meta":{"eventName":"user.updated"}}"#,
        );
        let outcome = r.handle(&signed(&body), body.clone()).await;
        assert_eq!(outcome.status(), StatusCode::BAD_REQUEST);
        let error = outcome.body()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("data.attributes.locked"), "{error}");
        let refused = sink.refused.lock().unwrap();
        assert_eq!(refused.len(), 1);
        let (key, raw, reason, _) = &refused[0];
        assert!(
            key.starts_with("or:sha256:") && key.len() == 10 + 64,
            "{key}"
        );
        assert_eq!(raw, &body.to_vec());
        assert!(reason.contains("data.attributes.locked"), "{reason}");
    }

    #[tokio::test]
    async fn other_resources_are_answered_200_and_dropped() {
        let sink = Arc::new(Recorder::default());
        let r = receiver(sink.clone(), Arc::default());
        let body = Bytes::from_static(
            br#"{"data":{"type":"prospect","id":"1","attributes":{}},"meta":{"eventName":"prospect.created"}}"#,
        );
        let outcome = r.handle(&signed(&body), body).await;
        assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
        assert_eq!(outcome.status(), StatusCode::OK);
        assert!(sink.accepted.lock().unwrap().is_empty());
        assert!(sink.refused.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_read_is_dead_lettered_under_the_event_id() {
        let sink = Arc::new(Recorder::default());
        let r = receiver(sink.clone(), Arc::default());
        let body = locked(7);
        let outcome = r.handle(&signed(&body), body).await;
        assert_eq!(outcome.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(outcome.body()["dead_lettered"], json!(true));
        let refused = sink.refused.lock().unwrap();
        let (key, _, reason, event_name) = &refused[0];
        assert_eq!(key, "or:7:2025-02-03T04:05:06.789Z");
        assert!(
            reason.contains("email, username, firstName, lastName"),
            "{reason}"
        );
        assert!(reason.contains("Could not find 'user'"), "{reason}");
        assert_eq!(event_name.as_deref(), Some("user.updated"));
    }

    #[tokio::test]
    async fn a_publish_that_fails_is_dead_lettered_and_the_answer_keeps_internals_out() {
        let sink = Arc::new(Recorder {
            fail_accept: true,
            ..Recorder::default()
        });
        let r = receiver(sink.clone(), Arc::default());
        let body = locked(42);
        let outcome = r.handle(&signed(&body), body).await;
        match &outcome {
            Outcome::Failed {
                problem,
                dead_lettered: true,
            } => assert!(problem.contains("broker down"), "{problem}"),
            other => panic!("{other:?}"),
        }
        assert!(!outcome.body().to_string().contains("broker down"));
        assert_eq!(sink.refused.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_refusal_the_sink_cannot_keep_is_reported() {
        let sink = Arc::new(Recorder {
            fail_refuse: true,
            ..Recorder::default()
        });
        let r = receiver(sink, Arc::default());
        let body = Bytes::from_static(b"[]");
        let outcome = r.handle(&signed(&body), body).await;
        assert_eq!(
            outcome,
            Outcome::Refused {
                problem: outcome_problem(&outcome),
                dead_lettered: false
            }
        );
        assert_eq!(outcome.body()["dead_lettered"], json!(false));
    }

    fn outcome_problem(outcome: &Outcome) -> String {
        match outcome {
            Outcome::Refused { problem, .. } | Outcome::Failed { problem, .. } => problem.clone(),
            other => panic!("{other:?}"),
        }
    }
}
