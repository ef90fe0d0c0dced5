//! What every Kafka client usersync makes has in common: the brokers and the operator's
//! librdkafka settings (TLS, SASL, …), errors that never show a secret, and a first contact
//! at start that says why the brokers cannot be reached.
//!
//! librdkafka connects lazily and retries for ever, so a wrong certificate authority or a
//! refused SASL login shows only as a timeout, long after start, unless someone asks. Here
//! [`reach`] asks once at start and reports the broker's own complaint (librdkafka's error
//! callback names the broker and the TLS or SASL problem). TLS and SASL failures end the wait
//! at once: they do not cure themselves.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

/// The brokers and the operator's `kafka.properties`, which every client starts from; callers
/// add their own settings after, so none of the fixed ones can be weakened.
pub(crate) fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in config.client_properties() {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.brokers);
    client
}

/// Creates a client. librdkafka's refusal of a setting quotes the value it refused, so the
/// values of sensitive `kafka.properties` are masked in the error.
pub(crate) fn create<T: FromClientConfig>(
    config: &KafkaConfig,
    client: &ClientConfig,
) -> Result<T, KafkaError> {
    client.create().map_err(|e| masked(config, e))
}

/// [`create`] with a context.
pub(crate) fn create_with_context<C: ClientContext, T: FromClientConfigAndContext<C>>(
    config: &KafkaConfig,
    client: &ClientConfig,
    context: C,
) -> Result<T, KafkaError> {
    client
        .create_with_context(context)
        .map_err(|e| masked(config, e))
}

/// The error with every sensitive setting's value replaced; only the variants that carry
/// librdkafka's text can hold one.
fn masked(config: &KafkaConfig, error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientCreation(text) => KafkaError::ClientCreation(config.mask_secrets(&text)),
        KafkaError::ClientConfig(kind, description, key, value) => {
            let value = if KafkaConfig::is_sensitive(&key) {
                "***".to_owned()
            } else {
                config.mask_secrets(&value)
            };
            KafkaError::ClientConfig(kind, config.mask_secrets(&description), key, value)
        }
        other => other,
    }
}

/// Why the brokers did not answer at start.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("cannot create a Kafka client for brokers {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("Kafka brokers {brokers} refused the connection: {complaint}")]
    Refused { brokers: String, complaint: String },
    #[error("no Kafka broker of {brokers} answered within {waited:?}: {complaint}")]
    Silent {
        brokers: String,
        waited: Duration,
        complaint: String,
    },
}

/// Keeps librdkafka's last complaint about the brokers (its error callback), so a failed first
/// contact can say what went wrong instead of only that it timed out.
#[derive(Default)]
struct BrokerComplaints {
    last: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl BrokerComplaints {
    fn last(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ClientContext for BrokerComplaints {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((code, reason.to_owned()));
        }
    }
}

impl ConsumerContext for BrokerComplaints {}

/// Whether a complaint is one that waiting does not cure: a failed TLS handshake (certificate
/// authority, host name, client certificate) or a refused SASL login.
fn is_final(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication
    )
}

/// Asks the brokers for the cluster's metadata, for at most `config.message_timeout_ms`: Ok
/// once one answers; a TLS or SASL failure at once; otherwise the last complaint at the end.
pub async fn reach(config: &KafkaConfig) -> Result<(), ReachError> {
    let consumer: BaseConsumer<BrokerComplaints> =
        create_with_context(config, &base_config(config), BrokerComplaints::default()).map_err(
            |source| ReachError::Client {
                brokers: config.brokers.clone(),
                source: Box::new(source),
            },
        )?;
    let timeout = config.message_timeout;
    let brokers = config.brokers.clone();
    let masked = config.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            let step = Duration::from_millis(500).min(timeout);
            let answer = consumer.fetch_metadata(None, step);
            // Errors reach the context only while the client is polled; it has no
            // subscription, so this serves callbacks and returns no message.
            let _ = consumer.poll(Duration::ZERO);
            let complaint = consumer.context().last();
            if answer.is_ok() {
                return Ok(());
            }
            if let Some((code, text)) = &complaint
                && is_final(*code)
            {
                return Err(ReachError::Refused {
                    brokers,
                    complaint: masked.mask_secrets(text),
                });
            }
            if started.elapsed() >= timeout {
                let complaint = match (complaint, answer) {
                    (Some((_, text)), _) => masked.mask_secrets(&text),
                    (None, Err(e)) => e.to_string(),
                    (None, Ok(_)) => unreachable!("an answer returned above"),
                };
                return Err(ReachError::Silent {
                    brokers,
                    waited: started.elapsed(),
                    complaint,
                });
            }
        }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::BaseProducer;

    fn config(brokers: &str, properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            message_timeout: Duration::from_millis(2_000),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn extra_properties_cannot_displace_the_brokers() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("bootstrap.servers".into(), "elsewhere:9092".into());
        // From the environment, where a name cannot hold a dot.
        config
            .properties
            .insert("security_protocol".into(), "SSL".into());
        config.brokers = "here:9092".into();
        let client = base_config(&config);
        assert_eq!(client.get("bootstrap.servers"), Some("here:9092"));
        assert_eq!(client.get("security.protocol"), Some("SSL"));
    }

    #[test]
    fn a_refused_setting_never_shows_a_secret_value() {
        // librdkafka quotes a value it cannot take; this one is a sensitive setting's.
        let secret = "hunter2-not-a-number";
        let config = config(
            "127.0.0.1:1",
            &[("sasl.password", secret), ("socket.timeout.ms", secret)],
        );
        let Err(error) = create::<BaseProducer>(&config, &base_config(&config)) else {
            panic!("librdkafka took a text as a number");
        };
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("socket.timeout.ms"), "{shown}");
        assert!(!shown.contains(secret), "the secret shows: {shown}");
    }

    #[tokio::test]
    async fn reaching_a_cluster_that_answers_succeeds() {
        let cluster = MockCluster::new(1).unwrap();
        reach(&config(&cluster.bootstrap_servers(), &[]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_broker_that_never_answers_is_reported_with_librdkafkas_complaint() {
        // Nothing listens on a port bound and dropped just now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let brokers = format!("127.0.0.1:{port}");
        let error = reach(&config(&brokers, &[])).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ReachError::Silent { .. }), "{text}");
        assert!(text.contains(&brokers), "{text}");
    }
}
