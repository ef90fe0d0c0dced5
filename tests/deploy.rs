//! deploy/: the Grafana dashboard and the Prometheus rules name only series usersync exports,
//! as its own `/metrics` page renders them; and `scripts/deploy-check.sh` passes (the
//! manifests render and validate, the rules load and their unit tests pass).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use usersync::connection::{Connections, LeaseRole, SubscriberLease};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every series name the page carries, from the real render: each family is announced by a
/// `# TYPE name kind` line, and a counter's samples end in `_total`. A family shows only once
/// it has a sample, so each recording call is made first: one left out here leaves its series
/// off the list, and a query of it fails the tests below rather than passing unchecked.
fn exported() -> BTreeSet<String> {
    use usersync::metrics::{Link, Reconnect};
    let metrics = usersync::metrics::global();
    metrics.decision(usersync::engine::decision::Action::Create);
    metrics.record_lag([("usersync.user-changes.v1".to_owned(), 0, 0)]);
    metrics.reconnect(Link::salesforce, Reconnect::idle);
    metrics.salesforce_heard();
    metrics.salesforce_commit(chrono::Utc::now());
    let connections = Connections::new();
    connections.subscriber(SubscriberLease {
        instance: "deploy-test".into(),
        role: LeaseRole::Active,
        epoch: Some(1),
        holder: Some("deploy-test".into()),
        expires_at: None,
    });
    let page = metrics.render(&connections);
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declared
            .split_once(' ')
            .unwrap_or_else(|| panic!("a TYPE line without a kind: {line}"));
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "gauge" | "unknown" => {
                names.insert(name.to_owned());
            }
            "histogram" | "summary" => {
                for part in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{part}"));
                }
            }
            other => panic!("a series kind this test does not know: {other} ({line})"),
        }
    }
    assert!(
        names.contains("usersync_reconnects_total")
            && names.contains("usersync_salesforce_silence_seconds"),
        "the page as rendered: {page}"
    );
    names
}

/// The series a PromQL expression reads: each name that is not a function, a keyword, a label
/// (inside `{…}` or a grouping list), a string or a duration.
fn series_in(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 30] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "Inf",
        "NaN",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut found = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening character to its closing one (strings inside are skipped whole).
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '(' && after_grouping {
            after_grouping = false;
            i = skip_to(i + 1, ')');
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&word.as_str()) {
                after_grouping = true;
            } else if word == "offset" {
                // `offset 5m`: the duration is no series.
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                found.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number (or `1e3`, `0x1f`): no series.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn the_promql_reader_finds_series_and_nothing_else() {
    let expr = r#"sum by (job, side) (increase(usersync_reconnects_total{side="a{b}",job=~"$job"}[$__rate_interval] offset 5m)) > 1e3
        and on (job) max without (instance) (usersync_subscriber_active == bool 1)
        or absent(usersync_salesforce_silence_seconds)"#;
    assert_eq!(
        series_in(expr),
        BTreeSet::from([
            "usersync_reconnects_total".to_owned(),
            "usersync_subscriber_active".to_owned(),
            "usersync_salesforce_silence_seconds".to_owned(),
        ])
    );
    assert_eq!(
        series_in("deriv(sum by (topic) (x_lag)[15m:1m]) > 0"),
        BTreeSet::from(["x_lag".to_owned()])
    );
}

/// The PromQL of every panel target and the metric of every `label_values(metric, label)`
/// variable of the dashboard.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/monitoring/usersync-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut found = Vec::new();
    fn panels(panel: &serde_json::Value, found: &mut Vec<(String, String)>) {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            found.push((format!("panel {title:?}"), expr.to_owned()));
        }
        for inner in panel["panels"].as_array().into_iter().flatten() {
            panels(inner, found);
        }
    }
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels(panel, &mut found);
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let query = match &variable["query"] {
            serde_json::Value::Object(query) => query["query"].as_str().unwrap_or_default(),
            serde_json::Value::String(query) => query.as_str(),
            _ => "",
        };
        if let Some(arguments) = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let metric = arguments.split(',').next().unwrap_or_default().trim();
            found.push((format!("variable {}", variable["name"]), metric.to_owned()));
        }
    }
    found
}

/// The `expr` of every rule in a Prometheus rules file, as it is written there: on one line,
/// or as a block (`expr: |`) of the lines indented deeper. The count is checked against the
/// rules, so an expression written any other way fails here rather than going unread.
fn rule_expressions(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut found = Vec::new();
    let mut rule = String::from("?");
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(name) = trimmed
            .strip_prefix("- alert:")
            .or_else(|| trimmed.strip_prefix("- record:"))
        {
            rule = name.trim().to_owned();
        }
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if matches!(rest, "|" | "|-" | ">" | ">-") {
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > indent(line))
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                found.push((format!("rule {rule}"), block.join("\n")));
            } else {
                let unquoted = rest.trim_matches(|c| c == '\'' || c == '"');
                found.push((format!("rule {rule}"), unquoted.to_owned()));
            }
        }
        i += 1;
    }
    let rules = lines
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(found.len(), rules, "one expr per rule: {found:?}");
    found
}

/// The metric of each input series of the rules' unit tests (`series: 'name{…}'`).
fn rule_test_inputs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("- series:"))
        .map(|series| {
            let series = series.trim().trim_matches(|c| c == '\'' || c == '"');
            let name = series.split('{').next().unwrap_or_default().trim();
            ("a unit test's input".to_owned(), name.to_owned())
        })
        .collect()
}

/// Names used in `used` that the page does not export, with where they are used.
fn unknown(
    used: &[(String, String)],
    exported: &BTreeSet<String>,
    names: impl Fn(&str) -> BTreeSet<String>,
) -> Vec<String> {
    let mut unknown = Vec::new();
    for (place, text) in used {
        let named = names(text);
        assert!(!named.is_empty(), "{place} names no series: {text}");
        for name in named {
            if !exported.contains(&name) {
                unknown.push(format!("{name} ({place})"));
            }
        }
    }
    unknown
}

#[test]
fn the_dashboard_names_only_series_usersync_exports() {
    let exported = exported();
    let used = dashboard_expressions();
    assert!(used.len() >= 10, "the dashboard's queries: {used:?}");
    let unknown = unknown(&used, &exported, series_in);
    assert!(
        unknown.is_empty(),
        "the dashboard reads series /metrics does not export: {unknown:?}; exported: {exported:?}"
    );
}

#[test]
fn the_rules_and_their_tests_name_only_series_usersync_exports() {
    let exported = exported();
    let rules = rule_expressions(&read("deploy/monitoring/usersync-rules.yaml"));
    assert!(rules.len() >= 5, "the rules: {rules:?}");
    let mut unknown_names = unknown(&rules, &exported, series_in);
    let inputs = rule_test_inputs(&read("deploy/monitoring/usersync-rules.test.yaml"));
    assert!(!inputs.is_empty(), "the unit tests feed series");
    unknown_names.extend(unknown(&inputs, &exported, |name| {
        BTreeSet::from([name.to_owned()])
    }));
    assert!(
        unknown_names.is_empty(),
        "the rules read series /metrics does not export: {unknown_names:?}; exported: {exported:?}"
    );
}

/// What the script's exit 3 means: a tool is missing.
const MISSING_TOOL: i32 = 3;

#[test]
fn the_manifests_validate_and_the_rules_pass_their_checks() {
    let script = repo().join("scripts/deploy-check.sh");
    let output = Command::new(&script)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.code() == Some(MISSING_TOOL) {
        let message = format!("scripts/deploy-check.sh could not run: {}", said.trim());
        assert!(std::env::var_os("CI").is_none(), "{message}, and CI is set");
        eprintln!("{message}: skipped");
        return;
    }
    assert!(output.status.success(), "deploy-check.sh failed:\n{said}");
    assert!(said.contains("all checks passed"), "{said}");
}
