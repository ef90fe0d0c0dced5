//! The simulated org's User records and the change events their changes produce.
//!
//! A record is a flat map from field name to JSON value, the way SOQL names User fields
//! (`FirstName`, `City`, not `Name.FirstName`); dates are epoch milliseconds. Every write goes
//! through [`Directory`], which applies it and returns the [`ChangeRecord`] Salesforce would
//! publish for it — one per transaction and record, or one *merged* record naming several
//! users when one transaction made the same change to each (docs/simulators.md, "The Salesforce
//! simulator"). The event bus encodes a `ChangeRecord` for Pub/Sub (Avro, bitmaps) or CometD
//! (JSON, names), so both transports carry exactly the same facts.
//!
//! Rules kept from the real service (docs/salesforce.md, "The User object"): users are never
//! deleted, only deactivated
//! (an UPDATE of `IsActive`); an UPDATE reports the changed fields plus `LastModifiedDate`,
//! and a field set to null is in `nulledFields`; a write that changes nothing publishes
//! nothing.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::Value;

use super::oauth::with_checksum;

/// Fields a client may not write: the system sets them.
pub const SYSTEM_FIELDS: &[&str] = &[
    "Id",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
];

/// One User record.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// 18 characters, `005…`.
    pub id: String,
    /// Flat field name → value, `Id` included; absent means null.
    pub fields: BTreeMap<String, Value>,
}

impl UserRecord {
    /// A field's value (`Id` included); null when unset.
    pub fn get(&self, field: &str) -> &Value {
        self.fields.get(field).unwrap_or(&Value::Null)
    }
}

/// One change event before encoding: what both transports publish.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub change_type: &'static str,
    pub record_ids: Vec<String>,
    /// Empty for a change made in the UI.
    pub change_origin: String,
    pub transaction_key: String,
    pub sequence_number: i32,
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub commit_user: String,
    /// Flat names of the fields changed (UPDATE only), `LastModifiedDate` included.
    pub changed: Vec<String>,
    /// Flat names of the changed fields set to null.
    pub nulled: Vec<String>,
    /// The values sent: every non-null field for CREATE, the changed non-null ones for UPDATE,
    /// nothing for gap and overflow events.
    pub body: BTreeMap<String, Value>,
}

/// What one write changes for one user: (field, new value) pairs.
type Delta = Vec<(String, Value)>;

/// Who writes, and through which API: becomes `commitUser` and `changeOrigin`.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    pub user_id: String,
    /// For example `com/salesforce/api/rest/61.0;client=HRSync`; empty for the UI.
    pub change_origin: String,
}

/// The org's users and the counters that number their changes.
#[derive(Debug)]
pub struct Directory {
    org_prefix: String,
    users: BTreeMap<String, UserRecord>,
    next_user: u64,
    commit_number: i64,
    last_commit_ms: i64,
    /// The id of the user the simulator writes as when a test names none (an admin).
    pub admin_id: String,
}

impl Directory {
    pub fn new(org_id15: &str) -> Directory {
        let mut directory = Directory {
            org_prefix: org_id15[3..6].to_owned(),
            users: BTreeMap::new(),
            next_user: 1,
            commit_number: 1_100_662_289_041,
            last_commit_ms: 0,
            admin_id: String::new(),
        };
        directory.admin_id = directory.allocate_id();
        directory
    }

    fn allocate_id(&mut self) -> String {
        let id15 = format!("005{}{:09}", self.org_prefix, self.next_user);
        self.next_user += 1;
        with_checksum(&id15)
    }

    pub fn get(&self, id: &str) -> Option<&UserRecord> {
        self.users.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.values()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The ids of users whose `Email` is `email` (case-insensitive).
    pub fn ids_by_email(&self, email: &str) -> Vec<String> {
        self.users
            .values()
            .filter(|u| {
                u.get("Email")
                    .as_str()
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
            })
            .map(|u| u.id.clone())
            .collect()
    }

    /// Next commit: a commit number and a timestamp (milliseconds) that never go backwards.
    /// Fields the commit stamps on records (`CreatedDate`, `LastModifiedDate`) take it to the
    /// whole second ([`stored_datetime`]).
    fn commit(&mut self, now_ms: i64) -> (i64, i64) {
        self.commit_number += 1 + rand::rng().random_range(0..1000);
        self.last_commit_ms = self.last_commit_ms.max(now_ms);
        (self.commit_number, self.last_commit_ms)
    }

    /// Creates a user with `fields` (system fields are ignored; `IsActive` defaults to true).
    /// Fails when `Username` is missing or taken, as Salesforce's DUPLICATE_USERNAME does.
    pub fn create(
        &mut self,
        fields: BTreeMap<String, Value>,
        writer: &Writer,
        now_ms: i64,
    ) -> Result<(String, ChangeRecord), String> {
        let username = fields
            .get("Username")
            .and_then(Value::as_str)
            .ok_or("Username is required")?
            .to_owned();
        if self
            .users
            .values()
            .any(|u| u.get("Username").as_str() == Some(&username))
        {
            return Err(format!("DUPLICATE_USERNAME: {username} is taken"));
        }
        let id = self.allocate_id();
        let (commit_number, ts) = self.commit(now_ms);
        let commit_user = self.commit_user(writer);
        let mut record: BTreeMap<String, Value> = fields
            .into_iter()
            .filter(|(k, v)| !SYSTEM_FIELDS.contains(&k.as_str()) && !v.is_null())
            .collect();
        record.entry("IsActive".into()).or_insert(Value::Bool(true));
        record.insert("Id".into(), id.clone().into());
        record.insert("CreatedDate".into(), stored_datetime(ts).into());
        record.insert("CreatedById".into(), commit_user.clone().into());
        record.insert("LastModifiedDate".into(), stored_datetime(ts).into());
        record.insert("LastModifiedById".into(), commit_user.clone().into());
        let change = ChangeRecord {
            change_type: "CREATE",
            record_ids: vec![id.clone()],
            change_origin: writer.change_origin.clone(),
            transaction_key: transaction_key(),
            sequence_number: 1,
            commit_timestamp: ts,
            commit_number,
            commit_user,
            changed: Vec::new(),
            nulled: Vec::new(),
            body: record
                .iter()
                .filter(|(k, _)| *k != "Id")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        self.users.insert(
            id.clone(),
            UserRecord {
                id: id.clone(),
                fields: record,
            },
        );
        Ok((id, change))
    }

    /// Applies `changes` (null clears a field) to each of `ids` in one transaction. Users whose
    /// fields end up changed the same way share one merged event; the others get one event
    /// each, numbered in the transaction. Fails, changing nothing, when an id is unknown or a
    /// system field is written.
    pub fn update(
        &mut self,
        ids: &[String],
        changes: &BTreeMap<String, Value>,
        writer: &Writer,
        now_ms: i64,
    ) -> Result<Vec<ChangeRecord>, String> {
        if let Some(field) = changes.keys().find(|k| SYSTEM_FIELDS.contains(&k.as_str())) {
            return Err(format!("{field} is not writeable"));
        }
        if let Some(id) = ids.iter().find(|id| !self.users.contains_key(*id)) {
            return Err(format!("no user {id}"));
        }
        // What changes for each user: (field, new value) pairs, sorted.
        let mut deltas: Vec<(String, Vec<(String, Value)>)> = Vec::new();
        for id in ids {
            let user = &self.users[id];
            let delta: Vec<(String, Value)> = changes
                .iter()
                .filter(|(field, value)| user.get(field) != *value)
                .map(|(f, v)| (f.clone(), v.clone()))
                .collect();
            if !delta.is_empty() && !deltas.iter().any(|(seen, _)| seen == id) {
                deltas.push((id.clone(), delta));
            }
        }
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let (commit_number, ts) = self.commit(now_ms);
        let commit_user = self.commit_user(writer);
        let key = transaction_key();
        // Group users with identical deltas, in first-seen order.
        let mut groups: Vec<(Vec<String>, Delta)> = Vec::new();
        for (id, delta) in deltas {
            match groups.iter_mut().find(|(_, d)| *d == delta) {
                Some((group, _)) => group.push(id),
                None => groups.push((vec![id], delta)),
            }
        }
        let mut events = Vec::with_capacity(groups.len());
        for (sequence, (group, delta)) in groups.into_iter().enumerate() {
            let mut changed: Vec<String> = delta.iter().map(|(f, _)| f.clone()).collect();
            let nulled: Vec<String> = delta
                .iter()
                .filter(|(_, v)| v.is_null())
                .map(|(f, _)| f.clone())
                .collect();
            let mut body: BTreeMap<String, Value> = delta
                .iter()
                .filter(|(_, v)| !v.is_null())
                .cloned()
                .collect();
            changed.push("LastModifiedDate".into());
            body.insert("LastModifiedDate".into(), stored_datetime(ts).into());
            for id in &group {
                let user = self.users.get_mut(id).expect("checked above");
                for (field, value) in &delta {
                    if value.is_null() {
                        user.fields.remove(field);
                    } else {
                        user.fields.insert(field.clone(), value.clone());
                    }
                }
                user.fields
                    .insert("LastModifiedDate".into(), stored_datetime(ts).into());
                let previous = user
                    .fields
                    .insert("LastModifiedById".into(), commit_user.clone().into());
                if previous.as_ref().and_then(Value::as_str) != Some(commit_user.as_str())
                    && !changed.iter().any(|f| f == "LastModifiedById")
                {
                    changed.push("LastModifiedById".into());
                    body.insert("LastModifiedById".into(), commit_user.clone().into());
                }
            }
            events.push(ChangeRecord {
                change_type: "UPDATE",
                record_ids: group,
                change_origin: writer.change_origin.clone(),
                transaction_key: key.clone(),
                sequence_number: i32::try_from(sequence + 1).unwrap_or(i32::MAX),
                commit_timestamp: ts,
                commit_number,
                commit_user: commit_user.clone(),
                changed,
                nulled,
                body,
            });
        }
        Ok(events)
    }

    /// A `GAP_*` event for `ids`: the change happened (applied by the caller, or a change made
    /// outside the app server) but only its header is published.
    pub fn gap(
        &mut self,
        change_type: &'static str,
        ids: Vec<String>,
        now_ms: i64,
    ) -> ChangeRecord {
        let (commit_number, ts) = self.commit(now_ms);
        ChangeRecord {
            change_type,
            record_ids: ids,
            change_origin: String::new(),
            transaction_key: transaction_key(),
            sequence_number: 1,
            commit_timestamp: ts,
            commit_number,
            commit_user: self.admin_id.clone(),
            changed: Vec::new(),
            nulled: Vec::new(),
            body: BTreeMap::new(),
        }
    }

    /// Applies `changes` to each of `ids` without publishing them (a direct database change, or
    /// the part of a huge transaction past the overflow threshold).
    pub fn update_silently(
        &mut self,
        ids: &[String],
        changes: &BTreeMap<String, Value>,
        now_ms: i64,
    ) {
        let (_, ts) = self.commit(now_ms);
        for id in ids {
            if let Some(user) = self.users.get_mut(id) {
                for (field, value) in changes {
                    if value.is_null() {
                        user.fields.remove(field);
                    } else {
                        user.fields.insert(field.clone(), value.clone());
                    }
                }
                user.fields
                    .insert("LastModifiedDate".into(), stored_datetime(ts).into());
            }
        }
    }

    fn commit_user(&self, writer: &Writer) -> String {
        if writer.user_id.is_empty() {
            self.admin_id.clone()
        } else {
            writer.user_id.clone()
        }
    }
}

/// A date-time as a record stores it: Salesforce keeps `CreatedDate` and `LastModifiedDate` to
/// the whole second (REST shows `…46.000+0000`), while a change event's commit timestamp
/// carries milliseconds. Two changes of one user within one second therefore share a
/// `LastModifiedDate` and differ only in their commits.
pub fn stored_datetime(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000
}

/// The id Salesforce puts on `GAP_OVERFLOW` events.
pub const OVERFLOW_RECORD_ID: &str = "000000000000000AAA";

/// A UUID-shaped transaction key.
fn transaction_key() -> String {
    uuid_like()
}

/// A random UUID-shaped string (transaction keys, rpc ids).
pub(crate) fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    fn directory_with(n: usize) -> (Directory, Vec<String>) {
        let mut directory = Directory::new("00DSIM000000001");
        let ids = (0..n)
            .map(|i| {
                let f = fields(
                    json!({"Username": format!("u{i}@x.test"), "Email": "same@x.test",
                    "FirstName": "Ann", "Title": "AE"}),
                );
                directory.create(f, &Writer::default(), 1000).unwrap().0
            })
            .collect();
        (directory, ids)
    }

    #[test]
    fn a_create_sends_every_non_null_field_and_the_system_fields() {
        let (mut directory, _) = directory_with(0);
        let (id, change) = directory
            .create(
                fields(json!({"Username": "a@x.test", "Title": null, "FirstName": "Ann"})),
                &Writer::default(),
                5000,
            )
            .unwrap();
        assert!(id.starts_with("005") && id.len() == 18);
        assert_eq!(change.change_type, "CREATE");
        assert_eq!(change.body["FirstName"], "Ann");
        assert_eq!(change.body["IsActive"], true);
        assert_eq!(change.body["CreatedDate"], 5000);
        assert!(!change.body.contains_key("Title"));
        assert!(change.changed.is_empty());
        assert_eq!(change.commit_user, directory.admin_id);
    }

    #[test]
    fn usernames_are_unique() {
        let (mut directory, _) = directory_with(1);
        let err = directory
            .create(
                fields(json!({"Username": "u0@x.test"})),
                &Writer::default(),
                1,
            )
            .unwrap_err();
        assert!(err.contains("DUPLICATE_USERNAME"), "{err}");
    }

    #[test]
    fn an_update_reports_changed_and_nulled_fields_and_last_modified_date() {
        let (mut directory, ids) = directory_with(1);
        let events = directory
            .update(
                &ids,
                &fields(json!({"IsActive": false, "Title": null, "FirstName": "Ann"})),
                &Writer::default(),
                9000,
            )
            .unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.changed, ["IsActive", "Title", "LastModifiedDate"]);
        assert_eq!(event.nulled, ["Title"]);
        assert_eq!(event.body["IsActive"], false);
        assert!(!event.body.contains_key("FirstName"), "unchanged");
        assert_eq!(directory.get(&ids[0]).unwrap().get("Title"), &Value::Null);
    }

    #[test]
    fn the_same_change_to_several_users_is_one_merged_event() {
        let (mut directory, ids) = directory_with(3);
        directory
            .update(
                &ids[2..],
                &fields(json!({"Title": "Boss"})),
                &Writer::default(),
                2,
            )
            .unwrap();
        let events = directory
            .update(
                &ids,
                &fields(json!({"Title": "Boss"})),
                &Writer::default(),
                3,
            )
            .unwrap();
        assert_eq!(events.len(), 1, "the third user did not change");
        assert_eq!(events[0].record_ids, ids[..2]);
        let events = directory
            .update(&ids, &fields(json!({"Title": "AE"})), &Writer::default(), 4)
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].record_ids, ids);
    }

    #[test]
    fn different_changes_in_one_transaction_are_numbered() {
        let (mut directory, ids) = directory_with(2);
        directory
            .update(
                &ids[1..],
                &fields(json!({"Title": "Boss"})),
                &Writer::default(),
                2,
            )
            .unwrap();
        let events = directory
            .update(
                &ids,
                &fields(json!({"Title": "CEO"})),
                &Writer::default(),
                3,
            )
            .unwrap();
        assert_eq!(events.len(), 1, "same delta: both change Title to CEO");
        directory
            .update(
                &ids[1..],
                &fields(json!({"Department": "Sales"})),
                &Writer::default(),
                4,
            )
            .unwrap();
        let events = directory
            .update(
                &ids,
                &fields(json!({"Title": "CTO", "Department": "Sales"})),
                &Writer {
                    user_id: ids[0].clone(),
                    change_origin: String::new(),
                },
                5,
            )
            .unwrap();
        // The first user gains a department; the second already had it: two deltas.
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].record_ids, ids[..1]);
        assert_eq!(events[1].record_ids, ids[1..]);
        assert_eq!(
            (events[0].sequence_number, events[1].sequence_number),
            (1, 2)
        );
        assert_eq!(events[0].transaction_key, events[1].transaction_key);
        assert_eq!(events[0].commit_number, events[1].commit_number);
        assert!(events[0].changed.contains(&"Department".to_owned()));
        assert!(events[0].changed.contains(&"LastModifiedById".to_owned()));
    }

    #[test]
    fn nothing_changed_publishes_nothing_and_unknown_ids_change_nothing() {
        let (mut directory, ids) = directory_with(1);
        assert!(
            directory
                .update(&ids, &fields(json!({"Title": "AE"})), &Writer::default(), 2)
                .unwrap()
                .is_empty()
        );
        let bad = vec![ids[0].clone(), "005000000000000AAA".to_owned()];
        assert!(
            directory
                .update(&bad, &fields(json!({"Title": "X"})), &Writer::default(), 3)
                .is_err()
        );
        assert_eq!(directory.get(&ids[0]).unwrap().get("Title"), "AE");
        assert!(
            directory
                .update(
                    &ids,
                    &fields(json!({"CreatedDate": 1})),
                    &Writer::default(),
                    3
                )
                .is_err()
        );
    }

    #[test]
    fn commits_never_go_backwards() {
        let (mut directory, ids) = directory_with(1);
        let a = directory
            .update(
                &ids,
                &fields(json!({"Title": "A"})),
                &Writer::default(),
                100,
            )
            .unwrap();
        let b = directory
            .update(&ids, &fields(json!({"Title": "B"})), &Writer::default(), 50)
            .unwrap();
        assert!(b[0].commit_number > a[0].commit_number);
        assert!(b[0].commit_timestamp >= a[0].commit_timestamp);
    }

    #[test]
    fn records_keep_whole_seconds_while_commits_keep_milliseconds() {
        let (mut directory, ids) = directory_with(1);
        let first = directory
            .update(
                &ids,
                &fields(json!({"LastName": "Brown"})),
                &Writer::default(),
                1_718_710_246_500,
            )
            .unwrap();
        let second = directory
            .update(
                &ids,
                &fields(json!({"LastName": "Green"})),
                &Writer::default(),
                1_718_710_246_900,
            )
            .unwrap();
        assert_eq!(first[0].commit_timestamp, 1_718_710_246_500);
        assert_eq!(second[0].commit_timestamp, 1_718_710_246_900);
        assert!(second[0].commit_number > first[0].commit_number);
        let record = directory.get(&ids[0]).unwrap();
        assert_eq!(
            record.get("LastModifiedDate"),
            &json!(1_718_710_246_000_i64)
        );
        assert_eq!(
            second[0].body["LastModifiedDate"],
            json!(1_718_710_246_000_i64)
        );
        assert!(second[0].changed.iter().any(|f| f == "LastModifiedDate"));
        let created = directory
            .create(
                fields(json!({"Username": "new@x.test"})),
                &Writer::default(),
                1_718_710_247_123,
            )
            .unwrap();
        assert_eq!(created.1.commit_timestamp, 1_718_710_247_123);
        assert_eq!(created.1.body["CreatedDate"], json!(1_718_710_247_000_i64));
    }
}
