//! The Prometheus metrics of the process, served at `/metrics` by the admin server.
//!
//! One set per process, the way Prometheus sees a process: the counters live in a static
//! ([`global`]) so the part that does the work bumps its counter in one line, without every
//! constructor carrying a handle. What is a state rather than a count (each connection's state)
//! is read when the page is scraped, from the board that already holds it; the consumer lag
//! comes from librdkafka's own statistics ([`Metrics::record_lag`]). What is an age (how long
//! Salesforce has been silent, how old the newest change read is) is kept as the moment it
//! refers to and turned into seconds when the page is scraped; it is left out of the page until
//! that moment is first known, so a process that reads no stream shows no such series.
//!
//! Names follow Prometheus' conventions: `usersync_` first, counters end in `_total` (added by
//! the encoder), units in the name (`_seconds`). The text is OpenMetrics, which Prometheus
//! reads. `docs/operations.md` lists every series and what it is for.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::connection::{ConnectionState, Connections, LeaseRole, Side};
use crate::engine::decision::Action;

/// What happened to a record the processor read.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Its decisions were made, applied and recorded.
    applied,
    /// Already in the applied-event log: skipped, no Outreach call.
    duplicate,
    /// Not a `user_change.v1` event: sent to the dead-letter topic.
    dead_letter,
    /// Outreach could not take it now: tried again later.
    retry,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::applied,
        Outcome::duplicate,
        Outcome::dead_letter,
        Outcome::retry,
    ];
}

/// Where a published event came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Published {
    /// A Salesforce change event (and the re-read after a gap).
    change,
    /// A full read of every user (initial load, resync).
    snapshot,
}

/// Which connection was opened again.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Link {
    /// The subscriber's stream (Pub/Sub or CometD).
    salesforce,
    /// The processor's Outreach client.
    outreach,
    /// A Kafka client's connection to a broker.
    kafka,
}

/// Why a connection was opened again: a closed set, so the label never carries a provider's
/// text.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reconnect {
    /// The server ended the stream without an error.
    stream_closed,
    /// Nothing arrived, not even a keepalive, for the idle timeout.
    idle,
    /// Network trouble, an outage or throttling, or a failure after the stream (Kafka, the
    /// store, a REST read) that resuming from the checkpoint gets past.
    transient,
    /// The provider refused the session's token: a new one first.
    token_refused,
    /// CometD forgot the client (`403::Unknown client`): a new handshake.
    session_lost,
    /// The replay id to resume after is no longer held: the stream starts at the newest
    /// position (after a resync, by the replay policy).
    replay_unusable,
    /// An admin asked: a reconnect, a resync or a replay.
    admin,
    /// The subscriber took the lease again after standing by.
    lease,
    /// librdkafka lost a broker connection and opens it again by itself.
    broker_disconnect,
}

/// A table the retention prunes (docs/store.md, "Retention").
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PrunedTable {
    /// The decision log.
    decisions,
    /// The applied-event log.
    applied_events,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrunedLabel {
    table: PrunedTable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconnectLabel {
    side: Link,
    reason: Reconnect,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedLabel {
    kind: Published,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    side: String,
    state: String,
}

/// Every series usersync exports.
pub struct Metrics {
    registry: Registry,
    events_published: Family<PublishedLabel, Counter>,
    subscriber_dead_letters: Counter,
    processor_events: Family<OutcomeLabel, Counter>,
    record_conflicts: Counter,
    decisions: Family<ActionLabel, Counter>,
    outreach_requests: Counter,
    rate_limit_waits: Counter,
    rate_limit_wait_seconds: Counter<f64, AtomicU64>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    reconnects: Family<ReconnectLabel, Counter>,
    admin_auth_failures: Counter,
    pruned_rows: Family<PrunedLabel, Counter>,
    /// When the subscriber last heard from Salesforce (a change event or a keepalive).
    salesforce_heard: Mutex<Option<Instant>>,
    /// The commit time of the last change event the subscriber read.
    salesforce_commit: Mutex<Option<DateTime<Utc>>>,
}

/// The states a connection can be in, each exported as its own series (1 for the current one).
const STATES: [ConnectionState; 5] = [
    ConnectionState::NotConfigured,
    ConnectionState::Connecting,
    ConnectionState::Connected,
    ConnectionState::Degraded,
    ConnectionState::Disconnected,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("usersync");
        let events_published = Family::default();
        registry.register(
            "subscriber_events_published",
            "user_change.v1 events the subscriber published to Kafka",
            events_published.clone(),
        );
        let subscriber_dead_letters = Counter::default();
        registry.register(
            "subscriber_dead_letters",
            "Salesforce events the subscriber could not normalize, sent to the dead-letter topic",
            subscriber_dead_letters.clone(),
        );
        let processor_events = Family::default();
        registry.register(
            "processor_events",
            "Records the processor read from Kafka, by what became of them",
            processor_events.clone(),
        );
        let record_conflicts = Counter::default();
        registry.register(
            "processor_record_conflicts",
            "Events whose record the store refused because another replica had changed the \
             state they were decided on; each was decided again on the new state",
            record_conflicts.clone(),
        );
        let decisions = Family::default();
        registry.register(
            "decisions",
            "Decisions recorded by the processor, by action",
            decisions.clone(),
        );
        let outreach_requests = Counter::default();
        registry.register(
            "outreach_requests",
            "HTTP requests sent to Outreach (API and token endpoint, retries included)",
            outreach_requests.clone(),
        );
        let rate_limit_waits = Counter::default();
        registry.register(
            "outreach_rate_limit_waits",
            "Waits for Outreach's rate limit (the budget spent, or a 429)",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "outreach_rate_limit_wait_seconds",
            "Time spent waiting for Outreach's rate limit",
            rate_limit_wait_seconds.clone(),
        );
        let consumer_lag = Family::default();
        registry.register(
            "consumer_lag",
            "Records on the partition not yet processed by this processor (librdkafka's count)",
            consumer_lag.clone(),
        );
        // Every outcome and kind is on the page from the start, at 0: Prometheus' increase()
        // sees the first dead letter only if the series existed before it.
        for outcome in Outcome::ALL {
            let _ = processor_events.get_or_create(&OutcomeLabel { outcome });
        }
        for kind in [Published::change, Published::snapshot] {
            let _ = events_published.get_or_create(&PublishedLabel { kind });
        }
        let reconnects = Family::default();
        registry.register(
            "reconnects",
            "Connections opened again after they ended, by side and why",
            reconnects.clone(),
        );
        let admin_auth_failures = Counter::default();
        registry.register(
            "admin_auth_failures",
            "Admin API calls refused because the admin token they carried was wrong",
            admin_auth_failures.clone(),
        );
        let pruned_rows = Family::default();
        registry.register(
            "store_pruned_rows",
            "Rows the retention deleted from the decision and applied-event logs, by table",
            pruned_rows.clone(),
        );
        for table in [PrunedTable::decisions, PrunedTable::applied_events] {
            let _ = pruned_rows.get_or_create(&PrunedLabel { table });
        }
        Metrics {
            registry,
            events_published,
            subscriber_dead_letters,
            processor_events,
            record_conflicts,
            decisions,
            outreach_requests,
            rate_limit_waits,
            rate_limit_wait_seconds,
            consumer_lag,
            reconnects,
            admin_auth_failures,
            pruned_rows,
            salesforce_heard: Mutex::new(None),
            salesforce_commit: Mutex::new(None),
        }
    }

    pub fn published(&self, kind: Published, events: u64) {
        self.events_published
            .get_or_create(&PublishedLabel { kind })
            .inc_by(events);
    }

    pub fn subscriber_dead_letter(&self) {
        self.subscriber_dead_letters.inc();
    }

    pub fn processor_event(&self, outcome: Outcome) {
        self.processor_events
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn record_conflict(&self) {
        self.record_conflicts.inc();
    }

    pub fn decision(&self, action: Action) {
        self.decisions
            .get_or_create(&ActionLabel {
                action: action.as_str().to_owned(),
            })
            .inc();
    }

    pub fn outreach_request(&self) {
        self.outreach_requests.inc();
    }

    pub fn rate_limit_wait(&self, wait: std::time::Duration) {
        self.rate_limit_waits.inc();
        self.rate_limit_wait_seconds.inc_by(wait.as_secs_f64());
    }

    /// The lag librdkafka reported for the partitions this consumer fetches; the partitions it
    /// no longer reports (revoked) are dropped rather than left at their last value.
    pub fn record_lag(&self, lags: impl IntoIterator<Item = (String, i32, i64)>) {
        self.consumer_lag.clear();
        for (topic, partition, lag) in lags {
            self.consumer_lag
                .get_or_create(&PartitionLabel {
                    topic,
                    partition: partition.to_string(),
                })
                .set(lag);
        }
    }

    /// `side` was opened again, for `reason`.
    pub fn reconnect(&self, side: Link, reason: Reconnect) {
        self.reconnects(side, reason, 1);
    }

    /// `side` was opened again `times` times, for `reason` (librdkafka reports its reconnects
    /// in batches).
    pub fn reconnects(&self, side: Link, reason: Reconnect, times: u64) {
        self.reconnects
            .get_or_create(&ReconnectLabel { side, reason })
            .inc_by(times);
    }

    /// An admin API call carried a wrong admin token.
    pub fn admin_auth_failure(&self) {
        self.admin_auth_failures.inc();
    }

    /// The retention deleted `rows` rows of `table`.
    pub fn pruned(&self, table: PrunedTable, rows: u64) {
        self.pruned_rows
            .get_or_create(&PrunedLabel { table })
            .inc_by(rows);
    }

    /// The subscriber heard from Salesforce just now: a change event, or a keepalive (an empty
    /// Pub/Sub batch, a CometD long-poll that ended quietly).
    pub fn salesforce_heard(&self) {
        self.salesforce_heard_at(Instant::now());
    }

    fn salesforce_heard_at(&self, at: Instant) {
        *self
            .salesforce_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// The subscriber read a change event committed at `at`. The last one read counts, not the
    /// newest: while a replay reads old changes the lag shows how far behind it still is.
    pub fn salesforce_commit(&self, at: DateTime<Utc>) {
        *self
            .salesforce_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// The page Prometheus scrapes, with each connection's state as it is now. The states
    /// are written into a registry of this scrape alone, so two boards in one process (tests)
    /// never see each other's.
    pub fn render(&self, connections: &Connections) -> String {
        let mut now = Registry::with_prefix("usersync");
        let connection_state = Family::<ConnectionLabel, Gauge>::default();
        now.register(
            "connection_state",
            "1 for the state each connection is in, 0 for the others",
            connection_state.clone(),
        );
        for side in [Side::Salesforce, Side::Outreach] {
            let (current, _) = connections.state(side);
            for state in STATES {
                connection_state
                    .get_or_create(&ConnectionLabel {
                        side: side.as_str().to_owned(),
                        state: state.as_str().to_owned(),
                    })
                    .set(i64::from(state == current));
            }
        }
        if let Some(lease) = connections.get(Side::Salesforce).subscriber {
            let active = Family::<InstanceLabel, Gauge>::default();
            now.register(
                "subscriber_active",
                "1 while this process's subscriber streams (it holds the lease, or none is kept), \
                 0 while it stands by",
                active.clone(),
            );
            active
                .get_or_create(&InstanceLabel {
                    instance: lease.instance.clone(),
                })
                .set(i64::from(lease.role != LeaseRole::Standby));
            if let Some(epoch) = lease.epoch {
                let gauge = Gauge::<i64>::default();
                now.register(
                    "subscriber_lease_epoch",
                    "the epoch of the subscriber lease this process holds or last saw held",
                    gauge.clone(),
                );
                gauge.set(epoch);
            }
        }
        let heard = *self
            .salesforce_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(heard) = heard {
            let gauge = Gauge::<f64, AtomicU64>::default();
            now.register(
                "salesforce_silence_seconds",
                "Seconds since the subscriber last heard from Salesforce: a change event or a \
                 keepalive",
                gauge.clone(),
            );
            gauge.set(heard.elapsed().as_secs_f64());
        }
        let commit = *self
            .salesforce_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(commit) = commit {
            let gauge = Gauge::<f64, AtomicU64>::default();
            now.register(
                "salesforce_lag_seconds",
                "Seconds between now and the commit time of the last Salesforce change event \
                 the subscriber read (it grows while the org makes no change)",
                gauge.clone(),
            );
            let behind = (Utc::now() - commit).num_milliseconds().max(0);
            gauge.set(behind as f64 / 1000.0);
        }
        use prometheus_client::encoding::text;
        let mut page = String::new();
        text::encode_registry(&mut page, &self.registry)
            .and_then(|()| text::encode_registry(&mut page, &now))
            .and_then(|()| text::encode_eof(&mut page))
            .expect("writing to a String cannot fail");
        page
    }
}

/// librdkafka's running count of disconnects per broker, turned into the disconnects since its
/// previous report: what one client adds to the reconnect counter at each statistics report.
#[derive(Debug, Default)]
pub struct BrokerDisconnects {
    seen: Mutex<BTreeMap<String, i64>>,
}

impl BrokerDisconnects {
    /// Takes one report's `(broker, disconnects so far)` and returns how many are new. A broker
    /// seen for the first time counts from zero (librdkafka counts from the client's start).
    pub fn since_last(&self, brokers: impl IntoIterator<Item = (String, i64)>) -> u64 {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = 0;
        for (broker, total) in brokers {
            let before = seen.insert(broker, total).unwrap_or(0);
            new += u64::try_from(total - before).unwrap_or(0);
        }
        new
    }
}

/// The value of one series in a rendered page (`name{labels}` exactly as printed), for tests.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::DisconnectReason;

    #[test]
    fn the_page_names_every_series_with_its_help_and_the_connection_states() {
        let metrics = Metrics::new();
        metrics.published(Published::change, 3);
        metrics.processor_event(Outcome::applied);
        metrics.record_conflict();
        metrics.decision(Action::Remap);
        metrics.outreach_request();
        metrics.rate_limit_wait(std::time::Duration::from_millis(1500));
        metrics.record_lag([("usersync.user-changes.v1".to_owned(), 2, 7)]);
        metrics.pruned(PrunedTable::decisions, 40);
        metrics.pruned(PrunedTable::applied_events, 12);
        let connections = Connections::new();
        connections.disconnected(
            Side::Salesforce,
            DisconnectReason::PermissionsChanged,
            "PermissionDenied".into(),
        );
        let page = metrics.render(&connections);

        for (series, value) in [
            (
                "usersync_subscriber_events_published_total{kind=\"change\"}",
                3.0,
            ),
            ("usersync_processor_events_total{outcome=\"applied\"}", 1.0),
            ("usersync_processor_record_conflicts_total", 1.0),
            ("usersync_decisions_total{action=\"remap\"}", 1.0),
            ("usersync_outreach_requests_total", 1.0),
            (
                "usersync_store_pruned_rows_total{table=\"decisions\"}",
                40.0,
            ),
            (
                "usersync_store_pruned_rows_total{table=\"applied_events\"}",
                12.0,
            ),
            ("usersync_outreach_rate_limit_waits_total", 1.0),
            ("usersync_outreach_rate_limit_wait_seconds_total", 1.5),
            (
                "usersync_consumer_lag{topic=\"usersync.user-changes.v1\",partition=\"2\"}",
                7.0,
            ),
            (
                "usersync_connection_state{side=\"salesforce\",state=\"disconnected\"}",
                1.0,
            ),
            (
                "usersync_connection_state{side=\"salesforce\",state=\"connected\"}",
                0.0,
            ),
            (
                "usersync_connection_state{side=\"outreach\",state=\"not_configured\"}",
                1.0,
            ),
        ] {
            assert_eq!(sample(&page, series), Some(value), "{series} in\n{page}");
        }
        assert!(
            page.contains("# HELP usersync_decisions Decisions recorded by the processor"),
            "{page}"
        );
        assert!(page.ends_with("# EOF\n"), "{page}");
    }

    #[test]
    fn every_outcome_and_kind_is_on_the_page_from_the_start_at_zero() {
        let page = Metrics::new().render(&Connections::new());
        for series in [
            "usersync_processor_events_total{outcome=\"applied\"}",
            "usersync_processor_events_total{outcome=\"duplicate\"}",
            "usersync_processor_events_total{outcome=\"dead_letter\"}",
            "usersync_processor_events_total{outcome=\"retry\"}",
            "usersync_subscriber_events_published_total{kind=\"change\"}",
            "usersync_subscriber_events_published_total{kind=\"snapshot\"}",
            "usersync_store_pruned_rows_total{table=\"decisions\"}",
            "usersync_store_pruned_rows_total{table=\"applied_events\"}",
        ] {
            assert_eq!(sample(&page, series), Some(0.0), "{series} in\n{page}");
        }
    }

    #[test]
    fn the_page_says_whether_this_subscriber_streams() {
        let metrics = Metrics::new();
        let connections = Connections::new();
        let page = metrics.render(&connections);
        assert!(
            !page.contains("usersync_subscriber_active"),
            "no subscriber here"
        );
        let lease = |role| crate::connection::SubscriberLease {
            instance: "host-7".into(),
            role,
            epoch: Some(4),
            holder: Some("host-2".into()),
            expires_at: None,
        };
        connections.subscriber(lease(LeaseRole::Standby));
        let page = metrics.render(&connections);
        assert_eq!(
            sample(&page, "usersync_subscriber_active{instance=\"host-7\"}"),
            Some(0.0),
            "{page}"
        );
        connections.subscriber(lease(LeaseRole::Active));
        let page = metrics.render(&connections);
        assert_eq!(
            sample(&page, "usersync_subscriber_active{instance=\"host-7\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&page, "usersync_subscriber_lease_epoch"), Some(4.0));
    }

    #[test]
    fn salesforce_ages_appear_once_known_and_count_seconds_at_the_scrape() {
        let metrics = Metrics::new();
        let page = metrics.render(&Connections::new());
        for series in [
            "usersync_salesforce_silence_seconds",
            "usersync_salesforce_lag_seconds",
        ] {
            assert!(!page.contains(series), "nothing heard yet: {page}");
        }
        metrics.salesforce_heard_at(Instant::now() - std::time::Duration::from_secs(30));
        metrics.salesforce_commit(Utc::now() - chrono::Duration::seconds(90));
        let page = metrics.render(&Connections::new());
        let silence = sample(&page, "usersync_salesforce_silence_seconds").unwrap();
        assert!((30.0..31.0).contains(&silence), "{silence} in\n{page}");
        let lag = sample(&page, "usersync_salesforce_lag_seconds").unwrap();
        assert!((90.0..91.0).contains(&lag), "{lag} in\n{page}");

        metrics.salesforce_heard();
        // A commit time ahead of this machine's clock is no lag.
        metrics.salesforce_commit(Utc::now() + chrono::Duration::seconds(5));
        let page = metrics.render(&Connections::new());
        let silence = sample(&page, "usersync_salesforce_silence_seconds").unwrap();
        assert!(silence < 1.0, "{silence}");
        assert_eq!(sample(&page, "usersync_salesforce_lag_seconds"), Some(0.0));
    }

    #[test]
    fn reconnects_are_counted_by_side_and_reason() {
        let metrics = Metrics::new();
        metrics.reconnect(Link::salesforce, Reconnect::idle);
        metrics.reconnect(Link::salesforce, Reconnect::idle);
        metrics.reconnect(Link::salesforce, Reconnect::token_refused);
        metrics.reconnect(Link::outreach, Reconnect::admin);
        metrics.reconnects(Link::kafka, Reconnect::broker_disconnect, 3);
        let page = metrics.render(&Connections::new());
        for (series, value) in [
            ("{side=\"salesforce\",reason=\"idle\"}", Some(2.0)),
            ("{side=\"salesforce\",reason=\"token_refused\"}", Some(1.0)),
            ("{side=\"outreach\",reason=\"admin\"}", Some(1.0)),
            ("{side=\"kafka\",reason=\"broker_disconnect\"}", Some(3.0)),
            ("{side=\"outreach\",reason=\"idle\"}", None),
        ] {
            let series = format!("usersync_reconnects_total{series}");
            assert_eq!(sample(&page, &series), value, "{series} in\n{page}");
        }
        assert!(
            page.contains("# TYPE usersync_reconnects counter"),
            "{page}"
        );
    }

    #[test]
    fn broker_disconnects_count_what_is_new_since_the_last_report() {
        let tally = BrokerDisconnects::default();
        assert_eq!(
            tally.since_last([("a".to_owned(), 0), ("b".to_owned(), 2)]),
            2
        );
        assert_eq!(
            tally.since_last([("a".to_owned(), 1), ("b".to_owned(), 2)]),
            1
        );
        assert_eq!(
            tally.since_last([("a".to_owned(), 1), ("b".to_owned(), 2)]),
            0
        );
        assert_eq!(tally.since_last([("c".to_owned(), 4)]), 4, "a new broker");
        assert_eq!(
            tally.since_last([("a".to_owned(), 0)]),
            0,
            "a total that went back adds nothing"
        );
        assert_eq!(tally.since_last([("a".to_owned(), 2)]), 2);
    }

    #[test]
    fn a_revoked_partition_leaves_the_lag_series() {
        let metrics = Metrics::new();
        metrics.record_lag([("t".to_owned(), 0, 5), ("t".to_owned(), 1, 9)]);
        metrics.record_lag([("t".to_owned(), 1, 4)]);
        let page = metrics.render(&Connections::new());
        assert_eq!(
            sample(&page, "usersync_consumer_lag{topic=\"t\",partition=\"0\"}"),
            None
        );
        assert_eq!(
            sample(&page, "usersync_consumer_lag{topic=\"t\",partition=\"1\"}"),
            Some(4.0)
        );
    }
}
