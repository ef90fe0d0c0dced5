//! The JSON:API wire shapes Outreach speaks for users, and nothing else.
//!
//! Outreach implements JSON:API 1.0 with a few quirks that this module absorbs so the client and
//! the engine never see them:
//!
//! - resource ids are JSON integers, while webhook payloads send them as strings: both decode;
//! - relationship objects come as to-one `data`, to-many `data` arrays, `links` only, or with
//!   neither: all are tolerated, and usersync reads none of them;
//! - collections carry `links.next` only while more pages follow, and may omit `links` entirely;
//! - failures carry `errors[]` whose `id` is a stable machine-readable code (not an occurrence id),
//!   with the message under `detail` or, in some documented examples, `details`;
//! - the API gateway answers undecodable tokens with a bare `{"error", "description"}` object and
//!   the token endpoint with OAuth's `{"error", "error_description"}`.
//!
//! Keeping the wire shapes apart from [`OutreachUser`] means the domain type has no serde
//! attributes tied to one remote API, and decoding problems are reported with the path that failed.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::outreach_user::{CUSTOM_FIELDS, OutreachUser, OutreachUserId, UserAttributes};

/// The JSON:API `type` of an Outreach user.
pub const USER_TYPE: &str = "user";

/// The media type Outreach requires on every request, reads included.
pub const MEDIA_TYPE: &str = "application/vnd.api+json";

/// A resource id as it arrives: an integer from the REST API, a string from webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ResourceId(pub i64);

impl<'de> Deserialize<'de> for ResourceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = ResourceId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer id or a string holding one")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ResourceId, E> {
                Ok(ResourceId(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ResourceId, E> {
                i64::try_from(v)
                    .map(ResourceId)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ResourceId, E> {
                v.trim()
                    .parse::<i64>()
                    .map(ResourceId)
                    .map_err(|_| E::custom(format!("id {v:?} is not an integer")))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// A top-level document: `data` on success, `errors` on failure.
#[derive(Debug, Clone, Deserialize)]
pub struct Document<D> {
    pub data: Option<D>,
    #[serde(default)]
    pub errors: Vec<ErrorObject>,
    #[serde(default)]
    pub links: Option<TopLinks>,
}

/// Top-level `links` of a collection. Only `next` drives paging.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopLinks {
    #[serde(default)]
    pub first: Option<String>,
    #[serde(default)]
    pub prev: Option<String>,
    #[serde(default)]
    pub next: Option<String>,
}

/// One resource object of type `user`.
#[derive(Debug, Clone, Deserialize)]
pub struct UserResource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<ResourceId>,
    #[serde(default)]
    pub attributes: UserWireAttributes,
    #[serde(default)]
    pub relationships: BTreeMap<String, Relationship>,
}

/// The user attributes usersync reads, under Outreach's camelCase names. Every one is nullable
/// in Outreach's schema, and sparse fieldsets may leave any of them out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserWireAttributes {
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub locked: Option<bool>,
    pub custom1: Option<String>,
    pub custom2: Option<String>,
    pub custom3: Option<String>,
    pub custom4: Option<String>,
    pub custom5: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A relationship object. Outreach sends to-one `data`, to-many `data` arrays, `links` only, or
/// (seen by connectors) neither; all decode.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Relationship {
    #[serde(default)]
    pub data: Option<RelationshipData>,
    #[serde(default)]
    pub links: Option<Value>,
}

/// The `data` member of a relationship.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RelationshipData {
    One(ResourceIdentifier),
    Many(Vec<ResourceIdentifier>),
}

/// `{"type": ..., "id": ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceIdentifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: ResourceId,
}

/// One entry of `errors[]`. Outreach uses `id` as the error code (`validationError`,
/// `resourceNotFound`, ...).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorObject {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    detail: Option<Value>,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    pub source: Option<ErrorSource>,
}

/// Where in the request document an error points.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorSource {
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub parameter: Option<String>,
}

impl ErrorObject {
    /// The human-readable message: `detail`, else `details` (the spelling of Outreach's documented
    /// 415 example), else the `title`.
    pub fn message(&self) -> Option<String> {
        fn text(v: &Value) -> Option<String> {
            match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        }
        self.detail
            .as_ref()
            .and_then(text)
            .or_else(|| self.details.as_ref().and_then(text))
            .or_else(|| self.title.clone())
    }

    /// `source.pointer`, if any.
    pub fn pointer(&self) -> Option<&str> {
        self.source.as_ref()?.pointer.as_deref()
    }
}

/// The error body of a failed response, in whichever shape it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorBody {
    /// JSON:API `errors[]`, reduced to what classification needs.
    JsonApi(Vec<ErrorEntry>),
    /// The gateway's `{"error": ..., "description": ...}` or OAuth's
    /// `{"error": ..., "error_description": ...}`.
    Bare {
        error: String,
        description: Option<String>,
    },
    /// Anything else, kept (shortened) for the error message.
    Other(String),
}

/// One JSON:API error, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    pub code: Option<String>,
    pub message: Option<String>,
    pub pointer: Option<String>,
}

/// The longest stretch of an unrecognised body kept for an error message.
const OTHER_BODY_LIMIT: usize = 300;

impl ErrorBody {
    /// Reads an error body in any of the shapes Outreach sends.
    pub fn parse(body: &[u8]) -> ErrorBody {
        #[derive(Deserialize)]
        struct Bare {
            error: String,
            #[serde(default)]
            description: Option<String>,
            #[serde(default)]
            error_description: Option<String>,
        }
        #[derive(Deserialize)]
        struct Errors {
            errors: Vec<ErrorObject>,
        }

        if let Ok(doc) = serde_json::from_slice::<Errors>(body) {
            return ErrorBody::JsonApi(
                doc.errors
                    .iter()
                    .map(|e| ErrorEntry {
                        code: e.id.clone(),
                        message: e.message(),
                        pointer: e.pointer().map(str::to_owned),
                    })
                    .collect(),
            );
        }
        if let Ok(bare) = serde_json::from_slice::<Bare>(body) {
            return ErrorBody::Bare {
                error: bare.error,
                description: bare.description.or(bare.error_description),
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let cut = text
            .char_indices()
            .nth(OTHER_BODY_LIMIT)
            .map_or(text.len(), |(i, _)| i);
        ErrorBody::Other(text[..cut].to_owned())
    }

    /// The first JSON:API error, if the body had that shape.
    pub fn first(&self) -> Option<&ErrorEntry> {
        match self {
            ErrorBody::JsonApi(entries) => entries.first(),
            _ => None,
        }
    }

    /// The first error code (`errors[0].id` or the bare `error`).
    pub fn code(&self) -> Option<&str> {
        match self {
            ErrorBody::JsonApi(entries) => entries.first()?.code.as_deref(),
            ErrorBody::Bare { error, .. } => Some(error),
            ErrorBody::Other(_) => None,
        }
    }

    /// A one-line summary for error messages: every JSON:API message joined, or the bare
    /// error with its description. Never empty: a blank part gives way to the next, and a body
    /// with nothing to say is "unspecified error".
    pub fn summary(&self) -> String {
        const UNSPECIFIED: &str = "unspecified error";
        let filled = |text: Option<&String>| text.filter(|t| !t.trim().is_empty()).cloned();
        match self {
            ErrorBody::JsonApi(entries) if !entries.is_empty() => entries
                .iter()
                .map(|e| {
                    filled(e.message.as_ref())
                        .or_else(|| filled(e.code.as_ref()))
                        .unwrap_or_else(|| UNSPECIFIED.to_owned())
                })
                .collect::<Vec<_>>()
                .join("; "),
            ErrorBody::JsonApi(_) => "empty errors array".to_owned(),
            ErrorBody::Bare { error, description } => {
                let parts: Vec<String> = [filled(Some(error)), filled(description.as_ref())]
                    .into_iter()
                    .flatten()
                    .collect();
                if parts.is_empty() {
                    UNSPECIFIED.to_owned()
                } else {
                    parts.join(" ")
                }
            }
            ErrorBody::Other(text) if text.is_empty() => "empty body".to_owned(),
            ErrorBody::Other(text) => text.clone(),
        }
    }
}

/// Why a user resource could not become an [`OutreachUser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDecodeError(pub String);

impl fmt::Display for UserDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl UserResource {
    /// The domain user. Fails when the resource is not a user, has no id, or has no email
    /// (every Outreach user has one; its absence means the document is not what we asked for).
    pub fn into_user(self) -> Result<OutreachUser, UserDecodeError> {
        if self.kind != USER_TYPE {
            return Err(UserDecodeError(format!(
                "expected a resource of type {USER_TYPE:?}, got {:?}",
                self.kind
            )));
        }
        let id = self
            .id
            .ok_or_else(|| UserDecodeError("user resource has no id".to_owned()))?;
        let a = self.attributes;
        let email = a
            .email
            .ok_or_else(|| UserDecodeError(format!("user {} has no email attribute", id.0)))?;
        Ok(OutreachUser {
            id: OutreachUserId(id.0),
            email,
            username: a.username,
            first_name: a.first_name,
            last_name: a.last_name,
            title: a.title,
            locked: a.locked.unwrap_or(false),
            custom: [a.custom1, a.custom2, a.custom3, a.custom4, a.custom5],
            updated_at: a.updated_at,
        })
    }
}

/// The JSON:API `attributes` object describing a whole user (the inverse of
/// [`UserResource::into_user`], used by tests and by anything that echoes users back).
pub fn user_attributes_json(user: &OutreachUser) -> serde_json::Map<String, Value> {
    let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
    let mut map = serde_json::Map::new();
    map.insert("email".into(), Value::String(user.email.clone()));
    map.insert("username".into(), text(&user.username));
    map.insert("firstName".into(), text(&user.first_name));
    map.insert("lastName".into(), text(&user.last_name));
    map.insert("title".into(), text(&user.title));
    map.insert("locked".into(), Value::Bool(user.locked));
    for (name, value) in CUSTOM_FIELDS.iter().zip(&user.custom) {
        map.insert((*name).into(), text(value));
    }
    map.insert(
        "updatedAt".into(),
        user.updated_at
            .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
            .unwrap_or(Value::Null),
    );
    map
}

/// A user as a resource object (`{"type": "user", "id": .., "attributes": ..}`).
pub fn user_resource_json(user: &OutreachUser) -> Value {
    serde_json::json!({
        "type": USER_TYPE,
        "id": user.id.0,
        "attributes": user_attributes_json(user),
    })
}

/// The request document of `POST /users`: no id.
pub fn create_user_document(attrs: &UserAttributes) -> Value {
    serde_json::json!({
        "data": {"type": USER_TYPE, "attributes": attrs.to_json()}
    })
}

/// The request document of `PATCH /users/{id}`: `type` and `id` are required and must match
/// the URL.
pub fn update_user_document(id: OutreachUserId, attrs: &UserAttributes) -> Value {
    serde_json::json!({
        "data": {"type": USER_TYPE, "id": id.0, "attributes": attrs.to_json()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode<T: for<'de> Deserialize<'de>>(v: Value) -> T {
        serde_json::from_value(v).expect("decodes")
    }

    #[test]
    fn ids_decode_from_integers_and_strings() {
        assert_eq!(decode::<ResourceId>(json!(42)), ResourceId(42));
        assert_eq!(decode::<ResourceId>(json!("42")), ResourceId(42));
        assert!(serde_json::from_value::<ResourceId>(json!("4x2")).is_err());
        assert!(serde_json::from_value::<ResourceId>(json!(1.5)).is_err());
    }

    #[test]
    fn a_full_user_resource_becomes_an_outreach_user() {
        let doc: Document<UserResource> = decode(json!({
            "data": {"type": "user", "id": 42,
              "attributes": {"email": "jane@acme.com", "username": "jdoe", "firstName": "Jane",
                             "lastName": "Doe", "title": "AE", "locked": true,
                             "custom1": "005000000000001AAA", "custom3": null,
                             "updatedAt": "2025-01-02T03:04:05.000Z", "name": "Jane Doe"},
              "relationships": {
                "profile": {"data": {"type": "profile", "id": 3}},
                "role": {"data": null},
                "teams": {"data": [{"type": "team", "id": "9"}]},
                "mailboxes": {"links": {"related": "https://api.outreach.io/api/v2/mailboxes"}},
                "batches": {}
              },
              "links": {"self": "https://api.outreach.io/api/v2/users/42"}}
        }));
        let user = doc.data.unwrap().into_user().unwrap();
        assert_eq!(user.id, OutreachUserId(42));
        assert_eq!(user.email, "jane@acme.com");
        assert_eq!(user.username.as_deref(), Some("jdoe"));
        assert_eq!(user.first_name.as_deref(), Some("Jane"));
        assert_eq!(user.last_name.as_deref(), Some("Doe"));
        assert_eq!(user.title.as_deref(), Some("AE"));
        assert!(user.locked);
        assert_eq!(user.custom[0].as_deref(), Some("005000000000001AAA"));
        assert_eq!(user.custom[2], None);
        assert_eq!(
            user.updated_at.unwrap().to_rfc3339(),
            "2025-01-02T03:04:05+00:00"
        );
    }

    #[test]
    fn string_ids_and_sparse_attributes_decode() {
        let res: UserResource = decode(json!({
            "type": "user", "id": "7", "attributes": {"email": "a@b.c"}
        }));
        let user = res.into_user().unwrap();
        assert_eq!(user.id, OutreachUserId(7));
        assert!(!user.locked);
        assert_eq!(user.updated_at, None);
    }

    #[test]
    fn wrong_type_missing_id_or_email_are_decode_errors() {
        let wrong: UserResource = decode(json!({"type": "prospect", "id": 1, "attributes": {}}));
        assert!(wrong.into_user().unwrap_err().0.contains("prospect"));
        let no_id: UserResource = decode(json!({"type": "user", "attributes": {"email": "x@y"}}));
        assert!(no_id.into_user().is_err());
        let no_email: UserResource = decode(json!({"type": "user", "id": 1}));
        assert!(no_email.into_user().unwrap_err().0.contains("email"));
    }

    #[test]
    fn collections_with_and_without_links() {
        let page: Document<Vec<UserResource>> = decode(json!({
            "data": [{"type": "user", "id": 1, "attributes": {"email": "a@b.c"}}],
            "links": {"first": "https://x/api/v2/users?page[size]=1",
                      "next": "https://x/api/v2/users?page[after]=abc&page[size]=1"}
        }));
        assert_eq!(page.data.as_ref().unwrap().len(), 1);
        assert!(
            page.links
                .unwrap()
                .next
                .unwrap()
                .contains("page[after]=abc")
        );

        let last: Document<Vec<UserResource>> = decode(json!({"data": []}));
        assert!(last.links.is_none());
        let null_next: Document<Vec<UserResource>> =
            decode(json!({"data": [], "links": {"next": null}}));
        assert!(null_next.links.unwrap().next.is_none());
    }

    #[test]
    fn json_api_errors_with_detail_details_and_pointer() {
        let body = ErrorBody::parse(
            br#"{"errors":[{"id":"validationError","title":"Validation Error",
                 "detail":"Email has already been taken",
                 "source":{"pointer":"/data/attributes/email"}}]}"#,
        );
        let first = body.first().unwrap();
        assert_eq!(first.code.as_deref(), Some("validationError"));
        assert_eq!(
            first.message.as_deref(),
            Some("Email has already been taken")
        );
        assert_eq!(first.pointer.as_deref(), Some("/data/attributes/email"));

        let plural = ErrorBody::parse(
            br#"{"errors":[{"id":"unsupportedMediaType","title":"Unsupported Media Type",
                 "details":"Expected Content-Type header to be application/vnd.api+json"}]}"#,
        );
        assert_eq!(plural.code(), Some("unsupportedMediaType"));
        assert!(plural.summary().starts_with("Expected Content-Type"));

        let title_only = ErrorBody::parse(br#"{"errors":[{"id":"x","title":"Only a title"}]}"#);
        assert_eq!(title_only.summary(), "Only a title");
    }

    #[test]
    fn bare_gateway_and_oauth_errors() {
        let gateway = ErrorBody::parse(
            br#"{"error":"Invalid JWT token.","description":"The JWT token could not be decoded."}"#,
        );
        assert_eq!(
            gateway,
            ErrorBody::Bare {
                error: "Invalid JWT token.".into(),
                description: Some("The JWT token could not be decoded.".into())
            }
        );
        let oauth = ErrorBody::parse(
            br#"{"error":"invalid_grant","error_description":"The provided authorization grant is invalid"}"#,
        );
        assert_eq!(oauth.code(), Some("invalid_grant"));
        assert!(oauth.summary().contains("authorization grant"));
    }

    #[test]
    fn a_blank_error_body_still_has_a_summary() {
        for body in [
            r#"{"error":""}"#,
            r#"{"error":" ","description":""}"#,
            r#"{"errors":[{"detail":"","id":" "}]}"#,
        ] {
            assert_eq!(
                ErrorBody::parse(body.as_bytes()).summary(),
                "unspecified error",
                "{body}"
            );
        }
        assert_eq!(
            ErrorBody::parse(br#"{"error":"","description":"try later"}"#).summary(),
            "try later"
        );
        assert_eq!(
            ErrorBody::parse(br#"{"errors":[{"detail":"","id":"validationError"}]}"#).summary(),
            "validationError"
        );
    }

    #[test]
    fn unrecognised_bodies_are_kept_short() {
        let long = "x".repeat(1000);
        match ErrorBody::parse(long.as_bytes()) {
            ErrorBody::Other(text) => assert_eq!(text.len(), OTHER_BODY_LIMIT),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(ErrorBody::parse(b"").summary(), "empty body");
    }

    #[test]
    fn write_documents_carry_type_and_only_sent_attributes() {
        let attrs = UserAttributes {
            email: Some("new@acme.com".into()),
            first_name: Some(Some("New".into())),
            ..Default::default()
        };
        assert_eq!(
            create_user_document(&attrs),
            json!({"data": {"type": "user",
                            "attributes": {"email": "new@acme.com", "firstName": "New"}}})
        );
        let lock = UserAttributes {
            locked: Some(true),
            ..Default::default()
        };
        assert_eq!(
            update_user_document(OutreachUserId(42), &lock),
            json!({"data": {"type": "user", "id": 42, "attributes": {"locked": true}}})
        );
    }

    #[test]
    fn a_user_round_trips_through_its_resource_object() {
        let user = OutreachUser {
            id: OutreachUserId(5),
            email: "r@t.io".into(),
            username: Some("rt".into()),
            first_name: None,
            last_name: Some("T".into()),
            title: None,
            locked: true,
            custom: [None, Some("c2".into()), None, None, Some("c5".into())],
            updated_at: Some("2024-05-06T07:08:09.123Z".parse().unwrap()),
        };
        let back: UserResource = decode(user_resource_json(&user));
        assert_eq!(back.into_user().unwrap(), user);
    }
}
