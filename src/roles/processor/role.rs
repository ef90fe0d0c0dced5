//! `usersync processor`: the role assembled from the configuration.
//!
//! Wiring only — the Outreach client and its tokens, the store, the dead-letter producer, the
//! consumer group — so that a misconfiguration is reported at start and names the key. The
//! loop is [`super::Processor`].

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use super::Processor;
use crate::app::health::{HealthListen, Probes};
use crate::config::{Config, OutreachConfig};
use crate::connection::Connections;
use crate::connection::authorization::{OutreachAuthorization, StoredAuthorizations};
use crate::kafka::ChangePublisher;
use crate::outreach::token_file::TokenFile;
use crate::outreach::{MemoryTokenStore, OAuthTokens, OutreachClient, TokenStore};

/// The Outreach client of the configuration: tokens from `outreach.token_file` when it holds
/// some, else a first mint from `outreach.refresh_token`.
pub fn outreach_client(config: &OutreachConfig) -> anyhow::Result<OutreachClient> {
    outreach_client_with(config, None)
}

/// [`outreach_client`], starting from what a reconnect stored when there is something: its
/// refresh token wins over the token file and the configuration, and the tokens minted later
/// are kept in the vault too.
pub fn outreach_client_with(
    config: &OutreachConfig,
    stored: Option<(StoredAuthorizations, OutreachAuthorization)>,
) -> anyhow::Result<OutreachClient> {
    let (saved, store): (Option<OAuthTokens>, Arc<dyn TokenStore>) =
        if let Some((vault, stored)) = stored {
            let tokens = OAuthTokens {
                access_token: String::new(),
                refresh_token: stored.refresh_token,
                expires_at: Some(chrono::DateTime::UNIX_EPOCH),
            };
            (Some(tokens), Arc::new(vault))
        } else if config.token_file.is_empty() {
            (None, Arc::new(MemoryTokenStore::new()))
        } else {
            let file = TokenFile::new(&config.token_file);
            (
                file.load()
                    .map_err(|e| anyhow::anyhow!("outreach.token_file: {}", e.0))?,
                Arc::new(file),
            )
        };
    let tokens = match saved {
        Some(tokens) => tokens,
        None if !config.refresh_token.expose().is_empty() => OAuthTokens {
            access_token: String::new(),
            refresh_token: config.refresh_token.expose().to_owned(),
            // Expired: the first call mints an access token.
            expires_at: Some(chrono::DateTime::UNIX_EPOCH),
        },
        None => anyhow::bail!(
            "no Outreach authorization: set outreach.refresh_token (USERSYNC_OUTREACH__REFRESH_TOKEN) \
             or point outreach.token_file at saved tokens"
        ),
    };
    OutreachClient::new(config, tokens, store).context("building the Outreach client")
}

/// The processor of the configuration: the Outreach client, the store, the dead-letter
/// producer and the topics checked, the consumer group joined.
pub async fn build(config: &Config) -> anyhow::Result<Processor> {
    let outreach = outreach_client(&config.outreach)?;
    let store = crate::store::open(&config.store.url)
        .await
        .context("opening the store")?;
    build_with(config, store, outreach).await
}

/// [`build`] with the store and the Outreach client given (the demo and `usersync run` share
/// one store between roles).
pub async fn build_with(
    config: &Config,
    store: Arc<dyn crate::store::Store>,
    outreach: OutreachClient,
) -> anyhow::Result<Processor> {
    let dead_letters = Arc::new(ChangePublisher::new(&config.kafka)?);
    dead_letters
        .ensure_topics()
        .await
        .context("setting up the Kafka topics")?;
    Ok(Processor::new(config, store, outreach, dead_letters)?)
}

/// Runs the processor until `shutdown` turns true. With a health listener, also serves
/// `/healthz`, `/readyz` and `/metrics` there (no API) from the start until the processor has
/// stopped, so an orchestrator's probes and Prometheus see a replica that runs alone.
pub async fn run(
    config: &Config,
    health: &HealthListen,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let outreach = outreach_client(&config.outreach)?;
    let store = crate::store::open(&config.store.url)
        .await
        .context("opening the store")?;
    let connections = Connections::new();
    let probes = health
        .start(
            Probes::alive()
                .with_store(store.clone())
                .with_metrics(connections.clone()),
        )
        .await?;
    let ran = async {
        let mut processor = build_with(config, store, outreach)
            .await?
            .with_connections(connections);
        processor.run(shutdown).await?;
        anyhow::Ok(())
    }
    .await;
    probes.stop().await?;
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_any_authorization_the_error_names_the_keys() {
        let error = outreach_client(&OutreachConfig::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("outreach.refresh_token"), "{error}");
        assert!(error.contains("outreach.token_file"), "{error}");
    }
}
