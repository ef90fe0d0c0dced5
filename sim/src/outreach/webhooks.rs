//! Webhooks: the `/api/v2/webhooks` resource and the deliveries a user change causes, pure.
//!
//! Following docs/simulators.md and the `webhook` resource of Outreach's schema:
//!
//! - a webhook has `url`, `resource`, `action` (either may be `*`), an optional write-only
//!   `secret`, `payloadVersion` (1 or 2) and `active`; ids are integers like users';
//! - a user created or updated (through the API or the control API) causes one delivery to
//!   every active webhook whose resource is `user` or `*` and whose action is the event's or
//!   `*`: a JSON body `{"data": {"type": "user", "id": "<id>", "attributes": {…}}, "meta":
//!   {"deliveredAt", "eventName"}}`, with version 2 adding `beforeUpdate` (same shape, prior
//!   values) to updates;
//! - the body is signed when the webhook has a secret: `Outreach-Webhook-Signature` is the hex
//!   HMAC-SHA256 of the body; `outreach-webhook-cleanup-token` is always sent.
//!
//! Inferences (Outreach does not document them): `attributes` of a `user.created` holds every
//! attribute that has a value, and of a `user.updated` every attribute whose rendered value
//! changed (so `updatedAt`, and `name` with a first or last name); an update that changes
//! nothing sends nothing. `resource` and `action` default to `*`, `payloadVersion` to 1,
//! `active` to true; `url` is required and must be an absolute http(s) URL; the secret is
//! never rendered back; webhooks with the same URL may coexist (nothing in docs/outreach.md says
//! Outreach refuses them, which is why a client must not register twice). The signature is made
//! here with `hmac` and `sha2` directly, never with the product's code.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::base64url;
use super::document::{Invalid, WriteError, parse_data, timestamp, user_attributes};
use super::user::SimUser;

/// `page[size]` of a webhook listing when none is given, and its maximum.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;
const CURSOR_TAG: &str = "webhooks-after:";

/// Attributes a webhook write may not set.
const READ_ONLY: &[&str] = &[
    "createdAt",
    "updatedAt",
    "disabledReason",
    "disabledSince",
    "disabledUntil",
];

/// One registered webhook. The secret is kept for signing and never rendered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimWebhook {
    pub id: i64,
    pub url: String,
    pub resource: String,
    pub action: String,
    #[serde(skip)]
    pub secret: Option<String>,
    pub payload_version: i64,
    pub active: bool,
    /// Sent with every delivery as `outreach-webhook-cleanup-token`.
    pub cleanup_token: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SimWebhook {
    /// Whether this webhook receives `event_name` (`user.created`, …).
    pub fn subscribes_to(&self, event_name: &str) -> bool {
        let (resource, action) = event_name.split_once('.').unwrap_or((event_name, ""));
        self.active
            && (self.resource == "*" || self.resource == resource)
            && (self.action == "*" || self.action == action)
    }
}

/// A webhook to register, as a create body or a test gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSimWebhook {
    pub url: String,
    pub resource: String,
    pub action: String,
    pub secret: Option<String>,
    pub payload_version: i64,
    pub active: bool,
}

impl NewSimWebhook {
    /// Every user event to `url`, payload version `payload_version`, signed with `secret`.
    pub fn users(url: impl Into<String>, secret: Option<&str>, payload_version: i64) -> Self {
        NewSimWebhook {
            url: url.into(),
            resource: "user".into(),
            action: "*".into(),
            secret: secret.map(str::to_owned),
            payload_version,
            active: true,
        }
    }
}

/// What happened to a user.
#[derive(Debug, Clone, Copy)]
pub enum UserEvent<'a> {
    Created(&'a SimUser),
    Updated {
        before: &'a SimUser,
        after: &'a SimUser,
    },
}

impl UserEvent<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            UserEvent::Created(_) => "user.created",
            UserEvent::Updated { .. } => "user.updated",
        }
    }

    fn user(&self) -> &SimUser {
        match self {
            UserEvent::Created(user) | UserEvent::Updated { after: user, .. } => user,
        }
    }
}

/// One delivery to send: the body is final (and signed) before the first attempt, so every
/// attempt sends the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub webhook_id: i64,
    pub url: String,
    pub event_name: String,
    pub user_id: i64,
    pub body: String,
    pub signature: Option<String>,
    pub cleanup_token: String,
}

/// The registered webhooks, by id.
#[derive(Debug, Default)]
pub struct Webhooks {
    hooks: BTreeMap<i64, SimWebhook>,
    /// Deliveries still to be signed with a wrong key (a fault switch).
    corrupt_next: u32,
}

impl Webhooks {
    pub fn create(&mut self, new: NewSimWebhook, now: DateTime<Utc>) -> SimWebhook {
        let id = self.hooks.keys().next_back().map_or(1, |max| max + 1);
        let hook = SimWebhook {
            id,
            url: new.url,
            resource: new.resource,
            action: new.action,
            secret: new.secret,
            payload_version: new.payload_version,
            active: new.active,
            cleanup_token: cleanup_token(id, now),
            created_at: now,
            updated_at: now,
        };
        self.hooks.insert(id, hook.clone());
        hook
    }

    pub fn all(&self) -> impl Iterator<Item = &SimWebhook> {
        self.hooks.values()
    }

    /// The next `n` deliveries carry a signature made with the wrong key.
    pub fn corrupt_signatures(&mut self, n: u32) {
        self.corrupt_next += n;
    }

    pub fn clear_faults(&mut self) {
        self.corrupt_next = 0;
    }

    /// The deliveries `event` causes, one per subscribed webhook, in webhook id order.
    pub fn outbound(&mut self, event: UserEvent<'_>, now: DateTime<Utc>) -> Vec<Outbound> {
        let name = event.name();
        let subscribed: Vec<SimWebhook> = self
            .hooks
            .values()
            .filter(|hook| hook.subscribes_to(name))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for hook in subscribed {
            let Some(body) = payload(event, hook.payload_version, now) else {
                continue;
            };
            let body = body.to_string();
            let signature = hook.secret.as_deref().map(|secret| {
                if self.corrupt_next > 0 {
                    self.corrupt_next -= 1;
                    sign(b"not the webhook's secret", body.as_bytes())
                } else {
                    sign(secret.as_bytes(), body.as_bytes())
                }
            });
            out.push(Outbound {
                webhook_id: hook.id,
                url: hook.url.clone(),
                event_name: name.to_owned(),
                user_id: event.user().id,
                body,
                signature,
                cleanup_token: hook.cleanup_token.clone(),
            });
        }
        out
    }

    /// One page of `GET /webhooks`: `page[size]` (1–1000, default 50) and `page[after]` (the
    /// cursor of `links.next`); `count` is accepted and ignored; anything else is a 400.
    pub fn page(
        &self,
        pairs: &[(String, String)],
    ) -> Result<(Vec<&SimWebhook>, Option<String>), String> {
        let mut size = DEFAULT_PAGE_SIZE;
        let mut after = 0;
        for (key, value) in pairs {
            match key.as_str() {
                "page[size]" => {
                    size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                        .ok_or_else(|| {
                            format!("page[size] must be between 1 and {MAX_PAGE_SIZE}.")
                        })?;
                }
                "page[after]" => {
                    after = decode_cursor(value)
                        .ok_or_else(|| "page[after] is not a valid cursor.".to_owned())?;
                }
                "count" => {}
                other => return Err(format!("Unsupported query parameter '{other}'.")),
            }
        }
        let rest: Vec<&SimWebhook> = self.hooks.range(after + 1..).map(|(_, h)| h).collect();
        let next = (rest.len() > size).then(|| encode_cursor(rest[size - 1].id));
        Ok((rest.into_iter().take(size).collect(), next))
    }
}

/// The payload of `event` for a webhook of `version`; `None` for an update that changed
/// nothing.
pub fn payload(event: UserEvent<'_>, version: i64, now: DateTime<Utc>) -> Option<Value> {
    let user = event.user();
    let after = user_attributes(user);
    let (attributes, before) = match event {
        UserEvent::Created(_) => {
            let set: Map<String, Value> = after.into_iter().filter(|(_, v)| !v.is_null()).collect();
            (set, None)
        }
        UserEvent::Updated { before, .. } => {
            let prior = user_attributes(before);
            let changed: Vec<String> = after
                .iter()
                .filter(|(name, value)| prior.get(*name) != Some(*value))
                .map(|(name, _)| name.clone())
                .collect();
            if changed.is_empty() {
                return None;
            }
            let pick = |from: &Map<String, Value>| -> Map<String, Value> {
                changed
                    .iter()
                    .map(|name| (name.clone(), from.get(name).cloned().unwrap_or(Value::Null)))
                    .collect()
            };
            (pick(&after), Some(pick(&prior)))
        }
    };
    let mut body = json!({
        "data": {"type": "user", "id": user.id.to_string(), "attributes": attributes},
        "meta": {"deliveredAt": timestamp(now), "eventName": event.name()},
    });
    if version >= 2
        && let Some(before) = before
    {
        body["beforeUpdate"] =
            json!({"type": "user", "id": user.id.to_string(), "attributes": before});
    }
    Some(body)
}

/// Lower-case hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Renders one webhook (never its secret).
pub fn webhook_resource(hook: &SimWebhook, api_url: &str) -> Value {
    json!({
        "type": "webhook",
        "id": hook.id,
        "attributes": {
            "url": hook.url,
            "resource": hook.resource,
            "action": hook.action,
            "payloadVersion": hook.payload_version,
            "active": hook.active,
            "disabledReason": null,
            "disabledSince": null,
            "disabledUntil": null,
            "createdAt": timestamp(hook.created_at),
            "updatedAt": timestamp(hook.updated_at),
        },
        "links": {"self": format!("{api_url}/webhooks/{}", hook.id)},
    })
}

/// Parses a `POST /webhooks` body, reporting every problem.
pub fn parse_create(body: &[u8]) -> Result<NewSimWebhook, WriteError> {
    let data = parse_data(body)?;
    let mut problems = Vec::new();
    match data.get("type") {
        Some(Value::String(kind)) if kind == "webhook" => {}
        Some(other) => problems.push(Invalid::new(
            "/data/type",
            format!("Type must be 'webhook', not {other}."),
        )),
        None => problems.push(Invalid::new("/data/type", "Type is required.")),
    }
    if data.contains_key("id") {
        problems.push(Invalid::new("/data/id", "Ids are assigned by the server."));
    }
    let attributes = match data.get("attributes") {
        None => Map::new(),
        Some(Value::Object(attributes)) => attributes.clone(),
        Some(_) => {
            problems.push(Invalid::new(
                "/data/attributes",
                "Attributes must be an object.",
            ));
            Map::new()
        }
    };
    let attribute = |name: &str| format!("/data/attributes/{name}");
    let mut new = NewSimWebhook {
        url: String::new(),
        resource: "*".into(),
        action: "*".into(),
        secret: None,
        payload_version: 1,
        active: true,
    };
    match attributes.get("url") {
        Some(Value::String(url)) if is_http_url(url) => new.url = url.clone(),
        Some(Value::String(_)) => problems.push(Invalid::new(
            &attribute("url"),
            "Url must be an absolute http or https URL.",
        )),
        Some(_) => problems.push(Invalid::new(&attribute("url"), "Url must be a string.")),
        None => problems.push(Invalid::new(&attribute("url"), "Url can't be blank")),
    }
    for (name, value) in &attributes {
        match (name.as_str(), value) {
            ("url", _) => {}
            ("resource", Value::String(text)) if !text.is_empty() => new.resource = text.clone(),
            ("action", Value::String(text)) if !text.is_empty() => new.action = text.clone(),
            ("secret", Value::String(text)) => {
                new.secret = (!text.is_empty()).then(|| text.clone())
            }
            ("secret", Value::Null) => new.secret = None,
            ("payloadVersion", Value::Number(n)) if matches!(n.as_i64(), Some(1 | 2)) => {
                new.payload_version = n.as_i64().unwrap_or(1)
            }
            ("payloadVersion", _) => problems.push(Invalid::new(
                &attribute(name),
                "payloadVersion must be 1 or 2.",
            )),
            ("active", Value::Bool(active)) => new.active = *active,
            ("resource" | "action" | "secret" | "active", _) => problems.push(Invalid::new(
                &attribute(name),
                format!("{name} has the wrong type."),
            )),
            (read_only, _) if READ_ONLY.contains(&read_only) => problems.push(Invalid::new(
                &attribute(name),
                format!("The attribute '{name}' is read-only."),
            )),
            _ => problems.push(Invalid::new(
                &attribute(name),
                format!("Unknown attribute '{name}'."),
            )),
        }
    }
    if problems.is_empty() {
        Ok(new)
    } else {
        Err(WriteError::Invalid(problems))
    }
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
}

fn cleanup_token(id: i64, now: DateTime<Utc>) -> String {
    let nanos = now.timestamp_nanos_opt().unwrap_or_default();
    base64url::encode(format!("cleanup:{id}:{nanos}").as_bytes())
}

fn encode_cursor(last_id: i64) -> String {
    base64url::encode(format!("{CURSOR_TAG}{last_id}").as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let text = String::from_utf8(base64url::decode(cursor)?).ok()?;
    text.strip_prefix(CURSOR_TAG)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2025-03-04T05:06:07.089Z".parse().unwrap()
    }

    fn user() -> SimUser {
        let mut user = SimUser::new(42, "jane@acme.test");
        user.first_name = Some("Jane".into());
        user.created_at = now() - TimeDelta::days(1);
        user.updated_at = user.created_at;
        user
    }

    #[test]
    fn a_create_carries_every_attribute_with_a_value() {
        let body = payload(UserEvent::Created(&user()), 1, now()).unwrap();
        assert_eq!(body["data"]["id"], json!("42"));
        assert_eq!(body["meta"]["eventName"], json!("user.created"));
        assert_eq!(
            body["meta"]["deliveredAt"],
            json!("2025-03-04T05:06:07.089Z")
        );
        let attributes = body["data"]["attributes"].as_object().unwrap();
        assert_eq!(attributes["email"], json!("jane@acme.test"));
        assert_eq!(attributes["locked"], json!(false));
        assert!(!attributes.contains_key("lastName"), "null: never set");
        assert!(attributes.contains_key("updatedAt"));
        assert!(
            payload(UserEvent::Created(&user()), 2, now()).unwrap()["beforeUpdate"].is_null(),
            "a create has no before"
        );
    }

    #[test]
    fn an_update_carries_what_changed_and_v2_the_prior_values() {
        let before = user();
        let mut after = before.clone();
        after.locked = true;
        after.updated_at = now();
        let event = UserEvent::Updated {
            before: &before,
            after: &after,
        };
        let v1 = payload(event, 1, now()).unwrap();
        assert_eq!(
            v1["data"]["attributes"],
            json!({"locked": true, "updatedAt": "2025-03-04T05:06:07.089Z"})
        );
        assert!(v1.get("beforeUpdate").is_none());
        let v2 = payload(event, 2, now()).unwrap();
        assert_eq!(v2["data"], v1["data"]);
        assert_eq!(
            v2["beforeUpdate"],
            json!({"type": "user", "id": "42", "attributes":
                {"locked": false, "updatedAt": "2025-03-03T05:06:07.089Z"}})
        );
        let same = UserEvent::Updated {
            before: &before,
            after: &before,
        };
        assert_eq!(payload(same, 2, now()), None);
    }

    #[test]
    fn deliveries_go_to_subscribed_active_webhooks_signed_with_their_secret() {
        let mut hooks = Webhooks::default();
        let signed = hooks.create(NewSimWebhook::users("http://a/x", Some("s1"), 1), now());
        hooks.create(NewSimWebhook::users("http://b/x", None, 2), now());
        let mut prospects = NewSimWebhook::users("http://c/x", Some("s3"), 1);
        prospects.resource = "prospect".into();
        hooks.create(prospects, now());
        let mut updates_only = NewSimWebhook::users("http://d/x", Some("s4"), 1);
        updates_only.action = "updated".into();
        hooks.create(updates_only, now());
        let mut inactive = NewSimWebhook::users("http://e/x", Some("s5"), 1);
        inactive.active = false;
        hooks.create(inactive, now());

        let out = hooks.outbound(UserEvent::Created(&user()), now());
        assert_eq!(out.iter().map(|o| o.webhook_id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            out[0].signature.as_deref(),
            Some(sign(b"s1", out[0].body.as_bytes()).as_str())
        );
        assert_eq!(out[0].cleanup_token, signed.cleanup_token);
        assert_eq!(out[1].signature, None, "no secret, no signature");
    }

    #[test]
    fn the_corrupt_signature_switch_spoils_the_next_n() {
        let mut hooks = Webhooks::default();
        hooks.create(NewSimWebhook::users("http://a/x", Some("s1"), 1), now());
        hooks.corrupt_signatures(1);
        let spoiled = hooks.outbound(UserEvent::Created(&user()), now()).remove(0);
        assert_ne!(
            spoiled.signature.unwrap(),
            sign(b"s1", spoiled.body.as_bytes())
        );
        let good = hooks.outbound(UserEvent::Created(&user()), now()).remove(0);
        assert_eq!(good.signature.unwrap(), sign(b"s1", good.body.as_bytes()));
    }

    #[test]
    fn the_signature_is_the_rfc_4231_hmac() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn create_bodies_are_checked_and_defaulted() {
        let new = parse_create(
            br#"{"data":{"type":"webhook","attributes":{"url":"https://u.test/w","secret":"s"}}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                new.resource.as_str(),
                new.action.as_str(),
                new.payload_version
            ),
            ("*", "*", 1)
        );
        assert_eq!(new.secret.as_deref(), Some("s"));
        let err = parse_create(
            br#"{"data":{"type":"user","id":3,"attributes":{"url":"ftp://x","payloadVersion":3,"createdAt":"x","color":1}}}"#,
        )
        .unwrap_err();
        let WriteError::Invalid(problems) = err else {
            panic!("{err:?}")
        };
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        for expected in [
            "/data/type",
            "/data/id",
            "/data/attributes/url",
            "/data/attributes/payloadVersion",
            "/data/attributes/createdAt",
            "/data/attributes/color",
        ] {
            assert!(pointers.contains(&expected), "{pointers:?}");
        }
    }

    #[test]
    fn listings_page_by_id_with_an_opaque_cursor() {
        let mut hooks = Webhooks::default();
        for i in 0..3 {
            hooks.create(
                NewSimWebhook::users(format!("http://h/{i}"), None, 1),
                now(),
            );
        }
        let size = |n: &str| vec![("page[size]".to_owned(), n.to_owned())];
        let (first, next) = hooks.page(&size("2")).unwrap();
        assert_eq!(first.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2]);
        let mut pairs = size("2");
        pairs.push(("page[after]".to_owned(), next.unwrap()));
        let (second, next) = hooks.page(&pairs).unwrap();
        assert_eq!(second.iter().map(|h| h.id).collect::<Vec<_>>(), [3]);
        assert_eq!(next, None);
        assert!(hooks.page(&size("0")).is_err());
        assert!(
            hooks
                .page(&[("page[after]".to_owned(), "junk".to_owned())])
                .is_err()
        );
        assert!(
            hooks
                .page(&[("filter[url]".to_owned(), "x".to_owned())])
                .is_err()
        );
    }

    #[test]
    fn the_secret_is_never_rendered() {
        let mut hooks = Webhooks::default();
        let hook = hooks.create(NewSimWebhook::users("http://a/x", Some("s3cret"), 2), now());
        let shown = webhook_resource(&hook, "http://sim/api/v2").to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!serde_json::to_string(&hook).unwrap().contains("s3cret"));
    }
}
