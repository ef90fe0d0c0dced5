//! `usersync run`: every role in one process.
//!
//! The subscriber, the processor and the admin server share the shutdown signal and the
//! store; each behaves as it does alone (`docs/subscriber.md`, `docs/processor.md`). When one
//! role stops with an error the others are stopped too, and the error is reported: a process
//! that runs only half of the pipeline would look healthy while changes pile up.

use tokio::sync::watch;

use crate::config::Config;

/// Runs every role until `shutdown` turns true or one of them fails.
pub async fn run(config: &Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let store = crate::store::open(&config.store.url).await?;
    let outreach = crate::processor::role::outreach_client(&config.outreach)?;
    let webhooks = webhook_routes(config, &outreach).await?;
    let mut processor = crate::processor::role::build_with(config, store.clone(), outreach).await?;
    let admin = match config.admin.listen.trim() {
        "" => None,
        listen => {
            let listen = listen
                .parse()
                .map_err(|e| anyhow::anyhow!("admin.listen {listen:?} is not host:port: {e}"))?;
            Some(crate::admin::bind(listen).await?)
        }
    };
    if let Some(admin) = &admin {
        tracing::info!(address = %admin.local_addr()?, "admin server listening");
    }
    let mut roles = tokio::task::JoinSet::new();
    {
        let stopped = stopped.clone();
        roles.spawn(async move {
            (
                "processor",
                processor.run(stopped).await.map_err(anyhow::Error::from),
            )
        });
    }
    {
        let config = config.clone();
        let stopped = stopped.clone();
        roles.spawn(async move {
            (
                "subscriber",
                crate::salesforce::role::run(&config, stopped).await,
            )
        });
    }
    if let Some(admin) = admin {
        let mut router = crate::admin::router(crate::admin::AdminState { store });
        if let Some(webhooks) = webhooks {
            router = router.merge(webhooks);
        }
        let stopped = stopped.clone();
        roles.spawn(async move {
            (
                "admin server",
                crate::admin::serve(admin, router, stopped)
                    .await
                    .map_err(anyhow::Error::from),
            )
        });
    }
    let mut first_error = None;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {
                let _ = stop.send(true);
                break;
            }
            finished = roles.join_next() => match finished {
                None => break,
                Some(Ok((role, Ok(())))) => tracing::info!(role, "role stopped"),
                Some(Ok((role, Err(error)))) => {
                    tracing::error!(role, error = %format!("{error:#}"), "role failed; stopping the others");
                    first_error.get_or_insert(error.context(format!("the {role} failed")));
                    let _ = stop.send(true);
                    break;
                }
                Some(Err(panic)) => {
                    first_error.get_or_insert(anyhow::anyhow!("a role panicked: {panic}"));
                    let _ = stop.send(true);
                    break;
                }
            }
        }
    }
    while let Some(finished) = roles.join_next().await {
        if let Ok((role, Err(error))) = finished {
            first_error.get_or_insert(error.context(format!("the {role} failed")));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The Outreach webhook receiver, when `outreach.webhook_secret` is set: its events go to the
/// event topic, its refusals to the dead-letter topic. With `outreach.webhook_url` set too, the
/// webhook is registered with Outreach (once: a registration to that URL is kept).
async fn webhook_routes(
    config: &Config,
    outreach: &crate::outreach::OutreachClient,
) -> anyhow::Result<Option<axum::Router>> {
    use std::sync::Arc;

    use crate::outreach::webhooks::receiver::{KafkaSink, WebhookReceiver};
    use crate::outreach::webhooks::registration::NewWebhook;

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
