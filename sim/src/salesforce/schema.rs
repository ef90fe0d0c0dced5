//! The simulated org's `UserChangeEvent` writer schemas.
//!
//! Salesforce publishes no authoritative Avro schema for `UserChangeEvent` (docs/simulators.md,
//! "The Salesforce simulator"), so the simulator builds one from what is known (the change event
//! header and body of the documented examples): the `ChangeEventHeader` record first, then one
//! field per User field in a fixed order, every body field a `["null", T]` union with a null
//! default, `Name` and `Address` as compound records, dates as `long` epoch milliseconds,
//! preferences as string arrays.
//!
//! The schema can change mid-stream, as a real org's does when an admin adds a field: each
//! [`SchemaVersion`] has its own id, a fingerprint of its JSON (22 base64url characters, the
//! shape of the ids Salesforce sends), and events keep the id of the version that wrote them.
//! A client that decodes an old event with the newest schema fails here as docs/salesforce.md
//! describes ("Failures seen in other clients": decoding with the wrong schema).

use apache_avro::Schema;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::outreach::base64url;

/// The User fields of the body, in schema order. A compound field lists its sub-fields.
pub const USER_FIELDS: &[(&str, FieldKind)] = &[
    ("Username", FieldKind::String),
    (
        "Name",
        FieldKind::Compound("PersonName", &["Salutation", "FirstName", "LastName"]),
    ),
    ("CompanyName", FieldKind::String),
    ("Division", FieldKind::String),
    ("Department", FieldKind::String),
    ("Title", FieldKind::String),
    (
        "Address",
        FieldKind::Compound(
            "Address",
            &["Street", "City", "State", "PostalCode", "Country"],
        ),
    ),
    ("Email", FieldKind::String),
    ("IsActive", FieldKind::Boolean),
    ("ProfileId", FieldKind::String),
    ("UserRoleId", FieldKind::String),
    ("TimeZoneSidKey", FieldKind::String),
    ("LanguageLocaleKey", FieldKind::String),
    ("EmailPreferences", FieldKind::StringArray),
    ("UserPreferences", FieldKind::StringArray),
    ("CreatedDate", FieldKind::DateTime),
    ("CreatedById", FieldKind::String),
    ("LastModifiedDate", FieldKind::DateTime),
    ("LastModifiedById", FieldKind::String),
];

/// The Avro shape of one body field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Boolean,
    /// Epoch milliseconds in a `long`.
    DateTime,
    StringArray,
    /// A nested record: its Avro name and its sub-fields (all strings).
    Compound(&'static str, &'static [&'static str]),
}

/// The change types the header's enum declares.
pub const CHANGE_TYPES: &[&str] = &[
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
];

/// One version of the writer schema.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    pub id: String,
    pub json: String,
    pub schema: Schema,
    /// Every body field in schema order: the standard ones, then the custom ones.
    pub fields: Vec<(String, FieldKind)>,
}

impl SchemaVersion {
    /// The schema of the standard fields plus `custom` string fields (`Badge__c`, …) at the
    /// end, as a field added in Setup appears.
    pub fn build(custom: &[String]) -> SchemaVersion {
        let mut fields: Vec<(String, FieldKind)> = USER_FIELDS
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), *kind))
            .collect();
        fields.extend(custom.iter().map(|name| (name.clone(), FieldKind::String)));
        let body: Vec<Value> = fields.iter().map(|(n, k)| field_json(n, *k)).collect();
        let mut all = vec![json!({"name": "ChangeEventHeader", "type": header_json()})];
        all.extend(body);
        let mut document = json!({
            "type": "record",
            "name": "UserChangeEvent",
            "namespace": "com.sforce.eventbus",
            "fields": all,
        });
        let fingerprint = Sha256::digest(document.to_string().as_bytes());
        let id = base64url::encode(&fingerprint[..16]);
        document["uuid"] = Value::String(id.clone());
        let json = document.to_string();
        let schema = Schema::parse_str(&json).expect("the simulator's schema is valid Avro");
        SchemaVersion {
            id,
            json,
            schema,
            fields,
        }
    }

    /// The top-level position of a body field (the header is position 0).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|(field, _)| field == name)
            .map(|i| i + 1)
    }
}

fn header_json() -> Value {
    let bitmap = json!({"type": "array", "items": "string"});
    json!({
        "type": "record",
        "name": "ChangeEventHeader",
        "namespace": "com.sforce.eventbus",
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": {"type": "array", "items": "string"}},
            {"name": "changeType", "type": {
                "type": "enum", "name": "ChangeType", "namespace": "com.sforce.eventbus",
                "symbols": CHANGE_TYPES}},
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": bitmap},
            {"name": "diffFields", "type": bitmap},
            {"name": "changedFields", "type": bitmap},
        ]
    })
}

fn field_json(name: &str, kind: FieldKind) -> Value {
    let inner = match kind {
        FieldKind::String => json!("string"),
        FieldKind::Boolean => json!("boolean"),
        FieldKind::DateTime => json!("long"),
        FieldKind::StringArray => json!({"type": "array", "items": "string"}),
        FieldKind::Compound(record, subfields) => json!({
            "type": "record",
            "name": record,
            "namespace": "com.sforce.eventbus",
            "fields": subfields
                .iter()
                .map(|sub| json!({"name": sub, "type": ["null", "string"], "default": null}))
                .collect::<Vec<_>>(),
        }),
    };
    json!({"name": name, "type": ["null", inner], "default": null})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_comes_first_and_every_body_field_is_a_nullable_union() {
        let version = SchemaVersion::build(&[]);
        let Schema::Record(record) = &version.schema else {
            panic!("not a record");
        };
        assert_eq!(record.fields[0].name, "ChangeEventHeader");
        assert_eq!(record.fields.len(), USER_FIELDS.len() + 1);
        for field in &record.fields[1..] {
            let Schema::Union(union) = &field.schema else {
                panic!("{} is not a union", field.name);
            };
            assert_eq!(union.variants()[0], Schema::Null, "{}", field.name);
        }
        assert_eq!(version.position("Name"), Some(2));
        assert_eq!(
            version.position("LastModifiedById"),
            Some(USER_FIELDS.len())
        );
    }

    #[test]
    fn ids_are_fingerprints_that_change_with_the_fields() {
        let first = SchemaVersion::build(&[]);
        let again = SchemaVersion::build(&[]);
        let grown = SchemaVersion::build(&["Badge__c".to_owned()]);
        assert_eq!(first.id, again.id);
        assert_eq!(first.id.len(), 22);
        assert_ne!(first.id, grown.id);
        assert_eq!(grown.position("Badge__c"), Some(USER_FIELDS.len() + 1));
        assert!(
            grown.json.contains(&grown.id),
            "the uuid attribute names the id"
        );
    }
}
