//! Outreach's "test connection": the checklist of docs/operations.md ("Test connection") run with
//! the processor's own Outreach client, step by step (`connection::checklist`).
//!
//! It lives with the Outreach adapter, beside `salesforce::checklist`, because every step is a
//! call to Outreach and a reading of Outreach's answer; the connection model keeps only the
//! result type, and the admin surface picks the side's checklist.

use super::{OutreachClient, OutreachError};
use crate::config::OutreachConfig;
use crate::connection::Side;
use crate::connection::checklist::Checklist;

/// Outreach's "test connection", with the client the processor uses (its tokens, refreshed if
/// needed): the token → `GET /users?page[size]=1` → the webhook, when one is configured, is
/// registered (Outreach never shows a webhook's secret, so the secret itself cannot be
/// compared; a delivery with a wrong one is refused with 401 and logged).
pub async fn test_connection(client: &OutreachClient, config: &OutreachConfig) -> Checklist {
    let mut list = Checklist::new(Side::Outreach);
    let first = match url::Url::parse(&format!(
        "{}/users?page%5Bsize%5D=1",
        config.api_url.trim_end_matches('/')
    )) {
        Ok(url) => url,
        Err(error) => {
            list.fail("read_users", "outreach.api_url is not a URL", error);
            return list;
        }
    };
    match client.list_users_page(Some(&first)).await {
        Ok(reply) => {
            list.pass("token", "access token in hand");
            list.pass(
                "read_users",
                format!(
                    "GET /users?page[size]=1 read {} user",
                    reply.value.users.len()
                ),
            );
        }
        Err(error) => {
            let token = matches!(
                error,
                OutreachError::Token { .. } | OutreachError::Auth { .. }
            );
            if token {
                list.fail(
                    "token",
                    "no access token: the authorization was refused",
                    error,
                );
                list.skip(&["read_users", "webhook"]);
            } else {
                list.pass("token", "access token in hand");
                list.fail("read_users", "GET /users was refused", error);
                list.skip(&["webhook"]);
            }
            return list;
        }
    }
    if config.webhook_url.is_empty() {
        list.pass(
            "webhook",
            "no webhook configured (outreach.webhook_url is empty)",
        );
        return list;
    }
    match client.list_webhooks().await {
        Ok(reply) if reply.value.iter().any(|w| w.url == config.webhook_url) => {
            list.pass("webhook", format!("registered for {}", config.webhook_url))
        }
        Ok(_) => list.fail(
            "webhook",
            format!("no webhook for {}", config.webhook_url),
            "not registered; usersync run registers it at start",
        ),
        Err(error) => list.fail("webhook", "the webhooks cannot be listed", error),
    }
    list
}
