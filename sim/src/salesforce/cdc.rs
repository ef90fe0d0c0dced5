//! Encoding a [`ChangeRecord`] the way each transport delivers it.
//!
//! - **Pub/Sub** ([`to_avro`]): one raw Avro datum of the writer schema. Every body field is
//!   present; fields not sent are null (docs/salesforce.md, "Change events: body on Pub/Sub"). The
//!   header's `changedFields`, `nulledFields` and `diffFields` are bitmaps over the schema's
//!   positions (docs/salesforce.md, "Change events: header and bitmaps"): element 0 is a `0x…`
//!   bitmap of changed top-level fields, and each compound field with changed sub-fields adds
//!   a `"<pos>-0x…"` entry — the top-level bit of the compound field itself is not set, as in
//!   the vendor's example `["0x400000", "4-0x06"]`. When only sub-fields changed, element 0 is
//!   left out, the case the documentation warns about for `nulledFields`.
//! - **CometD** ([`to_cometd_payload`]): JSON with the header's field lists as names
//!   (`Name.FirstName` for a sub-field), only the fields sent, compound fields as nested
//!   objects, dates as ISO-8601 strings (docs/salesforce.md, "CometD: messages, replay, timeouts,
//!   errors").

use std::collections::BTreeMap;

use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};

use super::directory::ChangeRecord;
use super::schema::{CHANGE_TYPES, FieldKind, SchemaVersion};

/// Encodes `change` as a raw Avro datum of `version`.
pub fn to_avro(change: &ChangeRecord, version: &SchemaVersion) -> Vec<u8> {
    let mut fields = vec![("ChangeEventHeader".to_owned(), header(change, version))];
    for (name, kind) in &version.fields {
        fields.push((name.clone(), body_value(change, name, *kind)));
    }
    GenericDatumWriter::builder(&version.schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(Avro::Record(fields)))
        .expect("a change record always fits the simulator's schema")
}

fn header(change: &ChangeRecord, version: &SchemaVersion) -> Avro {
    let strings = |items: &[String]| Avro::Array(items.iter().cloned().map(Avro::String).collect());
    let index = CHANGE_TYPES
        .iter()
        .position(|t| *t == change.change_type)
        .expect("a known change type");
    Avro::Record(vec![
        ("entityName".into(), Avro::String("User".into())),
        ("recordIds".into(), strings(&change.record_ids)),
        (
            "changeType".into(),
            Avro::Enum(index as u32, change.change_type.to_owned()),
        ),
        (
            "changeOrigin".into(),
            Avro::String(change.change_origin.clone()),
        ),
        (
            "transactionKey".into(),
            Avro::String(change.transaction_key.clone()),
        ),
        ("sequenceNumber".into(), Avro::Int(change.sequence_number)),
        (
            "commitTimestamp".into(),
            Avro::Long(change.commit_timestamp),
        ),
        ("commitNumber".into(), Avro::Long(change.commit_number)),
        (
            "commitUser".into(),
            Avro::String(change.commit_user.clone()),
        ),
        (
            "nulledFields".into(),
            strings(&bitmaps(&change.nulled, version)),
        ),
        ("diffFields".into(), Avro::Array(Vec::new())),
        (
            "changedFields".into(),
            strings(&bitmaps(&change.changed, version)),
        ),
    ])
}

/// The bitmap entries naming `fields` (flat names) in `version`'s positions.
pub fn bitmaps(fields: &[String], version: &SchemaVersion) -> Vec<String> {
    let mut top: Vec<usize> = Vec::new();
    let mut nested: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for field in fields {
        match locate(field, version) {
            Some((position, None)) => top.push(position),
            Some((position, Some(sub))) => nested.entry(position).or_default().push(sub),
            None => {}
        }
    }
    let mut entries = Vec::new();
    if !top.is_empty() {
        entries.push(hex_bitmap(&top));
    }
    for (position, subs) in nested {
        entries.push(format!("{position}-{}", hex_bitmap(&subs)));
    }
    entries
}

/// A flat field's top-level position and, for a sub-field, its index in the compound record.
fn locate(field: &str, version: &SchemaVersion) -> Option<(usize, Option<usize>)> {
    for (i, (name, kind)) in version.fields.iter().enumerate() {
        match kind {
            FieldKind::Compound(_, subs) => {
                if let Some(sub) = subs.iter().position(|s| *s == field) {
                    return Some((i + 1, Some(sub)));
                }
            }
            _ if name == field => return Some((i + 1, None)),
            _ => {}
        }
    }
    None
}

/// `0x…` with bit i set for each i, upper-case digits, no leading zeros past the first.
fn hex_bitmap(bits: &[usize]) -> String {
    let width = bits.iter().max().map_or(1, |max| max / 4 + 1);
    let mut nibbles = vec![0u8; width];
    for bit in bits {
        nibbles[bit / 4] |= 1 << (bit % 4);
    }
    let digits: String = nibbles
        .iter()
        .rev()
        .map(|n| {
            char::from_digit(u32::from(*n), 16)
                .unwrap()
                .to_ascii_uppercase()
        })
        .collect();
    format!("0x{digits}")
}

fn body_value(change: &ChangeRecord, name: &str, kind: FieldKind) -> Avro {
    let some = |value: Avro| Avro::Union(1, Box::new(value));
    let null = Avro::Union(0, Box::new(Avro::Null));
    match kind {
        FieldKind::Compound(_, subs) => {
            let sent: Vec<(String, Avro)> = subs
                .iter()
                .map(|sub| {
                    let value = match change.body.get(*sub).and_then(Value::as_str) {
                        Some(text) => some(Avro::String(text.to_owned())),
                        None => null.clone(),
                    };
                    ((*sub).to_owned(), value)
                })
                .collect();
            let touched = subs.iter().any(|sub| {
                change.body.contains_key(*sub) || change.nulled.iter().any(|n| n == sub)
            });
            if touched {
                some(Avro::Record(sent))
            } else {
                null
            }
        }
        _ => match change.body.get(name) {
            None | Some(Value::Null) => null,
            Some(value) => some(scalar(value, kind)),
        },
    }
}

fn scalar(value: &Value, kind: FieldKind) -> Avro {
    match kind {
        FieldKind::String => Avro::String(
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned),
        ),
        FieldKind::Boolean => Avro::Boolean(value.as_bool().unwrap_or(false)),
        FieldKind::DateTime => Avro::Long(value.as_i64().unwrap_or(0)),
        FieldKind::StringArray => Avro::Array(
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|s| Avro::String(s.to_owned()))
                .collect(),
        ),
        FieldKind::Compound(..) => unreachable!("handled by body_value"),
    }
}

/// The CometD `data.payload` of `change`, for the fields `version` carries.
pub fn to_cometd_payload(change: &ChangeRecord, version: &SchemaVersion) -> Value {
    let names = |flat: &[String]| -> Vec<String> {
        flat.iter()
            .filter_map(|field| dotted(field, version))
            .collect()
    };
    let mut header = json!({
        "entityName": "User",
        "recordIds": change.record_ids,
        "changeType": change.change_type,
        "changeOrigin": change.change_origin,
        "transactionKey": change.transaction_key,
        "sequenceNumber": change.sequence_number,
        "commitTimestamp": change.commit_timestamp,
        "commitNumber": change.commit_number,
        "commitUser": change.commit_user,
        "changedFields": names(&change.changed),
    });
    if !change.nulled.is_empty() {
        header["nulledFields"] = json!(names(&change.nulled));
    }
    let mut payload = Map::new();
    payload.insert("ChangeEventHeader".into(), header);
    for (name, kind) in &version.fields {
        match kind {
            FieldKind::Compound(_, subs) => {
                let mut nested = Map::new();
                for sub in *subs {
                    if let Some(value) = change.body.get(*sub) {
                        nested.insert((*sub).to_owned(), value.clone());
                    } else if change.nulled.iter().any(|n| n == sub) {
                        nested.insert((*sub).to_owned(), Value::Null);
                    }
                }
                if !nested.is_empty() {
                    payload.insert(name.clone(), Value::Object(nested));
                }
            }
            FieldKind::DateTime => {
                if let Some(ms) = change.body.get(name).and_then(Value::as_i64) {
                    payload.insert(name.clone(), iso(ms).into());
                }
            }
            _ => {
                if let Some(value) = change.body.get(name) {
                    payload.insert(name.clone(), value.clone());
                } else if change.nulled.iter().any(|n| n == name) {
                    payload.insert(name.clone(), Value::Null);
                }
            }
        }
    }
    Value::Object(payload)
}

/// A flat field's CometD name: `Name.FirstName` for a sub-field; `None` if the schema lacks it.
fn dotted(field: &str, version: &SchemaVersion) -> Option<String> {
    let (position, sub) = locate(field, version)?;
    let (parent, _) = &version.fields[position - 1];
    Some(match sub {
        Some(_) => format!("{parent}.{field}"),
        None => parent.clone(),
    })
}

/// Epoch milliseconds as `2024-06-18T11:30:45.000Z`.
pub fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use apache_avro::reader::datum::GenericDatumReader;

    use super::*;

    fn update(changed: &[&str], nulled: &[&str], body: Value) -> ChangeRecord {
        ChangeRecord {
            change_type: "UPDATE",
            record_ids: vec!["005SIM000000002AAA".into()],
            change_origin: String::new(),
            transaction_key: "k".into(),
            sequence_number: 1,
            commit_timestamp: 1_718_710_245_000,
            commit_number: 7,
            commit_user: "005SIM000000001AAA".into(),
            changed: changed.iter().map(|s| (*s).to_owned()).collect(),
            nulled: nulled.iter().map(|s| (*s).to_owned()).collect(),
            body: serde_json::from_value(body).unwrap(),
        }
    }

    #[test]
    fn bitmaps_follow_the_schema_positions() {
        let version = SchemaVersion::build(&[]);
        // Title is position 6, IsActive 9, LastModifiedDate 18; FirstName is Name(2)'s sub 1.
        let entries = bitmaps(
            &[
                "IsActive".into(),
                "Title".into(),
                "LastModifiedDate".into(),
                "FirstName".into(),
            ],
            &version,
        );
        assert_eq!(entries, ["0x40240", "2-0x2"]);
        assert_eq!(bitmaps(&["City".into()], &version), ["7-0x2"]);
        assert_eq!(hex_bitmap(&[0]), "0x1");
        assert_eq!(hex_bitmap(&[4, 7]), "0x90");
    }

    #[test]
    fn an_update_datum_has_every_field_with_unsent_ones_null() {
        let version = SchemaVersion::build(&[]);
        let change = update(
            &["IsActive", "Title", "LastModifiedDate"],
            &["Title"],
            json!({"IsActive": false, "LastModifiedDate": 1_718_710_245_000_i64}),
        );
        let bytes = to_avro(&change, &version);
        let Avro::Record(fields) = GenericDatumReader::builder(&version.schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap()
        else {
            panic!("not a record")
        };
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(
            get("IsActive"),
            Avro::Union(1, Box::new(Avro::Boolean(false)))
        );
        assert_eq!(get("Title"), Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(get("Name"), Avro::Union(0, Box::new(Avro::Null)));
        let Avro::Record(header) = get("ChangeEventHeader") else {
            panic!()
        };
        let nulled = &header.iter().find(|(n, _)| n == "nulledFields").unwrap().1;
        assert_eq!(nulled, &Avro::Array(vec![Avro::String("0x40".into())]));
    }

    #[test]
    fn cometd_sends_names_and_only_the_sent_fields() {
        let version = SchemaVersion::build(&[]);
        let change = update(
            &["FirstName", "Title", "LastModifiedDate"],
            &["Title"],
            json!({"FirstName": "Olga", "LastModifiedDate": 1_718_710_245_000_i64}),
        );
        let payload = to_cometd_payload(&change, &version);
        assert_eq!(
            payload["ChangeEventHeader"]["changedFields"],
            json!(["Name.FirstName", "Title", "LastModifiedDate"])
        );
        assert_eq!(
            payload["ChangeEventHeader"]["nulledFields"],
            json!(["Title"])
        );
        assert_eq!(payload["Name"], json!({"FirstName": "Olga"}));
        assert_eq!(payload["Title"], Value::Null);
        assert_eq!(payload["LastModifiedDate"], "2024-06-18T11:30:45.000Z");
        assert!(payload.get("Email").is_none());
    }
}
