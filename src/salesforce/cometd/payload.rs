//! A CometD CDC data message into the [`ChangeEvent`] the Pub/Sub path decodes.
//!
//! The two transports carry the same facts in different clothes (docs/salesforce.md,
//! "Change events: body on Pub/Sub" and "CometD: messages, replay, timeouts, errors"):
//!
//! | | Pub/Sub (Avro) | CometD (JSON) |
//! |---|---|---|
//! | body | every field of the writer schema, unsent ones null | only the fields sent |
//! | field lists | bitmaps, decoded in schema order (top-level fields, then sub-fields by parent) | names, in the server's order |
//! | date-times | epoch milliseconds | ISO-8601 strings |
//! | compound fields | nested records | nested objects |
//! | long-text diffs | the diff string in the field | `{"diff": "…"}` |
//!
//! Everything after decoding — the normalizer, `changed_fields` in `user_change.v1`, dedupe —
//! must not be able to tell which transport an event came by, or the same change would be
//! published differently depending on how the subscriber happened to be connected. So the
//! conversion is driven by the event's **writer schema** (named by `data.schema`, fetched and
//! cached by id exactly as on Pub/Sub): every body field of the schema is present, unsent ones
//! `Null`; a compound field that was sent is flattened to `Parent.Child` for each of the
//! schema's sub-fields, one that was not is `Parent` → `Null`; values take the schema's types
//! (a `long` date-time from an ISO string, an `int` stays an `Int`); and the header's field
//! lists are put in the order the bitmap decoder produces. The normalizer treats an absent
//! field like a null one, so it would cope without the filling; the filling is there so that
//! the two paths give *equal* `ChangeEvent`s, which is what the tests compare.
//!
//! Choices where Salesforce is silent:
//!
//! - A field the payload has but the writer schema lacks is kept, converted by its JSON type:
//!   nothing the server sent is dropped, and such a mismatch cannot stop the stream.
//! - `commitTimestamp` is accepted as epoch milliseconds (what Salesforce's examples show) or
//!   as an ISO string.
//! - Every failure is a [`PayloadError`] naming the field; the client hands the event to the
//!   caller as unreadable and goes on (docs/salesforce.md, "Failures seen in other clients":
//!   one unreadable event stopped the stream).

use std::collections::BTreeMap;

use apache_avro::Schema;
use apache_avro::schema::{NamesRef, ResolvedSchema};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::message::Message;
use crate::salesforce::avro::{
    ChangeEvent, ChangeEventHeader, ChangeEventSchema, ChangeType, DATE_TIME_FIELDS, FieldValue,
    HEADER_FIELD, SchemaError,
};
use crate::salesforce::bitmap::{BitmapError, FieldLayout, FieldSet};

/// One change event delivered by CometD, converted.
#[derive(Debug, Clone, PartialEq)]
pub struct CdcEvent {
    pub channel: String,
    /// `data.event.replayId`: what to acknowledge once the event is handled.
    pub replay_id: i64,
    /// `data.schema`: the writer schema the event was converted with.
    pub schema_id: String,
    pub event: ChangeEvent,
}

/// What a data message says about itself before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Envelope<'a> {
    pub replay_id: i64,
    pub schema_id: &'a str,
    pub payload: &'a Map<String, Value>,
}

/// Why a data message cannot be converted. Each variant names the field, by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("{field} is missing")]
    Missing { field: String },
    #[error("{field} is {found}, expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: String,
    },
    #[error("{field}: {source}")]
    FieldList {
        field: String,
        #[source]
        source: BitmapError,
    },
}

fn missing(field: impl Into<String>) -> PayloadError {
    PayloadError::Missing {
        field: field.into(),
    }
}

fn wrong(field: impl Into<String>, expected: &'static str, found: &Value) -> PayloadError {
    let found = match found {
        Value::String(s) => format!("the string {s:?}"),
        other => {
            let mut text = other.to_string();
            if text.len() > 60 {
                let mut end = 57;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str("...");
            }
            text
        }
    };
    PayloadError::WrongType {
        field: field.into(),
        expected,
        found,
    }
}

/// Reads `data.schema`, `data.event.replayId` and `data.payload` of a data message.
pub fn envelope(message: &Message) -> Result<Envelope<'_>, PayloadError> {
    let data = match &message.data {
        Some(Value::Object(data)) => data,
        Some(other) => return Err(wrong("data", "an object", other)),
        None => return Err(missing("data")),
    };
    let schema_id = match data.get("schema") {
        Some(Value::String(id)) if !id.is_empty() => id.as_str(),
        Some(Value::String(_)) | None | Some(Value::Null) => return Err(missing("data.schema")),
        Some(other) => return Err(wrong("data.schema", "a string", other)),
    };
    let replay_id = match data.get("event").and_then(|e| e.get("replayId")) {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            wrong(
                "data.event.replayId",
                "an integer",
                &Value::Number(n.clone()),
            )
        })?,
        Some(other) => return Err(wrong("data.event.replayId", "an integer", other)),
        None => return Err(missing("data.event.replayId")),
    };
    // -1 and -2 are the subscribe presets (tip, earliest), not positions: acknowledging one
    // would make the next resubscribe replay the whole retention window.
    if replay_id < 0 {
        return Err(wrong(
            "data.event.replayId",
            "a position (0 or more; -1 and -2 are subscribe presets)",
            &Value::from(replay_id),
        ));
    }
    let payload = match data.get("payload") {
        Some(Value::Object(payload)) => payload,
        Some(other) => return Err(wrong("data.payload", "an object", other)),
        None => return Err(missing("data.payload")),
    };
    Ok(Envelope {
        replay_id,
        schema_id,
        payload,
    })
}

/// The Avro type of a body value, as far as the conversion needs it.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Boolean,
    Int,
    Long,
    DateTime,
    Double,
    String,
    Bytes,
    Date,
    Array(Box<Kind>),
    Map(Box<Kind>),
    Record(Vec<(String, Kind)>),
    /// A union with several non-null branches; the JSON value picks one.
    OneOf(Vec<Kind>),
    Unsupported(&'static str),
}

/// A writer schema with the conversion plan of each body field, built once per schema id.
#[derive(Debug, Clone)]
pub struct WriterSchema {
    schema: ChangeEventSchema,
    /// Every body field in schema order, with its kind.
    fields: Vec<(String, Kind)>,
}

impl WriterSchema {
    /// Parses the schema JSON (as `GetSchema` or the REST event schema resource returns it).
    pub fn parse(schema_id: &str, json: &str) -> Result<Self, SchemaError> {
        Ok(Self::new(ChangeEventSchema::parse(schema_id, json)?))
    }

    pub fn new(schema: ChangeEventSchema) -> Self {
        let fields = match (schema.schema(), ResolvedSchema::try_from(schema.schema())) {
            (Schema::Record(record), Ok(resolved)) => record
                .fields
                .iter()
                .skip(1)
                .map(|field| {
                    let kind = kind_of(&field.schema, resolved.get_names(), 0);
                    let kind = match kind {
                        Kind::Long if DATE_TIME_FIELDS.contains(&field.name.as_str()) => {
                            Kind::DateTime
                        }
                        other => other,
                    };
                    (field.name.clone(), kind)
                })
                .collect(),
            // `ChangeEventSchema::parse` already refused anything else.
            _ => Vec::new(),
        };
        WriterSchema { schema, fields }
    }

    pub fn schema_id(&self) -> &str {
        self.schema.schema_id()
    }

    pub fn layout(&self) -> &FieldLayout {
        self.schema.layout()
    }

    pub fn change_event_schema(&self) -> &ChangeEventSchema {
        &self.schema
    }
}

fn kind_of(schema: &Schema, names: &NamesRef<'_>, depth: usize) -> Kind {
    if depth > 32 {
        return Kind::Unsupported("a schema nested too deeply");
    }
    match schema {
        Schema::Boolean => Kind::Boolean,
        Schema::Int => Kind::Int,
        Schema::Long => Kind::Long,
        Schema::Float | Schema::Double => Kind::Double,
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => Kind::String,
        Schema::Bytes | Schema::Fixed(_) => Kind::Bytes,
        Schema::Date => Kind::Date,
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Kind::DateTime,
        Schema::Array(array) => Kind::Array(Box::new(kind_of(&array.items, names, depth + 1))),
        Schema::Map(map) => Kind::Map(Box::new(kind_of(&map.types, names, depth + 1))),
        Schema::Record(record) => Kind::Record(
            record
                .fields
                .iter()
                .map(|f| (f.name.clone(), kind_of(&f.schema, names, depth + 1)))
                .collect(),
        ),
        Schema::Union(union) => {
            let mut branches: Vec<Kind> = union
                .variants()
                .iter()
                .filter(|branch| !matches!(branch, Schema::Null))
                .map(|branch| kind_of(branch, names, depth + 1))
                .collect();
            match branches.len() {
                1 => branches.remove(0),
                _ => Kind::OneOf(branches),
            }
        }
        Schema::Ref { name } => match names.get(name) {
            Some(schema) => kind_of(schema, names, depth + 1),
            None => Kind::Unsupported("an unresolved reference"),
        },
        Schema::Decimal(_) | Schema::BigDecimal => Kind::Unsupported("decimal"),
        Schema::TimeMillis | Schema::TimeMicros => Kind::Unsupported("time of day"),
        Schema::Duration(_) => Kind::Unsupported("duration"),
        Schema::Null => Kind::Unsupported("null"),
    }
}

/// Converts one payload with its writer schema.
pub fn to_change_event(
    payload: &Map<String, Value>,
    schema: &WriterSchema,
) -> Result<ChangeEvent, PayloadError> {
    let header = match payload.get(HEADER_FIELD) {
        Some(Value::Object(header)) => read_header(header, schema.layout())?,
        Some(other) => return Err(wrong(HEADER_FIELD, "an object", other)),
        None => return Err(missing(HEADER_FIELD)),
    };
    let mut fields = BTreeMap::new();
    for (name, kind) in &schema.fields {
        match (kind, payload.get(name)) {
            (Kind::Record(subs), Some(Value::Object(sent))) => {
                for (sub, kind) in subs {
                    let path = format!("{name}.{sub}");
                    let value = match sent.get(sub) {
                        Some(value) => convert(&path, value, kind)?,
                        None => FieldValue::Null,
                    };
                    fields.insert(path, value);
                }
                for (sub, value) in sent
                    .iter()
                    .filter(|(k, _)| !subs.iter().any(|(s, _)| s == *k))
                {
                    fields.insert(format!("{name}.{sub}"), untyped(value));
                }
            }
            (_, None) => {
                fields.insert(name.clone(), FieldValue::Null);
            }
            (kind, Some(value)) => {
                fields.insert(name.clone(), convert(name, value, kind)?);
            }
        }
    }
    for (name, value) in payload {
        if name != HEADER_FIELD && !schema.fields.iter().any(|(n, _)| n == name) {
            flatten_untyped(name, value, &mut fields);
        }
    }
    Ok(ChangeEvent { header, fields })
}

/// Converts a whole data message: envelope, then payload.
pub fn to_cdc_event(message: &Message, schema: &WriterSchema) -> Result<CdcEvent, PayloadError> {
    let envelope = envelope(message)?;
    Ok(CdcEvent {
        channel: message.channel.clone(),
        replay_id: envelope.replay_id,
        schema_id: envelope.schema_id.to_owned(),
        event: to_change_event(envelope.payload, schema)?,
    })
}

fn convert(path: &str, value: &Value, kind: &Kind) -> Result<FieldValue, PayloadError> {
    if value.is_null() {
        return Ok(FieldValue::Null);
    }
    let fail = |expected| Err(wrong(path, expected, value));
    match kind {
        Kind::Boolean => value
            .as_bool()
            .map(FieldValue::Boolean)
            .map_or_else(|| fail("a boolean"), Ok),
        Kind::Int => match value.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(n) => Ok(FieldValue::Int(n)),
            None => fail("a 32-bit integer"),
        },
        Kind::Long => value
            .as_i64()
            .map(FieldValue::Long)
            .map_or_else(|| fail("an integer"), Ok),
        Kind::Double => value
            .as_f64()
            .map(FieldValue::Double)
            .map_or_else(|| fail("a number"), Ok),
        Kind::DateTime => match value {
            Value::String(text) => match DateTime::parse_from_rfc3339(text) {
                Ok(t) => Ok(FieldValue::DateTimeMillis(t.timestamp_millis())),
                Err(_) => fail("an ISO-8601 date-time"),
            },
            Value::Number(n) => n
                .as_i64()
                .map(FieldValue::DateTimeMillis)
                .map_or_else(|| fail("an ISO-8601 date-time"), Ok),
            _ => fail("an ISO-8601 date-time"),
        },
        Kind::Date => {
            let days = value
                .as_str()
                .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
                .and_then(|date| {
                    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
                    i32::try_from((date - epoch).num_days()).ok()
                });
            days.map(FieldValue::Date)
                .map_or_else(|| fail("a date (YYYY-MM-DD)"), Ok)
        }
        Kind::String => match value {
            Value::String(text) => Ok(FieldValue::String(text.clone())),
            // A long text sent as a unified diff (docs/salesforce.md,
            // "Change events: header and bitmaps"): Pub/Sub puts the diff string in the field
            // itself, so the converted event does too.
            Value::Object(diff)
                if diff.len() == 1 && diff.get("diff").is_some_and(Value::is_string) =>
            {
                Ok(FieldValue::String(
                    diff["diff"].as_str().unwrap_or_default().to_owned(),
                ))
            }
            _ => fail("a string"),
        },
        Kind::Bytes => match value {
            Value::String(text) => Ok(FieldValue::Bytes(text.as_bytes().to_vec())),
            _ => fail("a string of bytes"),
        },
        Kind::Array(item) => match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| convert(&format!("{path}[{i}]"), v, item))
                .collect::<Result<_, _>>()
                .map(FieldValue::Array),
            _ => fail("an array"),
        },
        Kind::Map(item) => match value {
            Value::Object(entries) => entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), convert(&format!("{path}.{k}"), v, item)?)))
                .collect::<Result<_, _>>()
                .map(FieldValue::Map),
            _ => fail("an object"),
        },
        // A record below the top level (compound fields are handled by the caller).
        Kind::Record(subs) => match value {
            Value::Object(entries) => subs
                .iter()
                .map(|(sub, kind)| {
                    let value = match entries.get(sub) {
                        Some(v) => convert(&format!("{path}.{sub}"), v, kind)?,
                        None => FieldValue::Null,
                    };
                    Ok((sub.clone(), value))
                })
                .collect::<Result<_, _>>()
                .map(FieldValue::Map),
            _ => fail("an object"),
        },
        Kind::OneOf(branches) => branches
            .iter()
            .find_map(|branch| convert(path, value, branch).ok())
            .map_or_else(|| fail("a value of one of the union's types"), Ok),
        Kind::Unsupported(what) => Ok(FieldValue::Unsupported((*what).to_owned())),
    }
}

/// A value the schema does not describe, by its JSON type.
fn untyped(value: &Value) -> FieldValue {
    match value {
        Value::Null => FieldValue::Null,
        Value::Bool(b) => FieldValue::Boolean(*b),
        Value::Number(n) => n
            .as_i64()
            .map(FieldValue::Long)
            .unwrap_or_else(|| FieldValue::Double(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => FieldValue::String(s.clone()),
        Value::Array(items) => FieldValue::Array(items.iter().map(untyped).collect()),
        Value::Object(entries) => FieldValue::Map(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), untyped(v)))
                .collect(),
        ),
    }
}

fn flatten_untyped(name: &str, value: &Value, out: &mut BTreeMap<String, FieldValue>) {
    match value {
        Value::Object(entries) => {
            for (sub, value) in entries {
                out.insert(format!("{name}.{sub}"), untyped(value));
            }
        }
        other => {
            out.insert(name.to_owned(), untyped(other));
        }
    }
}

fn read_header(
    header: &Map<String, Value>,
    layout: &FieldLayout,
) -> Result<ChangeEventHeader, PayloadError> {
    let path = |field: &str| format!("{HEADER_FIELD}.{field}");
    let get = |field: &str| header.get(field).filter(|v| !v.is_null());
    let string = |field: &str| -> Result<String, PayloadError> {
        match get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(wrong(path(field), "a string", other)),
            None => Err(missing(path(field))),
        }
    };
    let optional = |field: &str| -> Result<Option<String>, PayloadError> {
        match get(field) {
            None => Ok(None),
            Some(_) => string(field).map(Some),
        }
    };
    let integer = |field: &str| -> Result<i64, PayloadError> {
        match get(field) {
            Some(value @ Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| wrong(path(field), "an integer", value)),
            Some(other) => Err(wrong(path(field), "an integer", other)),
            None => Err(missing(path(field))),
        }
    };
    let strings = |field: &str| -> Result<Vec<String>, PayloadError> {
        match get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong(path(field), "an array of strings", other)),
                })
                .collect(),
            Some(other) => Err(wrong(path(field), "an array of strings", other)),
        }
    };
    let field_set = |field: &str| -> Result<FieldSet, PayloadError> {
        let names = in_schema_order(strings(field)?, layout);
        FieldSet::from_names(&names).map_err(|source| PayloadError::FieldList {
            field: path(field),
            source,
        })
    };
    let commit_timestamp = match get("commitTimestamp") {
        None => return Err(missing(path("commitTimestamp"))),
        Some(value) => {
            let parsed = match value {
                Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
                Value::String(s) => DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
                _ => None,
            };
            parsed.ok_or_else(|| {
                wrong(
                    path("commitTimestamp"),
                    "epoch milliseconds or an ISO-8601 date-time",
                    value,
                )
            })?
        }
    };
    Ok(ChangeEventHeader {
        entity_name: string("entityName")?,
        record_ids: match get("recordIds") {
            None => return Err(missing(path("recordIds"))),
            Some(_) => strings("recordIds")?,
        },
        change_type: ChangeType::parse(&string("changeType")?),
        change_origin: optional("changeOrigin")?.filter(|origin| !origin.is_empty()),
        transaction_key: string("transactionKey")?,
        sequence_number: integer("sequenceNumber")?,
        commit_timestamp,
        commit_number: integer("commitNumber")?,
        commit_user: optional("commitUser")?,
        changed_fields: field_set("changedFields")?,
        nulled_fields: field_set("nulledFields")?,
        diff_fields: field_set("diffFields")?,
    })
}

/// Orders field names as the bitmap decoder lists them for the same schema: top-level fields
/// by position, then sub-fields grouped by their parent's position; names the schema does not
/// know keep their order at the end.
pub fn in_schema_order(mut names: Vec<String>, layout: &FieldLayout) -> Vec<String> {
    let position = |name: &str| layout.top_level.iter().position(|n| n == name);
    let key = |name: &String| -> (u8, usize, usize) {
        if let Some(i) = position(name) {
            return (0, i, 0);
        }
        if let Some((parent, child)) = name.split_once('.')
            && let Some(i) = position(parent)
            && let Some(j) = layout
                .nested
                .get(&i)
                .and_then(|subs| subs.iter().position(|s| s == child))
        {
            return (1, i, j);
        }
        (2, 0, 0)
    };
    names.sort_by_key(key);
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::avro::test_support::{bitmap, encode, header, user_schema};
    use serde_json::json;

    fn writer() -> WriterSchema {
        WriterSchema::new(user_schema())
    }

    fn message(data: Value) -> Message {
        Message {
            channel: "/data/UserChangeEvent".into(),
            data: Some(data),
            ..Message::default()
        }
    }

    fn cometd_header(change_type: &str) -> Value {
        json!({
            "entityName": "User",
            "recordIds": ["0055f00000GBZR4AAP"],
            "changeType": change_type,
            "changeOrigin": "com/salesforce/api/rest/61.0;client=HRSync",
            "transactionKey": "0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42",
            "sequenceNumber": 1,
            "commitTimestamp": 1_718_710_245_000_i64,
            "commitNumber": 1_100_662_289_041_i64,
            "commitUser": "0055f000005mc66AAA",
        })
    }

    #[test]
    fn the_reference_update_converts_to_the_avro_decoding_of_the_same_change() {
        // docs/salesforce.md, "A User change by both transports": the same change by both.
        let schema = writer();
        let mut h = cometd_header("UPDATE");
        h["changedFields"] = json!(["Title", "LastModifiedDate", "IsActive"]);
        let data = json!({
            "schema": schema.schema_id(),
            "payload": {
                "ChangeEventHeader": h,
                "IsActive": false,
                "Title": "Former Account Executive",
                "LastModifiedDate": "2024-06-18T11:30:45.000Z"
            },
            "event": {"replayId": 18_098_301}
        });
        let got = to_cdc_event(&message(data), &schema).unwrap();
        assert_eq!(got.replay_id, 18_098_301);
        assert_eq!(got.schema_id, schema.schema_id());

        let layout = schema.layout().clone();
        let mut avro_header = header("UPDATE", &["0055f00000GBZR4AAP"]);
        avro_header["changedFields"] =
            json!(bitmap(&layout, &["IsActive", "Title", "LastModifiedDate"]));
        let datum = encode(
            schema.change_event_schema().schema(),
            &json!({
                "ChangeEventHeader": avro_header,
                "IsActive": false,
                "Title": "Former Account Executive",
                "LastModifiedDate": 1_718_710_245_000_i64
            }),
        );
        let pubsub = schema.change_event_schema().decode(&datum).unwrap();
        assert_eq!(
            got.event.header.changed_fields,
            pubsub.header.changed_fields
        );
        assert_eq!(got.event.fields, pubsub.fields);
        assert_eq!(
            got.event.value("LastModifiedDate"),
            Some(&FieldValue::DateTimeMillis(1_718_710_245_000))
        );
        assert_eq!(got.event.value("Email"), Some(&FieldValue::Null));
        assert_eq!(got.event.value("Name.FirstName"), Some(&FieldValue::Null));
    }

    #[test]
    fn compound_fields_flatten_over_the_schema_sub_fields() {
        let schema = writer();
        let mut h = cometd_header("UPDATE");
        h["changedFields"] = json!(["Name.FirstName", "LastModifiedDate"]);
        let payload = json!({
            "ChangeEventHeader": h,
            "Name": {"FirstName": "Olya"},
            "LastModifiedDate": "2024-06-18T11:30:45.000Z"
        });
        let event = to_change_event(payload.as_object().unwrap(), &schema).unwrap();
        assert_eq!(
            event.fields.get("Name.FirstName"),
            Some(&FieldValue::String("Olya".into()))
        );
        assert_eq!(event.fields.get("Name.LastName"), Some(&FieldValue::Null));
        assert!(!event.fields.contains_key("Name"));
        // Bitmap order: the top-level bits first, then the sub-field entries.
        assert_eq!(
            event.header.changed_fields.names(),
            ["LastModifiedDate", "Name.FirstName"]
        );
    }

    #[test]
    fn field_lists_take_the_bitmap_decoders_order() {
        let layout = writer().layout().clone();
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ordered = in_schema_order(
            names(&[
                "Zeta__c",
                "Name.LastName",
                "Title",
                "Name.FirstName",
                "Email",
            ]),
            &layout,
        );
        let title = layout.top_level.iter().position(|n| n == "Title").unwrap();
        let email = layout.top_level.iter().position(|n| n == "Email").unwrap();
        let (first, second) = if title < email {
            ("Title", "Email")
        } else {
            ("Email", "Title")
        };
        assert_eq!(
            ordered,
            [first, second, "Name.FirstName", "Name.LastName", "Zeta__c"]
        );
    }

    #[test]
    fn a_create_is_filled_with_nulls_and_keeps_types() {
        let schema = writer();
        let payload = json!({
            "ChangeEventHeader": cometd_header("CREATE"),
            "Username": "olga.brown@example.com.prod",
            "Email": "olga.brown@example.com",
            "IsActive": true,
            "Name": {"Salutation": null, "FirstName": "Olga", "LastName": "Brown"},
            "CreatedDate": "2024-01-09T17:02:11.000Z",
            "Surprise__c": {"a": 1}
        });
        let event = to_change_event(payload.as_object().unwrap(), &schema).unwrap();
        assert_eq!(event.value("IsActive"), Some(&FieldValue::Boolean(true)));
        assert_eq!(
            event.value("CreatedDate").and_then(FieldValue::as_datetime),
            Some("2024-01-09T17:02:11Z".parse().unwrap())
        );
        assert_eq!(event.value("Name.Salutation"), Some(&FieldValue::Null));
        assert_eq!(event.value("Title"), Some(&FieldValue::Null));
        assert_eq!(
            event.value("Surprise__c.a"),
            Some(&FieldValue::Long(1)),
            "kept though the schema lacks it"
        );
        assert!(event.header.changed_fields.is_empty());
        assert_eq!(
            event.header.change_origin.as_deref(),
            Some("com/salesforce/api/rest/61.0;client=HRSync")
        );
    }

    #[test]
    fn a_diff_is_the_diff_string_as_on_pub_sub() {
        let schema = writer();
        let mut h = cometd_header("UPDATE");
        h["changedFields"] = json!(["Title", "LastModifiedDate"]);
        h["diffFields"] = json!(["Title"]);
        let payload = json!({
            "ChangeEventHeader": h,
            "Title": {"diff": "--- \n+++ abc\n@@ -1 +1 @@\n-a\n+b"},
            "LastModifiedDate": "2024-06-18T11:30:45.000Z"
        });
        let event = to_change_event(payload.as_object().unwrap(), &schema).unwrap();
        assert_eq!(event.header.diff_fields.names(), ["Title"]);
        assert!(
            matches!(event.value("Title"), Some(FieldValue::String(s)) if s.starts_with("--- "))
        );
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        let schema = writer();
        let err = |data: Value| to_cdc_event(&message(data), &schema).unwrap_err();
        assert_eq!(
            err(json!({"payload": {}, "event": {"replayId": 1}})),
            missing("data.schema")
        );
        assert_eq!(
            err(json!({"schema": "s", "payload": {}})).to_string(),
            "data.event.replayId is missing"
        );
        assert_eq!(
            err(json!({"schema": "s", "payload": {}, "event": {"replayId": "12"}})).to_string(),
            "data.event.replayId is the string \"12\", expected an integer"
        );
        assert_eq!(
            err(json!({"schema": "s", "payload": {}, "event": {"replayId": -2}})).to_string(),
            "data.event.replayId is -2, expected a position (0 or more; -1 and -2 are subscribe \
             presets)"
        );
        assert_eq!(
            err(json!({"schema": "s", "payload": {}, "event": {"replayId": 1}})),
            missing("ChangeEventHeader")
        );
        let with = |field: &str, value: Value| {
            let mut h = cometd_header("UPDATE");
            h[field] = value;
            json!({"schema": "s", "payload": {"ChangeEventHeader": h}, "event": {"replayId": 1}})
        };
        assert_eq!(
            err(with("sequenceNumber", json!("one"))).to_string(),
            "ChangeEventHeader.sequenceNumber is the string \"one\", expected an integer"
        );
        assert_eq!(
            err(with("transactionKey", Value::Null)),
            missing("ChangeEventHeader.transactionKey")
        );
        assert!(matches!(
            err(with("changedFields", json!(["Title", " "]))),
            PayloadError::FieldList { .. }
        ));
        assert!(matches!(
            err(with("commitTimestamp", json!("yesterday"))),
            PayloadError::WrongType { .. }
        ));
        let mut bad = with("changedFields", json!(["IsActive"]));
        bad["payload"]["IsActive"] = json!("no");
        assert_eq!(
            err(bad).to_string(),
            "IsActive is the string \"no\", expected a boolean"
        );
        let mut bad = with("changedFields", json!(["LastModifiedDate"]));
        bad["payload"]["LastModifiedDate"] = json!("18/06/2024");
        assert!(err(bad).to_string().starts_with("LastModifiedDate"));
        let mut bad = with("changedFields", json!([]));
        bad["payload"]["Name"] = json!({"FirstName": 3});
        assert!(err(bad).to_string().starts_with("Name.FirstName is 3"));
    }
}
