//! A user's full state read through REST, as a `snapshot` event.
//!
//! Gap re-reads, overflow and expired-replay resyncs, and the initial load all read users with
//! SOQL instead of receiving their changes, and publish what they read as `snapshot` events
//! (docs/event-schema.md). A snapshot is placed in its user's history by the stream position
//! it was read at ([`ReadPosition`], carried in `origin`) and by its read time, never by the
//! user's `LastModifiedDate`: REST gives that to the whole second, so a re-read made after a
//! change committed at 11:30:46.500 could otherwise sort before it and be skipped as stale.

use chrono::{DateTime, Utc};

use crate::model::event::{
    ChangeKind, Origin, SCHEMA, Source, UserChange, UserState, normalize_email, snapshot_event_id,
};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

/// The stream position a REST read was made at: every change up to this commit is in what it
/// read. For a re-read, the event that asked for it (a `GAP_*` event, an UPDATE that could not
/// be merged, a `GAP_OVERFLOW`); for a resync or the initial load, the newest commit the
/// subscriber had seen before the read, with the replay id it resumes after. Unknown parts are
/// `None`: a first read before the org's stream delivered anything has no commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPosition {
    pub commit_number: Option<i64>,
    pub commit_timestamp: Option<DateTime<Utc>>,
    /// In the event's form: Pub/Sub bytes as lower-case hex, CometD ids in decimal.
    pub replay_id: Option<String>,
    /// The change type of the event that asked for the read (`GAP_UPDATE`, …), for audit.
    pub change_type: Option<String>,
    pub transaction_key: Option<String>,
}

/// The snapshot event of `user` in org `org_id`, read at `read_at` at stream position `at`.
pub fn snapshot(
    user: &SalesforceUser,
    org_id: &SalesforceId,
    at: &ReadPosition,
    read_at: DateTime<Utc>,
) -> UserChange {
    UserChange {
        schema: SCHEMA.to_owned(),
        event_id: snapshot_event_id(org_id.as_str(), &user.id, at.commit_number, read_at),
        source: Source::Salesforce,
        org_id: Some(org_id.to_string()),
        user_id: user.id.to_string(),
        change: ChangeKind::Snapshot,
        changed_fields: Vec::new(),
        user: UserState {
            email: user.email.clone(),
            email_normalized: user.email.as_deref().map(normalize_email),
            username: user.username.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            title: user.title.clone(),
            is_active: Some(user.is_active),
            created_date: user.created_date,
            last_modified_date: user.last_modified_date,
            locked: None,
        },
        origin: Origin {
            transport: "rest".to_owned(),
            replay_id: at.replay_id.clone(),
            change_type: at.change_type.clone(),
            transaction_key: at.transaction_key.clone(),
            commit_timestamp: at.commit_timestamp,
            commit_number: at.commit_number,
            ..Origin::default()
        },
        observed_at: read_at,
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;
    use crate::model::event::{Origin, Position};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn user() -> SalesforceUser {
        SalesforceUser {
            id: SalesforceId::parse("0055f00000GBZR4AAP").unwrap(),
            email: Some("Olga.Brown@Example.com ".into()),
            username: Some("olga@example.com.prod".into()),
            first_name: Some("Olga".into()),
            last_name: Some("Brown".into()),
            title: None,
            is_active: false,
            created_date: None,
            last_modified_date: Some(t("2024-06-18T11:30:46Z")),
            applied: None,
        }
    }

    fn org() -> SalesforceId {
        SalesforceId::parse("00D5g000004ZbcdEAC").unwrap()
    }

    fn gap_at(commit: i64, at: &str) -> ReadPosition {
        ReadPosition {
            commit_number: Some(commit),
            commit_timestamp: Some(t(at)),
            replay_id: Some("000000000114c17e0000".into()),
            change_type: Some("GAP_UPDATE".into()),
            transaction_key: Some("0006ad3c-55f1-2bd0-1c2a-7d1e3f9a0b43".into()),
        }
    }

    #[test]
    fn a_snapshot_is_a_valid_event_that_carries_its_read_position() {
        let read_at = t("2024-06-18T11:30:47.120Z");
        let event = snapshot(
            &user(),
            &org(),
            &gap_at(1_100_662_289_050, "2024-06-18T11:30:46.900Z"),
            read_at,
        );
        event.validate().expect("valid user_change.v1");
        crate::model::event::tests::assert_matches_schema(&serde_json::to_value(&event).unwrap());
        assert_eq!(
            event.event_id,
            "sf:00D5g000004ZbcdEAC:0055f00000GBZR4AAP:snapshot:1100662289050:\
             2024-06-18T11:30:47.120000Z"
        );
        assert_eq!(event.change, ChangeKind::Snapshot);
        assert_eq!(
            event.user.email_normalized.as_deref(),
            Some("olga.brown@example.com")
        );
        assert_eq!(event.origin.transport, "rest");
        assert_eq!(event.origin.commit_number, Some(1_100_662_289_050));
        assert_eq!(
            event.origin.replay_id.as_deref(),
            Some("000000000114c17e0000")
        );
        assert_eq!(event.origin.change_type.as_deref(), Some("GAP_UPDATE"));
        assert_eq!(event.origin.sequence_number, None);
        assert_eq!(event.observed_at, read_at);
        assert_eq!(event.kafka_key(), "olga.brown@example.com");
        let json = serde_json::to_vec(&event).unwrap();
        assert_eq!(UserChange::from_json(&json).unwrap(), event);
    }

    #[test]
    fn each_read_is_its_own_event() {
        let at = gap_at(7, "2024-06-18T11:30:46.900Z");
        let first = snapshot(&user(), &org(), &at, t("2024-06-18T11:30:47.100Z"));
        let again = snapshot(&user(), &org(), &at, t("2024-06-18T11:30:47.100Z"));
        let later = snapshot(&user(), &org(), &at, t("2024-06-18T11:30:47.900Z"));
        assert_eq!(first.event_id, again.event_id, "one read, one id");
        assert_ne!(first.event_id, later.event_id);
        let unplaced = snapshot(
            &user(),
            &org(),
            &ReadPosition::default(),
            t("2024-06-18T11:30:47.100Z"),
        );
        assert_eq!(
            unplaced.event_id,
            "sf:00D5g000004ZbcdEAC:0055f00000GBZR4AAP:snapshot:2024-06-18T11:30:47.100000Z"
        );
    }

    /// The loss this placement prevents: an UPDATE committed at 46.500, then a GAP_UPDATE
    /// committed at 46.900 whose re-read shows `LastModifiedDate` 46.000 (REST's whole
    /// seconds). The re-read must sort after the UPDATE.
    #[test]
    fn a_gap_re_read_sorts_after_an_earlier_change_of_the_same_second() {
        let update = UserChange {
            change: ChangeKind::Update,
            changed_fields: vec!["LastName".into(), "LastModifiedDate".into()],
            origin: Origin {
                transport: "pubsub".into(),
                commit_number: Some(1_100_662_289_041),
                commit_timestamp: Some(t("2024-06-18T11:30:46.500Z")),
                sequence_number: Some(1),
                ..Origin::default()
            },
            ..snapshot(
                &user(),
                &org(),
                &ReadPosition::default(),
                t("2024-06-18T11:30:46.600Z"),
            )
        };
        let reread = snapshot(
            &user(),
            &org(),
            &gap_at(1_100_662_289_050, "2024-06-18T11:30:46.900Z"),
            t("2024-06-18T11:30:47.000Z"),
        );
        assert_eq!(
            reread.user.last_modified_date,
            Some(t("2024-06-18T11:30:46Z"))
        );
        assert_eq!(
            reread.position().compare(&update.position()),
            Ordering::Greater
        );
        assert_eq!(
            update.position().compare(&reread.position()),
            Ordering::Less
        );
    }

    #[test]
    fn a_snapshot_follows_every_change_of_its_commit_and_earlier_reads() {
        let at = gap_at(10, "2024-06-18T11:30:46.900Z");
        let read = |s: &str| snapshot(&user(), &org(), &at, t(s)).position();
        let change = Position {
            commit_number: Some(10),
            commit_timestamp: t("2024-06-18T11:30:46.900Z"),
            sequence_number: Some(3),
            read_at: None,
        };
        let first = read("2024-06-18T11:30:47Z");
        let second = read("2024-06-18T11:30:48Z");
        assert_eq!(first.compare(&change), Ordering::Greater);
        assert_eq!(change.compare(&first), Ordering::Less);
        assert_eq!(second.compare(&first), Ordering::Greater);
        assert_eq!(first.compare(&first), Ordering::Equal);
        let next = Position {
            commit_number: Some(11),
            ..change
        };
        assert_eq!(next.compare(&second), Ordering::Greater);
        // A first read, before any commit was seen: older than any change with a commit.
        let unplaced = snapshot(
            &user(),
            &org(),
            &ReadPosition::default(),
            t("2030-01-01T00:00:00Z"),
        )
        .position();
        assert_eq!(unplaced.compare(&change), Ordering::Less);
        assert_eq!(change.compare(&unplaced), Ordering::Greater);
    }

    /// A user's history as the subscriber reads it: ordinary changes come from the stream; a
    /// change behind a `GAP_*` event is only seen by re-reading the user, maybe after later
    /// commits; a resync reads the user while the stream lags behind. Commits fall several to
    /// a second, so REST's whole-second `LastModifiedDate` cannot tell them apart.
    mod history {
        use std::collections::BTreeMap;

        use chrono::TimeZone;
        use proptest::prelude::*;

        use super::super::*;
        use crate::engine::model::ModelSync;
        use crate::engine::model::events::{ORG, created, user_id};
        use crate::engine::settings::SyncSettings;

        /// One commit of the user: which field changed to what, and how it reached usersync.
        #[derive(Debug, Clone)]
        struct Commit {
            /// Milliseconds after the previous commit.
            after_ms: i64,
            title: bool,
            /// `Some(delay)`: a GAP event; the re-read happens `delay` commits later.
            gap: Option<usize>,
        }

        #[derive(Debug, Clone)]
        struct Run {
            commits: Vec<Commit>,
            /// After stream item `j`, a resync reads the user `lag` commits ahead of the stream.
            resyncs: BTreeMap<usize, usize>,
            /// Kafka redelivers: after published event `i`, the last `n` events again.
            redeliveries: BTreeMap<usize, usize>,
        }

        fn run() -> impl Strategy<Value = Run> {
            let commit = (
                0i64..700,
                any::<bool>(),
                prop::option::weighted(0.4, 0usize..3),
            )
                .prop_map(|(after_ms, title, gap)| Commit {
                    after_ms,
                    title,
                    gap,
                });
            (
                prop::collection::vec(commit, 1..16),
                prop::collection::btree_map(0usize..16, 0usize..3, 0..4),
                prop::collection::btree_map(0usize..40, 1usize..4, 0..3),
            )
                .prop_map(|(commits, resyncs, redeliveries)| Run {
                    commits,
                    resyncs,
                    redeliveries,
                })
        }

        /// The user's true state after each commit (index 0: after its creation).
        #[derive(Debug, Clone, PartialEq)]
        struct Truth {
            last_name: String,
            title: String,
            commit_number: i64,
            /// Epoch milliseconds of the commit.
            at: i64,
        }

        const START_MS: i64 = 1_718_710_246_000;

        fn ms(at: i64) -> DateTime<Utc> {
            Utc.timestamp_millis_opt(at).unwrap()
        }

        /// What REST shows: dates to the whole second.
        fn read(truth: &Truth) -> SalesforceUser {
            SalesforceUser {
                id: user_id(1),
                email: Some("ann@acme.com".into()),
                username: Some("ann@acme.com.prod".into()),
                first_name: Some("First1".into()),
                last_name: Some(truth.last_name.clone()),
                title: Some(truth.title.clone()),
                is_active: true,
                created_date: Some(ms(START_MS)),
                last_modified_date: Some(ms(truth.at.div_euclid(1000) * 1000)),
                applied: None,
            }
        }

        /// The events the subscriber publishes for `run`, in order, and the final truth.
        fn published(run: &Run) -> (Vec<UserChange>, Truth) {
            let org = SalesforceId::parse(ORG).unwrap();
            let mut truths = vec![Truth {
                last_name: "Last1".into(),
                title: "AE".into(),
                commit_number: 100,
                at: START_MS,
            }];
            for (n, commit) in run.commits.iter().enumerate() {
                let mut next = truths.last().unwrap().clone();
                let value = format!("v{n}");
                if commit.title {
                    next.title = value;
                } else {
                    next.last_name = value;
                }
                next.commit_number += 1 + n as i64;
                next.at += commit.after_ms;
                truths.push(next);
            }
            let last = truths.len() - 1;
            let mut create = created(1, "ann@acme.com", true, 100);
            create.user.last_name = Some("Last1".into());
            create.user.title = Some("AE".into());
            create.origin.commit_timestamp = Some(ms(START_MS));
            create.observed_at = ms(START_MS);
            let mut events = vec![create.clone()];
            // The subscriber's last-known state, into which UPDATEs are merged.
            let mut known = create.user.clone();
            let mut read_clock = START_MS;
            let mut read_at = |truth: &Truth| {
                read_clock = (read_clock + 1).max(truth.at + 1);
                ms(read_clock)
            };
            let resync =
                |j: usize,
                 lag: usize,
                 known: &mut UserState,
                 events: &mut Vec<UserChange>,
                 read_at: &mut dyn FnMut(&Truth) -> DateTime<Utc>| {
                    let seen = &truths[j];
                    let now = &truths[(j + lag).min(last)];
                    let at = ReadPosition {
                        commit_number: Some(seen.commit_number),
                        commit_timestamp: Some(ms(seen.at)),
                        ..ReadPosition::default()
                    };
                    let event = snapshot(&read(now), &org, &at, read_at(now));
                    *known = event.user.clone();
                    events.push(event);
                };
            if let Some(lag) = run.resyncs.get(&0) {
                resync(0, *lag, &mut known, &mut events, &mut read_at);
            }
            for (n, commit) in run.commits.iter().enumerate() {
                let j = n + 1;
                let truth = &truths[j];
                match commit.gap {
                    None => {
                        let mut event = create.clone();
                        event.change = ChangeKind::Update;
                        event.event_id = format!("sf:{ORG}:{}:tx{j}:1", user_id(1));
                        if commit.title {
                            known.title = Some(truth.title.clone());
                            event.changed_fields = vec!["Title".into()];
                        } else {
                            known.last_name = Some(truth.last_name.clone());
                            event.changed_fields = vec!["LastName".into()];
                        }
                        known.last_modified_date = Some(ms(truth.at.div_euclid(1000) * 1000));
                        event.user = known.clone();
                        event.origin.change_type = Some("UPDATE".into());
                        event.origin.transaction_key = Some(format!("tx{j}"));
                        event.origin.commit_number = Some(truth.commit_number);
                        event.origin.commit_timestamp = Some(ms(truth.at));
                        event.observed_at = ms(truth.at + 5);
                        events.push(event);
                    }
                    Some(delay) => {
                        let now = &truths[(j + delay).min(last)];
                        let at = ReadPosition {
                            commit_number: Some(truth.commit_number),
                            commit_timestamp: Some(ms(truth.at)),
                            change_type: Some("GAP_UPDATE".into()),
                            ..ReadPosition::default()
                        };
                        let event = snapshot(&read(now), &org, &at, read_at(now));
                        known = event.user.clone();
                        events.push(event);
                    }
                }
                if let Some(lag) = run.resyncs.get(&j) {
                    resync(j, *lag, &mut known, &mut events, &mut read_at);
                }
            }
            (events, truths[last].clone())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2_000)
            ))]

            /// Whatever the interleaving of stream changes, gap re-reads and resyncs, and
            /// whatever Kafka redelivers, the processor ends on the user's true last state:
            /// what the last REST read showed, or a later stream change.
            #[test]
            fn the_processor_ends_on_the_last_read_or_a_later_change(run in run()) {
                let (events, truth) = published(&run);
                let mut delivered = Vec::new();
                for (i, event) in events.iter().enumerate() {
                    delivered.push(event.clone());
                    if let Some(n) = run.redeliveries.get(&i) {
                        let from = delivered.len().saturating_sub(*n);
                        let again: Vec<UserChange> = delivered[from..].to_vec();
                        delivered.extend(again);
                    }
                }
                let settings = SyncSettings::default();
                let mut sync = ModelSync::default();
                for event in &delivered {
                    prop_assert!(event.validate().is_ok(), "{event:?}");
                    sync.apply(&settings, event);
                }
                let user = sync.state.salesforce_user(&user_id(1)).unwrap();
                prop_assert_eq!(user.last_name.as_deref(), Some(truth.last_name.as_str()));
                prop_assert_eq!(user.title.as_deref(), Some(truth.title.as_str()));
                let mapped = sync.state.mapping_of_salesforce(&user_id(1));
                prop_assert!(mapped.is_some(), "the active user has an Outreach user");
                let outreach = &sync.outreach.users[&mapped.unwrap().outreach_user_id];
                prop_assert_eq!(outreach.last_name.as_deref(), Some(truth.last_name.as_str()));
                prop_assert_eq!(outreach.title.as_deref(), Some(truth.title.as_str()));
            }
        }

        #[test]
        fn the_generator_makes_same_second_gaps() {
            let run = Run {
                commits: vec![
                    Commit {
                        after_ms: 500,
                        title: false,
                        gap: None,
                    },
                    Commit {
                        after_ms: 400,
                        title: false,
                        gap: Some(0),
                    },
                ],
                resyncs: BTreeMap::new(),
                redeliveries: BTreeMap::new(),
            };
            let (events, truth) = published(&run);
            let [_, update, reread] = events.as_slice() else {
                panic!("create, update, re-read: {events:?}")
            };
            assert_eq!(truth.last_name, "v1");
            assert_eq!(
                update.user.last_modified_date,
                reread.user.last_modified_date
            );
            assert_eq!(reread.user.last_name.as_deref(), Some("v1"));
        }
    }
}
