//! `usersync decide` at scale: 10 000 Salesforce users and 50 000 events through the real engine,
//! the real Outreach client and the in-process Outreach simulator over loopback HTTP.
//!
//! # The scenario
//!
//! Built in code, deterministically (no randomness, so every run decides the same thing):
//!
//! - 10 000 Salesforce users. 9 500 are active and mapped to an Outreach user with the same
//!   email (the mirror field `custom1` already holds the Salesforce id, as after a first sync);
//!   500 are inactive and have no Outreach user (people who left before the rollout).
//! - The product's default settings (create on, inbound updates on, remap on inactive on, lock
//!   when inactive off, dedupe both, mirror in `custom1`).
//! - 50 000 events in 2 500 rounds of 20. A round is the traffic of a busy HR system:
//!   - 12 title or name changes of mapped users, spread over 4 500 users that are never
//!     deactivated: **update**, one `PATCH`. This is most of what Salesforce sends.
//!   - 1 replacement (a new user with a departing user's email: a **conflict** while both are
//!     active, no call) followed by the departing user's deactivation: **remap**, one `PATCH`.
//!     The case the product exists for; each round takes a fresh departing user.
//!   - 2 new hires with new emails: **create**, one `POST`.
//!   - 1 deactivation with no replacement: **skip** (`no_active_replacement`), no call, since
//!     locking is off by default.
//!   - 2 redeliveries of an event of the round (Pub/Sub and CometD deliver at least once):
//!     **skip** (`duplicate_event`), no call.
//!   - 1 stale event, an older change of a user that arrives after a newer one was applied:
//!     **skip** (`stale_event`), no call.
//!
//!   That is 15 calls per 20 events: 0.75 Outreach requests per event. The mix leans on writes
//!   on purpose (a reorganisation day rather than a quiet one): the figure is then an upper
//!   bound on what the HTTP path costs per event, and the engine bench gives the other end.
//!
//! # What is measured
//!
//! `usersync::app::scenario::run` itself — what `usersync decide` runs: the in-process simulator
//! starts, 9 500 Outreach users are seeded, the engine state is built, and all 50 000 events are
//! decided and applied with the real client over loopback HTTP. Nothing is stubbed: every call
//! is serialized by the client, sent over TCP, parsed and validated by the simulator, and the
//! reply parsed back.
//!
//! One iteration is a whole run, as `usersync decide` does it: simulator start, seeding 9 500
//! Outreach users, building the engine state, 50 000 events, the output.
//! A run takes seconds, so the group uses flat sampling and criterion's minimum of 10 samples.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

use usersync::app::scenario::{
    self, Output, Scenario, ScenarioMapping, ScenarioOutreachUser, ScenarioSalesforceUser,
};
use usersync::model::event::{ChangeKind, Origin, SCHEMA, Source, UserChange, UserState};
use usersync::model::salesforce_id::SalesforceId;

const ORG: &str = "00D000000000001EAA";
/// Salesforce users in the state before the events.
const USERS: u32 = 10_000;
/// Of which mapped (users 1..=MAPPED); the rest are inactive and unknown to Outreach.
const MAPPED: u32 = 9_500;
/// Mapped users that only ever get updates (1..=STABLE); the others leave, one per round each
/// for the remaps and for the plain deactivations.
const STABLE: u32 = 4_500;
const ROUNDS: u32 = 2_500;
const EVENTS: usize = 50_000;

fn sf_id(n: u32) -> SalesforceId {
    SalesforceId::parse(&format!("005{n:012}")).expect("a valid User id")
}

fn email(n: u32) -> String {
    format!("user{n}@example.com")
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn created(n: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_600_000_000 + i64::from(n), 0).unwrap()
}

/// What a Salesforce event says about its user.
struct Change<'a> {
    user: u32,
    email_of: u32,
    active: bool,
    title: &'a str,
    first_name: String,
    kind: ChangeKind,
    fields: &'a [&'a str],
}

impl<'a> Change<'a> {
    fn of(user: u32) -> Self {
        Change {
            user,
            email_of: user,
            active: true,
            title: "Account Executive",
            first_name: format!("First{user}"),
            kind: ChangeKind::Update,
            fields: &["Title"],
        }
    }

    /// The full-state event of this change at `commit`; `transaction` names its transaction.
    fn event(&self, commit: i64, transaction: &str) -> UserChange {
        let id = sf_id(self.user);
        let address = email(self.email_of);
        UserChange {
            schema: SCHEMA.into(),
            event_id: format!("sf:{ORG}:{id}:{transaction}:1"),
            source: Source::Salesforce,
            org_id: Some(ORG.into()),
            user_id: id.to_string(),
            change: self.kind,
            changed_fields: self.fields.iter().map(|f| f.to_string()).collect(),
            user: UserState {
                email: Some(address.clone()),
                email_normalized: Some(address.clone()),
                username: Some(format!("{address}.prod")),
                first_name: Some(self.first_name.clone()),
                last_name: Some(format!("Last{}", self.user)),
                title: Some(self.title.to_string()),
                is_active: Some(self.active),
                created_date: Some(created(self.user)),
                last_modified_date: Some(at(commit)),
                locked: None,
            },
            origin: Origin {
                transport: "pubsub".into(),
                topic: Some("/data/UserChangeEvent".into()),
                change_type: Some(
                    match self.kind {
                        ChangeKind::Create => "CREATE",
                        _ => "UPDATE",
                    }
                    .into(),
                ),
                transaction_key: Some(transaction.into()),
                sequence_number: Some(1),
                commit_timestamp: Some(at(commit)),
                commit_number: Some(commit),
                ..Default::default()
            },
            observed_at: at(commit),
        }
    }
}

/// The scenario of the module doc.
fn scenario() -> Scenario {
    let mut s = Scenario::default();
    for n in 1..=USERS {
        let mapped = n <= MAPPED;
        s.salesforce_users.push(ScenarioSalesforceUser {
            id: sf_id(n),
            email: Some(email(n)),
            is_active: mapped,
            created_date: Some(created(n)),
            first_name: Some(format!("First{n}")),
            last_name: Some(format!("Last{n}")),
            title: Some("Account Executive".into()),
            username: Some(format!("{}.prod", email(n))),
        });
        if mapped {
            s.outreach_users.push(ScenarioOutreachUser {
                id: i64::from(n),
                email: email(n),
                first_name: Some(format!("First{n}")),
                last_name: Some(format!("Last{n}")),
                locked: false,
                title: Some("Account Executive".into()),
                custom1: Some(sf_id(n).to_string()),
                custom2: None,
                custom3: None,
                custom4: None,
                custom5: None,
            });
            s.mappings.push(ScenarioMapping {
                outreach_user_id: i64::from(n),
                salesforce_user_id: sf_id(n),
            });
        }
    }

    let mut commit: i64 = 1_000;
    let mut next_commit = || {
        commit += 1;
        commit
    };
    let mut next_new = USERS;
    let mut new_user = || {
        next_new += 1;
        next_new
    };
    let mut updates = 0u32;
    // What Salesforce holds for the stable users: events carry the full state after a change.
    let mut titles = vec![String::from("Account Executive"); STABLE as usize + 1];
    let mut first_names: Vec<String> = (0..=STABLE).map(|n| format!("First{n}")).collect();
    let events = &mut s.events;
    for round in 0..ROUNDS {
        let round_start = events.len();
        let departing = STABLE + 1 + round; // remapped to a replacement
        let leaving = STABLE + ROUNDS + 1 + round; // deactivated, nobody replaces them
        for k in 0..12 {
            let n = updates % STABLE + 1;
            updates += 1;
            let i = n as usize;
            let fields: &[&str] = if k == 11 {
                // A name change (a marriage, a typo fixed) rather than a new title.
                first_names[i] = format!("First{n}r{round}");
                &["FirstName"]
            } else {
                titles[i] = format!("Title {round}.{k}");
                &["Title"]
            };
            let c = next_commit();
            let mut change = Change::of(n);
            change.title = &titles[i];
            change.first_name = first_names[i].clone();
            change.fields = fields;
            events.push(change.event(c, &format!("tx{c}")));
            match k {
                3 => {
                    // The replacement arrives, then the departing user is deactivated.
                    let r = new_user();
                    let c = next_commit();
                    let mut hire = Change::of(r);
                    hire.email_of = departing;
                    hire.kind = ChangeKind::Create;
                    hire.fields = &[];
                    events.push(hire.event(c, &format!("tx{c}")));
                    let c = next_commit();
                    let mut gone = Change::of(departing);
                    gone.active = false;
                    gone.fields = &["IsActive"];
                    events.push(gone.event(c, &format!("tx{c}")));
                }
                5 | 9 => {
                    let h = new_user();
                    let c = next_commit();
                    let mut hire = Change::of(h);
                    hire.kind = ChangeKind::Create;
                    hire.fields = &[];
                    hire.title = "Sales Development Rep";
                    events.push(hire.event(c, &format!("tx{c}")));
                }
                7 => {
                    let c = next_commit();
                    let mut gone = Change::of(leaving);
                    gone.active = false;
                    gone.fields = &["IsActive"];
                    events.push(gone.event(c, &format!("tx{c}")));
                }
                _ => {}
            }
        }
        // A change of the round's first updated user from before the one just applied, whose
        // delivery was delayed: an older commit, a transaction of its own.
        let first = &events[round_start];
        let older = first.origin.commit_number.unwrap() - 1;
        let n = (updates - 12) % STABLE + 1;
        let mut late = Change::of(n);
        late.title = "Old title";
        events.push(late.event(older, &format!("tx{older}-late")));
        // Redeliveries of two events of the round: its second update and the remap's
        // deactivation (indexes 1 and 5 of the round).
        let again = [
            events[round_start + 1].clone(),
            events[round_start + 5].clone(),
        ];
        events.extend(again);
        debug_assert_eq!(events.len() - round_start, 20);
    }
    assert_eq!(s.events.len(), EVENTS);
    s
}

/// What one run costs and decides, printed once so the figure can be read with it.
fn report(output: &Output, elapsed: Duration) {
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for d in &output.decisions {
        *by_action.entry(d.action.as_str().to_string()).or_default() += 1;
        let reason = serde_json::to_value(d.reason).unwrap();
        *by_reason
            .entry(reason.as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let calls_in_records: u64 = output
        .decisions
        .iter()
        .map(|d| u64::from(d.outreach_calls))
        .sum();
    println!(
        "decide: {EVENTS} events, {} decisions, {} Outreach requests ({:.3} per event; {} counted on decisions)",
        output.decisions.len(),
        output.outreach_calls,
        output.outreach_calls as f64 / EVENTS as f64,
        calls_in_records
    );
    println!("decide: decisions by action: {by_action:?}");
    println!("decide: decisions by reason: {by_reason:?}");
    println!("decide: one run took {elapsed:.2?}");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let scenario = scenario();
    let started = Instant::now();
    let output = rt
        .block_on(scenario::run(&scenario))
        .expect("the scenario runs");
    report(&output, started.elapsed());

    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    // One run per sample: flat sampling gives each sample ceil(measurement / 10 / run time)
    // iterations, so a target below ten runs keeps it at one (criterion warns that 10 samples
    // will not fit; they take about ten runs, ~3 minutes here).
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(60));
    group.bench_function("scenario_10k_users_50k_events", |b| {
        b.to_async(&rt).iter(|| scenario::run(&scenario))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
