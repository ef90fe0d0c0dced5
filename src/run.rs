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
        let router = crate::admin::router(crate::admin::AdminState { store });
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
