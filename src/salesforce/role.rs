//! `usersync subscriber`: the role assembled from the configuration.
//!
//! Everything here is wiring — reading the key file, building the credentials of the chosen
//! flow, opening the store, setting up the Kafka topics — so that a misconfiguration is
//! reported at start, naming the key, before anything is read from Salesforce. The loop
//! itself is [`super::subscriber::Subscriber`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::auth::{SalesforceCredentials, Secret};
use super::pubsub::PubSubSettings;
use super::rest::{CredentialsTokenSource, RestRetry, SalesforceRest, TokenSource};
use super::subscriber::{CometdSubscriber, Subscriber, SubscriberSettings};
use crate::config::{Config, SalesforceAuthFlow, SalesforceConfig, Transport};
use crate::kafka::{ChangePublisher, TransactionalPublisher};

/// The credentials of the configured flow. Reads the private key file for JWT bearer.
pub fn credentials(config: &SalesforceConfig) -> anyhow::Result<SalesforceCredentials> {
    Ok(match config.auth {
        SalesforceAuthFlow::JwtBearer => {
            let pem = std::fs::read_to_string(&config.private_key_file).with_context(|| {
                format!(
                    "cannot read salesforce.private_key_file {:?}",
                    config.private_key_file
                )
            })?;
            SalesforceCredentials::JwtBearer {
                login_url: config.login_url.clone(),
                consumer_key: config.consumer_key.clone(),
                username: config.username.clone(),
                private_key_pem: Secret::new(pem),
            }
        }
        SalesforceAuthFlow::ClientCredentials => SalesforceCredentials::ClientCredentials {
            my_domain_url: config.my_domain_url.clone(),
            client_id: config.consumer_key.clone(),
            client_secret: Secret::new(config.consumer_secret.expose()),
        },
        SalesforceAuthFlow::RefreshToken => SalesforceCredentials::RefreshToken {
            login_url: config.login_url.clone(),
            client_id: config.consumer_key.clone(),
            client_secret: Some(config.consumer_secret.expose())
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            refresh_token: Secret::new(config.refresh_token.expose()),
        },
    })
}

/// The loop's settings from the configuration.
pub fn settings(config: &SalesforceConfig) -> SubscriberSettings {
    SubscriberSettings {
        topic: config.topic.clone(),
        pubsub: PubSubSettings {
            endpoint: config.pubsub_endpoint.clone(),
            keepalive_interval: Duration::from_secs(config.keepalive_seconds.max(1)),
            idle_timeout: Duration::from_secs(config.idle_timeout_seconds.max(1)),
            connect_timeout: Duration::from_secs(config.timeout_seconds.max(1)),
            ..PubSubSettings::default()
        },
        replay_policy: config.replay_policy,
        resync_margin: Duration::from_secs(config.resync_margin_seconds),
        backoff_min: Duration::from_millis(config.backoff_min_ms),
        backoff_max: Duration::from_millis(config.backoff_max_ms),
        flush_timeout: Duration::from_secs(30),
    }
}

/// Runs the subscriber until `shutdown` turns true.
pub async fn run(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let sf = &config.salesforce;
    sf.validate()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(sf.timeout_seconds.max(1)))
        .build()
        .context("building the HTTP client")?;
    let tokens = Arc::new(CredentialsTokenSource::new(http, credentials(sf)?));
    let session = tokens.session().await.context("signing in to Salesforce")?;
    tracing::info!(
        org_id = %session.org_id,
        user_id = %session.user_id,
        instance_url = %session.instance_url,
        "signed in to Salesforce"
    );
    let rest_tokens: Arc<dyn TokenSource> = tokens.clone();
    let rest = SalesforceRest::new(&session.instance_url, rest_tokens)?
        .with_api_version(&sf.api_version)?
        .with_retry(RestRetry {
            min_delay: Duration::from_millis(sf.backoff_min_ms),
            max_delay: Duration::from_millis(sf.backoff_max_ms),
            ..RestRetry::default()
        });
    let store = crate::store::open(&config.store.url)
        .await
        .context("opening the store")?;
    let publisher = Arc::new(ChangePublisher::new(&config.kafka)?);
    // With a transactional id, events and checkpoint go through one transactional producer;
    // the idempotent one still sends dead letters.
    let transactions = match &config.kafka.transactional_id {
        Some(id) => {
            let transactional = TransactionalPublisher::start(&config.kafka)
                .await
                .with_context(|| format!("starting the transactional producer {id}"))?;
            transactional
                .ensure_topics()
                .await
                .context("setting up the Kafka topics")?;
            tracing::info!(transactional_id = %id, "transactional mode: checkpoints live in Kafka");
            Some(Arc::new(transactional))
        }
        None => {
            publisher
                .ensure_topics()
                .await
                .context("setting up the Kafka topics")?;
            None
        }
    };
    match sf.transport {
        Transport::Pubsub => {
            let mut subscriber =
                Subscriber::new(settings(sf), tokens, rest, publisher, store).await?;
            if let Some(transactional) = transactions {
                subscriber = subscriber.with_transactions(transactional, config.kafka.clone());
            }
            subscriber.run(shutdown).await?;
            tracing::info!(stats = ?subscriber.stats(), "subscriber stopped");
        }
        Transport::Cometd => {
            let mut subscriber = CometdSubscriber::new(
                settings(sf),
                &sf.api_version,
                tokens,
                rest,
                publisher,
                store,
            )
            .await?;
            if let Some(transactional) = transactions {
                subscriber = subscriber.with_transactions(transactional, config.kafka.clone());
            }
            subscriber.run(shutdown).await?;
            tracing::info!(stats = ?subscriber.stats(), "subscriber stopped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flow_builds_its_credentials() {
        let mut config = SalesforceConfig {
            consumer_key: "key".into(),
            username: "integration@acme.example".into(),
            private_key_file: "/nonexistent/key.pem".into(),
            ..SalesforceConfig::default()
        };
        let err = credentials(&config).unwrap_err().to_string();
        assert!(err.contains("salesforce.private_key_file"), "{err}");

        config.auth = SalesforceAuthFlow::ClientCredentials;
        config.my_domain_url = "https://acme.my.salesforce.com".into();
        config.consumer_secret = crate::config::Secret::new("s");
        assert!(matches!(
            credentials(&config).unwrap(),
            SalesforceCredentials::ClientCredentials { my_domain_url, .. }
                if my_domain_url == "https://acme.my.salesforce.com"
        ));

        config.auth = SalesforceAuthFlow::RefreshToken;
        config.consumer_secret = crate::config::Secret::default();
        config.refresh_token = crate::config::Secret::new("r");
        assert!(matches!(
            credentials(&config).unwrap(),
            SalesforceCredentials::RefreshToken {
                client_secret: None,
                ..
            }
        ));
    }

    #[test]
    fn settings_follow_the_configuration() {
        let config = SalesforceConfig {
            idle_timeout_seconds: 120,
            replay_policy: crate::salesforce::replay::ReplayPolicy::Fail,
            ..SalesforceConfig::default()
        };
        let settings = settings(&config);
        assert_eq!(settings.pubsub.idle_timeout, Duration::from_secs(120));
        assert_eq!(
            settings.replay_policy,
            crate::salesforce::replay::ReplayPolicy::Fail
        );
        assert_eq!(settings.topic, "/data/UserChangeEvent");
    }
}
