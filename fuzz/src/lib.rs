//! What the fuzz targets share: the fixed writer schema, the delivery facts, the checks on a
//! normalized outcome, and seed inputs made by the Salesforce simulator; [`providers`] holds
//! what the targets of provider answers (tokens, REST and JSON:API bodies, rate-limit headers,
//! webhook deliveries) share.
//!
//! Seeds are not committed (the corpus directories are git-ignored). A target writes its seeds
//! when it starts, before libFuzzer reads its corpus, if `USERSYNC_FUZZ_SEEDS` names a
//! directory: `scripts/test.sh` points it at the target's corpus directory. They are valid
//! messages the simulator encodes with the product's own schema, so the fuzzer starts from
//! inputs that reach the normalizer instead of having to discover the encoding first.

pub mod providers;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use usersync::model::salesforce_user::SalesforceUser;
use usersync::model::event::UserChange;
use usersync::salesforce::avro::ChangeEvent;
use usersync::model::salesforce_id::SalesforceId;
use usersync::salesforce::normalize::{
    Delivery, Normalized, OVERFLOW_RECORD_ID, Replay, normalize,
};
use usersync_sim::salesforce::cdc::{to_avro, to_cometd_payload};
use usersync_sim::salesforce::directory::ChangeRecord;
use usersync_sim::salesforce::schema::SchemaVersion;

/// The environment variable naming the directory seeds are written to.
pub const SEEDS_VAR: &str = "USERSYNC_FUZZ_SEEDS";

pub const TOPIC: &str = "/data/UserChangeEvent";

/// The simulator's User writer schema, with one custom field at the end.
pub fn writer_schema() -> SchemaVersion {
    SchemaVersion::build(&["Badge__c".to_owned()])
}

pub fn org_id() -> SalesforceId {
    SalesforceId::parse("00D000000000001").expect("an org id")
}

pub fn observed_at() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_767_225_600_000).expect("a time")
}

/// Normalizes `event` twice, once knowing nothing and once with last-known state for every
/// valid record id (so that updates reach the merge), and checks what comes out.
pub fn normalize_and_check(event: &ChangeEvent, delivery: &Delivery<'_>) {
    for known in [BTreeMap::new(), known_state(event)] {
        if let Ok(outcome) = normalize(event, delivery, &known) {
            check(&outcome, event);
        }
    }
}

fn known_state(event: &ChangeEvent) -> BTreeMap<SalesforceId, SalesforceUser> {
    event
        .header
        .record_ids
        .iter()
        .filter_map(|raw| SalesforceId::parse(raw).ok())
        .map(|id| {
            let user = SalesforceUser {
                id: id.clone(),
                email: Some("Known.User@Acme.example".to_owned()),
                username: Some("known@acme.example".to_owned()),
                first_name: Some("Known".to_owned()),
                last_name: Some("User".to_owned()),
                title: None,
                is_active: true,
                created_date: None,
                last_modified_date: None,
                applied: None,
            };
            (id, user)
        })
        .collect()
}

/// Published events are valid, one per record id at most, and survive the trip through JSON
/// that the processor makes.
fn check(outcome: &Normalized, event: &ChangeEvent) {
    let Normalized::Events(changes) = outcome else {
        return;
    };
    assert!(!changes.is_empty(), "Events without an event");
    assert!(changes.len() <= event.header.record_ids.len());
    for change in changes {
        change.validate().expect("normalize returns valid events");
        let json = serde_json::to_vec(change).expect("serializes");
        let back = UserChange::from_json(&json).expect("reads back");
        assert_eq!(&back, change, "JSON round trip");
    }
}

/// Writes `make()`'s seeds as `seed-<n>` into the directory `USERSYNC_FUZZ_SEEDS` names, if
/// it is set. Called from a target's `init`, which runs before libFuzzer reads the corpus.
pub fn write_seeds_if_asked(make: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os(SEEDS_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (n, seed) in make().iter().enumerate() {
        let path = dir.join(format!("seed-{n}"));
        std::fs::write(&path, seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Pub/Sub payloads: each change record as the simulator's Avro datum.
pub fn avro_seeds() -> Vec<Vec<u8>> {
    let version = writer_schema();
    changes().iter().map(|c| to_avro(c, &version)).collect()
}

/// CometD response bodies: meta replies of every kind the client reads, refusals, and each
/// change record as a data message.
pub fn cometd_seeds() -> Vec<Vec<u8>> {
    let version = writer_schema();
    let mut bodies = vec![
        json!([{"channel": "/meta/handshake", "clientId": "c1", "successful": true,
            "version": "1.0", "supportedConnectionTypes": ["long-polling"],
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 110000},
            "ext": {"replay": true, "payload.format": true}}]),
        json!([{"channel": "/meta/subscribe", "clientId": "c1", "successful": true,
            "subscription": TOPIC, "id": "2"}]),
        json!({"channel": "/meta/connect", "clientId": "c1", "successful": true, "id": 3,
            "advice": {"reconnect": "retry", "interval": 0.5, "timeout": 110000}}),
        json!([{"channel": "/meta/handshake", "successful": false, "error": "403::Handshake denied",
            "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}},
            "advice": {"reconnect": "none"}}]),
        json!([{"channel": "/meta/connect", "clientId": "c1", "successful": false,
            "error": "403::Unknown client", "advice": {"reconnect": "handshake"}}]),
        json!([{"channel": "/meta/subscribe", "successful": false, "subscription": [TOPIC],
            "error": "400::The replayId {18098301} you provided was invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay only new events."}]),
        json!([{"channel": "/meta/subscribe", "successful": false,
            "error": "403::Organization total events daily limit exceeded"}]),
        json!([{"channel": "/meta/connect", "successful": false, "error": "503::Server is too busy"}]),
    ];
    let data: Vec<Value> = changes()
        .iter()
        .enumerate()
        .map(|(n, change)| {
            json!({"channel": TOPIC, "data": {
                "schema": version.id,
                "event": {"replayId": 100 + n},
                "payload": to_cometd_payload(change, &version),
            }})
        })
        .collect();
    bodies.extend(data.iter().map(|message| json!([message])));
    bodies.push(Value::Array(data));
    bodies.iter().map(|b| b.to_string().into_bytes()).collect()
}

/// One change record of each kind the normalizer tells apart.
fn changes() -> Vec<ChangeRecord> {
    let user = |n: u32| {
        SalesforceId::parse(&format!("005{n:012}"))
            .expect("a user id")
            .to_string()
    };
    let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let base = |change_type: &'static str, n: u32| ChangeRecord {
        change_type,
        record_ids: vec![user(n)],
        change_origin: "com/salesforce/api/soap/61.0;client=usersync".to_owned(),
        transaction_key: format!("0002b4f7-{n:04}-4a5e-8e5c-7c1f0c1d2e3f"),
        sequence_number: 1,
        commit_timestamp: 1_767_225_600_000 + i64::from(n),
        commit_number: 10_000_000_000 + i64::from(n),
        commit_user: user(900),
        changed: Vec::new(),
        nulled: Vec::new(),
        body: BTreeMap::new(),
    };
    let body = |pairs: &[(&str, Value)]| -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };

    let mut create = base("CREATE", 1);
    create.change_origin = String::new();
    create.body = body(&[
        ("Username", json!("ada@acme.example")),
        ("FirstName", json!("Ada")),
        ("LastName", json!("Lovelace")),
        ("Title", json!("Engineer")),
        ("City", json!("London")),
        ("Email", json!("Ada@Acme.example")),
        ("IsActive", json!(true)),
        ("EmailPreferences", json!(["EmailPreferencesAutoBcc"])),
        ("CreatedDate", json!(1_767_225_600_000_i64)),
        ("LastModifiedDate", json!(1_767_225_600_000_i64)),
        ("Badge__c", json!("B-1")),
    ]);

    let mut title = base("UPDATE", 1);
    title.changed = names(&["Title", "LastModifiedDate"]);
    title.body = body(&[
        ("Title", json!("Lead")),
        ("LastModifiedDate", json!(1_767_225_660_000_i64)),
    ]);

    let mut nulled = base("UPDATE", 1);
    nulled.changed = names(&["FirstName", "Email", "Street", "LastModifiedDate"]);
    nulled.nulled = names(&["FirstName", "Street"]);
    nulled.body = body(&[
        ("Email", json!("ada.l@acme.example")),
        ("LastModifiedDate", json!(1_767_225_720_000_i64)),
    ]);

    let mut deactivate = base("UPDATE", 2);
    deactivate.record_ids.push(user(3));
    deactivate.changed = names(&["IsActive", "LastModifiedDate", "Badge__c"]);
    deactivate.body = body(&[
        ("IsActive", json!(false)),
        ("LastModifiedDate", json!(1_767_225_780_000_i64)),
        ("Badge__c", json!("B-2")),
    ]);

    let delete = base("DELETE", 4);
    let mut undelete = base("UNDELETE", 4);
    undelete.body = create.body.clone();
    let mut gap = base("GAP_UPDATE", 5);
    gap.record_ids.push(user(6));
    let mut overflow = base("GAP_OVERFLOW", 7);
    overflow.record_ids = vec![OVERFLOW_RECORD_ID.to_owned()];
    let mut wildcard = base("GAP_DELETE", 8);
    wildcard.record_ids = vec!["005*".to_owned()];

    vec![
        create, title, nulled, deactivate, delete, undelete, gap, overflow, wildcard,
    ]
}

/// The delivery of a Pub/Sub event with `replay` bytes.
pub fn pubsub_delivery<'a>(
    org_id: &'a SalesforceId,
    replay: &'a [u8],
    schema_id: &'a str,
) -> Delivery<'a> {
    Delivery {
        org_id,
        topic: TOPIC,
        replay: Replay::PubSub(replay),
        schema_id,
        observed_at: observed_at(),
    }
}
