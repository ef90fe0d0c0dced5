//! Configuration: a TOML file, then `USERSYNC_…` environment variables, over the defaults.
//!
//! The environment wins so that a container can change one key without a file. A key's path
//! becomes its variable by upper-casing it and joining the sections with `__`:
//! `sync.user_mapping.inbound_create` is `USERSYNC_SYNC__USER_MAPPING__INBOUND_CREATE`.
//! Only variables naming a known section are read, so `USERSYNC_SECRET_KEY` and friends do not
//! trip the unknown-key check. Unknown keys inside a section are refused (a typo must not pass
//! silently), and the sync settings are validated with the rules of `decisions.md`; every error
//! names the key, where it came from, or the rule it broke.
//!
//! A plain `http://` endpoint for Salesforce, Outreach or their OAuth hosts would carry bearer
//! tokens and client secrets in the clear, so one is refused at load unless its host is this
//! machine (a local simulator) or `allow_insecure_endpoints` is true, and then each is logged as
//! a warning (docs/security.md).
//!
//! `docs/settings.md` lists every key with its default and variable.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::settings::{SettingsError, SyncSettings};

pub mod duration;

/// The top-level keys the environment may set: every section, and the one key outside them.
const SECTIONS: [&str; 11] = [
    "allow_insecure_endpoints",
    "sync",
    "store",
    "outreach",
    "salesforce",
    "subscriber",
    "kafka",
    "processor",
    "admin",
    "run",
    "secrets",
];

/// The prefix of every variable.
pub const ENV_PREFIX: &str = "USERSYNC_";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Accept plain `http://` endpoints on other hosts than this machine (a test service on a
    /// private network), each logged as a warning at load.
    pub allow_insecure_endpoints: bool,
    pub sync: SyncSettings,
    pub store: StoreConfig,
    pub outreach: OutreachConfig,
    pub salesforce: SalesforceConfig,
    pub subscriber: SubscriberConfig,
    pub kafka: KafkaConfig,
    pub processor: ProcessorConfig,
    pub admin: AdminConfig,
    pub run: RunConfig,
    pub secrets: SecretsConfig,
}

/// Where the key that seals stored credentials comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// A file holding the key (base64 of 32 bytes); `USERSYNC_SECRET_KEY` wins when set.
    pub key_file: String,
}

/// Several subscriber instances on one org: which one streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberConfig {
    /// How long the lease of the streaming instance lasts without a renewal (PostgreSQL store):
    /// a standby takes over this long after the active instance stopped renewing.
    #[serde(rename = "lease_seconds", with = "duration::seconds")]
    pub lease: Duration,
    /// This instance's name in the lease and the status; empty: `<hostname>-<pid>`.
    pub instance_id: String,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            lease: Duration::from_secs(15),
            instance_id: String::new(),
        }
    }
}

impl SubscriberConfig {
    /// `instance_id`, or this process's `<hostname>-<pid>`: two processes never share it, and
    /// a container that restarts with the same hostname and pid takes its own lease back at
    /// once.
    pub fn instance(&self) -> String {
        if !self.instance_id.trim().is_empty() {
            return self.instance_id.trim().to_owned();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "usersync".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

/// `usersync run`: all roles in one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// How long SIGTERM waits for every role together; a role still busy then is abandoned.
    #[serde(rename = "shutdown_timeout_seconds", with = "duration::seconds")]
    pub shutdown_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            shutdown_timeout: Duration::from_secs(60),
        }
    }
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin server (API, page, metrics, webhooks); a non-loopback address
    /// needs a token. Empty: no admin server.
    pub listen: String,
    /// One bearer token with the role `admin`, named `admin` in the actor trail (the setting
    /// from before named tokens, kept as it was); empty: none.
    pub token: Secret,
    /// Named tokens, each with a role (`[[admin.tokens]]`, docs/security.md): who carried a
    /// call is what the actor trail records. No token at all here or in `token`: no token
    /// asked, loopback only.
    pub tokens: Vec<AdminTokenConfig>,
    /// The address browsers reach the admin server at (`https://usersync.acme.example`), for
    /// the callback URLs of the browser authorization flows; empty: `http://<listen>`. Its host
    /// is one the admin server answers to.
    pub public_url: String,
    /// More names clients reach the admin server by, each `host` or `host:port` as they send it
    /// in `Host` (a Service name, another container's view): a request naming anything else is
    /// refused (docs/security.md). A list, or in the environment one comma-separated text.
    #[serde(deserialize_with = "deserialize_host_list")]
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8700".into(),
            token: Secret::default(),
            tokens: Vec::new(),
            public_url: String::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// One `[[admin.tokens]]` entry. The name and role are checked, and the token is read from
/// `token_file`, when the configuration is validated and again when the admin server starts
/// (`crate::admin::tokens::configured`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// Who carries it, as the actor trail shows it: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// `viewer` (reads) or `admin` (reads and changes).
    pub role: String,
    /// The token itself; or leave it empty and name a file in `token_file`.
    pub token: Secret,
    /// A file holding the token (a mounted container secret), read at load; one trailing line
    /// break is dropped.
    pub token_file: String,
}

/// Reads `admin.allowed_hosts`: a list, or one text of comma-separated names (what an
/// environment variable holds).
fn deserialize_host_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct HostsVisitor;
    impl<'de> serde::de::Visitor<'de> for HostsVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of host or host:port names, or one text of them comma-separated")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(text
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut hosts = Vec::new();
            while let Some(host) = seq.next_element::<String>()? {
                hosts.push(host);
            }
            Ok(hosts)
        }
    }
    d.deserialize_any(HostsVisitor)
}

/// How the processor consumes events and keeps the Outreach user index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// The Kafka consumer group; every replica of one deployment uses the same.
    pub group_id: String,
    /// How often the whole Outreach user index is read again (0: only at start).
    #[serde(rename = "reconcile_interval_seconds", with = "duration::seconds")]
    pub reconcile_interval: Duration,
    /// The first and the longest wait before an event Outreach could not take is tried again.
    #[serde(rename = "retry_min_ms", with = "duration::millis")]
    pub retry_min: Duration,
    #[serde(rename = "retry_max_ms", with = "duration::millis")]
    pub retry_max: Duration,
    /// How long a shutdown may take to finish the event in flight and commit offsets.
    #[serde(rename = "shutdown_timeout_seconds", with = "duration::seconds")]
    pub shutdown_timeout: Duration,
    /// How long the group waits for a replica that stopped heartbeating (killed, hung, cut
    /// off) before its partitions go to the others.
    #[serde(rename = "session_timeout_ms", with = "duration::millis")]
    pub session_timeout: Duration,
}

impl ProcessorConfig {
    /// How often the whole Outreach user index is read again; `None`: only at start.
    pub fn reconcile_every(&self) -> Option<Duration> {
        Some(self.reconcile_interval).filter(|every| !every.is_zero())
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            group_id: "usersync-processor".into(),
            reconcile_interval: Duration::from_secs(3600),
            retry_min: Duration::from_millis(1_000),
            retry_max: Duration::from_millis(60_000),
            shutdown_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_millis(45_000),
        }
    }
}

/// Where durable state lives.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path` (the embedded default, created if missing) or `postgres://…`.
    pub url: String,
    /// How many days the decision log and the applied-event log keep a row before the
    /// processor prunes it; 0: forever. At least [`MIN_RETENTION_DAYS`] (docs/store.md,
    /// "Retention").
    pub retention_days: u32,
}

/// The shortest `store.retention_days` but 0: the longest redelivery window usersync promises
/// to recognize. The event topic is created without a retention of its own, so it keeps
/// records for Kafka's default of 7 days; a consumer group whose offsets expired or were reset
/// reads all of them again, and only the applied-event log tells those events were applied.
/// Salesforce's 72-hour retention (a replay from earliest) lies within it. docs/store.md.
pub const MIN_RETENTION_DAYS: u32 = 7;

/// The longest `store.retention_days`: a hundred years is forever for a log, and the bound
/// keeps the cutoff a date.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl fmt::Debug for StoreConfig {
    /// Prints the URL with any password masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &crate::store::redact_password(&self.url))
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://usersync.db".into(),
            retention_days: 90,
        }
    }
}

impl StoreConfig {
    /// How long the decision and applied-event logs keep a row; `None`: forever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }

    /// Refuses a retention shorter than the longest redelivery window, saying why.
    fn validate(&self) -> Result<(), ConfigError> {
        let days = self.retention_days;
        if days != 0 && days < MIN_RETENTION_DAYS {
            return Err(ConfigError::Parse(format!(
                "store.retention_days ({days}) is shorter than the longest redelivery window \
                 usersync recognizes, {MIN_RETENTION_DAYS} days: the event topic keeps records \
                 that long under Kafka's default retention, a consumer group whose offsets \
                 expired or were reset reads them all again, and only the applied-event log \
                 tells those events were applied already (Salesforce's 72-hour replay window \
                 lies within it). Set at least {MIN_RETENTION_DAYS}, or 0 to keep forever \
                 (docs/store.md, \"Retention\")"
            )));
        }
        if days > MAX_RETENTION_DAYS {
            return Err(ConfigError::Parse(format!(
                "store.retention_days ({days}) must be at most {MAX_RETENTION_DAYS}; 0 keeps \
                 forever"
            )));
        }
        Ok(())
    }
}

/// How to reach Outreach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutreachConfig {
    pub api_url: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub redirect_uri: String,
    /// The secret Outreach signs webhook deliveries with (`Outreach-Webhook-Signature`, HMAC-SHA256
    /// of the body); the receiver refuses to start without one.
    pub webhook_secret: Secret,
    /// The public URL of `POST /webhooks/outreach` to register with Outreach; empty: register
    /// nothing (the webhook is managed by hand).
    pub webhook_url: String,
    /// Users per page when loading the index (Outreach's maximum is 1000).
    pub page_size: u32,
    /// Retries of a 5xx or network failure before giving up.
    pub max_retries: usize,
    #[serde(rename = "backoff_min_ms", with = "duration::millis")]
    pub backoff_min: Duration,
    #[serde(rename = "backoff_max_ms", with = "duration::millis")]
    pub backoff_max: Duration,
    /// The longest a request waits for the rate limit before the caller is told to pause.
    #[serde(rename = "max_rate_limit_wait_seconds", with = "duration::seconds")]
    pub max_rate_limit_wait: Duration,
    /// Requests kept in reserve: pacing starts when the remaining budget reaches this.
    pub rate_limit_reserve: u32,
    /// Outreach mints one token per user and app per minute.
    #[serde(rename = "mint_interval_seconds", with = "duration::seconds")]
    pub mint_interval: Duration,
    #[serde(rename = "timeout_seconds", with = "duration::seconds")]
    pub timeout: Duration,
    /// A refresh token to start with (from the authorization-code flow); the processor mints
    /// an access token from it.
    pub refresh_token: Secret,
    /// Where the newest tokens are kept across restarts (Outreach rotates refresh tokens);
    /// read first when it exists, written with mode 0600 after every mint. Empty: memory only.
    pub token_file: String,
}

impl Default for OutreachConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.outreach.io/api/v2".into(),
            token_url: "https://api.outreach.io/oauth/token".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
            redirect_uri: String::new(),
            webhook_secret: Secret::default(),
            webhook_url: String::new(),
            page_size: 1000,
            max_retries: 5,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_millis(30_000),
            max_rate_limit_wait: Duration::from_secs(120),
            rate_limit_reserve: 0,
            mint_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            refresh_token: Secret::default(),
            token_file: String::new(),
        }
    }
}

/// How the subscriber reaches Salesforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceConfig {
    /// `jwt_bearer` (production), `client_credentials` (My Domain only) or `refresh_token`.
    pub auth: SalesforceAuthFlow,
    /// The login host for JWT bearer and refresh token: `https://login.salesforce.com`, or
    /// `https://test.salesforce.com` for a sandbox.
    pub login_url: String,
    /// The org's My Domain URL, `https://<name>.my.salesforce.com`: the client credentials
    /// flow's token host. Other flows take the instance URL from the token response.
    pub my_domain_url: String,
    /// The connected app's consumer key (its OAuth client id).
    pub consumer_key: String,
    /// The consumer secret (client credentials and, when the app requires it, refresh).
    pub consumer_secret: Secret,
    /// The authorizing user for the JWT bearer flow.
    pub username: String,
    /// A PEM file holding the private key whose certificate the connected app has.
    pub private_key_file: String,
    /// A refresh token left by the web authorization-code flow.
    pub refresh_token: Secret,
    /// REST and CometD API version, `vNN.N`.
    pub api_version: String,
    /// `pubsub` (the Pub/Sub API, gRPC) or `cometd` (the Streaming API).
    pub transport: Transport,
    /// The Pub/Sub API endpoint: `https://api.pubsub.salesforce.com:7443` (or `:443`; the EU
    /// endpoint is `api.deu.pubsub.salesforce.com`), `http://…` only for a local test server.
    pub pubsub_endpoint: String,
    /// The change event channel.
    pub topic: String,
    /// What to do when the stored replay id is outside the retention window.
    pub replay_policy: crate::salesforce::replay::ReplayPolicy,
    /// A resync re-reads users modified since the checkpoint's commit time minus this.
    #[serde(rename = "resync_margin_seconds", with = "duration::seconds")]
    pub resync_margin: Duration,
    /// After an admin's reconnect, read every user again before the stream resumes (the
    /// "refresh users on reconnect" option).
    pub full_read_on_reconnect: bool,
    /// A stream with nothing at all (not even a keepalive) for this long is resubscribed.
    #[serde(rename = "idle_timeout_seconds", with = "duration::seconds")]
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive ping interval on the gRPC channel.
    #[serde(rename = "keepalive_seconds", with = "duration::seconds")]
    pub keepalive: Duration,
    /// Retries back off exponentially between these bounds.
    #[serde(rename = "backoff_min_ms", with = "duration::millis")]
    pub backoff_min: Duration,
    #[serde(rename = "backoff_max_ms", with = "duration::millis")]
    pub backoff_max: Duration,
    #[serde(rename = "timeout_seconds", with = "duration::seconds")]
    pub timeout: Duration,
}

/// The OAuth flow the subscriber signs in with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceAuthFlow {
    #[default]
    JwtBearer,
    ClientCredentials,
    RefreshToken,
}

/// Which Salesforce streaming API the subscriber reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Pubsub,
    Cometd,
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        Self {
            auth: SalesforceAuthFlow::JwtBearer,
            login_url: "https://login.salesforce.com".into(),
            my_domain_url: String::new(),
            consumer_key: String::new(),
            consumer_secret: Secret::default(),
            username: String::new(),
            private_key_file: String::new(),
            refresh_token: Secret::default(),
            api_version: "v62.0".into(),
            transport: Transport::Pubsub,
            pubsub_endpoint: "https://api.pubsub.salesforce.com:7443".into(),
            topic: crate::salesforce::cometd::USER_CHANGE_CHANNEL.into(),
            replay_policy: crate::salesforce::replay::ReplayPolicy::Resync,
            resync_margin: Duration::from_secs(300),
            full_read_on_reconnect: false,
            idle_timeout: Duration::from_secs(300),
            keepalive: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_millis(60_000),
            timeout: Duration::from_secs(30),
        }
    }
}

/// How to reach Kafka and what to create there (`src/kafka/`, `docs/kafka.md`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: a comma-separated `host:port` list.
    pub brokers: String,
    /// The topic of `user_change.v1` events.
    pub topic: String,
    /// Where records that cannot become events go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Partitions of the topic and the dead-letter topic when usersync creates them.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Create missing topics at start; when false, a missing topic stops the start.
    pub create_topics: bool,
    /// Set: the transactional producer (events and checkpoint in one transaction).
    /// Unset: the idempotent producer.
    pub transactional_id: Option<String>,
    /// The compacted topic of replay checkpoints, used only in transactional mode.
    pub checkpoint_topic: String,
    /// How long librdkafka tries to deliver one record before reporting it failed.
    #[serde(rename = "message_timeout_ms", with = "duration::millis")]
    pub message_timeout: Duration,
    /// Extra librdkafka settings (`security.protocol`, `sasl.password`, …). Values may be
    /// secrets: the debug form and serialization mask the sensitive ones.
    #[serde(
        serialize_with = "serialize_masked_properties",
        deserialize_with = "deserialize_properties"
    )]
    pub properties: BTreeMap<String, String>,
}

/// The librdkafka settings usersync sets itself, because its delivery promise rests on them;
/// `properties` may not override them.
pub const KAFKA_FIXED_PROPERTIES: [(&str, &str); 6] = [
    ("bootstrap.servers", "kafka.brokers"),
    ("enable.idempotence", "always true"),
    ("acks", "always all"),
    ("message.timeout.ms", "kafka.message_timeout_ms"),
    ("transactional.id", "kafka.transactional_id"),
    (
        "isolation.level",
        "read_committed where usersync reads checkpoints",
    ),
];

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "usersync.user-changes.v1".into(),
            dead_letter_topic: "usersync.user-changes.dlq".into(),
            partitions: 12,
            replication_factor: 1,
            create_topics: true,
            transactional_id: None,
            checkpoint_topic: "usersync.subscriber-checkpoints".into(),
            message_timeout: Duration::from_millis(30_000),
            properties: BTreeMap::new(),
        }
    }
}

impl SalesforceConfig {
    /// Checks what the subscriber needs before it signs in: the URLs parse, the chosen flow
    /// has its credentials, the API version has the `vNN.N` form.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Parse(message));
        for (key, value) in [
            ("salesforce.login_url", &self.login_url),
            ("salesforce.pubsub_endpoint", &self.pubsub_endpoint),
        ] {
            if let Err(e) = url::Url::parse(value) {
                return bad(format!("{key} {value:?} is not a URL: {e}"));
            }
        }
        let version = self.api_version.strip_prefix('v').unwrap_or_default();
        if version.split('.').count() != 2 || version.split('.').any(|p| p.parse::<u32>().is_err())
        {
            return bad(format!(
                "salesforce.api_version {:?} must look like v62.0",
                self.api_version
            ));
        }
        let missing = |key: &str, flow: &str| {
            bad(format!(
                "salesforce.{key} is required with salesforce.auth = \"{flow}\""
            ))
        };
        match self.auth {
            SalesforceAuthFlow::JwtBearer => {
                if self.consumer_key.is_empty() {
                    return missing("consumer_key", "jwt_bearer");
                }
                if self.username.is_empty() {
                    return missing("username", "jwt_bearer");
                }
                if self.private_key_file.is_empty() {
                    return missing("private_key_file", "jwt_bearer");
                }
            }
            SalesforceAuthFlow::ClientCredentials => {
                if self.my_domain_url.is_empty() {
                    return missing("my_domain_url", "client_credentials");
                }
                if self.consumer_key.is_empty() {
                    return missing("consumer_key", "client_credentials");
                }
                if self.consumer_secret.expose().is_empty() {
                    return missing("consumer_secret", "client_credentials");
                }
            }
            SalesforceAuthFlow::RefreshToken => {
                if self.consumer_key.is_empty() {
                    return missing("consumer_key", "refresh_token");
                }
                if self.refresh_token.expose().is_empty() {
                    return missing("refresh_token", "refresh_token");
                }
            }
        }
        if self.backoff_min > self.backoff_max {
            return bad(format!(
                "salesforce.backoff_min_ms ({}) must not exceed salesforce.backoff_max_ms ({})",
                self.backoff_min.as_millis(),
                self.backoff_max.as_millis()
            ));
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// `properties` with librdkafka's names: an environment variable cannot hold a dot, so
    /// `USERSYNC_KAFKA__PROPERTIES__SASL_PASSWORD` arrives as `sasl_password`; no librdkafka
    /// setting has an underscore, so every `_` reads as `.`.
    pub fn client_properties(&self) -> impl Iterator<Item = (String, &str)> {
        self.properties
            .iter()
            .map(|(k, v)| (k.replace('_', "."), v.as_str()))
    }

    /// Whether a librdkafka setting's value must never be shown: every password, secret, key
    /// and passphrase (`sasl.password`, `ssl.key.password`, `ssl.key.pem`,
    /// `sasl.oauthbearer.client.secret`, …) and `sasl.oauthbearer.config`, which may carry a
    /// token. Erring on the side of masking costs only a `***` in a dump.
    pub fn is_sensitive(key: &str) -> bool {
        let key = key.to_ascii_lowercase().replace('_', ".");
        ["password", "secret", "key", "passphrase", "credential"]
            .iter()
            .any(|word| key.contains(word))
            || key.contains("oauthbearer.config")
    }

    /// `text` with the value of every sensitive setting replaced by `***`: librdkafka's error
    /// messages may quote a value they refused.
    pub fn mask_secrets(&self, text: &str) -> String {
        let mut secrets: Vec<&str> = self
            .properties
            .iter()
            .filter(|(k, v)| Self::is_sensitive(k) && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect();
        // The longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        secrets
            .into_iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }

    fn masked_properties(&self) -> BTreeMap<&str, &str> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let shown = if Self::is_sensitive(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |text: String| Err(ConfigError::Parse(text));
        if self.brokers.trim().is_empty() {
            return fail("kafka.brokers is empty; name at least one host:port".into());
        }
        for (key, value) in [
            ("kafka.topic", &self.topic),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
            ("kafka.checkpoint_topic", &self.checkpoint_topic),
        ] {
            if value.trim().is_empty() {
                return fail(format!("{key} is empty"));
            }
        }
        if self.topic == self.dead_letter_topic {
            return fail(format!(
                "kafka.dead_letter_topic must differ from kafka.topic ({:?})",
                self.topic
            ));
        }
        if self.partitions < 1 {
            return fail(format!(
                "kafka.partitions must be at least 1, not {}",
                self.partitions
            ));
        }
        if self.replication_factor < 1 {
            return fail(format!(
                "kafka.replication_factor must be at least 1, not {}",
                self.replication_factor
            ));
        }
        if self.message_timeout.is_zero() {
            return fail(
                "kafka.message_timeout_ms must be positive (0 would retry a record forever)".into(),
            );
        }
        if self
            .transactional_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return fail(
                "kafka.transactional_id is set but empty; unset it for the idempotent producer"
                    .into(),
            );
        }
        for (name, _) in self.client_properties() {
            if let Some((_, instead)) = KAFKA_FIXED_PROPERTIES.iter().find(|(k, _)| *k == name) {
                return fail(format!(
                    "kafka.properties may not set {name}: usersync sets it ({instead})"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for KafkaConfig {
    /// Prints every setting, with the values of sensitive `properties` masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("create_topics", &self.create_topics)
            .field("transactional_id", &self.transactional_id)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .field("message_timeout", &self.message_timeout)
            .field("properties", &self.masked_properties())
            .finish()
    }
}

/// Serializes `kafka.properties` with sensitive values as `***`, like [`Secret`].
fn serialize_masked_properties<S: Serializer>(
    properties: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(properties.len()))?;
    for (k, v) in properties {
        let shown = if KafkaConfig::is_sensitive(k) {
            "***"
        } else {
            v.as_str()
        };
        map.serialize_entry(k, shown)?;
    }
    map.end()
}

/// Reads `kafka.properties`, taking a boolean or a number as its text: librdkafka settings
/// are all text, while `…=false` or `…=5` in the environment arrive typed. No error here
/// quotes a value, since values may be secrets.
fn deserialize_properties<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct TextVisitor;
            impl serde::de::Visitor<'_> for TextVisitor {
                type Value = Text;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a librdkafka setting (text, a number or a boolean)")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
            }
            d.deserialize_any(TextVisitor)
        }
    }
    let typed = BTreeMap::<String, Text>::deserialize(d)?;
    Ok(typed.into_iter().map(|(k, Text(v))| (k, v)).collect())
}

/// A secret value: read from configuration, never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    /// Serializes as `***` so a dumped configuration never carries the secret.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Takes a string, or a number (an all-digit environment variable reads as one): an error
    /// message about a secret's type would print the secret.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret (a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string (value not shown)"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string (value not shown)"))
            }
        }
        d.deserialize_any(SecretVisitor)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(String),
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration: sync settings break rule {rule}: {source}")]
    Rule {
        rule: &'static str,
        #[source]
        source: SettingsError,
    },
}

impl Config {
    /// Loads the defaults, then the file (if given), then the environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX))
    }

    /// Like `load`, with the environment given (tests use `Env::raw` over a jail).
    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let from_files = values_from_files(&env)?;
        let read_from_files: Vec<String> = from_files.iter().map(|f| f.variable.clone()).collect();
        let env = env
            .filter(move |key| {
                // The filter sees the key with the prefix stripped but its case kept.
                let first = key.as_str().split("__").next().unwrap_or_default();
                SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first))
                    && !read_from_files
                        .iter()
                        .any(|v| v.eq_ignore_ascii_case(key.as_str()))
            })
            .split("__");
        figment = figment.merge(env);
        for file in from_files {
            figment = figment.merge((file.key, file.value));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        for (key, url) in config.insecure_endpoints() {
            tracing::warn!(
                key,
                url = %url,
                "plain HTTP endpoint on another host, allowed by allow_insecure_endpoints: the \
                 bearer tokens and client secrets sent to it cross the network in the clear"
            );
        }
        Ok(config)
    }

    /// The endpoints of Salesforce, Outreach and their OAuth hosts that are plain `http://` to
    /// a host other than this machine, by key. Ones that do not parse are left to the checks
    /// of their own section.
    pub fn insecure_endpoints(&self) -> Vec<(&'static str, &str)> {
        [
            ("outreach.api_url", self.outreach.api_url.as_str()),
            ("outreach.token_url", self.outreach.token_url.as_str()),
            ("salesforce.login_url", self.salesforce.login_url.as_str()),
            (
                "salesforce.my_domain_url",
                self.salesforce.my_domain_url.as_str(),
            ),
            (
                "salesforce.pubsub_endpoint",
                self.salesforce.pubsub_endpoint.as_str(),
            ),
        ]
        .into_iter()
        .filter(|(_, value)| {
            url::Url::parse(value).is_ok_and(|url| crate::endpoint::origin::is_insecure(&url))
        })
        .collect()
    }

    /// Checks every rule the configuration must meet.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.sync.validate().map_err(|source| ConfigError::Rule {
            rule: source.rule(),
            source,
        })?;
        if self.outreach.backoff_min > self.outreach.backoff_max {
            return Err(ConfigError::Parse(format!(
                "outreach.backoff_min_ms ({}) must not exceed outreach.backoff_max_ms ({})",
                self.outreach.backoff_min.as_millis(),
                self.outreach.backoff_max.as_millis()
            )));
        }
        for (key, value) in [
            ("outreach.api_url", &self.outreach.api_url),
            ("outreach.token_url", &self.outreach.token_url),
        ] {
            if let Err(e) = url::Url::parse(value) {
                return Err(ConfigError::Parse(format!(
                    "{key} {value:?} is not a URL: {e}"
                )));
            }
        }
        if self.processor.group_id.trim().is_empty() {
            return Err(ConfigError::Parse(
                "processor.group_id must not be empty".into(),
            ));
        }
        if self.processor.retry_min > self.processor.retry_max {
            return Err(ConfigError::Parse(format!(
                "processor.retry_min_ms ({}) must not exceed processor.retry_max_ms ({})",
                self.processor.retry_min.as_millis(),
                self.processor.retry_max.as_millis()
            )));
        }
        // librdkafka's own range for session.timeout.ms.
        if !(1_000..=3_600_000).contains(&self.processor.session_timeout.as_millis()) {
            return Err(ConfigError::Parse(format!(
                "processor.session_timeout_ms ({}) must be between 1000 and 3600000",
                self.processor.session_timeout.as_millis()
            )));
        }
        if !(3..=3_600).contains(&self.subscriber.lease.as_secs()) {
            return Err(ConfigError::Parse(format!(
                "subscriber.lease_seconds ({}) must be between 3 and 3600: the active instance \
                 renews it three times per lease",
                self.subscriber.lease.as_secs()
            )));
        }
        if self.run.shutdown_timeout.is_zero() {
            return Err(ConfigError::Parse(
                "run.shutdown_timeout_seconds must be at least 1".into(),
            ));
        }
        if self.outreach.page_size == 0 || self.outreach.page_size > 1000 {
            return Err(ConfigError::Parse(format!(
                "outreach.page_size must be 1..=1000 (Outreach's maximum), not {}",
                self.outreach.page_size
            )));
        }
        if !self.admin.public_url.is_empty()
            && let Err(e) = url::Url::parse(&self.admin.public_url)
        {
            return Err(ConfigError::Parse(format!(
                "admin.public_url {:?} is not a URL: {e}",
                self.admin.public_url
            )));
        }
        for entry in &self.admin.allowed_hosts {
            crate::admin::guard::allowed_host(entry).map_err(ConfigError::Parse)?;
        }
        // Reads the token files too, so a missing one stops the load, naming its entry.
        crate::admin::tokens::configured(&self.admin).map_err(ConfigError::Parse)?;
        self.store.validate()?;
        if !self.outreach.webhook_url.is_empty()
            && let Err(e) = url::Url::parse(&self.outreach.webhook_url)
        {
            return Err(ConfigError::Parse(format!(
                "outreach.webhook_url {:?} is not a URL: {e}",
                self.outreach.webhook_url
            )));
        }
        if !self.allow_insecure_endpoints
            && let Some((key, url)) = self.insecure_endpoints().into_iter().next()
        {
            return Err(ConfigError::Parse(format!(
                "{key} {url:?} is plain HTTP to another host than this machine: bearer tokens \
                 and client secrets would cross the network in the clear. Use https://, or, for a \
                 test service you trust, set allow_insecure_endpoints = true \
                 ({ENV_PREFIX}ALLOW_INSECURE_ENDPOINTS=true)"
            )));
        }
        self.kafka.validate()
    }
}

/// A text setting read from a file: `USERSYNC_<KEY>_FILE` names the file holding `<KEY>`'s
/// value, as container secrets are mounted (docs/settings.md, "Values from files").
struct FileValue {
    /// The variable, prefix stripped (`ADMIN__TOKEN_FILE`).
    variable: String,
    /// The key it sets (`admin.token`).
    key: String,
    value: String,
}

/// The settings `env` asks to read from files. A variable ending in `_FILE` does so when the
/// part before names a text setting and the whole does not name a setting of its own
/// (`outreach.token_file` is one). Setting both the key (not empty) and its file is refused, as is a file
/// that cannot be read; one trailing line break is dropped.
fn values_from_files(env: &Env) -> Result<Vec<FileValue>, ConfigError> {
    let defaults = Figment::from(Serialized::defaults(Config::default()));
    let pairs: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| (key.as_str().to_lowercase(), value))
        .collect();
    let mut found = Vec::new();
    for (variable, path) in &pairs {
        let Some(stem) = variable.strip_suffix("_file") else {
            continue;
        };
        let key = stem.replace("__", ".");
        let whole = variable.replace("__", ".");
        let first = key.split('.').next().unwrap_or_default();
        if !SECTIONS.contains(&first) || defaults.find_value(&whole).is_ok() {
            continue;
        }
        let named = |v: &str| format!("{ENV_PREFIX}{}", v.to_uppercase());
        match defaults.find_value(&key) {
            Ok(figment::value::Value::String(..)) => {}
            Ok(_) => {
                return Err(ConfigError::Parse(format!(
                    "{}: only a text setting can be read from a file, and {key} is not one",
                    named(variable)
                )));
            }
            Err(_) => continue,
        }
        if pairs
            .iter()
            .any(|(other, value)| other == stem && !value.is_empty())
        {
            return Err(ConfigError::Parse(format!(
                "both {} and {} are set; set one",
                named(stem),
                named(variable)
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Parse(format!(
                "{} names {path:?}, which cannot be read: {e}",
                named(variable)
            ))
        })?;
        let value = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text)
            .to_owned();
        found.push(FileValue {
            variable: variable.clone(),
            key,
            value,
        });
    }
    Ok(found)
}

/// Flattens figment's error chain into one line per problem, naming the exact environment
/// variable when one is to blame.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            if from_env && !e.path.is_empty() {
                let key = e.path.join(".").to_lowercase();
                let var = format!("{ENV_PREFIX}{}", e.path.join("__").to_uppercase());
                format!("{} for key {key} (environment variable {var})", e.kind)
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// figment's `Jail` closures return `figment::Error` by its own signature.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::engine::settings::Dedupe;
    use figment::Jail;

    #[test]
    fn a_reconcile_interval_of_zero_means_only_at_start() {
        let mut processor = ProcessorConfig {
            reconcile_interval: Duration::from_secs(0),
            ..ProcessorConfig::default()
        };
        assert_eq!(processor.reconcile_every(), None);
        processor.reconcile_interval = Duration::from_secs(60);
        assert_eq!(processor.reconcile_every(), Some(Duration::from_secs(60)));
    }

    fn load_in(jail: &Jail, file: Option<&str>) -> Result<Config, ConfigError> {
        let path = file.map(|f| jail.directory().join(f));
        Config::load_from(path.as_deref(), Env::prefixed(ENV_PREFIX))
    }

    /// Every leaf key of `value`, as `section.key` paths.
    fn leaf_paths(prefix: &str, value: &serde_json::Value, paths: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) if !prefix.ends_with("properties") => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaf_paths(&path, inner, paths);
                }
            }
            _ => paths.push(prefix.to_owned()),
        }
    }

    #[test]
    fn the_example_file_names_every_key_and_holds_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/usersync.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let mut paths = Vec::new();
        leaf_paths(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut paths,
        );
        assert!(paths.len() > 50, "{paths:?}");
        for path in paths {
            let variable = format!("USERSYNC_{}", path.to_uppercase().replace('.', "__"));
            assert!(
                text.contains(&variable),
                "config/usersync.example.toml does not document {path} ({variable})"
            );
        }
        // No environment: the file alone.
        let loaded = Config::load_from(Some(Path::new(example)), Env::raw().only(&[])).unwrap();
        assert_eq!(loaded, Config::default(), "the example shows the defaults");
    }

    #[test]
    fn the_salesforce_section_reads_from_file_and_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "usersync.toml",
                r#"
                [salesforce]
                consumer_key = "3MVG9key"
                username = "integration@acme.example"
                private_key_file = "/run/secrets/sf.pem"
                transport = "cometd"
                "#,
            )?;
            jail.set_env("USERSYNC_SALESFORCE__REPLAY_POLICY", "latest");
            jail.set_env(
                "USERSYNC_SALESFORCE__PUBSUB_ENDPOINT",
                "http://127.0.0.1:7011",
            );
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            let sf = &config.salesforce;
            assert_eq!(sf.transport, Transport::Cometd);
            assert_eq!(
                sf.replay_policy,
                crate::salesforce::replay::ReplayPolicy::Latest
            );
            assert_eq!(sf.pubsub_endpoint, "http://127.0.0.1:7011");
            assert_eq!(sf.topic, "/data/UserChangeEvent");
            sf.validate().unwrap();
            Ok(())
        });
    }

    #[test]
    fn the_salesforce_section_names_what_a_flow_is_missing() {
        let mut sf = SalesforceConfig::default();
        let err = sf.validate().unwrap_err().to_string();
        assert!(
            err.contains("salesforce.consumer_key") && err.contains("jwt_bearer"),
            "{err}"
        );
        sf.auth = SalesforceAuthFlow::ClientCredentials;
        sf.consumer_key = "k".into();
        let err = sf.validate().unwrap_err().to_string();
        assert!(err.contains("salesforce.my_domain_url"), "{err}");
        sf.my_domain_url = "https://acme.my.salesforce.com".into();
        sf.consumer_secret = Secret::new("s");
        sf.validate().unwrap();
        sf.api_version = "62".into();
        let err = sf.validate().unwrap_err().to_string();
        assert!(err.contains("v62.0"), "{err}");
        sf.api_version = "v62.0".into();
        sf.pubsub_endpoint = "not a url".into();
        let err = sf.validate().unwrap_err().to_string();
        assert!(err.contains("salesforce.pubsub_endpoint"), "{err}");
    }

    #[test]
    fn every_section_is_read_from_the_environment() {
        // A section missing from SECTIONS would have its variables ignored without a word.
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut sections: Vec<&str> = defaults
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        sections.sort_unstable();
        let mut known = SECTIONS.to_vec();
        known.sort_unstable();
        assert_eq!(sections, known);
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_RUN__SHUTDOWN_TIMEOUT_SECONDS", "7");
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.run.shutdown_timeout, Duration::from_secs(7));
            Ok(())
        });
    }

    #[test]
    fn allowed_hosts_come_as_a_list_or_one_comma_separated_variable_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "usersync.toml",
                r#"
                [admin]
                allowed_hosts = ["usersync-admin:8700", "usersync.internal"]
                "#,
            )?;
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            assert_eq!(
                config.admin.allowed_hosts,
                ["usersync-admin:8700", "usersync.internal"]
            );
            jail.set_env(
                "USERSYNC_ADMIN__ALLOWED_HOSTS",
                "admin:8700, localhost:18700",
            );
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            assert_eq!(
                config.admin.allowed_hosts,
                ["admin:8700", "localhost:18700"]
            );
            jail.set_env("USERSYNC_ADMIN__ALLOWED_HOSTS", "[admin:8700, \"[::1]:9\"]");
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            assert_eq!(config.admin.allowed_hosts, ["admin:8700", "[::1]:9"]);
            jail.set_env("USERSYNC_ADMIN__ALLOWED_HOSTS", "admin:8700,https://x");
            let err = load_in(jail, Some("usersync.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("admin.allowed_hosts") && err.contains("\"https://x\""),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn named_admin_tokens_come_from_the_file_each_token_from_its_own_file() {
        Jail::expect_with(|jail| {
            jail.create_file("ops-token", "0123456789abcdef0123456789abcdef-ops\n")?;
            let ops = jail.directory().join("ops-token");
            jail.create_file(
                "usersync.toml",
                &format!(
                    r#"
                    [admin]
                    token = "0123456789abcdef0123456789abcdef-shared"
                    [[admin.tokens]]
                    name = "ops"
                    role = "admin"
                    token_file = "{}"
                    [[admin.tokens]]
                    name = "dashboard"
                    role = "viewer"
                    token = "0123456789abcdef0123456789abcdef-view"
                    "#,
                    ops.display()
                ),
            )?;
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            let tokens = crate::admin::tokens::configured(&config.admin).unwrap();
            let named: Vec<(&str, &str, &str)> = tokens
                .iter()
                .map(|t| (t.name.as_str(), t.role.as_str(), t.token.expose()))
                .collect();
            assert_eq!(
                named,
                [
                    ("admin", "admin", "0123456789abcdef0123456789abcdef-shared"),
                    ("ops", "admin", "0123456789abcdef0123456789abcdef-ops"),
                    (
                        "dashboard",
                        "viewer",
                        "0123456789abcdef0123456789abcdef-view"
                    ),
                ]
            );
            let shown = format!("{config:?} {}", toml::to_string(&config).unwrap());
            assert!(!shown.contains("0123456789abcdef"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn named_admin_tokens_come_from_the_environment_as_inline_tables() {
        Jail::expect_with(|jail| {
            jail.create_file("ci-token", "fedcba9876543210fedcba9876543210-ci")?;
            let ci = jail.directory().join("ci-token");
            jail.set_env(
                "USERSYNC_ADMIN__TOKENS",
                format!(
                    "[{{name=ci, role=viewer, token_file=\"{}\"}}, {{name=ops, role=admin, \
                     token=\"0123456789abcdef0123456789abcdef-ops\"}}]",
                    ci.display()
                ),
            );
            let config = load_in(jail, None).unwrap();
            let tokens = crate::admin::tokens::configured(&config.admin).unwrap();
            let named: Vec<(&str, &str)> = tokens
                .iter()
                .map(|t| (t.name.as_str(), t.token.expose()))
                .collect();
            assert_eq!(
                named,
                [
                    ("ci", "fedcba9876543210fedcba9876543210-ci"),
                    ("ops", "0123456789abcdef0123456789abcdef-ops")
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn a_refused_admin_token_entry_is_named_at_load() {
        let refused = |toml: &str| {
            let mut error = String::new();
            Jail::expect_with(|jail| {
                jail.create_file("usersync.toml", toml)?;
                error = load_in(jail, Some("usersync.toml"))
                    .unwrap_err()
                    .to_string();
                Ok(())
            });
            error
        };
        let error =
            refused("[[admin.tokens]]\nname = \"ci\"\nrole = \"auditor\"\ntoken = \"t0ken-ci\"\n");
        assert!(
            error.contains("admin.tokens entry 1 (\"ci\"): role \"auditor\""),
            "{error}"
        );
        let error = refused(
            "[[admin.tokens]]\nname = \"ci\"\nrole = \"viewer\"\ntoken = \"t0ken-ci\"\n\
             token_file = \"/run/secrets/ci\"\n",
        );
        assert!(
            error.contains("admin.tokens entry 1 (\"ci\") sets both token and token_file"),
            "{error}"
        );
        assert!(!error.contains("t0ken-ci"), "{error}");
        let error = refused(
            "[[admin.tokens]]\nname = \"ci\"\nrole = \"viewer\"\n\
             token_file = \"/nonexistent/usersync-ci\"\n",
        );
        assert!(
            error.contains(
                "admin.tokens entry 1 (\"ci\"): token_file \"/nonexistent/usersync-ci\" cannot \
                 be read"
            ),
            "{error}"
        );
        let error = refused(
            "[[admin.tokens]]\nname = \"ci\"\nrole = \"viewer\"\ntoken = \"same-t0ken\"\n\
             [[admin.tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken = \"same-t0ken\"\n",
        );
        assert!(
            error.contains(
                "admin.tokens entry 2 (\"ops\") has the same token as admin.tokens entry 1"
            ) && !error.contains("same-t0ken"),
            "{error}"
        );
        let error =
            refused("[[admin.tokens]]\nname = \"ci\"\nrole = \"viewer\"\nscope = \"all\"\n");
        assert!(error.contains("scope"), "{error}");
    }

    #[test]
    fn the_retention_keeps_at_least_the_longest_redelivery_window_or_forever() {
        Jail::expect_with(|jail| {
            assert_eq!(load_in(jail, None).unwrap().store.retention_days, 90);
            assert_eq!(
                StoreConfig::default().retention(),
                Some(Duration::from_secs(90 * 86_400))
            );
            jail.set_env("USERSYNC_STORE__RETENTION_DAYS", "0");
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.store.retention(), None, "0 keeps forever");
            jail.set_env("USERSYNC_STORE__RETENTION_DAYS", "7");
            assert_eq!(load_in(jail, None).unwrap().store.retention_days, 7);
            jail.set_env("USERSYNC_STORE__RETENTION_DAYS", "3");
            let error = load_in(jail, None).unwrap_err().to_string();
            assert!(
                error.contains(
                    "store.retention_days (3) is shorter than the longest redelivery \
                                window usersync recognizes, 7 days"
                ) && error.contains("Kafka's default retention")
                    && error.contains("72-hour")
                    && error.contains("0 to keep forever"),
                "{error}"
            );
            jail.set_env("USERSYNC_STORE__RETENTION_DAYS", "40000");
            let error = load_in(jail, None).unwrap_err().to_string();
            assert!(error.contains("at most 36500"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn defaults_without_file_or_environment() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, None).unwrap();
            assert_eq!(config, Config::default());
            assert_eq!(config.store.url, "sqlite://usersync.db");
            Ok(())
        });
    }

    #[test]
    fn a_text_setting_can_come_from_a_file_named_by_its_file_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("store-url", "postgres://app:pa55word@db/usersync\n")?;
            jail.create_file("admin-token", "t0ken-from-a-mounted-secret")?;
            let dir = jail.directory().to_owned();
            jail.set_env("USERSYNC_STORE__URL_FILE", dir.join("store-url").display());
            jail.set_env(
                "USERSYNC_ADMIN__TOKEN_FILE",
                dir.join("admin-token").display(),
            );
            // A key that ends in _file is a key, not a file of another key.
            jail.set_env(
                "USERSYNC_OUTREACH__TOKEN_FILE",
                "/var/lib/usersync/tokens.json",
            );
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.store.url, "postgres://app:pa55word@db/usersync");
            assert_eq!(config.admin.token.expose(), "t0ken-from-a-mounted-secret");
            assert_eq!(config.outreach.token_file, "/var/lib/usersync/tokens.json");
            Ok(())
        });
    }

    #[test]
    fn a_file_variable_is_refused_with_its_key_or_a_missing_file_or_a_number() {
        Jail::expect_with(|jail| {
            jail.create_file("token", "t")?;
            let token = jail.directory().join("token");
            jail.set_env("USERSYNC_ADMIN__TOKEN_FILE", token.display());
            jail.set_env("USERSYNC_ADMIN__TOKEN", "t");
            let error = load_in(jail, None).unwrap_err().to_string();
            assert_eq!(
                error,
                "configuration: both USERSYNC_ADMIN__TOKEN and USERSYNC_ADMIN__TOKEN_FILE are \
                 set; set one"
            );
            jail.set_env("USERSYNC_ADMIN__TOKEN", "");
            jail.set_env("USERSYNC_ADMIN__TOKEN_FILE", "/nonexistent/usersync-token");
            let error = load_in(jail, None).unwrap_err().to_string();
            assert!(
                error.starts_with(
                    "configuration: USERSYNC_ADMIN__TOKEN_FILE names \"/nonexistent/usersync-token\", \
                     which cannot be read"
                ),
                "{error}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("port", "30")?;
            let port = jail.directory().join("port");
            jail.set_env("USERSYNC_OUTREACH__TIMEOUT_SECONDS_FILE", port.display());
            let error = load_in(jail, None).unwrap_err().to_string();
            assert_eq!(
                error,
                "configuration: USERSYNC_OUTREACH__TIMEOUT_SECONDS_FILE: only a text setting can \
                 be read from a file, and outreach.timeout_seconds is not one"
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "usersync.toml",
                r#"
                [sync.user_mapping]
                lock_when_inactive = true
                mirror_id_field = "custom3"
                [outreach]
                client_secret = "s3cr3t"
                "#,
            )?;
            jail.set_env("USERSYNC_SYNC__USER_MAPPING__MIRROR_ID_FIELD", "custom2");
            jail.set_env("USERSYNC_STORE__URL", "postgres://app:pa55word@db/usersync");
            // Variables outside the known sections are someone else's.
            jail.set_env("USERSYNC_SECRET_KEY", "not-a-config-key");
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            assert!(config.sync.user_mapping.lock_when_inactive);
            assert_eq!(config.sync.user_mapping.mirror_id_field, "custom2");
            assert_eq!(config.store.url, "postgres://app:pa55word@db/usersync");
            assert!(!format!("{config:?}").contains("pa55word"));
            assert_eq!(config.outreach.client_secret.expose(), "s3cr3t");
            assert!(!format!("{config:?}").contains("s3cr3t"));
            assert!(!toml::to_string(&config).unwrap().contains("s3cr3t"));
            Ok(())
        });
    }

    #[test]
    fn a_broken_rule_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "usersync.toml",
                "[sync.email_field]\ndedupe = \"inbound\"\n",
            )?;
            let err = load_in(jail, Some("usersync.toml")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("remap_requires_dedupe_both"), "{text}");
            assert!(text.contains("inbound"), "{text}");

            jail.set_env(
                "USERSYNC_SYNC__USER_MAPPING__AUTO_REMAP_ON_INACTIVE",
                "false",
            );
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            assert_eq!(config.sync.email_field.dedupe, Dedupe::Inbound);
            Ok(())
        });
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_key_and_source() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_SYNC__USER_MAPPING__INBOUND_CREATE", "maybe");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("inbound_create"), "{text}");
            assert!(
                text.contains("USERSYNC_SYNC__USER_MAPPING__INBOUND_CREATE"),
                "{text}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(
                "usersync.toml",
                "[sync.user_mapping]\ninbound_creat = true\n",
            )?;
            let text = load_in(jail, Some("usersync.toml"))
                .unwrap_err()
                .to_string();
            assert!(text.contains("inbound_creat"), "{text}");
            assert!(text.contains("usersync.toml"), "{text}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            let err = load_in(jail, Some("nowhere.toml")).unwrap_err();
            assert!(matches!(err, ConfigError::Missing(_)));
            Ok(())
        });
    }

    #[test]
    fn outreach_urls_and_backoff_are_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__API_URL", "not a url");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("outreach.api_url"), "{text}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__BACKOFF_MIN_MS", "90000");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("outreach.backoff_min_ms"), "{text}");
            Ok(())
        });
    }

    /// What `f` returns, and what it logged.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
        (result, text)
    }

    #[test]
    fn plain_http_to_another_host_is_refused_unless_allowed() {
        for (variable, value, key) in [
            (
                "USERSYNC_OUTREACH__API_URL",
                "http://outreach-sim:8710/api/v2",
                "outreach.api_url",
            ),
            (
                "USERSYNC_OUTREACH__TOKEN_URL",
                "http://outreach-sim:8710/oauth/token",
                "outreach.token_url",
            ),
            (
                "USERSYNC_SALESFORCE__LOGIN_URL",
                "http://salesforce-sim:8720",
                "salesforce.login_url",
            ),
            (
                "USERSYNC_SALESFORCE__MY_DOMAIN_URL",
                "http://10.1.2.3/my-domain",
                "salesforce.my_domain_url",
            ),
            (
                "USERSYNC_SALESFORCE__PUBSUB_ENDPOINT",
                "http://salesforce-sim:8721",
                "salesforce.pubsub_endpoint",
            ),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(variable, value);
                let text = load_in(jail, None).unwrap_err().to_string();
                assert!(
                    text.contains(key)
                        && text.contains(value)
                        && text.contains("USERSYNC_ALLOW_INSECURE_ENDPOINTS=true"),
                    "{text}"
                );
                jail.set_env("USERSYNC_ALLOW_INSECURE_ENDPOINTS", "true");
                let (config, logs) = logged(|| load_in(jail, None).unwrap());
                assert!(
                    logs.contains("WARN") && logs.contains(key) && logs.contains(value),
                    "{logs}"
                );
                assert!(config.allow_insecure_endpoints);
                assert_eq!(config.insecure_endpoints(), [(key, value)]);
                Ok(())
            });
        }
    }

    #[test]
    fn plain_http_on_this_machine_and_https_anywhere_are_accepted() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__API_URL", "http://127.0.0.1:8710/api/v2");
            jail.set_env(
                "USERSYNC_OUTREACH__TOKEN_URL",
                "http://localhost:8710/oauth/token",
            );
            jail.set_env("USERSYNC_SALESFORCE__LOGIN_URL", "http://[::1]:8720");
            jail.set_env(
                "USERSYNC_SALESFORCE__MY_DOMAIN_URL",
                "https://acme.my.salesforce.com",
            );
            let config = load_in(jail, None).unwrap();
            assert!(!config.allow_insecure_endpoints);
            assert!(config.insecure_endpoints().is_empty());
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(
                "usersync.toml",
                "allow_insecure_endpoints = true\n[outreach]\napi_url = \"http://sim:1/api\"\n",
            )?;
            let config = load_in(jail, Some("usersync.toml")).unwrap();
            assert_eq!(
                config.insecure_endpoints(),
                [("outreach.api_url", "http://sim:1/api")]
            );
            Ok(())
        });
    }

    #[test]
    fn webhook_keys_come_from_the_environment_and_the_url_is_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__WEBHOOK_SECRET", "wh-s3cret");
            jail.set_env(
                "USERSYNC_OUTREACH__WEBHOOK_URL",
                "https://usersync.example.com/webhooks/outreach",
            );
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.outreach.webhook_secret.expose(), "wh-s3cret");
            assert!(!format!("{config:?}").contains("wh-s3cret"));
            assert_eq!(
                config.outreach.webhook_url,
                "https://usersync.example.com/webhooks/outreach"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__WEBHOOK_URL", "not a url");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("outreach.webhook_url"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn an_all_digit_secret_is_taken_and_never_echoed() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__CLIENT_SECRET", "123456789");
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.outreach.client_secret.expose(), "123456789");
            jail.set_env("USERSYNC_OUTREACH__CLIENT_SECRET", "true");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(!text.contains("true"), "{text}");
            Ok(())
        });
        let url = "postgres://app@db/usersync?password=pa55word&sslmode=disable";
        let shown = crate::store::redact_password(url);
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");
    }

    #[test]
    fn every_secret_librdkafka_setting_is_masked_in_dumps_and_in_its_error_text() {
        let secret = [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl_oauthbearer_config",
        ];
        let plain = [
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "ssl.ca.location",
            "ssl.certificate.location",
            "sasl.oauthbearer.token.endpoint.url",
        ];
        for key in secret {
            assert!(KafkaConfig::is_sensitive(key), "{key} is shown");
        }
        for key in plain {
            assert!(!KafkaConfig::is_sensitive(key), "{key} is masked");
        }
        let mut kafka = KafkaConfig::default();
        for (i, key) in secret.iter().enumerate() {
            kafka
                .properties
                .insert((*key).into(), format!("s3cr3t-{i}-value"));
        }
        kafka
            .properties
            .insert("sasl.username".into(), "alice".into());
        let shown = format!("{kafka:?} {}", toml::to_string(&kafka).unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        let text = kafka.mask_secrets(
            "Invalid value \"s3cr3t-0-value\" for sasl.password; s3cr3t-5-value refused for alice",
        );
        assert_eq!(
            text,
            "Invalid value \"***\" for sasl.password; *** refused for alice"
        );
    }

    #[test]
    fn kafka_section_from_file_and_environment_masks_secrets() {
        Jail::expect_with(|jail| {
            let defaults = load_in(jail, None).unwrap().kafka;
            assert_eq!(defaults, KafkaConfig::default());
            assert_eq!(defaults.brokers, "127.0.0.1:9092");
            assert_eq!(defaults.partitions, 12);
            assert_eq!(defaults.transactional_id, None);

            jail.create_file(
                "usersync.toml",
                r#"
                [kafka]
                topic = "team.user-changes"
                partitions = 3
                [kafka.properties]
                "security.protocol" = "SASL_SSL"
                "sasl.password" = "hunter22"
                "#,
            )?;
            jail.set_env("USERSYNC_KAFKA__BROKERS", "kafka-1:9093,kafka-2:9093");
            jail.set_env(
                "USERSYNC_KAFKA__TRANSACTIONAL_ID",
                "usersync-subscriber-org1",
            );
            jail.set_env("USERSYNC_KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "k3yp4ss");
            jail.set_env("USERSYNC_KAFKA__PROPERTIES__LINGER_MS", "5");
            jail.set_env(
                "USERSYNC_KAFKA__PROPERTIES__ENABLE_SSL_CERTIFICATE_VERIFICATION",
                "false",
            );
            let kafka = load_in(jail, Some("usersync.toml")).unwrap().kafka;
            assert_eq!(kafka.brokers, "kafka-1:9093,kafka-2:9093");
            assert_eq!(kafka.topic, "team.user-changes");
            assert_eq!(kafka.partitions, 3);
            assert_eq!(kafka.dead_letter_topic, "usersync.user-changes.dlq");
            assert_eq!(
                kafka.transactional_id.as_deref(),
                Some("usersync-subscriber-org1")
            );
            let properties: BTreeMap<String, &str> = kafka.client_properties().collect();
            assert_eq!(properties["security.protocol"], "SASL_SSL");
            assert_eq!(properties["sasl.password"], "hunter22");
            assert_eq!(properties["ssl.key.password"], "k3yp4ss");
            assert_eq!(properties["linger.ms"], "5");
            assert_eq!(properties["enable.ssl.certificate.verification"], "false");

            let shown = format!("{kafka:?}");
            assert!(shown.contains("SASL_SSL"), "{shown}");
            assert!(!shown.contains("hunter22"), "{shown}");
            assert!(!shown.contains("k3yp4ss"), "{shown}");
            let dumped = toml::to_string(&kafka).unwrap();
            assert!(!dumped.contains("hunter22"), "{dumped}");
            Ok(())
        });
    }

    #[test]
    fn kafka_settings_the_producer_owns_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE", "false");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("enable.idempotence"), "{text}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_KAFKA__PARTITIONS", "0");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("kafka.partitions"), "{text}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_KAFKA__BROKER", "x:9092");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("broker"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn the_processor_session_timeout_stays_in_librdkafka_range() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_PROCESSOR__SESSION_TIMEOUT_MS", "6000");
            assert_eq!(
                load_in(jail, None).unwrap().processor.session_timeout,
                Duration::from_millis(6000)
            );
            jail.set_env("USERSYNC_PROCESSOR__SESSION_TIMEOUT_MS", "500");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(
                text.contains("processor.session_timeout_ms (500)"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn page_size_is_bounded_by_outreach() {
        Jail::expect_with(|jail| {
            jail.set_env("USERSYNC_OUTREACH__PAGE_SIZE", "5000");
            let text = load_in(jail, None).unwrap_err().to_string();
            assert!(text.contains("outreach.page_size"), "{text}");
            Ok(())
        });
    }
}
