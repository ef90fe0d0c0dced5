//! `usersync decide` end to end: the binary, the real engine and client, the in-process
//! simulator. Costs are counted by the simulator, which sees every HTTP request.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use usersync::app::scenario::{Scenario, run};
use usersync::engine::{Action, Reason};

const X: &str = "005000000000001AAA";
const Y: &str = "005000000000002AAA";

fn usersync(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn decide_file(name: &str) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = usersync(&["decide", &path], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document on stdout")
}

fn actions(output: &Value) -> Vec<(String, String)> {
    output["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_string(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_remapped_to_y(output: &Value) {
    assert_eq!(
        output["mappings"],
        json!([{"outreach_user_id": 1, "salesforce_user_id": Y}])
    );
    let users = output["outreach_users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "no Outreach user was created");
    assert_eq!(users[0]["custom1"], Y);
    let remaps: Vec<&Value> = output["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "remap")
        .collect();
    assert_eq!(remaps.len(), 1);
    assert_eq!(remaps[0]["outreach_user_id"], 1);
    assert_eq!(remaps[0]["previous_salesforce_user_id"], X);
    assert_eq!(remaps[0]["salesforce_user_id"], Y);
    assert_eq!(remaps[0]["outreach_calls"], 1);
    assert_eq!(
        output["outreach_calls"], 1,
        "a remap costs one Outreach call"
    );
}

#[test]
fn seed_example_remaps_when_y_arrives_first() {
    let output = decide_file("seed-remap.json");
    assert_eq!(
        actions(&output),
        vec![
            (
                "conflict".into(),
                "email_mapped_to_other_active_user".into()
            ),
            ("remap".into(), "mapped_user_inactive".into())
        ]
    );
    assert_remapped_to_y(&output);
}

#[test]
fn seed_example_remaps_when_x_is_deactivated_first() {
    let output = decide_file("seed-remap-deactivated-first.json");
    assert_eq!(actions(&output)[1].0, "remap");
    assert_remapped_to_y(&output);
}

#[test]
fn with_the_remap_setting_off_the_mapping_never_moves() {
    let mut scenario = example("seed-remap-setting-off.json");
    for events in [
        scenario["events"].clone(),
        json!([scenario["events"][1], scenario["events"][0]]),
    ] {
        scenario["events"] = events;
        let out = usersync(&["decide", "-"], Some(&scenario.to_string()));
        assert!(out.status.success());
        let output: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            output["mappings"],
            json!([{"outreach_user_id": 1, "salesforce_user_id": X}])
        );
        assert!(!actions(&output).iter().any(|(a, _)| a == "remap"));
        assert_eq!(output["outreach_calls"], 0);
    }
}

#[test]
fn output_shape_follows_the_contract() {
    let path = format!("{}/examples/new-hire.json", env!("CARGO_MANIFEST_DIR"));
    let raw = String::from_utf8(usersync(&["decide", &path], None).stdout).unwrap();
    // Top-level keys, in the documented order (two-space indentation marks the top level).
    let at = |key: &str| {
        raw.find(&format!("\n  \"{key}\":"))
            .unwrap_or_else(|| panic!("{key}"))
    };
    assert!(at("decisions") < at("mappings"));
    assert!(at("mappings") < at("outreach_users"));
    assert!(at("outreach_users") < at("outreach_calls"));
    let output: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(output.as_object().unwrap().len(), 4);
    let decision = output["decisions"][0].as_object().unwrap();
    let mut fields: Vec<&str> = decision.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "action",
            "event_id",
            "message",
            "outreach_calls",
            "outreach_user_id",
            "previous_salesforce_user_id",
            "reason",
            "salesforce_user_id"
        ]
    );
    let user = output["outreach_users"][0].as_object().unwrap();
    let mut fields: Vec<&str> = user.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "custom1",
            "email",
            "first_name",
            "id",
            "last_name",
            "locked"
        ]
    );
}

/// Runs a scenario in-process and returns its output.
fn run_scenario(scenario: &Value) -> usersync::app::scenario::Output {
    let scenario = Scenario::parse(scenario.to_string().as_bytes()).expect("valid scenario");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(&scenario))
        .expect("the scenario runs")
}

#[test]
fn a_create_costs_one_call_and_a_repeat_or_stale_event_none() {
    let hire = example("new-hire.json");
    let created = hire["events"][0].clone();
    let promoted = hire["events"][1].clone();

    let once = run_scenario(&json!({"events": [created]}));
    assert_eq!(once.decisions.len(), 1);
    assert_eq!(once.decisions[0].action, Action::Create);
    assert_eq!(once.decisions[0].outreach_calls, 1);
    assert_eq!(once.outreach_calls, 1, "a create costs one Outreach call");

    let repeated = run_scenario(&json!({"events": [created, created, created]}));
    assert_eq!(repeated.outreach_calls, 1, "a repeated event costs nothing");
    assert!(
        repeated.decisions[1..]
            .iter()
            .all(|d| d.reason == Reason::DuplicateEvent && d.outreach_calls == 0)
    );

    // The promotion, then the (older) hire delivered late: stale.
    let stale = run_scenario(&json!({"events": [promoted, created]}));
    assert_eq!(stale.decisions[1].reason, Reason::StaleEvent);
    assert_eq!(stale.decisions[1].outreach_calls, 0);
    assert_eq!(stale.outreach_calls, 1, "only the promotion's create");
    assert_eq!(stale.outreach_users[0].first_name.as_deref(), Some("Cy"));
}

#[test]
fn created_users_get_ids_from_the_highest_existing_plus_one() {
    let mut scenario = json!({
        "outreach_users": [
            {"id": 3, "email": "a@def.com", "first_name": "A", "last_name": "A", "locked": false},
            {"id": 10, "email": "b@def.com", "first_name": "B", "last_name": "B", "locked": true}
        ]
    });
    scenario["events"] = json!([example("new-hire.json")["events"][0]]);
    let output = run_scenario(&scenario);
    let ids: Vec<i64> = output.outreach_users.iter().map(|u| u.id).collect();
    assert_eq!(ids, vec![3, 10, 11]);
    assert_eq!(output.mappings[0].outreach_user_id, 11);
    assert!(output.outreach_users[1].locked);
}

#[test]
fn replaying_all_events_again_calls_nothing_and_changes_nothing() {
    for name in [
        "seed-remap.json",
        "seed-remap-deactivated-first.json",
        "new-hire.json",
        "lock-when-inactive.json",
        "dedupe-off.json",
    ] {
        let scenario = example(name);
        let once = run_scenario(&scenario);
        let mut twice = scenario.clone();
        let events = scenario["events"].as_array().unwrap();
        twice["events"] = Value::Array(events.iter().chain(events).cloned().collect());
        let again = run_scenario(&twice);
        assert_eq!(once.outreach_calls, again.outreach_calls, "{name}");
        assert_eq!(once.mappings, again.mappings, "{name}");
        assert_eq!(once.outreach_users, again.outreach_users, "{name}");
        assert!(
            again.decisions[once.decisions.len()..]
                .iter()
                .all(|d| d.reason == Reason::DuplicateEvent),
            "{name}"
        );
    }
}

fn refused(input: &str) -> String {
    let out = usersync(&["decide", "-"], Some(input));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_scenario_that_does_not_parse_exits_2_naming_the_field() {
    let mut bad_id = example("seed-remap.json");
    bad_id["events"][1]["user_id"] = json!("005000000000001AAB");
    let message = refused(&bad_id.to_string());
    assert!(message.contains("events[1].user_id"), "{message}");
    assert!(message.contains("checksum"), "{message}");

    let mut bad_type = example("seed-remap.json");
    bad_type["events"][0]["user"]["is_active"] = json!("yes");
    let message = refused(&bad_type.to_string());
    assert!(message.contains("events[0].user.is_active"), "{message}");

    let mut missing = example("seed-remap.json");
    missing["events"][1]
        .as_object_mut()
        .unwrap()
        .remove("event_id");
    let message = refused(&missing.to_string());
    assert!(
        message.contains("events[1]") && message.contains("event_id"),
        "{message}"
    );

    let message = refused(r#"{"setings": {}}"#);
    assert!(message.contains("setings"), "{message}");

    let message = refused(r#"{"settings": {"email_field": {"dedupe": "off"}}}"#);
    assert!(message.contains("remap_requires_dedupe_both"), "{message}");

    let message = refused(
        r#"{"mappings": [{"outreach_user_id": 4, "salesforce_user_id": "005000000000001AAA"}]}"#,
    );
    assert!(
        message.contains("mappings[0].outreach_user_id"),
        "{message}"
    );

    let message = refused("not json");
    assert!(message.contains("expected"), "{message}");

    let out = usersync(&["decide", "/nonexistent/scenario.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn every_example_parses_and_its_events_match_the_schema() {
    let schema: Value = serde_json::from_str(usersync::model::event::JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        Scenario::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        for (i, event) in value["events"].as_array().unwrap().iter().enumerate() {
            let errors: Vec<String> = validator
                .iter_errors(event)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{} events[{i}]: {errors:?}",
                path.display()
            );
        }
        seen += 1;
    }
    assert!(seen >= 6, "the examples folder holds the scenarios");
}
