//! Connection drills on the whole process (`usersync run` in process): a side disconnects for
//! real, users change while it is down, an admin reconnects through the admin API, and every
//! change arrives — while the other side goes on. The status API must say why, and whose
//! authorization broke, in the words of docs/operations.md. Each drill ends by comparing the
//! Outreach users and the mappings with what `usersync decide` computes from every change
//! published ([`Parts::assert_matches_decide`]): every change applied, none twice.

mod support;

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::json;
use support::{INTEGRATION_USER, Parts, until};
use usersync_sim::salesforce::Writer;
use usersync_sim::salesforce::pubsub::StreamFault;

async fn state_is(parts: &Parts, side: &str, state: &str) -> bool {
    parts.connection(side).await["state"] == state
}

/// Cuts the running Pub/Sub stream (as a network blip would): the subscriber resubscribes,
/// meets the fault just set up, and Salesforce ends up disconnected; returns its connection.
async fn stream_cut_until_disconnected(parts: &Parts) -> serde_json::Value {
    parts
        .salesforce
        .inject_stream_fault(StreamFault::ResetStream);
    until("Salesforce is disconnected", || {
        state_is(parts, "salesforce", "disconnected")
    })
    .await;
    parts.connection("salesforce").await
}

/// After a reconnect: the change made while `side` was down (the user with `email`) arrives,
/// the side is connected again, and Outreach holds `users` users — every change applied, none
/// twice.
async fn resumed(parts: &Parts, side: &str, email: &str, users: usize) {
    until("the change made while disconnected arrives", || async {
        parts.in_outreach(email)
    })
    .await;
    until("the side is connected again", || {
        state_is(parts, side, "connected")
    })
    .await;
    let all = parts.outreach.users();
    assert_eq!(
        all.len(),
        users,
        "one Outreach user each, none twice: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_permissions_changed_then_reconnect_loses_nothing() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    let connected = parts.connection("salesforce").await;
    assert_eq!(connected["state"], "connected");
    assert_eq!(connected["identity"]["username"], INTEGRATION_USER);

    // The authorizing user loses View All Users; the next subscribe is refused.
    parts.salesforce.set_view_all_users(INTEGRATION_USER, false);
    let down = stream_cut_until_disconnected(&parts).await;
    assert_eq!(down["reason"], "permissions_changed", "{down}");
    assert_eq!(
        down["identity"]["username"], INTEGRATION_USER,
        "whose authorization broke"
    );
    assert!(
        down["advice"].as_str().unwrap().contains("View All Users"),
        "{down}"
    );
    assert!(
        down["upstream_error"]
            .as_str()
            .unwrap()
            .contains("PermissionDenied"),
        "{down}"
    );
    // The state is exported too, for an alert.
    let series =
        |state: &str| format!("usersync_connection_state{{side=\"salesforce\",state=\"{state}\"}}");
    assert_eq!(parts.metric(&series("disconnected")).await, 1.0);
    assert_eq!(parts.metric(&series("connected")).await, 0.0);

    // Users change while Salesforce is disconnected; Outreach is untouched by it.
    let during: Vec<String> = (0..3)
        .map(|n| parts.create_salesforce_user(&format!("during{n}")))
        .collect();
    assert_eq!(parts.connection("outreach").await["state"], "connected");

    // The admin gives the permission back and reconnects.
    parts.salesforce.set_view_all_users(INTEGRATION_USER, true);
    let (status, body) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/reconnect")
        .await;
    assert_eq!(status, 202, "{body}");
    until("Salesforce is connected again", || {
        state_is(&parts, "salesforce", "connected")
    })
    .await;
    until(
        "every change made while disconnected is applied",
        || async {
            (0..during.len()).all(|n| parts.in_outreach(&format!("during{n}@acme.example")))
        },
    )
    .await;
    let users = parts.outreach.users();
    assert_eq!(
        users.len(),
        4,
        "one Outreach user each, none twice: {users:?}"
    );
    assert_eq!(parts.metric(&series("connected")).await, 1.0);
    // The counters are the process's (other tests of this file add to them): at least this
    // test's four creates, their events and their Outreach calls.
    for counter in [
        "usersync_decisions_total{action=\"create\"}",
        "usersync_processor_events_total{outcome=\"applied\"}",
        "usersync_subscriber_events_published_total{kind=\"change\"}",
        "usersync_outreach_requests_total",
    ] {
        let value = parts.metric(counter).await;
        assert!(value >= 4.0, "{counter} is {value}");
    }
    until("librdkafka reports the consumer lag", || async {
        parts
            .metrics_page()
            .await
            .contains("usersync_consumer_lag{topic=\"usersync.user-changes.v1\"")
    })
    .await;
    parts.assert_matches_decide().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_disconnect_of_either_side_stops_it_and_a_reconnect_resumes_it() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;

    // Salesforce, by hand: the stream stops; changes wait in Salesforce's event bus.
    let (status, body) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/disconnect")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connection"]["reason"], "manual");
    // The session is revoked at Salesforce (the flow can mint a new one on reconnect).
    until("the subscriber's session is revoked", || async {
        !parts.salesforce.revocations().is_empty()
    })
    .await;
    let revoked = parts.salesforce.revocations();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(
        (revoked[0].kind, revoked[0].username.as_str()),
        ("access", INTEGRATION_USER)
    );
    parts.create_salesforce_user("while.salesforce.off");
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/reconnect")
        .await;
    assert_eq!(status, 202);
    until(
        "the change made while Salesforce was off arrives",
        || async { parts.in_outreach("while.salesforce.off@acme.example") },
    )
    .await;
    assert_eq!(parts.connection("salesforce").await["state"], "connected");

    // Outreach, by hand: the processor applies nothing; events wait in Kafka.
    let (status, body) = parts
        .admin(Method::POST, "/api/v1/connections/outreach/disconnect")
        .await;
    assert_eq!(status, 200, "{body}");
    parts.create_salesforce_user("while.outreach.off");
    // The subscriber still runs: the event reaches Kafka (its checkpoint passes it) and the
    // processor holds it there.
    let store = usersync::store::open(&parts.config.store.url)
        .await
        .unwrap();
    let latest = parts.salesforce.latest_replay_id();
    until("the subscriber has published the change", || async {
        store
            .checkpoint("/data/UserChangeEvent")
            .await
            .unwrap()
            .is_some_and(|c| c.replay_id == latest)
    })
    .await;
    assert!(
        !parts.in_outreach("while.outreach.off@acme.example"),
        "nothing is applied while Outreach is disconnected"
    );
    assert_eq!(parts.connection("salesforce").await["state"], "connected");
    let down = parts.connection("outreach").await;
    assert_eq!(
        (down["state"].as_str(), down["reason"].as_str()),
        (Some("disconnected"), Some("manual"))
    );
    let reconnected_at = chrono::Utc::now().timestamp_millis();
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/outreach/reconnect")
        .await;
    assert_eq!(status, 202);
    resumed(&parts, "outreach", "while.outreach.off@acme.example", 3).await;
    // Held, not applied, while Outreach was disconnected: Outreach made the user only after
    // the reconnect.
    let made = parts
        .outreach
        .users()
        .into_iter()
        .find(|u| u.email == "while.outreach.off@acme.example")
        .expect("applied after the reconnect");
    assert!(
        made.created_at.timestamp_millis() >= reconnected_at,
        "created at {} before the reconnect at {reconnected_at} ms",
        made.created_at
    );
    parts.assert_matches_decide().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_authorizing_user_leaves_and_a_reconnect_as_another_user_shows_them_at_once() {
    const SUCCESSOR: &str = "successor@acme.example";
    let parts = Parts::new().await;
    let running = parts.start_live().await;

    // The integration user leaves the company: deactivated, its sessions end.
    parts.salesforce.deactivate_user(INTEGRATION_USER);
    let down = stream_cut_until_disconnected(&parts).await;
    assert_eq!(down["reason"], "user_inactive", "{down}");
    assert_eq!(down["identity"]["username"], INTEGRATION_USER);
    parts.create_salesforce_user("during");

    // The Salesforce admin makes another user the app's run-as user; the Outreach admin
    // reconnects. The status names the new authorizing user at once.
    parts.salesforce.add_user(SUCCESSOR);
    parts.salesforce.set_run_as_user(Some(SUCCESSOR));
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/reconnect")
        .await;
    assert_eq!(status, 202);
    until("Salesforce is connected as the successor", || async {
        let now = parts.connection("salesforce").await;
        now["state"] == "connected" && now["identity"]["username"] == SUCCESSOR
    })
    .await;
    until("the change made while disconnected arrives", || async {
        parts.in_outreach("during@acme.example")
    })
    .await;
    parts.assert_matches_decide().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_credentials_changed_then_reconnect_with_the_new_secret() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;

    // The consumer secret is rotated and the sessions revoked: signing in again is refused.
    let new_secret = parts.salesforce.rotate_client_secret();
    parts.salesforce.revoke_tokens();
    parts
        .salesforce
        .inject_stream_fault(StreamFault::ResetStream);
    until("Salesforce is disconnected", || {
        state_is(&parts, "salesforce", "disconnected")
    })
    .await;
    assert_eq!(
        parts.connection("salesforce").await["reason"],
        "credentials_changed"
    );
    parts.create_salesforce_user("during");

    // A reconnect with a malformed body is refused naming the field; nothing is stored.
    let (status, body) = parts
        .admin_post(
            "/api/v1/connections/salesforce/reconnect",
            &json!({"flow": "client_credentials", "consumer_secret": 7}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("consumer_secret"), "{body}");

    let (status, body) = parts
        .admin_post(
            "/api/v1/connections/salesforce/reconnect",
            &json!({"flow": "client_credentials", "consumer_secret": new_secret}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        !body.contains(&new_secret),
        "the secret is never returned: {body}"
    );
    until("Salesforce is connected again", || {
        state_is(&parts, "salesforce", "connected")
    })
    .await;
    until("the change made while disconnected arrives", || async {
        parts.in_outreach("during@acme.example")
    })
    .await;
    let (_, status) = parts.admin(Method::GET, "/api/v1/status").await;
    assert!(!status.to_string().contains(&new_secret));
    parts.assert_matches_decide().await;
    running.stop().await;

    // The new secret is sealed in the store and survives a restart.
    let store = usersync::store::open(&parts.config.store.url)
        .await
        .unwrap();
    let sealed = store
        .authorization("salesforce")
        .await
        .unwrap()
        .unwrap()
        .sealed;
    assert!(
        !sealed
            .windows(new_secret.len())
            .any(|w| w == new_secret.as_bytes())
    );
    let running = parts.start().await;
    until(
        "Salesforce connects with the stored secret after a restart",
        || state_is(&parts, "salesforce", "connected"),
    )
    .await;
    running.stop().await;
}

/// Outreach revokes every token; the next write cannot be authorized and Outreach is
/// disconnected (`credentials_changed`) while Salesforce goes on; the change (user `during`)
/// waits in Kafka.
async fn outreach_revoked_with_a_change_waiting(parts: &Parts) {
    parts.outreach.revoke_tokens();
    parts.create_salesforce_user("during");
    until("Outreach is disconnected", || {
        state_is(parts, "outreach", "disconnected")
    })
    .await;
    let down = parts.connection("outreach").await;
    assert_eq!(down["reason"], "credentials_changed", "{down}");
    assert_eq!(parts.connection("salesforce").await["state"], "connected");
    assert!(!parts.in_outreach("during@acme.example"));
}

#[tokio::test(flavor = "multi_thread")]
async fn outreach_refresh_token_revoked_then_reconnect_with_a_new_one() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    outreach_revoked_with_a_change_waiting(&parts).await;

    let fresh = parts.outreach.issue_tokens(&["users.all"]).refresh_token;
    let (status, body) = parts
        .admin_post(
            "/api/v1/connections/outreach/reconnect",
            &json!({"refresh_token": fresh}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(!body.contains(&fresh), "{body}");
    resumed(&parts, "outreach", "during@acme.example", 2).await;
    parts.assert_matches_decide().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outreach_scope_removed_then_reconnect_with_the_scope() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;

    parts.outreach.remove_scope("users.all");
    parts.create_salesforce_user("during");
    until("Outreach is disconnected", || {
        state_is(&parts, "outreach", "disconnected")
    })
    .await;
    let down = parts.connection("outreach").await;
    assert_eq!(down["reason"], "permissions_changed", "{down}");
    assert!(
        down["advice"].as_str().unwrap().contains("users.all"),
        "{down}"
    );

    let fresh = parts.outreach.issue_tokens(&["users.all"]).refresh_token;
    let (status, body) = parts
        .admin_post(
            "/api/v1/connections/outreach/reconnect",
            &json!({"refresh_token": fresh}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    resumed(&parts, "outreach", "during@acme.example", 2).await;
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// The CLI verbs against the running process, which asks for an admin token: what an admin
/// types.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shows_status_disconnects_reconnects_and_tails_the_feed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    const TOKEN: &str = "cli-admin-token";
    let mut parts = Parts::new().await;
    parts.config.admin.token = usersync::config::Secret::new(TOKEN);
    let running = parts.start_live().await;
    let usersync_as = |token: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_usersync"));
        command
            .args(args)
            .env("USERSYNC_ADMIN_URL", &parts.admin_url)
            .env_remove("USERSYNC_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("USERSYNC_ADMIN_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let usersync = |args: &[&str]| usersync_as(Some(TOKEN), args);

    let (ok, _, err) = usersync_as(None, &["status"]);
    assert!(!ok, "no token, no status");
    assert!(err.contains("401") && err.contains("admin token"), "{err}");

    let (ok, out, err) = usersync(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("salesforce: connected as {INTEGRATION_USER}")),
        "{out}"
    );
    assert!(out.contains("outreach: connected"), "{out}");

    // The feed, followed by `usersync tail --json` in the background.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(["tail", "--json"])
        .env("USERSYNC_ADMIN_URL", &parts.admin_url)
        .env("USERSYNC_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(line["type"], "connection", "the current state comes first");
    }

    // Settings: a save that breaks a rule is refused naming it; a valid one is saved.
    let (ok, out, err) = usersync(&["settings", "get"]);
    assert!(ok, "{err}");
    let settings: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(settings["user_mapping"]["auto_remap_on_inactive"], true);
    let (ok, _, err) = usersync(&["settings", "set", "user_mapping.inbound_create=false"]);
    assert!(!ok);
    assert!(err.contains("User <> User Create checkbox"), "{err}");
    let (ok, out, err) = usersync(&[
        "settings",
        "set",
        "user_mapping.auto_remap_on_inactive=false",
        "user_mapping.mirror_id_field=custom2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"custom2\""), "{out}");
    let (ok, _, err) = usersync(&["settings", "set", "user_mapping.remap=true"]);
    assert!(!ok);
    assert!(err.contains("user_mapping.remap is not a setting"), "{err}");

    // The user that proved the pipeline live is mapped; an unknown email finds nothing.
    let (ok, out, err) = usersync(&["mappings", "find", "--email", "BEFORE@acme.example"]);
    assert!(ok, "{err}");
    assert!(out.contains("<> Salesforce user 005"), "{out}");
    let (ok, out, _) = usersync(&["mappings", "find", "--email", "nobody@acme.example"]);
    assert!(ok);
    assert!(out.contains("no mapping matches"), "{out}");

    let (ok, out, err) = usersync(&["disconnect", "outreach"]);
    assert!(ok, "{err}");
    assert!(out.contains("outreach: disconnected (manual)"), "{out}");
    assert!(
        out.contains("what to do: An admin disconnected this side"),
        "{out}"
    );

    let (ok, out, err) = usersync(&["reconnect", "outreach"]);
    assert!(ok, "{err}");
    assert!(out.contains("outreach: connecting"), "{out}");
    let (ok, _, err) = usersync(&["reconnect", "salesforce", "--consumer-secret", "x"]);
    assert!(!ok);
    assert!(err.contains("--flow is needed"), "{err}");

    parts.create_salesforce_user("followed");
    let seen = tokio::task::spawn_blocking(move || {
        let mut kinds = Vec::new();
        for line in lines.by_ref() {
            let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let done = line["decision"]["email"] == "followed@acme.example";
            kinds.push(line["type"].as_str().unwrap_or("?").to_owned());
            if done {
                break;
            }
        }
        kinds
    });
    let kinds = tokio::time::timeout(support::WAIT, seen)
        .await
        .expect("the decision reaches the feed")
        .unwrap();
    assert!(
        kinds.contains(&"connection".to_owned()),
        "the disconnect was on the feed: {kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("decision"));
    tail.kill().unwrap();
    tail.wait().unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_connection_passes_on_a_healthy_pipeline_and_names_the_step_that_breaks() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    let test = |side: &'static str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
            .args(["test-connection", side])
            .env("USERSYNC_ADMIN_URL", &parts.admin_url)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    for side in ["salesforce", "outreach"] {
        let (ok, out) = test(side);
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("{side}: every check passed")),
            "{out}"
        );
    }
    let (_, out) = test("salesforce");
    assert!(
        out.contains(&format!("signed in as {INTEGRATION_USER}")),
        "{out}"
    );

    // The replay step asks Salesforce whether the stored replay id can still be resumed.
    let replay_step = || async {
        let (status, body) = parts
            .admin(Method::POST, "/api/v1/connections/salesforce/test")
            .await;
        assert_eq!(status, 200, "{body}");
        body["checklist"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "replay_checkpoint")
            .cloned()
            .unwrap_or_else(|| panic!("no replay step: {body}"))
    };
    let store = usersync::store::open(&parts.config.store.url)
        .await
        .unwrap();
    parts.create_salesforce_user_with_email("replay", "replay@acme.example");
    until("the stream saved a replay id", || async {
        store
            .checkpoint("/data/UserChangeEvent")
            .await
            .unwrap()
            .is_some_and(|c| !c.replay_id.is_empty())
    })
    .await;
    let step = replay_step().await;
    assert_eq!(step["outcome"], "passed", "{step}");
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .contains("Salesforce resumes the stream after the checkpoint"),
        "{step}"
    );
    // Stopped (an admin disconnected it), the stream falls behind: a change after the
    // checkpoint, then the retention window passes them both. The disconnect answers once the
    // side is marked; the stream stops at its next step and then revokes its session, so the
    // change is made after that, where no stream can take it.
    let revoked_before = parts.salesforce.revocations().len();
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/disconnect")
        .await;
    assert_eq!(status, 200);
    until("the stopped stream revokes its session", || async {
        parts.salesforce.revocations().len() > revoked_before
    })
    .await;
    parts.create_salesforce_user_with_email("later", "later@acme.example");
    parts.salesforce.expire_replay_window();
    let step = replay_step().await;
    let detail = step["detail"].as_str().unwrap();
    assert!(
        detail.contains("can no longer resume") && detail.contains("changed since then"),
        "{step}"
    );

    parts.salesforce.set_view_all_users(INTEGRATION_USER, false);
    let (status, body) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/test")
        .await;
    assert_eq!(status, 200, "{body}");
    let steps: Vec<(String, String)> = body["checklist"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let outcome = |name: &str| {
        steps
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, o)| o.as_str())
    };
    assert_eq!(body["checklist"]["passed"], false);
    assert_eq!(outcome("token"), Some("passed"));
    assert_eq!(outcome("identity"), Some("passed"));
    assert_eq!(outcome("can_subscribe"), Some("failed"), "{body}");
    let (ok, out) = test("salesforce");
    assert!(!ok);
    assert!(out.contains("FAIL  can_subscribe"), "{out}");
    running.stop().await;
}

/// Two active Salesforce users with one email cannot both have the Outreach user: a conflict,
/// listed until a later decision about that email settles it (here the remap once the first
/// is deactivated).
#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_is_listed_until_a_later_decision_settles_it() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    let user = |name: &str| parts.create_salesforce_user_with_email(name, "shared@acme.example");
    let first = user("first");
    until("the first user is in Outreach", || async {
        parts.in_outreach("shared@acme.example")
    })
    .await;
    let _second = user("second");
    let open = || async {
        let (status, body) = parts.admin(Method::GET, "/api/v1/conflicts").await;
        assert_eq!(status, 200, "{body}");
        body["conflicts"].as_array().unwrap().clone()
    };
    until("the conflict is listed", || async {
        !open().await.is_empty()
    })
    .await;
    let listed = open().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["decision"]["action"], "conflict");
    assert_eq!(listed[0]["decision"]["email"], "shared@acme.example");
    assert_eq!(
        listed[0]["decision"]["reason"],
        "email_mapped_to_other_active_user"
    );

    // The admin deactivates the first user: the second takes the Outreach user, no conflict.
    parts.salesforce.deactivate(&first).unwrap();
    until("the conflict is settled", || async {
        open().await.is_empty()
    })
    .await;
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// Whether the subscriber read every user through REST (a SOQL query on User) since `since`
/// requests into the simulator's log.
fn read_every_user_since(parts: &Parts, since: usize) -> bool {
    parts.salesforce.requests()[since..]
        .iter()
        .any(|r| r.path.contains("/query") && r.path.contains("User"))
}

/// `POST /api/v1/resync`: every Salesforce user is read again and handed to the processor,
/// which creates nothing twice; refused, with what to do, while Salesforce is disconnected.
#[tokio::test(flavor = "multi_thread")]
async fn a_resync_reads_every_user_again_and_is_refused_while_disconnected() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    let since = parts.salesforce.requests().len();
    let applied = "usersync_processor_events_total{outcome=\"applied\"}";
    let applied_before = parts.metric(applied).await;
    let outreach_since = parts.outreach.requests().len();
    let (status, body) = parts.admin(Method::POST, "/api/v1/resync").await;
    assert_eq!(status, 202, "{body}");
    until("every user is read again", || async {
        read_every_user_since(&parts, since)
    })
    .await;
    // A read is a new event (a change within the same second would not show in its
    // LastModifiedDate): the processor decides on it, and an unchanged user costs no write.
    until("the snapshot reaches the processor", || async {
        parts.metric(applied).await > applied_before
    })
    .await;
    assert_eq!(parts.outreach.users().len(), 1, "nothing created twice");
    let writes: Vec<_> = parts.outreach.requests()[outreach_since..]
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/users"))
        .cloned()
        .collect();
    assert!(
        writes.is_empty(),
        "an unchanged user was written: {writes:?}"
    );

    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/disconnect")
        .await;
    assert_eq!(status, 200);
    let (status, body) = parts.admin(Method::POST, "/api/v1/resync").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "salesforce_disconnected");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reconnect it first"),
        "{body}"
    );
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// `salesforce.full_read_on_reconnect`: an admin's reconnect reads every user again first.
#[tokio::test(flavor = "multi_thread")]
async fn with_full_read_on_reconnect_a_reconnect_reads_every_user_again() {
    let mut parts = Parts::new().await;
    parts.config.salesforce.full_read_on_reconnect = true;
    let running = parts.start_live().await;
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/disconnect")
        .await;
    assert_eq!(status, 200);
    let since = parts.salesforce.requests().len();
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/reconnect")
        .await;
    assert_eq!(status, 202);
    until("every user is read again after the reconnect", || async {
        read_every_user_since(&parts, since)
    })
    .await;
    // A change after it still arrives: the stream went on.
    parts.create_salesforce_user("after");
    until("a later change is applied", || async {
        parts.in_outreach("after@acme.example")
    })
    .await;
    assert_eq!(parts.outreach.users().len(), 2);
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// Salesforce stays disconnected longer than it keeps events: on reconnect the stored replay
/// id is gone, so the subscriber reads every user changed since its checkpoint through REST.
/// Nothing changed meanwhile is lost, nothing is applied twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_the_replay_retention_loses_nothing_after_reconnect() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/disconnect")
        .await;
    assert_eq!(status, 200);
    until("Salesforce is disconnected", || {
        state_is(&parts, "salesforce", "disconnected")
    })
    .await;
    for n in 0..3 {
        parts.create_salesforce_user(&format!("away{n}"));
    }
    // Longer than the retention: the events of those changes are gone from the bus.
    parts.salesforce.expire_replay_window();
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/reconnect")
        .await;
    assert_eq!(status, 202);
    until("every change made during the outage is applied", || async {
        (0..3).all(|n| parts.in_outreach(&format!("away{n}@acme.example")))
    })
    .await;
    let users = parts.outreach.users();
    assert_eq!(users.len(), 4, "one Outreach user each: {users:?}");
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// The side's last checklist as the status shows it (`null` before the first).
async fn last_check(parts: &Parts, side: &str) -> serde_json::Value {
    parts.connection(side).await["last_check"].clone()
}

/// The checklist runs by itself at start, for both sides, and again after every reconnect:
/// the status (and the page) show each step without anyone pressing "Test connection".
#[tokio::test(flavor = "multi_thread")]
async fn the_checklist_runs_at_start_and_after_every_reconnect() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    for side in ["salesforce", "outreach"] {
        until("the checklist ran at start", || async {
            last_check(&parts, side).await.is_object()
        })
        .await;
        let check = last_check(&parts, side).await;
        assert_eq!(check["passed"], true, "{check}");
        assert_eq!(check["side"], side);
    }
    let at_start = last_check(&parts, "salesforce").await;

    // The integration user loses View All Users; the admin reconnects before fixing it.
    parts.salesforce.set_view_all_users(INTEGRATION_USER, false);
    let (status, body) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/reconnect")
        .await;
    assert_eq!(status, 202, "{body}");
    until("the checklist ran after the reconnect", || async {
        last_check(&parts, "salesforce").await["ran_at"] != at_start["ran_at"]
    })
    .await;
    let after = last_check(&parts, "salesforce").await;
    assert_eq!(after["passed"], false, "{after}");
    let failed: Vec<&str> = after["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "failed")
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["can_subscribe"], "{after}");
    // Outreach was not reconnected: its checklist is still the one from the start.
    assert_eq!(last_check(&parts, "outreach").await["passed"], true);
    // The reconnect itself met the missing permission too.
    until("Salesforce is disconnected again", || async {
        parts.connection("salesforce").await["reason"] == "permissions_changed"
    })
    .await;
    running.stop().await;
}

/// Follows one browser authorization by hand, as a browser would: the admin API's authorize
/// URL (its answer sets the cookie that binds the flow to this browser), the provider's
/// redirect (its consent page approves at once), then usersync's callback with the cookie.
/// Returns the callback URL the provider sent the browser to and where usersync sent it next.
async fn authorize_in_the_browser(parts: &Parts, side: &str) -> (String, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    let mut start = browser.get(format!(
        "{}/api/v1/connections/{side}/authorize",
        parts.admin_url
    ));
    let token = parts.config.admin.token.expose();
    if !token.is_empty() {
        start = start.bearer_auth(token);
    }
    let started = start.send().await.unwrap();
    assert_eq!(started.status(), 200);
    let body: serde_json::Value = started.json().await.unwrap();
    let consent = browser
        .get(body["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 302, "the provider redirects back");
    let callback = consent.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{}/oauth/{side}/callback?", parts.admin_url)),
        "{callback}"
    );
    (callback.clone(), follow_callback(&browser, &callback).await)
}

/// Where usersync's callback sends the browser (a 303 to the page).
async fn follow_callback(browser: &reqwest::Client, callback: &str) -> String {
    let back = browser.get(callback).send().await.unwrap();
    assert_eq!(back.status(), 303, "back to the page");
    back.headers()["location"].to_str().unwrap().to_owned()
}

/// The authorizing user leaves; the admin authorizes Salesforce again in the browser as
/// another user (the web server flow with state and PKCE). The status shows the new user at
/// once, the flow is the refresh token the callback stored, and the change made meanwhile
/// arrives. A forged or replayed callback is refused and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn salesforce_authorized_again_in_the_browser_as_another_user_loses_nothing() {
    const SUCCESSOR: &str = "successor@acme.example";
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    parts.salesforce.deactivate_user(INTEGRATION_USER);
    let down = stream_cut_until_disconnected(&parts).await;
    assert_eq!(down["reason"], "user_inactive", "{down}");
    parts.create_salesforce_user("during");

    // A callback with a state usersync never issued: refused, nothing stored.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let forged = follow_callback(
        &browser,
        &format!(
            "{}/oauth/salesforce/callback?code=aPrxSTOLEN&state=forged",
            parts.admin_url
        ),
    )
    .await;
    assert!(
        forged.starts_with("/?authorization_failed=salesforce&reason=")
            && forged.contains("unknown"),
        "{forged}"
    );
    assert_eq!(
        parts.connection("salesforce").await["state"],
        "disconnected"
    );

    parts.salesforce.add_user(SUCCESSOR);
    parts.salesforce.sign_in_at_authorize(Some(SUCCESSOR));
    // The successor first denies the app: the page says why, nothing is stored.
    parts.salesforce.deny_authorizations(true);
    let (_, denied) = authorize_in_the_browser(&parts, "salesforce").await;
    assert!(
        denied.starts_with("/?authorization_failed=salesforce&reason=")
            && denied.contains("access_denied"),
        "{denied}"
    );
    assert_eq!(
        parts.connection("salesforce").await["state"],
        "disconnected"
    );
    parts.salesforce.deny_authorizations(false);
    let (callback, page) = authorize_in_the_browser(&parts, "salesforce").await;
    assert_eq!(page, "/?authorized=salesforce");
    until("Salesforce is connected as the successor", || async {
        let now = parts.connection("salesforce").await;
        now["state"] == "connected" && now["identity"]["username"] == SUCCESSOR
    })
    .await;
    until("the change made while disconnected arrives", || async {
        parts.in_outreach("during@acme.example")
    })
    .await;
    assert_eq!(parts.outreach.users().len(), 2, "none twice");

    // The same callback again (a reload, or someone who saw the URL): the state is used up.
    let replayed = follow_callback(&browser, &callback).await;
    assert!(
        replayed.starts_with("/?authorization_failed=salesforce"),
        "{replayed}"
    );
    assert_eq!(
        parts.connection("salesforce").await["identity"]["username"],
        SUCCESSOR
    );
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// Outreach's tokens are revoked; the admin authorizes Outreach again in the browser (the
/// authorization-code flow with state): the change held in Kafka meanwhile is applied. The
/// reconnect the callback asked for is recorded as the act of the token that started the flow.
#[tokio::test(flavor = "multi_thread")]
async fn outreach_authorized_again_in_the_browser_loses_nothing() {
    let mut parts = Parts::new().await;
    parts.config.admin.token = usersync::config::Secret::new("browser-flow-admin-token");
    let running = parts.start_live().await;
    outreach_revoked_with_a_change_waiting(&parts).await;
    let (_, page) = authorize_in_the_browser(&parts, "outreach").await;
    assert_eq!(page, "/?authorized=outreach");
    resumed(&parts, "outreach", "during@acme.example", 2).await;
    let actions = admin_actions(&parts).await;
    assert_eq!(actions[0]["action"], "reconnect", "{actions:?}");
    assert_eq!(
        actions[0]["detail"],
        json!({"side": "outreach", "new_authorization": true, "browser": true})
    );
    assert_eq!(
        actions[0]["actor"], "admin",
        "admin.token goes by the name admin"
    );
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// Named tokens of `[[admin.tokens]]`, as `usersync run` reads them: the viewer's token reads
/// the status and the log but its disconnect is refused, naming the role it needs, and
/// changes nothing; the admin's disconnect and reconnect go through, and the log, the live
/// feed and the CLI's tail name who asked.
#[tokio::test(flavor = "multi_thread")]
async fn named_tokens_let_a_viewer_read_and_record_who_changed_what() {
    use std::process::Command;

    const OPS: &str = "ops-token-0123456789abcdef0123456789";
    const DASHBOARD: &str = "dashboard-token-0123456789abcdef0123";
    let mut parts = Parts::new().await;
    let ops_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ops_file.path(), format!("{OPS}\n")).unwrap();
    parts.config.admin.tokens = vec![
        usersync::config::AdminTokenConfig {
            name: "ops".into(),
            role: "admin".into(),
            token: Default::default(),
            token_file: ops_file.path().display().to_string(),
        },
        usersync::config::AdminTokenConfig {
            name: "dashboard".into(),
            role: "viewer".into(),
            token: usersync::config::Secret::new(DASHBOARD),
            token_file: String::new(),
        },
    ];
    let running = parts.start_live().await;
    let usersync = |token: &str, args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_usersync"))
            .args(args)
            .env("USERSYNC_ADMIN_URL", &parts.admin_url)
            .env("USERSYNC_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, out, err) = usersync(DASHBOARD, &["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = usersync(DASHBOARD, &["disconnect", "outreach"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("403")
            && err.contains("needs a token with the role admin")
            && err.contains("\"dashboard\" has the role viewer"),
        "{err}"
    );
    assert_eq!(parts.connection("outreach").await["state"], "connected");

    // The tail of the live feed, as the viewer follows it.
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .arg("tail")
        .env("USERSYNC_ADMIN_URL", &parts.admin_url)
        .env("USERSYNC_ADMIN_TOKEN", DASHBOARD)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tail.stdout.take().unwrap()));
    let reader = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.lock().unwrap().push(line);
            }
        }
    });
    let tail_has = |wanted: &'static [&'static str]| {
        let seen = seen.clone();
        move || {
            let lines = seen.lock().unwrap().clone();
            async move { wanted.iter().all(|w| lines.iter().any(|l| l.contains(w))) }
        }
    };
    until(
        "the tail follows the feed",
        tail_has(&["connection salesforce: ", "connection outreach: "]),
    )
    .await;

    let (code, out, err) = usersync(OPS, &["disconnect", "outreach"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = usersync(OPS, &["reconnect", "outreach"]);
    assert_eq!(code, Some(0), "{out}{err}");
    until(
        "the tail shows who disconnected and reconnected",
        tail_has(&[
            " admin    disconnect outreach by ops (admin action ",
            " admin    reconnect outreach by ops (admin action ",
        ]),
    )
    .await;
    until("Outreach is connected again", || {
        state_is(&parts, "outreach", "connected")
    })
    .await;

    let response = parts
        .http
        .get(format!("{}/api/v1/admin-actions", parts.admin_url))
        .bearer_auth(DASHBOARD)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let logged: Vec<(&str, &str, &str)> = body["admin_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["detail"]["side"].as_str().unwrap(),
                a["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            ("reconnect", "outreach", "ops"),
            ("disconnect", "outreach", "ops")
        ],
        "the viewer's refused disconnect left no trail"
    );
    drop(tail);
    reader.abort();
    running.stop().await;
}

/// Each change read from the stream (not a snapshot read through REST) on the change topic:
/// its event id → how many times it is there, its replay id and its user's email.
fn stream_changes(parts: &Parts) -> BTreeMap<String, (usize, String, String)> {
    let mut seen: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    for event in parts.published_events() {
        if event["origin"]["transport"] != "pubsub" {
            continue;
        }
        let entry = seen
            .entry(event["event_id"].as_str().unwrap().to_owned())
            .or_insert_with(|| {
                (
                    0,
                    event["origin"]["replay_id"].as_str().unwrap().to_owned(),
                    event["user"]["email"].as_str().unwrap_or("").to_owned(),
                )
            });
        entry.0 += 1;
    }
    seen
}

/// The subscriber's checkpoint as the store holds it.
async fn stored_checkpoint(parts: &Parts) -> Option<usersync::store::ReplayCheckpoint> {
    let store = usersync::store::open(&parts.config.store.url)
        .await
        .unwrap();
    store.checkpoint("/data/UserChangeEvent").await.unwrap()
}

/// Starts `usersync run` and waits for the stream to be open before any user changes: the
/// initial load is over and its pin stored. Every change made after that comes from the
/// stream (in `stream_changes`), none through the initial load. Then waits, like
/// [`Parts::start_live`], for a first change (user `before`) to go all the way through.
async fn start_streaming(parts: &Parts) -> support::Running {
    let running = parts.start().await;
    until("the initial load is over and the stream pinned", || async {
        stored_checkpoint(parts).await.is_some()
    })
    .await;
    parts.create_salesforce_user("before");
    until("the pipeline is live", || async {
        parts.in_outreach("before@acme.example")
    })
    .await;
    running
}

/// Waits until the subscriber has saved the newest position of the stream.
async fn caught_up(parts: &Parts) {
    until("the checkpoint is the stream's newest position", || async {
        let latest = parts.salesforce.latest_replay_id();
        stored_checkpoint(parts)
            .await
            .is_some_and(|c| c.replay_id == latest)
    })
    .await;
}

/// How many decisions the processor has recorded (the log holds fewer than a page here).
async fn decisions_recorded(parts: &Parts) -> usize {
    let store = usersync::store::open(&parts.config.store.url)
        .await
        .unwrap();
    let page = store
        .decisions(&usersync::store::DecisionQuery {
            limit: usersync::store::MAX_DECISION_PAGE,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.next_after.is_none(), "more decisions than one page");
    page.records.len()
}

/// Whether the processor's consumer group has committed, on every partition of the change
/// topic, the offset after the last record on it: it has read everything published.
fn processor_read_everything(parts: &Parts) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = &parts.config.kafka;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &parts.config.processor.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        partitions.add_partition(&kafka.topic, partition);
    }
    let wait = std::time::Duration::from_secs(10);
    let Ok(committed) = consumer.committed_offsets(partitions, wait) else {
        return false;
    };
    (0..kafka.partitions).all(|partition| {
        let (_, high) = consumer
            .fetch_watermarks(&kafka.topic, partition, wait)
            .unwrap();
        let at = committed
            .find_partition(&kafka.topic, partition)
            .map(|p| p.offset());
        match at {
            Some(rdkafka::Offset::Offset(offset)) => offset == high,
            _ => high == 0,
        }
    })
}

/// `POST /api/v1/replay` with `body`; the status and the JSON answer.
async fn replay(parts: &Parts, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = parts.admin_post("/api/v1/replay", &body).await;
    (status, serde_json::from_str(&text).unwrap_or_default())
}

async fn admin_actions(parts: &Parts) -> Vec<serde_json::Value> {
    let (status, body) = parts.admin(Method::GET, "/api/v1/admin-actions").await;
    assert_eq!(status, 200, "{body}");
    body["admin_actions"].as_array().unwrap().clone()
}

/// A replay from earliest: the plan first, which changes nothing; confirmed, every change
/// Salesforce still holds is published again, the processor creates nothing twice, and the
/// stream goes on; the action is in the admin-action log. Refused, naming what is wrong: a
/// `from` that is not a replay id, a replay id Salesforce does not hold, a body that is not
/// JSON, and any replay while Salesforce is disconnected.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_earliest_publishes_retained_changes_again_and_applies_none_twice() {
    let parts = Parts::new().await;
    let running = start_streaming(&parts).await;
    let ann = parts.create_salesforce_user("ann");
    parts.create_salesforce_user("bob");
    parts
        .salesforce
        .update_users(&[ann], json!({"Title": "VP"}), &Writer::default())
        .unwrap();
    until("the changes are applied", || async {
        parts.in_outreach("bob@acme.example")
            && parts
                .outreach
                .users()
                .iter()
                .any(|u| u.title.as_deref() == Some("VP"))
    })
    .await;
    caught_up(&parts).await;
    let before = stream_changes(&parts);
    assert_eq!(before.len(), 4, "before, ann, bob, ann's title: {before:?}");
    let checkpoint = hex::encode(parts.salesforce.latest_replay_id());

    // The plan: where the stream is, what is read again; nothing changes.
    let (status, body) = replay(&parts, json!({"from": "earliest"})).await;
    assert_eq!(status, 200, "{body}");
    let plan = &body["plan"];
    assert_eq!(plan["from"], "earliest");
    assert_eq!(plan["transport"], "pubsub");
    assert_eq!(plan["checkpoint"]["replay_id"], checkpoint.as_str());
    let rereads = plan["rereads"].as_str().unwrap();
    assert!(
        rereads.starts_with("Every change Salesforce still holds, from about ")
            && rereads.contains("the processor skips what it already applied"),
        "{rereads}"
    );
    assert!(plan["skipped"].is_null(), "{plan}");
    assert!(
        admin_actions(&parts).await.is_empty(),
        "a plan is not an action"
    );
    assert_eq!(
        stored_checkpoint(&parts).await.unwrap().replay_id,
        parts.salesforce.latest_replay_id()
    );

    // Confirmed: every retained change is published again, under its own event id; the
    // processor reads every copy and drops each as a duplicate, deciding nothing new.
    until("the processor has read everything", || async {
        processor_read_everything(&parts)
    })
    .await;
    let decided = decisions_recorded(&parts).await;
    assert!(decided >= 3, "a create for each user: {decided}");
    let (status, body) = replay(&parts, json!({"from": "earliest", "confirm": true})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["admin_action"]["action"], "replay");
    until(
        "every retained change is published a second time",
        || async {
            let now = stream_changes(&parts);
            now.len() == before.len() && now.values().all(|(copies, ..)| *copies == 2)
        },
    )
    .await;
    until("the processor has read every copy", || async {
        processor_read_everything(&parts)
    })
    .await;
    assert_eq!(
        decisions_recorded(&parts).await,
        decided,
        "the copies were dropped as duplicates: no decision about them"
    );
    let users = parts.outreach.users();
    assert_eq!(users.len(), 3, "nothing created twice: {users:?}");
    // The stream goes on from its newest position.
    parts.create_salesforce_user("after");
    until("a later change is applied", || async {
        parts.in_outreach("after@acme.example")
    })
    .await;
    caught_up(&parts).await;
    parts.assert_matches_decide().await;

    // The log: when, from where, and the checkpoint it moved from.
    let actions = admin_actions(&parts).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["action"], "replay");
    assert_eq!(actions[0]["sequence"], body["admin_action"]["sequence"]);
    assert_eq!(actions[0]["detail"]["from"], "earliest");
    assert_eq!(
        actions[0]["detail"]["checkpoint_before"]["replay_id"],
        checkpoint.as_str()
    );

    // Refusals, each naming what is wrong; none is recorded.
    let (status, body) = replay(&parts, json!({"from": "zz", "confirm": true})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_replay_from");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not a hex digit") && message.contains("salesforce.transport"),
        "{message}"
    );
    let (status, body) = replay(&parts, json!({"from": "00ff", "confirm": true})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_replay_from");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Salesforce cannot resume after this replay id"),
        "{body}"
    );
    let (status, body) = replay(&parts, json!({"from": "latest", "confirm": 1})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_replay_request");
    let as_text = parts
        .http
        .post(format!("{}/api/v1/replay", parts.admin_url))
        .header("content-type", "text/plain")
        .body(r#"{"from": "latest", "confirm": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(as_text.status(), 415);
    let (status, _) = parts
        .admin(Method::POST, "/api/v1/connections/salesforce/disconnect")
        .await;
    assert_eq!(status, 200);
    let (status, body) = replay(&parts, json!({"from": "latest", "confirm": true})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "salesforce_disconnected");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reconnect it first"),
        "{body}"
    );
    // Refusals are not recorded; the disconnect is, with who asked (no token: `local`).
    let logged: Vec<(String, String)> = admin_actions(&parts)
        .await
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            ("disconnect".to_owned(), "local".to_owned()),
            ("replay".to_owned(), "local".to_owned())
        ]
    );
    running.stop().await;
}

/// A replay after a replay id publishes again only the changes after it; a replay from latest
/// reads nothing again and pins the stream at its newest position, from where later changes
/// still arrive. Both are logged, newest first, with a resync.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_an_id_reads_what_follows_it_and_one_from_latest_skips_ahead() {
    let parts = Parts::new().await;
    let running = parts.start_live().await;
    for name in ["ann", "bob", "cy"] {
        parts.create_salesforce_user(name);
    }
    until("the creates are applied", || async {
        parts.in_outreach("cy@acme.example")
    })
    .await;
    caught_up(&parts).await;
    let before = stream_changes(&parts);
    let (_, ann_replay, _) = before
        .values()
        .find(|(_, _, email)| email == "ann@acme.example")
        .cloned()
        .unwrap();

    // After ann's create: bob's and cy's are read again, before's and ann's are not.
    let (status, body) = replay(&parts, json!({"from": ann_replay})).await;
    assert_eq!(status, 200, "{body}");
    let plan = &body["plan"];
    assert!(
        plan["rereads"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Every change after replay id {ann_replay} ")),
        "{plan}"
    );
    assert_eq!(
        plan["checked"],
        format!("Salesforce still holds replay id {ann_replay}.")
    );
    let (status, body) = replay(&parts, json!({"from": ann_replay, "confirm": true})).await;
    assert_eq!(status, 202, "{body}");
    until(
        "the changes after the replay id are published again",
        || async {
            stream_changes(&parts)
                .values()
                .all(|(copies, replay_id, _)| {
                    *copies == if *replay_id > ann_replay { 2 } else { 1 }
                })
        },
    )
    .await;
    caught_up(&parts).await;
    let after_id = stream_changes(&parts);
    assert_eq!(
        after_id
            .values()
            .filter(|(copies, ..)| *copies == 2)
            .map(|(_, _, email)| email.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        ["bob@acme.example", "cy@acme.example"].into(),
    );

    // From latest: the plan says what is skipped; confirmed, the checkpoint becomes a pin at
    // the newest position and nothing is read again.
    let (status, body) = replay(&parts, json!({"from": "latest"})).await;
    assert_eq!(status, 200, "{body}");
    let skipped = body["plan"]["skipped"].as_str().unwrap();
    assert!(
        skipped.contains("are never read") && skipped.contains("resync"),
        "{skipped}"
    );
    let asked_at = chrono::Utc::now();
    let (status, body) = replay(&parts, json!({"from": "latest", "confirm": true})).await;
    assert_eq!(status, 202, "{body}");
    until("the checkpoint is a pin at the newest position", || async {
        stored_checkpoint(&parts).await.is_some_and(|c| {
            c.replay_id.is_empty() && c.commit_timestamp.is_some_and(|at| at >= asked_at)
        })
    })
    .await;
    parts.create_salesforce_user("dan");
    until("a later change is applied", || async {
        parts.in_outreach("dan@acme.example")
    })
    .await;
    caught_up(&parts).await;
    let now = stream_changes(&parts);
    for (event_id, seen) in &after_id {
        assert_eq!(now[event_id].0, seen.0, "nothing read again: {event_id}");
    }
    assert_eq!(parts.outreach.users().len(), 5, "none twice");

    let (status, body) = parts.admin(Method::POST, "/api/v1/resync").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["admin_action"]["action"], "resync");
    let actions = admin_actions(&parts).await;
    let logged: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["detail"]["from"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            ("resync", "-"),
            ("replay", "latest"),
            ("replay", ann_replay.as_str())
        ]
    );
    assert!(
        actions[0]["detail"]["checkpoint_before"]["replay_id"].is_string(),
        "{actions:?}"
    );
    parts.assert_matches_decide().await;
    running.stop().await;
}

/// `usersync replay`: the plan first; without a terminal only `--yes` confirms; a bad id is
/// refused with the API's reason; the replay and a resync are in the log.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shows_the_replay_plan_and_replays_only_once_confirmed() {
    use std::process::Command;

    const TOKEN: &str = "cli-replay-token";
    let mut parts = Parts::new().await;
    parts.config.admin.token = usersync::config::Secret::new(TOKEN);
    let running = start_streaming(&parts).await;
    let usersync = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_usersync"))
            .args(args)
            .env("USERSYNC_ADMIN_URL", &parts.admin_url)
            .env("USERSYNC_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let logged = || async {
        let response = parts
            .http
            .get(format!("{}/api/v1/admin-actions", parts.admin_url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["admin_actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    // No terminal to type yes on, no --yes: the plan is shown and nothing changes.
    let (code, out, err) = usersync(&["replay", "--from", "latest"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.starts_with("Replay from latest (Pub/Sub API).\nNow: "),
        "{out}"
    );
    assert!(out.contains("\nNot read: Changes made between"), "{out}");
    assert!(err.contains("give --yes"), "{err}");
    assert!(logged().await.is_empty(), "nothing recorded");

    let (code, _, err) = usersync(&["replay", "--from", "12g4", "--yes"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("422") && err.contains("'g' at position 3 is not a hex digit"),
        "{err}"
    );

    let (code, out, err) = usersync(&["replay", "--from", "earliest", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("Read again: Every change Salesforce still holds"),
        "{out}"
    );
    assert!(out.contains("replay requested (admin action 1)"), "{out}");
    until("the retained change is published again", || async {
        stream_changes(&parts)
            .values()
            .all(|(copies, ..)| *copies == 2)
    })
    .await;
    let (code, _, err) = usersync(&["resync"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(logged().await, ["resync", "replay"]);
    parts.assert_matches_decide().await;
    running.stop().await;
}
