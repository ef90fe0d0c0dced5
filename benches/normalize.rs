//! Change events per second through the subscriber's pure path: decode, normalize, serialize.
//!
//! # The stream
//!
//! 1 000 `UserChangeEvent` payloads, encoded once before any timing by the Salesforce simulator
//! exactly as its Pub/Sub endpoint sends them (`cdc::to_avro`: a raw Avro datum of the simulator's
//! writer schema, header bitmaps over the schema's positions). The changes come from the
//! simulator's `Directory`, so the records, bitmaps, `nulledFields` and merged events follow its
//! rules (docs/salesforce.md, "Change events: header and bitmaps" and
//! "Change events: body on Pub/Sub"):
//!
//! - 200 CREATEs, every User field of the schema set: a full body, `Name` and `Address` as
//!   compound records, both preference arrays.
//! - 800 UPDATEs in rounds of 8, each the changed fields plus `LastModifiedDate` (and
//!   `LastModifiedById`, as the writer is an integration user, not the admin who created them):
//!   1. a title change (1 field);
//!   2. a first-name change: the nested `Name.FirstName`, bitmap entry `2-0x2`;
//!   3. title and department (2 fields);
//!   4. title, department and city (3 fields, one of them the nested `Address.City`);
//!   5. a deactivation (`IsActive` false);
//!   6. one transaction giving 3 users the same title: one merged event with 3 record ids,
//!      which normalizes to 3 `UserChange`s;
//!   7. a title cleared (`nulledFields`, which the merge must read to tell "set to null" from
//!      "not sent");
//!   8. a department change (a field the normalized state does not carry).
//!
//! The CREATEs come first, so every UPDATE finds its users' last-known state, as it does in
//! the subscriber once it has seen a user: none of the 1 000 asks for a REST re-read. The
//! simulator draws transaction keys and commit-number steps at random, so payloads differ by a
//! few bytes from one run to the next; their shape and the mix do not.
//!
//! # What is measured
//!
//! One group, `normalize`, throughput in change events (`Throughput::Elements(1 000)`):
//!
//! - `product_path`: what the subscriber does per event, I/O aside. `ChangeEventSchema::decode`
//!   (the Avro datum with the end-of-buffer checks, the typed header, the three bitmaps decoded
//!   to names, the body flattened), the last-known slice taken from a `BTreeMap` of known users,
//!   `normalize` (merge, email normalization, event ids, validation), `serde_json::to_vec` of
//!   each resulting `UserChange`, and the known-user map updated from each event, as
//!   `Pipeline::publish` does. The map starts empty in each iteration; the CREATEs fill it.
//! - `baseline_avro_to_json`: the same payloads with the same schema through apache-avro alone
//!   — `GenericDatumReader` built per event (as `decode` builds it) and `read_value` to a
//!   generic `Value`, converted with apache-avro's own `serde_json::Value::try_from`, then
//!   `serde_json::to_vec`. No bitmaps, no merge, no validation: one JSON document per payload
//!   that still has every null and the bitmaps as hex strings.
//! - `baseline_avro_to_json_reader_reused`: the baseline with one `GenericDatumReader` for the
//!   whole stream, to show what building the reader per event costs both paths.
//!
//! A second group, `schema`, times `ChangeEventSchema::parse` of the simulator's writer schema:
//! what a subscriber would pay per event if it did not cache the parsed schema by schema id.

use std::collections::BTreeMap;
use std::hint::black_box;

use apache_avro::reader::datum::GenericDatumReader;
use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;
use usersync::salesforce::avro::ChangeEventSchema;
use usersync::salesforce::normalize::{Delivery, Normalized, Replay, normalize};
use usersync_sim::salesforce::directory::{ChangeRecord, Directory, Writer};
use usersync_sim::salesforce::eventbus::replay_bytes;
use usersync_sim::salesforce::schema::SchemaVersion;

const ORG15: &str = "00D5g000004Zbcd";
const ORG18: &str = "00D5g000004ZbcdEAC";
const TOPIC: &str = "/data/UserChangeEvent";
const CREATES: usize = 200;
const EVENTS: usize = 1_000;
/// The simulated clock: 2024-06-18T11:30:45Z, one second per write.
const START_MS: i64 = 1_718_710_245_000;

/// One encoded event as the subscriber receives it.
struct Payload {
    avro: Vec<u8>,
    replay_id: Vec<u8>,
}

fn fields(value: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(value).expect("an object")
}

/// Every writable User field of the simulator's schema.
fn full_user(n: usize) -> BTreeMap<String, Value> {
    fields(json!({
        "Username": format!("user{n}@example.com.prod"),
        "Salutation": "Ms.",
        "FirstName": format!("First{n}"),
        "LastName": format!("Last{n}"),
        "CompanyName": "Example Corp",
        "Division": "EMEA",
        "Department": "Sales",
        "Title": "Account Executive",
        "Street": format!("{n} Market Street"),
        "City": "San Francisco",
        "State": "CA",
        "PostalCode": "94105",
        "Country": "US",
        "Email": format!("User{n}@Example.com"),
        "IsActive": true,
        "ProfileId": "00e5g000001AbcdAAC",
        "UserRoleId": "00E5g000000XyzwEAC",
        "TimeZoneSidKey": "America/Los_Angeles",
        "LanguageLocaleKey": "en_US",
        "EmailPreferences": ["AutoBcc", "StayInTouchReminder"],
        "UserPreferences": ["ActivityRemindersPopup", "HideCSNGetChatterMobileTask"],
    }))
}

/// The 1 000 change records of the stream, in order.
fn records() -> Vec<ChangeRecord> {
    let mut directory = Directory::new(ORG15);
    let admin = Writer::default();
    let mut clock = START_MS;
    let mut tick = || {
        clock += 1_000;
        clock
    };
    let mut out = Vec::with_capacity(EVENTS);
    let mut ids = Vec::with_capacity(CREATES);
    for n in 0..CREATES {
        let (id, change) = directory
            .create(full_user(n), &admin, tick())
            .expect("a unique username");
        ids.push(id);
        out.push(change);
    }
    // The HR integration writes as a user of its own, so LastModifiedById changes too.
    let hr = Writer {
        user_id: ids[0].clone(),
        change_origin: "com/salesforce/api/rest/61.0;client=HRSync".into(),
    };
    let mut i = 0;
    while out.len() < EVENTS {
        let user = |k: usize| vec![ids[(i * 3 + k) % CREATES].clone()];
        let (targets, changes) = match i % 8 {
            0 => (user(0), json!({"Title": format!("Senior AE {i}")})),
            1 => (user(1), json!({"FirstName": format!("Renamed{i}")})),
            2 => (
                user(2),
                json!({"Title": format!("Manager {i}"), "Department": format!("Dept {i}")}),
            ),
            3 => (
                user(0),
                json!({"Title": format!("Director {i}"), "Department": format!("Dept {i}"),
                       "City": format!("City {i}")}),
            ),
            // A fresh user per round (100 rounds, 200 users), so each one changes something.
            4 => (
                vec![ids[(i / 8) % CREATES].clone()],
                json!({"IsActive": false}),
            ),
            5 => (
                [user(0), user(1), user(2)].concat(),
                json!({"Title": format!("Team lead {i}")}),
            ),
            6 => (
                vec![ids[(2 * (i / 8) + 1) % CREATES].clone()],
                json!({"Title": null}),
            ),
            _ => (user(0), json!({"Department": format!("Ops {i}")})),
        };
        let changes = directory
            .update(&targets, &fields(changes), &hr, tick())
            .expect("known users, writable fields");
        out.extend(changes);
        i += 1;
    }
    out.truncate(EVENTS);
    out
}

fn payloads(records: &[ChangeRecord], version: &SchemaVersion) -> Vec<Payload> {
    records
        .iter()
        .enumerate()
        .map(|(i, record)| Payload {
            avro: usersync_sim::salesforce::cdc::to_avro(record, version),
            replay_id: replay_bytes(1_104_718 + 7 * i as u64),
        })
        .collect()
}

/// Decodes, normalizes and serializes the stream as the subscriber does; returns the number of
/// `UserChange`s and the bytes of JSON produced.
fn product_path(
    schema: &ChangeEventSchema,
    org: &SalesforceId,
    observed_at: DateTime<Utc>,
    stream: &[Payload],
) -> (usize, usize) {
    let mut known: BTreeMap<SalesforceId, SalesforceUser> = BTreeMap::new();
    let (mut changes, mut bytes) = (0, 0);
    for payload in stream {
        let event = schema.decode(&payload.avro).expect("a valid payload");
        let delivery = Delivery {
            org_id: org,
            topic: TOPIC,
            replay: Replay::PubSub(&payload.replay_id),
            schema_id: schema.schema_id(),
            observed_at,
        };
        let last_known: BTreeMap<SalesforceId, SalesforceUser> = event
            .header
            .record_ids
            .iter()
            .filter_map(|raw| SalesforceId::parse(raw).ok())
            .filter_map(|id| known.get(&id).map(|u| (id, u.clone())))
            .collect();
        let Normalized::Events(events) =
            normalize(&event, &delivery, &last_known).expect("a normalizable event")
        else {
            panic!("every event of the stream normalizes to events");
        };
        for change in events {
            let json = serde_json::to_vec(&change).expect("a UserChange serializes");
            bytes += black_box(json).len();
            changes += 1;
            if let Some(id) = change.salesforce_user_id() {
                known.insert(id.clone(), SalesforceUser::from_event(id, &change));
            }
        }
    }
    (changes, bytes)
}

/// apache-avro alone: datum to generic value to JSON; returns the bytes of JSON produced.
fn baseline(version: &SchemaVersion, stream: &[Payload]) -> usize {
    let mut bytes = 0;
    for payload in stream {
        let value = GenericDatumReader::builder(&version.schema)
            .build()
            .and_then(|reader| reader.read_value(&mut &payload.avro[..]))
            .expect("a valid payload");
        let json = Value::try_from(value).expect("no float in the schema");
        bytes += black_box(serde_json::to_vec(&json).expect("JSON serializes")).len();
    }
    bytes
}

/// The baseline with one reader for the whole stream.
fn baseline_reader_reused(version: &SchemaVersion, stream: &[Payload]) -> usize {
    let reader = GenericDatumReader::builder(&version.schema)
        .build()
        .expect("the simulator's schema resolves");
    let mut bytes = 0;
    for payload in stream {
        let value = reader
            .read_value(&mut &payload.avro[..])
            .expect("a valid payload");
        let json = Value::try_from(value).expect("no float in the schema");
        bytes += black_box(serde_json::to_vec(&json).expect("JSON serializes")).len();
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let version = SchemaVersion::build(&[]);
    let schema = ChangeEventSchema::parse(&version.id, &version.json).expect("a change schema");
    let org = SalesforceId::parse(ORG18).expect("an org id");
    let observed_at = DateTime::from_timestamp_millis(START_MS).expect("in range");
    let records = records();
    let stream = payloads(&records, &version);

    // What one pass does, printed once outside the timing loop.
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for record in &records {
        *by_type.entry(record.change_type).or_default() += 1;
    }
    let merged = records.iter().filter(|r| r.record_ids.len() > 1).count();
    let deactivations = records
        .iter()
        .filter(|r| r.changed.iter().any(|f| f == "IsActive"))
        .count();
    let nulled = records.iter().filter(|r| !r.nulled.is_empty()).count();
    let nested = records
        .iter()
        .filter(|r| r.changed.iter().any(|f| f == "FirstName" || f == "City"))
        .count();
    let avro_bytes: usize = stream.iter().map(|p| p.avro.len()).sum();
    let (changes, json_bytes) = product_path(&schema, &org, observed_at, &stream);
    let baseline_bytes = baseline(&version, &stream);
    println!(
        "normalize: {} change events {by_type:?}: {merged} merged, {nested} with a nested \
         sub-field, {deactivations} deactivations, {nulled} with nulledFields; \
         {avro_bytes} Avro bytes ({} per event)",
        stream.len(),
        avro_bytes / stream.len()
    );
    println!(
        "normalize: product path: {changes} UserChanges, {json_bytes} JSON bytes; \
         baseline: {} JSON documents, {baseline_bytes} bytes",
        stream.len()
    );

    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(stream.len() as u64));
    group.bench_function("product_path", |b| {
        b.iter(|| product_path(&schema, &org, observed_at, &stream))
    });
    group.bench_function("baseline_avro_to_json", |b| {
        b.iter(|| baseline(&version, &stream))
    });
    group.bench_function("baseline_avro_to_json_reader_reused", |b| {
        b.iter(|| baseline_reader_reused(&version, &stream))
    });
    group.finish();

    let mut group = c.benchmark_group("schema");
    group.bench_function("parse_user_change_event_schema", |b| {
        b.iter(|| ChangeEventSchema::parse(black_box(&version.id), black_box(&version.json)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
