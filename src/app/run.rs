//! `usersync run`: every role in one process.
//!
//! The subscriber, the processor and the admin server share the shutdown signal, the store
//! and the connections' board (the roles report, the admin server shows and asks for
//! reconnects); each behaves as it does alone (`docs/subscriber.md`, `docs/processor.md`). When one
//! role stops with an error the others are stopped too, and the error is reported: a process
//! that runs only half of the pipeline would look healthy while changes pile up. After the
//! stop signal every role gets `run.shutdown_timeout_seconds` in all; one still busy then is
//! abandoned and named, and the process exits 1 — an orchestrator's SIGKILL would come anyway,
//! and this way the log says which role held the shutdown up.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use anyhow::Context;

use crate::app::health::{HealthListen, Probes};
use crate::connection::authorization::{OutreachAuthorization, StoredAuthorizations};
use crate::connection::{Connections, Side};

/// Runs every role until `shutdown` turns true or one of them fails. With a health listener,
/// also serves `/healthz`, `/readyz` and `/metrics` there (no API) until every role stopped.
pub async fn run(
    config: &Config,
    health: &HealthListen,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let store = crate::store::open(&config.store.url).await?;
    let connections = Connections::new();
    let probes = health
        .start(
            Probes::alive()
                .with_store(store.clone())
                .with_metrics(connections.clone()),
        )
        .await?;
    let ran = run_roles(config, store, connections, shutdown).await;
    probes.stop().await?;
    ran
}

async fn run_roles(
    config: &Config,
    store: std::sync::Arc<dyn crate::store::Store>,
    connections: Connections,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let authorizations = StoredAuthorizations::from_config(store.clone(), &config.secrets)?;
    let stored_outreach = authorizations
        .load::<OutreachAuthorization>(Side::Outreach)
        .await
        .context("reading the Outreach authorization a reconnect stored")?
        .map(|stored| (authorizations.clone(), stored));
    let outreach =
        crate::roles::processor::role::outreach_client_with(&config.outreach, stored_outreach)?;
    let webhooks = webhook_routes(config, &outreach).await?;
    let outreach_for_checks = outreach.clone();
    let mut processor = crate::roles::processor::role::build_with(config, store.clone(), outreach)
        .await?
        .with_connections(connections.clone())
        .with_authorizations(authorizations.clone());
    let tokens = crate::admin::tokens::configured(&config.admin).map_err(anyhow::Error::msg)?;
    let admin = match config.admin.listen.trim() {
        "" => None,
        listen => {
            let listen = listen
                .parse()
                .map_err(|e| anyhow::anyhow!("admin.listen {listen:?} is not host:port: {e}"))?;
            Some(crate::admin::bind(listen, &tokens).await?)
        }
    };
    let addresses = match &admin {
        Some(admin) => {
            let local = admin.local_addr()?;
            tracing::info!(address = %local, "admin server listening");
            crate::admin::AdminAddresses::new(
                local,
                &config.admin.public_url,
                &config.admin.allowed_hosts,
            )
            .map_err(anyhow::Error::msg)?
        }
        None => Default::default(),
    };
    let decisions = processor.decision_feed();
    let mut roles = Roles::default();
    roles.spawn("processor", {
        let stopped = stopped.clone();
        async move { processor.run(stopped).await.map_err(anyhow::Error::from) }
    });
    roles.spawn("subscriber", {
        let config = config.clone();
        let connections = connections.clone();
        let authorizations = authorizations.clone();
        let stopped = stopped.clone();
        async move {
            crate::roles::subscriber::role::run_with(
                &config,
                &connections,
                Some(&authorizations),
                stopped,
            )
            .await
        }
    });
    let state = crate::admin::AdminState {
        store,
        connections,
        authorizations: Some(authorizations),
        decisions: Some(decisions),
        config: Some(std::sync::Arc::new(config.clone())),
        outreach: Some(outreach_for_checks),
        tokens: tokens.into(),
        pending: Default::default(),
        actions: Default::default(),
        addresses,
    };
    roles.spawn(
        "connection checks",
        crate::admin::checks::follow(state.clone(), stopped.clone()),
    );
    if let Some(admin) = admin {
        let mut router = crate::admin::router(state);
        if let Some(webhooks) = webhooks {
            router = router.merge(webhooks);
        }
        let stopped = stopped.clone();
        roles.spawn("admin server", async move {
            crate::admin::serve(admin, router, stopped)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    let failure = roles.first_failure(&mut shutdown).await;
    let _ = stop.send(true);
    let bound = config.run.shutdown_timeout;
    let stopping = roles.stop_within(bound).await;
    match failure {
        Some(failure) => Err(failure),
        None => stopping,
    }
}

/// The roles of one process, each named, so a failure or a role that will not stop is
/// reported by name.
#[derive(Default)]
pub(crate) struct Roles {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Roles {
    pub(crate) fn spawn<F>(&mut self, name: &'static str, role: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(role);
        self.names.insert(handle.id(), name);
    }

    /// Waits until `shutdown` turns true or a role fails (an error or a panic); returns the
    /// failure. A role that ends cleanly on its own is logged and the others go on.
    pub(crate) async fn first_failure(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<anyhow::Error> {
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return None,
                finished = self.tasks.join_next_with_id() => {
                    let (name, result) = match finished {
                        None => return None,
                        Some(Ok((id, result))) => (self.take_name(id), result),
                        Some(Err(panic)) => (
                            self.take_name(panic.id()),
                            Err(anyhow::anyhow!("it panicked: {panic}")),
                        ),
                    };
                    match result {
                        Ok(()) => tracing::info!(role = name, "role stopped"),
                        Err(error) => {
                            tracing::error!(role = name, error = %format!("{error:#}"), "role failed; stopping the others");
                            return Some(error.context(format!("the {name} failed")));
                        }
                    }
                }
            }
        }
    }

    /// Waits for every role to end (they have been told to stop), at most `bound` in all. A
    /// role still running at the bound is aborted: the error names it.
    pub(crate) async fn stop_within(mut self, bound: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut first_error = None;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(Ok((id, result)))) => {
                    let name = self.take_name(id);
                    if let Err(error) = result {
                        first_error.get_or_insert(error.context(format!("the {name} failed")));
                    }
                }
                Ok(Some(Err(panic))) => {
                    let name = self.take_name(panic.id());
                    first_error.get_or_insert(anyhow::anyhow!("the {name} panicked: {panic}"));
                }
                Err(_) => {
                    let mut busy: Vec<&str> = self.names.values().copied().collect();
                    busy.sort_unstable();
                    tracing::error!(roles = ?busy, ?bound, "roles did not stop in time; abandoning them");
                    self.tasks.abort_all();
                    return Err(anyhow::anyhow!(
                        "{} did not stop within {bound:?} (run.shutdown_timeout_seconds); what \
                         was not committed is read again at the next start",
                        busy.join(", "),
                    ));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn take_name(&mut self, id: tokio::task::Id) -> &'static str {
        self.names.remove(&id).unwrap_or("role")
    }
}

/// The Outreach webhook receiver, when `outreach.webhook_secret` is set: its events go to the
/// event topic, its refusals to the dead-letter topic. With `outreach.webhook_url` set too, the
/// webhook is registered with Outreach (once: a registration to that URL is kept).
async fn webhook_routes(
    config: &Config,
    outreach: &crate::outreach::OutreachClient,
) -> anyhow::Result<Option<axum::Router>> {
    use std::sync::Arc;

    use crate::outreach::webhooks::registration::NewWebhook;
    use crate::roles::webhook_receiver::{KafkaSink, WebhookReceiver};

    let secret = &config.outreach.webhook_secret;
    if secret.expose().is_empty() {
        return Ok(None);
    }
    let publisher = Arc::new(crate::kafka::ChangePublisher::new(&config.kafka)?);
    let receiver = WebhookReceiver::new(
        secret.clone(),
        Arc::new(KafkaSink::new(publisher)),
        Arc::new(outreach.clone()),
    )?;
    if !config.outreach.webhook_url.is_empty() {
        let url = url::Url::parse(&config.outreach.webhook_url)?;
        let registered = outreach
            .ensure_webhook(&NewWebhook::users(url, secret.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("registering the Outreach webhook: {e}"))?;
        tracing::info!(
            created = registered.value.created,
            url = %config.outreach.webhook_url,
            "Outreach webhook registered"
        );
    }
    Ok(Some(receiver.router()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roles_that_stop_when_told_end_cleanly() {
        let (stop, stopped) = watch::channel(false);
        let mut roles = Roles::default();
        for name in ["one", "two"] {
            let mut stopped = stopped.clone();
            roles.spawn(name, async move {
                let _ = stopped.wait_for(|s| *s).await;
                Ok(())
            });
        }
        let (shutdown_tx, mut shutdown) = watch::channel(false);
        shutdown_tx.send(true).unwrap();
        assert!(roles.first_failure(&mut shutdown).await.is_none());
        stop.send(true).unwrap();
        roles.stop_within(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_role_is_reported_by_name() {
        let mut roles = Roles::default();
        roles.spawn("processor", async {
            Err(anyhow::anyhow!("Outreach is gone"))
        });
        roles.spawn("subscriber", std::future::pending());
        let (_shutdown_tx, mut shutdown) = watch::channel(false);
        let failure = roles.first_failure(&mut shutdown).await.unwrap();
        assert_eq!(
            format!("{failure:#}"),
            "the processor failed: Outreach is gone"
        );
    }

    #[tokio::test]
    async fn a_role_that_will_not_stop_is_abandoned_at_the_bound_and_named() {
        let mut roles = Roles::default();
        roles.spawn("admin server", async { Ok(()) });
        roles.spawn("subscriber", std::future::pending());
        let error = roles
            .stop_within(Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("subscriber did not stop within 200ms"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_role_that_panics_while_stopping_is_an_error() {
        let mut roles = Roles::default();
        roles.spawn("processor", async { panic!("boom") });
        let error = roles
            .stop_within(Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("the processor panicked"), "{error}");
    }
}
