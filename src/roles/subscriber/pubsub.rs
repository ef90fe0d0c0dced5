//! The Pub/Sub API loop of the subscriber (see the parent module for what is shared).

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use super::{
    FLUSH_TIMEOUT, Pipeline, ReceivedChange, Resync, StreamPosition, StreamStart, SubscriberError,
    SubscriberStats, retry_delays,
};
use crate::config::SalesforceConfig;
use crate::kafka::{ChangePublisher, KafkaConfig, TransactionalPublisher};
use crate::metrics::Reconnect;
use crate::salesforce::auth::SalesforceSession;
use crate::salesforce::normalize::Replay;
use crate::salesforce::pubsub::{
    Batch, FailureKind, PubSubConnection, PubSubError, SchemaCache, StartAt, StreamEnd,
    Subscription,
};
use crate::salesforce::replay::{Recovery, recovery};
use crate::salesforce::replay_from::ReplayFrom;
use crate::salesforce::rest::{CredentialsTokenSource, SalesforceRest, TokenSource};
use crate::store::Store;

/// The Pub/Sub subscriber.
pub struct Subscriber {
    /// The `[salesforce]` section.
    config: SalesforceConfig,
    start: StreamStart,
    tokens: Arc<CredentialsTokenSource>,
    session: SalesforceSession,
    connection: PubSubConnection,
    schemas: SchemaCache,
    pipeline: Pipeline,
}

impl Subscriber {
    /// Signs in and builds the channel; nothing is read yet.
    pub async fn new(
        config: &SalesforceConfig,
        start: StreamStart,
        tokens: Arc<CredentialsTokenSource>,
        rest: SalesforceRest,
        publisher: Arc<ChangePublisher>,
        store: Arc<dyn Store>,
    ) -> Result<Subscriber, SubscriberError> {
        let session = tokens.session().await?;
        let connection = PubSubConnection::new(config, &session)?;
        let pipeline = Pipeline::new(
            &config.topic,
            session.org_id.clone(),
            rest,
            publisher,
            store,
            config.resync_margin,
        )
        .with_replay(start.replay_from.clone());
        Ok(Subscriber {
            config: config.clone(),
            start,
            tokens,
            session,
            connection,
            schemas: SchemaCache::default(),
            pipeline,
        })
    }

    /// Publishes only while `fence` holds (see [`Pipeline::with_fence`]).
    pub fn with_fence(
        self,
        fence: Option<Arc<crate::roles::subscriber::lease::Fence>>,
    ) -> Subscriber {
        Subscriber {
            pipeline: self.pipeline.with_fence(fence),
            ..self
        }
    }

    /// Transactional mode (see [`Pipeline::with_transactions`]).
    pub fn with_transactions(
        self,
        publisher: Arc<TransactionalPublisher>,
        kafka: KafkaConfig,
    ) -> Subscriber {
        Subscriber {
            pipeline: self.pipeline.with_transactions(publisher, kafka),
            ..self
        }
    }

    pub fn stats(&self) -> &SubscriberStats {
        &self.pipeline.stats
    }

    /// Runs until `shutdown` turns true or a failure only an admin can fix. On shutdown,
    /// waits for Kafka to confirm what is in flight and saves the checkpoint.
    pub async fn run(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), SubscriberError> {
        self.connection.topic(&self.config.topic).await?;
        let checkpoint = self.pipeline.load_checkpoint().await?;
        let mut next = match self.start.full_read_first {
            Some(why) => Start::Latest {
                resync: Resync::All(why),
            },
            None => self.resume(checkpoint.as_ref()),
        };
        let mut backoff = retry_delays(&self.config);
        loop {
            let end = match self.open(next.clone()).await {
                Ok(mut subscription) => {
                    let end = self
                        .read(&mut subscription, &mut shutdown, &mut backoff)
                        .await;
                    drop(subscription);
                    end
                }
                Err(error) => Err(error),
            };
            let drained = self.pipeline.drain().await;
            if *shutdown.borrow() {
                self.pipeline
                    .publisher
                    .flush(FLUSH_TIMEOUT)
                    .map_err(|source| SubscriberError::Kafka {
                        context: "flushing the producer at shutdown".into(),
                        source,
                    })?;
                return drained;
            }
            // A failure of this side of the stream (Kafka, the store, a REST read) resumes like a
            // closed stream, but is counted as what it is.
            let (end, failed_here) = match (end, drained) {
                (Err(stop), _) | (_, Err(stop)) if stop.ends_the_run() => return Err(stop),
                (Err(SubscriberError::PubSub(PubSubError::Call { failure, .. })), _) => {
                    (StreamEnd::Failed(failure), false)
                }
                (Err(error), _) | (Ok(_), Err(error)) => {
                    tracing::warn!(%error, "the subscriber resumes from its checkpoint");
                    (StreamEnd::Closed, true)
                }
                (Ok(end), Ok(())) => (end, false),
            };
            self.pipeline.reset_frontier();
            self.pipeline.stats.resubscribes += 1;
            let delay = backoff.next().unwrap_or(self.config.backoff_max);
            let step = match &end {
                StreamEnd::Failed(failure) => recovery(failure, self.config.replay_policy, delay),
                StreamEnd::Closed | StreamEnd::Idle(_) => Recovery::Resume { after: delay },
            };
            tracing::info!(%end, ?step, "Pub/Sub stream ended");
            if let Some(reason) = reconnect_reason(&end, &step, failed_here) {
                crate::metrics::global().reconnect(crate::metrics::Link::salesforce, reason);
            }
            // Nothing ever confirmed: the initial load starts over; pinned but no position yet:
            // the users changed since the pin are read again; a replay asked for and not yet
            // checkpointed starts there again.
            let checkpoint = self.pipeline.checkpoint().cloned();
            next = match step {
                Recovery::Resume { after } => {
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        _ = shutdown.changed() => {}
                    }
                    self.resume(checkpoint.as_ref())
                }
                Recovery::Reauthenticate => {
                    self.reauthenticate().await?;
                    self.resume(checkpoint.as_ref())
                }
                Recovery::StartOver { resync: true } => Start::Latest {
                    resync: match self.pipeline.checkpoint().and_then(|c| c.commit_timestamp) {
                        Some(since) => {
                            Resync::Since(since, "the replay id is outside the retention window")
                        }
                        None => Resync::All("the replay id is unusable and its time unknown"),
                    },
                },
                Recovery::StartOver { resync: false } => {
                    tracing::warn!(
                        "replay policy \"latest\": changes between the checkpoint and now are not recovered"
                    );
                    Start::Latest {
                        resync: Resync::Nothing,
                    }
                }
                Recovery::Stop { reason } => {
                    return Err(match end {
                        // Salesforce refused: the failure itself says what it means for the
                        // connection (permissions changed, topic missing).
                        StreamEnd::Failed(failure)
                            if failure.kind != FailureKind::ReplayUnusable =>
                        {
                            SubscriberError::PubSub(PubSubError::Call {
                                operation: "reading the Subscribe stream".into(),
                                failure,
                            })
                        }
                        _ => SubscriberError::Stopped { reason },
                    });
                }
            };
        }
    }

    /// Where the stream starts next: where an admin asked, until a checkpoint is saved from
    /// there; else after `checkpoint`.
    fn resume(&mut self, checkpoint: Option<&StreamPosition>) -> Start {
        match self.pipeline.asked_start() {
            Some(ReplayFrom::Earliest) => Start::Earliest,
            Some(ReplayFrom::Latest) => Start::Latest {
                resync: Resync::Nothing,
            },
            Some(ReplayFrom::After(replay_id)) => Start::After(replay_id),
            None => Start::from_checkpoint(checkpoint),
        }
    }

    /// Opens the stream `start` asks for. A LATEST subscription is opened *before* any
    /// resync, which pins the stream position on the server: whatever changes while users are
    /// read through REST is still delivered after them, so the hand-over has no gap.
    async fn open(&mut self, start: Start) -> Result<Subscription, SubscriberError> {
        match start {
            Start::After(replay_id) => Ok(self
                .connection
                .subscribe(&self.config.topic, StartAt::After(replay_id))
                .await?),
            Start::Earliest => Ok(self
                .connection
                .subscribe(&self.config.topic, StartAt::Earliest)
                .await?),
            Start::Latest { resync } => {
                let pinned_at = Utc::now();
                let subscription = self
                    .connection
                    .subscribe(&self.config.topic, StartAt::Latest)
                    .await?;
                self.pipeline.read_before_stream(&resync, pinned_at).await?;
                // The pin is saved as soon as what was read before it is confirmed, rather than
                // with the stream's first batch (which may be a keepalive minutes away).
                self.pipeline.save_checkpoint().await?;
                Ok(subscription)
            }
        }
    }

    /// Reads a stream until it ends or shutdown is asked for.
    async fn read(
        &mut self,
        subscription: &mut Subscription,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut backon::ExponentialBackoff,
    ) -> Result<StreamEnd, SubscriberError> {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(StreamEnd::Closed),
                Some((id, result)) = self.pipeline.next_confirmation() => {
                    self.pipeline.confirmed(id, result)?;
                    self.pipeline.save_checkpoint().await?;
                }
                batch = subscription.next() => match batch {
                    Ok(batch) => {
                        *backoff = retry_delays(&self.config);
                        self.batch(batch).await?;
                        self.pipeline.save_checkpoint().await?;
                    }
                    Err(end) => return Ok(end),
                },
            }
        }
    }

    async fn batch(&mut self, batch: Batch) -> Result<(), SubscriberError> {
        crate::metrics::global().salesforce_heard();
        if batch.events.is_empty() {
            self.pipeline.keepalive(batch.latest_replay_id);
            return Ok(());
        }
        for consumer in batch.events {
            let Some(event) = consumer.event else {
                continue;
            };
            let decoded = match self.schemas.get(&self.connection, &event.schema_id).await {
                Ok(schema) => schema.decode(&event.payload).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let commit_timestamp = decoded.as_ref().ok().map(|e| e.header.commit_timestamp);
            self.pipeline
                .handle(ReceivedChange {
                    decoded,
                    raw: &event.payload,
                    replay: Replay::PubSub(&consumer.replay_id),
                    schema_id: &event.schema_id,
                    position: StreamPosition {
                        replay_id: consumer.replay_id.clone(),
                        commit_timestamp,
                    },
                })
                .await?;
        }
        Ok(())
    }

    async fn reauthenticate(&mut self) -> Result<(), SubscriberError> {
        let token = self.tokens.renew(&self.session.access_token).await?;
        self.session.access_token = token;
        self.connection.set_session(&self.session)?;
        Ok(())
    }
}

/// Why the stream is opened again after `end`, for the reconnect counter; `None` when it is
/// not (the run stops).
fn reconnect_reason(end: &StreamEnd, step: &Recovery, failed_here: bool) -> Option<Reconnect> {
    Some(match step {
        Recovery::Stop { .. } => return None,
        Recovery::Reauthenticate => Reconnect::token_refused,
        Recovery::StartOver { .. } => Reconnect::replay_unusable,
        Recovery::Resume { .. } => match end {
            _ if failed_here => Reconnect::transient,
            StreamEnd::Closed => Reconnect::stream_closed,
            StreamEnd::Idle(_) => Reconnect::idle,
            StreamEnd::Failed(_) => Reconnect::transient,
        },
    })
}

/// Where the next stream starts.
#[derive(Debug, Clone)]
enum Start {
    /// After the checkpoint, or after the replay id an admin gave.
    After(Vec<u8>),
    /// At the oldest change Salesforce holds (an admin asked to replay from earliest).
    Earliest,
    /// At the newest position, after reading users through REST.
    Latest { resync: Resync },
}

impl Start {
    fn from_checkpoint(checkpoint: Option<&StreamPosition>) -> Start {
        match (Resync::before_resuming(checkpoint), checkpoint) {
            (Some(resync), _) => Start::Latest { resync },
            (None, Some(position)) => Start::After(position.replay_id.clone()),
            (None, None) => Start::Latest {
                resync: Resync::All("initial load"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::salesforce::pubsub::{FailureKind, PubSubFailure};
    use crate::salesforce::replay::ReplayPolicy;

    fn failed(kind: FailureKind) -> StreamEnd {
        StreamEnd::Failed(PubSubFailure {
            kind,
            status: tonic::Code::Unavailable,
            error_code: None,
            message: "from the server".into(),
        })
    }

    fn reason(end: StreamEnd, failed_here: bool) -> Option<Reconnect> {
        let step = match &end {
            StreamEnd::Failed(failure) => {
                recovery(failure, ReplayPolicy::Resync, Duration::from_secs(1))
            }
            _ => Recovery::Resume {
                after: Duration::from_secs(1),
            },
        };
        reconnect_reason(&end, &step, failed_here)
    }

    #[test]
    fn each_way_a_stream_ends_is_counted_under_its_own_reason() {
        assert_eq!(
            reason(StreamEnd::Closed, false),
            Some(Reconnect::stream_closed)
        );
        assert_eq!(
            reason(StreamEnd::Idle(Duration::from_secs(300)), false),
            Some(Reconnect::idle)
        );
        assert_eq!(
            reason(StreamEnd::Closed, true),
            Some(Reconnect::transient),
            "a failure after the stream resumes like a close but is no close"
        );
        assert_eq!(
            reason(failed(FailureKind::Transient), false),
            Some(Reconnect::transient)
        );
        assert_eq!(
            reason(failed(FailureKind::Throttled), false),
            Some(Reconnect::transient)
        );
        assert_eq!(
            reason(failed(FailureKind::Unauthenticated), false),
            Some(Reconnect::token_refused)
        );
        assert_eq!(
            reason(failed(FailureKind::ReplayUnusable), false),
            Some(Reconnect::replay_unusable)
        );
        assert_eq!(
            reason(failed(FailureKind::PermissionDenied), false),
            None,
            "the run stops: nothing is opened again"
        );
    }
}
