//! The Pub/Sub API (gRPC service `eventbus.v1.PubSub`) over the simulated org's event bus.
//!
//! What it does, as the real service documents it (docs/simulators.md, "The Salesforce simulator"):
//!
//! - every call must carry `accesstoken`, `instanceurl` and `tenantid` metadata naming a live
//!   session, the org's My Domain URL and the org id; otherwise `UNAUTHENTICATED` with the
//!   `service.auth.error` trailer;
//! - `GetTopic` answers for `/data/UserChangeEvent` only (`can_subscribe` false without View
//!   All Users); any other topic is `NOT_FOUND` with `topic.not.found`;
//! - `GetSchema` serves every schema version by id; a blank id is refused;
//! - `Subscribe` is pull-based: the first `FetchRequest` names the topic and start, and every
//!   request adds credit, capped at 100 outstanding. Events go out only against credit, in
//!   batches; `pending_num_requested` reports the credit left. While credit is above zero and
//!   nothing happens, an empty response carrying `latest_replay_id` goes out every keepalive
//!   interval (270 s by default) and moves the stream past other orgs' traffic. When credit
//!   stays at zero for the zero-credit timeout (60 s by default), the stream is closed with
//!   `UNAVAILABLE` and no `error-code` trailer, the shape of docs/salesforce.md, "Pub/Sub: errors";
//! - a replay id that cannot be resumed is `INVALID_ARGUMENT` with the `replayid.corrupted` or
//!   `replayid.validation.failed` trailer; a session revoked or a permission removed while a
//!   stream is open ends that stream with `UNAUTHENTICATED` or `PERMISSION_DENIED`;
//! - a closed request half ends the subscription at once (docs/salesforce.md, "Pub/Sub: flow
//!   control").
//!
//! Fault switches ([`StreamFault`]) end every open stream with a chosen error, as the real
//! service's transient failures do. Publishing to a change event topic is refused: change
//! events are published by Salesforce only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

use super::eventbus::{self, BusEvent};
use super::oauth::with_checksum;
use super::{Shared, SimState};
use crate::proto::eventbus::pub_sub_server::PubSub;
use crate::proto::eventbus::{
    ConsumerEvent, FetchRequest, FetchResponse, ProducerEvent, PublishRequest, PublishResponse,
    ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest,
};

/// The only topic this simulator carries.
pub const USER_TOPIC: &str = "/data/UserChangeEvent";
/// The most credit a subscription may have outstanding.
pub const MAX_CREDIT: i32 = 100;
const CODE_PREFIX: &str = "sfdc.platform.eventbus.grpc.";

/// An error that ends every open stream, as the real service's failures do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// `INTERNAL` "The service is unavailable. Try again later." (`service.unavailable`).
    ServiceUnavailable,
    /// `UNAVAILABLE` "RST_STREAM closed stream", with no `error-code` trailer.
    ResetStream,
    /// `RESOURCE_EXHAUSTED` "too many connections" (`service.protection.triggered`).
    Throttled,
    /// The daily delivery allocation is used up (`subscription.limit.exceeded`).
    DeliveryLimit,
}

impl StreamFault {
    fn status(self) -> Status {
        match self {
            StreamFault::ServiceUnavailable => failure(
                tonic::Code::Internal,
                "The service is unavailable. Try again later.",
                Some("service.unavailable"),
            ),
            StreamFault::ResetStream => failure(
                tonic::Code::Unavailable,
                "RST_STREAM closed stream. HTTP/2 error code: NO_ERROR",
                None,
            ),
            StreamFault::Throttled => failure(
                tonic::Code::ResourceExhausted,
                "The service received too many connections. Try again later.",
                Some("service.protection.triggered"),
            ),
            StreamFault::DeliveryLimit => failure(
                tonic::Code::ResourceExhausted,
                "You have exceeded the event delivery limit for your org.",
                Some("subscription.limit.exceeded"),
            ),
        }
    }
}

/// The timing rules of a subscription.
#[derive(Debug, Clone, Copy)]
pub struct StreamTiming {
    /// An empty keepalive response goes out after this long without one (credit > 0).
    pub keepalive: Duration,
    /// A stream whose credit stays at zero this long is closed.
    pub zero_credit_timeout: Duration,
}

impl Default for StreamTiming {
    fn default() -> Self {
        StreamTiming {
            keepalive: Duration::from_secs(270),
            zero_credit_timeout: Duration::from_secs(60),
        }
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct PubSubService {
    pub(crate) shared: Arc<Shared>,
    pub(crate) faults: broadcast::Sender<StreamFault>,
    pub(crate) timing: StreamTiming,
}

/// An error status with the trailers the real service sends.
fn failure(code: tonic::Code, message: &str, error_code: Option<&str>) -> Status {
    let rpc_id = rpc_id();
    let mut trailers = MetadataMap::new();
    if let Some(value) =
        error_code.and_then(|suffix| MetadataValue::try_from(format!("{CODE_PREFIX}{suffix}")).ok())
    {
        trailers.insert("error-code", value);
    }
    if let Ok(value) = MetadataValue::try_from(rpc_id.as_str()) {
        trailers.insert("rpc-id", value);
    }
    Status::with_metadata(code, format!("{message} rpcId: {rpc_id}"), trailers)
}

fn rpc_id() -> String {
    super::directory::uuid_like()
}

fn unauthenticated() -> Status {
    failure(
        tonic::Code::Unauthenticated,
        "An authentication exception occurred. Provide valid authentication via metadata headers.",
        Some("service.auth.error"),
    )
}

fn cannot_subscribe() -> Status {
    failure(
        tonic::Code::PermissionDenied,
        "The user doesn't have permission to subscribe to the topic.",
        Some("subscription.topic.cannot.subscribe"),
    )
}

fn topic_not_found(org_id: &str, topic: &str) -> Status {
    failure(
        tonic::Code::NotFound,
        &format!("The topic information for org CORE/prod/{org_id} and topic {topic} not found."),
        Some("topic.not.found"),
    )
}

fn invalid_argument(message: &str, suffix: &str) -> Status {
    failure(tonic::Code::InvalidArgument, message, Some(suffix))
}

/// The username behind a call's metadata, if the call may proceed.
fn authenticate(
    state: &SimState,
    metadata: &MetadataMap,
    my_domain: &str,
) -> Result<String, Status> {
    let get = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    let token = get("accesstoken").ok_or_else(unauthenticated)?;
    let user = state
        .oauth
        .session_user(token)
        .ok_or_else(unauthenticated)?;
    let instance = get("instanceurl").ok_or_else(unauthenticated)?;
    if instance.trim_end_matches('/') != my_domain {
        return Err(unauthenticated());
    }
    let tenant = get("tenantid").ok_or_else(unauthenticated)?;
    let org = &state.oauth.org_id;
    let tenant_matches = tenant == org || (tenant.len() == 15 && with_checksum(tenant) == *org);
    if !tenant_matches {
        return Err(unauthenticated());
    }
    Ok(user.username.clone())
}

impl PubSubService {
    fn caller(&self, metadata: &MetadataMap) -> Result<String, Status> {
        authenticate(&self.shared.lock(), metadata, &self.shared.my_domain_url())
    }

    /// Whether `username`'s session still works and may read the topic.
    fn still_allowed(&self, token: &str, username: &str) -> Result<(), Status> {
        let state = self.shared.lock();
        if state.oauth.session_user(token).is_none() {
            return Err(unauthenticated());
        }
        if state.without_view_all_users.contains(username) {
            return Err(cannot_subscribe());
        }
        Ok(())
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    type SubscribeStream = ResponseStream<FetchResponse>;
    type PublishStreamStream = ResponseStream<PublishResponse>;

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let username = self.caller(request.metadata())?;
        let topic = request.into_inner().topic_name;
        let state = self.shared.lock();
        if topic != USER_TOPIC {
            return Err(topic_not_found(&state.oauth.org_id, &topic));
        }
        Ok(Response::new(TopicInfo {
            topic_name: topic,
            tenant_guid: state.oauth.org_id.clone(),
            can_publish: false,
            can_subscribe: !state.without_view_all_users.contains(&username),
            schema_id: state.bus.current_schema().id.clone(),
            rpc_id: rpc_id(),
        }))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        self.caller(request.metadata())?;
        let schema_id = request.into_inner().schema_id;
        if schema_id.trim().is_empty() {
            return Err(invalid_argument(
                "Schema validation failed. The schema ID can't be blank.",
                "schema.validation.failed",
            ));
        }
        let state = self.shared.lock();
        let version = state.bus.schema(&schema_id).ok_or_else(|| {
            failure(
                tonic::Code::NotFound,
                &format!("The schema {schema_id} was not found."),
                Some("schema.not.found"),
            )
        })?;
        Ok(Response::new(SchemaInfo {
            schema_json: version.json.clone(),
            schema_id,
            rpc_id: rpc_id(),
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.caller(request.metadata())?;
        Err(failure(
            tonic::Code::PermissionDenied,
            "Change events can't be published by clients.",
            Some("publish.topic.cannot.publish"),
        ))
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.caller(request.metadata())?;
        Err(failure(
            tonic::Code::PermissionDenied,
            "Change events can't be published by clients.",
            Some("publish.topic.cannot.publish"),
        ))
    }

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let username = self.caller(request.metadata())?;
        let token = request
            .metadata()
            .get("accesstoken")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let subscription = Subscription {
            service: self.clone(),
            faults: self.faults.subscribe(),
            head: self.shared.head.subscribe(),
            token,
            username,
            tx,
        };
        tokio::spawn(subscription.run(requests));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One open `Subscribe` call.
struct Subscription {
    service: PubSubService,
    faults: broadcast::Receiver<StreamFault>,
    head: tokio::sync::watch::Receiver<u64>,
    token: String,
    username: String,
    tx: mpsc::Sender<Result<FetchResponse, Status>>,
}

impl Subscription {
    async fn run(mut self, mut requests: Streaming<FetchRequest>) {
        let outcome = self.serve(&mut requests).await;
        if let Err(status) = outcome {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<FetchRequest>) -> Result<(), Status> {
        let first = match requests.next().await {
            Some(Ok(first)) => first,
            Some(Err(_)) | None => return Ok(()),
        };
        if first.topic_name.is_empty() {
            return Err(invalid_argument(
                "The topic name is required in the first fetch request.",
                "subscription.fetch.topic.required",
            ));
        }
        let mut position = {
            let state = self.service.shared.lock();
            if first.topic_name != USER_TOPIC {
                return Err(topic_not_found(&state.oauth.org_id, &first.topic_name));
            }
            if state.without_view_all_users.contains(&self.username) {
                return Err(cannot_subscribe());
            }
            match ReplayPreset::try_from(first.replay_preset).unwrap_or(ReplayPreset::Latest) {
                ReplayPreset::Latest => state.bus.latest(),
                ReplayPreset::Earliest => state.bus.floor(),
                ReplayPreset::Custom => {
                    if first.replay_id.is_empty() {
                        return Err(invalid_argument(
                            "The Replay ID validation failed. A CUSTOM replay preset needs a replay ID.",
                            "subscription.fetch.replayid.validation.failed",
                        ));
                    }
                    state
                        .bus
                        .resume_after(&first.replay_id)
                        .map_err(|refusal| {
                            let suffix = refusal.error_code().trim_start_matches(CODE_PREFIX);
                            invalid_argument(refusal.message(), suffix)
                        })?
                }
            }
        };
        let mut credit = add_credit(0, first.num_requested)?;
        let timing = self.service.timing;
        let mut last_response = tokio::time::Instant::now();
        loop {
            // Send what the credit allows.
            if credit > 0 {
                let batch = self
                    .service
                    .shared
                    .lock()
                    .bus
                    .after(position, credit as usize);
                if !batch.is_empty() {
                    self.service.still_allowed(&self.token, &self.username)?;
                    position = batch.last().map_or(position, |e| e.position);
                    credit -= i32::try_from(batch.len()).unwrap_or(MAX_CREDIT);
                    let response = FetchResponse {
                        latest_replay_id: eventbus::replay_bytes(position),
                        events: batch.iter().map(consumer_event).collect(),
                        rpc_id: rpc_id(),
                        pending_num_requested: credit,
                    };
                    if self.tx.send(Ok(response)).await.is_err() {
                        return Ok(());
                    }
                    last_response = tokio::time::Instant::now();
                    continue;
                }
            }
            let deadline = if credit > 0 {
                last_response + timing.keepalive
            } else {
                last_response + timing.zero_credit_timeout
            };
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(more)) => {
                        if !more.topic_name.is_empty() && more.topic_name != USER_TOPIC {
                            return Err(invalid_argument(
                                "The topic name in a later fetch request must match the first one.",
                                "subscription.fetch.topic.mismatch",
                            ));
                        }
                        credit = add_credit(credit, more.num_requested)?;
                    }
                    // The client closed its half or went away: the subscription ends.
                    Some(Err(_)) | None => return Ok(()),
                },
                changed = self.head.changed(), if credit > 0 => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                fault = self.faults.recv() => {
                    if let Ok(fault) = fault {
                        return Err(fault.status());
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if credit == 0 {
                        return Err(StreamFault::ResetStream.status());
                    }
                    self.service.still_allowed(&self.token, &self.username)?;
                    let latest = {
                        let state = self.service.shared.lock();
                        if state.bus.after(position, 1).is_empty() {
                            position = position.max(state.bus.latest());
                        }
                        position
                    };
                    let keepalive = FetchResponse {
                        events: Vec::new(),
                        latest_replay_id: eventbus::replay_bytes(latest),
                        rpc_id: rpc_id(),
                        pending_num_requested: credit,
                    };
                    if self.tx.send(Ok(keepalive)).await.is_err() {
                        return Ok(());
                    }
                    last_response = tokio::time::Instant::now();
                }
                () = self.tx.closed() => return Ok(()),
            }
        }
    }
}

/// Credit after a request for `requested` more events, capped at [`MAX_CREDIT`].
fn add_credit(credit: i32, requested: i32) -> Result<i32, Status> {
    if requested <= 0 {
        return Err(invalid_argument(
            "The requested number of events in a fetch request must be greater than zero.",
            "subscription.fetch.requested.events.invalid",
        ));
    }
    Ok(credit.saturating_add(requested).min(MAX_CREDIT))
}

fn consumer_event(event: &BusEvent) -> ConsumerEvent {
    ConsumerEvent {
        event: Some(ProducerEvent {
            id: String::new(),
            schema_id: event.schema_id.clone(),
            payload: event.avro.clone(),
            headers: Vec::new(),
        }),
        replay_id: event.replay_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_capped_at_one_hundred_and_must_be_positive() {
        assert_eq!(add_credit(0, 100).unwrap(), 100);
        assert_eq!(add_credit(60, 60).unwrap(), 100);
        assert_eq!(add_credit(0, 5).unwrap(), 5);
        let refused = add_credit(10, 0).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            refused.metadata().get("error-code").unwrap(),
            "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid"
        );
    }

    #[test]
    fn failures_carry_the_trailers_and_an_rpc_id() {
        let status = StreamFault::ServiceUnavailable.status();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(
            status.metadata().get("error-code").unwrap(),
            "sfdc.platform.eventbus.grpc.service.unavailable"
        );
        assert!(status.metadata().get("rpc-id").is_some());
        assert!(status.message().contains("rpcId: "));
        let reset = StreamFault::ResetStream.status();
        assert_eq!(reset.code(), tonic::Code::Unavailable);
        assert!(reset.metadata().get("error-code").is_none());
    }
}
