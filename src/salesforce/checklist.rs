//! Salesforce's "test connection": the checklist of docs/operations.md ("Test connection") run
//! against the org with the credentials the subscriber would use, step by step
//! (`connection::checklist`).

use std::sync::Arc;
use std::time::Duration;

use super::rest::{CredentialsTokenSource, SalesforceRest, TokenSource};
use crate::config::{Config, Transport};
use crate::connection::Side;
use crate::connection::authorization::SalesforceAuthorization;
use crate::roles::subscriber::role::credentials_with;

/// Salesforce's "test connection": token → identity → the change stream may be subscribed →
/// a User query works → where the stream would resume. Makes its own session (the running
/// subscriber is not disturbed).
pub async fn test_connection(
    config: &Config,
    stored: Option<&SalesforceAuthorization>,
    store: &dyn crate::store::Store,
) -> crate::connection::checklist::Checklist {
    use crate::connection::checklist::Checklist;
    let sf = &config.salesforce;
    let mut list = Checklist::new(Side::Salesforce);
    let later = [
        "identity",
        "can_subscribe",
        "query_users",
        "replay_checkpoint",
    ];
    let credentials = match credentials_with(sf, stored) {
        Ok(credentials) => credentials,
        Err(error) => {
            list.fail(
                "token",
                "the credentials cannot be used",
                format!("{error:#}"),
            );
            list.skip(&later);
            return list;
        }
    };
    let http = match reqwest::Client::builder()
        .timeout(sf.timeout.max(Duration::from_secs(1)))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            list.fail("token", "no HTTP client", error);
            list.skip(&later);
            return list;
        }
    };
    let flow = credentials.flow();
    let tokens = Arc::new(CredentialsTokenSource::new(http.clone(), credentials));
    let session = match tokens.session().await {
        Ok(session) => {
            list.pass("token", format!("session obtained ({flow} flow)"));
            session
        }
        Err(error) => {
            list.fail(
                "token",
                format!("the token endpoint refused ({flow} flow)"),
                error,
            );
            list.skip(&later);
            return list;
        }
    };
    match super::auth::userinfo(&http, &session).await {
        Ok(identity) => list.pass(
            "identity",
            format!(
                "signed in as {} (user {}, org {})",
                identity.preferred_username, identity.user_id, identity.organization_id
            ),
        ),
        Err(error) => list.fail("identity", "userinfo refused", error),
    }
    let subscribe = match sf.transport {
        Transport::Pubsub => match super::pubsub::PubSubConnection::new(sf, &session) {
            Ok(connection) => connection.topic(&sf.topic).await.map(|_| ()),
            Err(error) => Err(error),
        },
        // The CometD handshake is the subscriber's own first step; Pub/Sub is what is checked.
        Transport::Cometd => Ok(()),
    };
    match subscribe {
        Ok(()) => list.pass("can_subscribe", format!("{} may be subscribed", sf.topic)),
        Err(error) => list.fail(
            "can_subscribe",
            format!("{} may not be subscribed", sf.topic),
            error,
        ),
    }
    let tokens_for_replay = tokens.clone();
    let rest_tokens: Arc<dyn TokenSource> = tokens;
    let query = match SalesforceRest::new(&session.instance_url, rest_tokens)
        .and_then(|rest| rest.with_api_version(&sf.api_version))
    {
        Ok(rest) => rest
            .query_all("SELECT Id FROM User LIMIT 1")
            .await
            .map(|r| r.len()),
        Err(error) => Err(error),
    };
    match query {
        Ok(n) => list.pass(
            "query_users",
            format!("SELECT Id FROM User LIMIT 1 read {n} user"),
        ),
        Err(error) => list.fail("query_users", "the User query was refused", error),
    }
    replay_step(&mut list, sf, &session, tokens_for_replay, store).await;
    list
}

/// How long the replay probe listens for Salesforce's answer. An unusable replay id is refused
/// as soon as the subscription is read; a usable one gives events or silence.
const REPLAY_PROBE: Duration = Duration::from_secs(3);

/// Where the stream would resume, and whether Salesforce still can: a short subscription from
/// the stored replay id (one event asked for on Pub/Sub; a handshake and subscribe on CometD),
/// ended at once. The running subscriber's own stream is not touched.
async fn replay_step(
    list: &mut crate::connection::checklist::Checklist,
    sf: &crate::config::SalesforceConfig,
    session: &super::auth::SalesforceSession,
    tokens: Arc<CredentialsTokenSource>,
    store: &dyn crate::store::Store,
) {
    const STEP: &str = "replay_checkpoint";
    let key = crate::roles::subscriber::checkpoint_key(sf.transport, &sf.topic);
    let checkpoint = match store.checkpoint(&key).await {
        Ok(Some(checkpoint)) => checkpoint,
        Ok(None) => {
            list.pass(STEP, "no checkpoint yet: the first start reads every user");
            return;
        }
        Err(error) => {
            list.fail(STEP, "the store cannot be read", error);
            return;
        }
    };
    if checkpoint.replay_id.is_empty() {
        let since = checkpoint
            .commit_timestamp
            .map_or_else(|| "the pin".to_owned(), |at| at.to_rfc3339());
        list.pass(
            STEP,
            format!(
                "the stream was pinned at its newest position at {since} and has delivered no \
                 position since: the next start reads the users changed since then"
            ),
        );
        return;
    }
    let probe = probe(sf, session, tokens, &checkpoint.replay_id).await;
    let age = checkpoint.commit_timestamp.map_or_else(
        || "of unknown age".to_owned(),
        |at| format!("from {}", at.to_rfc3339()),
    );
    match probe {
        Ok(true) => list.pass(
            STEP,
            format!("Salesforce resumes the stream after the checkpoint ({age})"),
        ),
        Ok(false) => match sf.replay_policy {
            crate::salesforce::replay::ReplayPolicy::Fail => list.fail(
                STEP,
                format!(
                    "Salesforce can no longer resume after the checkpoint ({age}), and \
                     salesforce.replay_policy is \"fail\": the subscriber will stop"
                ),
                "the replay id is outside the retention window",
            ),
            crate::salesforce::replay::ReplayPolicy::Latest => list.pass(
                STEP,
                format!(
                    "Salesforce can no longer resume after the checkpoint ({age}): with \
                     salesforce.replay_policy \"latest\" the stream restarts at the newest \
                     position and the changes since the checkpoint are not read"
                ),
            ),
            crate::salesforce::replay::ReplayPolicy::Resync => list.pass(
                STEP,
                format!(
                    "Salesforce can no longer resume after the checkpoint ({age}): the next \
                     start reads the users changed since then through REST"
                ),
            ),
        },
        Err(error) => list.fail(
            STEP,
            "Salesforce did not answer whether it can resume",
            error,
        ),
    }
}

/// Whether Salesforce resumes the stream after `replay_id` (the stored form: Pub/Sub's bytes,
/// a CometD id as 8 big-endian bytes), asked in a short subscription of its own; `Err` when it
/// gave no answer.
async fn probe(
    sf: &crate::config::SalesforceConfig,
    session: &super::auth::SalesforceSession,
    tokens: Arc<CredentialsTokenSource>,
    replay_id: &[u8],
) -> Result<bool, String> {
    match sf.transport {
        Transport::Pubsub => {
            let connection = super::pubsub::PubSubConnection::new(sf, session)
                .map_err(|e| format!("cannot open the Pub/Sub channel to ask: {e}"))?;
            connection
                .can_resume_after(&sf.topic, replay_id.to_vec(), REPLAY_PROBE)
                .await
                .map_err(|e| e.to_string())
        }
        Transport::Cometd => {
            let bytes = <[u8; 8]>::try_from(replay_id).map_err(|_| {
                format!(
                    "{} bytes are not a CometD replay id (8 bytes)",
                    replay_id.len()
                )
            })?;
            super::cometd::can_resume_after(
                &sf.api_version,
                tokens,
                i64::from_be_bytes(bytes),
                REPLAY_PROBE,
            )
            .await
            .map_err(|e| e.to_string())
        }
    }
}

/// Whether Salesforce can resume the stream after `replay_id` (the stored form), asked with a
/// session of its own made from the configuration and `stored` (what a reconnect stored): for
/// an admin who gives a replay id to start from, before anything moves. `Err` says why no
/// answer came.
pub async fn can_resume_after(
    config: &Config,
    stored: Option<&SalesforceAuthorization>,
    replay_id: &[u8],
) -> Result<bool, String> {
    let sf = &config.salesforce;
    let credentials = credentials_with(sf, stored).map_err(|e| format!("{e:#}"))?;
    let http = reqwest::Client::builder()
        .timeout(sf.timeout.max(Duration::from_secs(1)))
        .build()
        .map_err(|e| e.to_string())?;
    let tokens = Arc::new(CredentialsTokenSource::new(http, credentials));
    let session = tokens
        .session()
        .await
        .map_err(|e| format!("signing in to Salesforce: {e}"))?;
    probe(sf, &session, tokens, replay_id).await
}
