//! Outreach webhooks: what Outreach POSTs when a user is created or updated, checked and turned
//! into `user_change.v1` events.
//!
//! Outreach tells usersync about users changed *in Outreach* (by hand, by SCIM, by another
//! integration) only through webhooks, and those events keep the processor's index of Outreach
//! users current, so that a user created by hand is linked rather than duplicated. This file is
//! the pure half, with no I/O:
//!
//! - **Signature.** A webhook registered with a `secret` signs every delivery:
//!   `Outreach-Webhook-Signature` is the lower-case hex HMAC-SHA256 of the raw body keyed with
//!   the secret. [`verify_signature`] recomputes it and compares in constant time (`hmac`'s
//!   `verify_slice`), so a forger learns nothing from how long a refusal took. The body is
//!   checked byte for byte as received, before any parsing.
//! - **Payload.** A delivery is a JSON:API-style envelope: `data` (`type`, `id` as a string,
//!   `attributes`), `meta.eventName` (`resource.action`, e.g. `user.updated`), and with payload
//!   version 2 a `beforeUpdate` resource holding the prior values. In both versions
//!   `data.attributes` carries only the attributes that were set (create) or changed (update),
//!   plus `updatedAt`. [`parse_delivery`] reads it into a [`Delivery`]: a [`UserDelivery`] for
//!   `user.created` and `user.updated`, or [`Delivery::Ignored`] for any other resource or
//!   action (a webhook registered for `*` may send them; they are none of usersync's business).
//! - **Event.** [`UserDelivery::into_change`] builds the `user_change.v1` event.
//!
//! # A partial payload never becomes a partial event
//!
//! docs/webhooks.md says an Outreach event's `user` holds `email`, `first_name`, `last_name`,
//! `username` and `locked`, and that `user` is always the full state after the change, never a
//! partial update. A `user.updated` that only locked a user carries `{"locked": true,
//! "updatedAt": …}` and no email, so on its own it can be neither keyed (the Kafka key is the
//! email) nor applied. [`UserDelivery::missing`] names the attributes the payload lacks; the
//! receiver then reads the user through the REST API and passes it to
//! [`UserDelivery::into_change`], which takes every attribute the payload carries from the
//! payload (it is the change being reported) and the others from the read. A payload that
//! carries all five needs no read. The attributes the payload carried are the event's
//! `changed_fields`, under Outreach's names (`locked`, `title`, `updatedAt`, …); for v2 the
//! names in `beforeUpdate` are added, and for a create the list is empty as the schema wants.
//!
//! What the event does not carry is `null`: `title` (the index keeps its own, `event-schema.md`
//! "Salesforce and Outreach events"), `is_active` (a Salesforce notion; `locked` is Outreach's),
//! `created_date`. `user.last_modified_date` and `origin.commit_timestamp` are the payload's
//! `updatedAt`, which orders the events of one user; `origin.topic` is the event name.
//!
//! # The event id
//!
//! `or:<outreach user id>:<updatedAt>`, `updatedAt` written as Outreach writes timestamps (UTC,
//! milliseconds, `Z`): `or:42:2025-01-02T03:04:05.000Z`. Outreach resends a delivery after a
//! network failure and may send one change to several webhooks; each copy gets the same id, so
//! the processor applies it once. A read that completed a partial payload may already show a
//! later change; that change arrives as its own delivery with its own `updatedAt`, so the index
//! still ends where Outreach is.
//!
//! Every refusal names the member that is wrong (`data.attributes.locked: is "yes", not a
//! boolean`), because a refused delivery goes to the dead-letter topic for a person to read.

pub mod registration;

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use super::jsonapi::{ResourceId, USER_TYPE};
use crate::model::event::{
    ChangeKind, Origin, SCHEMA, Source, UserChange, UserState, normalize_email, outreach_event_id,
};
use crate::model::outreach_user::{OutreachUser, OutreachUserId};

/// The header carrying the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "outreach-webhook-signature";

/// The header carrying the webhook's cleanup token (for `POST /webhooks/cleanup`); usersync
/// does not need it and never logs it.
pub const CLEANUP_TOKEN_HEADER: &str = "outreach-webhook-cleanup-token";

/// The `origin.transport` of every Outreach event.
pub const TRANSPORT: &str = "webhook";

/// Outreach's names of the attributes an Outreach event must hold, in the event's order.
pub const EVENT_ATTRIBUTES: [&str; 5] = ["email", "username", "firstName", "lastName", "locked"];

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Outreach-Webhook-Signature header is missing")]
    Missing,
    #[error(
        "the Outreach-Webhook-Signature header is not 64 hexadecimal digits (a hex HMAC-SHA256)"
    )]
    NotHex,
    #[error(
        "the Outreach-Webhook-Signature header does not match the body signed with the configured secret"
    )]
    Mismatch,
}

/// The signature Outreach sends for `body` with `secret`: lower-case hex HMAC-SHA256.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks `header` (the value of `Outreach-Webhook-Signature`, if any) against `body` signed
/// with `secret`. Hex digits of either case are accepted, surrounding spaces ignored; the
/// comparison takes the same time wherever the first differing byte is.
pub fn verify_signature(
    secret: &[u8],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let text = std::str::from_utf8(header).map_err(|_| SignatureError::NotHex)?;
    let digest = hex::decode(text.trim()).map_err(|_| SignatureError::NotHex)?;
    if digest.len() != 32 {
        return Err(SignatureError::NotHex);
    }
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&digest)
        .map_err(|_| SignatureError::Mismatch)
}

/// Why a signed delivery could not become an event: the member that is wrong (a path such as
/// `data.attributes.locked`, or `(document)`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PayloadError {
    pub field: String,
    pub problem: String,
}

impl PayloadError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        PayloadError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// What a delivery is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// `user.created` or `user.updated`.
    User(Box<UserDelivery>),
    /// Another resource or another action: acknowledged and dropped.
    Ignored {
        /// `meta.eventName` as sent.
        event_name: String,
        reason: String,
    },
}

/// `created` or `updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    Created,
    Updated,
}

impl UserAction {
    fn change(self) -> ChangeKind {
        match self {
            UserAction::Created => ChangeKind::Create,
            UserAction::Updated => ChangeKind::Update,
        }
    }
}

/// The payload version: 1 (changed attributes only) or 2 (with `beforeUpdate`). A create looks
/// the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadVersion {
    V1,
    V2,
}

/// The attributes of a user as a payload carries them: the outer `None` means "not in the
/// payload", the inner one (where Outreach allows it) `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAttributesSent {
    pub email: Option<String>,
    pub username: Option<Option<String>>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub locked: Option<bool>,
}

/// One `user.created` or `user.updated` delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDelivery {
    /// `meta.eventName`: `user.created` or `user.updated`.
    pub event_name: String,
    pub action: UserAction,
    pub id: OutreachUserId,
    /// `data.attributes.updatedAt`: the change's place in the user's history.
    pub updated_at: DateTime<Utc>,
    /// What `data.attributes` carried of the event's attributes.
    pub attributes: UserAttributesSent,
    /// `beforeUpdate.attributes` (payload version 2 only).
    pub before: Option<UserAttributesSent>,
    /// Every attribute name in `data.attributes` and `beforeUpdate.attributes`, sorted.
    pub changed: Vec<String>,
    /// `meta.deliveredAt`: when Outreach sent it. Inside the signed body, so the receiver can
    /// tell a fresh delivery from a replayed one.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The envelope, with resources left loose so each member can be checked and named.
#[derive(Deserialize)]
struct Envelope {
    data: Resource,
    meta: Meta,
    #[serde(rename = "beforeUpdate", default)]
    before_update: Option<Resource>,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "eventName")]
    event_name: String,
    /// `deliveredAt` among the rest, read by [`timestamp`] so a bad one is named.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Reads one delivery body.
pub fn parse_delivery(body: &[u8]) -> Result<Delivery, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let envelope: Envelope = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // A member whose key is empty prints as an empty path: name the document instead.
        let path = e.path().to_string();
        PayloadError::new(
            if path == "." || path.is_empty() {
                "(document)"
            } else {
                &path
            },
            e.inner().to_string(),
        )
    })?;
    let Envelope {
        data,
        meta,
        before_update,
    } = envelope;
    let event_name = meta.event_name;
    let delivered_at = timestamp(&meta.rest, "meta", "deliveredAt")?;
    let Some((resource, action)) = event_name.split_once('.') else {
        return Err(PayloadError::new(
            "meta.eventName",
            format!("{event_name:?} is not of the form resource.action"),
        ));
    };
    if resource != data.kind {
        return Err(PayloadError::new(
            "data.type",
            format!(
                "is {:?} but meta.eventName {event_name:?} is about {resource:?}",
                data.kind
            ),
        ));
    }
    if data.kind != USER_TYPE {
        return Ok(Delivery::Ignored {
            reason: format!("usersync reads user events only, not {:?}", data.kind),
            event_name,
        });
    }
    let action = match action {
        "created" => UserAction::Created,
        "updated" => UserAction::Updated,
        other => {
            return Ok(Delivery::Ignored {
                reason: format!("usersync reads user.created and user.updated only, not {other:?}"),
                event_name,
            });
        }
    };
    let id = resource_id(data.id.as_ref(), "data.id")?;
    let attributes = data
        .attributes
        .ok_or_else(|| PayloadError::new("data.attributes", "is absent"))?;
    let updated_at = timestamp(&attributes, "data.attributes", "updatedAt")?.ok_or_else(|| {
        PayloadError::new(
            "data.attributes.updatedAt",
            "is absent; it places the change in the user's history and names the event",
        )
    })?;
    let sent = attributes_sent(&attributes, "data.attributes")?;
    let mut changed: BTreeSet<String> = attributes.keys().cloned().collect();

    let before = match before_update {
        None => None,
        Some(before) => {
            if before.kind != data.kind {
                return Err(PayloadError::new(
                    "beforeUpdate.type",
                    format!("is {:?}, not {:?} as data.type", before.kind, data.kind),
                ));
            }
            let before_id = resource_id(before.id.as_ref(), "beforeUpdate.id")?;
            if before_id != id {
                return Err(PayloadError::new(
                    "beforeUpdate.id",
                    format!("is {before_id}, not {id} as data.id"),
                ));
            }
            let attributes = before.attributes.unwrap_or_default();
            changed.extend(attributes.keys().cloned());
            Some(attributes_sent(&attributes, "beforeUpdate.attributes")?)
        }
    };
    Ok(Delivery::User(Box::new(UserDelivery {
        event_name,
        action,
        id,
        updated_at,
        attributes: sent,
        before,
        changed: changed.into_iter().collect(),
        delivered_at,
    })))
}

impl UserDelivery {
    /// 2 when the payload had `beforeUpdate`, else 1.
    pub fn payload_version(&self) -> PayloadVersion {
        if self.before.is_some() {
            PayloadVersion::V2
        } else {
            PayloadVersion::V1
        }
    }

    /// The event's attributes the payload does not carry (Outreach's names, from
    /// [`EVENT_ATTRIBUTES`]); when not empty, the user must be read to build the event.
    pub fn missing(&self) -> Vec<&'static str> {
        let a = &self.attributes;
        let present = [
            a.email.is_some(),
            a.username.is_some(),
            a.first_name.is_some(),
            a.last_name.is_some(),
            a.locked.is_some(),
        ];
        EVENT_ATTRIBUTES
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(name, _)| *name)
            .collect()
    }

    /// The event id, `or:<id>:<updatedAt>`.
    pub fn event_id(&self) -> String {
        outreach_event_id(self.id.0, &wire_time(self.updated_at))
    }

    /// The `user_change.v1` event. Attributes the payload carries come from it; the others from
    /// `current` (the user as read through the API), which is needed exactly when
    /// [`missing`](Self::missing) is not empty. `observed_at` is when the delivery arrived.
    pub fn into_change(
        self,
        current: Option<&OutreachUser>,
        observed_at: DateTime<Utc>,
    ) -> Result<UserChange, PayloadError> {
        if let Some(user) = current
            && user.id != self.id
        {
            return Err(PayloadError::new(
                "data.id",
                format!(
                    "is {} but the user read to complete it is {}",
                    self.id, user.id
                ),
            ));
        }
        let absent = |name: &str| {
            PayloadError::new(
                format!("data.attributes.{name}"),
                "is absent from the payload and the user was not read to complete it",
            )
        };
        let a = self.attributes;
        let email = match (a.email, current) {
            (Some(email), _) => email,
            (None, Some(user)) => user.email.clone(),
            (None, None) => return Err(absent("email")),
        };
        let pick = |sent: Option<Option<String>>,
                    read: fn(&OutreachUser) -> &Option<String>,
                    name: &str|
         -> Result<Option<String>, PayloadError> {
            match (sent, current) {
                (Some(value), _) => Ok(value),
                (None, Some(user)) => Ok(read(user).clone()),
                (None, None) => Err(absent(name)),
            }
        };
        let username = pick(a.username, |u| &u.username, "username")?;
        let first_name = pick(a.first_name, |u| &u.first_name, "firstName")?;
        let last_name = pick(a.last_name, |u| &u.last_name, "lastName")?;
        let locked = match (a.locked, current) {
            (Some(locked), _) => locked,
            (None, Some(user)) => user.locked,
            (None, None) => return Err(absent("locked")),
        };
        let event_id = outreach_event_id(self.id.0, &wire_time(self.updated_at));
        let change = UserChange {
            schema: SCHEMA.to_owned(),
            event_id,
            source: Source::Outreach,
            org_id: None,
            user_id: self.id.0.to_string(),
            change: self.action.change(),
            changed_fields: match self.action {
                UserAction::Created => Vec::new(),
                UserAction::Updated => self.changed,
            },
            user: UserState {
                email_normalized: Some(normalize_email(&email)),
                email: Some(email),
                username,
                first_name,
                last_name,
                title: None,
                is_active: None,
                created_date: None,
                last_modified_date: Some(self.updated_at),
                locked: Some(locked),
            },
            origin: Origin {
                transport: TRANSPORT.to_owned(),
                topic: Some(self.event_name),
                commit_timestamp: Some(self.updated_at),
                ..Origin::default()
            },
            observed_at,
        };
        change
            .validate()
            .map_err(|e| PayloadError::new(format!("event.{}", e.field), e.problem))?;
        Ok(change)
    }
}

impl fmt::Display for UserDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of Outreach user {}", self.event_name, self.id)
    }
}

/// Outreach's timestamp form: UTC, milliseconds, `Z`.
fn wire_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn resource_id(id: Option<&Value>, field: &str) -> Result<OutreachUserId, PayloadError> {
    let id = id.ok_or_else(|| PayloadError::new(field, "is absent"))?;
    let ResourceId(id) = serde_json::from_value(id.clone())
        .map_err(|e| PayloadError::new(field, format!("{id} is not an id: {e}")))?;
    if id <= 0 {
        return Err(PayloadError::new(
            field,
            format!("is {id}; Outreach user ids are positive"),
        ));
    }
    Ok(OutreachUserId(id))
}

fn attributes_sent(
    attributes: &Map<String, Value>,
    prefix: &str,
) -> Result<UserAttributesSent, PayloadError> {
    let email = match attributes.get("email") {
        None => None,
        Some(Value::String(email)) if !email.trim().is_empty() => Some(email.clone()),
        Some(Value::String(_)) => {
            return Err(PayloadError::new(
                format!("{prefix}.email"),
                "is empty; every Outreach user has an email",
            ));
        }
        Some(other) => {
            return Err(PayloadError::new(
                format!("{prefix}.email"),
                format!("is {other}, not a string; every Outreach user has an email"),
            ));
        }
    };
    let locked = match attributes.get("locked") {
        None => None,
        Some(Value::Bool(locked)) => Some(*locked),
        Some(other) => {
            return Err(PayloadError::new(
                format!("{prefix}.locked"),
                format!("is {other}, not a boolean"),
            ));
        }
    };
    Ok(UserAttributesSent {
        email,
        username: text(attributes, prefix, "username")?,
        first_name: text(attributes, prefix, "firstName")?,
        last_name: text(attributes, prefix, "lastName")?,
        locked,
    })
}

/// A nullable string attribute: absent, `null`, or a string.
fn text(
    attributes: &Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<Option<String>>, PayloadError> {
    match attributes.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(value)) => Ok(Some(Some(value.clone()))),
        Some(other) => Err(PayloadError::new(
            format!("{prefix}.{name}"),
            format!("is {other}, not a string or null"),
        )),
    }
}

/// A timestamp attribute: absent or an RFC 3339 string.
fn timestamp(
    attributes: &Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<DateTime<Utc>>, PayloadError> {
    match attributes.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| {
                PayloadError::new(
                    format!("{prefix}.{name}"),
                    format!("{text:?} is not an RFC 3339 timestamp: {e}"),
                )
            }),
        Some(other) => Err(PayloadError::new(
            format!("{prefix}.{name}"),
            format!("is {other}, not a timestamp string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"whsec-test";

    fn parse(value: Value) -> Result<Delivery, PayloadError> {
        parse_delivery(value.to_string().as_bytes())
    }

    fn user_delivery(value: Value) -> UserDelivery {
        match parse(value).expect("parses") {
            Delivery::User(delivery) => *delivery,
            other => panic!("not a user delivery: {other:?}"),
        }
    }

    fn created() -> Value {
        json!({
            "data": {"type": "user", "id": "42", "attributes": {
                "email": "Jane.Doe@Acme.test", "username": "jdoe", "firstName": "Jane",
                "lastName": "Doe", "locked": false, "title": "AE",
                "createdAt": "2025-01-02T03:04:05.000Z", "updatedAt": "2025-01-02T03:04:05.000Z"
            }},
            "meta": {"deliveredAt": "2025-01-02T03:04:06.120Z", "eventName": "user.created"}
        })
    }

    fn locked_v1() -> Value {
        json!({
            "data": {"type": "user", "id": "42", "attributes": {
                "locked": true, "updatedAt": "2025-02-03T04:05:06.789Z"
            }},
            "meta": {"deliveredAt": "2025-02-03T04:05:07.000Z", "eventName": "user.updated"}
        })
    }

    fn locked_v2() -> Value {
        let mut v = locked_v1();
        v["beforeUpdate"] = json!({"type": "user", "id": "42", "attributes": {
            "locked": false, "updatedAt": "2025-01-02T03:04:05.000Z"
        }});
        v
    }

    fn read_user() -> OutreachUser {
        OutreachUser {
            id: OutreachUserId(42),
            email: "jane.doe@acme.test".into(),
            username: Some("jdoe".into()),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            title: Some("AE".into()),
            locked: false,
            custom: Default::default(),
            updated_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2025-02-03T04:05:08Z".parse().unwrap()
    }

    #[test]
    fn a_signature_made_with_the_secret_is_accepted_in_either_case() {
        let body = br#"{"data":{}}"#;
        let signature = sign(SECRET, body);
        assert_eq!(signature.len(), 64);
        assert_eq!(
            verify_signature(SECRET, Some(signature.as_bytes()), body),
            Ok(())
        );
        let upper = format!(" {} ", signature.to_uppercase());
        assert_eq!(
            verify_signature(SECRET, Some(upper.as_bytes()), body),
            Ok(())
        );
    }

    #[test]
    fn a_known_hmac_sha256_vector_matches() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn missing_malformed_and_wrong_signatures_are_told_apart() {
        let body = b"{}";
        assert_eq!(
            verify_signature(SECRET, None, body),
            Err(SignatureError::Missing)
        );
        for bad in ["zz", "abc", "", &"ab".repeat(31), &"ab".repeat(33)] {
            assert_eq!(
                verify_signature(SECRET, Some(bad.as_bytes()), body),
                Err(SignatureError::NotHex),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify_signature(SECRET, Some(&[0xff, 0xfe]), body),
            Err(SignatureError::NotHex)
        );
        let other_secret = sign(b"another secret", body);
        assert_eq!(
            verify_signature(SECRET, Some(other_secret.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
        let other_body = sign(SECRET, b"{ }");
        assert_eq!(
            verify_signature(SECRET, Some(other_body.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn signature_errors_never_carry_the_secret_or_the_signature() {
        let signature = sign(SECRET, b"x");
        for error in [
            SignatureError::Missing,
            SignatureError::NotHex,
            SignatureError::Mismatch,
        ] {
            let text = error.to_string();
            assert!(!text.contains("whsec-test") && !text.contains(&signature));
            assert!(text.contains("Outreach-Webhook-Signature"), "{text}");
        }
    }

    #[test]
    fn a_complete_create_becomes_a_create_event_without_a_read() {
        let delivery = user_delivery(created());
        assert_eq!(delivery.action, UserAction::Created);
        assert_eq!(delivery.id, OutreachUserId(42));
        assert!(delivery.missing().is_empty());
        assert_eq!(delivery.payload_version(), PayloadVersion::V1);
        let event = delivery.into_change(None, now()).unwrap();
        assert_eq!(event.event_id, "or:42:2025-01-02T03:04:05.000Z");
        assert_eq!(event.source, Source::Outreach);
        assert_eq!(event.user_id, "42");
        assert_eq!(event.change, ChangeKind::Create);
        assert!(event.changed_fields.is_empty());
        assert_eq!(event.user.email.as_deref(), Some("Jane.Doe@Acme.test"));
        assert_eq!(
            event.user.email_normalized.as_deref(),
            Some("jane.doe@acme.test")
        );
        assert_eq!(event.user.username.as_deref(), Some("jdoe"));
        assert_eq!(event.user.first_name.as_deref(), Some("Jane"));
        assert_eq!(event.user.last_name.as_deref(), Some("Doe"));
        assert_eq!(event.user.locked, Some(false));
        assert_eq!(event.user.title, None, "Outreach events do not carry title");
        assert_eq!(event.user.is_active, None);
        assert_eq!(event.origin.transport, "webhook");
        assert_eq!(event.origin.topic.as_deref(), Some("user.created"));
        assert_eq!(
            event.origin.commit_timestamp,
            Some("2025-01-02T03:04:05Z".parse().unwrap())
        );
        assert_eq!(event.user.last_modified_date, event.origin.commit_timestamp);
        assert_eq!(event.observed_at, now());
        assert_eq!(event.kafka_key(), "jane.doe@acme.test");
        event.validate().unwrap();
        crate::model::event::tests::assert_matches_schema(&serde_json::to_value(&event).unwrap());
    }

    #[test]
    fn a_partial_v1_update_names_what_it_lacks_and_is_completed_by_a_read() {
        let delivery = user_delivery(locked_v1());
        assert_eq!(delivery.action, UserAction::Updated);
        assert_eq!(
            delivery.missing(),
            ["email", "username", "firstName", "lastName"]
        );
        let err = delivery.clone().into_change(None, now()).unwrap_err();
        assert_eq!(err.field, "data.attributes.email");

        let event = delivery.into_change(Some(&read_user()), now()).unwrap();
        assert_eq!(event.event_id, "or:42:2025-02-03T04:05:06.789Z");
        assert_eq!(event.change, ChangeKind::Update);
        assert_eq!(event.changed_fields, ["locked", "updatedAt"]);
        assert_eq!(
            event.user.locked,
            Some(true),
            "the payload wins over the read"
        );
        assert_eq!(event.user.email.as_deref(), Some("jane.doe@acme.test"));
        assert_eq!(event.user.first_name.as_deref(), Some("Jane"));
        crate::model::event::tests::assert_matches_schema(&serde_json::to_value(&event).unwrap());
    }

    #[test]
    fn v2_reads_before_update_and_makes_the_same_event_as_v1() {
        let v2 = user_delivery(locked_v2());
        assert_eq!(v2.payload_version(), PayloadVersion::V2);
        assert_eq!(
            v2.before.as_ref().unwrap().locked,
            Some(false),
            "the prior value"
        );
        let v1 = user_delivery(locked_v1());
        let user = read_user();
        assert_eq!(
            v2.into_change(Some(&user), now()).unwrap(),
            v1.into_change(Some(&user), now()).unwrap()
        );
    }

    #[test]
    fn v2_adds_the_names_in_before_update_to_the_changed_fields() {
        let mut v = locked_v2();
        v["beforeUpdate"]["attributes"]["title"] = json!("AE");
        v["data"]["attributes"]["email"] = json!("jane.doe@acme.test");
        let event = user_delivery(v)
            .into_change(Some(&read_user()), now())
            .unwrap();
        assert_eq!(
            event.changed_fields,
            ["email", "locked", "title", "updatedAt"]
        );
    }

    #[test]
    fn nulls_in_the_payload_are_values_not_gaps() {
        let mut v = locked_v1();
        let attrs = v["data"]["attributes"].as_object_mut().unwrap();
        attrs.insert("email".into(), json!("a@b.test"));
        attrs.insert("username".into(), Value::Null);
        attrs.insert("firstName".into(), Value::Null);
        attrs.insert("lastName".into(), json!("Solo"));
        let delivery = user_delivery(v);
        assert!(delivery.missing().is_empty());
        let event = delivery.into_change(None, now()).unwrap();
        assert_eq!(event.user.username, None);
        assert_eq!(event.user.first_name, None);
        assert_eq!(event.user.last_name.as_deref(), Some("Solo"));
    }

    #[test]
    fn ids_may_be_strings_or_integers() {
        let mut v = created();
        v["data"]["id"] = json!(42);
        assert_eq!(user_delivery(v).id, OutreachUserId(42));
    }

    #[test]
    fn other_resources_and_actions_are_ignored() {
        let prospect = json!({
            "data": {"type": "prospect", "id": "7", "attributes": {"emails": ["x@y.test"]}},
            "meta": {"deliveredAt": "2025-01-02T03:04:05.000Z", "eventName": "prospect.updated"}
        });
        match parse(prospect).unwrap() {
            Delivery::Ignored { event_name, reason } => {
                assert_eq!(event_name, "prospect.updated");
                assert!(reason.contains("prospect"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let mut destroyed = created();
        destroyed["meta"]["eventName"] = json!("user.destroyed");
        assert!(matches!(
            parse(destroyed).unwrap(),
            Delivery::Ignored { .. }
        ));
    }

    #[test]
    fn a_broken_document_under_an_empty_key_is_named_as_the_document() {
        let error = parse_delivery(br#"{"":{data":1}}"#).unwrap_err();
        assert_eq!(error.field, "(document)");
        assert!(!error.problem.is_empty());
    }

    /// Each broken payload and the member its error must name.
    #[test]
    fn errors_name_the_member_that_is_wrong() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| *v = json!([])), "(document)"),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("meta");
                }),
                "(document)",
            ),
            (
                Box::new(|v| v["meta"]["eventName"] = json!(3)),
                "meta.eventName",
            ),
            (
                Box::new(|v| v["meta"]["eventName"] = json!("usercreated")),
                "meta.eventName",
            ),
            (
                Box::new(|v| v["meta"]["eventName"] = json!("prospect.created")),
                "data.type",
            ),
            (
                Box::new(|v| {
                    v["data"].as_object_mut().unwrap().remove("id");
                }),
                "data.id",
            ),
            (Box::new(|v| v["data"]["id"] = json!("4x2")), "data.id"),
            (Box::new(|v| v["data"]["id"] = json!("0")), "data.id"),
            (
                Box::new(|v| {
                    v["data"].as_object_mut().unwrap().remove("attributes");
                }),
                "data.attributes",
            ),
            (
                Box::new(|v| {
                    v["data"]["attributes"]
                        .as_object_mut()
                        .unwrap()
                        .remove("updatedAt");
                }),
                "data.attributes.updatedAt",
            ),
            (
                Box::new(|v| v["data"]["attributes"]["updatedAt"] = json!("yesterday")),
                "data.attributes.updatedAt",
            ),
            (
                Box::new(|v| v["data"]["attributes"]["locked"] = json!("yes")),
                "data.attributes.locked",
            ),
            (
                Box::new(|v| v["data"]["attributes"]["locked"] = Value::Null),
                "data.attributes.locked",
            ),
            (
                Box::new(|v| v["data"]["attributes"]["email"] = json!(" ")),
                "data.attributes.email",
            ),
            (
                Box::new(|v| v["data"]["attributes"]["email"] = Value::Null),
                "data.attributes.email",
            ),
            (
                Box::new(|v| v["data"]["attributes"]["firstName"] = json!(7)),
                "data.attributes.firstName",
            ),
            (
                Box::new(|v| {
                    v["beforeUpdate"] = json!({"type": "user", "id": "43", "attributes": {}})
                }),
                "beforeUpdate.id",
            ),
            (
                Box::new(|v| {
                    v["beforeUpdate"] = json!({"type": "prospect", "id": "42", "attributes": {}})
                }),
                "beforeUpdate.type",
            ),
            (
                Box::new(|v| {
                    v["beforeUpdate"] =
                        json!({"type": "user", "id": "42", "attributes": {"locked": 1}})
                }),
                "beforeUpdate.attributes.locked",
            ),
        ];
        for (edit, field) in cases {
            let mut v = created();
            edit(&mut v);
            let err = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(err.field, field, "{v}: {err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
        assert_eq!(parse_delivery(b"not json").unwrap_err().field, "(document)");
    }

    #[test]
    fn a_read_of_another_user_is_refused() {
        let mut other = read_user();
        other.id = OutreachUserId(43);
        let err = user_delivery(locked_v1())
            .into_change(Some(&other), now())
            .unwrap_err();
        assert_eq!(err.field, "data.id");
    }

    #[test]
    fn event_ids_use_outreach_timestamps_whatever_the_offset_sent() {
        let mut v = created();
        v["data"]["attributes"]["updatedAt"] = json!("2025-01-02T04:04:05+01:00");
        assert_eq!(
            user_delivery(v).event_id(),
            "or:42:2025-01-02T03:04:05.000Z"
        );
    }
}
