//! Registering the receiver with Outreach: the `webhook` resource's wire shapes and the rule
//! that keeps registration idempotent.
//!
//! Outreach keeps webhooks as a JSON:API resource (`/api/v2/webhooks`, attributes `url`,
//! `resource`, `action`, `secret`, `payloadVersion`, `active`, …). usersync registers one
//! webhook per receiver URL for resource `user` and action `*` (it receives `user.created`
//! and `user.updated`; Outreach has no `user.destroyed`), signed with the configured secret.
//!
//! Registration runs at every start, so it must not pile up webhooks: Outreach would then
//! deliver each change once per copy. [`find_registered`] looks for a webhook that already
//! sends user events to the same URL; only when none does is one created. `url` is not a
//! filterable attribute, so the client lists every webhook and compares here. A `secret` is
//! write-only, so a webhook found by URL is trusted to have the configured one: to rotate the
//! secret, delete the webhook in Outreach and restart (docs/webhooks.md).
//!
//! Payload version 2 is asked for: its `beforeUpdate` holds the prior values, which makes a
//! dead-lettered delivery readable on its own. The receiver reads both versions the same way.

use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::super::jsonapi::ResourceId;
use crate::config::Secret;

/// The JSON:API `type` of a webhook.
pub const WEBHOOK_TYPE: &str = "webhook";

/// The payload version usersync registers.
pub const PAYLOAD_VERSION: i64 = 2;

/// A webhook to create. `Debug` hides the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// Where Outreach POSTs, e.g. `https://usersync.example.com/webhooks/outreach`.
    pub url: Url,
    pub secret: Secret,
    /// `user`.
    pub resource: String,
    /// `*`, `created` or `updated`.
    pub action: String,
    pub payload_version: i64,
}

impl NewWebhook {
    /// The webhook the receiver needs: every user event, payload version 2, signed.
    pub fn users(url: Url, secret: Secret) -> NewWebhook {
        NewWebhook {
            url,
            secret,
            resource: "user".to_owned(),
            action: "*".to_owned(),
            payload_version: PAYLOAD_VERSION,
        }
    }

    /// The request document of `POST /webhooks`. It carries the secret: never log it.
    pub fn document(&self) -> Value {
        json!({"data": {"type": WEBHOOK_TYPE, "attributes": {
            "url": self.url.as_str(),
            "resource": self.resource,
            "action": self.action,
            "secret": self.secret.expose(),
            "payloadVersion": self.payload_version,
            "active": true,
        }}})
    }
}

/// A webhook as Outreach lists it (the secret is never read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    pub resource: Option<String>,
    pub action: Option<String>,
    /// `false` once Outreach gave up on it (unreachable for 7 days or more).
    pub active: Option<bool>,
    pub payload_version: Option<i64>,
}

impl Webhook {
    /// Whether Outreach sends this webhook both `user.created` and `user.updated`.
    pub fn covers_user_events(&self) -> bool {
        matches!(self.resource.as_deref(), Some("user" | "*"))
            && matches!(self.action.as_deref(), Some("*"))
    }
}

/// The outcome of an idempotent registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub webhook: Webhook,
    /// `true` when this call created it, `false` when it was already there.
    pub created: bool,
}

/// One `webhook` resource object on the wire.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookResource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<ResourceId>,
    #[serde(default)]
    pub attributes: WebhookWireAttributes,
}

/// The webhook attributes usersync reads, under Outreach's names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWireAttributes {
    pub url: Option<String>,
    pub resource: Option<String>,
    pub action: Option<String>,
    pub active: Option<bool>,
    pub payload_version: Option<i64>,
}

impl WebhookResource {
    /// The webhook, or what is wrong with the resource.
    pub fn into_webhook(self) -> Result<Webhook, String> {
        if self.kind != WEBHOOK_TYPE {
            return Err(format!(
                "expected a resource of type {WEBHOOK_TYPE:?}, got {:?}",
                self.kind
            ));
        }
        let id = self
            .id
            .ok_or_else(|| "webhook resource has no id".to_owned())?
            .0;
        let a = self.attributes;
        let url = a
            .url
            .ok_or_else(|| format!("webhook {id} has no url attribute"))?;
        Ok(Webhook {
            id,
            url,
            resource: a.resource,
            action: a.action,
            active: a.active,
            payload_version: a.payload_version,
        })
    }
}

/// The webhook among `existing` that already sends user events to `url`, if any. URLs are
/// compared parsed (so `HTTPS://Host:443/x` is `https://host/x`); one that covers every user
/// action is preferred over one that covers only some.
pub fn find_registered<'a>(existing: &'a [Webhook], url: &Url) -> Option<&'a Webhook> {
    let same_url = |hook: &&Webhook| Url::parse(&hook.url).is_ok_and(|parsed| parsed == *url);
    let for_users = |hook: &&Webhook| matches!(hook.resource.as_deref(), Some("user" | "*"));
    let mut candidates = existing.iter().filter(same_url).filter(for_users);
    let first = candidates.next()?;
    if first.covers_user_events() {
        return Some(first);
    }
    Some(
        candidates
            .find(|hook| hook.covers_user_events())
            .unwrap_or(first),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: i64, url: &str, resource: &str, action: &str) -> Webhook {
        Webhook {
            id,
            url: url.into(),
            resource: Some(resource.into()),
            action: Some(action.into()),
            active: Some(true),
            payload_version: Some(2),
        }
    }

    fn url(text: &str) -> Url {
        text.parse().unwrap()
    }

    #[test]
    fn the_create_document_asks_for_every_user_event() {
        let new = NewWebhook::users(url("https://u.example/webhooks/outreach"), Secret::new("s"));
        assert_eq!(
            new.document(),
            json!({"data": {"type": "webhook", "attributes": {
                "url": "https://u.example/webhooks/outreach", "resource": "user", "action": "*",
                "secret": "s", "payloadVersion": 2, "active": true}}})
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let new = NewWebhook::users(url("https://u.example/x"), Secret::new("hush-hush"));
        assert!(!format!("{new:?}").contains("hush-hush"));
    }

    #[test]
    fn a_webhook_for_the_same_url_is_found_however_the_url_is_spelled() {
        let target = url("https://u.example/webhooks/outreach");
        let existing = vec![
            hook(1, "https://other.example/webhooks/outreach", "user", "*"),
            hook(2, "HTTPS://U.example:443/webhooks/outreach", "user", "*"),
        ];
        assert_eq!(find_registered(&existing, &target).map(|h| h.id), Some(2));
        assert_eq!(find_registered(&existing[..1], &target), None);
    }

    #[test]
    fn other_resources_do_not_count_and_full_coverage_is_preferred() {
        let target = url("https://u.example/w");
        let existing = vec![
            hook(1, "https://u.example/w", "prospect", "*"),
            hook(2, "https://u.example/w", "user", "updated"),
            hook(3, "https://u.example/w", "user", "*"),
        ];
        assert_eq!(find_registered(&existing, &target).map(|h| h.id), Some(3));
        assert_eq!(
            find_registered(&existing[..2], &target).map(|h| h.id),
            Some(2)
        );
        assert_eq!(find_registered(&existing[..1], &target), None);
    }

    #[test]
    fn resources_decode_with_string_or_integer_ids() {
        let resource: WebhookResource = serde_json::from_value(json!({
            "type": "webhook", "id": "9",
            "attributes": {"url": "https://u.example/w", "resource": "user", "action": "*",
                           "active": true, "payloadVersion": 2, "createdAt": "2025-01-01T00:00:00.000Z"},
            "relationships": {"creator": {"data": {"type": "user", "id": 1}}}
        }))
        .unwrap();
        let webhook = resource.into_webhook().unwrap();
        assert_eq!(webhook.id, 9);
        assert!(webhook.covers_user_events());
        let wrong: WebhookResource =
            serde_json::from_value(json!({"type": "user", "id": 1})).unwrap();
        assert!(wrong.into_webhook().unwrap_err().contains("user"));
    }
}
