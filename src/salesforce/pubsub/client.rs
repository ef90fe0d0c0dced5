//! The Pub/Sub API client: one gRPC channel, the auth metadata on every call, topic and
//! schema look-ups, and Subscribe streams with flow control and an inactivity watchdog.
//!
//! Choices, and the facts behind them (docs/salesforce.md: the "Pub/Sub" sections, and in
//! italics the failure from "Failures seen in other clients" each rule guards against):
//!
//! - one channel per connection, reused by every call and every new stream (*too many
//!   connections*), with HTTP/2 keepalive pings so a half-open TCP connection is noticed
//!   (*silent streams*) and a decode limit well above tonic's 4 MB default
//!   ("Pub/Sub: endpoint and call metadata");
//! - the three metadata headers on every call, lower-case, from the *current* session: a
//!   token refreshed after `UNAUTHENTICATED` is used by the next call without rebuilding the
//!   channel ([`PubSubConnection::set_session`]);
//! - a [`Subscription`] keeps its request sender alive for as long as it lives (closing it
//!   ends the subscription server-side, "Pub/Sub: flow control") and is cancelled by dropping
//!   it, so the old stream is gone before a new one starts (*duplicated deliveries after
//!   reconnects*);
//! - [`Subscription::next`] tops the credit up *before* it returns a batch, and fails with
//!   [`StreamEnd::Idle`] when nothing at all — not even a keepalive — arrived within the idle
//!   timeout (300 s by default: the 270 s keepalive plus a margin; *silent streams*);
//! - replay ids are kept as the bytes received and sent back byte for byte
//!   ("Pub/Sub: replay ids"; *replay ids re-encoded*).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use super::credit::{Credit, unsent_after};
use super::failure::{FailureKind, PubSubFailure, classify};
use crate::config::SalesforceConfig;
use crate::proto::eventbus::pub_sub_client::PubSubClient;
use crate::proto::eventbus::{
    ConsumerEvent, FetchRequest, FetchResponse, ReplayPreset, SchemaRequest, TopicInfo,
    TopicRequest,
};
use crate::salesforce::auth::SalesforceSession;

/// Responses up to this size are decoded, a larger one is refused by tonic (its default is
/// 4 MB; one event may be 1 MB): the cap of an answer carrying events, `endpoint::body`.
pub const MAX_DECODING_MESSAGE_SIZE: usize = crate::endpoint::body::STREAM_BATCH_CAP;

/// Credit is topped up to 100 when the server's pending count falls to this.
const LOW_WATER: i32 = 50;

/// A configured zero (which would time out at once or ping without pause) as one second.
fn at_least_a_second(configured: Duration) -> Duration {
    if configured.is_zero() {
        Duration::from_secs(1)
    } else {
        configured
    }
}

/// Why a connection or call failed.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    #[error("the Pub/Sub endpoint {endpoint:?} is unusable: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("{operation}: {failure}")]
    Call {
        operation: String,
        failure: PubSubFailure,
    },
    #[error(
        "the authorizing user may not subscribe to {topic} (can_subscribe is false: check the \
         View All Users permission and that User is selected for Change Data Capture)"
    )]
    CannotSubscribe { topic: String },
    #[error("the session's {header} is not a valid gRPC header value")]
    Header { header: &'static str },
}

impl PubSubError {
    /// The classified server failure, if this is one.
    pub fn failure(&self) -> Option<&PubSubFailure> {
        match self {
            PubSubError::Call { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// The metadata every call carries.
#[derive(Clone)]
struct CallHeaders {
    access_token: AsciiMetadataValue,
    instance_url: AsciiMetadataValue,
    tenant_id: AsciiMetadataValue,
}

impl CallHeaders {
    fn of(session: &SalesforceSession) -> Result<CallHeaders, PubSubError> {
        let value = |text: &str, header| {
            AsciiMetadataValue::try_from(text).map_err(|_| PubSubError::Header { header })
        };
        let mut access_token = value(session.access_token.expose(), "access token")?;
        access_token.set_sensitive(true);
        Ok(CallHeaders {
            access_token,
            instance_url: value(session.instance_url.trim_end_matches('/'), "instance URL")?,
            tenant_id: value(session.org_id.as_str(), "org id")?,
        })
    }
}

/// Adds `accesstoken`, `instanceurl`, `tenantid` and an `x-client-trace-id` to each call.
#[derive(Clone)]
pub struct AuthMetadata(Arc<RwLock<CallHeaders>>);

impl Interceptor for AuthMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let headers = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let metadata: &mut MetadataMap = request.metadata_mut();
        metadata.insert("accesstoken", headers.access_token);
        metadata.insert("instanceurl", headers.instance_url);
        metadata.insert("tenantid", headers.tenant_id);
        let trace: u128 = rand::random();
        if let Ok(trace) = AsciiMetadataValue::try_from(format!("{trace:032x}")) {
            metadata.insert("x-client-trace-id", trace);
        }
        Ok(request)
    }
}

type Client = PubSubClient<InterceptedService<Channel, AuthMetadata>>;

/// One channel to the Pub/Sub API, authenticated as a session.
#[derive(Clone)]
pub struct PubSubConnection {
    client: Client,
    headers: Arc<RwLock<CallHeaders>>,
    /// A stream with no response at all for this long is treated as dead.
    idle_timeout: Duration,
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// New events only.
    Latest,
    /// The oldest retained event.
    Earliest,
    /// After this replay id (opaque bytes, as received).
    After(Vec<u8>),
}

impl PubSubConnection {
    /// Builds the channel (connecting lazily) for `session`, to `salesforce.pubsub_endpoint`
    /// with the section's timeouts (`salesforce.timeout_seconds` to connect,
    /// `keepalive_seconds` between HTTP/2 pings, `idle_timeout_seconds` of silence).
    pub fn new(
        config: &SalesforceConfig,
        session: &SalesforceSession,
    ) -> Result<Self, PubSubError> {
        let target = &config.pubsub_endpoint;
        let unusable = |reason: String| PubSubError::Endpoint {
            endpoint: target.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(target.clone())
            .map_err(|e| unusable(e.to_string()))?
            .connect_timeout(at_least_a_second(config.timeout))
            .http2_keep_alive_interval(at_least_a_second(config.keepalive))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if target.starts_with("https://") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| unusable(e.to_string()))?;
        } else if !target.starts_with("http://") {
            return Err(unusable(
                "the URL must start with https:// (or http:// for a local test server)".into(),
            ));
        }
        let headers = Arc::new(RwLock::new(CallHeaders::of(session)?));
        let channel = endpoint.connect_lazy();
        let client = PubSubClient::with_interceptor(channel, AuthMetadata(headers.clone()))
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        Ok(PubSubConnection {
            client,
            headers,
            idle_timeout: at_least_a_second(config.idle_timeout),
        })
    }

    /// Uses `session` for every later call (after a token refresh or a reconnect).
    pub fn set_session(&self, session: &SalesforceSession) -> Result<(), PubSubError> {
        let headers = CallHeaders::of(session)?;
        *self
            .headers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = headers;
        Ok(())
    }

    /// `GetTopic`, refusing a topic the user may not subscribe to.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo, PubSubError> {
        let info = self
            .client
            .clone()
            .get_topic(TopicRequest {
                topic_name: topic.to_owned(),
            })
            .await
            .map_err(|status| call(format!("GetTopic {topic}"), &status))?
            .into_inner();
        if !info.can_subscribe {
            return Err(PubSubError::CannotSubscribe {
                topic: topic.to_owned(),
            });
        }
        Ok(info)
    }

    /// `GetSchema`: the Avro schema JSON of `schema_id`.
    pub async fn schema_json(&self, schema_id: &str) -> Result<String, PubSubError> {
        Ok(self
            .client
            .clone()
            .get_schema(SchemaRequest {
                schema_id: schema_id.to_owned(),
            })
            .await
            .map_err(|status| call(format!("GetSchema {schema_id}"), &status))?
            .into_inner()
            .schema_json)
    }

    /// Opens a Subscribe stream on `topic` from `start`, asking for full credit.
    pub async fn subscribe(
        &self,
        topic: &str,
        start: StartAt,
    ) -> Result<Subscription, PubSubError> {
        let credit = Credit::new(LOW_WATER);
        let (preset, replay_id) = match start {
            StartAt::Latest => (ReplayPreset::Latest, Vec::new()),
            StartAt::Earliest => (ReplayPreset::Earliest, Vec::new()),
            StartAt::After(bytes) => (ReplayPreset::Custom, bytes),
        };
        let (requests, outgoing) = mpsc::channel(8);
        let first = FetchRequest {
            topic_name: topic.to_owned(),
            replay_preset: preset as i32,
            replay_id,
            num_requested: credit.initial_request(),
            auth_refresh: String::new(),
        };
        requests
            .send(first)
            .await
            .expect("the receiver is alive until the stream is built");
        let responses = self
            .client
            .clone()
            .subscribe(ReceiverStream::new(outgoing))
            .await
            .map_err(|status| call(format!("Subscribe {topic}"), &status))?
            .into_inner();
        Ok(Subscription {
            topic: topic.to_owned(),
            requests,
            responses,
            credit,
            unsent_credit: 0,
            idle_timeout: self.idle_timeout,
        })
    }
}

impl PubSubConnection {
    /// Whether Salesforce still resumes `topic` after `replay_id`: a Subscribe from it asking for
    /// one event, read for at most `wait`, then cancelled. An unusable replay id is refused at
    /// once (`…replayid.corrupted`): `Ok(false)`. An event, a keepalive or silence: `Ok(true)`.
    pub async fn can_resume_after(
        &self,
        topic: &str,
        replay_id: Vec<u8>,
        wait: Duration,
    ) -> Result<bool, PubSubError> {
        let (requests, outgoing) = mpsc::channel(1);
        let first = FetchRequest {
            topic_name: topic.to_owned(),
            replay_preset: ReplayPreset::Custom as i32,
            replay_id,
            num_requested: 1,
            auth_refresh: String::new(),
        };
        requests
            .send(first)
            .await
            .expect("the receiver is alive until the stream is built");
        let mut responses = match self
            .client
            .clone()
            .subscribe(ReceiverStream::new(outgoing))
            .await
        {
            Ok(responses) => responses.into_inner(),
            Err(status) => return answer(topic, &status),
        };
        let answer = match tokio::time::timeout(wait, responses.message()).await {
            Err(_) | Ok(Ok(_)) => Ok(true),
            Ok(Err(status)) => answer(topic, &status),
        };
        drop(requests);
        answer
    }
}

/// A refusal of the replay id is the answer "no"; any other failure is no answer.
fn answer(topic: &str, status: &Status) -> Result<bool, PubSubError> {
    let failure = classify(status);
    if failure.kind == FailureKind::ReplayUnusable {
        Ok(false)
    } else {
        Err(PubSubError::Call {
            operation: format!("Subscribe {topic} from the stored replay id"),
            failure,
        })
    }
}

fn call(operation: String, status: &Status) -> PubSubError {
    PubSubError::Call {
        operation,
        failure: classify(status),
    }
}

/// What one response carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub events: Vec<ConsumerEvent>,
    /// The stream position after this response: the last event's replay id, or on an empty
    /// keepalive a position past other orgs' traffic worth saving (docs/salesforce.md,
    /// "Pub/Sub: replay ids").
    pub latest_replay_id: Vec<u8>,
    pub pending_num_requested: i32,
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamEnd {
    #[error("the server ended the stream: {0}")]
    Failed(PubSubFailure),
    #[error("the server closed the stream without an error")]
    Closed,
    #[error("nothing arrived for {0:?}: the stream is presumed dead")]
    Idle(Duration),
}

/// One open Subscribe call. Dropping it cancels the call.
pub struct Subscription {
    topic: String,
    /// Kept alive: closing the request half would end the subscription.
    requests: mpsc::Sender<FetchRequest>,
    responses: Streaming<FetchResponse>,
    credit: Credit,
    /// Credit asked for but not yet handed to the request stream (it was full).
    unsent_credit: i32,
    idle_timeout: Duration,
}

impl Subscription {
    /// The next response. Credit is topped up before it is returned. Cancel-safe.
    pub async fn next(&mut self) -> Result<Batch, StreamEnd> {
        let message = tokio::time::timeout(self.idle_timeout, self.responses.message())
            .await
            .map_err(|_| StreamEnd::Idle(self.idle_timeout))?;
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Err(StreamEnd::Closed),
            Err(status) => return Err(StreamEnd::Failed(classify(&status))),
        };
        if let Some(more) = self.credit.on_response(response.pending_num_requested) {
            self.unsent_credit = unsent_after(self.unsent_credit, more);
        }
        // Never awaits after a response was taken off the stream, so dropping this future
        // (a `select!` that picked another branch) cannot lose the response.
        if self.unsent_credit > 0 {
            let top_up = FetchRequest {
                topic_name: self.topic.clone(),
                num_requested: self.unsent_credit,
                ..FetchRequest::default()
            };
            match self.requests.try_send(top_up) {
                Ok(()) => self.unsent_credit = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(StreamEnd::Closed),
            }
        }
        Ok(Batch {
            events: response.events,
            latest_replay_id: response.latest_replay_id,
            pending_num_requested: response.pending_num_requested,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}
