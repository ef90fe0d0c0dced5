//! Applying decisions to Outreach through the real client and the simulator, where the index
//! is behind Outreach: a create refused with 422 leads to a lookup and a link or a conflict,
//! never a second create.

use std::sync::Arc;

use chrono::Utc;
use usersync::config::{OutreachConfig, Secret};
use usersync::engine::{Action, Reason, SyncSettings, SyncState};
use usersync::model::event::UserChange;
use usersync::model::outreach_user::OutreachUserId;
use usersync::model::salesforce_id::SalesforceId;
use usersync::outreach::auth::{MemoryTokenStore, OAuthTokens};
use usersync::outreach::client::OutreachClient;
use usersync::roles::processor::apply::apply_event;
use usersync_sim::outreach::{OutreachSim, SimConfig, SimUser};

async fn client_for(sim: &OutreachSim) -> OutreachClient {
    let tokens = sim.issue_tokens(&["users.all"]);
    let defaults = SimConfig::default();
    let config = OutreachConfig {
        api_url: sim.api_url(),
        token_url: sim.token_url(),
        client_id: defaults.client_id,
        client_secret: Secret::new(defaults.client_secret),
        redirect_uri: defaults.redirect_uri,
        ..OutreachConfig::default()
    };
    OutreachClient::new(
        &config,
        OAuthTokens {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: None,
        },
        Arc::new(MemoryTokenStore::new()),
    )
    .unwrap()
}

fn hire(email: &str, user: u32, commit: i64) -> UserChange {
    let id = SalesforceId::parse(&format!("005{user:012}")).unwrap();
    let json = serde_json::json!({
        "schema": "user_change.v1",
        "event_id": format!("sf:00D000000000001EAA:{id}:tx{commit}:1"),
        "source": "salesforce",
        "org_id": "00D000000000001EAA",
        "user_id": id.to_string(),
        "change": "create",
        "changed_fields": [],
        "user": {"email": email, "email_normalized": email.to_lowercase(), "username": null,
                 "first_name": "Dana", "last_name": "Ray", "title": null, "is_active": true,
                 "created_date": "2025-06-01T00:00:00Z", "last_modified_date": "2025-06-01T00:00:00Z"},
        "origin": {"transport": "pubsub", "topic": null, "replay_id": null, "schema_id": null,
                   "change_type": "CREATE", "transaction_key": format!("tx{commit}"),
                   "sequence_number": 1, "commit_timestamp": "2025-06-01T00:00:00Z",
                   "commit_number": commit, "commit_user": null, "change_origin": null},
        "observed_at": "2025-06-01T00:00:01Z"
    });
    UserChange::from_json(json.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn a_refused_create_becomes_a_link_not_a_second_create() {
    let sim = OutreachSim::start(SimConfig::default()).await.unwrap();
    // Outreach has Dana (created by hand, or by a create whose reply was lost); the index does not.
    let mut dana = SimUser::new(0, "Dana@Def.com");
    dana.first_name = Some("Dana".into());
    let dana_id = sim.seed_user(dana);
    let client = client_for(&sim).await;
    let mut state = SyncState::new();

    let records = apply_event(
        &SyncSettings::default(),
        &mut state,
        &client,
        &hire("dana@def.com", 4, 1),
        Utc::now(),
    )
    .await
    .unwrap();

    let actions: Vec<(Action, Reason)> = records.iter().map(|r| (r.action, r.reason)).collect();
    assert_eq!(
        actions,
        vec![
            (Action::Conflict, Reason::OutreachRefusedCreate),
            (Action::Link, Reason::EmailMatch)
        ]
    );
    assert_eq!(sim.users().len(), 1, "no second user");
    let posts = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/api/v2/users"))
        .count();
    assert_eq!(posts, 1, "exactly one create was attempted");
    let mapping = state.mapping_of_outreach(OutreachUserId(dana_id)).unwrap();
    assert_eq!(mapping.salesforce_user_id.as_str(), "005000000000004AAA");
    // The link wrote the id mirror.
    assert_eq!(
        sim.user(dana_id).unwrap().custom[0].as_deref(),
        Some("005000000000004AAA")
    );
}

#[tokio::test]
async fn a_refused_create_with_matching_off_becomes_a_conflict() {
    let sim = OutreachSim::start(SimConfig::default()).await.unwrap();
    sim.seed_user(SimUser::new(0, "dana@def.com"));
    let client = client_for(&sim).await;
    let mut settings = SyncSettings::default();
    settings.user_mapping.auto_remap_on_inactive = false;
    settings.email_field.dedupe = usersync::engine::Dedupe::Off;
    let mut state = SyncState::new();

    let records = apply_event(
        &settings,
        &mut state,
        &client,
        &hire("dana@def.com", 4, 1),
        Utc::now(),
    )
    .await
    .unwrap();
    let last = records.last().unwrap();
    assert_eq!(
        (last.action, last.reason),
        (Action::Conflict, Reason::OutreachEmailTaken)
    );
    assert_eq!(state.mappings().count(), 0);
    assert_eq!(sim.users().len(), 1);
}

#[tokio::test]
async fn an_outreach_failure_names_the_event_and_what_was_being_done() {
    let sim = OutreachSim::start(SimConfig::default()).await.unwrap();
    let client = client_for(&sim).await;
    sim.remove_scope("users.all");
    let err = apply_event(
        &SyncSettings::default(),
        &mut SyncState::new(),
        &client,
        &hire("eve@def.com", 5, 1),
        Utc::now(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("sf:00D000000000001EAA:005000000000005AAA:tx1:1"),
        "{err}"
    );
    assert!(err.contains("create"), "{err}");
}
