//! The normalized event, `user_change.v1`.
//!
//! One event per changed user, holding the user's full state after the change. It is a public
//! contract (`schemas/user_change.v1.json`, `docs/event-schema.md`): the subscriber and the
//! webhook receiver produce it, the processor and any other team consume it. Fields are only
//! ever added, never changed in meaning; a breaking change is a new `schema` value.
//!
//! Parsing is strict about what the processor relies on (ids, the schema tag, the ordering
//! fields) and names the field that is wrong, so a bad record can be dead-lettered with a
//! reason a person can act on.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::salesforce_id::SalesforceId;

/// The value of the `schema` field and header.
pub const SCHEMA: &str = "user_change.v1";

/// The JSON Schema of the event (`schemas/user_change.v1.json`), the published contract.
pub const JSON_SCHEMA: &str = include_str!("../../schemas/user_change.v1.json");

/// Where the change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Salesforce,
    Outreach,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Salesforce => "salesforce",
            Source::Outreach => "outreach",
        }
    }
}

/// What happened to the user. The processor treats all of them alike because `user` is always
/// the full state after the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
    Undelete,
    Snapshot,
}

/// The user's full state after the change. Unknown fields are `null`, never absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserState {
    #[serde(deserialize_with = "present")]
    pub email: Option<String>,
    #[serde(deserialize_with = "present")]
    pub email_normalized: Option<String>,
    #[serde(deserialize_with = "present")]
    pub username: Option<String>,
    #[serde(deserialize_with = "present")]
    pub first_name: Option<String>,
    #[serde(deserialize_with = "present")]
    pub last_name: Option<String>,
    #[serde(deserialize_with = "present")]
    pub title: Option<String>,
    #[serde(deserialize_with = "present")]
    pub is_active: Option<bool>,
    #[serde(deserialize_with = "present")]
    pub created_date: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "present")]
    pub last_modified_date: Option<DateTime<Utc>>,
    /// Outreach events only: whether the Outreach user is locked (Outreach's deactivation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
}

/// Where the fact came from, for audit and ordering.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `pubsub`, `cometd`, `rest` (snapshots) or `webhook` (Outreach).
    pub transport: String,
    #[serde(deserialize_with = "present")]
    pub topic: Option<String>,
    /// The opaque replay bytes as lower-case hex (Pub/Sub), or the decimal replay id (CometD).
    #[serde(deserialize_with = "present")]
    pub replay_id: Option<String>,
    #[serde(deserialize_with = "present")]
    pub schema_id: Option<String>,
    #[serde(deserialize_with = "present")]
    pub change_type: Option<String>,
    #[serde(deserialize_with = "present")]
    pub transaction_key: Option<String>,
    #[serde(deserialize_with = "present")]
    pub sequence_number: Option<i64>,
    #[serde(deserialize_with = "present")]
    pub commit_timestamp: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "present")]
    pub commit_number: Option<i64>,
    #[serde(deserialize_with = "present")]
    pub commit_user: Option<String>,
    #[serde(deserialize_with = "present")]
    pub change_origin: Option<String>,
}

/// One `user_change.v1` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    pub schema: String,
    pub event_id: String,
    pub source: Source,
    #[serde(deserialize_with = "present")]
    pub org_id: Option<String>,
    pub user_id: String,
    pub change: ChangeKind,
    pub changed_fields: Vec<String>,
    pub user: UserState,
    pub origin: Origin,
    pub observed_at: DateTime<Utc>,
}

/// Reads a nullable field that must be present: "unknown" is `null`, never absent. (serde
/// would otherwise read a missing `Option` as `None`.)
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// Why an event is not a valid `user_change.v1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct EventError {
    /// The JSON path of the offending field, e.g. `user_id` or `user.email_normalized`.
    pub field: String,
    pub problem: String,
}

impl EventError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

/// Trims and lower-cases an email: the Kafka key and the email group.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The position of a change in the history of one user.
///
/// Salesforce numbers every commit of an org (`commit_number`, increasing); a change received
/// from the stream sits at its commit and, inside its transaction, at its sequence number. A
/// snapshot — the user read through REST — sits at the stream position it was read at: the
/// newest commit the subscriber had seen before the read (for a gap re-read, the GAP event's
/// own commit). Every change up to that commit is in what it read, so it sorts after every
/// stream change of its commit, and of two snapshots at one commit the later read is newer.
///
/// The time a snapshot carries is never its user's `LastModifiedDate`: REST gives that to the
/// whole second, while commit timestamps carry milliseconds, so a re-read made after a change
/// could sort before it (docs/event-schema.md, "Ordering").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub commit_number: Option<i64>,
    /// The commit's time; orders positions that have no commit number.
    pub commit_timestamp: DateTime<Utc>,
    pub sequence_number: Option<i64>,
    /// Snapshots only: when the REST read was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<DateTime<Utc>>,
}

impl Position {
    /// Compares two positions of the same user; `Equal` means "the same point in the user's
    /// history". With commit numbers on both sides they decide; a position without one (a
    /// snapshot read before any change of the org was seen, or an event of another producer)
    /// is older than any position with one, and two such positions compare by time.
    pub fn compare(&self, other: &Position) -> Ordering {
        let primary = match (self.commit_number, other.commit_number) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => self.commit_timestamp.cmp(&other.commit_timestamp),
        };
        primary.then_with(|| match (self.read_at, other.read_at) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => match (self.sequence_number, other.sequence_number) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => Ordering::Equal,
            },
        })
    }
}

impl UserChange {
    /// Parses and validates one event from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let event: UserChange = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            EventError::new(
                if path == "." { "(document)" } else { &path },
                e.inner().to_string(),
            )
        })?;
        event.validate()?;
        Ok(event)
    }

    /// Checks what serde cannot: the schema tag, ids, the normalized email, ordering fields.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.schema != SCHEMA {
            return Err(EventError::new(
                "schema",
                format!("is {:?}; this consumer reads {SCHEMA:?}", self.schema),
            ));
        }
        if self.event_id.trim().is_empty() {
            return Err(EventError::new("event_id", "is empty"));
        }
        if matches!(self.change, ChangeKind::Create | ChangeKind::Snapshot)
            && !self.changed_fields.is_empty()
        {
            return Err(EventError::new(
                "changed_fields",
                format!(
                    "must be empty for a {:?} (the user's full state is the change)",
                    self.change
                ),
            ));
        }
        let transports: &[&str] = match self.source {
            Source::Salesforce => &["pubsub", "cometd", "rest"],
            Source::Outreach => &["webhook"],
        };
        if !transports.contains(&self.origin.transport.as_str()) {
            return Err(EventError::new(
                "origin.transport",
                format!(
                    "is {:?}; a {} event comes by {}",
                    self.origin.transport,
                    self.source.as_str(),
                    transports.join(", ")
                ),
            ));
        }
        match self.source {
            Source::Salesforce => {
                let id = SalesforceId::parse(&self.user_id)
                    .map_err(|e| EventError::new("user_id", e.to_string()))?;
                if !id.is_user() {
                    return Err(EventError::new(
                        "user_id",
                        format!("{id} is not a User id (User ids start with 005)"),
                    ));
                }
                if id.as_str() != self.user_id {
                    return Err(EventError::new(
                        "user_id",
                        format!("must be the 18-character form {id}"),
                    ));
                }
                let org = self.org_id.as_deref().ok_or_else(|| {
                    EventError::new("org_id", "is null; a Salesforce event names its org")
                })?;
                let parsed = SalesforceId::parse(org)
                    .map_err(|e| EventError::new("org_id", e.to_string()))?;
                if parsed.key_prefix() != "00D" || parsed.as_str() != org {
                    return Err(EventError::new(
                        "org_id",
                        format!("must be the 18-character org id (00D…), not {org}"),
                    ));
                }
                if self.user.locked.is_some() {
                    return Err(EventError::new(
                        "user.locked",
                        "is set on a Salesforce event; only Outreach events carry it",
                    ));
                }
                if self.user.is_active.is_none() && self.change != ChangeKind::Delete {
                    return Err(EventError::new(
                        "user.is_active",
                        "is null; a Salesforce event must carry the user's full state",
                    ));
                }
                if self.origin.commit_timestamp.is_none() && self.user.last_modified_date.is_none()
                {
                    return Err(EventError::new(
                        "origin.commit_timestamp",
                        "is null and so is user.last_modified_date; the event cannot be ordered",
                    ));
                }
            }
            Source::Outreach => {
                if self
                    .user_id
                    .parse::<i64>()
                    .map(|id| id <= 0)
                    .unwrap_or(true)
                {
                    return Err(EventError::new(
                        "user_id",
                        format!(
                            "{:?} is not an Outreach user id (a positive decimal integer)",
                            self.user_id
                        ),
                    ));
                }
                if self.user_id.parse::<i64>().map(|id| id.to_string()) != Ok(self.user_id.clone())
                {
                    return Err(EventError::new(
                        "user_id",
                        format!(
                            "{:?} is not written as a plain decimal number",
                            self.user_id
                        ),
                    ));
                }
                if self.user.email.is_none() {
                    return Err(EventError::new(
                        "user.email",
                        "is null on an Outreach event",
                    ));
                }
                if self.user.locked.is_none() {
                    return Err(EventError::new(
                        "user.locked",
                        "is absent on an Outreach event",
                    ));
                }
            }
        }
        match (&self.user.email, &self.user.email_normalized) {
            (Some(email), Some(normalized)) if normalize_email(email) != *normalized => {
                return Err(EventError::new(
                    "user.email_normalized",
                    format!(
                        "is {normalized:?} but user.email {email:?} normalizes to {:?}",
                        normalize_email(email)
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(EventError::new(
                    "user.email_normalized",
                    "is null while user.email is set",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The Kafka record key: the normalized email, or `id:<user id>` for a user with no email.
    pub fn kafka_key(&self) -> String {
        match &self.user.email_normalized {
            Some(email) if !email.is_empty() => email.clone(),
            _ => format!("id:{}", self.user_id),
        }
    }

    /// The position of this change in its user's history ([`Position`]). A snapshot is placed
    /// by the stream position in its `origin` and its read time (`observed_at`); any other
    /// change by its commit, or, from a producer that sends no commit, by its
    /// `last_modified_date` or `observed_at`.
    pub fn position(&self) -> Position {
        if self.change == ChangeKind::Snapshot {
            return Position {
                commit_number: self.origin.commit_number,
                commit_timestamp: self.origin.commit_timestamp.unwrap_or(self.observed_at),
                sequence_number: None,
                read_at: Some(self.observed_at),
            };
        }
        let commit_timestamp = self
            .origin
            .commit_timestamp
            .or(self.user.last_modified_date)
            .unwrap_or(self.observed_at);
        Position {
            commit_number: self.origin.commit_number,
            commit_timestamp,
            sequence_number: self.origin.sequence_number,
            read_at: None,
        }
    }

    /// The time an Outreach event is ordered by: Outreach's `updatedAt` as the webhook
    /// receiver put it in `commit_timestamp`, else the producer's clock.
    pub fn outreach_time(&self) -> DateTime<Utc> {
        self.origin
            .commit_timestamp
            .or(self.user.last_modified_date)
            .unwrap_or(self.observed_at)
    }

    /// The Salesforce user id, for Salesforce events.
    pub fn salesforce_user_id(&self) -> Option<SalesforceId> {
        match self.source {
            Source::Salesforce => SalesforceId::parse(&self.user_id).ok(),
            Source::Outreach => None,
        }
    }

    /// Whether the user is active after this change. Salesforce users cannot be deleted, so a
    /// `delete` reads as deactivation (decisions.md rule 6).
    pub fn is_active(&self) -> bool {
        self.change != ChangeKind::Delete && self.user.is_active.unwrap_or(false)
    }
}

impl fmt::Display for UserChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} of {} user {}",
            self.event_id,
            self.change,
            self.source.as_str(),
            self.user_id
        )
    }
}

/// Builds the `event_id` of a Salesforce change: `sf:<org>:<user>:<transaction>:<sequence>`.
pub fn salesforce_event_id(
    org: &str,
    user: &SalesforceId,
    transaction_key: &str,
    sequence: i64,
) -> String {
    format!("sf:{org}:{user}:{transaction_key}:{sequence}")
}

/// Builds the `event_id` of a snapshot read: `sf:<org>:<user>:snapshot:<commit>:<read at>`,
/// or `sf:<org>:<user>:snapshot:<read at>` when the read has no commit number. One read is one
/// id: a redelivered record is recognized, while a later read of the same user — which may
/// hold a change made within the same second — is a new event.
pub fn snapshot_event_id(
    org: &str,
    user: &SalesforceId,
    commit_number: Option<i64>,
    read_at: DateTime<Utc>,
) -> String {
    let read_at = read_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    match commit_number {
        Some(commit) => format!("sf:{org}:{user}:snapshot:{commit}:{read_at}"),
        None => format!("sf:{org}:{user}:snapshot:{read_at}"),
    }
}

/// Builds the `event_id` of an Outreach webhook delivery: `or:<id>:<updatedAt>`.
pub fn outreach_event_id(outreach_user_id: i64, updated_at: &str) -> String {
    format!("or:{outreach_user_id}:{updated_at}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DESIGN_EXAMPLE: &str = r#"{
      "schema": "user_change.v1",
      "event_id": "sf:00D5g000004ZbcdEAC:0055f00000GBZR4AAP:0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42:1",
      "source": "salesforce",
      "org_id": "00D5g000004ZbcdEAC",
      "user_id": "0055f00000GBZR4AAP",
      "change": "update",
      "changed_fields": ["IsActive", "Title", "LastModifiedDate"],
      "user": {
        "email": "olga.brown@example.com",
        "email_normalized": "olga.brown@example.com",
        "username": "olga.brown@example.com.prod",
        "first_name": "Olga",
        "last_name": "Brown",
        "title": "Former Account Executive",
        "is_active": false,
        "created_date": "2024-01-09T17:02:11Z",
        "last_modified_date": "2024-06-18T11:30:45Z"
      },
      "origin": {
        "transport": "pubsub",
        "topic": "/data/UserChangeEvent",
        "replay_id": "000000000114c17d0000",
        "schema_id": "93etK5psDNYN7fkR6LeDVw",
        "change_type": "UPDATE",
        "transaction_key": "0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42",
        "sequence_number": 1,
        "commit_timestamp": "2024-06-18T11:30:45Z",
        "commit_number": 1100662289041,
        "commit_user": "0055f000005mc66AAA",
        "change_origin": "com/salesforce/api/rest/61.0;client=HRSync"
      },
      "observed_at": "2024-06-18T11:30:46.120Z"
    }"#;

    pub(crate) fn assert_matches_schema(value: &serde_json::Value) {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{value}\nbreaks the schema: {errors:#?}");
    }

    #[test]
    fn the_design_example_and_built_events_match_the_schema() {
        assert_matches_schema(&serde_json::from_str(DESIGN_EXAMPLE).unwrap());
        let event = UserChange::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        assert_matches_schema(&serde_json::to_value(&event).unwrap());
        for n in [1, 42] {
            let built = crate::engine::model::events::created(n, "Ann@Example.com", true, 7);
            assert_matches_schema(&serde_json::to_value(&built).unwrap());
        }
    }

    #[test]
    fn the_schema_refuses_what_validation_refuses() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
        v["user_id"] = "0055f00000GBZR4".into();
        assert!(!validator.is_valid(&v), "15-character ids are not emitted");
        let mut v: serde_json::Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
        v["user"].as_object_mut().unwrap().remove("title");
        assert!(
            !validator.is_valid(&v),
            "unknown fields are null, never absent"
        );
        let mut v: serde_json::Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
        v["change"] = "snapshot".into();
        assert!(!validator.is_valid(&v), "a snapshot has no changed fields");
    }

    #[test]
    fn the_design_example_parses_and_keys_by_email() {
        let event = UserChange::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(event.kafka_key(), "olga.brown@example.com");
        assert!(!event.is_active());
        assert_eq!(event.position().commit_number, Some(1100662289041));
        assert_eq!(
            event.salesforce_user_id().unwrap().as_str(),
            "0055f00000GBZR4AAP"
        );
    }

    #[test]
    fn serialization_keeps_nulls_and_omits_locked_on_salesforce_events() {
        let mut event = UserChange::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        event.user.title = None;
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert!(json["user"].as_object().unwrap().contains_key("title"));
        assert!(json["user"]["title"].is_null());
        assert!(!json["user"].as_object().unwrap().contains_key("locked"));
    }

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<UserChange, EventError> {
        let mut v: serde_json::Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
        edit(&mut v);
        UserChange::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn bad_fields_are_named() {
        let e = with(|v| v["user_id"] = "0055f00000GBZR4AAA".into()).unwrap_err();
        assert_eq!(e.field, "user_id");
        assert!(e.problem.contains("checksum"), "{e}");

        let e = with(|v| v["user_id"] = "0055f00000GBZR4".into()).unwrap_err();
        assert_eq!(e.field, "user_id");
        assert!(e.problem.contains("0055f00000GBZR4AAP"), "{e}");

        let e = with(|v| v["user"]["is_active"] = "yes".into()).unwrap_err();
        assert_eq!(e.field, "user.is_active");

        let e = with(|v| v["change"] = "merge".into()).unwrap_err();
        assert_eq!(e.field, "change");

        let e = with(|v| v["schema"] = "user_change.v2".into()).unwrap_err();
        assert_eq!(e.field, "schema");

        let e =
            with(|v| v["user"]["email_normalized"] = "Olga.Brown@example.com".into()).unwrap_err();
        assert_eq!(e.field, "user.email_normalized");

        // Unknown is null, never absent: an absent key is refused and named.
        let e = with(|v| {
            v["user"].as_object_mut().unwrap().remove("is_active");
        })
        .unwrap_err();
        assert_eq!(e.field, "user");
        assert!(e.problem.contains("is_active"), "{e}");
        let e = with(|v| {
            v["origin"].as_object_mut().unwrap().remove("replay_id");
        })
        .unwrap_err();
        assert!(e.problem.contains("replay_id"), "{e}");

        let e = with(|v| v["change"] = "create".into()).unwrap_err();
        assert_eq!(e.field, "changed_fields");
        let e = with(|v| v["origin"]["transport"] = "webhook".into()).unwrap_err();
        assert_eq!(e.field, "origin.transport");
        let e = with(|v| v["org_id"] = serde_json::Value::Null).unwrap_err();
        assert_eq!(e.field, "org_id");
        let e = with(|v| v["org_id"] = "0055f00000GBZR4AAP".into()).unwrap_err();
        assert_eq!(e.field, "org_id");
        let e = with(|v| v["user"]["locked"] = false.into()).unwrap_err();
        assert_eq!(e.field, "user.locked");

        let e = with(|v| v["user"]["nickname"] = "O".into()).unwrap_err();
        assert_eq!(e.field, "user.nickname");
        assert!(e.problem.contains("nickname"), "{e}");
    }

    #[test]
    fn outreach_events_need_a_numeric_id_and_an_email() {
        let outreach = |id: &str, email: Option<&str>| {
            let event = UserChange {
                schema: SCHEMA.into(),
                event_id: format!("or:{id}:2025-01-02T03:04:05.000Z"),
                source: Source::Outreach,
                org_id: None,
                user_id: id.into(),
                change: ChangeKind::Update,
                changed_fields: vec![],
                user: UserState {
                    email: email.map(str::to_string),
                    email_normalized: email.map(normalize_email),
                    locked: Some(false),
                    ..Default::default()
                },
                origin: Origin {
                    transport: "webhook".into(),
                    ..Default::default()
                },
                observed_at: Utc::now(),
            };
            event.validate()
        };
        assert!(outreach("42", Some("Jane@Acme.com")).is_ok());
        let event = UserChange {
            schema: SCHEMA.into(),
            event_id: outreach_event_id(42, "2025-01-02T03:04:05.000Z"),
            source: Source::Outreach,
            org_id: None,
            user_id: "42".into(),
            change: ChangeKind::Create,
            changed_fields: vec![],
            user: UserState {
                email: Some("Jane@Acme.com".into()),
                email_normalized: Some("jane@acme.com".into()),
                locked: Some(false),
                ..Default::default()
            },
            origin: Origin {
                transport: "webhook".into(),
                topic: Some("user.created".into()),
                ..Default::default()
            },
            observed_at: Utc::now(),
        };
        event.validate().unwrap();
        assert_matches_schema(&serde_json::to_value(&event).unwrap());
        assert_eq!(outreach("x42", Some("a@b.c")).unwrap_err().field, "user_id");
        assert_eq!(outreach("0", Some("a@b.c")).unwrap_err().field, "user_id");
        assert_eq!(outreach("042", Some("a@b.c")).unwrap_err().field, "user_id");
        assert_eq!(outreach("+42", Some("a@b.c")).unwrap_err().field, "user_id");
        assert_eq!(outreach("42", None).unwrap_err().field, "user.email");
    }

    #[test]
    fn users_without_email_are_keyed_by_id() {
        let event = with(|v| {
            v["user"]["email"] = serde_json::Value::Null;
            v["user"]["email_normalized"] = serde_json::Value::Null;
        })
        .unwrap();
        assert_eq!(event.kafka_key(), "id:0055f00000GBZR4AAP");
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            normalize_email("Olga.Brown@Example.com "),
            "olga.brown@example.com"
        );
    }

    #[test]
    fn positions_order_by_commit_number_then_sequence() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let p = |n: Option<i64>, ts: &str, seq: Option<i64>| Position {
            commit_number: n,
            commit_timestamp: t(ts),
            sequence_number: seq,
            read_at: None,
        };
        let a = p(Some(10), "2024-01-01T00:00:00Z", Some(1));
        let b = p(Some(11), "2023-01-01T00:00:00Z", Some(1));
        assert_eq!(
            a.compare(&b),
            Ordering::Less,
            "commit number wins over time"
        );
        let seq2 = p(Some(10), "2024-01-01T00:00:00Z", Some(2));
        assert_eq!(a.compare(&seq2), Ordering::Less);
        assert_eq!(
            a.compare(&p(Some(10), "2024-01-01T00:00:00Z", None)),
            Ordering::Equal
        );
        // Without a commit number: older than any commit, and by time among themselves.
        let untimed = p(None, "2030-01-01T00:00:00Z", None);
        assert_eq!(untimed.compare(&a), Ordering::Less);
        assert_eq!(a.compare(&untimed), Ordering::Greater);
        assert_eq!(
            untimed.compare(&p(None, "2029-01-01T00:00:00Z", None)),
            Ordering::Greater
        );
    }

    #[test]
    fn a_snapshot_is_placed_by_its_origin_and_read_time_not_its_last_modified_date() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let mut event = with(|v| {
            v["change"] = "snapshot".into();
            v["changed_fields"] = serde_json::json!([]);
            v["origin"]["transport"] = "rest".into();
            v["origin"]["sequence_number"] = serde_json::Value::Null;
        })
        .unwrap();
        let position = event.position();
        assert_eq!(position.commit_number, Some(1100662289041));
        assert_eq!(position.commit_timestamp, t("2024-06-18T11:30:45Z"));
        assert_eq!(position.read_at, Some(t("2024-06-18T11:30:46.120Z")));
        // No stream position: the read time stands in for the commit time, never the
        // whole-second LastModifiedDate.
        event.origin.commit_number = None;
        event.origin.commit_timestamp = None;
        let position = event.position();
        assert_eq!(position.commit_number, None);
        assert_eq!(position.commit_timestamp, t("2024-06-18T11:30:46.120Z"));
    }
}
