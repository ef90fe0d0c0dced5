//! Salesforce's "test connection": the checklist of `connections.md` run against the org with
//! the credentials the subscriber would use, step by step (`connection::checklist`).

use std::sync::Arc;
use std::time::Duration;

use super::rest::{CredentialsTokenSource, SalesforceRest, TokenSource};
use super::role::{credentials_with, settings};
use crate::config::{Config, Transport};
use crate::connection::Side;
use crate::connection::authorization::SalesforceAuthorization;

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
        .timeout(Duration::from_secs(sf.timeout_seconds.max(1)))
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
        Transport::Pubsub => {
            let pubsub = settings(sf).pubsub;
            match super::pubsub::PubSubConnection::new(pubsub, &session) {
                Ok(connection) => connection.topic(&sf.topic).await.map(|_| ()),
                Err(error) => Err(error),
            }
        }
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
    match store.checkpoint(&sf.topic).await {
        Ok(None) => list.pass(
            "replay_checkpoint",
            "no checkpoint yet: the first start reads every user",
        ),
        Ok(Some(checkpoint)) => {
            let retention = chrono::Duration::hours(72);
            let inside = checkpoint
                .commit_timestamp
                .is_some_and(|at| chrono::Utc::now() - at < retention);
            list.pass(
                "replay_checkpoint",
                if inside {
                    "the stream resumes from its checkpoint, inside the 72-hour retention"
                } else {
                    "the checkpoint may be past the 72-hour retention: a resync will run"
                },
            )
        }
        Err(error) => list.fail("replay_checkpoint", "the store cannot be read", error),
    }
    list
}
