//! From one decoded change event to normalized `user_change.v1` events (docs/event-schema.md).
//!
//! Pure functions: the caller hands in the decoded event, where it came from ([`Delivery`]) and
//! the last-known state of the users it names, and gets back a [`Normalized`] outcome. Nothing
//! here reads the network or the store, so every rule is a unit test.
//!
//! The normalized event promises the user's **full** state after the change, never a partial one. A
//! Pub/Sub UPDATE carries only the changed fields (unchanged ones are null: docs/salesforce.md,
//! "Change events: body on Pub/Sub"), so it is merged into the last-known state: a changed field
//! takes the event's value, a changed field that is null takes null only when `nulledFields` says
//! it was set to null, and an unchanged field keeps the last-known value. Where that cannot give a
//! trustworthy state, the outcome says what the subscriber must read through REST instead of
//! emitting a guess:
//!
//! - an UPDATE for a user with no last-known state, or one carrying `diffFields` (a long text
//!   sent as a diff this code does not apply), or a changed field that is null without being
//!   in `nulledFields` → [`Normalized::NeedsReread`] of the event's users;
//! - `GAP_*` → re-read the listed users; `GAP_OVERFLOW`, or a wildcard record id (`005*`) →
//!   [`Normalized::FullResync`] of the entity from the commit time on;
//! - an unknown change type (`SNAPSHOT`, anything new) or another entity →
//!   [`Normalized::Skipped`] with the reason, never a crash.
//!
//! Choices where the design is silent:
//!
//! - When any user of a merged (several `recordIds`) UPDATE needs a re-read, the whole event
//!   is re-read: one REST query for a handful of ids is cheap, and the outcome stays all-or-none.
//! - A DELETE (which User should never see: users are deactivated, not deleted) keeps the
//!   last-known state with `is_active` false; with no last-known state every field is null.
//! - `Name.FirstName` and a flat `FirstName` are both accepted for the person-name parts, so the
//!   CometD form (names: docs/salesforce.md, "CometD: messages, replay, timeouts, errors") reads
//!   the same as the Avro compound field.
//! - A body value of the wrong type for a User field is an error naming the field: the caller
//!   dead-letters that event with the reason.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use super::avro::{ChangeEvent, ChangeType, FieldValue};
use super::bitmap::FieldSet;
use crate::model::event::{
    ChangeKind, EventError, Origin, SCHEMA, Source, UserChange, UserState, normalize_email,
    salesforce_event_id,
};
use crate::model::salesforce_id::{SalesforceId, SalesforceIdError};
use crate::model::salesforce_user::SalesforceUser;

/// The object this normalizer reads.
pub const USER_ENTITY: &str = "User";

/// The record id Salesforce puts on `GAP_OVERFLOW` events (docs/salesforce.md,
/// "Change events: gaps and overflows").
pub const OVERFLOW_RECORD_ID: &str = "000000000000000AAA";

/// Where an event came from, and its replay id in that transport's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay<'a> {
    /// The opaque Pub/Sub replay bytes.
    PubSub(&'a [u8]),
    /// The numeric CometD replay id.
    CometD(i64),
}

impl Replay<'_> {
    fn transport(&self) -> &'static str {
        match self {
            Replay::PubSub(_) => "pubsub",
            Replay::CometD(_) => "cometd",
        }
    }

    /// Pub/Sub bytes as lower-case hex; CometD ids in decimal.
    pub fn render(&self) -> String {
        match self {
            Replay::PubSub(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Replay::CometD(id) => id.to_string(),
        }
    }
}

/// The delivery facts that are not in the payload.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub org_id: &'a SalesforceId,
    pub topic: &'a str,
    pub replay: Replay<'a>,
    pub schema_id: &'a str,
    pub observed_at: DateTime<Utc>,
}

/// What the subscriber does with one change event.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    /// Publish these, one per record id, in `recordIds` order.
    Events(Vec<UserChange>),
    /// Read these users through REST and publish `snapshot` events instead.
    NeedsReread {
        user_ids: Vec<SalesforceId>,
        reason: RereadReason,
    },
    /// The local copy of the entity cannot be trusted: resync it from `since` on.
    FullResync {
        entity: String,
        since: DateTime<Utc>,
        reason: String,
    },
    /// Nothing to publish; the reason is for the log.
    Skipped { reason: String },
}

/// Why users must be read through REST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RereadReason {
    /// A `GAP_*` event: Salesforce could not send the change itself.
    Gap(ChangeType),
    /// An UPDATE for users whose state usersync does not know.
    NoLastKnownState(Vec<SalesforceId>),
    /// Fields sent as unified diffs, which are not applied here.
    DiffFields(FieldSet),
    /// A changed field is null but not in `nulledFields`: set to null or not sent?
    AmbiguousNull(String),
}

impl fmt::Display for RereadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RereadReason::Gap(kind) => write!(f, "{kind} event: the change itself was not sent"),
            RereadReason::NoLastKnownState(ids) => {
                let ids: Vec<&str> = ids.iter().map(SalesforceId::as_str).collect();
                write!(f, "no last-known state for {}", ids.join(","))
            }
            RereadReason::DiffFields(fields) => write!(f, "fields sent as diffs: {fields}"),
            RereadReason::AmbiguousNull(field) => {
                write!(f, "{field} changed to null but is not in nulledFields")
            }
        }
    }
}

/// Why an event cannot be normalized; the caller dead-letters it with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("the event has no record ids")]
    NoRecordIds,
    #[error("record id: {0}")]
    BadRecordId(#[source] SalesforceIdError),
    #[error("record id {0} is not a User id (User ids start with 005)")]
    NotAUser(SalesforceId),
    #[error("field {field} is {found}, expected {expected}")]
    FieldType {
        field: String,
        found: String,
        expected: &'static str,
    },
    #[error("the normalized event for {user_id} is invalid: {source}")]
    Invalid {
        user_id: SalesforceId,
        #[source]
        source: EventError,
    },
}

/// The Salesforce names of each User field the normalized state holds, preferred first.
const EMAIL: &[&str] = &["Email"];
const USERNAME: &[&str] = &["Username"];
const FIRST_NAME: &[&str] = &["Name.FirstName", "FirstName"];
const LAST_NAME: &[&str] = &["Name.LastName", "LastName"];
const TITLE: &[&str] = &["Title"];
const IS_ACTIVE: &[&str] = &["IsActive"];
const CREATED_DATE: &[&str] = &["CreatedDate"];
const LAST_MODIFIED_DATE: &[&str] = &["LastModifiedDate"];

/// Normalizes one decoded change event. `last_known` holds the state usersync has for the
/// users the event names, where it has one.
pub fn normalize(
    event: &ChangeEvent,
    delivery: &Delivery<'_>,
    last_known: &BTreeMap<SalesforceId, SalesforceUser>,
) -> Result<Normalized, NormalizeError> {
    let header = &event.header;
    if header.entity_name != USER_ENTITY {
        return Ok(Normalized::Skipped {
            reason: format!("entity {:?} is not {USER_ENTITY}", header.entity_name),
        });
    }
    let full_resync = |reason: String| Normalized::FullResync {
        entity: header.entity_name.clone(),
        since: header.commit_timestamp,
        reason,
    };
    let kind = match &header.change_type {
        ChangeType::Create => ChangeKind::Create,
        ChangeType::Update => ChangeKind::Update,
        ChangeType::Delete => ChangeKind::Delete,
        ChangeType::Undelete => ChangeKind::Undelete,
        ChangeType::GapOverflow => {
            return Ok(full_resync(format!(
                "GAP_OVERFLOW: more than 100,000 changes in transaction {}",
                header.transaction_key
            )));
        }
        ChangeType::Other(raw) => {
            return Ok(Normalized::Skipped {
                reason: format!("change type {raw:?} is not handled"),
            });
        }
        gap => {
            debug_assert!(gap.is_record_gap());
            return Ok(match user_ids(&header.record_ids)? {
                Ids::Listed(user_ids) => Normalized::NeedsReread {
                    user_ids,
                    reason: RereadReason::Gap(gap.clone()),
                },
                Ids::Wildcard(id) => full_resync(format!("{gap} with wildcard record id {id}")),
            });
        }
    };
    let ids = match user_ids(&header.record_ids)? {
        Ids::Listed(ids) => ids,
        Ids::Wildcard(id) => {
            return Ok(full_resync(format!(
                "{} with wildcard record id {id}",
                header.change_type
            )));
        }
    };
    let reread = |reason| Normalized::NeedsReread {
        user_ids: ids.clone(),
        reason,
    };

    let mut states = Vec::with_capacity(ids.len());
    match kind {
        ChangeKind::Update => {
            if !header.diff_fields.is_empty() {
                return Ok(reread(RereadReason::DiffFields(header.diff_fields.clone())));
            }
            let missing: Vec<SalesforceId> = ids
                .iter()
                .filter(|id| !last_known.contains_key(*id))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Ok(reread(RereadReason::NoLastKnownState(missing)));
            }
            for id in &ids {
                match merge(&last_known[id], event)? {
                    Merged::State(state) => states.push(state),
                    Merged::Ambiguous(field) => {
                        return Ok(reread(RereadReason::AmbiguousNull(field)));
                    }
                }
            }
        }
        ChangeKind::Delete => {
            for id in &ids {
                let mut state = last_known.get(id).map(state_of).unwrap_or_default();
                if last_known.contains_key(id) {
                    state.is_active = Some(false);
                }
                states.push(state);
            }
        }
        ChangeKind::Create | ChangeKind::Undelete | ChangeKind::Snapshot => {
            let state = from_body(event)?;
            states.extend(ids.iter().map(|_| state.clone()));
        }
    }

    let changed_fields = match kind {
        ChangeKind::Update => header.changed_fields.names().to_vec(),
        _ => Vec::new(),
    };
    let origin = Origin {
        transport: delivery.replay.transport().to_string(),
        topic: Some(delivery.topic.to_string()),
        replay_id: Some(delivery.replay.render()),
        schema_id: Some(delivery.schema_id.to_string()),
        change_type: Some(header.change_type.as_str().to_string()),
        transaction_key: Some(header.transaction_key.clone()),
        sequence_number: Some(header.sequence_number),
        commit_timestamp: Some(header.commit_timestamp),
        commit_number: Some(header.commit_number),
        commit_user: header.commit_user.clone(),
        change_origin: header.change_origin.clone(),
    };
    let mut events = Vec::with_capacity(ids.len());
    for (id, mut user) in ids.into_iter().zip(states) {
        user.email_normalized = user.email.as_deref().map(normalize_email);
        let change = UserChange {
            schema: SCHEMA.to_string(),
            event_id: salesforce_event_id(
                delivery.org_id.as_str(),
                &id,
                &header.transaction_key,
                header.sequence_number,
            ),
            source: Source::Salesforce,
            org_id: Some(delivery.org_id.to_string()),
            user_id: id.to_string(),
            change: kind,
            changed_fields: changed_fields.clone(),
            user,
            origin: origin.clone(),
            observed_at: delivery.observed_at,
        };
        change
            .validate()
            .map_err(|source| NormalizeError::Invalid {
                user_id: id.clone(),
                source,
            })?;
        events.push(change);
    }
    Ok(Normalized::Events(events))
}

enum Ids {
    Listed(Vec<SalesforceId>),
    Wildcard(String),
}

/// Parses `recordIds` into 18-character User ids; a wildcard such as `005*` stands for every
/// record of the type.
fn user_ids(raw: &[String]) -> Result<Ids, NormalizeError> {
    if raw.is_empty() {
        return Err(NormalizeError::NoRecordIds);
    }
    if let Some(wildcard) = raw.iter().find(|id| id.ends_with('*')) {
        return Ok(Ids::Wildcard(wildcard.clone()));
    }
    let mut ids: Vec<SalesforceId> = Vec::with_capacity(raw.len());
    for id in raw {
        let id = SalesforceId::parse(id).map_err(NormalizeError::BadRecordId)?;
        if !id.is_user() {
            return Err(NormalizeError::NotAUser(id));
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(Ids::Listed(ids))
}

/// The normalized state of a last-known user (without `email_normalized`, filled in last).
fn state_of(user: &SalesforceUser) -> UserState {
    UserState {
        email: user.email.clone(),
        email_normalized: None,
        username: user.username.clone(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        title: user.title.clone(),
        is_active: Some(user.is_active),
        created_date: user.created_date,
        last_modified_date: user.last_modified_date,
        locked: None,
    }
}

/// The state a CREATE or UNDELETE body carries: every field of the record.
fn from_body(event: &ChangeEvent) -> Result<UserState, NormalizeError> {
    Ok(UserState {
        email: text(event, EMAIL)?,
        email_normalized: None,
        username: text(event, USERNAME)?,
        first_name: text(event, FIRST_NAME)?,
        last_name: text(event, LAST_NAME)?,
        title: text(event, TITLE)?,
        is_active: boolean(event, IS_ACTIVE)?,
        created_date: instant(event, CREATED_DATE)?,
        last_modified_date: instant(event, LAST_MODIFIED_DATE)?,
        locked: None,
    })
}

enum Merged {
    State(UserState),
    Ambiguous(String),
}

/// The last-known state with the event's changed fields applied.
fn merge(last: &SalesforceUser, event: &ChangeEvent) -> Result<Merged, NormalizeError> {
    let mut state = state_of(last);
    macro_rules! apply {
        ($target:expr, $names:expr, $read:expr) => {
            if let Some(name) = changed_name(event, $names) {
                let value = event.value(name).unwrap_or(&FieldValue::Null);
                if value.is_null() && !event.header.nulled_fields.touches(name) {
                    return Ok(Merged::Ambiguous(name.to_string()));
                }
                $target = $read(event, &[name])?;
            }
        };
    }
    apply!(state.email, EMAIL, text);
    apply!(state.username, USERNAME, text);
    apply!(state.first_name, FIRST_NAME, text);
    apply!(state.last_name, LAST_NAME, text);
    apply!(state.title, TITLE, text);
    apply!(state.is_active, IS_ACTIVE, boolean);
    apply!(state.created_date, CREATED_DATE, instant);
    apply!(state.last_modified_date, LAST_MODIFIED_DATE, instant);
    Ok(Merged::State(state))
}

/// The first of `names` the event reports as changed or nulled.
fn changed_name<'n>(event: &ChangeEvent, names: &[&'n str]) -> Option<&'n str> {
    let header = &event.header;
    names
        .iter()
        .copied()
        .find(|name| header.changed_fields.touches(name) || header.nulled_fields.touches(name))
}

/// The value of the first of `names` the event has.
fn lookup<'e>(event: &'e ChangeEvent, names: &[&str]) -> Option<(String, &'e FieldValue)> {
    names
        .iter()
        .find_map(|name| event.value(name).map(|value| (name.to_string(), value)))
}

fn wrong_type(field: String, value: &FieldValue, expected: &'static str) -> NormalizeError {
    NormalizeError::FieldType {
        field,
        found: format!("{value:?}"),
        expected,
    }
}

fn text(event: &ChangeEvent, names: &[&str]) -> Result<Option<String>, NormalizeError> {
    match lookup(event, names) {
        None | Some((_, FieldValue::Null)) => Ok(None),
        Some((_, FieldValue::String(s))) => Ok(Some(s.clone())),
        Some((field, other)) => Err(wrong_type(field, other, "a string")),
    }
}

fn boolean(event: &ChangeEvent, names: &[&str]) -> Result<Option<bool>, NormalizeError> {
    match lookup(event, names) {
        None | Some((_, FieldValue::Null)) => Ok(None),
        Some((_, FieldValue::Boolean(b))) => Ok(Some(*b)),
        Some((field, other)) => Err(wrong_type(field, other, "a boolean")),
    }
}

/// A date-time: epoch milliseconds from Avro, or an ISO-8601 string from CometD.
fn instant(event: &ChangeEvent, names: &[&str]) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    match lookup(event, names) {
        None | Some((_, FieldValue::Null)) => Ok(None),
        Some((field, value @ FieldValue::DateTimeMillis(_))) => value
            .as_datetime()
            .map(Some)
            .ok_or_else(|| wrong_type(field, value, "a date-time in range")),
        Some((field, value @ FieldValue::String(s))) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| wrong_type(field, value, "an ISO-8601 date-time")),
        Some((field, other)) => Err(wrong_type(field, other, "a date-time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::tests::{DESIGN_EXAMPLE, assert_matches_schema};
    use crate::salesforce::avro::test_support::*;
    use serde_json::{Value as Json, json};

    const OLGA: &str = "0055f00000GBZR4AAP";
    const IVAN: &str = "0055f00000GBZR5AAP";
    const REPLAY: [u8; 10] = [0x00, 0x00, 0x00, 0x00, 0x01, 0x14, 0xC1, 0x7D, 0x00, 0x00];

    fn id(raw: &str) -> SalesforceId {
        SalesforceId::parse(raw).unwrap()
    }

    fn org() -> SalesforceId {
        id("00D5g000004ZbcdEAC")
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn decoded(json: &Json) -> ChangeEvent {
        let schema = user_schema();
        schema.decode(&encode(schema.schema(), json)).unwrap()
    }

    /// An UPDATE header whose bitmaps name `changed` and `nulled`, computed from the schema.
    fn update(ids: &[&str], changed: &[&str], nulled: &[&str]) -> Json {
        let layout = user_schema().layout().clone();
        let mut h = header("UPDATE", ids);
        h["changedFields"] = json!(bitmap(&layout, changed));
        h["nulledFields"] = json!(bitmap(&layout, nulled));
        h
    }

    fn olga() -> SalesforceUser {
        SalesforceUser {
            id: id(OLGA),
            email: Some("olga.brown@example.com".into()),
            username: Some("olga.brown@example.com.prod".into()),
            first_name: Some("Olga".into()),
            last_name: Some("Brown".into()),
            title: Some("Account Executive".into()),
            is_active: true,
            created_date: Some(t("2024-01-09T17:02:11Z")),
            last_modified_date: Some(t("2024-03-01T08:00:00Z")),
            applied: None,
        }
    }

    fn known(users: &[SalesforceUser]) -> BTreeMap<SalesforceId, SalesforceUser> {
        users.iter().map(|u| (u.id.clone(), u.clone())).collect()
    }

    fn run_with(
        event: &ChangeEvent,
        replay: Replay<'_>,
        last_known: &BTreeMap<SalesforceId, SalesforceUser>,
    ) -> Result<Normalized, NormalizeError> {
        let org = org();
        let delivery = Delivery {
            org_id: &org,
            topic: "/data/UserChangeEvent",
            replay,
            schema_id: SCHEMA_ID,
            observed_at: t("2024-06-18T11:30:46.120Z"),
        };
        normalize(event, &delivery, last_known)
    }

    fn run(
        json: &Json,
        last_known: &BTreeMap<SalesforceId, SalesforceUser>,
    ) -> Result<Normalized, NormalizeError> {
        run_with(&decoded(json), Replay::PubSub(&REPLAY), last_known)
    }

    /// The events of an outcome, each checked against validation and the published schema.
    fn events(outcome: Normalized) -> Vec<UserChange> {
        let Normalized::Events(events) = outcome else {
            panic!("expected events, got {outcome:?}");
        };
        for event in &events {
            event.validate().unwrap();
            assert_matches_schema(&serde_json::to_value(event).unwrap());
        }
        events
    }

    fn one(outcome: Normalized) -> UserChange {
        let mut all = events(outcome);
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[test]
    fn the_design_example_update_is_reproduced_from_the_wire() {
        // docs/salesforce.md, "A User change by both transports": an integration deactivates
        // Olga and changes her title through the REST API.
        let h = update(&[OLGA], &["Title", "IsActive", "LastModifiedDate"], &[]);
        let body = json!({
            "Title": "Former Account Executive",
            "IsActive": false,
            "LastModifiedDate": 1_718_710_245_000_i64
        });
        let got = one(run(&event(h, body), &known(&[olga()])).unwrap());
        let mut want = UserChange::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        // The bitmap decodes in schema order; the design example lists them in another.
        assert_eq!(
            got.changed_fields,
            ["Title", "IsActive", "LastModifiedDate"]
        );
        want.changed_fields = got.changed_fields.clone();
        assert_eq!(got, want);
    }

    #[test]
    fn a_create_carries_the_full_body() {
        let mut h = header("CREATE", &[OLGA]);
        h["changeOrigin"] = "".into();
        let got = one(run(&event(h, create_body()), &BTreeMap::new()).unwrap());
        assert_eq!(got.change, ChangeKind::Create);
        assert_eq!(got.user_id, OLGA);
        assert_eq!(
            got.event_id,
            salesforce_event_id(
                "00D5g000004ZbcdEAC",
                &id(OLGA),
                "0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42",
                1
            )
        );
        assert!(got.changed_fields.is_empty());
        let u = &got.user;
        assert_eq!(u.email.as_deref(), Some("Olga.Brown@Example.com"));
        assert_eq!(
            u.email_normalized.as_deref(),
            Some("olga.brown@example.com")
        );
        assert_eq!(u.username.as_deref(), Some("olga.brown@example.com.prod"));
        assert_eq!(u.first_name.as_deref(), Some("Olga"));
        assert_eq!(u.last_name.as_deref(), Some("Brown"));
        assert_eq!(u.title.as_deref(), Some("Account Executive"));
        assert_eq!(u.is_active, Some(true));
        assert_eq!(u.created_date, Some(t("2024-01-09T17:02:11Z")));
        assert_eq!(u.last_modified_date, Some(t("2024-01-09T17:02:11Z")));
        assert_eq!(got.origin.change_origin, None, "a UI change");
        assert_eq!(got.origin.change_type.as_deref(), Some("CREATE"));
        assert_eq!(
            got.origin.replay_id.as_deref(),
            Some("000000000114c17d0000")
        );
        assert_eq!(got.origin.transport, "pubsub");
        assert_eq!(got.origin.commit_number, Some(1_100_662_289_041));
        assert_eq!(got.kafka_key(), "olga.brown@example.com");
    }

    #[test]
    fn a_nested_first_name_change_keeps_the_rest_of_the_name() {
        let h = update(&[OLGA], &["Name.FirstName", "LastModifiedDate"], &[]);
        let body = json!({
            "Name": {"FirstName": "Olya"},
            "LastModifiedDate": 1_718_710_245_000_i64
        });
        let got = one(run(&event(h, body), &known(&[olga()])).unwrap());
        assert_eq!(got.changed_fields, ["LastModifiedDate", "Name.FirstName"]);
        assert_eq!(got.user.first_name.as_deref(), Some("Olya"));
        assert_eq!(
            got.user.last_name.as_deref(),
            Some("Brown"),
            "not sent, kept"
        );
        assert_eq!(got.user.title.as_deref(), Some("Account Executive"));
        assert_eq!(got.user.is_active, Some(true));
        assert_eq!(got.user.last_modified_date, Some(t("2024-06-18T11:30:45Z")));
    }

    #[test]
    fn a_nulled_field_becomes_null_and_an_unexplained_null_asks_for_a_re_read() {
        let h = update(&[OLGA], &["Title", "LastModifiedDate"], &["Title"]);
        let body = json!({"LastModifiedDate": 1_718_710_245_000_i64});
        let got = one(run(&event(h, body.clone()), &known(&[olga()])).unwrap());
        assert_eq!(got.user.title, None);
        assert_eq!(got.user.email.as_deref(), Some("olga.brown@example.com"));

        // The whole Name nulled at once: a top-level bit covers its sub-fields.
        let h = update(&[OLGA], &["Name", "LastModifiedDate"], &["Name"]);
        let got = one(run(&event(h, body.clone()), &known(&[olga()])).unwrap());
        assert_eq!((got.user.first_name, got.user.last_name), (None, None));

        // Title changed, null, yet not in nulledFields: do not guess.
        let h = update(&[OLGA], &["Title", "LastModifiedDate"], &[]);
        assert_eq!(
            run(&event(h, body), &known(&[olga()])).unwrap(),
            Normalized::NeedsReread {
                user_ids: vec![id(OLGA)],
                reason: RereadReason::AmbiguousNull("Title".into())
            }
        );
    }

    #[test]
    fn an_update_without_last_known_state_or_with_diffs_is_re_read() {
        let h = update(&[OLGA, IVAN], &["Title", "LastModifiedDate"], &[]);
        let body = json!({"Title": "AE", "LastModifiedDate": 1_718_710_245_000_i64});
        let outcome = run(&event(h.clone(), body.clone()), &known(&[olga()])).unwrap();
        assert_eq!(
            outcome,
            Normalized::NeedsReread {
                user_ids: vec![id(OLGA), id(IVAN)],
                reason: RereadReason::NoLastKnownState(vec![id(IVAN)])
            }
        );
        let Normalized::NeedsReread { reason, .. } = outcome else {
            unreachable!()
        };
        assert_eq!(
            reason.to_string(),
            format!("no last-known state for {IVAN}")
        );

        let mut h = update(&[OLGA], &["Title", "LastModifiedDate"], &[]);
        h["diffFields"] = json!(bitmap(user_schema().layout(), &["Title"]));
        let outcome = run(&event(h, body), &known(&[olga()])).unwrap();
        let Normalized::NeedsReread { user_ids, reason } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(user_ids, [id(OLGA)]);
        assert_eq!(reason.to_string(), "fields sent as diffs: Title");
    }

    #[test]
    fn a_merged_update_becomes_one_event_per_user() {
        let mut ivan = olga();
        ivan.id = id(IVAN);
        ivan.email = Some("ivan@example.com".into());
        ivan.first_name = Some("Ivan".into());
        let h = update(&[OLGA, IVAN], &["Title", "LastModifiedDate"], &[]);
        let body = json!({"Title": "Manager", "LastModifiedDate": 1_718_710_245_000_i64});
        let got = events(run(&event(h, body), &known(&[olga(), ivan])).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].user_id, OLGA);
        assert_eq!(got[1].user_id, IVAN);
        assert_ne!(got[0].event_id, got[1].event_id);
        assert!(
            got.iter()
                .all(|e| e.user.title.as_deref() == Some("Manager"))
        );
        assert_eq!(got[1].user.first_name.as_deref(), Some("Ivan"));
        assert_eq!(got[1].kafka_key(), "ivan@example.com");
    }

    #[test]
    fn fifteen_character_record_ids_are_emitted_in_eighteen() {
        let got = one(run(
            &event(header("CREATE", &["0055f00000GBZR4"]), create_body()),
            &BTreeMap::new(),
        )
        .unwrap());
        assert_eq!(got.user_id, OLGA);
        assert!(got.event_id.contains(OLGA));
    }

    #[test]
    fn gaps_re_read_the_listed_users_and_overflow_resyncs_everything() {
        let gap = event(header("GAP_UPDATE", &[OLGA, "0055f00000GBZR5"]), json!({}));
        assert_eq!(
            run(&gap, &BTreeMap::new()).unwrap(),
            Normalized::NeedsReread {
                user_ids: vec![id(OLGA), id(IVAN)],
                reason: RereadReason::Gap(ChangeType::GapUpdate)
            }
        );
        let overflow = event(header("GAP_OVERFLOW", &[OVERFLOW_RECORD_ID]), json!({}));
        let Normalized::FullResync { entity, since, .. } =
            run(&overflow, &BTreeMap::new()).unwrap()
        else {
            panic!("overflow must resync")
        };
        assert_eq!(entity, "User");
        assert_eq!(since, t("2024-06-18T11:30:45Z"));
        // A wildcard record id stands for every user, whatever the change type.
        for kind in ["GAP_CREATE", "UPDATE"] {
            let wild = event(header(kind, &["005*"]), json!({}));
            assert!(
                matches!(
                    run(&wild, &BTreeMap::new()).unwrap(),
                    Normalized::FullResync { .. }
                ),
                "{kind}"
            );
        }
    }

    #[test]
    fn unknown_change_types_and_other_entities_are_skipped_with_a_reason() {
        let mut snapshot = decoded(&event(header("CREATE", &[OLGA]), create_body()));
        snapshot.header.change_type = ChangeType::Other("SNAPSHOT".into());
        let Normalized::Skipped { reason } =
            run_with(&snapshot, Replay::PubSub(&REPLAY), &BTreeMap::new()).unwrap()
        else {
            panic!("skipped")
        };
        assert!(reason.contains("SNAPSHOT"), "{reason}");

        let mut h = header("CREATE", &["0015f00000ABCDEAAA"]);
        h["entityName"] = "Account".into();
        let Normalized::Skipped { reason } = run(&event(h, json!({})), &BTreeMap::new()).unwrap()
        else {
            panic!("skipped")
        };
        assert!(reason.contains("Account"), "{reason}");
    }

    #[test]
    fn bad_record_ids_and_bad_values_are_errors_naming_them() {
        let bad = event(header("CREATE", &["0055f00000GBZR4AAA"]), create_body());
        let err = run(&bad, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, NormalizeError::BadRecordId(_)), "{err}");
        assert!(err.to_string().contains("0055f00000GBZR4AAA"), "{err}");

        let org_id = event(header("CREATE", &["00D5g000004ZbcdEAC"]), create_body());
        assert_eq!(
            run(&org_id, &BTreeMap::new()).unwrap_err(),
            NormalizeError::NotAUser(org())
        );

        let none = event(header("CREATE", &[]), create_body());
        assert_eq!(
            run(&none, &BTreeMap::new()).unwrap_err(),
            NormalizeError::NoRecordIds
        );

        // A body value of the wrong type (here through a hand-edited decoded event).
        let mut odd = decoded(&event(header("CREATE", &[OLGA]), create_body()));
        odd.fields.insert("Email".into(), FieldValue::Long(7));
        let err = run_with(&odd, Replay::PubSub(&REPLAY), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            NormalizeError::FieldType {
                field: "Email".into(),
                found: "Long(7)".into(),
                expected: "a string"
            }
        );

        // A create whose body lacks IsActive (field-level security) is not a valid event.
        let mut body = create_body();
        body["IsActive"] = Json::Null;
        let err = run(&event(header("CREATE", &[OLGA]), body), &BTreeMap::new()).unwrap_err();
        match err {
            NormalizeError::Invalid { user_id, source } => {
                assert_eq!(user_id, id(OLGA));
                assert_eq!(source.field, "user.is_active");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn delete_keeps_the_last_state_inactive_and_undelete_carries_the_body() {
        let del = event(header("DELETE", &[OLGA, IVAN]), json!({}));
        let got = events(run(&del, &known(&[olga()])).unwrap());
        assert_eq!(got[0].change, ChangeKind::Delete);
        assert_eq!(got[0].user.is_active, Some(false));
        assert_eq!(got[0].user.email.as_deref(), Some("olga.brown@example.com"));
        assert_eq!(
            got[1].user,
            UserState::default(),
            "nothing known about Ivan"
        );
        assert!(
            got.iter()
                .all(|e| !e.is_active() && e.changed_fields.is_empty())
        );

        let undel = event(header("UNDELETE", &[OLGA]), create_body());
        let got = one(run(&undel, &BTreeMap::new()).unwrap());
        assert_eq!(got.change, ChangeKind::Undelete);
        assert_eq!(got.user.first_name.as_deref(), Some("Olga"));
        assert!(got.is_active());
    }

    #[test]
    fn cometd_deliveries_and_names_read_the_same() {
        // CometD sends names and ISO dates; the decoded form is the same ChangeEvent.
        let mut e = decoded(&event(update(&[OLGA], &[], &[]), json!({})));
        e.header.changed_fields = FieldSet::from_names(&["FirstName", "LastModifiedDate"]).unwrap();
        e.fields
            .insert("FirstName".into(), FieldValue::String("Olya".into()));
        e.fields.insert(
            "LastModifiedDate".into(),
            FieldValue::String("2024-06-18T11:30:45.000Z".into()),
        );
        let got = one(run_with(&e, Replay::CometD(18_098_301), &known(&[olga()])).unwrap());
        assert_eq!(got.origin.transport, "cometd");
        assert_eq!(got.origin.replay_id.as_deref(), Some("18098301"));
        assert_eq!(got.user.first_name.as_deref(), Some("Olya"));
        assert_eq!(got.user.last_modified_date, Some(t("2024-06-18T11:30:45Z")));
        assert_eq!(got.changed_fields, ["FirstName", "LastModifiedDate"]);
    }
}
