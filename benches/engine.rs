//! Decisions per second of the pure engine.
//!
//! A state of 10 000 mapped users; a stream of 10 000 events mixing the everyday (a title
//! change of a mapped user), the heart of the product (a replacement user with the same email,
//! then the old one's deactivation: a remap), new hires (a create) and redeliveries. Two
//! measurements: `decide` alone against a fixed state (the rules' cost), and decide plus the
//! fold that applies each plan to the state (what the processor pays besides I/O).

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use usersync::engine::apply::{fold_decision, fold_event};
use usersync::engine::{Mapping, OutreachCall, SyncSettings, SyncState, decide};
use usersync::model::event::{ChangeKind, Origin, SCHEMA, Source, UserChange, UserState};
use usersync::model::outreach_user::{OutreachUser, OutreachUserId};
use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;

const USERS: u32 = 10_000;
const EVENTS: u32 = 10_000;
const ORG: &str = "00D000000000001EAA";

fn id(n: u32) -> SalesforceId {
    SalesforceId::parse(&format!("005{n:012}")).unwrap()
}

fn email(n: u32) -> String {
    format!("user{n}@example.com")
}

fn event(n: u32, email_of: u32, active: bool, title: &str, commit: i64) -> UserChange {
    let at = Utc.timestamp_opt(1_700_000_000 + commit, 0).unwrap();
    UserChange {
        schema: SCHEMA.into(),
        event_id: format!("sf:{ORG}:{}:tx{commit}:1", id(n)),
        source: Source::Salesforce,
        org_id: Some(ORG.into()),
        user_id: id(n).to_string(),
        change: ChangeKind::Update,
        changed_fields: vec!["Title".into()],
        user: UserState {
            email: Some(email(email_of)),
            email_normalized: Some(email(email_of)),
            username: None,
            first_name: Some(format!("First{n}")),
            last_name: Some(format!("Last{n}")),
            title: Some(title.into()),
            is_active: Some(active),
            created_date: Some(Utc.timestamp_opt(1_600_000_000 + n as i64, 0).unwrap()),
            last_modified_date: Some(at),
            locked: None,
        },
        origin: Origin {
            transport: "pubsub".into(),
            commit_timestamp: Some(at),
            commit_number: Some(commit),
            sequence_number: Some(1),
            ..Default::default()
        },
        observed_at: at,
    }
}

fn state() -> SyncState {
    let mut state = SyncState::new();
    for n in 1..=USERS {
        state.put_salesforce_user(SalesforceUser {
            id: id(n),
            email: Some(email(n)),
            username: None,
            first_name: Some(format!("First{n}")),
            last_name: Some(format!("Last{n}")),
            title: Some("AE".into()),
            is_active: true,
            created_date: Some(Utc.timestamp_opt(1_600_000_000 + n as i64, 0).unwrap()),
            last_modified_date: None,
            applied: None,
        });
        let mut custom: [Option<String>; 5] = Default::default();
        custom[0] = Some(id(n).to_string());
        state.put_outreach_user(OutreachUser {
            id: OutreachUserId(n as i64),
            email: email(n),
            username: None,
            first_name: Some(format!("First{n}")),
            last_name: Some(format!("Last{n}")),
            title: Some("AE".into()),
            locked: false,
            custom,
            updated_at: None,
        });
        state
            .map(Mapping {
                outreach_user_id: OutreachUserId(n as i64),
                salesforce_user_id: id(n),
                locked_by_usersync: false,
            })
            .unwrap();
    }
    state
}

/// The event mix: 70 % title changes, per 10 events one replacement + one deactivation
/// (a remap), one new hire (a create); every 10th event is delivered twice.
fn events() -> Vec<UserChange> {
    let mut out = Vec::with_capacity(EVENTS as usize);
    let mut commit = 1;
    let mut next_new = USERS + 1;
    let mut i = 0;
    while out.len() < EVENTS as usize {
        let n = i % USERS + 1;
        match i % 10 {
            0 => {
                // A replacement user with n's email, then n deactivated.
                out.push(event(next_new, n, true, "AE", commit));
                commit += 1;
                out.push(event(n, n, false, "AE", commit));
                next_new += 1;
            }
            1 => {
                out.push(event(next_new, next_new, true, "SDR", commit));
                next_new += 1;
            }
            _ => out.push(event(n, n, true, &format!("AE {i}"), commit)),
        }
        if i % 10 == 9 {
            out.push(out.last().unwrap().clone());
        }
        commit += 1;
        i += 1;
    }
    out.truncate(EVENTS as usize);
    out
}

/// Applies a plan as if Outreach accepted every call.
fn apply(state: &mut SyncState, settings: &SyncSettings, event: &UserChange, next_id: &mut i64) {
    let outcome = decide(settings, state, event);
    for d in &outcome.decisions {
        let reply = d.call.as_ref().map(|call| match call {
            OutreachCall::Create(attrs) => {
                *next_id += 1;
                let mut user = OutreachUser {
                    id: OutreachUserId(*next_id),
                    email: attrs.email.clone().unwrap_or_default(),
                    username: None,
                    first_name: None,
                    last_name: None,
                    title: None,
                    locked: false,
                    custom: Default::default(),
                    updated_at: None,
                };
                attrs.apply_to(&mut user);
                user
            }
            OutreachCall::Update(id, attrs) => {
                let mut user = state.outreach_user(*id).cloned().unwrap();
                attrs.apply_to(&mut user);
                user
            }
        });
        fold_decision(state, d, reply).unwrap();
    }
    fold_event(state, &outcome, &event.event_id);
}

fn bench(c: &mut Criterion) {
    let settings = SyncSettings::default();
    let base = state();
    let events = events();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("decide_10k_events_against_10k_users", |b| {
        b.iter(|| {
            for e in &events {
                black_box(decide(&settings, &base, e));
            }
        })
    });
    group.bench_function("decide_and_fold_10k_events", |b| {
        b.iter_batched(
            || base.clone(),
            |mut state| {
                let mut next_id = i64::from(USERS) * 10;
                for e in &events {
                    apply(&mut state, &settings, e, &mut next_id);
                }
                state
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
