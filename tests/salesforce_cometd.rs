//! The CometD (Streaming API) client against the Salesforce simulator, over real sockets.
//!
//! Each failure a public CometD client is known to have had (docs/salesforce.md,
//! "Failures seen in other clients") has a test here named after what must happen instead, with the
//! failure in its doc comment. The simulator holds a quiet connect for a fraction of a second
//! instead of 110 s, so a poll with nothing to deliver returns quickly; no test measures time.
//!
//! The RSA keys in `tests/fixtures/salesforce_jwt_*.pem` are throwaway test keys (see
//! `tests/fixtures/salesforce_jwt_keys.md`); they protect nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use usersync::model::event::UserChange;
use usersync::model::salesforce_id::SalesforceId;
use usersync::model::salesforce_user::SalesforceUser;
use usersync::salesforce::auth::{
    DisconnectReason, SalesforceAuthError, SalesforceCredentials, SalesforceSession, Secret,
    obtain_token,
};
use usersync::salesforce::avro::{ChangeEventSchema, ChangeType, FieldValue};
use usersync::salesforce::cometd::{
    CdcEvent, CometdClient, CometdConfig, CometdError, CredentialsTokenSource, Delivered, Poll,
    REPLAY_FROM_EARLIEST, REPLAY_FROM_TIP, TokenSource, USER_CHANGE_CHANNEL,
};
use usersync::salesforce::normalize::{Delivery, Normalized, Replay, normalize};
use usersync::salesforce::replay::ReplayPolicy;
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

const PRIVATE_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/salesforce_jwt_test_key_pub.pem");

const ADMIN: &str = "integration@acme.example";
/// How long the simulator holds a quiet connect in these tests.
const HOLD: Duration = Duration::from_millis(150);
/// Polls a test allows itself before deciding the events are not coming.
const MAX_POLLS: usize = 40;

async fn sim() -> SalesforceSim {
    let sim = SalesforceSim::start(SfSimConfig::new(PUBLIC_KEY))
        .await
        .expect("simulator starts");
    sim.add_user(ADMIN);
    sim.set_cometd_hold(HOLD);
    sim
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn jwt(sim: &SalesforceSim) -> SalesforceCredentials {
    SalesforceCredentials::JwtBearer {
        login_url: sim.login_url(),
        consumer_key: sim.consumer_key(),
        username: ADMIN.to_owned(),
        private_key_pem: Secret::new(PRIVATE_KEY),
    }
}

fn config(policy: ReplayPolicy) -> CometdConfig {
    let mut config = CometdConfig::new("61.0", policy);
    config.network_delay = Duration::from_secs(10);
    config
}

fn client(
    sim: &SalesforceSim,
    policy: ReplayPolicy,
    replay_from: i64,
) -> CometdClient<CredentialsTokenSource> {
    CometdClient::new(
        config(policy),
        CredentialsTokenSource::new(http(), jwt(sim)),
        replay_from,
    )
    .expect("client")
}

/// Polls until `n` events arrived, acknowledging each as a subscriber would after handling
/// it. Fails the test on anything but events, or on more than `n`.
async fn events<T: TokenSource>(client: &mut CometdClient<T>, n: usize) -> Vec<CdcEvent> {
    let mut got = Vec::new();
    for _ in 0..MAX_POLLS {
        if got.len() >= n {
            break;
        }
        match client.poll().await.expect("poll") {
            Poll::Events(batch) => {
                for delivered in batch {
                    match delivered {
                        Delivered::Event(event) => {
                            client.acknowledge(event.replay_id);
                            got.push(event);
                        }
                        Delivered::Unreadable(bad) => panic!("unreadable event: {bad:?}"),
                    }
                }
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
    assert_eq!(got.len(), n, "events delivered: {got:#?}");
    got
}

/// One poll that must deliver nothing (and, the first time, handshakes and subscribes).
async fn quiet<T: TokenSource>(client: &mut CometdClient<T>) {
    match client.poll().await.expect("poll") {
        Poll::Events(batch) => assert!(batch.is_empty(), "unexpected events: {batch:?}"),
        other => panic!("expected a quiet poll, got {other:?}"),
    }
}

fn create(sim: &SalesforceSim, first: &str, last: &str, email: &str) -> String {
    sim.create_user(
        json!({
            "Username": format!("{email}.prod"),
            "Email": email,
            "FirstName": first,
            "LastName": last,
            "Title": "Account Executive",
        }),
        &Writer::default(),
    )
    .expect("create")
}

fn update(sim: &SalesforceSim, ids: &[&str], changes: Value) {
    let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    let published = sim
        .update_users(&ids, changes, &Writer::default())
        .expect("update");
    assert!(published > 0, "the update changed something");
}

fn text(event: &CdcEvent, field: &str) -> Option<String> {
    event
        .event
        .value(field)
        .and_then(FieldValue::as_str)
        .map(str::to_owned)
}

fn ids(events: &[CdcEvent]) -> Vec<i64> {
    events.iter().map(|e| e.replay_id).collect()
}

#[tokio::test]
async fn user_changes_arrive_in_order_with_their_header_and_fields() {
    let sim = sim().await;
    let olga = create(&sim, "Olga", "Brown", "olga.brown@example.com");
    let ivan = create(&sim, "Ivan", "Petrov", "ivan@example.com");
    update(&sim, &[&olga], json!({"Title": "Sales Director"}));
    sim.deactivate(&ivan).expect("deactivate");

    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_EARLIEST);
    let got = events(&mut client, 4).await;

    let bus = sim.retained_events();
    assert_eq!(
        ids(&got),
        bus.iter()
            .map(|e| i64::try_from(e.position).unwrap())
            .collect::<Vec<_>>(),
        "every retained event, in replay order"
    );
    let kinds: Vec<&ChangeType> = got.iter().map(|e| &e.event.header.change_type).collect();
    assert_eq!(
        kinds,
        [
            &ChangeType::Create,
            &ChangeType::Create,
            &ChangeType::Update,
            &ChangeType::Update
        ]
    );
    let records: Vec<&str> = got
        .iter()
        .map(|e| e.event.header.record_ids[0].as_str())
        .collect();
    assert_eq!(records, [&olga, &ivan, &olga, &ivan]);
    for event in &got {
        assert_eq!(event.channel, USER_CHANGE_CHANNEL);
        assert_eq!(event.schema_id, sim.current_schema_id());
        assert_eq!(event.event.header.entity_name, "User");
    }

    let created = &got[0];
    assert_eq!(
        text(created, "Email").as_deref(),
        Some("olga.brown@example.com")
    );
    assert_eq!(text(created, "Name.FirstName").as_deref(), Some("Olga"));
    assert_eq!(
        created.event.value("IsActive"),
        Some(&FieldValue::Boolean(true))
    );
    assert!(
        created
            .event
            .value("CreatedDate")
            .and_then(FieldValue::as_datetime)
            .is_some(),
        "an ISO date became a date-time"
    );
    assert!(created.event.header.changed_fields.is_empty());

    let retitled = &got[2];
    assert!(retitled.event.header.changed_fields.contains("Title"));
    assert!(
        retitled
            .event
            .header
            .changed_fields
            .contains("LastModifiedDate")
    );
    assert_eq!(text(retitled, "Title").as_deref(), Some("Sales Director"));
    assert_eq!(
        retitled.event.value("Email"),
        Some(&FieldValue::Null),
        "unchanged fields are null, as on Pub/Sub"
    );

    let deactivated = &got[3];
    assert!(deactivated.event.header.changed_fields.contains("IsActive"));
    assert_eq!(
        deactivated.event.value("IsActive"),
        Some(&FieldValue::Boolean(false))
    );
    assert_eq!(client.resume_after(), got[3].replay_id);
    assert_eq!(
        client.replay_map(),
        &BTreeMap::from([(USER_CHANGE_CHANNEL.to_owned(), got[3].replay_id)])
    );
}

/// Normalizes a run of events in order, keeping each user's last-known state the way the
/// processor would.
fn normalize_all<'a>(
    org: &SalesforceId,
    events: impl Iterator<
        Item = (
            &'a usersync::salesforce::avro::ChangeEvent,
            Replay<'a>,
            &'a str,
        ),
    >,
) -> Vec<UserChange> {
    let observed_at: DateTime<Utc> = "2026-01-05T10:00:00Z".parse().unwrap();
    let mut last_known: BTreeMap<SalesforceId, SalesforceUser> = BTreeMap::new();
    let mut out = Vec::new();
    for (event, replay, schema_id) in events {
        let delivery = Delivery {
            org_id: org,
            topic: USER_CHANGE_CHANNEL,
            replay,
            schema_id,
            observed_at,
        };
        match normalize(event, &delivery, &last_known).expect("normalizes") {
            Normalized::Events(changes) => {
                for change in changes {
                    let id = SalesforceId::parse(&change.user_id).unwrap();
                    last_known.insert(id.clone(), SalesforceUser::from_event(id, &change));
                    out.push(change);
                }
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
    out
}

/// The transport-specific parts of a normalized event, blanked for comparison.
fn transport_blind(mut change: UserChange) -> UserChange {
    change.origin.transport = String::new();
    change.origin.replay_id = None;
    change
}

#[tokio::test]
async fn both_transports_normalize_to_the_same_user_change_events() {
    let sim = sim().await;
    let olga = create(&sim, "Olga", "Brown", "olga.brown@example.com");
    let ivan = create(&sim, "Ivan", "Petrov", "ivan@example.com");
    update(
        &sim,
        &[&olga],
        json!({"FirstName": "Olya", "Title": "Sales Director"}),
    );
    update(
        &sim,
        &[&olga, &ivan],
        json!({"Department": "EMEA", "Title": null}),
    );
    update(&sim, &[&ivan], json!({"Email": "ivan.petrov@example.com"}));
    sim.deactivate(&olga).expect("deactivate");

    let bus = sim.retained_events();
    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_EARLIEST);
    let cometd = events(&mut client, bus.len()).await;

    // The decoded events are equal, field for field, before any User-specific reading.
    let pubsub: Vec<_> = bus
        .iter()
        .map(|e| {
            let json = sim.schema_json(&e.schema_id).expect("schema");
            let schema = ChangeEventSchema::parse(&e.schema_id, &json).expect("parses");
            schema.decode(&e.avro).expect("decodes")
        })
        .collect();
    for (i, (via_cometd, via_pubsub)) in cometd.iter().zip(&pubsub).enumerate() {
        assert_eq!(&via_cometd.event, via_pubsub, "event {i}");
        assert_eq!(via_cometd.schema_id, bus[i].schema_id);
    }

    let org = SalesforceId::parse(&sim.org_id()).unwrap();
    let replay_bytes: Vec<Vec<u8>> = bus.iter().map(|e| e.replay_id()).collect();
    let from_pubsub = normalize_all(
        &org,
        pubsub
            .iter()
            .zip(&bus)
            .zip(&replay_bytes)
            .map(|((event, bus), bytes)| (event, Replay::PubSub(bytes), bus.schema_id.as_str())),
    );
    let from_cometd = normalize_all(
        &org,
        cometd
            .iter()
            .map(|e| (&e.event, Replay::CometD(e.replay_id), e.schema_id.as_str())),
    );
    assert_eq!(
        from_cometd.len(),
        7,
        "two creates, a merged update of two, three more"
    );
    assert!(from_cometd.iter().all(|c| c.origin.transport == "cometd"));
    assert_eq!(
        from_cometd[2].changed_fields, from_pubsub[2].changed_fields,
        "the field lists in the same order"
    );
    let blind = |all: Vec<UserChange>| all.into_iter().map(transport_blind).collect::<Vec<_>>();
    assert_eq!(blind(from_cometd.clone()), blind(from_pubsub));

    let last = from_cometd.last().unwrap();
    assert_eq!(last.user.first_name.as_deref(), Some("Olya"));
    assert_eq!(last.user.title, None, "nulled and kept null");
    assert_eq!(last.user.is_active, Some(false));
    assert_eq!(
        last.origin.replay_id,
        Some(cometd.last().unwrap().replay_id.to_string())
    );
}

/// docs/salesforce.md, "Failures seen in other clients": empty replay map after re-authentication
/// (after a 401 the resubscribe sent an empty replay map), and resubscribing from the original
/// position (it used the original replay id, not the latest). Here the token is revoked mid-stream
/// and events are published while the client is refused.
#[tokio::test]
async fn a_revoked_token_reconnects_with_a_new_token_and_the_stored_replay_map() {
    let sim = sim().await;
    create(&sim, "Olga", "Brown", "olga.brown@example.com");
    create(&sim, "Ivan", "Petrov", "ivan@example.com");
    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_EARLIEST);
    let before = events(&mut client, 2).await;

    sim.revoke_tokens();
    create(&sim, "Ana", "Silva", "ana@example.com");
    create(&sim, "Li", "Wei", "li@example.com");
    let after = events(&mut client, 2).await;

    let all: Vec<i64> = ids(&before).into_iter().chain(ids(&after)).collect();
    let retained: Vec<i64> = sim
        .retained_events()
        .iter()
        .map(|e| i64::try_from(e.position).unwrap())
        .collect();
    assert_eq!(all, retained, "nothing lost, nothing twice");
    let stats = client.stats();
    assert_eq!(stats.reauthentications, 1);
    assert_eq!(stats.handshakes, 2);

    let subscribes = sim.cometd_subscribes();
    assert_eq!(subscribes.len(), 2);
    assert!(subscribes.iter().all(|s| s.successful));
    assert_eq!(subscribes[0].replay, Some(REPLAY_FROM_EARLIEST));
    assert_eq!(
        subscribes[1].replay,
        Some(before[1].replay_id),
        "the resubscribe carries the last acknowledged id"
    );
    assert_ne!(subscribes[0].client_id, subscribes[1].client_id);
}

/// docs/salesforce.md, "Failures seen in other clients": unknown client after an hour (the server
/// forgets the client: `403::Unknown client`, advice `handshake`), and lost subscriptions
/// (subscriptions were lost after the re-handshake, or no reconnect followed it).
#[tokio::test]
async fn an_unknown_client_is_handshaken_again_and_resubscribed() {
    let sim = sim().await;
    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_TIP);
    quiet(&mut client).await;
    create(&sim, "Olga", "Brown", "olga.brown@example.com");
    let first = events(&mut client, 1).await;

    sim.expire_cometd_clients();
    create(&sim, "Ivan", "Petrov", "ivan@example.com");
    create(&sim, "Ana", "Silva", "ana@example.com");
    let later = events(&mut client, 2).await;

    let retained: Vec<i64> = sim
        .retained_events()
        .iter()
        .map(|e| i64::try_from(e.position).unwrap())
        .collect();
    assert_eq!(
        ids(&first)
            .into_iter()
            .chain(ids(&later))
            .collect::<Vec<_>>(),
        retained
    );
    let stats = client.stats();
    assert_eq!(stats.rehandshakes, 1);
    assert_eq!(stats.handshakes, 2);
    assert_eq!(stats.subscribes, 2);
    assert_eq!(stats.reauthentications, 0, "the token was fine");
    let subscribes = sim.cometd_subscribes();
    assert_eq!(subscribes[1].replay, Some(first[0].replay_id));
}

/// Resubscribing from the original position (docs/salesforce.md, "Failures seen in other clients"),
/// from the other side: the resume point is the last *acknowledged* event, so an event delivered
/// but not handled comes again after a reconnect, and none is skipped.
#[tokio::test]
async fn a_delivered_but_unacknowledged_event_is_delivered_again_after_a_reconnect() {
    let sim = sim().await;
    for (first, email) in [
        ("A", "a@example.com"),
        ("B", "b@example.com"),
        ("C", "c@example.com"),
    ] {
        create(&sim, first, "Test", email);
    }
    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_EARLIEST);
    let Poll::Events(batch) = client.poll().await.expect("poll") else {
        panic!("events expected");
    };
    assert_eq!(batch.len(), 3);
    let handled = batch[1].replay_id().unwrap();
    client.acknowledge(batch[0].replay_id().unwrap());
    client.acknowledge(handled);
    client.acknowledge(batch[0].replay_id().unwrap()); // an older id never moves the map back
    assert_eq!(client.resume_after(), handled);

    sim.expire_cometd_clients();
    let again = events(&mut client, 1).await;
    assert_eq!(again[0].replay_id, batch[2].replay_id().unwrap());
    assert_eq!(
        sim.cometd_subscribes().last().unwrap().replay,
        Some(handled)
    );
}

/// docs/salesforce.md, "Failures seen in other clients": invalid replay id, silently (`400::The
/// replayId {…} you provided was invalid…`, swallowed by one client): a stored id past retention is
/// reported, and the policy decides what follows.
#[tokio::test]
async fn a_replay_id_outside_retention_is_reported_and_handled_per_policy() {
    let sim = sim().await;
    // The stored id is the first of two events; the window then passes both, so resuming
    // after it would skip the second.
    create(&sim, "Olga", "Brown", "olga.brown@example.com");
    create(&sim, "Ivan", "Petrov", "ivan@example.com");
    let stored = i64::try_from(sim.retained_events()[0].position).unwrap();
    sim.expire_replay_window();

    // fail: a typed error, the disconnect reason for an admin.
    let mut failing = client(&sim, ReplayPolicy::Fail, stored);
    match failing.poll().await {
        Err(CometdError::ReplayRejected(rejected)) => {
            assert_eq!(rejected.replay_id, stored);
            assert!(
                rejected.error.contains(&format!("{{{stored}}}")),
                "{}",
                rejected.error
            );
            assert!(!rejected.resync_needed);
        }
        other => panic!("expected ReplayRejected, got {other:?}"),
    }
    assert_eq!(failing.resume_after(), stored, "fail keeps the stored id");

    // resync and latest: resubscribed from the tip, the caller told which.
    for (policy, resync_needed) in [(ReplayPolicy::Resync, true), (ReplayPolicy::Latest, false)] {
        let mut client = client(&sim, policy, stored);
        match client.poll().await.expect("poll") {
            Poll::ReplayRejected(rejected) => {
                assert_eq!(rejected.replay_id, stored, "{}", policy.as_str());
                assert_eq!(rejected.policy, policy);
                assert_eq!(rejected.resync_needed, resync_needed, "{}", policy.as_str());
                assert_eq!(rejected.channel, USER_CHANGE_CHANNEL);
            }
            other => panic!(
                "{}: expected ReplayRejected, got {other:?}",
                policy.as_str()
            ),
        }
        assert_eq!(client.resume_after(), REPLAY_FROM_TIP);
        let last = sim.cometd_subscribes().into_iter().last().unwrap();
        assert_eq!(
            (last.replay, last.successful),
            (Some(REPLAY_FROM_TIP), true)
        );
        quiet(&mut client).await;
        let email = format!("after.{}@example.com", policy.as_str());
        create(&sim, "After", "Expiry", &email);
        let got = events(&mut client, 1).await;
        assert_eq!(text(&got[0], "Email"), Some(email));
    }
}

/// A session that was revoked after it was obtained: every handshake with it is denied.
struct DeadToken(SalesforceSession);

#[async_trait::async_trait]
impl TokenSource for DeadToken {
    async fn session(&self, _refused: bool) -> Result<SalesforceSession, SalesforceAuthError> {
        Ok(self.0.clone())
    }
}

/// docs/salesforce.md, "Failures seen in other clients": endless reconnect loop. A token that stays
/// refused ends the client with a typed error after a bounded number of attempts.
#[tokio::test]
async fn a_token_that_stays_refused_stops_the_client_instead_of_looping() {
    let sim = sim().await;
    let session = obtain_token(&http(), &jwt(&sim)).await.expect("session");
    let token = session.access_token.expose().to_owned();
    sim.revoke_tokens();
    let config = config(ReplayPolicy::Fail);
    let max = config.max_recoveries;
    let mut client = CometdClient::new(config, DeadToken(session), REPLAY_FROM_TIP).unwrap();
    sim.reset_requests();
    let error = client.poll().await.expect_err("gives up");
    match &error {
        CometdError::RecoveryExhausted { attempts, last } => {
            assert_eq!(*attempts, max);
            assert!(last.contains("401::Authentication invalid"), "{last}");
        }
        other => panic!("expected RecoveryExhausted, got {other:?}"),
    }
    assert_eq!(
        error.disconnect_reason(),
        Some(DisconnectReason::CredentialsChanged)
    );
    let handshakes = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/cometd/"))
        .count();
    assert_eq!(handshakes, usize::try_from(max).unwrap() + 1);
    assert_eq!(client.stats().handshakes, 0);
    assert!(
        !format!("{error:?} {error}").contains(&token),
        "no token in the error"
    );
}

/// docs/salesforce.md, "Failures seen in other clients": periodic re-handshakes. Quiet polls
/// reconnect on the same session; only the server asks for a new handshake.
#[tokio::test]
async fn quiet_polls_reconnect_without_handshaking_again() {
    let sim = sim().await;
    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_TIP);
    for _ in 0..5 {
        quiet(&mut client).await;
    }
    let stats = client.stats();
    assert_eq!(stats.handshakes, 1);
    assert_eq!(stats.subscribes, 1);
    assert_eq!(stats.connects, 5);
    assert_eq!(stats.sessions_obtained, 1);
    assert_eq!(sim.cometd_subscribes().len(), 1);
}

/// Salesforce requires View All Users for `/data/UserChangeEvent` (docs/salesforce.md,
/// "The User object"): the subscribe is refused with a 403, and the client stops with the reason an
/// admin must act on.
#[tokio::test]
async fn a_user_without_view_all_users_is_denied_with_a_permissions_reason() {
    let sim = sim().await;
    sim.set_view_all_users(ADMIN, false);
    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_TIP);
    let error = client.poll().await.expect_err("denied");
    assert!(
        matches!(&error, CometdError::Denied { operation: "subscribe", error } if error.starts_with("403::")),
        "{error:?}"
    );
    assert_eq!(
        error.disconnect_reason(),
        Some(DisconnectReason::PermissionsChanged)
    );
}

/// Only API version 37.0 and later serve the Streaming API (docs/salesforce.md,
/// "CometD: messages, replay, timeouts, errors").
#[tokio::test]
async fn a_version_before_37_is_refused() {
    let sim = sim().await;
    let mut config = config(ReplayPolicy::Fail);
    config.api_version = "36.0".into();
    let mut client = CometdClient::new(
        config,
        CredentialsTokenSource::new(http(), jwt(&sim)),
        REPLAY_FROM_TIP,
    )
    .unwrap();
    match client.poll().await {
        Err(CometdError::Status {
            operation: "handshake",
            status: 400,
            body,
        }) => assert!(body.contains("37.0"), "{body}"),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
}

/// docs/salesforce.md, "Failures seen in other clients": decoding with the wrong schema (decode
/// with the event's own schema, cache by schema id), on the CometD path: a field added mid-stream
/// gives later events a new schema id; each event is read with its own.
#[tokio::test]
async fn a_field_added_mid_stream_is_read_with_the_new_schema_and_old_events_with_theirs() {
    let sim = sim().await;
    let olga = create(&sim, "Olga", "Brown", "olga.brown@example.com");
    let old_schema = sim.current_schema_id();
    let new_schema = sim.add_custom_field("Badge__c");
    update(&sim, &[&olga], json!({"Badge__c": "gold"}));
    create(&sim, "Ivan", "Petrov", "ivan@example.com");

    let mut client = client(&sim, ReplayPolicy::Fail, REPLAY_FROM_EARLIEST);
    let got = events(&mut client, 3).await;
    assert_eq!(got[0].schema_id, old_schema);
    assert_eq!(got[1].schema_id, new_schema);
    assert_eq!(got[2].schema_id, new_schema);
    assert_eq!(
        got[0].event.value("Badge__c"),
        None,
        "not in the old schema"
    );
    assert_eq!(text(&got[1], "Badge__c").as_deref(), Some("gold"));
    assert!(got[1].event.header.changed_fields.contains("Badge__c"));
    assert_eq!(got[2].event.value("Badge__c"), Some(&FieldValue::Null));
    assert_eq!(client.stats().schemas_fetched, 2, "one fetch per schema id");
}

/// The simulator's side of the protocol, spoken raw: the cookie, long-polling only, unknown clients
/// and refused tokens, as docs/salesforce.md ("CometD: messages, replay, timeouts, errors")
/// describes them.
#[tokio::test]
async fn the_endpoint_speaks_bayeux_as_salesforce_does() {
    let sim = sim().await;
    let session = obtain_token(&http(), &jwt(&sim)).await.expect("session");
    let url = format!("{}/cometd/61.0", sim.my_domain_url());
    let post = |body: Value, token: &str, cookie: Option<&str>| {
        let mut request = http()
            .post(&url)
            .bearer_auth(token)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        request.send()
    };
    let token = session.access_token.expose();
    let handshake = json!([{"channel": "/meta/handshake", "version": "1.0",
        "supportedConnectionTypes": ["long-polling"], "ext": {"replay": true}}]);

    let response = post(handshake.clone(), token, None).await.unwrap();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a routing cookie")
        .to_owned();
    assert!(cookie.starts_with("BAYEUX_BROWSER="), "{cookie}");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(reply[0]["ext"]["replay"], true);
    assert_eq!(reply[0]["advice"]["timeout"], 150);
    let client_id = reply[0]["clientId"].as_str().unwrap().to_owned();

    let subscribe = json!([{"channel": "/meta/subscribe", "clientId": client_id,
        "subscription": USER_CHANGE_CHANNEL, "ext": {"replay": {USER_CHANGE_CHANNEL: -1}}}]);
    let reply: Value = post(subscribe.clone(), token, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reply[0]["error"]
            .as_str()
            .unwrap()
            .contains("BAYEUX_BROWSER cookie"),
        "{reply}"
    );
    let reply: Value = post(subscribe, token, Some(&cookie))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply[0]["successful"], true, "{reply}");

    // A map without the channel is refused with its own error (docs/salesforce.md,
    // "Failures seen in other clients": empty replay map after re-authentication).
    let empty_map = json!([{"channel": "/meta/subscribe", "clientId": client_id,
        "subscription": USER_CHANGE_CHANNEL, "ext": {"replay": {}}}]);
    let reply: Value = post(empty_map, token, Some(&cookie))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reply[0]["error"]
            .as_str()
            .unwrap()
            .contains("wasn't found using the provided replay ID map"),
        "{reply}"
    );

    let connect = json!([{"channel": "/meta/connect", "clientId": client_id,
        "connectionType": "long-polling"}]);
    let reply: Value = post(connect.clone(), token, Some(&cookie))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(reply[0]["advice"]["reconnect"], "retry");

    let websocket = json!([{"channel": "/meta/handshake", "version": "1.0",
        "supportedConnectionTypes": ["websocket"]}]);
    let reply: Value = post(websocket, token, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reply[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("400::Invalid connection type"),
        "{reply}"
    );

    let stranger = json!([{"channel": "/meta/connect", "clientId": "nobody",
        "connectionType": "long-polling"}]);
    let reply: Value = post(stranger, token, Some(&cookie))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply[0]["error"], "403::Unknown client");
    assert_eq!(reply[0]["advice"]["reconnect"], "handshake");

    sim.revoke_tokens();
    let reply: Value = post(connect, token, Some(&cookie))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply[0]["error"], "401::Authentication invalid");
    assert_eq!(reply[0]["advice"]["reconnect"], "none");
    let reply: Value = post(handshake, token, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply[0]["error"], "403::Handshake denied");
    assert_eq!(
        reply[0]["ext"]["sfdc"]["failureReason"],
        "401::Authentication invalid"
    );
}
