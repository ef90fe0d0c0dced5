//! The six invariants of `decisions.md`, as properties over random histories.
//!
//! A history is what happened, as the generator knows it: a few Salesforce users sharing three
//! emails (each spelled differently by the two sides), their activations, deactivations,
//! deletes, undeletes, email changes and renames, REST re-reads of them (snapshots), and the
//! Outreach users that existed before the run — some known to usersync and perhaps already
//! mapped, some made by hand and known only to Outreach. A delivery is one way that history can
//! reach usersync: shuffled, with repeats, with Outreach's webhook echo of every write
//! usersync makes arriving late or twice, and with the reply of a create now and then lost, so
//! that the retried event meets Outreach's "email taken". Events go through `apply_event`, the
//! processor's own path, against an in-memory Outreach (`Directory`) that refuses a second
//! user per email as Outreach does.
//!
//! The convergence property judges each end state against the generator's truth rather than
//! against what the engine folded: a bug that corrupts the engine's view would otherwise agree
//! with itself. Each property runs `PROPTEST_CASES` cases (see `cases()` for the defaults);
//! failures are saved to `proptest-regressions/engine/invariants.txt` and replayed first.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures::executor::block_on;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};

use crate::engine::decision::{DecisionRecord, OutreachCall};
use crate::engine::model::ModelOutreach;
use crate::engine::model::events::{ORG, at, change, user_id};
use crate::engine::settings::{Dedupe, SyncSettings};
use crate::engine::state::{Mapping, SyncState};
use crate::engine::{Action, Reason};
use crate::model::event::{ChangeKind, Source, UserChange, UserState, normalize_email};
use crate::model::outreach_user::{OutreachUser, OutreachUserId, UserAttributes};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;
use crate::outreach::client::Reply;
use crate::outreach::error::{EMAIL_POINTER, Operation, OutreachError};
use crate::outreach::webhooks::{UserAction, UserAttributesSent, UserDelivery};
use crate::roles::processor::apply::{ApplyError, OutreachWrites, apply_event};
use crate::salesforce::snapshot::{ReadPosition, snapshot};

// ----- The history -----

/// One email as each side writes it. Salesforce users of one group may spell it two ways and
/// Outreach keeps a third; all three normalize alike, so every match must ignore case and
/// surrounding spaces on both sides.
struct Spelling {
    salesforce: [&'static str; 2],
    outreach: &'static str,
}

const EMAILS: [Spelling; 3] = [
    Spelling {
        salesforce: ["ann@acme.com", "Ann@Acme.com"],
        outreach: "ANN@acme.com",
    },
    Spelling {
        salesforce: ["Bob@Acme.com", "bob@acme.com "],
        outreach: "bob@ACME.com",
    },
    Spelling {
        salesforce: ["cy@acme.com ", " CY@acme.com"],
        outreach: "Cy@Acme.Com",
    },
];

/// The normalized email of group `g`.
fn group_email(g: usize) -> String {
    normalize_email(EMAILS[g].outreach)
}

/// One step of a user's life after its creation.
#[derive(Debug, Clone)]
enum Step {
    ToggleActive,
    /// Moves to group `.0`, spelled the `.1`th way.
    ChangeEmail(usize, usize),
    /// Spells the same email the `.0`th way: no group change, only a different string.
    Respell(usize),
    Rename,
    /// A `delete` with its all-null body: it reads as a deactivation.
    Delete,
    /// Back after a delete, as an `undelete` carrying the full state (active).
    Undelete,
    /// A REST read of the user's current state (a resync), placed at the newest commit.
    Snapshot,
}

/// A step of user `user` (modulo the number of users). With `reread`, the stream lost the
/// change (a gap) and a REST re-read at its commit publishes it as a snapshot instead.
#[derive(Debug, Clone)]
struct Change {
    user: usize,
    step: Step,
    reread: bool,
}

/// An email's Outreach user before the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seed {
    Absent,
    /// In Outreach and in usersync's index; with `Some(n)`, already mapped to Salesforce user
    /// `n` (by id, whatever that user's email is now).
    Indexed(Option<usize>),
    /// Made by hand in Outreach; usersync has not heard of it. With `true` its `user.created`
    /// webhook is in the history; either way a create for its email is refused.
    Hidden(bool),
}

#[derive(Debug, Clone)]
struct History {
    /// Each user's first state: group, spelling, active.
    users: Vec<(usize, usize, bool)>,
    changes: Vec<Change>,
    outreach: [Seed; 3],
    /// The pre-mapped users' last-known state is loaded before the run, as an initial load
    /// would; otherwise they are unseen until their first event.
    preloaded: bool,
}

/// What the generator knows of one Salesforce user at some point of the history.
#[derive(Debug, Clone, PartialEq)]
struct Truth {
    group: usize,
    spelling: usize,
    active: bool,
    renames: u32,
    /// The commit of its newest change.
    modified: i64,
}

impl Truth {
    fn email(&self) -> &'static str {
        EMAILS[self.group].salesforce[self.spelling]
    }
}

fn first_name(n: usize, renames: u32) -> String {
    format!("First{}v{renames}", n + 1)
}

fn last_name(n: usize) -> String {
    format!("Last{}", n + 1)
}

/// A history played out: its events, and what the generator knows came of each user.
struct Played {
    events: Vec<UserChange>,
    finals: Vec<Truth>,
    /// Per user, the groups it was active in at some point. A delivery may apply any of these
    /// states, so each is a group the user may have been linked in.
    active_in: Vec<BTreeSet<usize>>,
    /// Per user, whether its newest event is a delete: with its null body, a delete keeps
    /// whatever email usersync knew, which may be older than the user's last.
    deleted_last: Vec<bool>,
}

impl History {
    fn play(&self) -> Played {
        let mut commit = 0;
        let mut reads = 0;
        let mut finals = Vec::new();
        let mut active_in = Vec::new();
        let mut deleted_last = vec![false; self.users.len()];
        let mut events = Vec::new();
        for (n, &(group, spelling, active)) in self.users.iter().enumerate() {
            commit += 1;
            let truth = Truth {
                group,
                spelling,
                active,
                renames: 0,
                modified: commit,
            };
            events.push(stream(n, &truth, commit, ChangeKind::Create));
            active_in.push(if active {
                BTreeSet::from([group])
            } else {
                BTreeSet::new()
            });
            finals.push(truth);
        }
        for c in &self.changes {
            let n = c.user % finals.len();
            deleted_last[n] = matches!(c.step, Step::Delete) && !c.reread;
            let truth = &mut finals[n];
            let kind = match c.step {
                Step::Snapshot => {
                    reads += 1;
                    events.push(reread(n, truth, commit, reads, false));
                    continue;
                }
                Step::ToggleActive => {
                    truth.active = !truth.active;
                    ChangeKind::Update
                }
                Step::ChangeEmail(g, s) => {
                    truth.group = g % EMAILS.len();
                    truth.spelling = s % 2;
                    ChangeKind::Update
                }
                Step::Respell(s) => {
                    truth.spelling = s % 2;
                    ChangeKind::Update
                }
                Step::Rename => {
                    truth.renames += 1;
                    ChangeKind::Update
                }
                Step::Delete => {
                    truth.active = false;
                    ChangeKind::Delete
                }
                Step::Undelete => {
                    truth.active = true;
                    ChangeKind::Undelete
                }
            };
            commit += 1;
            truth.modified = commit;
            if truth.active {
                active_in[n].insert(truth.group);
            }
            if c.reread {
                reads += 1;
                events.push(reread(n, truth, commit, reads, true));
            } else {
                events.push(stream(n, truth, commit, kind));
            }
        }
        for (g, seed) in self.outreach.iter().enumerate() {
            if *seed == Seed::Hidden(true) {
                events.push(webhook(&seed_user(g), UserAction::Created));
            }
        }
        Played {
            events,
            finals,
            active_in,
            deleted_last,
        }
    }

    /// usersync's state and Outreach's users before the run.
    fn start(&self) -> (SyncState, Vec<OutreachUser>) {
        let mut state = SyncState::new();
        let mut outreach = Vec::new();
        for (g, seed) in self.outreach.iter().enumerate() {
            match *seed {
                Seed::Absent => {}
                Seed::Hidden(_) => outreach.push(seed_user(g)),
                Seed::Indexed(mapped) => {
                    let user = seed_user(g);
                    state.put_outreach_user(user.clone());
                    if let Some(n) = mapped {
                        state
                            .map(Mapping {
                                outreach_user_id: user.id,
                                salesforce_user_id: user_id(n as u32 + 1),
                                locked_by_usersync: false,
                            })
                            .expect("the generator keeps pre-mappings 1:1");
                        if self.preloaded {
                            let (group, spelling, active) = self.users[n];
                            state.put_salesforce_user(known_user(
                                n,
                                &Truth {
                                    group,
                                    spelling,
                                    active,
                                    renames: 0,
                                    modified: n as i64 + 1,
                                },
                            ));
                        }
                    }
                    outreach.push(user);
                }
            }
        }
        (state, outreach)
    }

    /// The Outreach users of emails that had one before the run, and which of them usersync
    /// knew.
    fn seeded(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut existed = BTreeSet::new();
        let mut indexed = BTreeSet::new();
        for (g, seed) in self.outreach.iter().enumerate() {
            match seed {
                Seed::Absent => {}
                Seed::Hidden(_) => {
                    existed.insert(group_email(g));
                }
                Seed::Indexed(_) => {
                    existed.insert(group_email(g));
                    indexed.insert(group_email(g));
                }
            }
        }
        (existed, indexed)
    }

    fn premapped(&self) -> BTreeMap<usize, usize> {
        self.outreach
            .iter()
            .enumerate()
            .filter_map(|(g, seed)| match seed {
                Seed::Indexed(Some(n)) => Some((g, *n)),
                _ => None,
            })
            .collect()
    }
}

/// A stream change of user `n` (0-based) at `commit`.
fn stream(n: usize, truth: &Truth, commit: i64, kind: ChangeKind) -> UserChange {
    let mut event = change(n as u32 + 1, Some(truth.email()), truth.active, commit);
    event.user.first_name = Some(first_name(n, truth.renames));
    event.user.last_name = Some(last_name(n));
    event.change = kind;
    event.origin.change_type = Some(
        match kind {
            ChangeKind::Create => "CREATE",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
            ChangeKind::Undelete => "UNDELETE",
            ChangeKind::Snapshot => unreachable!("snapshots are REST reads"),
        }
        .into(),
    );
    if kind == ChangeKind::Delete {
        event.user = UserState::default();
    }
    event
}

/// User `n` as REST shows it.
fn known_user(n: usize, truth: &Truth) -> SalesforceUser {
    SalesforceUser {
        id: user_id(n as u32 + 1),
        email: Some(truth.email().into()),
        username: Some(format!("{}.prod", truth.email())),
        first_name: Some(first_name(n, truth.renames)),
        last_name: Some(last_name(n)),
        title: None,
        is_active: truth.active,
        created_date: Some(at(n as i64 + 1)),
        last_modified_date: Some(at(truth.modified)),
        applied: None,
    }
}

/// A snapshot of user `n` read at the stream position of `commit`; `gap` when it stands in for
/// a lost change of that commit. `read` makes every read's time (and so its id) its own.
fn reread(n: usize, truth: &Truth, commit: i64, read: i64, gap: bool) -> UserChange {
    let org = SalesforceId::parse(ORG).expect("valid org id");
    let position = ReadPosition {
        commit_number: Some(commit),
        commit_timestamp: Some(at(commit)),
        change_type: gap.then(|| "GAP_UPDATE".into()),
        ..ReadPosition::default()
    };
    snapshot(
        &known_user(n, truth),
        &org,
        &position,
        at(commit) + Duration::milliseconds(read),
    )
}

/// The Outreach user of group `g` that exists before the run (id `g + 1`).
fn seed_user(g: usize) -> OutreachUser {
    let id = g as i64 + 1;
    OutreachUser {
        id: OutreachUserId(id),
        email: EMAILS[g].outreach.into(),
        username: None,
        first_name: Some("Hand".into()),
        last_name: Some("Made".into()),
        title: None,
        locked: false,
        custom: Default::default(),
        updated_at: Some(at(id - 1000)),
    }
}

/// The `user_change.v1` event the webhook receiver publishes for a delivery about `user` (its
/// state after the change), built by the receiver's own code.
fn webhook(user: &OutreachUser, action: UserAction) -> UserChange {
    let updated_at = user.updated_at.expect("Outreach stamps every user");
    let delivery = UserDelivery {
        event_name: match action {
            UserAction::Created => "user.created",
            UserAction::Updated => "user.updated",
        }
        .into(),
        action,
        id: user.id,
        updated_at,
        delivered_at: Some(updated_at),
        attributes: UserAttributesSent {
            email: Some(user.email.clone()),
            username: Some(user.username.clone()),
            first_name: Some(user.first_name.clone()),
            last_name: Some(user.last_name.clone()),
            locked: Some(user.locked),
        },
        before: None,
        changed: Vec::new(),
    };
    delivery
        .into_change(None, updated_at + Duration::seconds(1))
        .expect("a payload with every attribute needs no read")
}

/// Which histories a property draws.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Users may move to another email group (respelling the same email is always possible).
    email_changes: bool,
}

fn history(shape: Shape) -> impl Strategy<Value = History> {
    let step = if shape.email_changes {
        prop_oneof![
            4 => Just(Step::ToggleActive),
            3 => (0..EMAILS.len(), 0..2usize).prop_map(|(g, s)| Step::ChangeEmail(g, s)),
            1 => (0..2usize).prop_map(Step::Respell),
            2 => Just(Step::Rename),
            1 => Just(Step::Delete),
            1 => Just(Step::Undelete),
            2 => Just(Step::Snapshot),
        ]
        .boxed()
    } else {
        prop_oneof![
            4 => Just(Step::ToggleActive),
            1 => (0..2usize).prop_map(Step::Respell),
            2 => Just(Step::Rename),
            1 => Just(Step::Delete),
            1 => Just(Step::Undelete),
            2 => Just(Step::Snapshot),
        ]
        .boxed()
    };
    let change = (0..6usize, step, prop::bool::weighted(0.2))
        .prop_map(|(user, step, reread)| Change { user, step, reread });
    let seed = prop_oneof![
        2 => Just(Seed::Absent),
        3 => prop::option::weighted(0.5, 0..6usize).prop_map(Seed::Indexed),
        2 => any::<bool>().prop_map(Seed::Hidden),
    ];
    (
        prop::collection::vec((0..EMAILS.len(), 0..2usize, any::<bool>()), 1..6),
        prop::collection::vec(change, 0..16),
        prop::array::uniform3(seed),
        any::<bool>(),
    )
        .prop_map(move |(users, changes, mut outreach, preloaded)| {
            // Mappings are 1:1. Without email changes a pre-mapping joins users of the same
            // email, so that nothing about the history diverges.
            let mut taken = BTreeSet::new();
            for (g, seed) in outreach.iter_mut().enumerate() {
                if let Seed::Indexed(Some(k)) = *seed {
                    let candidates: Vec<usize> = (0..users.len())
                        .filter(|&n| shape.email_changes || users[n].0 == g)
                        .collect();
                    let pick = (!candidates.is_empty()).then(|| candidates[k % candidates.len()]);
                    *seed = Seed::Indexed(pick.filter(|n| taken.insert(*n)));
                }
            }
            History {
                users,
                changes,
                outreach,
                preloaded,
            }
        })
}

// ----- The delivery -----

/// The most events a history has: five creates, fifteen changes, three webhooks.
const MAX_EVENTS: usize = 23;

/// One way the history reaches usersync.
#[derive(Debug, Clone)]
struct Delivery {
    /// A sort key per event of the history: events go out by key, ties in history order. Keys
    /// rather than a shuffled list let a failing history and its deliveries shrink apart, and
    /// a delivery shrinks towards history order.
    keys: Vec<u8>,
    /// The `.0`th event in the sorted order goes out again at place `.1` (both modulo the
    /// length). Never empty: every run meets a duplicate.
    repeats: Vec<(u8, u8)>,
    /// Which creates (by the order they reach Outreach) succeed while their reply is lost.
    lost_replies: BTreeSet<usize>,
    /// For each webhook echo of a write, in turn (cycling): how many deliveries later it
    /// arrives, and whether it arrives twice.
    echoes: Vec<(usize, bool)>,
}

impl Delivery {
    /// The history's events (indexes) in the order this delivery sends them.
    fn order(&self, events: usize) -> Vec<usize> {
        assert!(events <= MAX_EVENTS, "{events} events; raise MAX_EVENTS");
        let mut order: Vec<usize> = (0..events).collect();
        order.sort_by_key(|&i| self.keys[i]);
        for &(which, place) in &self.repeats {
            let again = order[usize::from(which) % order.len()];
            order.insert(usize::from(place) % (order.len() + 1), again);
        }
        order
    }

    /// The order, readable: what a failure report needs to replay the case by hand.
    fn describe(&self, events: &[UserChange]) -> String {
        let labels: Vec<String> = self
            .order(events.len())
            .into_iter()
            .map(|i| label(&events[i]))
            .collect();
        format!(
            "{} (lost replies {:?})",
            labels.join(" "),
            self.lost_replies
        )
    }
}

/// `update:2@7` is user 2's update at commit 7; `webhook:3` a webhook of Outreach user 3.
fn label(event: &UserChange) -> String {
    match event.source {
        Source::Outreach => format!("webhook:{}", event.user_id),
        Source::Salesforce => {
            let n: u32 = event.user_id[3..15].parse().unwrap_or_default();
            let kind = match event.change {
                ChangeKind::Create => "create",
                ChangeKind::Update => "update",
                ChangeKind::Delete => "delete",
                ChangeKind::Undelete => "undelete",
                ChangeKind::Snapshot => "snapshot",
            };
            let commit = event.origin.commit_number.unwrap_or_default();
            format!("{kind}:{n}@{commit}")
        }
    }
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(any::<u8>(), MAX_EVENTS),
        prop::collection::vec((any::<u8>(), any::<u8>()), 1..=6),
        prop::collection::btree_set(0..3usize, 0..3),
        prop::collection::vec((0..4usize, prop::bool::weighted(0.25)), 1..6),
    )
        .prop_map(|(keys, repeats, lost_replies, echoes)| Delivery {
            keys,
            repeats,
            lost_replies,
            echoes,
        })
}

// ----- Outreach and the run -----

/// Outreach as the runs see it: the model's users and its one-user-per-email rule, behind the
/// interface `apply_event` writes through, so refused creates take the processor's own path.
/// Every write gets a fresh `updatedAt` and a webhook echo, as in Outreach: an echo that
/// arrives after a newer write must then be recognized as stale.
struct Directory(Mutex<Outreach>);

#[derive(Debug, Clone)]
struct Outreach {
    model: ModelOutreach,
    clock: DateTime<Utc>,
    lose: BTreeSet<usize>,
    /// Creates that reached Outreach and made a user.
    created: usize,
    refused: u32,
    lost: u32,
    /// Webhook events of writes not yet handed to the delivery.
    echoes: Vec<UserChange>,
}

impl Directory {
    fn new(users: Vec<OutreachUser>, lose: BTreeSet<usize>) -> Self {
        let mut model = ModelOutreach::default();
        for user in users {
            model.seed(user);
        }
        Directory(Mutex::new(Outreach {
            model,
            clock: at(0),
            lose,
            created: 0,
            refused: 0,
            lost: 0,
            echoes: Vec::new(),
        }))
    }

    fn get(&self) -> MutexGuard<'_, Outreach> {
        self.0.lock().expect("no run panics while holding Outreach")
    }
}

impl Outreach {
    /// Stamps a write and queues its echo.
    fn written(&mut self, id: OutreachUserId, action: UserAction) -> OutreachUser {
        self.clock += Duration::milliseconds(1);
        let user = self.model.users.get_mut(&id).expect("just written");
        user.updated_at = Some(self.clock);
        let user = user.clone();
        self.echoes.push(webhook(&user, action));
        user
    }
}

#[async_trait]
impl OutreachWrites for Directory {
    async fn create_user(
        &self,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let mut outreach = self.get();
        let operation = Operation::CreateUser {
            email: attrs.email.clone(),
        };
        let user = match outreach.model.execute(&OutreachCall::Create(attrs.clone())) {
            Ok(user) => user,
            Err(detail) => {
                let taken = detail.contains("already been taken");
                outreach.refused += u32::from(taken);
                return Err(OutreachError::Validation {
                    operation,
                    detail,
                    pointer: taken.then(|| EMAIL_POINTER.to_string()),
                });
            }
        };
        let user = outreach.written(user.id, UserAction::Created);
        let ordinal = outreach.created;
        outreach.created += 1;
        if outreach.lose.contains(&ordinal) {
            // The user exists; the answer never came back.
            outreach.lost += 1;
            return Err(OutreachError::Server {
                operation,
                status: 504,
                detail: "Gateway Timeout".into(),
            });
        }
        Ok(Reply {
            value: user,
            requests: 1,
        })
    }

    async fn update_user(
        &self,
        id: OutreachUserId,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let mut outreach = self.get();
        if let Err(detail) = outreach
            .model
            .execute(&OutreachCall::Update(id, attrs.clone()))
        {
            return Err(OutreachError::Validation {
                operation: Operation::UpdateUser { id },
                detail,
                pointer: None,
            });
        }
        Ok(Reply {
            value: outreach.written(id, UserAction::Updated),
            requests: 1,
        })
    }

    async fn find_users_by_email(
        &self,
        email: &str,
    ) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
        let mut outreach = self.get();
        outreach.model.calls += 1;
        let wanted = normalize_email(email);
        let value = outreach
            .model
            .users
            .values()
            .filter(|u| u.email_normalized() == wanted)
            .cloned()
            .collect();
        Ok(Reply { value, requests: 1 })
    }
}

/// usersync's state and Outreach during one run.
struct World {
    state: SyncState,
    outreach: Directory,
    log: Vec<DecisionRecord>,
    /// The events applied, in order (failed attempts left out).
    applied: Vec<UserChange>,
    retries: u32,
}

impl World {
    fn new(history: &History, lose: BTreeSet<usize>) -> Self {
        let (state, users) = history.start();
        World {
            state,
            outreach: Directory::new(users, lose),
            log: Vec::new(),
            applied: Vec::new(),
            retries: 0,
        }
    }

    /// One attempt, as the processor makes it: on failure nothing of the event is kept.
    fn attempt(
        &mut self,
        settings: &SyncSettings,
        event: &UserChange,
    ) -> Result<Vec<DecisionRecord>, Box<ApplyError>> {
        let mut after = self.state.clone();
        let records = block_on(apply_event(
            settings,
            &mut after,
            &self.outreach,
            event,
            event.observed_at,
        ))
        .map_err(Box::new)?;
        self.state = after;
        self.log.extend(records.iter().cloned());
        self.applied.push(event.clone());
        Ok(records)
    }

    fn count(&self, action: Action) -> usize {
        self.log.iter().filter(|r| r.action == action).count()
    }

    fn holder(&self, o: OutreachUserId) -> Option<SalesforceId> {
        self.state
            .mapping_of_outreach(o)
            .map(|m| m.salesforce_user_id.clone())
    }
}

/// Delivers `delivery` of `history`, calling `after_each` after every applied event. A
/// retryable failure (a lost reply) is tried again at once, as Kafka holds the partition; any
/// other failure fails the case.
fn deliver(
    settings: &SyncSettings,
    history: &History,
    events: &[UserChange],
    delivery: &Delivery,
    mut after_each: impl FnMut(&World) -> Result<(), TestCaseError>,
) -> Result<World, TestCaseError> {
    let mut world = World::new(history, delivery.lost_replies.clone());
    let order = delivery.order(events.len());
    let mut queue: VecDeque<UserChange> = order.iter().map(|&i| events[i].clone()).collect();
    // Echoes waiting for their turn, by the tick they are due.
    let mut pending: Vec<(usize, UserChange)> = Vec::new();
    let mut echoes = 0;
    let limit = 20 * (order.len() + 10);
    for tick in 0.. {
        prop_assert!(
            tick < limit,
            "the run did not settle after {} deliveries",
            tick
        );
        let event = if pending.first().is_some_and(|(due, _)| *due <= tick) {
            pending.remove(0).1
        } else if let Some(event) = queue.pop_front() {
            event
        } else if !pending.is_empty() {
            pending.remove(0).1
        } else {
            break;
        };
        match world.attempt(settings, &event) {
            Ok(_) => after_each(&world)?,
            Err(e) if matches!(&*e, ApplyError::Outreach { source, .. } if source.is_retryable()) =>
            {
                world.retries += 1;
                queue.push_front(event);
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "{} could not be applied: {e}",
                    event.event_id
                )));
            }
        }
        let written = std::mem::take(&mut world.outreach.get().echoes);
        for echo in written {
            let (delay, twice) = delivery.echoes[echoes % delivery.echoes.len()];
            echoes += 1;
            let copies = if twice { 2 } else { 1 };
            for copy in 0..copies {
                let due = tick + 1 + delay + copy;
                let place = pending.partition_point(|(d, _)| *d <= due);
                pending.insert(place, (due, echo.clone()));
            }
        }
    }
    Ok(world)
}

// ----- Settings and configuration -----

/// Any valid settings.
fn settings() -> impl Strategy<Value = SyncSettings> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(Dedupe::Off),
            Just(Dedupe::Inbound),
            Just(Dedupe::Outbound),
            Just(Dedupe::Both)
        ],
    )
        .prop_map(|(create, update, remap, lock, dedupe)| {
            let mut s = SyncSettings::default();
            s.user_mapping.inbound_create = create;
            s.user_mapping.inbound_update = update;
            s.user_mapping.lock_when_inactive = lock;
            s.email_field.dedupe = dedupe;
            s.user_mapping.auto_remap_on_inactive = remap && create && dedupe == Dedupe::Both;
            s
        })
        .prop_filter("valid settings", |s| s.validate().is_ok())
}

/// Settings under which every email can reach its Outreach user (create on, matching by email
/// inbound), with automatic remap in most cases; the rest random.
fn converging_settings() -> impl Strategy<Value = SyncSettings> {
    (
        prop::bool::weighted(0.8),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0..6usize,
    )
        .prop_map(|(remap, both, update, lock, mirror)| {
            let mut s = SyncSettings::default();
            s.user_mapping.auto_remap_on_inactive = remap;
            s.email_field.dedupe = if remap || both {
                Dedupe::Both
            } else {
                Dedupe::Inbound
            };
            s.user_mapping.inbound_update = update;
            s.user_mapping.lock_when_inactive = lock;
            s.user_mapping.mirror_id_field = match mirror {
                0 => String::new(),
                n => format!("custom{n}"),
            };
            s
        })
}

/// `PROPTEST_CASES`, else 2 000: about a second per property in the test profile.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // The explicit runners below do not get this from the `proptest!` macro; without it a
        // failure would be neither saved nor replayed.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    }
}

// ----- What must hold -----

/// Checks the 1:1 rule against both sides: the state's two indexes agree, and every mapped
/// Outreach user exists in Outreach.
fn assert_one_to_one(world: &World) -> Result<(), TestCaseError> {
    let outreach = world.outreach.get();
    let mut seen = BTreeSet::new();
    for m in world.state.mappings() {
        prop_assert!(
            seen.insert(m.salesforce_user_id.clone()),
            "{:?} mapped twice",
            m.salesforce_user_id
        );
        prop_assert_eq!(
            world
                .state
                .mapping_of_salesforce(&m.salesforce_user_id)
                .map(|x| x.outreach_user_id),
            Some(m.outreach_user_id)
        );
        prop_assert!(outreach.model.users.contains_key(&m.outreach_user_id));
    }
    Ok(())
}

/// Creates: at most one per email, none for an email that had an Outreach user before the run,
/// and a refusal only for an email usersync could not have known (a create it plans for a user
/// in its own index would be a bug the refusal merely hides).
fn assert_creates(history: &History, world: &World) -> Result<(), TestCaseError> {
    let (existed, indexed) = history.seeded();
    for (email, creates) in &world.outreach.get().model.creates {
        prop_assert!(*creates <= 1, "{} created {} times", email, creates);
        prop_assert!(
            !existed.contains(email),
            "{} created though it existed",
            email
        );
    }
    for r in world
        .log
        .iter()
        .filter(|r| r.reason == Reason::OutreachRefusedCreate)
    {
        let email = r.email.clone().unwrap_or_default();
        prop_assert!(
            !indexed.contains(&email),
            "a create for {} was planned though the index held its Outreach user",
            email
        );
    }
    Ok(())
}

/// A Salesforce user's final state, as the generator played it.
#[derive(Debug, Clone)]
struct Final {
    group: usize,
    active: bool,
    first_name: String,
    last_name: String,
    /// Mapped before the run to the Outreach user of this group.
    premapped: Option<usize>,
    /// Whether usersync must know the user's last email (see `Played::deleted_last`).
    email_known: bool,
}

/// What the history says each email must end as, and where it says nothing.
#[derive(Debug)]
struct Expected {
    users: BTreeMap<SalesforceId, Final>,
    /// Groups a link of a user that ends active with another email may hold. The link is kept
    /// on purpose (`email_diverged`: the API cannot change an Outreach email), but whether it
    /// was ever made depends on which of the user's states a delivery applied before the move:
    /// these groups have no order-independent end. They are every group such a user was active
    /// in, its final group, and its pre-mapped group.
    unsettled: BTreeSet<usize>,
    /// Groups more than one user was ever active in (or whose Outreach user was pre-mapped to
    /// another): without automatic remap, whoever got the Outreach user first keeps it.
    contested: BTreeSet<usize>,
}

impl Expected {
    fn new(history: &History, played: &Played) -> Self {
        let premapped = history.premapped();
        let premapped_group = |n: usize| premapped.iter().find(|(_, u)| **u == n).map(|(g, _)| *g);
        let mut users = BTreeMap::new();
        let mut unsettled = BTreeSet::new();
        let mut claimants: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (n, truth) in played.finals.iter().enumerate() {
            let pre = premapped_group(n);
            users.insert(
                user_id(n as u32 + 1),
                Final {
                    group: truth.group,
                    active: truth.active,
                    first_name: first_name(n, truth.renames),
                    last_name: last_name(n),
                    premapped: pre,
                    email_known: !played.deleted_last[n],
                },
            );
            let mut groups = played.active_in[n].clone();
            for g in &groups {
                claimants.entry(*g).or_default().insert(n);
            }
            if truth.active {
                groups.insert(truth.group);
                groups.extend(pre);
                if groups.len() > 1 {
                    unsettled.extend(groups);
                }
            }
        }
        for (g, n) in &premapped {
            claimants.entry(*g).or_default().insert(*n);
        }
        let contested = claimants
            .into_iter()
            .filter(|(_, users)| users.len() > 1)
            .map(|(g, _)| g)
            .collect();
        Expected {
            users,
            unsettled,
            contested,
        }
    }

    fn active_in(&self, g: usize) -> Vec<&SalesforceId> {
        self.users
            .iter()
            .filter(|(_, f)| f.active && f.group == g)
            .map(|(id, _)| id)
            .collect()
    }

    fn of(&self, id: &SalesforceId) -> &Final {
        &self.users[id]
    }
}

/// What an end state shows of one email, limited to what the history determines, so that two
/// deliveries can be compared field by field. `None` fields are not determined.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    exists: bool,
    holder: Option<Option<SalesforceId>>,
    names: Option<(Option<String>, Option<String>)>,
    locked: Option<bool>,
}

/// Judges one end state against the history; returns, per email, what the history determines
/// of it, for the comparison of two deliveries.
fn check_end(
    settings: &SyncSettings,
    history: &History,
    expected: &Expected,
    world: &World,
) -> Result<BTreeMap<usize, Seen>, TestCaseError> {
    assert_one_to_one(world)?;
    assert_creates(history, world)?;
    let m = &settings.user_mapping;
    let mirror = settings.mirror_slot().expect("valid settings");
    let users = world.outreach.get().model.users.clone();

    // usersync's view of every Salesforce user ends where the user did, as far as its events
    // tell: a user that ends deleted is inactive, with whatever email usersync last knew.
    for (id, f) in &expected.users {
        let Some(known) = world.state.salesforce_user(id) else {
            return Err(TestCaseError::fail(format!("{id} was never recorded")));
        };
        prop_assert_eq!(known.is_active, f.active, "{} active", id);
        if f.email_known {
            prop_assert_eq!(
                known.email_normalized(),
                Some(group_email(f.group)),
                "{} email",
                id
            );
        }
    }

    // A lock is usersync's answer to an inactive holder and nothing else, on every email.
    for o in users.values() {
        let holder = world.holder(o.id);
        let inactive_holder = holder.as_ref().is_some_and(|h| !expected.of(h).active);
        prop_assert_eq!(
            o.locked,
            m.lock_when_inactive && inactive_holder,
            "Outreach user {} ({}) locked, held by {:?}",
            o.id,
            &o.email,
            holder
        );
    }

    let mut seen = BTreeMap::new();
    for g in 0..EMAILS.len() {
        let email = group_email(g);
        let group: Vec<&OutreachUser> = users
            .values()
            .filter(|o| o.email_normalized() == email)
            .collect();
        prop_assert!(
            group.len() <= 1,
            "{} has {} Outreach users",
            email,
            group.len()
        );
        if expected.unsettled.contains(&g) {
            continue;
        }
        let active = expected.active_in(g);
        let o = group.first();
        if !active.is_empty() {
            prop_assert!(
                o.is_some(),
                "{} has active users {:?} but no Outreach user",
                email,
                active
            );
        }
        let Some(o) = o else {
            continue;
        };
        let holder = world.holder(o.id);
        if let Some(h) = &holder
            && expected.of(h).active
        {
            prop_assert_eq!(
                expected.of(h).group,
                g,
                "{} is held by {}, active with another email",
                &email,
                h
            );
        }
        if m.auto_remap_on_inactive && !active.is_empty() {
            prop_assert!(
                holder.as_ref().is_some_and(|h| active.contains(&h)),
                "{} is held by {:?}, not by one of its active users {:?}",
                email,
                holder,
                active
            );
        }
        let sole = (active.len() == 1
            && (m.auto_remap_on_inactive || !expected.contested.contains(&g)))
        .then(|| active[0].clone());
        if let Some(y) = &sole {
            prop_assert_eq!(
                holder.as_ref(),
                Some(y),
                "{} should be held by its only active user",
                &email
            );
        }
        let names = (o.first_name.clone(), o.last_name.clone());
        let active_holder = holder.as_ref().filter(|h| expected.of(h).active);
        if m.inbound_update
            && let Some(h) = active_holder
        {
            let f = expected.of(h);
            prop_assert_eq!(
                &names,
                &(Some(f.first_name.clone()), Some(f.last_name.clone())),
                "{}: names of Outreach user {} held by {}",
                &email,
                o.id,
                h
            );
        }
        if let (Some(slot), Some(h)) = (mirror, &holder) {
            // Links, creates and remaps write the id; a mapping that predates the run gets it
            // only from its user's own event with updates on.
            let made_by_usersync = expected.of(h).premapped != Some(g);
            if made_by_usersync || (m.inbound_update && active_holder.is_some()) {
                prop_assert_eq!(
                    o.custom[slot].as_deref(),
                    Some(h.as_str()),
                    "{}: id mirror of Outreach user {}",
                    &email,
                    o.id
                );
            }
        }
        if !active.is_empty() {
            seen.insert(
                g,
                Seen {
                    exists: true,
                    holder: sole.as_ref().map(|_| holder.clone()),
                    names: (sole.is_some() && m.inbound_update).then_some(names),
                    // Without remap an inactive first holder may keep (and lock) the user.
                    locked: (m.auto_remap_on_inactive || sole.is_some()).then_some(o.locked),
                },
            );
        }
    }
    Ok(seen)
}

/// What a batch of convergence cases exercised, so that a generator that drifts into trivial
/// histories fails loudly instead of passing.
#[derive(Debug, Default)]
struct Tally {
    runs: u32,
    /// Emails judged (summed over runs), and emails left out as unsettled.
    judged: u32,
    unsettled: u32,
    /// Runs in which some email was judged to be held by its only active user.
    sole_holder: u32,
    refused: u32,
    lost_reply: u32,
    webhook_applied: u32,
    snapshot_applied: u32,
    delete_applied: u32,
    premapped: u32,
    remap: u32,
    lock: u32,
    unlock: u32,
    link: u32,
}

impl Tally {
    fn add(
        &mut self,
        history: &History,
        expected: &Expected,
        ends: &[World],
        seen: &BTreeMap<usize, Seen>,
    ) {
        let any = |f: &dyn Fn(&World) -> bool| u32::from(ends.iter().any(f));
        let fresh =
            |r: &DecisionRecord| !matches!(r.reason, Reason::StaleEvent | Reason::DuplicateEvent);
        self.runs += 1;
        let unsettled = expected.unsettled.len() as u32;
        self.unsettled += unsettled;
        self.judged += EMAILS.len() as u32 - unsettled;
        let sole = seen.values().any(|s| matches!(s.holder, Some(Some(_))));
        self.sole_holder += u32::from(sole);
        self.refused += any(&|w| w.outreach.get().refused > 0);
        self.lost_reply += any(&|w| w.retries > 0);
        self.webhook_applied += any(&|w| {
            w.log
                .iter()
                .any(|r| r.event_id.starts_with("or:") && fresh(r))
        });
        self.snapshot_applied += any(&|w| {
            w.log
                .iter()
                .any(|r| r.event_id.contains(":snapshot:") && fresh(r))
        });
        self.delete_applied += any(&|w| {
            w.log.iter().any(|r| {
                fresh(r)
                    && w.applied
                        .iter()
                        .any(|e| e.change == ChangeKind::Delete && e.event_id == r.event_id)
            })
        });
        self.premapped += u32::from(!history.premapped().is_empty());
        self.remap += any(&|w| w.count(Action::Remap) > 0);
        self.lock += any(&|w| w.count(Action::Lock) > 0);
        self.unlock += any(&|w| w.count(Action::Unlock) > 0);
        self.link += any(&|w| w.count(Action::Link) > 0);
    }

    /// Fails when a share falls below its floor. Floors are about half of what 200 000 cases
    /// measured; under 1 000 runs chance could dip below them, so nothing is claimed there.
    fn assert_floors(&self, floors: &[(&str, u32, f64)]) {
        eprintln!("convergence coverage: {self:?}");
        if self.runs < 1_000 {
            return;
        }
        for (name, count, floor) in floors {
            let share = f64::from(*count) / f64::from(self.runs);
            assert!(
                share >= *floor,
                "only {:.1}% of the runs exercised {name} (want at least {:.1}%): {self:?}",
                share * 100.0,
                floor * 100.0
            );
        }
    }
}

/// Convergence: two deliveries of one history end as the history says, email by email, and
/// agree with each other on everything the history determines.
fn run_convergence(shape: Shape) {
    let strategy = (
        converging_settings(),
        history(shape),
        delivery(),
        delivery(),
    );
    let tally = RefCell::new(Tally::default());
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(settings, history, a, b)| {
        let played = history.play();
        converge(shape, &settings, &history, &played, [&a, &b], &tally).map_err(|e| match e {
            TestCaseError::Fail(why) => TestCaseError::fail(format!(
                "{why}\n  delivery a: {}\n  delivery b: {}",
                a.describe(&played.events),
                b.describe(&played.events)
            )),
            reject => reject,
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = tally.into_inner();
    // Emails judged, in runs' worth (three emails a run): about 70 % with email changes.
    let judged = t.judged / EMAILS.len() as u32;
    t.assert_floors(&[
        ("judged emails", judged, 0.35),
        ("an email held by its only active user", t.sole_holder, 0.2),
        ("a refused create", t.refused, 0.2),
        ("a lost reply", t.lost_reply, 0.08),
        ("an Outreach webhook", t.webhook_applied, 0.15),
        ("a snapshot", t.snapshot_applied, 0.35),
        ("a delete", t.delete_applied, 0.1),
        ("a mapping from before the run", t.premapped, 0.15),
        ("a remap", t.remap, 0.08),
        ("a lock", t.lock, 0.12),
        ("an unlock", t.unlock, 0.04),
        ("a link", t.link, 0.3),
    ]);
}

/// One convergence case: both deliveries judged against the history, then against each other.
fn converge(
    shape: Shape,
    settings: &SyncSettings,
    history: &History,
    played: &Played,
    deliveries: [&Delivery; 2],
    tally: &RefCell<Tally>,
) -> Result<(), TestCaseError> {
    let expected = Expected::new(history, played);
    if !shape.email_changes {
        prop_assert!(
            expected.unsettled.is_empty(),
            "nothing diverges without email changes: {:?}",
            expected.unsettled
        );
    }
    let mut ends = Vec::new();
    let mut views = Vec::new();
    for d in deliveries {
        let world = deliver(settings, history, &played.events, d, |_| Ok(()))?;
        prop_assert!(
            world.log.iter().any(|r| r.reason == Reason::DuplicateEvent),
            "the delivery repeated an event, which must read as a duplicate"
        );
        views.push(check_end(settings, history, &expected, &world)?);
        ends.push(world);
    }
    prop_assert_eq!(
        &views[0],
        &views[1],
        "the two deliveries disagree on what the history determines"
    );
    tally.borrow_mut().add(history, &expected, &ends, &views[0]);
    Ok(())
}

/// Invariant 4 without email changes (respellings and everything else included): every email
/// is judged, since nothing can diverge.
#[test]
fn delivery_order_does_not_change_the_end_state() {
    run_convergence(Shape {
        email_changes: false,
    });
}

/// Invariant 4 with email changes: every email but those a still-active user's kept link may
/// hold (see `Expected::unsettled`).
#[test]
fn delivery_order_does_not_change_the_end_state_with_email_changes() {
    run_convergence(Shape {
        email_changes: true,
    });
}

/// Any valid settings, a history with email changes, one delivery.
fn one_run() -> impl Strategy<Value = (SyncSettings, History, Delivery)> {
    (
        settings(),
        history(Shape {
            email_changes: true,
        }),
        delivery(),
    )
}

proptest! {
    #![proptest_config(config())]

    /// Invariant 1: the mapping is 1:1 at every step.
    #[test]
    fn mapping_is_one_to_one_at_every_step((settings, history, order) in one_run()) {
        let played = history.play();
        deliver(&settings, &history, &played.events, &order, assert_one_to_one)?;
    }

    /// Invariant 2: at most one Outreach user is created per email, none for an email that had
    /// one, and none planned while usersync's index holds one.
    #[test]
    fn at_most_one_create_per_email((settings, history, order) in one_run()) {
        let played = history.play();
        let world = deliver(&settings, &history, &played.events, &order, |_| Ok(()))?;
        assert_creates(&history, &world)?;
    }

    /// Invariant 3: replaying any prefix, any number of times, changes nothing and calls nothing.
    #[test]
    fn replaying_a_prefix_changes_nothing(
        ((settings, history, order), prefix, times) in (one_run(), any::<Index>(), 1..4usize)
    ) {
        let played = history.play();
        let mut world = deliver(&settings, &history, &played.events, &order, |_| Ok(()))?;
        let mappings: Vec<Mapping> = world.state.mappings().cloned().collect();
        let users = world.outreach.get().model.users.clone();
        let calls = world.outreach.get().model.calls;
        let prefix: Vec<UserChange> =
            world.applied[..prefix.index(world.applied.len() + 1)].to_vec();
        for _ in 0..times {
            for event in &prefix {
                let records = world
                    .attempt(&settings, event)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(records.iter().all(|r| r.reason == Reason::DuplicateEvent && r.outreach_calls == 0));
            }
        }
        prop_assert_eq!(mappings, world.state.mappings().cloned().collect::<Vec<_>>());
        prop_assert_eq!(&users, &world.outreach.get().model.users);
        prop_assert_eq!(calls, world.outreach.get().model.calls);
    }

    /// Invariant 5: with auto remap off, a mapping never moves to another Salesforce user.
    #[test]
    fn without_auto_remap_mappings_never_move((settings, history, order) in one_run()) {
        let mut settings = settings;
        settings.user_mapping.auto_remap_on_inactive = false;
        let played = history.play();
        let mut first = BTreeMap::<OutreachUserId, SalesforceId>::new();
        let world = deliver(&settings, &history, &played.events, &order, |world| {
            for m in world.state.mappings() {
                let held = first.entry(m.outreach_user_id).or_insert_with(|| m.salesforce_user_id.clone());
                prop_assert_eq!(&*held, &m.salesforce_user_id, "Outreach user {} moved", m.outreach_user_id);
            }
            Ok(())
        })?;
        prop_assert_eq!(world.count(Action::Remap), 0);
        for (g, n) in history.premapped() {
            prop_assert_eq!(world.holder(OutreachUserId(g as i64 + 1)), Some(user_id(n as u32 + 1)));
        }
    }

    /// Invariant 6: inbound_create = false creates nothing; dedupe = off links nothing.
    #[test]
    fn switched_off_means_nothing_happens((settings, history, order) in one_run()) {
        let played = history.play();
        let mut no_create = settings.clone();
        no_create.user_mapping.inbound_create = false;
        no_create.user_mapping.auto_remap_on_inactive = false;
        let world = deliver(&no_create, &history, &played.events, &order, |_| Ok(()))?;
        prop_assert_eq!(world.count(Action::Create), 0);
        prop_assert!(world.outreach.get().model.creates.is_empty());

        let mut no_dedupe = settings;
        no_dedupe.email_field.dedupe = Dedupe::Off;
        no_dedupe.user_mapping.auto_remap_on_inactive = false;
        let world = deliver(&no_dedupe, &history, &played.events, &order, |_| Ok(()))?;
        prop_assert_eq!(world.count(Action::Link), 0);
        for (g, seed) in history.outreach.iter().enumerate() {
            if matches!(seed, Seed::Indexed(None) | Seed::Hidden(_)) {
                let o = OutreachUserId(g as i64 + 1);
                prop_assert!(world.holder(o).is_none(), "seeded user {} was linked", o);
            }
        }
    }
}

#[test]
fn the_generator_builds_valid_events_in_history_order() {
    let h = History {
        users: vec![(0, 0, true), (1, 1, false)],
        outreach: [Seed::Indexed(Some(1)), Seed::Absent, Seed::Hidden(true)],
        changes: vec![
            Change {
                user: 0,
                step: Step::ChangeEmail(2, 1),
                reread: false,
            },
            Change {
                user: 1,
                step: Step::ToggleActive,
                reread: true,
            },
            Change {
                user: 7,
                step: Step::Rename,
                reread: false,
            },
            Change {
                user: 0,
                step: Step::Delete,
                reread: false,
            },
            Change {
                user: 0,
                step: Step::Snapshot,
                reread: false,
            },
            Change {
                user: 0,
                step: Step::Undelete,
                reread: false,
            },
        ],
        preloaded: true,
    };
    let played = h.play();
    let events = &played.events;
    assert_eq!(events.len(), 9);
    for e in events {
        e.validate().unwrap();
        crate::model::event::tests::assert_matches_schema(&serde_json::to_value(e).unwrap());
    }
    // Salesforce changes are in commit order, each newer than the one before for its user.
    let salesforce: Vec<&UserChange> = events
        .iter()
        .filter(|e| e.source == Source::Salesforce)
        .collect();
    for pair in salesforce.windows(2) {
        if pair[0].user_id == pair[1].user_id {
            assert_eq!(
                pair[1].position().compare(&pair[0].position()),
                std::cmp::Ordering::Greater,
                "{} after {}",
                pair[1],
                pair[0]
            );
        }
    }
    assert_eq!(
        events[2].user.email_normalized.as_deref(),
        Some("cy@acme.com")
    );
    assert_eq!(events[3].change, ChangeKind::Snapshot, "a gap re-read");
    assert_eq!(events[3].user.is_active, Some(true));
    assert_eq!(
        events[4].user_id,
        user_id(2).to_string(),
        "7 wraps to user 2"
    );
    assert_eq!(events[5].change, ChangeKind::Delete);
    assert_eq!(events[5].user.email, None, "a delete carries no state");
    assert_eq!(events[6].change, ChangeKind::Snapshot);
    assert_eq!(
        events[6].user.is_active,
        Some(false),
        "read after the delete"
    );
    assert_eq!(events[7].change, ChangeKind::Undelete);
    assert_eq!(events[8].source, Source::Outreach);
    assert_eq!(events[8].user_id, "3");
    assert_eq!(
        events[8].user.email_normalized.as_deref(),
        Some("cy@acme.com")
    );
    assert_eq!(played.finals[0].group, 2);
    assert!(played.finals[0].active);
    assert_eq!(played.active_in[0], BTreeSet::from([0, 2]));
    assert_eq!(played.active_in[1], BTreeSet::from([1]));

    let (state, outreach) = h.start();
    assert_eq!(outreach.len(), 2, "the indexed and the hidden user");
    assert!(state.outreach_user(OutreachUserId(3)).is_none(), "hidden");
    assert_eq!(
        state
            .mapping_of_outreach(OutreachUserId(1))
            .map(|m| m.salesforce_user_id.clone()),
        Some(user_id(2))
    );
    assert!(state.salesforce_user(&user_id(2)).is_some(), "preloaded");

    let expected = Expected::new(&h, &played);
    // User 1 ends active in cy@ after being active in ann@; user 2 ends active in bob@ but was
    // mapped to ann@'s Outreach user before the run.
    assert_eq!(expected.unsettled, BTreeSet::from([0, 1, 2]));
}

#[test]
fn a_lost_reply_is_retried_and_links_the_user_it_made() {
    let h = History {
        users: vec![(0, 1, true)],
        changes: vec![],
        outreach: [Seed::Absent, Seed::Absent, Seed::Absent],
        preloaded: false,
    };
    let played = h.play();
    let d = Delivery {
        keys: vec![0; MAX_EVENTS],
        repeats: vec![(0, 2)],
        lost_replies: BTreeSet::from([0]),
        echoes: vec![(3, false)],
    };
    let world = deliver(&SyncSettings::default(), &h, &played.events, &d, |_| Ok(())).unwrap();
    assert_eq!(world.retries, 1);
    assert_eq!(
        world.outreach.get().refused,
        1,
        "the retry's create was refused"
    );
    assert_eq!(world.outreach.get().model.users.len(), 1, "no second user");
    assert_eq!(world.holder(OutreachUserId(1)), Some(user_id(1)));
    let reasons: Vec<Reason> = world.log.iter().map(|r| r.reason).collect();
    // The user it made already carries the names and the id, so the link costs no PATCH. The
    // create's echo arrives last with the updatedAt the lookup already gave the index: stale.
    assert_eq!(
        reasons,
        [
            Reason::OutreachRefusedCreate,
            Reason::EmailMatch,
            Reason::DuplicateEvent,
            Reason::StaleEvent,
        ]
    );
    assert_eq!(world.log[1].outreach_calls, 0);
}
