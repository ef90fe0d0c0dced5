//! `usersync subscriber`: the role assembled from the configuration.
//!
//! Everything here is wiring — reading the key file, building the credentials of the chosen
//! flow, opening the store, setting up the Kafka topics — so that a misconfiguration is
//! reported at start, naming the key, before anything is read from Salesforce. The loop
//! itself is [`crate::roles::subscriber::Subscriber`].
//!
//! Around it sits the supervision of the Salesforce connection ([`run_with`]): sign in, read
//! who the authorization belongs to, stream; on a failure decide by its
//! [`Verdict`](crate::connection::Verdict). Transient trouble is retried with backoff while the
//! state says `degraded`; a failure only an admin can fix marks the side `disconnected` with its
//! reason and parks the role until an admin asks for a reconnect — the rest of the process goes
//! on, and the stream resumes from its checkpoint, so nothing changed meanwhile is lost. Run
//! alone ([`run`]), with no admin surface to ask for a reconnect, the subscriber exits with the
//! reason instead, for the orchestrator to report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::app::health::{HealthListen, Probes};
use crate::config::{Config, SalesforceAuthFlow, SalesforceConfig, Transport};
use crate::connection::authorization::{SalesforceAuthorization, StoredAuthorizations};
use crate::connection::{
    AuthorizedIdentity, ConnectionFailure, ConnectionState, Connections, DisconnectReason, Side,
    Verdict,
};
use crate::kafka::{ChangePublisher, TransactionalPublisher};
use crate::metrics::{Link, Reconnect};
use crate::roles::subscriber::lease::{self, Fence, Held, LeaseSettings};
use crate::roles::subscriber::{
    CometdSubscriber, ReplayRequest, StreamStart, Subscriber, SubscriberError,
};
use crate::salesforce::auth::{SalesforceAuthError, SalesforceCredentials, Secret};
use crate::salesforce::replay_from::ReplayFrom;
use crate::salesforce::rest::{CredentialsTokenSource, RestRetry, SalesforceRest, TokenSource};

/// The credentials to sign in with: the configured ones, with what a reconnect stored laid
/// over them (a new secret, another username, a key given as PEM, a refresh token).
pub fn credentials_with(
    config: &SalesforceConfig,
    stored: Option<&SalesforceAuthorization>,
) -> anyhow::Result<SalesforceCredentials> {
    let Some(stored) = stored else {
        return credentials(config);
    };
    let mut sf = config.clone();
    sf.auth = stored.flow;
    if let Some(key) = &stored.consumer_key {
        sf.consumer_key = key.clone();
    }
    if let Some(secret) = &stored.consumer_secret {
        sf.consumer_secret = crate::config::Secret::new(secret.clone());
    }
    if let Some(username) = &stored.username {
        sf.username = username.clone();
    }
    if let Some(token) = &stored.refresh_token {
        sf.refresh_token = crate::config::Secret::new(token.clone());
    }
    match (&stored.private_key_pem, sf.auth) {
        (Some(pem), SalesforceAuthFlow::JwtBearer) => Ok(SalesforceCredentials::JwtBearer {
            login_url: sf.login_url.clone(),
            consumer_key: sf.consumer_key.clone(),
            username: sf.username.clone(),
            private_key_pem: Secret::new(pem.clone()),
        }),
        _ => credentials(&sf),
    }
}

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

/// Runs the subscriber alone until `shutdown` turns true; a failure only an admin can fix
/// ends it with the reason. With a health listener, also serves `/healthz` and `/metrics`
/// there until the subscriber has stopped.
pub async fn run(
    config: &Config,
    health: &HealthListen,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connections = Connections::new();
    let probes = health
        .start(Probes::alive().with_metrics(connections.clone()))
        .await?;
    let ran = supervise(config, &connections, None, false, shutdown).await;
    probes.stop().await?;
    ran
}

/// Runs the subscriber until `shutdown` turns true, reporting the Salesforce connection on
/// `connections` and waiting there for a reconnect when only an admin can help. Each sign-in
/// uses what the last reconnect stored in `authorizations`, if anything.
pub async fn run_with(
    config: &Config,
    connections: &Connections,
    authorizations: Option<&StoredAuthorizations>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    supervise(config, connections, authorizations, true, shutdown).await
}

async fn supervise(
    config: &Config,
    connections: &Connections,
    authorizations: Option<&StoredAuthorizations>,
    park: bool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sf = &config.salesforce;
    sf.validate()?;
    let mut reconnects = connections.reconnect_requests(Side::Salesforce);
    let mut resyncs = connections.resync_requests();
    resyncs.borrow_and_update();
    let mut replays = connections.replay_requests();
    replays.borrow_and_update();
    let mut delays = retry_delays(sf);
    let mut full_read = None;
    // An admin's replay, honoured by every attempt until one saves a checkpoint from there.
    let mut replay: Option<ReplayRequest> = None;
    let leasing = Leasing::for_config(config).await?;
    if leasing.is_none() {
        connections.subscriber(lease::unleased(config.subscriber.instance()));
    }
    let mut held: Option<Held> = None;
    // Why the next attempt signs in again; `None` for the first.
    let mut again: Option<Reconnect> = None;
    loop {
        // Only the instance holding the lease streams; the others stand by here.
        if let Some(leasing) = &leasing
            && held.as_ref().is_none_or(|h| *h.lost().borrow())
        {
            drop(held.take());
            match lease::acquire(
                leasing.store.clone(),
                &leasing.settings,
                connections,
                shutdown.clone(),
            )
            .await
            .context("taking the subscriber lease")?
            {
                Some(taken) => held = Some(taken),
                None => return Ok(()),
            }
        }
        if let Some(reason) = again.take() {
            crate::metrics::global().reconnect(Link::salesforce, reason);
        }
        // Requests from before this attempt are answered by it; one made while it runs (or
        // while it stops) reconnects at once.
        reconnects.borrow_and_update();
        connections.connecting(Side::Salesforce);
        let (stop, stopping) = stop_signal(
            connections,
            resyncs.clone(),
            reconnects.clone(),
            replays.clone(),
            shutdown.clone(),
            held.as_ref().map(Held::lost),
        );
        let attempted = full_read.take();
        replay = replay.filter(ReplayRequest::is_pending);
        let fence = held.as_ref().map(Held::fence);
        let result = stream(
            config,
            connections,
            authorizations,
            Attempt {
                full_read: attempted,
                replay: replay.clone(),
                fence,
            },
            stopping,
        )
        .await;
        stop.abort();
        if *shutdown.borrow() {
            if let (Some(taken), Some(leasing)) = (held.take(), &leasing) {
                taken.release(&*leasing.store).await;
            }
            return match result {
                // An attempt that met a connection problem while the process stops: the board
                // has it; the role stops cleanly.
                Err(error) if verdict_of(&error) != Verdict::Unaffected => {
                    tracing::info!(error = %format!("{error:#}"), "Salesforce attempt ended by the stop");
                    Ok(())
                }
                other => other,
            };
        }
        let lease_lost = held.as_ref().is_some_and(|h| *h.lost().borrow())
            || result.as_ref().is_err_and(|error| {
                matches!(
                    error.downcast_ref::<SubscriberError>(),
                    Some(SubscriberError::LeaseLost(_))
                )
            });
        if lease_lost {
            // Another instance streams now (or may at any moment): stand by, and keep what an
            // admin asked of this attempt for when the lease comes back. A replay is not kept:
            // the instance taking over resumes from the shared checkpoint, and a position asked
            // for now means something else by the time the lease comes back; it is asked again
            // of the active instance.
            tracing::warn!("the subscriber lost its lease: it stopped publishing and stands by");
            again = Some(Reconnect::lease);
            full_read = attempted;
            drop(held.take());
            let unanswered = replays.has_changed().unwrap_or(false);
            let asked = replays.borrow_and_update().clone();
            let dropped = replay
                .take()
                .and_then(|r| r.pending())
                .or(asked.filter(|_| unanswered));
            if let Some(from) = dropped {
                tracing::warn!(
                    from = %from.render(sf.transport),
                    "the replay an admin asked for was not carried out: the lease was lost \
                     first; ask the active instance again"
                );
            }
            continue;
        }
        if replays.has_changed().unwrap_or(false) && result.is_ok() {
            // An admin asked to replay from elsewhere: the stream stopped cleanly to start
            // there.
            if let Some(from) = replays.borrow_and_update().clone() {
                tracing::info!(
                    from = %from.render(sf.transport),
                    "replay asked by an admin: the stream starts again from there"
                );
                replay = Some(ReplayRequest::new(from));
            }
            again = Some(Reconnect::admin);
            continue;
        }
        if resyncs.has_changed().unwrap_or(false) && result.is_ok() {
            // An admin asked for a resync: the stream stopped cleanly to start over with a
            // full read.
            resyncs.borrow_and_update();
            tracing::info!("resync asked by an admin: reading every Salesforce user again");
            full_read = Some("an admin asked for a resync");
            again = Some(Reconnect::admin);
            continue;
        }
        if reconnects.has_changed().unwrap_or(false) && result.is_ok() {
            // An admin asked for a reconnect while the stream ran (new credentials, or the
            // identity and permissions read again): sign in again at once.
            tracing::info!("reconnect asked by an admin: signing in to Salesforce again");
            if sf.full_read_on_reconnect {
                full_read = Some("salesforce.full_read_on_reconnect");
            }
            delays = retry_delays(sf);
            again = Some(Reconnect::admin);
            continue;
        }
        let disconnected = match result {
            // The stream only ends on its own when an admin disconnected Salesforce.
            Ok(()) => {
                tracing::info!("Salesforce disconnected by an admin: the subscriber waits");
                true
            }
            Err(error) => match verdict_of(&error) {
                Verdict::Unaffected => return Err(error),
                Verdict::Degraded => {
                    connections.degraded(Side::Salesforce, format!("{error:#}"));
                    again = Some(Reconnect::transient);
                    // A full read that failed half-way is tried again with the stream.
                    full_read = attempted;
                    let delay = delays.next().unwrap_or(sf.backoff_max);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    }
                    false
                }
                Verdict::Disconnected(reason) => {
                    connections.disconnected(Side::Salesforce, reason, format!("{error:#}"));
                    if !park {
                        return Err(error.context(format!(
                            "Salesforce is disconnected ({reason}): {}",
                            reason.advice(Side::Salesforce)
                        )));
                    }
                    true
                }
            },
        };
        if disconnected {
            tokio::select! {
                changed = reconnects.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
            again = Some(Reconnect::admin);
            if sf.full_read_on_reconnect {
                tracing::info!("reconnecting to Salesforce; reading every user again first");
                full_read = Some("salesforce.full_read_on_reconnect");
            } else {
                tracing::info!(
                    "reconnecting to Salesforce; the stream resumes from its checkpoint"
                );
            }
            delays = retry_delays(sf);
        }
    }
}

/// Waits between attempts after transient failures: capped exponential with jitter.
fn retry_delays(sf: &SalesforceConfig) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(sf.backoff_min)
        .with_max_delay(sf.backoff_max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A stop signal for one attempt: true at shutdown, when an admin disconnects Salesforce, when
/// an admin asks for a resync (the attempt ends cleanly and the next one reads all), for a
/// reconnect (the next attempt signs in again, with what the reconnect stored), or for a
/// replay (the next attempt starts where the admin asked).
fn stop_signal(
    connections: &Connections,
    mut resyncs: watch::Receiver<u64>,
    mut reconnects: watch::Receiver<u64>,
    mut replays: watch::Receiver<Option<ReplayFrom>>,
    mut shutdown: watch::Receiver<bool>,
    lease_lost: Option<watch::Receiver<bool>>,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let mut side = connections.watch(Side::Salesforce);
    let task = tokio::spawn(async move {
        let lost = async {
            match lease_lost {
                Some(mut lost) => {
                    let _ = lost.wait_for(|l| *l).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = side.wait_for(|c| c.state == ConnectionState::Disconnected
                && c.reason == Some(DisconnectReason::Manual)) => {}
            Ok(()) = resyncs.changed() => {}
            Ok(()) = reconnects.changed() => {}
            Ok(()) = replays.changed() => {}
            () = lost => {}
        }
        let _ = tx.send(true);
    });
    (task, rx)
}

/// The lease, when instances share the store: PostgreSQL. On SQLite (one machine) the
/// subscriber streams without one.
struct Leasing {
    store: Arc<dyn crate::store::Store>,
    settings: LeaseSettings,
}

impl Leasing {
    async fn for_config(config: &Config) -> anyhow::Result<Option<Leasing>> {
        let instance = config.subscriber.instance();
        let url = &config.store.url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Ok(None);
        }
        let store = crate::store::open(url)
            .await
            .context("opening the store that holds the subscriber lease")?;
        Ok(Some(Leasing {
            store,
            settings: LeaseSettings::for_topic(
                &config.salesforce.topic,
                instance,
                config.subscriber.lease,
            ),
        }))
    }
}

/// What an attempt's error means for the Salesforce connection.
fn verdict_of(error: &anyhow::Error) -> Verdict {
    if let Some(error) = error.downcast_ref::<SubscriberError>() {
        return error.verdict();
    }
    if let Some(error) = error.downcast_ref::<SalesforceAuthError>() {
        return error.verdict();
    }
    if let Some(error) = error.downcast_ref::<crate::salesforce::rest::SalesforceRestError>() {
        return error.verdict();
    }
    if let Some(error) = error.downcast_ref::<crate::salesforce::pubsub::PubSubError>() {
        return error.verdict();
    }
    Verdict::Unaffected
}

/// What an attempt starts with besides the checkpoint.
struct Attempt {
    /// Why every user is read first, when it is.
    full_read: Option<&'static str>,
    /// Where an admin asked the stream to start, while no checkpoint was saved from there.
    replay: Option<ReplayRequest>,
    /// The lease this instance holds, when instances share the store: checkpoints are written
    /// only while it holds.
    fence: Option<Arc<Fence>>,
}

/// One attempt: sign in, report who the authorization belongs to, stream until `shutdown`.
async fn stream(
    config: &Config,
    connections: &Connections,
    authorizations: Option<&StoredAuthorizations>,
    attempt: Attempt,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sf = &config.salesforce;
    let stored = match authorizations {
        Some(authorizations) => authorizations
            .load::<SalesforceAuthorization>(Side::Salesforce)
            .await
            .context("reading the Salesforce authorization a reconnect stored")?,
        None => None,
    };
    let http = reqwest::Client::builder()
        .timeout(sf.timeout.max(Duration::from_secs(1)))
        .build()
        .context("building the HTTP client")?;
    let tokens = Arc::new(CredentialsTokenSource::new(
        http.clone(),
        credentials_with(sf, stored.as_ref())?,
    ));
    let session = tokens.session().await.context("signing in to Salesforce")?;
    let identity = crate::salesforce::auth::userinfo(&http, &session)
        .await
        .context("reading who the Salesforce authorization belongs to")?;
    tracing::info!(
        org_id = %session.org_id,
        user_id = %session.user_id,
        username = %identity.preferred_username,
        instance_url = %session.instance_url,
        "signed in to Salesforce"
    );
    connections.connected(
        Side::Salesforce,
        Some(AuthorizedIdentity {
            user_id: identity.user_id.as_str().to_owned(),
            username: identity.preferred_username.clone(),
            org_id: Some(identity.organization_id.as_str().to_owned()),
        }),
    );
    let rest_tokens: Arc<dyn TokenSource> = tokens.clone();
    let rest = SalesforceRest::new(&session.instance_url, rest_tokens)?
        .with_api_version(&sf.api_version)?
        .with_retry(RestRetry {
            min_delay: sf.backoff_min,
            max_delay: sf.backoff_max,
            ..RestRetry::default()
        });
    let store = crate::store::open(&config.store.url)
        .await
        .context("opening the store")?;
    let publisher = Arc::new(ChangePublisher::new(&config.kafka)?);
    let held = tokens.clone();
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
    // Where this attempt starts: a full read first, or where an admin asked.
    let start = StreamStart {
        full_read_first: attempt.full_read,
        replay_from: attempt.replay,
    };
    match sf.transport {
        Transport::Pubsub => {
            let mut subscriber = Subscriber::new(sf, start, tokens, rest, publisher, store)
                .await?
                .with_fence(attempt.fence);
            if let Some(transactional) = transactions {
                subscriber = subscriber.with_transactions(transactional, config.kafka.clone());
            }
            subscriber.run(shutdown).await?;
            tracing::info!(stats = ?subscriber.stats(), "subscriber stopped");
        }
        Transport::Cometd => {
            let mut subscriber = CometdSubscriber::new(sf, start, tokens, rest, publisher, store)
                .await?
                .with_fence(attempt.fence);
            if let Some(transactional) = transactions {
                subscriber = subscriber.with_transactions(transactional, config.kafka.clone());
            }
            subscriber.run(shutdown).await?;
            tracing::info!(stats = ?subscriber.stats(), "subscriber stopped");
        }
    }
    if connections.state(Side::Salesforce)
        == (
            ConnectionState::Disconnected,
            Some(DisconnectReason::Manual),
        )
    {
        revoke_on_disconnect(&held).await;
    }
    Ok(())
}

/// A manual disconnect revokes what Salesforce lets us revoke (see
/// [`CredentialsTokenSource::revoke`]). A refusal is logged, not fatal: the side is stopped
/// either way, and the admin can revoke the app's sessions in Salesforce Setup.
async fn revoke_on_disconnect(tokens: &CredentialsTokenSource) {
    match tokens.revoke().await {
        Ok(revoked) => tracing::info!(
            ?revoked,
            "Salesforce disconnected by an admin: tokens revoked"
        ),
        Err(error) => tracing::warn!(
            error = %error,
            "Salesforce disconnected by an admin, but revoking its tokens failed; \
             end the session in Salesforce Setup (Session Management) if it must end now"
        ),
    }
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
}
