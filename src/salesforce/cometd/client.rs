//! The long-polling Streaming API client.
//!
//! One [`CometdClient`] holds one Bayeux session for one channel. The caller drives it:
//!
//! ```text
//! loop {
//!     match client.poll().await {
//!         Ok(Poll::Events(batch)) => for each delivered event {
//!             normalize + produce to Kafka; then client.acknowledge(replay_id)
//!             and persist client.replay_map() as the checkpoint
//!         }
//!         Ok(Poll::ReplayRejected(r)) => if r.resync_needed { run the REST resync }
//!         Err(e) if e.disconnect_reason().is_some() => stop and report it
//!         Err(_) => back off, then poll again (the session state is kept)
//!     }
//! }
//! ```
//!
//! What it does for the caller, each rule tied to a failure seen in the public clients
//! (docs/salesforce.md, "Failures seen in other clients", named here in italics) and to the
//! protocol's rules (docs/salesforce.md, "CometD: messages, replay, timeouts, errors"):
//!
//! - **The replay map is the caller's acknowledged position.** It starts from the stored
//!   checkpoint and moves only on [`CometdClient::acknowledge`], never on delivery, so a
//!   resubscribe after any failure resumes after the last event the caller *handled*, not
//!   from the original id (*resubscribing from the original position*). The map always holds
//!   the channel: no path sends an empty map (*empty replay map after re-authentication*).
//! - **`401::Authentication invalid`** (on connect, or as a refused handshake's
//!   `failureReason`): a new session from the [`TokenSource`], a new handshake, a resubscribe
//!   with the map — the Bayeux session is tied to the token.
//! - **`403::Unknown client`** (the server dropped the session: the 40 s reconnect deadline,
//!   a network drop; *unknown client after an hour*): handshake and resubscribe.
//!   Subscriptions do not survive a handshake (*lost subscriptions*), so a handshake always
//!   forces a subscribe before the next connect.
//! - **A rejected replay id** (`400::The replayId {…} you provided was invalid`): never
//!   silent (*invalid replay id, silently*). The [`ReplayPolicy`] decides: `resync` and
//!   `latest` resubscribe from the tip (`-1`) and report [`Poll::ReplayRejected`] (with
//!   `resync_needed` for `resync`), `fail` returns [`CometdError::ReplayRejected`].
//! - **Recovery is bounded.** Recoveries that do not reach a successful connect are counted;
//!   past [`CometdConfig::max_recoveries`] the client stops with
//!   [`CometdError::RecoveryExhausted`] instead of looping (*endless reconnect loop*).
//! - **No periodic re-handshake** (*periodic re-handshakes*): a handshake happens only at the
//!   start and when the server asks for one.
//! - **Timeouts**: a connect's HTTP timeout is the server's hold (its `advice.timeout`,
//!   110 s by default) plus [`CometdConfig::network_delay`], so a quiet channel is never taken
//!   for a dead one; the next connect follows each response at once, well inside the 40 s
//!   reconnect deadline, as long as the caller handles a batch in less than that. If it does
//!   not, the server forgets the client and the `403` path recovers without loss.
//! - **Cookies** are kept (reqwest's cookie store): Salesforce routes a session by its
//!   `BAYEUX_BROWSER` cookie and refuses a connect without it.
//! - **Schemas by id.** Each event is converted with its own writer schema, fetched from the
//!   REST event schema resource (`/services/data/vXX.X/event/eventSchema/{id}`) and cached by
//!   id only (docs/salesforce.md, "Pub/Sub: schemas"; *decoding with the wrong schema*), so a
//!   field added mid-stream changes nothing for older events.
//! - **One bad event does not stop the stream** (*one unreadable event stopped the stream*):
//!   it is delivered as [`Delivered::Unreadable`] with its replay id, to be dead-lettered and
//!   acknowledged.
//!
//! Every answer is read up to a cap (`endpoint::body`): [`STREAM_BATCH_CAP`] for the Bayeux
//! exchanges, [`EVENT_SCHEMA_CAP`] for a schema; a larger one is refused as
//! [`CometdError::TooLarge`] or a schema error.
//!
//! Secrets: the access token is sent only in the `Authorization` header; no message, error or
//! log line here contains it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

use super::message::{CometdParseError, Message, Refusal, parse_messages};
use super::payload::{CdcEvent, WriterSchema, envelope, to_cdc_event};
use super::{REPLAY_FROM_TIP, USER_CHANGE_CHANNEL};
use crate::connection::{ConnectionFailure, Verdict};
use crate::endpoint::body::{
    BodyError, EVENT_SCHEMA_CAP, STREAM_BATCH_CAP, read_capped, read_capped_text,
};
use crate::metrics::Reconnect;
use crate::salesforce::auth::{DisconnectReason, SalesforceAuthError, SalesforceSession};
use crate::salesforce::replay::ReplayPolicy;
pub use crate::salesforce::rest::CredentialsTokenSource;
use crate::salesforce::rest::TokenSource as RestTokens;

/// Where sessions come from. The client asks once at the start and again after the server
/// refused the token; `refused` tells the source not to hand back the one it cached.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync {
    async fn session(&self, refused: bool) -> Result<SalesforceSession, SalesforceAuthError>;
}

/// The subscriber's one token holder serves the CometD client too: a refused token is
/// replaced once for every client that shares it.
#[async_trait::async_trait]
impl TokenSource for CredentialsTokenSource {
    async fn session(&self, refused: bool) -> Result<SalesforceSession, SalesforceAuthError> {
        let current = CredentialsTokenSource::session(self).await?;
        if !refused {
            return Ok(current);
        }
        RestTokens::renew(self, &current.access_token).await?;
        CredentialsTokenSource::session(self).await
    }
}

#[async_trait::async_trait]
impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    async fn session(&self, refused: bool) -> Result<SalesforceSession, SalesforceAuthError> {
        T::session(self, refused).await
    }
}

/// How the client is set up.
#[derive(Debug, Clone)]
pub struct CometdConfig {
    /// The Streaming API version in the URL, `61.0`; 37.0 or later (docs/salesforce.md,
    /// "CometD: messages, replay, timeouts, errors").
    pub api_version: String,
    /// The channel, normally [`USER_CHANGE_CHANNEL`].
    pub channel: String,
    /// Added to the server's hold time for a connect's HTTP timeout, and the timeout of every
    /// other request (15 s by default, the network delay public CometD clients allow for).
    pub network_delay: Duration,
    /// The hold time assumed until the server advises one (110 s: docs/salesforce.md,
    /// "CometD: messages, replay, timeouts, errors").
    pub default_hold: Duration,
    /// What to do when the stored replay id is refused (the subscriber's `replay_policy`).
    pub replay_policy: ReplayPolicy,
    /// Recoveries (new token, handshake, resubscribe) in a row without a successful connect
    /// before the client gives up.
    pub max_recoveries: u32,
}

impl CometdConfig {
    pub fn new(api_version: impl Into<String>, replay_policy: ReplayPolicy) -> Self {
        CometdConfig {
            api_version: api_version.into(),
            channel: USER_CHANGE_CHANNEL.to_owned(),
            network_delay: Duration::from_secs(15),
            default_hold: Duration::from_secs(110),
            replay_policy,
            max_recoveries: 4,
        }
    }
}

/// One thing a connect delivered.
// Almost every delivery is an event; boxing it would cost an allocation each to shrink the
// rare unreadable case.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    Event(CdcEvent),
    /// A data message that could not be converted: dead-letter it, then acknowledge its
    /// replay id (when it has one) like any handled event.
    Unreadable(UnreadableEvent),
}

impl Delivered {
    /// The replay id to acknowledge once this is handled.
    pub fn replay_id(&self) -> Option<i64> {
        match self {
            Delivered::Event(event) => Some(event.replay_id),
            Delivered::Unreadable(bad) => bad.replay_id,
        }
    }
}

/// A data message the client could not read, with what it could tell about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableEvent {
    pub channel: String,
    pub replay_id: Option<i64>,
    pub schema_id: Option<String>,
    /// What is wrong, naming the field.
    pub error: String,
    /// The message's `data` as received, for the dead-letter record.
    pub raw: String,
}

/// The stored replay id was refused and the policy let the client go on from the tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRejected {
    pub channel: String,
    /// The id the subscribe sent.
    pub replay_id: i64,
    /// Salesforce's error, as sent.
    pub error: String,
    pub policy: ReplayPolicy,
    /// The caller must resync every user through REST (policy `resync`).
    pub resync_needed: bool,
}

/// The outcome of one [`CometdClient::poll`].
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// What one connect delivered, in replay order; empty when the hold passed quietly.
    Events(Vec<Delivered>),
    /// The replay id was refused; the client is now subscribed from the tip.
    ReplayRejected(ReplayRejected),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub sessions_obtained: u64,
    pub handshakes: u64,
    pub subscribes: u64,
    pub connects: u64,
    /// Token renewals after `401::Authentication invalid`.
    pub reauthentications: u64,
    /// Handshakes after `403::Unknown client`.
    pub rehandshakes: u64,
    pub schemas_fetched: u64,
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum CometdError {
    #[error(transparent)]
    Token(#[from] SalesforceAuthError),
    #[error("CometD {operation}: network error: {source}")]
    Network {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("CometD {operation}: HTTP {status}: {body}")]
    Status {
        operation: &'static str,
        status: u16,
        body: String,
    },
    /// An answer over its cap (`endpoint::body`): the same request would bring it again.
    #[error("CometD {operation}: {detail}")]
    TooLarge {
        operation: &'static str,
        detail: String,
    },
    #[error("CometD {operation}: unreadable response: {source}")]
    Parse {
        operation: &'static str,
        #[source]
        source: CometdParseError,
    },
    #[error("CometD {operation}: the response has no {channel} reply")]
    NoReply {
        operation: &'static str,
        channel: &'static str,
    },
    #[error("CometD {operation} refused: {error}")]
    Refused {
        operation: &'static str,
        error: String,
    },
    /// A delivery or connection limit, or an overloaded server: back off, then poll again.
    #[error("CometD {operation} throttled: {error}")]
    Throttled {
        operation: &'static str,
        error: String,
    },
    /// A `403` other than Unknown client or a limit: a missing permission (View All Users).
    #[error("CometD {operation} denied: {error}")]
    Denied {
        operation: &'static str,
        error: String,
    },
    #[error("replay id {} for {} refused (policy {}): {}", .0.replay_id, .0.channel, .0.policy.as_str(), .0.error)]
    ReplayRejected(ReplayRejected),
    #[error("the server does not offer the replay extension; durable replay is impossible")]
    ReplayUnsupported,
    #[error("gave up after {attempts} recoveries without a successful connect; last: {last}")]
    RecoveryExhausted { attempts: u32, last: String },
    #[error("writer schema {schema_id}: {detail}")]
    Schema { schema_id: String, detail: String },
}

impl CometdError {
    /// The reason to disconnect with, or `None` when backing off and polling again may help.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match self {
            CometdError::Token(error) => error.disconnect_reason(),
            CometdError::Network { .. }
            | CometdError::Parse { .. }
            | CometdError::NoReply { .. }
            | CometdError::Throttled { .. } => None,
            CometdError::Status { status, .. } => {
                (*status != 429 && *status < 500).then_some(DisconnectReason::Other)
            }
            CometdError::Denied { .. } => Some(DisconnectReason::PermissionsChanged),
            CometdError::RecoveryExhausted { .. } => Some(DisconnectReason::CredentialsChanged),
            CometdError::Refused { .. }
            | CometdError::TooLarge { .. }
            | CometdError::ReplayRejected(_)
            | CometdError::ReplayUnsupported
            | CometdError::Schema { .. } => Some(DisconnectReason::Other),
        }
    }
}

/// The verdict is the reason above: a CometD failure either disconnects or is backed off from.
impl ConnectionFailure for CometdError {
    fn verdict(&self) -> Verdict {
        Verdict::from_reason(self.disconnect_reason())
    }
}

/// The client sets up a new session or subscription by itself: counted as a reconnect.
fn reconnecting(reason: Reconnect) {
    crate::metrics::global().reconnect(crate::metrics::Link::salesforce, reason);
}

/// What one step of the loop came to.
enum Step {
    Done(Poll),
    /// Something was reset (token, handshake, subscription); go round again.
    Recover(String),
}

/// The Streaming API client for one channel.
pub struct CometdClient<T: TokenSource> {
    http: reqwest::Client,
    config: CometdConfig,
    tokens: T,
    session: Option<SalesforceSession>,
    token_refused: bool,
    client_id: Option<String>,
    subscribed: bool,
    /// channel → the replay id to resume after: the caller's acknowledged position.
    replay: BTreeMap<String, i64>,
    /// A rejection already handled by the policy, reported once the new subscribe succeeds.
    rejected: Option<ReplayRejected>,
    schemas: HashMap<String, Arc<WriterSchema>>,
    hold: Duration,
    next_id: u64,
    stats: ClientStats,
}

impl<T: TokenSource> fmt::Debug for CometdClient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CometdClient")
            .field("channel", &self.config.channel)
            .field("client_id", &self.client_id)
            .field("subscribed", &self.subscribed)
            .field("replay", &self.replay)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: TokenSource> CometdClient<T> {
    /// A client that will resume after `replay_from`: a stored replay id, or
    /// [`REPLAY_FROM_TIP`](super::REPLAY_FROM_TIP) / [`REPLAY_FROM_EARLIEST`](super::REPLAY_FROM_EARLIEST).
    /// Nothing is sent until the first [`poll`](Self::poll).
    pub fn new(config: CometdConfig, tokens: T, replay_from: i64) -> Result<Self, CometdError> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .map_err(|source| CometdError::Network {
                operation: "setup",
                source,
            })?;
        let replay = BTreeMap::from([(config.channel.clone(), replay_from)]);
        Ok(CometdClient {
            http,
            hold: config.default_hold,
            config,
            tokens,
            session: None,
            token_refused: false,
            client_id: None,
            subscribed: false,
            replay,
            rejected: None,
            schemas: HashMap::new(),
            next_id: 0,
            stats: ClientStats::default(),
        })
    }

    /// The replay map to persist as the checkpoint: channel → last acknowledged replay id.
    pub fn replay_map(&self) -> &BTreeMap<String, i64> {
        &self.replay
    }

    /// The position the client resumes after on its channel.
    pub fn resume_after(&self) -> i64 {
        self.replay[&self.config.channel]
    }

    /// Records that the event with `replay_id` has been handled: a resubscribe resumes after
    /// it. Older ids than the one recorded are ignored.
    pub fn acknowledge(&mut self, replay_id: i64) {
        let current = self
            .replay
            .entry(self.config.channel.clone())
            .or_insert(replay_id);
        if *current < 0 || replay_id > *current {
            *current = replay_id;
        }
    }

    /// Makes the server deliver again everything after the last acknowledged event, for a
    /// caller that could not handle a batch: the next poll handshakes and resubscribes.
    pub fn restart_from_acknowledged(&mut self) {
        self.client_id = None;
        self.subscribed = false;
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The Bayeux client id of the current session, if any.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// Waits for the next events (one long-poll), recovering from what can be recovered.
    pub async fn poll(&mut self) -> Result<Poll, CometdError> {
        self.run_steps(true).await
    }

    /// Handshakes and subscribes without waiting for events, so the subscription's position
    /// is held by the server from now on (the subscriber's initial load reads users through
    /// REST after this, and the changes made meanwhile are delivered by the next poll).
    pub async fn open(&mut self) -> Result<Poll, CometdError> {
        self.run_steps(false).await
    }

    async fn run_steps(&mut self, connect: bool) -> Result<Poll, CometdError> {
        let mut recoveries = 0;
        loop {
            match self.step(connect).await? {
                Step::Done(poll) => return Ok(poll),
                Step::Recover(why) => {
                    recoveries += 1;
                    if recoveries > self.config.max_recoveries {
                        return Err(CometdError::RecoveryExhausted {
                            attempts: recoveries - 1,
                            last: why,
                        });
                    }
                    tracing::info!(channel = %self.config.channel, reason = %why, "CometD: recovering");
                }
            }
        }
    }

    /// Whether Salesforce still resumes this channel after `replay_id`: a handshake and a
    /// subscribe from it (a rejected replay id is refused by the subscribe), then a disconnect.
    /// `Ok(false)` when the replay id is refused; no events are read.
    pub async fn can_resume_after(
        api_version: &str,
        tokens: T,
        replay_id: i64,
        wait: Duration,
    ) -> Result<bool, CometdError> {
        let config = CometdConfig::new(api_version.trim_start_matches('v'), ReplayPolicy::Fail);
        let mut client = CometdClient::new(config, tokens, replay_id)?;
        let opened = match tokio::time::timeout(wait, client.open()).await {
            Ok(opened) => opened,
            // No refusal within the wait: the subscription stands.
            Err(_) => return Ok(true),
        };
        let answer = match opened {
            Ok(_) => Ok(true),
            Err(CometdError::ReplayRejected(_)) => Ok(false),
            Err(error) => Err(error),
        };
        let _ = client.disconnect().await;
        answer
    }

    /// Ends the Bayeux session (at shutdown). The replay map stays.
    pub async fn disconnect(&mut self) -> Result<(), CometdError> {
        let Some(client_id) = self.client_id.take() else {
            return Ok(());
        };
        self.subscribed = false;
        let id = self.message_id();
        let request = json!([{"channel": "/meta/disconnect", "clientId": client_id, "id": id}]);
        self.send("disconnect", &request, self.config.network_delay)
            .await
            .map(|_| ())
    }

    async fn step(&mut self, connect: bool) -> Result<Step, CometdError> {
        if self.session.is_none() || self.token_refused {
            let refused = self.token_refused;
            let session = self.tokens.session(refused).await?;
            self.stats.sessions_obtained += 1;
            if refused {
                self.stats.reauthentications += 1;
            }
            self.session = Some(session);
            self.token_refused = false;
        }
        if self.client_id.is_none()
            && let Some(recover) = self.handshake().await?
        {
            return Ok(recover);
        }
        if !self.subscribed
            && let Some(recover) = self.subscribe().await?
        {
            return Ok(recover);
        }
        if let Some(rejected) = self.rejected.take() {
            return Ok(Step::Done(Poll::ReplayRejected(rejected)));
        }
        if !connect {
            return Ok(Step::Done(Poll::Events(Vec::new())));
        }
        self.connect().await
    }

    /// `None` when handshaken; otherwise what to recover.
    async fn handshake(&mut self) -> Result<Option<Step>, CometdError> {
        let id = self.message_id();
        let request = json!([{
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "ext": {"replay": true},
            "id": id,
        }]);
        let replies = self
            .send("handshake", &request, self.config.network_delay)
            .await?;
        let reply = meta_reply(&replies, "handshake", "/meta/handshake")?;
        match reply.refusal() {
            None => {}
            Some(Refusal::AuthenticationInvalid { error }) => {
                self.token_refused = true;
                return Ok(Some(Step::Recover(format!("handshake: {error}"))));
            }
            Some(Refusal::Denied { error }) => {
                return Err(CometdError::Denied {
                    operation: "handshake",
                    error,
                });
            }
            Some(Refusal::Throttled { error }) => {
                return Err(CometdError::Throttled {
                    operation: "handshake",
                    error,
                });
            }
            Some(other) => {
                return Err(CometdError::Refused {
                    operation: "handshake",
                    error: other.error().to_owned(),
                });
            }
        }
        let replay_offered = reply
            .ext
            .as_ref()
            .and_then(|ext| ext.get("replay"))
            .and_then(Value::as_bool)
            == Some(true);
        if !replay_offered {
            return Err(CometdError::ReplayUnsupported);
        }
        let Some(client_id) = reply.client_id.clone() else {
            return Err(CometdError::Refused {
                operation: "handshake",
                error: "the successful reply has no clientId".into(),
            });
        };
        self.note_advice(reply);
        self.stats.handshakes += 1;
        self.client_id = Some(client_id);
        self.subscribed = false;
        Ok(None)
    }

    async fn subscribe(&mut self) -> Result<Option<Step>, CometdError> {
        let id = self.message_id();
        let replay: serde_json::Map<String, Value> = self
            .replay
            .iter()
            .map(|(channel, id)| (channel.clone(), Value::from(*id)))
            .collect();
        let request = json!([{
            "channel": "/meta/subscribe",
            "clientId": self.client_id,
            "subscription": self.config.channel,
            "ext": {"replay": replay},
            "id": id,
        }]);
        let replies = self
            .send("subscribe", &request, self.config.network_delay)
            .await?;
        let reply = meta_reply(&replies, "subscribe", "/meta/subscribe")?;
        match reply.refusal() {
            None => {
                self.stats.subscribes += 1;
                self.subscribed = true;
                Ok(None)
            }
            Some(refusal) => self.recover("subscribe", refusal).map(Some),
        }
    }

    async fn connect(&mut self) -> Result<Step, CometdError> {
        let id = self.message_id();
        let request = json!([{
            "channel": "/meta/connect",
            "clientId": self.client_id,
            "connectionType": "long-polling",
            "id": id,
        }]);
        let timeout = self.hold + self.config.network_delay;
        let replies = self.send("connect", &request, timeout).await?;
        self.stats.connects += 1;
        let mut batch = Vec::new();
        for message in replies.iter().filter(|m| !m.is_meta()) {
            if message.channel != self.config.channel {
                tracing::warn!(channel = %message.channel, "CometD: a message on a channel not subscribed; ignored");
                continue;
            }
            match self.read_event(message).await {
                Ok(delivered) => batch.push(delivered),
                Err(error) => {
                    // Not converted, not acknowledged: a new session delivers it again.
                    self.restart_from_acknowledged();
                    return Err(error);
                }
            }
        }
        let reply = meta_reply(&replies, "connect", "/meta/connect")?;
        match reply.refusal() {
            None => {
                self.note_advice(reply);
                Ok(Step::Done(Poll::Events(batch)))
            }
            Some(refusal) => {
                let step = self.recover("connect", refusal)?;
                if batch.is_empty() {
                    Ok(step)
                } else {
                    // Hand over what arrived; the next poll does the recovery set up above.
                    Ok(Step::Done(Poll::Events(batch)))
                }
            }
        }
    }

    /// Sets up the recovery a refusal asks for, or fails.
    fn recover(&mut self, operation: &'static str, refusal: Refusal) -> Result<Step, CometdError> {
        match refusal {
            Refusal::AuthenticationInvalid { error } => {
                reconnecting(Reconnect::token_refused);
                self.token_refused = true;
                self.client_id = None;
                self.subscribed = false;
                Ok(Step::Recover(format!("{operation}: {error}")))
            }
            Refusal::UnknownClient { error } => {
                reconnecting(Reconnect::session_lost);
                self.stats.rehandshakes += 1;
                self.client_id = None;
                self.subscribed = false;
                Ok(Step::Recover(format!("{operation}: {error}")))
            }
            Refusal::ReplayRejected { error, .. } => {
                let channel = self.config.channel.clone();
                let sent = self.resume_after();
                let policy = self.config.replay_policy;
                let rejected = ReplayRejected {
                    channel: channel.clone(),
                    replay_id: sent,
                    error,
                    policy,
                    resync_needed: policy == ReplayPolicy::Resync,
                };
                if policy == ReplayPolicy::Fail || sent == REPLAY_FROM_TIP {
                    return Err(CometdError::ReplayRejected(rejected));
                }
                tracing::warn!(%channel, replay_id = sent, policy = policy.as_str(), "CometD: replay id refused; resubscribing from the tip");
                reconnecting(Reconnect::replay_unusable);
                self.replay.insert(channel, REPLAY_FROM_TIP);
                self.subscribed = false;
                let why = format!("{operation}: replay id {sent} refused");
                self.rejected = Some(rejected);
                Ok(Step::Recover(why))
            }
            Refusal::Throttled { error } => Err(CometdError::Throttled { operation, error }),
            Refusal::Denied { error } => Err(CometdError::Denied { operation, error }),
            Refusal::Failed { error } => Err(CometdError::Refused { operation, error }),
        }
    }

    async fn read_event(&mut self, message: &Message) -> Result<Delivered, CometdError> {
        let unreadable = |replay_id, schema_id: Option<&str>, error: String| {
            Delivered::Unreadable(UnreadableEvent {
                channel: message.channel.clone(),
                replay_id,
                schema_id: schema_id.map(str::to_owned),
                error,
                raw: message
                    .data
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default(),
            })
        };
        let envelope = match envelope(message) {
            Ok(envelope) => envelope,
            Err(error) => {
                return Ok(unreadable(
                    unreadable_replay_id(message),
                    None,
                    error.to_string(),
                ));
            }
        };
        let (replay_id, schema_id) = (envelope.replay_id, envelope.schema_id.to_owned());
        let schema = match self.schema(&schema_id).await {
            Ok(schema) => schema,
            Err(CometdError::Schema { detail, .. }) => {
                return Ok(unreadable(Some(replay_id), Some(&schema_id), detail));
            }
            Err(other) => return Err(other),
        };
        Ok(match to_cdc_event(message, &schema) {
            Ok(event) => Delivered::Event(event),
            Err(error) => unreadable(Some(replay_id), Some(&schema_id), error.to_string()),
        })
    }

    /// The writer schema `schema_id`, from the cache or the REST event schema resource.
    async fn schema(&mut self, schema_id: &str) -> Result<Arc<WriterSchema>, CometdError> {
        if let Some(schema) = self.schemas.get(schema_id) {
            return Ok(schema.clone());
        }
        let operation = "schema fetch";
        let mut renewed = false;
        let body = loop {
            let session = self.current_session()?;
            let url = format!(
                "{}/services/data/v{}/event/eventSchema/{}",
                session.instance_url,
                self.config.api_version,
                url_segment(schema_id)
            );
            let response = self
                .http
                .get(url)
                .query(&[("payloadFormat", "COMPACT")])
                .header(
                    AUTHORIZATION,
                    format!("Bearer {}", session.access_token.expose()),
                )
                .timeout(self.config.network_delay)
                .send()
                .await
                .map_err(|source| CometdError::Network { operation, source })?;
            let status = response.status();
            let text = read_capped_text(response, EVENT_SCHEMA_CAP)
                .await
                .map_err(|error| match error {
                    BodyError::Network { source, .. } => CometdError::Network { operation, source },
                    too_large @ BodyError::TooLarge { .. } => CometdError::Schema {
                        schema_id: schema_id.to_owned(),
                        detail: too_large.to_string(),
                    },
                })?;
            match status {
                StatusCode::OK => break text,
                StatusCode::UNAUTHORIZED if !renewed => {
                    renewed = true;
                    self.session = Some(self.tokens.session(true).await?);
                    self.stats.sessions_obtained += 1;
                    self.stats.reauthentications += 1;
                }
                StatusCode::NOT_FOUND => {
                    return Err(CometdError::Schema {
                        schema_id: schema_id.to_owned(),
                        detail: "no such schema (HTTP 404)".into(),
                    });
                }
                other => {
                    return Err(CometdError::Status {
                        operation,
                        status: other.as_u16(),
                        body: excerpt(&text),
                    });
                }
            }
        };
        let schema =
            WriterSchema::parse(schema_id, &body).map_err(|error| CometdError::Schema {
                schema_id: schema_id.to_owned(),
                detail: error.to_string(),
            })?;
        self.stats.schemas_fetched += 1;
        let schema = Arc::new(schema);
        self.schemas.insert(schema_id.to_owned(), schema.clone());
        Ok(schema)
    }

    fn current_session(&self) -> Result<SalesforceSession, CometdError> {
        self.session.clone().ok_or(CometdError::Refused {
            operation: "request",
            error: "no session".into(),
        })
    }

    /// POSTs one Bayeux request and parses the reply.
    async fn send(
        &mut self,
        operation: &'static str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Vec<Message>, CometdError> {
        let session = self.current_session()?;
        let url = format!(
            "{}/cometd/{}",
            session.instance_url,
            url_segment(&self.config.api_version)
        );
        let response = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                AUTHORIZATION,
                format!("Bearer {}", session.access_token.expose()),
            )
            .body(body.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| CometdError::Network { operation, source })?;
        let status = response.status();
        let bytes = read_capped(response, STREAM_BATCH_CAP)
            .await
            .map_err(|error| match error {
                BodyError::Network { source, .. } => CometdError::Network { operation, source },
                too_large @ BodyError::TooLarge { .. } => CometdError::TooLarge {
                    operation,
                    detail: too_large.to_string(),
                },
            })?;
        if status != StatusCode::OK {
            return Err(CometdError::Status {
                operation,
                status: status.as_u16(),
                body: excerpt(&String::from_utf8_lossy(&bytes)),
            });
        }
        parse_messages(&bytes).map_err(|source| CometdError::Parse { operation, source })
    }

    fn note_advice(&mut self, reply: &Message) {
        if let Some(hold) = reply
            .advice
            .as_ref()
            .and_then(|a| a.timeout)
            .and_then(advised_hold)
        {
            self.hold = hold;
        }
    }

    fn message_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }
}

/// The longest hold an `advice.timeout` can set: ten minutes, five times what Salesforce
/// advises (110 s). A connect's HTTP timeout is the hold plus the network delay, so a larger
/// advice would leave a dead connection unnoticed for as long (docs/security.md, "Provider
/// input").
pub const MAX_ADVISED_HOLD: Duration = Duration::from_secs(600);

/// The hold an `advice.timeout` (milliseconds) sets: at most [`MAX_ADVISED_HOLD`]; a negative
/// one is ignored.
pub fn advised_hold(timeout_ms: i64) -> Option<Duration> {
    let ms = u64::try_from(timeout_ms).ok()?;
    Some(Duration::from_millis(ms).min(MAX_ADVISED_HOLD))
}

/// The reply on `channel` in a response.
fn meta_reply<'m>(
    replies: &'m [Message],
    operation: &'static str,
    channel: &'static str,
) -> Result<&'m Message, CometdError> {
    replies
        .iter()
        .find(|m| m.channel == channel)
        .ok_or(CometdError::NoReply { operation, channel })
}

/// The replay id of a data message whose envelope could not be read, if it has a usable one. A
/// negative id is a subscribe preset (-1 the tip, -2 the earliest), not a position: the event
/// is handled as one without a replay id, so it can never become the checkpoint.
fn unreadable_replay_id(message: &Message) -> Option<i64> {
    message
        .data
        .as_ref()
        .and_then(|d| d.get("event")?.get("replayId")?.as_i64())
        .filter(|id| *id >= 0)
}

/// A path segment made safe: anything but letters, digits, `.`, `-`, `_` is dropped.
fn url_segment(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect()
}

/// The start of a body, for an error message.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &body[..end]),
        None => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::salesforce_id::SalesforceId;
    use crate::salesforce::auth::Secret;

    /// One session on a local server.
    struct LocalSession(String);

    #[async_trait::async_trait]
    impl TokenSource for LocalSession {
        async fn session(&self, _: bool) -> Result<SalesforceSession, SalesforceAuthError> {
            Ok(SalesforceSession {
                access_token: Secret::new("bearer-of-acme"),
                instance_url: self.0.clone(),
                identity_url: format!("{}/id/00D000000000001/005000000000001", self.0),
                org_id: SalesforceId::parse("00D000000000001").unwrap(),
                user_id: SalesforceId::parse("005000000000001").unwrap(),
            })
        }
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_naming_the_endpoint() {
        let address =
            crate::endpoint::test_support::oversized(StatusCode::OK, STREAM_BATCH_CAP + 1).await;
        let instance = format!("http://{address}");
        let mut client = CometdClient::new(
            CometdConfig::new("62.0", ReplayPolicy::Resync),
            LocalSession(instance.clone()),
            REPLAY_FROM_TIP,
        )
        .unwrap();
        let refused = client.open().await.unwrap_err();
        let message = refused.to_string();
        assert!(
            matches!(refused, CometdError::TooLarge { .. })
                && message.contains(&format!("{instance}/cometd/62.0"))
                && message.contains(&format!("larger than {STREAM_BATCH_CAP} bytes")),
            "{message}"
        );
        assert_eq!(refused.disconnect_reason(), Some(DisconnectReason::Other));
    }

    #[test]
    fn an_unreadable_event_with_a_preset_for_a_replay_id_has_none() {
        let message = |replay_id: Value| {
            let body = json!([{"channel": USER_CHANGE_CHANNEL,
                "data": {"schema": "s", "event": {"replayId": replay_id}}}]);
            parse_messages(body.to_string().as_bytes())
                .unwrap()
                .remove(0)
        };
        assert_eq!(
            unreadable_replay_id(&message(json!(18_098_301))),
            Some(18_098_301)
        );
        assert_eq!(unreadable_replay_id(&message(json!(0))), Some(0));
        for preset in [json!(-1), json!(-2), json!(i64::MIN), json!("7")] {
            assert_eq!(
                unreadable_replay_id(&message(preset.clone())),
                None,
                "{preset}"
            );
        }
    }

    #[test]
    fn an_advised_hold_is_at_most_the_bound_and_never_negative() {
        assert_eq!(advised_hold(110_000), Some(Duration::from_secs(110)));
        assert_eq!(advised_hold(0), Some(Duration::ZERO));
        assert_eq!(advised_hold(600_001), Some(MAX_ADVISED_HOLD));
        assert_eq!(advised_hold(i64::MAX), Some(MAX_ADVISED_HOLD));
        assert_eq!(advised_hold(-1), None);
        assert_eq!(advised_hold(i64::MIN), None);
    }
}
