//! The subscriber role: Salesforce change events in, `user_change.v1` events out to Kafka,
//! and a replay checkpoint that never passes an event Kafka has not confirmed.
//!
//! One loop per transport reads the stream; everything after that is shared by
//! [`Pipeline`]: decode failures become dead letters, decoded events are normalized against
//! the last-known state of their users, re-reads and resyncs go through REST and come out as
//! `snapshot` events, and every event is handed to the producer without waiting for its
//! confirmation. Each stream position is registered with the [`DeliveryFrontier`] together
//! with the records it produced, so the checkpoint saved in the store is always the newest
//! position whose records — and every earlier one's — Kafka confirmed. A crash therefore
//! replays at most the unconfirmed tail, and `event_id` makes those duplicates
//! recognizable downstream.
//!
//! The Pub/Sub loop ([`Subscriber::run`]):
//!
//! 1. signs in, checks `GetTopic` (`can_subscribe`), and starts after the stored checkpoint;
//! 2. with no checkpoint, runs the gap-free initial load: it opens a LATEST subscription
//!    first, which pins the stream position on the server, then exports every user with
//!    SOQL as snapshots, then reads the pinned stream;
//! 3. when a stream ends, waits for every in-flight delivery, saves the checkpoint, drops the
//!    old stream and follows [`recovery`]: back off and resume after the checkpoint, renew
//!    the token, apply the replay policy, or stop with the reason.
//!
//! The last-known user state the normalizer merges UPDATEs into is kept in the store (table
//! `subscriber_users`, the subscriber's own, apart from the processor's users) and cached in
//! memory: written with every event and snapshot published, read back for users this process
//! has not seen yet, so a restart does not re-read every user through REST. It is written when
//! an event is handed to Kafka, not when Kafka confirms it; an event replayed after a failed
//! delivery is then merged into a state that may already include it, and the next event of
//! that user restores the exact state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::config::SalesforceConfig;
use crate::config::Transport;
use crate::connection::{ConnectionFailure, Verdict};
use crate::kafka::{
    ChangePublisher, Checkpoint, DeadLetter, DeliveryFrontier, KafkaConfig, PendingDelivery,
    PublishError, RecordId, TransactionError, TransactionalPublisher,
};
use crate::model::event::{Position, UserChange};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;
use crate::roles::subscriber::lease::{Fence, LeaseLost};
use crate::salesforce::auth::SalesforceAuthError;
use crate::salesforce::avro::ChangeEvent;
use crate::salesforce::normalize::{Delivery, Normalized, Replay, normalize};
use crate::salesforce::pubsub::PubSubError;
use crate::salesforce::replay_from::ReplayFrom;
use crate::salesforce::rest::{SalesforceRest, SalesforceRestError, UserQuery};
use crate::salesforce::snapshot::{ReadPosition, snapshot};
use crate::store::{ReplayCheckpoint, Store, StoreError};
use transaction::{PendingTransaction, Slice};

/// A stream position: what the checkpoint stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub replay_id: Vec<u8>,
    /// The commit time of the event at this position; `None` for a keepalive's position.
    pub commit_timestamp: Option<DateTime<Utc>>,
}

/// Where a stream starts when it is not simply after the checkpoint. What else the subscriber
/// follows is the `[salesforce]` section (`crate::config::SalesforceConfig`): topic, replay
/// policy, resync margin, retry bounds.
#[derive(Debug, Clone, Default)]
pub struct StreamStart {
    /// Read every user first, whatever the checkpoint says, and say why in the log (an admin
    /// asked for a resync, or a reconnect with `salesforce.full_read_on_reconnect`). The
    /// stream then starts at the newest position, opened before the read: no gap.
    pub full_read_first: Option<&'static str>,
    /// Start where an admin asked ([`ReplayRequest`]) instead of after the checkpoint, until
    /// a checkpoint is saved from there.
    pub replay_from: Option<ReplayRequest>,
}

/// How long a stopping subscriber waits for Kafka to confirm what is in flight.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin's request to start the stream elsewhere than after the checkpoint
/// (`POST /api/v1/replay`), shared by the supervisor that took it and the attempts that honour
/// it. It stays pending until a checkpoint is saved from the new start: a stream that ends
/// before that (a network blip, a refused commit, a reconnect) starts there again, and a
/// restart of the process starts from the old checkpoint. Once one is saved the request is
/// done and the stream resumes after its checkpoint as always.
#[derive(Debug, Clone)]
pub struct ReplayRequest(Arc<std::sync::Mutex<Option<ReplayFrom>>>);

impl ReplayRequest {
    pub fn new(from: ReplayFrom) -> ReplayRequest {
        ReplayRequest(Arc::new(std::sync::Mutex::new(Some(from))))
    }

    /// Where the stream must start, while no checkpoint has been saved from there.
    pub fn pending(&self) -> Option<ReplayFrom> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_pending(&self) -> bool {
        self.pending().is_some()
    }

    /// A checkpoint was saved from the new start.
    fn done(&self) -> Option<ReplayFrom> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Why the subscriber stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error("signing in to Salesforce: {0}")]
    Auth(#[from] SalesforceAuthError),
    #[error("Pub/Sub API: {0}")]
    PubSub(#[from] PubSubError),
    #[error("Streaming API (CometD): {0}")]
    Cometd(#[from] Box<crate::salesforce::cometd::CometdError>),
    #[error("the stream cannot go on: {reason}")]
    Stopped { reason: String },
    #[error("while {context}: {source}")]
    Rest {
        context: String,
        #[source]
        source: Box<SalesforceRestError>,
    },
    #[error("while {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: PublishError,
    },
    #[error("while {context}: {source}")]
    Transaction {
        context: String,
        #[source]
        source: TransactionError,
    },
    #[error("while {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
    /// Another subscriber instance holds the lease now: nothing more is published.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
}

impl SubscriberError {
    /// Ends the run instead of resuming from the checkpoint: the stream cannot go on, or
    /// another instance may be streaming and this one must not publish again.
    pub fn ends_the_run(&self) -> bool {
        matches!(
            self,
            SubscriberError::Stopped { .. } | SubscriberError::LeaseLost(_)
        )
    }
}

/// What a stop means for the Salesforce connection: a Salesforce failure as its own client
/// says; anything else (Kafka, the store, a stopped stream, a lost lease) is not the connection.
impl ConnectionFailure for SubscriberError {
    fn verdict(&self) -> Verdict {
        match self {
            SubscriberError::Auth(error) => error.verdict(),
            SubscriberError::PubSub(error) => error.verdict(),
            SubscriberError::Cometd(error) => error.verdict(),
            SubscriberError::Rest { source, .. } => source.verdict(),
            // Kafka, the store and a stopped stream are not the Salesforce connection.
            // A lost lease neither: another instance streams.
            SubscriberError::Stopped { .. }
            | SubscriberError::Kafka { .. }
            | SubscriberError::Transaction { .. }
            | SubscriberError::Store { .. }
            | SubscriberError::LeaseLost(_) => Verdict::Unaffected,
        }
    }
}

/// What the subscriber counted, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    pub events_published: u64,
    pub snapshots_published: u64,
    pub dead_letters: u64,
    pub rereads: u64,
    pub resyncs: u64,
    pub resubscribes: u64,
}

/// Everything after the stream: normalize, re-read, publish, track confirmations, checkpoint.
pub struct Pipeline {
    topic: String,
    /// Which stream is read: it names the checkpoint and the form of its replay ids.
    transport: Transport,
    /// The store key of the checkpoint ([`checkpoint_key`]).
    checkpoint_key: String,
    org_id: SalesforceId,
    rest: SalesforceRest,
    publisher: Arc<ChangePublisher>,
    store: Arc<dyn Store>,
    known: BTreeMap<SalesforceId, SalesforceUser>,
    frontier: DeliveryFrontier<StreamPosition>,
    in_flight: FuturesUnordered<Confirmation>,
    checkpoint: Option<StreamPosition>,
    /// The newest commit (number, time) seen of the org, from the stream or the store: a REST
    /// read made from now on holds every change up to it, so its snapshots are placed there.
    newest_commit: Option<(i64, DateTime<Utc>)>,
    resync_margin: Duration,
    /// Set in transactional mode: events wait here for the end of their stream batch.
    transactions: Option<Transactions>,
    /// Where an admin asked the stream to start, until a checkpoint is saved from there.
    replay: Option<ReplayRequest>,
    /// Set when instances share the store: checked before every publish and checkpoint.
    fence: Option<Arc<Fence>>,
    pub stats: SubscriberStats,
}

/// Transactional mode: the producer, and what waits for its next commit.
struct Transactions {
    publisher: Arc<TransactionalPublisher>,
    kafka: KafkaConfig,
    pending: PendingTransaction,
}

/// The most events one transaction holds; a larger resync is committed in slices.
const TRANSACTION_EVENTS: usize = 1_000;

type Confirmation = futures::future::BoxFuture<'static, (RecordId, Result<(), PublishError>)>;

/// A change as a transport delivered it.
pub struct ReceivedChange<'a> {
    pub decoded: Result<ChangeEvent, String>,
    /// The bytes as received, for a dead letter.
    pub raw: &'a [u8],
    pub replay: Replay<'a>,
    pub schema_id: &'a str,
    pub position: StreamPosition,
}

/// What a dead letter needs of a refused change.
struct Refused<'a> {
    raw: &'a [u8],
    replay: Replay<'a>,
    schema_id: &'a str,
    position: StreamPosition,
}

impl Pipeline {
    pub fn new(
        topic: &str,
        org_id: SalesforceId,
        rest: SalesforceRest,
        publisher: Arc<ChangePublisher>,
        store: Arc<dyn Store>,
        resync_margin: Duration,
    ) -> Pipeline {
        Pipeline {
            topic: topic.to_owned(),
            transport: Transport::Pubsub,
            checkpoint_key: checkpoint_key(Transport::Pubsub, topic),
            org_id,
            rest,
            publisher,
            store,
            known: BTreeMap::new(),
            frontier: DeliveryFrontier::new(),
            in_flight: FuturesUnordered::new(),
            checkpoint: None,
            newest_commit: None,
            resync_margin,
            transactions: None,
            replay: None,
            fence: None,
            stats: SubscriberStats::default(),
        }
    }

    /// Honours `request` (when pending) at the next start: see [`Pipeline::asked_start`].
    pub fn with_replay(mut self, request: Option<ReplayRequest>) -> Pipeline {
        self.replay = request;
        self
    }

    /// The start an admin asked for, while no checkpoint has been saved from it. Taking it
    /// puts this process where the stream will start, so that a position saved later without a
    /// time of its own (a keepalive's) does not take the old checkpoint's time, and a read
    /// placed at the stream's position names the right replay id.
    pub fn asked_start(&mut self) -> Option<ReplayFrom> {
        let from = self.replay.as_ref()?.pending()?;
        match &from {
            ReplayFrom::Earliest => self.checkpoint = None,
            ReplayFrom::After(replay_id) => {
                self.checkpoint = Some(StreamPosition {
                    replay_id: replay_id.clone(),
                    commit_timestamp: None,
                });
            }
            ReplayFrom::Latest => {}
        }
        tracing::info!(
            from = %from.render(self.transport),
            "an admin asked to replay: the stream starts there"
        );
        Some(from)
    }

    /// Transactional mode: events are sent by `publisher`, one Kafka transaction per stream
    /// batch together with the position after it, and the checkpoint is read back from
    /// Kafka's checkpoint topic at start. The idempotent publisher given to
    /// [`Pipeline::new`] still sends dead letters, which are confirmed one by one.
    pub fn with_transactions(
        mut self,
        publisher: Arc<TransactionalPublisher>,
        kafka: KafkaConfig,
    ) -> Pipeline {
        self.transactions = Some(Transactions {
            publisher,
            kafka,
            pending: PendingTransaction::new(TRANSACTION_EVENTS),
        });
        self
    }

    /// Publishes and saves checkpoints only while `fence` holds (the lease is this instance's).
    pub fn with_fence(mut self, fence: Option<Arc<Fence>>) -> Pipeline {
        self.fence = fence;
        self
    }

    /// Whether this instance may still publish.
    fn may_publish(&self) -> Result<(), SubscriberError> {
        match &self.fence {
            Some(fence) => Ok(fence.check()?),
            None => Ok(()),
        }
    }

    /// Reads the CometD stream: its checkpoint has its own key and its replay ids are numbers.
    pub fn for_cometd(mut self) -> Pipeline {
        self.transport = Transport::Cometd;
        self.checkpoint_key = checkpoint_key(Transport::Cometd, &self.topic);
        self
    }

    /// The stored checkpoint, read at start: from the store, or in transactional mode from
    /// Kafka's checkpoint topic (`read_committed`), where it was committed with its events.
    /// Also reads the newest commit the store holds for the org, where this process's own
    /// reads are placed until the stream shows a newer one.
    pub async fn load_checkpoint(&mut self) -> Result<Option<StreamPosition>, SubscriberError> {
        let stored = self
            .store
            .newest_commit(&self.org_id)
            .await
            .map_err(|source| SubscriberError::Store {
                context: format!("reading the newest commit seen of org {}", self.org_id),
                source,
            })?;
        if let Some(commit) = stored {
            self.saw_commit(commit);
        }
        if let Some(transactions) = &self.transactions {
            let timeout = transactions.kafka.message_timeout * 2;
            let committed =
                crate::kafka::read_checkpoint(&transactions.kafka, &self.checkpoint_key, timeout)
                    .await
                    .map_err(|source| SubscriberError::Transaction {
                        context: format!(
                            "reading the replay checkpoint of {} from Kafka",
                            self.checkpoint_key
                        ),
                        source,
                    })?;
            self.checkpoint = committed.map(|c| StreamPosition {
                replay_id: c.replay_id,
                commit_timestamp: c.commit_timestamp,
            });
            return Ok(self.checkpoint.clone());
        }
        let stored = self
            .store
            .checkpoint(&self.checkpoint_key)
            .await
            .map_err(|source| SubscriberError::Store {
                context: format!("reading the replay checkpoint of {}", self.topic),
                source,
            })?;
        self.checkpoint = stored.map(|c| StreamPosition {
            replay_id: c.replay_id,
            commit_timestamp: c.commit_timestamp,
        });
        Ok(self.checkpoint.clone())
    }

    /// The newest saved position.
    pub fn checkpoint(&self) -> Option<&StreamPosition> {
        self.checkpoint.as_ref()
    }

    /// Handles one delivered change event.
    pub async fn handle(&mut self, delivered: ReceivedChange<'_>) -> Result<(), SubscriberError> {
        let ReceivedChange {
            decoded,
            raw,
            replay,
            schema_id,
            position,
        } = delivered;
        let refused = Refused {
            raw,
            replay,
            schema_id,
            position: position.clone(),
        };
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => return self.dead_letter(refused, &reason).await,
        };
        self.saw_commit((event.header.commit_number, event.header.commit_timestamp));
        crate::metrics::global().salesforce_commit(event.header.commit_timestamp);
        // A read this event asks for is made after its commit: its snapshots are placed there.
        let read_here = ReadPosition {
            commit_number: Some(event.header.commit_number),
            commit_timestamp: Some(event.header.commit_timestamp),
            replay_id: Some(replay.render()),
            change_type: Some(event.header.change_type.to_string()),
            transaction_key: Some(event.header.transaction_key.clone()),
        };
        let ids: Vec<SalesforceId> = event
            .header
            .record_ids
            .iter()
            .filter_map(|raw| SalesforceId::parse(raw).ok())
            .collect();
        self.recall(&ids).await?;
        let delivery = Delivery {
            org_id: &self.org_id,
            topic: &self.topic,
            replay,
            schema_id,
            observed_at: Utc::now(),
        };
        let last_known: BTreeMap<SalesforceId, SalesforceUser> = ids
            .into_iter()
            .filter_map(|id| self.known.get(&id).map(|u| (id, u.clone())))
            .collect();
        let outcome = match normalize(&event, &delivery, &last_known) {
            Ok(outcome) => outcome,
            Err(error) => {
                return self.dead_letter(refused, &error.to_string()).await;
            }
        };
        match outcome {
            Normalized::Events(events) => {
                let count = events.len() as u64;
                self.publish(position, events).await?;
                self.stats.events_published += count;
                crate::metrics::global().published(crate::metrics::Published::change, count);
                Ok(())
            }
            Normalized::NeedsReread { user_ids, reason } => {
                self.stats.rereads += 1;
                let context = format!(
                    "re-reading {} user(s) {} after a {} ({reason})",
                    user_ids.len(),
                    ids_text(&user_ids),
                    event.header.change_type
                );
                let users = self.rest.users_by_ids(&user_ids).await.map_err(|source| {
                    SubscriberError::Rest {
                        context,
                        source: Box::new(source),
                    }
                })?;
                self.publish_snapshots(position, users, &read_here).await
            }
            Normalized::FullResync { since, reason, .. } => {
                tracing::warn!(%reason, %since, "resyncing every user changed since the overflow");
                self.resync_at(Some(since), position, read_here, &reason)
                    .await
            }
            Normalized::Skipped { reason } => {
                tracing::info!(%reason, replay_id = %replay.render(), "change event skipped");
                self.passed(position);
                Ok(())
            }
        }
    }

    /// A keepalive's position: saved once everything before it is confirmed.
    pub fn keepalive(&mut self, replay_id: Vec<u8>) {
        if replay_id.is_empty() {
            return;
        }
        self.passed(StreamPosition {
            replay_id,
            commit_timestamp: None,
        });
    }

    /// A position that produced no event: it may be checkpointed once everything before it is.
    fn passed(&mut self, position: StreamPosition) {
        match &mut self.transactions {
            Some(transactions) => transactions.pending.passed(position),
            None => {
                self.frontier.register(position, 0);
            }
        }
    }

    /// Re-reads users modified since `since` minus the margin (every user when `None`) and
    /// publishes them as snapshots, registered at stream `position` and placed in their users'
    /// history at the newest commit seen ([`Pipeline::read_position`]).
    pub async fn resync(
        &mut self,
        since: Option<DateTime<Utc>>,
        position: StreamPosition,
        why: &str,
    ) -> Result<(), SubscriberError> {
        let read = self.read_position();
        self.resync_at(since, position, read, why).await
    }

    /// Where a read made now is placed: the newest commit seen, and the replay id the stream
    /// resumes after, when there is one.
    pub fn read_position(&self) -> ReadPosition {
        ReadPosition {
            commit_number: self.newest_commit.map(|(number, _)| number),
            commit_timestamp: self.newest_commit.map(|(_, at)| at),
            replay_id: self
                .checkpoint
                .as_ref()
                .filter(|c| !c.replay_id.is_empty())
                .map(|c| {
                    crate::salesforce::replay_from::render_replay_id(self.transport, &c.replay_id)
                }),
            change_type: None,
            transaction_key: None,
        }
    }

    /// Reads users through REST for a stream opened at its newest position at `pinned_at` —
    /// opened first, so that whatever changes during the read is delivered after it — then
    /// marks the pin ([`Pipeline::pin`]).
    async fn read_before_stream(
        &mut self,
        read: &Resync,
        pinned_at: DateTime<Utc>,
    ) -> Result<(), SubscriberError> {
        match read {
            Resync::Nothing => {}
            Resync::All(why) => {
                tracing::info!(
                    why,
                    "reading every user, the stream pinned at its newest position"
                );
                self.resync(None, unplaced(), why).await?;
            }
            Resync::Since(since, why) => {
                tracing::info!(%since, why, "reading the users changed since then, the stream pinned at its newest position");
                self.resync(Some(*since), unplaced(), why).await?;
            }
        }
        self.pin(pinned_at);
        Ok(())
    }

    /// Everything read before the stream is published: once Kafka confirmed it, the checkpoint
    /// becomes "pinned at the newest position at `at`", with no replay id yet. A restart or
    /// reconnect before the stream delivers its first position then re-reads only the users
    /// changed since `at` (minus the resync margin), not every user again.
    fn pin(&mut self, at: DateTime<Utc>) {
        self.passed(StreamPosition {
            replay_id: Vec::new(),
            commit_timestamp: Some(at),
        });
    }

    /// Takes a commit seen in the stream or the store as the newest, if it is.
    fn saw_commit(&mut self, commit: (i64, DateTime<Utc>)) {
        if self
            .newest_commit
            .is_none_or(|(newest, _)| commit.0 > newest)
        {
            self.newest_commit = Some(commit);
        }
    }

    async fn resync_at(
        &mut self,
        since: Option<DateTime<Utc>>,
        position: StreamPosition,
        read: ReadPosition,
        why: &str,
    ) -> Result<(), SubscriberError> {
        self.stats.resyncs += 1;
        let query = match since {
            Some(since) => UserQuery::modified_since(since, self.resync_margin),
            None => UserQuery::All,
        };
        let context = format!("resyncing users ({why}) with {}", query.soql());
        let mut pages = Box::pin(self.rest.user_pages(query));
        let mut users = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|source| SubscriberError::Rest {
                context: context.clone(),
                source: Box::new(source),
            })?;
            users.extend(page.records);
        }
        drop(pages);
        self.publish_snapshots(position, users, &read).await?;
        // A resync may come before any stream event (the initial load): in transactional mode
        // its snapshots must not wait for the stream's first batch to be committed.
        self.save_checkpoint().await
    }

    async fn publish_snapshots(
        &mut self,
        position: StreamPosition,
        users: Vec<SalesforceUser>,
        read: &ReadPosition,
    ) -> Result<(), SubscriberError> {
        let now = Utc::now();
        let events: Vec<UserChange> = users
            .iter()
            .map(|user| snapshot(user, &self.org_id, read, now))
            .collect();
        let count = events.len() as u64;
        self.publish(position, events).await?;
        self.stats.snapshots_published += count;
        crate::metrics::global().published(crate::metrics::Published::snapshot, count);
        Ok(())
    }

    /// Loads the stored last-known state of the users among `ids` this process has not seen.
    async fn recall(&mut self, ids: &[SalesforceId]) -> Result<(), SubscriberError> {
        let missing: Vec<SalesforceId> = ids
            .iter()
            .filter(|id| !self.known.contains_key(*id))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let users = self
            .store
            .last_known_users(&self.org_id, &missing)
            .await
            .map_err(|source| SubscriberError::Store {
                context: format!("reading the last-known state of {}", ids_text(&missing)),
                source,
            })?;
        for user in users {
            self.known.insert(user.id.clone(), user);
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        position: StreamPosition,
        events: Vec<UserChange>,
    ) -> Result<(), SubscriberError> {
        if self.transactions.is_some() {
            return self.publish_in_transaction(position, events).await;
        }
        let ids = self.frontier.register(position, events.len());
        for (id, event) in ids.into_iter().zip(&events) {
            self.may_publish()?;
            let pending: PendingDelivery =
                self.publisher
                    .publish(event)
                    .await
                    .map_err(|source| SubscriberError::Kafka {
                        context: format!("publishing {}", event.event_id),
                        source,
                    })?;
            self.in_flight
                .push(Box::pin(async move { (id, pending.await.map(|_| ())) }));
        }
        self.remember(&events).await
    }

    /// Transactional mode: the events join the pending transaction; slices that reached the
    /// limit are committed now, without a checkpoint.
    async fn publish_in_transaction(
        &mut self,
        position: StreamPosition,
        events: Vec<UserChange>,
    ) -> Result<(), SubscriberError> {
        self.remember(&events).await?;
        let Some(transactions) = &mut self.transactions else {
            return Ok(());
        };
        let full = transactions.pending.add(events);
        transactions.pending.passed(position);
        for slice in full {
            self.commit(slice).await?;
        }
        Ok(())
    }

    /// Keeps the state each event carries as its user's last-known state, in memory and in
    /// the store.
    async fn remember(&mut self, events: &[UserChange]) -> Result<(), SubscriberError> {
        for event in events {
            if let Some(user_id) = event.salesforce_user_id() {
                self.known
                    .insert(user_id.clone(), SalesforceUser::from_event(user_id, event));
            }
        }
        let states: Vec<(SalesforceUser, Option<Position>)> = events
            .iter()
            .filter_map(|event| {
                let id = event.salesforce_user_id()?;
                Some((
                    SalesforceUser::from_event(id, event),
                    Some(event.position()),
                ))
            })
            .collect();
        if !states.is_empty() {
            self.store
                .put_last_known_users(&self.org_id, &states)
                .await
                .map_err(|source| SubscriberError::Store {
                    context: format!("saving the last-known state of {} user(s)", states.len()),
                    source,
                })?;
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        refused: Refused<'_>,
        reason: &str,
    ) -> Result<(), SubscriberError> {
        self.stats.dead_letters += 1;
        crate::metrics::global().subscriber_dead_letter();
        let replay_id = refused.replay.render();
        tracing::warn!(%reason, %replay_id, schema_id = refused.schema_id, "change event dead-lettered");
        let letter = DeadLetter {
            key: &replay_id,
            raw: refused.raw,
            reason,
            source: "salesforce",
            context: vec![
                ("topic", self.topic.clone()),
                ("replay_id", replay_id.clone()),
                ("schema_id", refused.schema_id.to_owned()),
            ],
        };
        self.may_publish()?;
        self.publisher
            .dead_letter(letter)
            .await
            .map_err(|source| SubscriberError::Kafka {
                context: format!("dead-lettering the event at replay id {replay_id}"),
                source,
            })?;
        self.passed(refused.position);
        Ok(())
    }

    /// Waits for the next confirmation, if any is in flight. Cancel-safe.
    pub async fn next_confirmation(&mut self) -> Option<(RecordId, Result<(), PublishError>)> {
        self.in_flight.next().await
    }

    /// Takes one confirmation into the frontier. A failed delivery is an error: the stream is
    /// resumed from the checkpoint, which is still before it.
    pub fn confirmed(
        &mut self,
        id: RecordId,
        result: Result<(), PublishError>,
    ) -> Result<(), SubscriberError> {
        match result {
            Ok(()) => {
                let _ = self.frontier.confirm(id);
                Ok(())
            }
            Err(source) => {
                let _ = self.frontier.fail(id);
                Err(SubscriberError::Kafka {
                    context: "waiting for Kafka to confirm an event".into(),
                    source,
                })
            }
        }
    }

    /// Saves the newest fully confirmed position, if it moved. In transactional mode, commits
    /// what waits, with the newest position it completes.
    pub async fn save_checkpoint(&mut self) -> Result<(), SubscriberError> {
        if let Some(transactions) = &mut self.transactions {
            return match transactions.pending.take() {
                Some(slice) => self.commit(slice).await,
                None => Ok(()),
            };
        }
        let Some(position) = self.frontier.advance() else {
            return Ok(());
        };
        if position.is_unplaced() {
            // Snapshots read before the stream was pinned: nothing to resume from yet.
            return Ok(());
        }
        self.record_checkpoint(position).await
    }

    /// Commits one slice of the pending transaction. A commit that fails leaves the
    /// checkpoint where it was and forgets what waits, so the stream is read again from there;
    /// a producer that can never commit again (fenced by another one with the same
    /// `transactional_id`) stops the subscriber.
    async fn commit(&mut self, slice: Slice) -> Result<(), SubscriberError> {
        let Some(transactions) = &mut self.transactions else {
            return Ok(());
        };
        let checkpoint = slice.position.as_ref().map(|position| Checkpoint {
            replay_id: position.replay_id.clone(),
            commit_timestamp: position
                .commit_timestamp
                .or(self.checkpoint.as_ref().and_then(|c| c.commit_timestamp)),
        });
        if let Some(fence) = &self.fence {
            fence.check()?;
        }
        let committed = transactions
            .publisher
            .publish_batch(&self.checkpoint_key, &slice.events, checkpoint.as_ref())
            .await;
        if let Err(source) = committed {
            transactions.pending.clear();
            if source.is_fatal() {
                return Err(SubscriberError::Stopped {
                    reason: format!(
                        "the transactional producer can no longer commit ({source}); is another \
                         subscriber running with the same kafka.transactional_id?"
                    ),
                });
            }
            return Err(SubscriberError::Transaction {
                context: format!(
                    "committing {} event(s) of {} in one transaction",
                    slice.events.len(),
                    self.checkpoint_key
                ),
                source,
            });
        }
        match slice.position {
            Some(position) => self.record_checkpoint(position).await,
            None => Ok(()),
        }
    }

    /// Saves `position` as the checkpoint in the store. In transactional mode this copy is for
    /// status only; the subscriber resumes from the one committed in Kafka.
    async fn record_checkpoint(&mut self, position: StreamPosition) -> Result<(), SubscriberError> {
        let commit_timestamp = position
            .commit_timestamp
            .or(self.checkpoint.as_ref().and_then(|c| c.commit_timestamp));
        let checkpoint = ReplayCheckpoint {
            topic: self.checkpoint_key.clone(),
            replay_id: position.replay_id.clone(),
            commit_timestamp,
            updated_at: Utc::now(),
        };
        let saved = match &self.fence {
            Some(fence) => {
                fence.check()?;
                self.store
                    .save_checkpoint_as(&checkpoint, fence.claim())
                    .await
            }
            None => self.store.save_checkpoint(&checkpoint).await,
        };
        saved.map_err(|source| match source {
            StoreError::LeaseLost {
                name,
                holder,
                epoch,
            } => SubscriberError::LeaseLost(LeaseLost {
                name,
                holder,
                epoch,
                why: "the store holds another instance's epoch".into(),
            }),
            source => SubscriberError::Store {
                context: format!("saving the replay checkpoint of {}", self.topic),
                source,
            },
        })?;
        if let Some(from) = self.replay.as_ref().and_then(ReplayRequest::done) {
            tracing::info!(
                from = %from.render(self.transport),
                replay_id = %crate::salesforce::replay_from::render_replay_id(self.transport, &position.replay_id),
                "the replay an admin asked for has moved the checkpoint"
            );
        }
        self.checkpoint = Some(StreamPosition {
            replay_id: position.replay_id,
            commit_timestamp,
        });
        Ok(())
    }

    /// Waits for everything in flight, then saves the checkpoint. The first failed delivery
    /// is returned after the others were waited for.
    pub async fn drain(&mut self) -> Result<(), SubscriberError> {
        let mut first_error = None;
        while let Some((id, result)) = self.in_flight.next().await {
            if let Err(error) = self.confirmed(id, result) {
                first_error.get_or_insert(error);
            }
        }
        self.save_checkpoint().await?;
        first_error.map_or(Ok(()), Err)
    }

    /// Forgets registered positions (and, in transactional mode, uncommitted events) after a
    /// failure, so a resumed stream registers afresh.
    pub fn reset_frontier(&mut self) {
        self.frontier = DeliveryFrontier::new();
        if let Some(transactions) = &mut self.transactions {
            transactions.pending.clear();
        }
    }

    pub fn known_users(&self) -> usize {
        self.known.len()
    }
}

/// The store key of a transport's checkpoint: the topic for Pub/Sub, `cometd:<topic>` for
/// CometD, so that switching transports never resumes one with the other's replay ids.
pub fn checkpoint_key(transport: Transport, topic: &str) -> String {
    match transport {
        Transport::Pubsub => topic.to_owned(),
        Transport::Cometd => format!("cometd:{topic}"),
    }
}

fn ids_text(ids: &[SalesforceId]) -> String {
    let shown: Vec<&str> = ids.iter().take(5).map(SalesforceId::as_str).collect();
    let more = ids.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(","))
    } else {
        shown.join(",")
    }
}

mod cometd;
pub mod lease;
mod pubsub;
pub mod role;
mod transaction;

pub use cometd::CometdSubscriber;
pub use pubsub::Subscriber;

/// The position of snapshots read before the stream's first position is known: never saved
/// as a checkpoint.
fn unplaced() -> StreamPosition {
    StreamPosition {
        replay_id: Vec::new(),
        commit_timestamp: None,
    }
}

impl StreamPosition {
    fn is_unplaced(&self) -> bool {
        self.replay_id.is_empty() && self.commit_timestamp.is_none()
    }

    /// A pin ([`Pipeline::pin`]): no replay id, the time the stream was opened at its newest
    /// position.
    pub fn pinned_at(&self) -> Option<DateTime<Utc>> {
        self.replay_id
            .is_empty()
            .then_some(self.commit_timestamp)
            .flatten()
    }
}

/// Which users to read through REST before a stream opened at its newest position is read.
#[derive(Debug, Clone)]
enum Resync {
    Nothing,
    All(&'static str),
    /// Users modified since then, minus the resync margin; and why.
    Since(DateTime<Utc>, &'static str),
}

impl Resync {
    /// Where a stream resumes from `checkpoint`: after its replay id (`None`: nothing to read
    /// first), or — pinned before its first position — at the newest position after reading the
    /// users changed since the pin, or, with no checkpoint, after the initial load.
    fn before_resuming(checkpoint: Option<&StreamPosition>) -> Option<Resync> {
        match checkpoint {
            None => Some(Resync::All("initial load")),
            Some(position) => position.pinned_at().map(|at| {
                Resync::Since(
                    at,
                    "the stream was pinned, but had delivered no position, when it stopped",
                )
            }),
        }
    }
}

/// Jittered exponential delays between the configured bounds, without end; a stream that
/// delivers something starts the sequence over.
fn retry_delays(config: &SalesforceConfig) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(config.backoff_min)
        .with_max_delay(config.backoff_max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_outside_salesforce_leave_its_connection_alone() {
        let stopped = SubscriberError::Stopped {
            reason: "the transactional producer was fenced".into(),
        };
        assert_eq!(stopped.verdict(), Verdict::Unaffected);
    }
}
