//! Roles and the actor trail through the router as it is served (docs/security.md, "Roles and
//! the actor trail"): a viewer's token reads and changes nothing; every change records the name
//! of the token that asked, in the decision log, the admin-action log and the live feed; a
//! server without tokens records `local`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use super::security_tests::{LISTEN, admin_with_tokens, send};
use super::*;
use crate::connection::{ConnectionState, Side};
use crate::model::salesforce_user::SalesforceUser;
use crate::outreach::OutreachUser;

const OPS: &str = "0123456789abcdef0123456789abcdef-ops";
const DASHBOARD: &str = "0123456789abcdef0123456789abcdef-dashboard";
const X: &str = "005000000000001AAA";

/// The router of the security tests with `tokens`, a feed of decisions, and two users to map.
async fn admin(tokens: Vec<AdminToken>) -> (Router, AdminState) {
    let (_, mut state) = admin_with_tokens(tokens, None).await;
    state.decisions = Some(tokio::sync::broadcast::channel(16).0);
    let ann = SalesforceUser {
        id: SalesforceId::parse(X).unwrap(),
        email: Some("ann@acme.example".into()),
        username: None,
        first_name: None,
        last_name: None,
        title: None,
        is_active: true,
        created_date: None,
        last_modified_date: None,
        applied: None,
    };
    state.store.put_salesforce_users(&[ann]).await.unwrap();
    let outreach = OutreachUser {
        id: OutreachUserId(7),
        email: "ann@acme.example".into(),
        username: None,
        first_name: None,
        last_name: None,
        title: None,
        locked: false,
        custom: Default::default(),
        updated_at: None,
    };
    state.store.put_outreach_users(&[outreach]).await.unwrap();
    (router(state.clone()), state)
}

fn named_tokens() -> Vec<AdminToken> {
    vec![
        AdminToken::new("ops", Role::Admin, OPS),
        AdminToken::new("dashboard", Role::Viewer, DASHBOARD),
    ]
}

/// `method path` as the CLI sends it, with `token` when given; a state change says it is JSON.
fn call(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, LISTEN);
    if method != "GET" {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    request.body(body).unwrap()
}

/// The state changes of the API, each with a body it would take.
fn changes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        (
            "PUT",
            "/api/v1/settings",
            Some(
                json!({"user_mapping": {"inbound_create": false, "auto_remap_on_inactive": false}}),
            ),
        ),
        (
            "POST",
            "/api/v1/mappings",
            Some(json!({"outreach_user_id": 7, "salesforce_user_id": X})),
        ),
        ("DELETE", "/api/v1/mappings/7", None),
        ("POST", "/api/v1/connections/outreach/reconnect", None),
        (
            "POST",
            "/api/v1/connections/outreach/reconnect",
            Some(json!({"refresh_token": "a-new-refresh-token"})),
        ),
        ("POST", "/api/v1/connections/salesforce/disconnect", None),
        ("POST", "/api/v1/connections/salesforce/test", None),
        ("POST", "/api/v1/resync", None),
        (
            "POST",
            "/api/v1/replay",
            Some(json!({"from": "latest", "confirm": true})),
        ),
        ("GET", "/api/v1/connections/salesforce/authorize", None),
    ]
}

#[tokio::test]
async fn a_viewer_reads_everything_and_changes_nothing() {
    let (router, state) = admin(named_tokens()).await;
    for path in [
        "/api/v1/status",
        "/api/v1/settings",
        "/api/v1/mappings",
        "/api/v1/decisions",
        "/api/v1/conflicts",
        "/api/v1/admin-actions",
    ] {
        let (status, body) = send(&router, call("GET", path, Some(DASHBOARD), None)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let settings_before = send(&router, call("GET", "/api/v1/settings", Some(OPS), None)).await;
    for (method, path, body) in changes() {
        let (status, answer) = send(&router, call(method, path, Some(DASHBOARD), body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "{method} {path} needs a token with the role admin"
            )) && message.contains("the token \"dashboard\" has the role viewer"),
            "{message}"
        );
        assert!(!message.contains(DASHBOARD), "the token is never shown");
    }
    // Nothing moved: no trail, the same settings, no mapping, no stored authorization, both
    // connections as they were; and a refusal by role is not a wrong token.
    let (_, actions) = send(
        &router,
        call("GET", "/api/v1/admin-actions", Some(OPS), None),
    )
    .await;
    assert_eq!(actions["admin_actions"], json!([]));
    let settings_after = send(&router, call("GET", "/api/v1/settings", Some(OPS), None)).await;
    assert_eq!(settings_after, settings_before);
    assert!(
        state
            .store
            .mappings(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        state
            .store
            .authorization("outreach")
            .await
            .unwrap()
            .is_none()
    );
    for side in Side::ALL {
        assert_eq!(
            state.connections.state(side).0,
            ConnectionState::NotConfigured
        );
    }
}

#[tokio::test]
async fn an_unknown_token_is_still_unauthorized_and_an_admin_may_do_everything() {
    let (router, _) = admin(named_tokens()).await;
    let (status, body) = send(
        &router,
        call("GET", "/api/v1/status", Some("not-a-token"), None),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(&router, call("GET", "/api/v1/status", None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for (method, path, body) in changes() {
        let (status, answer) = send(&router, call(method, path, Some(OPS), body)).await;
        assert!(
            status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
            "{method} {path}: {status} {answer}"
        );
    }
}

#[tokio::test]
async fn every_change_records_the_name_of_the_token_that_asked() {
    let (router, state) = admin(named_tokens()).await;
    let mut feed = state.actions.subscribe();
    let mut decisions = state.decisions.as_ref().unwrap().subscribe();

    let (status, body) = send(
        &router,
        call(
            "PUT",
            "/api/v1/settings",
            Some(OPS),
            Some(
                json!({"user_mapping": {"inbound_create": false, "auto_remap_on_inactive": false}}),
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["admin_action"]["action"], "settings");
    assert_eq!(body["admin_action"]["actor"], "ops");
    assert_eq!(
        body["admin_action"]["detail"]["before"]["user_mapping"]["inbound_create"],
        true
    );
    assert_eq!(
        body["admin_action"]["detail"]["after"]["user_mapping"]["inbound_create"],
        false
    );
    let (status, body) = send(
        &router,
        call(
            "POST",
            "/api/v1/connections/outreach/reconnect",
            Some(OPS),
            Some(json!({"refresh_token": "a-new-refresh-token"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(!body.to_string().contains("a-new-refresh-token"), "{body}");
    let (status, body) = send(
        &router,
        call(
            "POST",
            "/api/v1/connections/salesforce/disconnect",
            Some(OPS),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["connection"]["state"], "disconnected");

    // The admin-action log, newest first, and the live feed in order: each with who asked.
    let (_, listed) = send(
        &router,
        call("GET", "/api/v1/admin-actions", Some(DASHBOARD), None),
    )
    .await;
    let trail: Vec<(Value, Value, Value)> = listed["admin_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].clone(),
                a["detail"]["side"].clone(),
                a["actor"].clone(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            (json!("disconnect"), json!("salesforce"), json!("ops")),
            (json!("reconnect"), json!("outreach"), json!("ops")),
            (json!("settings"), Value::Null, json!("ops")),
        ]
    );
    assert_eq!(
        listed["admin_actions"][1]["detail"]["new_authorization"],
        true
    );
    for expected in ["settings", "reconnect", "disconnect"] {
        let (_, action) = feed.try_recv().unwrap();
        assert_eq!(
            (action.action.as_str(), action.actor.as_deref()),
            (expected, Some("ops"))
        );
    }

    // Mapping by hand: the decision log and the feed name who did it.
    let (status, body) = send(
        &router,
        call(
            "POST",
            "/api/v1/mappings",
            Some(OPS),
            Some(json!({"outreach_user_id": 7, "salesforce_user_id": X})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &router,
        call("DELETE", "/api/v1/mappings/7", Some(OPS), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, log) = send(
        &router,
        call("GET", "/api/v1/decisions", Some(DASHBOARD), None),
    )
    .await;
    let made: Vec<(Value, Value)> = log["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["decision"]["action"].clone(),
                d["decision"]["actor"].clone(),
            )
        })
        .collect();
    assert_eq!(
        made,
        [
            (json!("unlink"), json!("ops")),
            (json!("link"), json!("ops"))
        ]
    );
    for expected in [Action::Link, Action::Unlink] {
        let record = decisions.try_recv().unwrap();
        assert_eq!(
            (record.action, record.actor.as_deref()),
            (expected, Some("ops"))
        );
    }
}

#[tokio::test]
async fn without_tokens_every_call_is_the_local_actor_s() {
    let (router, _) = admin(Vec::new()).await;
    let (status, body) = send(
        &router,
        call(
            "POST",
            "/api/v1/connections/outreach/disconnect",
            None,
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["admin_action"]["actor"], "local");
    let (status, body) = send(
        &router,
        call(
            "POST",
            "/api/v1/mappings",
            None,
            Some(json!({"outreach_user_id": 7, "salesforce_user_id": X})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, log) = send(&router, call("GET", "/api/v1/decisions", None, None)).await;
    assert_eq!(log["decisions"][0]["decision"]["actor"], "local");
}

#[tokio::test]
async fn a_change_the_store_cannot_record_is_not_carried_out() {
    let (_, state) = admin(named_tokens()).await;
    let sqlite = crate::store::SqliteStore::open("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query("DROP TABLE admin_actions")
        .execute(sqlite.pool())
        .await
        .unwrap();
    let broken = AdminState {
        store: std::sync::Arc::new(sqlite),
        ..state.clone()
    };
    let router_broken = super::router(broken.clone());
    let (status, body) = send(
        &router_broken,
        call(
            "POST",
            "/api/v1/connections/salesforce/disconnect",
            Some(OPS),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert_eq!(
        broken.connections.state(Side::Salesforce).0,
        ConnectionState::NotConfigured,
        "not disconnected without its record"
    );
    let (status, _) = send(
        &router_broken,
        call(
            "PUT",
            "/api/v1/settings",
            Some(OPS),
            Some(
                json!({"user_mapping": {"inbound_create": false, "auto_remap_on_inactive": false}}),
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        broken.store.settings().await.unwrap(),
        None,
        "the save went back with its record"
    );
}
