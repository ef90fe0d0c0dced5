//! The Streaming API (CometD) loop of the subscriber: the legacy transport, for orgs or
//! networks where the Pub/Sub API cannot be used.
//!
//! It shares everything after the stream with the Pub/Sub loop ([`Pipeline`]). What differs:
//!
//! - the checkpoint is the numeric replay id (stored as 8 big-endian bytes) under the key
//!   `cometd:<topic>`, so switching transports never resumes one with the other's ids;
//! - a long-poll is never abandoned for other work, because the events of an abandoned
//!   connect are lost for this Bayeux session: confirmations from Kafka are taken between
//!   polls, and the checkpoint is saved after each poll;
//! - the client recovers `401::Authentication invalid` and `403::Unknown client` by itself,
//!   resubscribing with the acknowledged replay map; when it cannot recover, or Kafka fails
//!   a delivery, the loop waits for what is in flight, backs off, and starts a new client
//!   from the stored checkpoint (nothing after it was confirmed);
//! - an invalid replay id is handled by the client per the replay policy; with `resync` the
//!   loop then re-reads the users changed since the checkpoint's commit time;
//! - an admin's replay uses CometD's presets: `-2` for earliest, `-1` (the tip) for latest.

use std::sync::Arc;

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::watch;

use super::{
    FLUSH_TIMEOUT, Pipeline, ReceivedChange, Resync, StreamPosition, StreamStart, SubscriberError,
    retry_delays,
};
use crate::config::SalesforceConfig;
use crate::kafka::{ChangePublisher, KafkaConfig, TransactionalPublisher};
use crate::salesforce::cometd::{
    CometdClient, CometdConfig, CredentialsTokenSource, Delivered, Poll, REPLAY_FROM_EARLIEST,
    REPLAY_FROM_TIP,
};
use crate::salesforce::normalize::Replay;
use crate::salesforce::replay_from::ReplayFrom;
use crate::salesforce::rest::SalesforceRest;
use crate::store::Store;

/// The CometD subscriber.
pub struct CometdSubscriber {
    /// The `[salesforce]` section.
    config: SalesforceConfig,
    start: StreamStart,
    /// The Streaming API version in the URL: `62.0` where REST says `v62.0`.
    api_version: String,
    tokens: Arc<CredentialsTokenSource>,
    pipeline: Pipeline,
}

/// The replay id of a CometD checkpoint.
fn replay_of(position: &StreamPosition) -> Option<i64> {
    Some(i64::from_be_bytes(
        position.replay_id.as_slice().try_into().ok()?,
    ))
}

/// Where a client resumes after the stored checkpoint, and what it reads first: after its
/// replay id; from the tip after reading the users changed since a pin; or from the tip after
/// the initial load when there is no usable checkpoint.
fn start_after(stored: Option<&StreamPosition>) -> (i64, Option<Resync>) {
    if let Some(read) = Resync::before_resuming(stored) {
        return (REPLAY_FROM_TIP, Some(read));
    }
    match stored.and_then(replay_of) {
        Some(replay_id) => (replay_id, None),
        None => (REPLAY_FROM_TIP, Some(Resync::All("initial load"))),
    }
}

/// Where a client starts for an admin's replay: CometD's own presets for the oldest retained
/// event and the tip (opened before anything is read, so the pin is saved at once), or after
/// the replay id given.
fn start_asked(from: &ReplayFrom) -> Result<(i64, Option<Resync>), SubscriberError> {
    Ok(match from {
        ReplayFrom::Earliest => (REPLAY_FROM_EARLIEST, None),
        ReplayFrom::Latest => (REPLAY_FROM_TIP, Some(Resync::Nothing)),
        ReplayFrom::After(bytes) => {
            let replay_id =
                <[u8; 8]>::try_from(bytes.as_slice()).map_err(|_| SubscriberError::Stopped {
                    reason: format!(
                        "the replay id asked for ({} bytes) is not a CometD replay id",
                        bytes.len()
                    ),
                })?;
            (i64::from_be_bytes(replay_id), None)
        }
    })
}

impl CometdSubscriber {
    pub async fn new(
        config: &SalesforceConfig,
        start: StreamStart,
        tokens: Arc<CredentialsTokenSource>,
        rest: SalesforceRest,
        publisher: Arc<ChangePublisher>,
        store: Arc<dyn Store>,
    ) -> Result<CometdSubscriber, SubscriberError> {
        let session = tokens.session().await?;
        let pipeline = Pipeline::new(
            &config.topic,
            session.org_id.clone(),
            rest,
            publisher,
            store,
            config.resync_margin,
        )
        .for_cometd()
        .with_replay(start.replay_from.clone());
        Ok(CometdSubscriber {
            config: config.clone(),
            start,
            api_version: config.api_version.trim_start_matches('v').to_owned(),
            tokens,
            pipeline,
        })
    }

    /// Publishes only while `fence` holds (see [`Pipeline::with_fence`]).
    pub fn with_fence(
        self,
        fence: Option<Arc<crate::roles::subscriber::lease::Fence>>,
    ) -> CometdSubscriber {
        CometdSubscriber {
            pipeline: self.pipeline.with_fence(fence),
            ..self
        }
    }

    /// Transactional mode (see [`Pipeline::with_transactions`]).
    pub fn with_transactions(
        self,
        publisher: Arc<TransactionalPublisher>,
        kafka: KafkaConfig,
    ) -> CometdSubscriber {
        CometdSubscriber {
            pipeline: self.pipeline.with_transactions(publisher, kafka),
            ..self
        }
    }

    pub fn stats(&self) -> &super::SubscriberStats {
        &self.pipeline.stats
    }

    /// Runs until `shutdown` turns true or a failure only an admin can fix.
    pub async fn run(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), SubscriberError> {
        let mut backoff = retry_delays(&self.config);
        let mut full_read = self.start.full_read_first;
        loop {
            let stored = self.pipeline.load_checkpoint().await?;
            let (resume, first_read) = match full_read.take() {
                // A full read asked for starts from the tip, like the initial load (once).
                Some(why) => (REPLAY_FROM_TIP, Some(Resync::All(why))),
                None => match self.pipeline.asked_start() {
                    Some(from) => start_asked(&from)?,
                    None => start_after(stored.as_ref()),
                },
            };
            let config = CometdConfig::new(self.api_version.clone(), self.config.replay_policy);
            let mut client =
                CometdClient::new(config, self.tokens.clone(), resume).map_err(Box::new)?;
            let outcome = self
                .serve(&mut client, first_read, &mut shutdown, &mut backoff)
                .await;
            let drained = self.pipeline.drain().await;
            if *shutdown.borrow() {
                let _ = client.disconnect().await;
                self.pipeline
                    .publisher
                    .flush(FLUSH_TIMEOUT)
                    .map_err(|source| SubscriberError::Kafka {
                        context: "flushing the producer at shutdown".into(),
                        source,
                    })?;
                return outcome.and(drained);
            }
            match outcome.and(drained) {
                Err(stop) if stop.ends_the_run() => return Err(stop),
                Err(SubscriberError::Cometd(error)) if error.disconnect_reason().is_some() => {
                    return Err(SubscriberError::Cometd(error));
                }
                Err(error) => {
                    tracing::warn!(%error, "CometD subscriber restarts from its checkpoint")
                }
                Ok(()) => {}
            }
            self.pipeline.reset_frontier();
            self.pipeline.stats.resubscribes += 1;
            crate::metrics::global().reconnect(
                crate::metrics::Link::salesforce,
                crate::metrics::Reconnect::transient,
            );
            let delay = backoff.next().unwrap_or(self.config.backoff_max);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn serve(
        &mut self,
        client: &mut CometdClient<Arc<CredentialsTokenSource>>,
        first_read: Option<Resync>,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut backon::ExponentialBackoff,
    ) -> Result<(), SubscriberError> {
        if let Some(read) = first_read {
            // Subscribed before the read: changes made during it are delivered after it.
            let pinned_at = Utc::now();
            client.open().await.map_err(Box::new)?;
            self.pipeline.read_before_stream(&read, pinned_at).await?;
            // Confirmed and pinned before the first long-poll, which may hold for a while:
            // a stop before it returns resumes from the pin.
            self.pipeline.drain().await?;
        }
        loop {
            let polled = tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                polled = client.poll() => polled.map_err(Box::new)?,
            };
            *backoff = retry_delays(&self.config);
            match polled {
                Poll::Events(batch) => {
                    // Events, or a long-poll that ended quietly: CometD's keepalive.
                    crate::metrics::global().salesforce_heard();
                    for delivered in batch {
                        self.handle(client, delivered).await?;
                    }
                }
                Poll::ReplayRejected(rejected) => {
                    tracing::warn!(error = %rejected.error, policy = rejected.policy.as_str(), "CometD replay id rejected");
                    if rejected.resync_needed {
                        // The client has resubscribed from the tip.
                        let pinned_at = Utc::now();
                        const WHY: &str = "the replay id is outside the retention window";
                        let read = match self.pipeline.checkpoint().and_then(|c| c.commit_timestamp)
                        {
                            Some(since) => Resync::Since(since, WHY),
                            None => Resync::All(WHY),
                        };
                        self.pipeline.read_before_stream(&read, pinned_at).await?;
                    }
                }
            }
            while let Some(Some((id, result))) = self.pipeline.next_confirmation().now_or_never() {
                self.pipeline.confirmed(id, result)?;
            }
            self.pipeline.save_checkpoint().await?;
        }
    }

    async fn handle(
        &mut self,
        client: &mut CometdClient<Arc<CredentialsTokenSource>>,
        delivered: Delivered,
    ) -> Result<(), SubscriberError> {
        match delivered {
            Delivered::Event(cdc) => {
                let position = StreamPosition {
                    replay_id: cdc.replay_id.to_be_bytes().to_vec(),
                    commit_timestamp: Some(cdc.event.header.commit_timestamp),
                };
                self.pipeline
                    .handle(ReceivedChange {
                        decoded: Ok(cdc.event),
                        raw: &[],
                        replay: Replay::CometD(cdc.replay_id),
                        schema_id: &cdc.schema_id,
                        position,
                    })
                    .await?;
                client.acknowledge(cdc.replay_id);
            }
            Delivered::Unreadable(bad) => {
                let replay_id = bad.replay_id.unwrap_or_default();
                let position = StreamPosition {
                    replay_id: replay_id.to_be_bytes().to_vec(),
                    commit_timestamp: None,
                };
                self.pipeline
                    .handle(ReceivedChange {
                        decoded: Err(bad.error.clone()),
                        raw: bad.raw.as_bytes(),
                        replay: Replay::CometD(replay_id),
                        schema_id: bad.schema_id.as_deref().unwrap_or_default(),
                        position,
                    })
                    .await?;
                if let Some(id) = bad.replay_id {
                    client.acknowledge(id);
                }
            }
        }
        Ok(())
    }
}
