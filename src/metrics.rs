//! The Prometheus metrics of the process, served at `/metrics` by the admin server.
//!
//! One set per process, the way Prometheus sees a process: the counters live in a static
//! ([`global`]) so the part that does the work bumps its counter in one line, without every
//! constructor carrying a handle. What is a state rather than a count (each connection's state)
//! is read when the page is scraped, from the board that already holds it; the consumer lag
//! comes from librdkafka's own statistics ([`Metrics::record_lag`]).
//!
//! Names follow Prometheus' conventions: `usersync_` first, counters end in `_total` (added by
//! the encoder), units in the name (`_seconds`). The text is OpenMetrics, which Prometheus
//! reads. `docs/operations.md` lists every series and what it is for.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

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

/// Where a published event came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Published {
    /// A Salesforce change event (and the re-read after a gap).
    change,
    /// A full read of every user (initial load, resync).
    snapshot,
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
        use prometheus_client::encoding::text;
        let mut page = String::new();
        text::encode_registry(&mut page, &self.registry)
            .and_then(|()| text::encode_registry(&mut page, &now))
            .and_then(|()| text::encode_eof(&mut page))
            .expect("writing to a String cannot fail");
        page
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
