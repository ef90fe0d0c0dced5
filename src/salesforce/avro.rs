//! Decoding one Pub/Sub change event payload: a raw Avro datum (no container header, no magic
//! byte) written with the schema named by the event's `schema_id` (docs/salesforce.md,
//! "Change events: body on Pub/Sub").
//!
//! Why a [`ChangeEventSchema`] and not just an `apache_avro::Schema`: the bitmaps in the header
//! index the positions of the *writer* schema (docs/salesforce.md,
//! "Change events: header and bitmaps"), so the schema, its top-level field names and the sub-field
//! names of its compound fields travel together. They are computed once when the schema is parsed;
//! the subscriber caches one per schema id. Decoding with any other schema than the event's own
//! fails with "trailing data" after a field was added (docs/salesforce.md,
//! "Failures seen in other clients": decoding with the wrong schema), so `decode` checks that the
//! datum used up the buffer exactly and never needed bytes past its end, and says so when not.
//! (apache-avro alone reads a union index or a string cut off by the end of the buffer as null, so
//! a payload truncated at a field boundary would otherwise decode "successfully" with its last
//! fields null.)
//!
//! The result is deliberately flat and schema-shaped rather than User-shaped: the header is typed
//! (docs/salesforce.md, "Change events: header and bitmaps"), and the body is a map from field name
//! to [`FieldValue`], unions unwrapped and compound fields flattened to `Name.FirstName`, the same
//! spelling the bitmaps decode to. The User-specific reading is `normalize.rs`.
//!
//! Bytes from the network never panic this code: every failure is a [`DecodeError`] naming the
//! schema id and what went wrong, so the caller can dead-letter one event and go on
//! (docs/salesforce.md, "Failures seen in other clients": one unreadable event stopped the stream).
//! Nor can they exhaust memory: apache-avro allocates what a length read from the payload asks for,
//! and [`AVRO_ALLOCATION_CAP`] bounds that to what a real User change event can need.
//!
//! Choices where Salesforce is silent (docs/salesforce.md, "What Salesforce leaves open"):
//!
//! - Date-times are kept as numbers ([`FieldValue::DateTimeMillis`]): the Avro type is a plain
//!   `long` of epoch milliseconds, recognised by the schema's `timestamp-millis` logical type
//!   when present, otherwise by the names `CreatedDate` and `LastModifiedDate`
//!   ([`DATE_TIME_FIELDS`]). Other `long` fields stay [`FieldValue::Long`].
//! - An empty `changeOrigin` (a change made in the UI) reads as `None`, like a null one.
//! - Header bitmap arrays missing from the schema read as empty; any other header field missing
//!   or null is an error, since ordering and dedupe depend on it.
//! - Avro types Salesforce is not known to use for User (decimal, time-of-day, duration) decode
//!   to [`FieldValue::Unsupported`] naming the type, so one odd custom field cannot stop the
//!   stream.

use std::collections::BTreeMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::error::Details;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{NamesRef, RecordSchema, ResolvedSchema};
use apache_avro::types::Value;
use chrono::{DateTime, Utc};

use super::bitmap::{BitmapError, FieldLayout, FieldSet};

/// The name of top-level field 0, the header record.
pub const HEADER_FIELD: &str = "ChangeEventHeader";

/// `long` fields read as epoch-millisecond date-times when the schema has no logical type.
pub const DATE_TIME_FIELDS: &[&str] = &["CreatedDate", "LastModifiedDate"];

/// A parsed writer schema with the field layout its bitmaps index.
#[derive(Debug, Clone)]
pub struct ChangeEventSchema {
    schema_id: String,
    schema: Schema,
    layout: FieldLayout,
}

/// Why a schema cannot decode change events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("schema {schema_id}: not a valid Avro schema: {detail}")]
    Parse { schema_id: String, detail: String },
    #[error("schema {schema_id}: not a change event schema: {problem}")]
    Shape { schema_id: String, problem: String },
}

/// `changeType` (docs/salesforce.md, "Change events: header and bitmaps"). Values not documented
/// today, such as `SNAPSHOT`, are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Undelete,
    GapCreate,
    GapUpdate,
    GapDelete,
    GapUndelete,
    GapOverflow,
    Other(String),
}

impl ChangeType {
    pub fn parse(raw: &str) -> Self {
        match raw {
            "CREATE" => ChangeType::Create,
            "UPDATE" => ChangeType::Update,
            "DELETE" => ChangeType::Delete,
            "UNDELETE" => ChangeType::Undelete,
            "GAP_CREATE" => ChangeType::GapCreate,
            "GAP_UPDATE" => ChangeType::GapUpdate,
            "GAP_DELETE" => ChangeType::GapDelete,
            "GAP_UNDELETE" => ChangeType::GapUndelete,
            "GAP_OVERFLOW" => ChangeType::GapOverflow,
            other => ChangeType::Other(other.to_string()),
        }
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ChangeType::Create => "CREATE",
            ChangeType::Update => "UPDATE",
            ChangeType::Delete => "DELETE",
            ChangeType::Undelete => "UNDELETE",
            ChangeType::GapCreate => "GAP_CREATE",
            ChangeType::GapUpdate => "GAP_UPDATE",
            ChangeType::GapDelete => "GAP_DELETE",
            ChangeType::GapUndelete => "GAP_UNDELETE",
            ChangeType::GapOverflow => "GAP_OVERFLOW",
            ChangeType::Other(raw) => raw,
        }
    }

    /// A per-record gap event (`GAP_CREATE` … `GAP_UNDELETE`), not the overflow.
    pub fn is_record_gap(&self) -> bool {
        matches!(
            self,
            ChangeType::GapCreate
                | ChangeType::GapUpdate
                | ChangeType::GapDelete
                | ChangeType::GapUndelete
        )
    }
}

impl fmt::Display for ChangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed `ChangeEventHeader` (docs/salesforce.md, "Change events: header and bitmaps"),
/// bitmaps decoded to names.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEventHeader {
    pub entity_name: String,
    /// As sent: usually one 18-character id; may be a wildcard (`005*`) or, on overflow,
    /// `000000000000000AAA`.
    pub record_ids: Vec<String>,
    pub change_type: ChangeType,
    /// `None` when empty or null (a change made in the UI).
    pub change_origin: Option<String>,
    pub transaction_key: String,
    pub sequence_number: i64,
    pub commit_timestamp: DateTime<Utc>,
    /// May exceed 2^53 (docs/salesforce.md, "Failures seen in other clients": large commit
    /// numbers).
    pub commit_number: i64,
    pub commit_user: Option<String>,
    pub changed_fields: FieldSet,
    pub nulled_fields: FieldSet,
    pub diff_fields: FieldSet,
}

/// One body value, unions unwrapped.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    /// Epoch milliseconds of a date-time field.
    DateTimeMillis(i64),
    /// Days since the epoch (Avro `date`).
    Date(i32),
    Array(Vec<FieldValue>),
    Map(BTreeMap<String, FieldValue>),
    /// An Avro type this decoder does not interpret; names the type.
    Unsupported(String),
}

const NULL: FieldValue = FieldValue::Null;

impl FieldValue {
    pub fn is_null(&self) -> bool {
        matches!(self, FieldValue::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The instant of a date-time value; `None` for other values or out-of-range instants.
    pub fn as_datetime(&self) -> Option<DateTime<Utc>> {
        match self {
            FieldValue::DateTimeMillis(ms) => DateTime::from_timestamp_millis(*ms),
            _ => None,
        }
    }
}

/// One decoded change event.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub header: ChangeEventHeader,
    /// Every body field of the writer schema by name; compound fields as `Parent.Child` when
    /// present, or `Parent` → `Null` when the whole compound field is null.
    pub fields: BTreeMap<String, FieldValue>,
}

impl ChangeEvent {
    /// The value of a field or sub-field. A sub-field of a null compound field is `Null`;
    /// `None` means the writer schema has no such field (for example hidden by field-level
    /// security).
    pub fn value(&self, name: &str) -> Option<&FieldValue> {
        if let Some(value) = self.fields.get(name) {
            return Some(value);
        }
        let (parent, _) = name.split_once('.')?;
        match self.fields.get(parent) {
            Some(FieldValue::Null) => Some(&NULL),
            _ => None,
        }
    }
}

/// Why one payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decoding a change event with writer schema {schema_id}: {kind}")]
pub struct DecodeError {
    pub schema_id: String,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("the payload is truncated ({detail}); was it written with another schema?")]
    Truncated { detail: String },
    #[error(
        "trailing data: the datum ended after {consumed} bytes, {remaining} bytes are left; was it written with another schema?"
    )]
    TrailingData { consumed: usize, remaining: usize },
    #[error("union branch {index} does not exist; the union has {branches} branches")]
    UnknownUnionBranch { index: i64, branches: usize },
    #[error("invalid Avro data: {detail}")]
    Avro { detail: String },
    #[error("header field {field}: {problem}")]
    Header { field: String, problem: String },
    #[error("header field {field}: {source}")]
    Bitmap {
        field: String,
        #[source]
        source: BitmapError,
    },
}

/// The largest event Salesforce publishes: 1 MB (docs/security.md).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The most apache-avro may allocate at once while decoding a payload, set process-wide by
/// [`cap_allocations`]. Every length in a payload is backed by its bytes: a string or bytes
/// field of `n` bytes takes `n` bytes of the payload, and an array or map item at least one (a
/// User change event has no array or map of nulls), so no length in a payload of
/// [`MAX_EVENT_BYTES`] exceeds that many. apache-avro checks a string's length against the cap
/// as it is, and an array's or map's item count times the size of a decoded item, of which a
/// map entry (`(String, Value)`) is the larger. A cap of one event's bytes times that size is
/// therefore never reached by a real event; a forged length (the varint `2^62`) is refused
/// before anything is allocated, instead of apache-avro's default of 512 MiB per allocation.
pub const AVRO_ALLOCATION_CAP: usize = MAX_EVENT_BYTES * std::mem::size_of::<(String, Value)>();

// Well below apache-avro's own default of 512 MiB, whatever the size of a decoded item.
const _: () = assert!(AVRO_ALLOCATION_CAP <= 256 * 1024 * 1024);

/// Sets apache-avro's allocation cap to [`AVRO_ALLOCATION_CAP`]. apache-avro keeps the first
/// value it is given for the life of the process (it takes its default at the first decode), so
/// this runs at start-up and before every decode; an error says another value came first.
pub fn cap_allocations() -> Result<(), String> {
    match apache_avro::util::max_allocation_bytes(AVRO_ALLOCATION_CAP) {
        AVRO_ALLOCATION_CAP => Ok(()),
        other => Err(format!(
            "apache-avro's allocation cap was fixed at {other} bytes before usersync could set \
             it to {AVRO_ALLOCATION_CAP}"
        )),
    }
}

impl ChangeEventSchema {
    /// Parses a writer schema (the JSON from `GetSchema`) and computes its field layout.
    pub fn parse(schema_id: &str, json: &str) -> Result<Self, SchemaError> {
        let shape = |problem: String| SchemaError::Shape {
            schema_id: schema_id.to_string(),
            problem,
        };
        let schema = Schema::parse_str(json).map_err(|e| SchemaError::Parse {
            schema_id: schema_id.to_string(),
            detail: e.to_string(),
        })?;
        let resolved = ResolvedSchema::try_from(&schema).map_err(|e| SchemaError::Parse {
            schema_id: schema_id.to_string(),
            detail: e.to_string(),
        })?;
        let names = resolved.get_names();
        let Schema::Record(record) = &schema else {
            return Err(shape("the top level is not a record".into()));
        };
        match record.fields.first() {
            Some(first)
                if first.name == HEADER_FIELD && record_of(&first.schema, names).is_some() => {}
            Some(first) => {
                return Err(shape(format!(
                    "field 0 is {:?}, expected the {HEADER_FIELD} record",
                    first.name
                )));
            }
            None => return Err(shape("the record has no fields".into())),
        }
        let top_level = record.fields.iter().map(|f| f.name.clone()).collect();
        let nested = record
            .fields
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, field)| {
                record_of(&field.schema, names)
                    .map(|r| (i, r.fields.iter().map(|f| f.name.clone()).collect()))
            })
            .collect();
        let layout = FieldLayout::new(top_level, nested);
        drop(resolved);
        Ok(Self {
            schema_id: schema_id.to_string(),
            schema,
            layout,
        })
    }

    pub fn schema_id(&self) -> &str {
        &self.schema_id
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The positions the header bitmaps index.
    pub fn layout(&self) -> &FieldLayout {
        &self.layout
    }

    /// Decodes one payload written with this schema.
    pub fn decode(&self, payload: &[u8]) -> Result<ChangeEvent, DecodeError> {
        // Already set at start-up; this makes sure of it wherever decoding happens first.
        let _ = cap_allocations();
        let fail = |kind| DecodeError {
            schema_id: self.schema_id.clone(),
            kind,
        };
        let reader = GenericDatumReader::builder(&self.schema)
            .build()
            .map_err(|e| avro_error(e, &fail))?;
        let mut input = Guarded::new(payload);
        let read = reader.read_value(&mut input);
        if input.overrun {
            // apache-avro reads a union index or a string cut off by the end of the buffer as
            // null instead of failing; a read past the end is the only reliable sign.
            return Err(fail(DecodeErrorKind::Truncated {
                detail: match read {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("the datum needs more than its {} bytes", payload.len()),
                },
            }));
        }
        let value = read.map_err(|e| avro_error(e, &fail))?;
        if !input.rest.is_empty() {
            return Err(fail(DecodeErrorKind::TrailingData {
                consumed: payload.len() - input.rest.len(),
                remaining: input.rest.len(),
            }));
        }
        let Value::Record(mut fields) = value else {
            return Err(fail(DecodeErrorKind::Avro {
                detail: "the datum is not a record".into(),
            }));
        };
        if fields.is_empty() {
            return Err(fail(DecodeErrorKind::Avro {
                detail: "the record has no fields".into(),
            }));
        }
        let body = fields.split_off(1);
        let (_, header) = fields.pop().unwrap_or((String::new(), Value::Null));
        let header = self.header(header).map_err(fail)?;
        let mut flat = BTreeMap::new();
        for (name, value) in body {
            flatten(&name, value, &mut flat);
        }
        Ok(ChangeEvent {
            header,
            fields: flat,
        })
    }

    fn header(&self, value: Value) -> Result<ChangeEventHeader, DecodeErrorKind> {
        let Value::Record(fields) = unwrap_union(value) else {
            return Err(header_error(HEADER_FIELD, "is not a record"));
        };
        let mut fields: BTreeMap<String, Value> = fields
            .into_iter()
            .map(|(name, value)| (name, unwrap_union(value)))
            .collect();
        let mut take = |name: &str| fields.remove(name).unwrap_or(Value::Null);

        let entity_name = required_string(take("entityName"), "entityName")?;
        let record_ids = string_list(take("recordIds"), "recordIds")?;
        let change_type = ChangeType::parse(&required_string(take("changeType"), "changeType")?);
        let change_origin = optional_string(take("changeOrigin"), "changeOrigin")?
            .filter(|origin| !origin.is_empty());
        let transaction_key = required_string(take("transactionKey"), "transactionKey")?;
        let sequence_number = required_integer(take("sequenceNumber"), "sequenceNumber")?;
        let commit_timestamp = match take("commitTimestamp") {
            Value::Long(ms) | Value::TimestampMillis(ms) => DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| header_error("commitTimestamp", format!("{ms} is out of range"))),
            other => Err(type_error("commitTimestamp", &other, "long")),
        }?;
        let commit_number = required_integer(take("commitNumber"), "commitNumber")?;
        let commit_user = optional_string(take("commitUser"), "commitUser")?;
        let mut bitmap = |name: &str| -> Result<FieldSet, DecodeErrorKind> {
            let entries = match take(name) {
                Value::Null => Vec::new(),
                other => string_list(other, name)?,
            };
            FieldSet::from_bitmaps(&entries, &self.layout).map_err(|source| {
                DecodeErrorKind::Bitmap {
                    field: name.to_string(),
                    source,
                }
            })
        };
        Ok(ChangeEventHeader {
            entity_name,
            record_ids,
            change_type,
            change_origin,
            transaction_key,
            sequence_number,
            commit_timestamp,
            commit_number,
            commit_user,
            changed_fields: bitmap("changedFields")?,
            nulled_fields: bitmap("nulledFields")?,
            diff_fields: bitmap("diffFields")?,
        })
    }
}

/// A reader over the payload that remembers whether the decoder asked for bytes past its end.
/// A complete datum is read exactly, never beyond.
struct Guarded<'a> {
    rest: &'a [u8],
    overrun: bool,
}

impl<'a> Guarded<'a> {
    fn new(payload: &'a [u8]) -> Self {
        Self {
            rest: payload,
            overrun: false,
        }
    }
}

impl std::io::Read for Guarded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.overrun = true;
        }
        self.rest.read(buf)
    }
}

/// The record a field holds: the field's own record type, a reference to one, or the record
/// branch of a union (`["null", R]`, `["string", R]`, `["null", "string", R]`).
fn record_of<'a>(schema: &'a Schema, names: &'a NamesRef<'a>) -> Option<&'a RecordSchema> {
    match schema {
        Schema::Record(record) => Some(record),
        Schema::Ref { name } => names.get(name).and_then(|s| record_of(s, names)),
        Schema::Union(union) => union
            .variants()
            .iter()
            .find_map(|branch| record_of(branch, names)),
        _ => None,
    }
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => unwrap_union(*inner),
        other => other,
    }
}

/// Adds one body field to the flat map: compound fields become `Parent.Child` entries.
fn flatten(name: &str, value: Value, out: &mut BTreeMap<String, FieldValue>) {
    match unwrap_union(value) {
        Value::Record(children) => {
            for (child, value) in children {
                flatten(&format!("{name}.{child}"), value, out);
            }
        }
        Value::Long(ms) if DATE_TIME_FIELDS.contains(&name) => {
            out.insert(name.to_string(), FieldValue::DateTimeMillis(ms));
        }
        other => {
            out.insert(name.to_string(), field_value(other));
        }
    }
}

fn field_value(value: Value) -> FieldValue {
    match value {
        Value::Null => FieldValue::Null,
        Value::Boolean(b) => FieldValue::Boolean(b),
        Value::Int(i) => FieldValue::Int(i),
        Value::Long(l) => FieldValue::Long(l),
        Value::Float(f) => FieldValue::Double(f64::from(f)),
        Value::Double(d) => FieldValue::Double(d),
        Value::Bytes(b) | Value::Fixed(_, b) => FieldValue::Bytes(b),
        Value::String(s) | Value::Enum(_, s) => FieldValue::String(s),
        Value::Uuid(u) => FieldValue::String(u.to_string()),
        Value::Union(_, inner) => field_value(*inner),
        Value::Array(items) => FieldValue::Array(items.into_iter().map(field_value).collect()),
        Value::Map(entries) => FieldValue::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k, field_value(v)))
                .collect(),
        ),
        Value::Record(fields) => FieldValue::Map(
            fields
                .into_iter()
                .map(|(k, v)| (k, field_value(v)))
                .collect(),
        ),
        Value::Date(days) => FieldValue::Date(days),
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            FieldValue::DateTimeMillis(ms)
        }
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            FieldValue::DateTimeMillis(us.div_euclid(1_000))
        }
        Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => {
            FieldValue::DateTimeMillis(ns.div_euclid(1_000_000))
        }
        Value::Decimal(_) | Value::BigDecimal(_) => FieldValue::Unsupported("decimal".into()),
        Value::TimeMillis(_) | Value::TimeMicros(_) => {
            FieldValue::Unsupported("time of day".into())
        }
        Value::Duration(_) => FieldValue::Unsupported("duration".into()),
    }
}

fn avro_error(
    error: apache_avro::Error,
    fail: &impl Fn(DecodeErrorKind) -> DecodeError,
) -> DecodeError {
    let detail = error.to_string();
    let kind = match error.into_details() {
        Details::GetUnionVariant {
            index,
            num_variants,
        } => DecodeErrorKind::UnknownUnionBranch {
            index,
            branches: num_variants,
        },
        Details::ReadVariableIntegerBytes(io)
        | Details::ReadBoolean(io)
        | Details::ReadBytes(io)
        | Details::ReadString(io)
        | Details::ReadDouble(io)
        | Details::ReadFloat(io)
        | Details::ReadDuration(io)
        | Details::ReadFixed(io, _)
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            DecodeErrorKind::Truncated { detail }
        }
        _ => DecodeErrorKind::Avro { detail },
    };
    fail(kind)
}

fn header_error(field: &str, problem: impl Into<String>) -> DecodeErrorKind {
    DecodeErrorKind::Header {
        field: field.to_string(),
        problem: problem.into(),
    }
}

fn type_error(field: &str, value: &Value, expected: &str) -> DecodeErrorKind {
    match value {
        Value::Null => header_error(field, "is missing or null"),
        other => header_error(
            field,
            format!(
                "is {:?}, expected {expected}",
                apache_avro::types::ValueKind::from(other)
            ),
        ),
    }
}

fn required_string(value: Value, field: &str) -> Result<String, DecodeErrorKind> {
    match value {
        Value::String(s) | Value::Enum(_, s) => Ok(s),
        other => Err(type_error(field, &other, "string")),
    }
}

fn optional_string(value: Value, field: &str) -> Result<Option<String>, DecodeErrorKind> {
    match value {
        Value::Null => Ok(None),
        other => required_string(other, field).map(Some),
    }
}

fn required_integer(value: Value, field: &str) -> Result<i64, DecodeErrorKind> {
    match value {
        Value::Int(i) => Ok(i64::from(i)),
        Value::Long(l) => Ok(l),
        other => Err(type_error(field, &other, "int or long")),
    }
}

fn string_list(value: Value, field: &str) -> Result<Vec<String>, DecodeErrorKind> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match unwrap_union(item) {
                Value::String(s) => Ok(s),
                other => Err(type_error(field, &other, "an array of strings")),
            })
            .collect(),
        other => Err(type_error(field, &other, "an array of strings")),
    }
}

/// Test equipment shared with `normalize.rs`: the fixture schema, an encoder from JSON, and the
/// inverse of the bitmap decoder.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::{Value as Json, json};

    pub(crate) const USER_SCHEMA_JSON: &str =
        include_str!("../../tests/fixtures/user_change_event.avsc.json");
    pub(crate) const SCHEMA_ID: &str = "93etK5psDNYN7fkR6LeDVw";

    pub(crate) fn user_schema() -> ChangeEventSchema {
        ChangeEventSchema::parse(SCHEMA_ID, USER_SCHEMA_JSON).unwrap()
    }

    /// Encodes a JSON description of an event as a raw Avro datum of `schema`. Missing fields
    /// are null; unions take the branch the JSON value fits.
    pub(crate) fn encode(schema: &Schema, event: &Json) -> Vec<u8> {
        let resolved = ResolvedSchema::try_from(schema).unwrap();
        let value = to_value(schema, event, resolved.get_names());
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    fn to_value(schema: &Schema, json: &Json, names: &NamesRef<'_>) -> Value {
        match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(json.as_bool().unwrap()),
            Schema::Int => Value::Int(i32::try_from(json.as_i64().unwrap()).unwrap()),
            Schema::Long => Value::Long(json.as_i64().unwrap()),
            Schema::TimestampMillis => Value::TimestampMillis(json.as_i64().unwrap()),
            Schema::Double => Value::Double(json.as_f64().unwrap()),
            Schema::String => Value::String(json.as_str().unwrap().to_string()),
            Schema::Enum(e) => {
                let symbol = json.as_str().unwrap();
                let index = e.symbols.iter().position(|s| s == symbol).unwrap();
                Value::Enum(u32::try_from(index).unwrap(), symbol.to_string())
            }
            Schema::Array(a) => Value::Array(
                json.as_array()
                    .unwrap()
                    .iter()
                    .map(|item| to_value(&a.items, item, names))
                    .collect(),
            ),
            Schema::Record(r) => Value::Record(
                r.fields
                    .iter()
                    .map(|f| {
                        let field = json.get(&f.name).unwrap_or(&Json::Null);
                        (f.name.clone(), to_value(&f.schema, field, names))
                    })
                    .collect(),
            ),
            Schema::Ref { name } => to_value(names[name], json, names),
            Schema::Union(u) => {
                let fits = |branch: &Schema| match (json, branch) {
                    (Json::Null, Schema::Null) => true,
                    (Json::Bool(_), Schema::Boolean) => true,
                    (Json::Number(_), Schema::Long | Schema::TimestampMillis) => json.is_i64(),
                    (Json::Number(_), Schema::Double) => true,
                    (Json::String(_), Schema::String) => true,
                    (Json::Array(_), Schema::Array(_)) => true,
                    (Json::Object(_), Schema::Record(_) | Schema::Ref { .. }) => true,
                    _ => false,
                };
                let index = u
                    .variants()
                    .iter()
                    .position(fits)
                    .unwrap_or_else(|| panic!("{json} fits no branch of {:?}", u.variants()));
                Value::Union(
                    u32::try_from(index).unwrap(),
                    Box::new(to_value(&u.variants()[index], json, names)),
                )
            }
            other => panic!("the test encoder does not handle {other:?}"),
        }
    }

    /// Encodes field names as the bitmap entries Salesforce would send for this layout.
    pub(crate) fn bitmap(layout: &FieldLayout, names: &[&str]) -> Vec<String> {
        let position = |name: &str| layout.top_level.iter().position(|f| f == name).unwrap();
        let mut top: u128 = 0;
        let mut nested: BTreeMap<usize, u128> = BTreeMap::new();
        for name in names {
            match name.split_once('.') {
                None => top |= 1 << position(name),
                Some((parent, child)) => {
                    let p = position(parent);
                    let c = layout.nested[&p].iter().position(|f| f == child).unwrap();
                    *nested.entry(p).or_default() |= 1 << c;
                }
            }
        }
        let mut entries = Vec::new();
        if top != 0 {
            entries.push(format!("0x{top:X}"));
        }
        entries.extend(nested.iter().map(|(p, bits)| format!("{p}-0x{bits:x}")));
        entries
    }

    /// A header in JSON; the body fields are added by the caller.
    pub(crate) fn header(change_type: &str, record_ids: &[&str]) -> Json {
        json!({
            "entityName": "User",
            "recordIds": record_ids,
            "changeType": change_type,
            "changeOrigin": "com/salesforce/api/rest/61.0;client=HRSync",
            "transactionKey": "0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42",
            "sequenceNumber": 1,
            "commitTimestamp": 1_718_710_245_000_i64,
            "commitNumber": 1_100_662_289_041_i64,
            "commitUser": "0055f000005mc66AAA",
            "nulledFields": [],
            "diffFields": [],
            "changedFields": []
        })
    }

    /// Salesforce's documented CREATE example of a User, Olga Brown (docs/salesforce.md,
    /// "A User change by both transports"), as a full body.
    pub(crate) fn create_body() -> Json {
        json!({
            "Username": "olga.brown@example.com.prod",
            "Name": {"Salutation": null, "FirstName": "Olga", "LastName": "Brown"},
            "CompanyName": "Example Inc.",
            "Department": "Sales",
            "Title": "Account Executive",
            "Address": {"City": "San Francisco", "CountryCode": "US", "Latitude": 37.79},
            "Email": "Olga.Brown@Example.com",
            "IsActive": true,
            "ProfileId": "00e5f000001abcdAAA",
            "TimeZoneSidKey": "America/Los_Angeles",
            "LanguageLocaleKey": "en_US",
            "EmailPreferences": ["AutoBcc", "StayInTouchReminder"],
            "UserPreferences": ["ActivityRemindersPopup", "HideSfxWelcomeMat"],
            "CreatedDate": 1_704_819_731_000_i64,
            "CreatedById": "0055f000005mc66AAA",
            "LastModifiedDate": 1_704_819_731_000_i64,
            "LastModifiedById": "0055f000005mc66AAA"
        })
    }

    /// A header plus body fields as one event.
    pub(crate) fn event(header: Json, body: Json) -> Json {
        let mut event = body;
        event["ChangeEventHeader"] = header;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use serde_json::{Value as Json, json};

    const OLGA: &str = "0055f00000GBZR4AAP";

    fn decode(json: &Json) -> ChangeEvent {
        let schema = user_schema();
        schema.decode(&encode(schema.schema(), json)).unwrap()
    }

    #[test]
    fn a_forged_length_past_the_allocation_cap_is_refused_before_allocating() {
        // The header's first field, `entityName`, a string claiming one byte over the cap:
        // its length as a zigzag varint, and nothing after it.
        let mut payload = Vec::new();
        let mut zigzag = (AVRO_ALLOCATION_CAP as u64 + 1) << 1;
        while zigzag >= 0x80 {
            payload.push((zigzag as u8 & 0x7f) | 0x80);
            zigzag >>= 7;
        }
        payload.push(zigzag as u8);
        let err = user_schema().decode(&payload).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Avro { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("maximum allowed: {AVRO_ALLOCATION_CAP}")),
            "{err}"
        );
        assert_eq!(cap_allocations(), Ok(()));
    }

    fn s(v: &str) -> FieldValue {
        FieldValue::String(v.to_string())
    }

    #[test]
    fn the_fixture_schema_gives_the_layout_the_bitmaps_index() {
        let schema = user_schema();
        assert_eq!(schema.schema_id(), SCHEMA_ID);
        let layout = schema.layout();
        assert_eq!(layout.top_level.len(), 20);
        assert_eq!(layout.top_level[0], HEADER_FIELD);
        assert_eq!(layout.top_level[2], "Name");
        assert_eq!(layout.top_level[18], "LastModifiedDate");
        assert_eq!(
            layout.nested.keys().copied().collect::<Vec<_>>(),
            [2, 7],
            "only Name and Address are compound; the header is not"
        );
        assert_eq!(layout.nested[&2], ["Salutation", "FirstName", "LastName"]);
        assert_eq!(layout.nested[&7].len(), 10);
        assert_eq!(layout.nested[&7][9], "GeocodeAccuracy");
    }

    #[test]
    fn a_create_decodes_header_and_full_body() {
        let mut header = header("CREATE", &[OLGA]);
        header["changeOrigin"] = "".into();
        let decoded = decode(&event(header, create_body()));
        let h = &decoded.header;
        assert_eq!(h.entity_name, "User");
        assert_eq!(h.record_ids, [OLGA]);
        assert_eq!(h.change_type, ChangeType::Create);
        assert_eq!(h.change_origin, None, "an empty origin is a UI change");
        assert_eq!(h.transaction_key, "0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b42");
        assert_eq!(h.sequence_number, 1);
        assert_eq!(h.commit_timestamp.to_rfc3339(), "2024-06-18T11:30:45+00:00");
        assert_eq!(h.commit_number, 1_100_662_289_041);
        assert_eq!(h.commit_user.as_deref(), Some("0055f000005mc66AAA"));
        assert!(h.changed_fields.is_empty() && h.nulled_fields.is_empty());
        assert!(h.diff_fields.is_empty());

        let f = &decoded.fields;
        assert_eq!(f["Username"], s("olga.brown@example.com.prod"));
        assert_eq!(f["Name.Salutation"], FieldValue::Null);
        assert_eq!(f["Name.FirstName"], s("Olga"));
        assert_eq!(f["Name.LastName"], s("Brown"));
        assert!(
            !f.contains_key("Name"),
            "a present compound field is flattened"
        );
        assert_eq!(f["Address.City"], s("San Francisco"));
        assert_eq!(f["Address.Latitude"], FieldValue::Double(37.79));
        assert_eq!(f["Address.Street"], FieldValue::Null);
        assert_eq!(f["IsActive"], FieldValue::Boolean(true));
        assert_eq!(
            f["EmailPreferences"],
            FieldValue::Array(vec![s("AutoBcc"), s("StayInTouchReminder")])
        );
        assert_eq!(f["Division"], FieldValue::Null);
        assert_eq!(
            f["CreatedDate"],
            FieldValue::DateTimeMillis(1_704_819_731_000)
        );
        assert_eq!(
            f["CreatedDate"].as_datetime().unwrap().to_rfc3339(),
            "2024-01-09T17:02:11+00:00"
        );
        // Every body field of the schema is there: 17 plain fields, 3 + 10 sub-fields.
        assert_eq!(f.len(), 17 + 3 + 10);
        assert!(!f.contains_key(HEADER_FIELD));
    }

    #[test]
    fn an_update_carries_nulls_for_unchanged_fields_and_a_real_bitmap() {
        let schema = user_schema();
        let changed = ["Department", "Title", "IsActive", "LastModifiedDate"];
        let mut h = header("UPDATE", &[OLGA]);
        h["changedFields"] = json!(bitmap(schema.layout(), &changed));
        h["nulledFields"] = json!(bitmap(schema.layout(), &["Department"]));
        // Bits 5, 6, 9 and 18 of this schema.
        assert_eq!(h["changedFields"], json!(["0x40260"]));
        let body = json!({
            "Title": "Former Account Executive",
            "IsActive": false,
            "LastModifiedDate": 1_718_710_245_000_i64
        });
        let decoded = decode(&event(h, body));
        assert_eq!(decoded.header.change_type, ChangeType::Update);
        assert_eq!(decoded.header.changed_fields.names(), changed);
        assert_eq!(decoded.header.nulled_fields.names(), ["Department"]);
        let f = &decoded.fields;
        assert_eq!(f["IsActive"], FieldValue::Boolean(false), "a real false");
        assert_eq!(f["Username"], FieldValue::Null, "unchanged reads as null");
        assert_eq!(f["Department"], FieldValue::Null);
        assert_eq!(
            f["Name"],
            FieldValue::Null,
            "a null compound field stays whole"
        );
        assert_eq!(
            f["LastModifiedDate"].as_datetime().unwrap(),
            decoded.header.commit_timestamp
        );
    }

    #[test]
    fn a_nested_first_name_change_decodes_to_the_sub_field() {
        let schema = user_schema();
        let mut h = header("UPDATE", &[OLGA]);
        h["changedFields"] = json!(bitmap(
            schema.layout(),
            &["LastModifiedDate", "Name.FirstName"]
        ));
        assert_eq!(h["changedFields"], json!(["0x40000", "2-0x2"]));
        let body = json!({
            "Name": {"FirstName": "Olga-Maria"},
            "LastModifiedDate": 1_718_710_245_000_i64
        });
        let decoded = decode(&event(h, body));
        assert_eq!(
            decoded.header.changed_fields.names(),
            ["LastModifiedDate", "Name.FirstName"]
        );
        assert_eq!(decoded.value("Name.FirstName"), Some(&s("Olga-Maria")));
        assert_eq!(decoded.value("Name.LastName"), Some(&FieldValue::Null));
        assert_eq!(
            decoded.value("Address.City"),
            Some(&FieldValue::Null),
            "a sub-field of a null compound field is null"
        );
        assert_eq!(decoded.value("Nickname"), None, "not in the schema");
        assert_eq!(decoded.value("Nickname.X"), None);
    }

    #[test]
    fn gap_and_overflow_headers_decode_with_an_empty_body() {
        let mut gap = header("GAP_UPDATE", &[OLGA, "0055f00000GBZR5AAP"]);
        gap["sequenceNumber"] = 19.into();
        let decoded = decode(&event(gap, json!({})));
        assert_eq!(decoded.header.change_type, ChangeType::GapUpdate);
        assert!(decoded.header.change_type.is_record_gap());
        assert_eq!(decoded.header.record_ids.len(), 2);
        assert_eq!(decoded.header.sequence_number, 19);
        assert!(decoded.fields.values().all(FieldValue::is_null));

        let overflow = header("GAP_OVERFLOW", &["000000000000000AAA"]);
        let decoded = decode(&event(overflow, json!({})));
        assert_eq!(decoded.header.change_type, ChangeType::GapOverflow);
        assert!(!decoded.header.change_type.is_record_gap());
        assert_eq!(decoded.header.record_ids, ["000000000000000AAA"]);
    }

    #[test]
    fn a_merged_event_keeps_every_record_id() {
        let schema = user_schema();
        let ids = [OLGA, "0055f00000GBZR5AAP", "0055f00000GBZR6AAP"];
        let mut h = header("UPDATE", &ids);
        h["changedFields"] = json!(bitmap(schema.layout(), &["Title", "LastModifiedDate"]));
        let decoded = decode(&event(h, json!({"Title": "AE"})));
        assert_eq!(decoded.header.record_ids, ids);
        assert_eq!(decoded.fields["Title"], s("AE"));
    }

    #[test]
    fn change_types_round_trip_and_unknown_ones_are_kept() {
        for raw in [
            "CREATE",
            "UPDATE",
            "DELETE",
            "UNDELETE",
            "GAP_CREATE",
            "GAP_UPDATE",
            "GAP_DELETE",
            "GAP_UNDELETE",
            "GAP_OVERFLOW",
            "SNAPSHOT",
        ] {
            let parsed = ChangeType::parse(raw);
            assert_eq!(parsed.as_str(), raw);
            assert_eq!(parsed.to_string(), raw);
        }
        assert_eq!(
            ChangeType::parse("SNAPSHOT"),
            ChangeType::Other("SNAPSHOT".into())
        );
    }

    #[test]
    fn commit_numbers_past_two_to_the_53_are_exact() {
        let mut h = header("UPDATE", &[OLGA]);
        h["commitNumber"] = 1_698_100_138_468_892_700_i64.into();
        assert_eq!(
            decode(&event(h, json!({}))).header.commit_number,
            1_698_100_138_468_892_700
        );
    }

    /// The fixture with edits: a string `changeType` (to carry values the enum lacks), no
    /// `diffFields`, a person name that may be a plain string, a second address reusing the
    /// `Address` type by name, and a date-time with a logical type.
    fn variant_schema() -> ChangeEventSchema {
        let mut json: Json = serde_json::from_str(USER_SCHEMA_JSON).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        let header = fields[0]["type"]["fields"].as_array_mut().unwrap();
        header.retain(|f| f["name"] != "diffFields");
        for f in header.iter_mut() {
            if f["name"] == "changeType" {
                f["type"] = "string".into();
            }
        }
        let name_record = fields[2]["type"][1].clone();
        fields[2]["type"] = json!(["null", "string", name_record]);
        fields.push(json!({"name": "OtherAddress", "type": ["null", "com.sforce.eventbus.Address"], "default": null}));
        fields.push(json!({"name": "LastLoginDate", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null}));
        ChangeEventSchema::parse("variant", &json.to_string()).unwrap()
    }

    #[test]
    fn schema_variations_are_read_by_shape_not_by_position() {
        let schema = variant_schema();
        assert_eq!(
            schema.layout().nested.keys().copied().collect::<Vec<_>>(),
            [2, 7, 20],
            "the referenced Address type and the string-or-record name are compound"
        );
        assert_eq!(schema.layout().nested[&20].len(), 10);

        let mut h = header("SNAPSHOT", &[OLGA]);
        h.as_object_mut().unwrap().remove("diffFields");
        h["changedFields"] = json!(bitmap(schema.layout(), &["OtherAddress.City"]));
        assert_eq!(h["changedFields"], json!(["20-0x2"]));
        let body = json!({
            "Name": "Olga Brown",
            "OtherAddress": {"City": "Oslo"},
            "LastLoginDate": 1_718_710_245_000_i64,
            "CreatedDate": 5
        });
        let decoded = schema
            .decode(&encode(schema.schema(), &event(h.clone(), body)))
            .unwrap();
        assert_eq!(
            decoded.header.change_type,
            ChangeType::Other("SNAPSHOT".into())
        );
        assert!(decoded.header.diff_fields.is_empty());
        assert_eq!(decoded.header.changed_fields.names(), ["OtherAddress.City"]);
        assert_eq!(decoded.fields["Name"], s("Olga Brown"));
        assert_eq!(decoded.fields["OtherAddress.City"], s("Oslo"));
        assert_eq!(
            decoded.fields["LastLoginDate"],
            FieldValue::DateTimeMillis(1_718_710_245_000)
        );
        assert_eq!(decoded.fields["CreatedDate"], FieldValue::DateTimeMillis(5));

        let body = json!({"Name": {"FirstName": "Olga", "LastName": "Brown"}});
        let decoded = schema
            .decode(&encode(schema.schema(), &event(h, body)))
            .unwrap();
        assert_eq!(decoded.fields["Name.FirstName"], s("Olga"));
    }

    /// The fixture with one more field at the end, as after an admin adds a custom field.
    fn newer_schema() -> ChangeEventSchema {
        let mut json: Json = serde_json::from_str(USER_SCHEMA_JSON).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "Hobby__c", "type": ["null", "string"], "default": null}));
        ChangeEventSchema::parse("newer", &json.to_string()).unwrap()
    }

    #[test]
    fn decoding_with_another_schema_fails_clearly() {
        // An event written after a field was added, read with the older schema
        // (docs/salesforce.md, "Failures seen in other clients": decoding with the wrong schema).
        let older = user_schema();
        let newer = newer_schema();
        let mut body = create_body();
        body["Hobby__c"] = "sailing".into();
        let bytes = encode(newer.schema(), &event(header("CREATE", &[OLGA]), body));
        let err = older.decode(&bytes).unwrap_err();
        assert_eq!(err.schema_id, SCHEMA_ID);
        assert!(
            matches!(err.kind, DecodeErrorKind::TrailingData { remaining: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("trailing data"), "{err}");
        assert!(err.to_string().contains(SCHEMA_ID), "{err}");
        assert!(newer.decode(&bytes).is_ok());

        // The other way round: an older event read with the newer schema runs out of bytes.
        let bytes = encode(
            older.schema(),
            &event(header("CREATE", &[OLGA]), create_body()),
        );
        let err = newer.decode(&bytes).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::Truncated { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn truncated_and_corrupt_payloads_are_named_errors() {
        let schema = user_schema();
        let bytes = encode(
            schema.schema(),
            &event(header("CREATE", &[OLGA]), create_body()),
        );
        for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            let err = schema.decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err.kind, DecodeErrorKind::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
        // Cut inside the last string (LastModifiedById): apache-avro alone would read null.
        let err = schema.decode(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::Truncated { .. }),
            "{err}"
        );
        // Cut at a field boundary: an all-null update ends with one null-branch byte per body
        // field; without the last five, apache-avro alone would fill them in as null.
        let nulls = encode(
            schema.schema(),
            &event(header("UPDATE", &[OLGA]), json!({})),
        );
        assert!(schema.decode(&nulls).is_ok());
        let err = schema.decode(&nulls[..nulls.len() - 5]).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::Truncated { .. }),
            "{err}"
        );

        // An update whose body is all null ends with one zero byte (the null branch) per field;
        // make the last one point at a branch the union does not have.
        let mut bytes = encode(
            schema.schema(),
            &event(header("UPDATE", &[OLGA]), json!({})),
        );
        *bytes.last_mut().unwrap() = 0x04;
        let err = schema.decode(&bytes).unwrap_err();
        assert_eq!(
            err.kind,
            DecodeErrorKind::UnknownUnionBranch {
                index: 2,
                branches: 2
            }
        );
    }

    #[test]
    fn header_problems_name_the_field() {
        let schema = user_schema();
        let mut h = header("UPDATE", &[OLGA]);
        h["changedFields"] = json!(["0x40000", "6-0x1"]);
        let err = schema
            .decode(&encode(schema.schema(), &event(h, json!({}))))
            .unwrap_err();
        match &err.kind {
            DecodeErrorKind::Bitmap { field, source } => {
                assert_eq!(field, "changedFields");
                assert!(matches!(
                    source,
                    BitmapError::NotCompound { position: 6, .. }
                ));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("\"6-0x1\""), "{err}");

        // A schema whose header lacks a required field.
        let mut json: Json = serde_json::from_str(USER_SCHEMA_JSON).unwrap();
        json["fields"][0]["type"]["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "transactionKey");
        let lacking = ChangeEventSchema::parse("lacking", &json.to_string()).unwrap();
        let bytes = encode(
            lacking.schema(),
            &event(header("UPDATE", &[OLGA]), json!({})),
        );
        let err = lacking.decode(&bytes).unwrap_err();
        assert_eq!(
            err.kind,
            DecodeErrorKind::Header {
                field: "transactionKey".into(),
                problem: "is missing or null".into()
            }
        );
    }

    #[test]
    fn schemas_that_are_not_change_events_are_refused() {
        let parse = |json: &str| ChangeEventSchema::parse("x", json).unwrap_err();
        assert!(matches!(parse("{"), SchemaError::Parse { .. }));
        assert!(matches!(parse(r#""string""#), SchemaError::Shape { .. }));
        let err =
            parse(r#"{"type":"record","name":"R","fields":[{"name":"Title","type":"string"}]}"#);
        assert!(err.to_string().contains("\"Title\""), "{err}");
        assert!(err.to_string().contains(HEADER_FIELD), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = user_schema().decode(&bytes);
        }

        #[test]
        fn flipped_bytes_of_a_real_event_never_panic(at in 0usize..4096, to in proptest::num::u8::ANY) {
            let schema = user_schema();
            let mut bytes = encode(schema.schema(), &event(header("CREATE", &[OLGA]), create_body()));
            let at = at % bytes.len();
            bytes[at] = to;
            let _ = schema.decode(&bytes);
        }
    }
}
