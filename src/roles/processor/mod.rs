//! The processor role: `user_change.v1` events in from Kafka, decisions applied to Outreach,
//! and the result recorded — in that order, one event at a time.
//!
//! For each record: decode it (an undecodable one goes to the dead-letter topic and its
//! offset is stored, so a bad record never stops a partition); load the event's email group
//! from the store in one read transaction; decide and call Outreach
//! ([`crate::roles::processor::apply::apply_event`]); record the decisions, mappings, Outreach
//! users, the
//! Salesforce user's new state and the event id in one store transaction
//! ([`changes::applied_event`]); only then store the offset ([`offsets::store_processed`]),
//! which librdkafka commits in the background and, synchronously, at shutdown.
//!
//! What that gives, per event:
//! - A crash before the record re-delivers the event. If its Outreach call had gone through,
//!   deciding again sees the same state and calls nothing new — except a create, whose second
//!   attempt Outreach refuses (emails are unique), which [`crate::roles::processor::apply`] turns
//!   into a lookup
//!   and a link: never a second Outreach user.
//! - A crash after the record but before the commit re-delivers an event whose id is in the
//!   applied-event log: `skip`, no call.
//! - So Outreach sees each change in effect once, while Kafka delivers at least once.
//!
//! The loop never polls Kafka while an event is in flight, so a rebalance (which librdkafka
//! runs inside a poll) always finds nothing in flight, and the stored offsets it commits are
//! exactly those of finished events. When Outreach cannot take an event for now (rate limit,
//! server or network trouble, a revoked authorization) or the store is down, the event's
//! partition is paused and rewound to it, the loop keeps polling the others (so the group never
//! evicts this member), and the event is tried again after a backoff. An event Outreach
//! refuses for good (a validation error on this user, say) is dead-lettered with the reason and
//! the partition goes on.

pub mod apply;
pub mod changes;
pub mod index;
pub mod offsets;
mod replies;
pub mod retention;
pub mod role;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, ProcessorConfig};
use crate::connection::authorization::{OutreachAuthorization, StoredAuthorizations};
use crate::connection::{ConnectionState, Connections, DisconnectReason, Side};
use crate::engine::decision::{Action, DecisionRecord, Reason};
use crate::engine::settings::SyncSettings;
use crate::engine::state::StateScope;
use crate::kafka::{ChangePublisher, DeadLetter, KafkaConfig, PublishError};
use crate::metrics;
use crate::model::event::UserChange;
use crate::outreach::client::OutreachClient;
use crate::roles::processor::apply::{ApplyError, apply_event};
use crate::store::{Store, StoreError};
use replies::Replies;

/// How many times one event is decided in a row before it waits like an event Outreach could
/// not take: each further decision follows a record the store refused because another replica
/// changed the same email group first.
const MAX_DECISIONS: u32 = 5;

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("cannot create the Kafka consumer of group {group_id} on brokers {brokers}: {source}")]
    Consumer {
        group_id: String,
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("while {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("while {context}: {source}")]
    DeadLetter {
        context: String,
        #[source]
        source: Box<PublishError>,
    },
    #[error("while {context}: {source}")]
    Index {
        context: String,
        #[source]
        source: Box<index::IndexError>,
    },
    #[error("while {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: Box<StoreError>,
    },
}

/// What the processor counted, for logs, tests and the load harness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorStats {
    /// Records read from Kafka (redeliveries after a pause included).
    pub records: u64,
    /// Events whose decisions were recorded.
    pub applied: u64,
    /// Events already in the applied-event log: skipped without a call.
    pub duplicates: u64,
    pub dead_letters: u64,
    /// Times an event was put back to be tried again.
    pub retries: u64,
    pub outreach_calls: u64,
    /// Records the store refused because another replica had changed the state they were
    /// decided on; each event was then decided again.
    pub record_conflicts: u64,
}

/// The consumer's context: tells the loop which partitions a rebalance took away, so it
/// forgets events it was holding for them (their new owner reads them again).
pub struct GroupContext {
    revoked: mpsc::UnboundedSender<Vec<i32>>,
    /// The broker disconnects librdkafka reported so far, for the reconnect counter.
    disconnects: metrics::BrokerDisconnects,
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics (every [`LAG_REFRESH`]): the lag of each partition this consumer
    /// fetches, for `/metrics`. Partition -1 is librdkafka's placeholder for unassigned
    /// records, and -1 lag means not known yet; both are left out. Also the broker connections
    /// lost since the last report, each reopened by librdkafka. Only brokers known by id count:
    /// an entry of node -1 (a bootstrap address, or librdkafka's logical group coordinator)
    /// stands for a connection already counted under its broker, or for none the client keeps.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let disconnects = self.disconnects.since_last(
            statistics
                .brokers
                .values()
                .filter(|broker| broker.nodeid >= 0)
                .filter_map(|broker| Some((broker.name.clone(), broker.disconnects?))),
        );
        if disconnects > 0 {
            metrics::global().reconnects(
                metrics::Link::kafka,
                metrics::Reconnect::broker_disconnect,
                disconnects,
            );
        }
        let lags = statistics.topics.into_iter().flat_map(|(name, topic)| {
            topic
                .partitions
                .into_values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(move |p| (name.clone(), p.partition, p.consumer_lag))
        });
        metrics::global().record_lag(lags);
    }
}

/// How often librdkafka reports the consumer lag (`statistics.interval.ms`).
const LAG_REFRESH: Duration = Duration::from_secs(5);

impl ConsumerContext for GroupContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions revoked");
                // librdkafka keeps a partition paused across a rebalance, and the loop forgets
                // the events held on revoked partitions: resumed now, while they are still
                // assigned, a partition given back later is read from its committed offset.
                if let Err(error) = consumer.resume(list) {
                    tracing::warn!(%error, ?partitions, "could not resume the revoked partitions");
                }
                let _ = self.revoked.send(partitions);
            }
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

/// An event put back to be tried again, and how often it was.
#[derive(Debug, Clone)]
struct Retry {
    offset: i64,
    attempt: u32,
    /// `Some` while its partition is paused, until then; `None` once it is being read again.
    until: Option<Instant>,
}

/// What became of one record.
enum Outcome {
    Applied {
        duplicate: bool,
    },
    DeadLettered,
    /// Not now: pause the partition and try again after the wait.
    Later {
        wait: Option<Duration>,
        why: String,
    },
}

/// The processor.
pub struct Processor {
    consumer: StreamConsumer<GroupContext>,
    revoked: mpsc::UnboundedReceiver<Vec<i32>>,
    topic: String,
    store: Arc<dyn Store>,
    outreach: OutreachClient,
    dead_letters: Arc<ChangePublisher>,
    /// The `[processor]` section.
    settings: ProcessorConfig,
    /// The sync settings used until an admin saves others in the store.
    sync: SyncSettings,
    /// How long the decision and applied-event logs keep a row (`store.retention_days`);
    /// `None`: forever. The processor prunes them while it runs ([`retention`]).
    retention: Option<Duration>,
    /// Per partition, the event put back last; a second failure of the same event waits
    /// longer. Cleared when the event is done or the partition is taken away.
    retries: BTreeMap<i32, Retry>,
    decisions: broadcast::Sender<DecisionRecord>,
    /// Where the Outreach connection's state is reported.
    connections: Connections,
    /// An admin's reconnect requests for Outreach.
    reconnects: watch::Receiver<u64>,
    /// Where a reconnect with a new Outreach authorization left it.
    authorizations: Option<StoredAuthorizations>,
    pub stats: ProcessorStats,
}

impl Processor {
    /// Joins the consumer group (nothing is read yet).
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        outreach: OutreachClient,
        dead_letters: Arc<ChangePublisher>,
    ) -> Result<Processor, ProcessorError> {
        let kafka = &config.kafka;
        let settings = config.processor.clone();
        let (revoked_tx, revoked) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<GroupContext> = crate::kafka::client::create_with_context(
            kafka,
            &consumer_config(kafka, &settings),
            GroupContext {
                revoked: revoked_tx,
                disconnects: metrics::BrokerDisconnects::default(),
            },
        )
        .map_err(|source| ProcessorError::Consumer {
            group_id: settings.group_id.clone(),
            brokers: kafka.brokers.clone(),
            source: Box::new(source),
        })?;
        consumer
            .subscribe(&[&kafka.topic])
            .map_err(|source| ProcessorError::Kafka {
                context: format!("subscribing to {}", kafka.topic),
                source: Box::new(source),
            })?;
        let (decisions, _) = broadcast::channel(crate::admin::feed::FEED_BACKLOG);
        Ok(Processor {
            consumer,
            revoked,
            topic: kafka.topic.clone(),
            store,
            outreach,
            dead_letters,
            settings,
            sync: config.sync.clone(),
            retention: config.store.retention(),
            retries: BTreeMap::new(),
            decisions,
            reconnects: Connections::new().reconnect_requests(Side::Outreach),
            authorizations: None,
            connections: Connections::new(),
            stats: ProcessorStats::default(),
        })
    }

    /// Reports the Outreach connection on `connections` (shared with the admin surface)
    /// instead of a board of its own.
    pub fn with_connections(mut self, connections: Connections) -> Processor {
        self.reconnects = connections.reconnect_requests(Side::Outreach);
        self.connections = connections;
        self
    }

    /// Reads a new Outreach authorization from `authorizations` when an admin reconnects.
    pub fn with_authorizations(mut self, authorizations: StoredAuthorizations) -> Processor {
        self.authorizations = Some(authorizations);
        self
    }

    /// Takes the authorization a reconnect stored, when it is not the one in use.
    async fn take_stored_authorization(&self) {
        let Some(authorizations) = &self.authorizations else {
            return;
        };
        match authorizations
            .load::<OutreachAuthorization>(Side::Outreach)
            .await
        {
            Ok(Some(stored)) => {
                if self.outreach.tokens().await.refresh_token != stored.refresh_token {
                    tracing::info!(authorization = ?stored, "using the Outreach authorization of the reconnect");
                    self.outreach.replace_refresh_token(stored.refresh_token);
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "the Outreach authorization of the reconnect cannot be read")
            }
        }
    }

    /// Every decision as it is recorded (a slow receiver misses the oldest ones, never slows
    /// the processor).
    pub fn decisions(&self) -> broadcast::Receiver<DecisionRecord> {
        self.decisions.subscribe()
    }

    /// The sender behind [`decisions`](Self::decisions), for watchers that subscribe later
    /// (each client of the live feed).
    pub fn decision_feed(&self) -> broadcast::Sender<DecisionRecord> {
        self.decisions.clone()
    }

    /// Loads the Outreach user index, then processes events until `shutdown` turns true; then
    /// commits what was processed. Meanwhile, with a retention, a task of its own prunes the
    /// decision and applied-event logs, so pruning never holds up an event.
    pub async fn run(&mut self, shutdown: watch::Receiver<bool>) -> Result<(), ProcessorError> {
        let pruning = self.retention.map(|keep| {
            tokio::spawn(retention::follow(
                self.store.clone(),
                keep,
                shutdown.clone(),
            ))
        });
        let ran = self.process(shutdown).await;
        if let Some(pruning) = pruning {
            // A batch cut off here is a statement that did not happen: nothing half-done.
            pruning.abort();
        }
        ran
    }

    /// The event loop of [`run`](Self::run).
    async fn process(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ProcessorError> {
        // Decisions need the index: without it every create would be a guess. Until Outreach
        // answers (rate limit, outage, a connection an admin must renew), wait and try again.
        let mut attempt = 0;
        while let Err(error) = self.reconcile().await {
            attempt += 1;
            let wait = self.backoff(attempt);
            tracing::warn!(%error, ?wait, attempt, "the Outreach user index could not be loaded; trying again");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Ok(()) = self.reconnects.changed() => {
                    self.reconnects.borrow_and_update();
                    metrics::global().reconnect(metrics::Link::outreach, metrics::Reconnect::admin);
                    self.take_stored_authorization().await;
                }
                _ = shutdown.changed() => return self.finish(),
            }
        }
        let mut reconcile = self.settings.reconcile_every().map(|every| {
            let mut timer = tokio::time::interval_at(Instant::now() + every, every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        while !*shutdown.borrow() {
            self.forget_revoked();
            let due = self.retries.values().filter_map(|r| r.until).min();
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                () = sleep_until(due) => self.release_due()?,
                Ok(()) = self.reconnects.changed() => {
                    // An admin reconnected Outreach: read the index again (the connection test
                    // of the processor) and try every held event now rather than at its time.
                    self.reconnects.borrow_and_update();
                    metrics::global().reconnect(metrics::Link::outreach, metrics::Reconnect::admin);
                    tracing::info!("reconnect requested: reading the Outreach index and retrying held events");
                    self.take_stored_authorization().await;
                    if let Err(error) = self.reconcile().await {
                        tracing::warn!(%error, "Outreach still refuses after the reconnect");
                    }
                    let now = Instant::now();
                    for retry in self.retries.values_mut() {
                        if retry.until.is_some() {
                            retry.until = Some(now);
                        }
                    }
                    self.release_due()?;
                }
                _ = tick(&mut reconcile) => {
                    if let Err(error) = self.reconcile().await {
                        tracing::warn!(%error, "the Outreach user index could not be read again; the next reconcile tries again");
                    }
                }
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        let payload = message.payload().unwrap_or_default().to_vec();
                        let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
                        drop(message);
                        // A rebalance runs inside the poll that returned this record: its
                        // revocations must be forgotten before the record can hold an event of
                        // its own, or they would drop that hold and leave the partition paused.
                        self.forget_revoked();
                        self.take(partition, offset, key, payload, &shutdown).await?;
                    }
                    Err(error) => tracing::warn!(%error, "Kafka consumer error; polling on"),
                },
            }
        }
        self.finish()
    }

    /// Handles one record and stores its offset, or holds it for later.
    async fn take(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<String>,
        payload: Vec<u8>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), ProcessorError> {
        self.stats.records += 1;
        if self.is_paused(partition) {
            // Fetched before the pause took effect: read again after the held event.
            return Ok(());
        }
        let outcome = self
            .handle_bounded(partition, offset, key.as_deref(), &payload, shutdown)
            .await?;
        match outcome {
            Outcome::Applied { duplicate } => {
                self.retries.remove(&partition);
                if duplicate {
                    self.stats.duplicates += 1;
                    metrics::global().processor_event(metrics::Outcome::duplicate);
                } else {
                    self.stats.applied += 1;
                    metrics::global().processor_event(metrics::Outcome::applied);
                }
                self.store_offset(partition, offset)
            }
            Outcome::DeadLettered => {
                self.retries.remove(&partition);
                self.stats.dead_letters += 1;
                metrics::global().processor_event(metrics::Outcome::dead_letter);
                self.store_offset(partition, offset)
            }
            Outcome::Later { wait, why } => {
                self.stats.retries += 1;
                metrics::global().processor_event(metrics::Outcome::retry);
                let attempt = match self.retries.get(&partition) {
                    Some(retry) if retry.offset == offset => retry.attempt + 1,
                    _ => 1,
                };
                let wait = wait.unwrap_or_else(|| self.backoff(attempt));
                tracing::warn!(partition, offset, %why, ?wait, attempt, "event put back; its partition waits");
                self.hold(partition, offset, wait, attempt)
            }
        }
    }

    /// [`Processor::handle`], abandoned when shutdown was asked for and the event is still not
    /// done after the shutdown timeout (it is then read again at the next start).
    async fn handle_bounded(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&str>,
        payload: &[u8],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Outcome, ProcessorError> {
        let mut shutdown = shutdown.clone();
        let timeout = self.settings.shutdown_timeout;
        let deadline = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            outcome = self.handle(partition, offset, key, payload) => outcome,
            () = deadline => Ok(Outcome::Later {
                wait: None,
                why: "shutdown timeout reached with the event in flight".into(),
            }),
        }
    }

    /// Decodes, decides, applies and records one record.
    async fn handle(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&str>,
        payload: &[u8],
    ) -> Result<Outcome, ProcessorError> {
        if self.connections.state(Side::Outreach).1 == Some(DisconnectReason::Manual) {
            // Nothing is applied until an admin reconnects; the events wait in Kafka.
            return Ok(Outcome::Later {
                wait: Some(self.settings.retry_max),
                why: "Outreach was disconnected by an admin".into(),
            });
        }
        let event = match UserChange::from_json(payload) {
            Ok(event) => event,
            Err(error) => {
                let reason = format!("not a valid user_change.v1 event: {error}");
                self.dead_letter(partition, offset, key, payload, &reason)
                    .await?;
                return Ok(Outcome::DeadLettered);
            }
        };
        let settings = match self.store.settings().await {
            Ok(saved) => saved.unwrap_or_else(|| self.sync.clone()),
            Err(error) => {
                return Ok(Outcome::Later {
                    wait: None,
                    why: format!("reading the settings for event {}: {error}", event.event_id),
                });
            }
        };
        let scope = StateScope::of_event(&event);
        let mut attempt = 1;
        let records = loop {
            let before = match self.store.load_state(&scope).await {
                Ok(state) => state,
                Err(error) => {
                    return Ok(Outcome::Later {
                        wait: None,
                        why: format!(
                            "loading the email group of event {} ({}): {error}",
                            event.event_id,
                            event.user.email_normalized.as_deref().unwrap_or("no email")
                        ),
                    });
                }
            };
            let mut after = before.clone();
            let outreach = Replies::new(&self.outreach);
            let records =
                match apply_event(&settings, &mut after, &outreach, &event, Utc::now()).await {
                    Ok(records) => records,
                    Err(error) => {
                        return self.refused(partition, offset, key, payload, error).await;
                    }
                };
            if is_duplicate(&records) {
                tracing::debug!(event_id = %event.event_id, "already applied: skipped");
                return Ok(Outcome::Applied { duplicate: true });
            }
            let calls: u64 = records.iter().map(|r| u64::from(r.outreach_calls)).sum();
            if calls > 0 {
                self.outreach_worked();
            }
            self.stats.outreach_calls += calls;
            let applied = changes::applied_event(&before, &after, &event, records.clone());
            match self.store.record(&applied).await {
                Ok(()) => break records,
                Err(StoreError::StaleState { part, read, .. }) => {
                    self.stats.record_conflicts += 1;
                    metrics::global().record_conflict();
                    tracing::warn!(
                        event_id = %event.event_id,
                        attempt,
                        %part,
                        read_version = read,
                        outreach_calls = calls,
                        "another replica changed the state this event was decided on; deciding it again on the new state"
                    );
                    // What the calls did must be in the index before the next load, or the
                    // next decision would make them again (a second create, a repeated update);
                    // and the decisions that made them go into the log now, with it, since
                    // whatever comes of the event (recorded, put back, dead-lettered) the calls
                    // were made.
                    let answered = outreach.into_users();
                    let superseded: Vec<DecisionRecord> = records
                        .into_iter()
                        .filter(|r| r.outreach_calls > 0)
                        .map(changes::superseded)
                        .collect();
                    if let Err(error) = self
                        .store
                        .keep_superseded_calls(&answered, &superseded)
                        .await
                    {
                        return Ok(Outcome::Later {
                            wait: None,
                            why: format!(
                                "keeping what Outreach answered for event {} after its state changed: {error}",
                                event.event_id
                            ),
                        });
                    }
                    self.announce(superseded);
                    if attempt == MAX_DECISIONS {
                        return Ok(Outcome::Later {
                            wait: None,
                            why: format!(
                                "event {} was decided {attempt} times and each time another replica had changed its state first",
                                event.event_id
                            ),
                        });
                    }
                    attempt += 1;
                }
                Err(error) => {
                    return Ok(Outcome::Later {
                        wait: None,
                        why: format!("recording event {}: {error}", event.event_id),
                    });
                }
            }
        };
        self.announce(records);
        Ok(Outcome::Applied { duplicate: false })
    }

    /// Logs, counts and sends to the live feed decisions the store now holds.
    fn announce(&self, records: Vec<DecisionRecord>) {
        for record in records {
            tracing::info!(
                event_id = %record.event_id,
                action = %record.action,
                reason = %record.reason,
                outreach_user_id = ?record.outreach_user_id.map(|id| id.0),
                salesforce_user_id = ?record.salesforce_user_id.as_ref().map(|id| id.as_str().to_owned()),
                message = %record.message,
                "decision"
            );
            metrics::global().decision(record.action);
            let _ = self.decisions.send(record);
        }
    }

    /// An event Outreach or the mapping rules would not take: later, or never.
    async fn refused(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&str>,
        payload: &[u8],
        error: ApplyError,
    ) -> Result<Outcome, ProcessorError> {
        if let ApplyError::Outreach { source, .. } = &error {
            self.connections.failed(Side::Outreach, source);
            if source.is_retryable() {
                let wait = match source {
                    crate::outreach::error::OutreachError::RateLimited { retry_after, .. } => {
                        Some(*retry_after)
                    }
                    _ => None,
                };
                return Ok(Outcome::Later {
                    wait,
                    why: error.to_string(),
                });
            }
            if source.needs_reauthorization() {
                // Only an admin can fix this; the events wait in Kafka meanwhile.
                return Ok(Outcome::Later {
                    wait: Some(self.settings.retry_max),
                    why: format!("the Outreach connection needs a new authorization: {error}"),
                });
            }
        }
        let reason = error.to_string();
        self.dead_letter(partition, offset, key, payload, &reason)
            .await?;
        Ok(Outcome::DeadLettered)
    }

    async fn dead_letter(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&str>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ProcessorError> {
        tracing::warn!(partition, offset, %reason, "record dead-lettered");
        let stable_key = format!("{}:{partition}:{offset}", self.topic);
        let letter = DeadLetter {
            key: key.unwrap_or(&stable_key),
            raw: payload,
            reason,
            source: "processor",
            context: vec![
                ("topic", self.topic.clone()),
                ("partition", partition.to_string()),
                ("offset", offset.to_string()),
            ],
        };
        self.dead_letters
            .dead_letter(letter)
            .await
            .map_err(|source| ProcessorError::DeadLetter {
                context: format!(
                    "dead-lettering {} partition {partition} offset {offset}",
                    self.topic
                ),
                source: Box::new(source),
            })?;
        Ok(())
    }

    fn store_offset(&self, partition: i32, offset: i64) -> Result<(), ProcessorError> {
        offsets::store_processed(&self.consumer, &self.topic, partition, offset).map_err(|source| {
            ProcessorError::Kafka {
                context: format!(
                    "storing the offset after {} partition {partition} offset {offset}",
                    self.topic
                ),
                source: Box::new(source),
            }
        })
    }

    /// Forgets the events held on partitions a rebalance took away (it resumed them).
    fn forget_revoked(&mut self) {
        while let Ok(partitions) = self.revoked.try_recv() {
            for partition in partitions {
                self.retries.remove(&partition);
            }
        }
    }

    /// Pauses `partition` with its reading position back at `offset`, for `wait`.
    fn hold(
        &mut self,
        partition: i32,
        offset: i64,
        wait: Duration,
        attempt: u32,
    ) -> Result<(), ProcessorError> {
        self.consumer
            .pause(&self.partition_list(partition))
            .map_err(|source| ProcessorError::Kafka {
                context: format!("pausing {} partition {partition}", self.topic),
                source: Box::new(source),
            })?;
        self.retries.insert(
            partition,
            Retry {
                offset,
                attempt,
                until: Some(Instant::now() + wait),
            },
        );
        Ok(())
    }

    fn is_paused(&self, partition: i32) -> bool {
        self.retries
            .get(&partition)
            .is_some_and(|retry| retry.until.is_some())
    }

    /// Resumes every held partition whose wait is over, reading again from the held event.
    fn release_due(&mut self) -> Result<(), ProcessorError> {
        // A rebalance may have run in the poll this wait interrupted: no rewinding a partition
        // that is no longer ours.
        self.forget_revoked();
        let now = Instant::now();
        let due: Vec<(i32, Retry)> = self
            .retries
            .iter()
            .filter(|(_, retry)| retry.until.is_some_and(|until| until <= now))
            .map(|(p, retry)| (*p, retry.clone()))
            .collect();
        for (partition, retry) in due {
            self.consumer
                .resume(&self.partition_list(partition))
                .map_err(|source| ProcessorError::Kafka {
                    context: format!("resuming {} partition {partition}", self.topic),
                    source: Box::new(source),
                })?;
            if let Err(source) = self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(retry.offset),
                Duration::from_secs(10),
            ) {
                // Without the rewind the partition would skip the held event: hold it again.
                tracing::warn!(%source, partition, "cannot rewind to the held event; waiting again");
                let wait = self.backoff(retry.attempt + 1);
                self.hold(partition, retry.offset, wait, retry.attempt + 1)?;
                continue;
            }
            tracing::info!(
                partition,
                offset = retry.offset,
                attempt = retry.attempt,
                "trying the held event again"
            );
            self.retries.insert(
                partition,
                Retry {
                    until: None,
                    ..retry
                },
            );
        }
        Ok(())
    }

    /// The wait before attempt `attempt` (1-based): doubling from the minimum to the maximum.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.settings.retry_min * factor).min(self.settings.retry_max)
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        list
    }

    /// Outreach took a call: the connection works. A side an admin disconnected stays so; one
    /// that broke on its own (a token since renewed, a scope given back) is connected again.
    fn outreach_worked(&self) {
        match self.connections.state(Side::Outreach) {
            (ConnectionState::Connected, _) => {}
            (ConnectionState::Disconnected, Some(DisconnectReason::Manual)) => {}
            (ConnectionState::Disconnected, _) | (ConnectionState::NotConfigured, _) => {
                let identity = self.connections.get(Side::Outreach).identity;
                self.connections.connected(Side::Outreach, identity)
            }
            _ => self.connections.succeeded(Side::Outreach),
        }
    }

    /// Loads the whole Outreach user index into the store.
    async fn reconcile(&mut self) -> Result<(), ProcessorError> {
        let loaded = match index::load(&self.outreach, self.store.as_ref()).await {
            Ok(loaded) => loaded,
            Err(source) => {
                if let index::IndexError::Outreach(error) = &source {
                    self.connections.failed(Side::Outreach, error);
                }
                return Err(ProcessorError::Index {
                    context: "loading the Outreach user index".into(),
                    source: Box::new(source),
                });
            }
        };
        self.outreach_worked();
        self.stats.outreach_calls += u64::from(loaded.requests);
        tracing::info!(
            users = loaded.users,
            requests = loaded.requests,
            "Outreach user index loaded"
        );
        Ok(())
    }

    /// Commits the stored offsets and flushes the dead-letter producer.
    fn finish(&mut self) -> Result<(), ProcessorError> {
        match self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            // Nothing stored since the last commit.
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(source) => {
                return Err(ProcessorError::Kafka {
                    context: "committing offsets at shutdown".into(),
                    source: Box::new(source),
                });
            }
        }
        self.dead_letters
            .flush(self.settings.shutdown_timeout)
            .map_err(|source| ProcessorError::DeadLetter {
                context: "flushing dead letters at shutdown".into(),
                source: Box::new(source),
            })?;
        tracing::info!(stats = ?self.stats, "processor stopped");
        Ok(())
    }
}

/// The consumer's settings: offsets stored by the processor after each event and committed in
/// the background, reading from the earliest record when the group has no offset.
fn consumer_config(kafka: &KafkaConfig, settings: &ProcessorConfig) -> rdkafka::ClientConfig {
    let mut client = crate::kafka::client::base_config(kafka);
    client
        .set("group.id", &settings.group_id)
        .set(
            "statistics.interval.ms",
            LAG_REFRESH.as_millis().to_string(),
        )
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    client
}

/// Whether the decisions say the event was already applied, so there is nothing to record.
/// No decision at all is not a duplicate: the event's new state must still be recorded.
fn is_duplicate(records: &[DecisionRecord]) -> bool {
    !records.is_empty()
        && records
            .iter()
            .all(|r| r.action == Action::Skip && r.reason == Reason::DuplicateEvent)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: Action, reason: Reason) -> DecisionRecord {
        DecisionRecord {
            event_id: "sf:org:user:1".into(),
            at: Utc::now(),
            action,
            reason,
            email: None,
            outreach_user_id: None,
            salesforce_user_id: None,
            previous_salesforce_user_id: None,
            message: String::new(),
            outreach_calls: 0,
            actor: None,
        }
    }

    #[test]
    fn only_a_duplicate_skip_makes_an_event_a_duplicate() {
        assert!(is_duplicate(&[record(
            Action::Skip,
            Reason::DuplicateEvent
        )]));
        assert!(
            !is_duplicate(&[]),
            "no decision: the new state is still recorded"
        );
        assert!(!is_duplicate(&[record(Action::Skip, Reason::StaleEvent)]));
        assert!(!is_duplicate(&[
            record(Action::Skip, Reason::DuplicateEvent),
            record(Action::Conflict, Reason::DuplicateEvent),
        ]));
    }
}
