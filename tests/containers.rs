//! The compose stack in containers, as `docker compose --profile demo up` runs it for users:
//! docker-compose.yml with tests/containers/compose.override.yml, which swaps the registry-only
//! Kafka and PostgreSQL images for local stand-ins (a tansu broker, Debian's PostgreSQL), and the
//! project's image built from the Dockerfile's `prebuilt` target with the binary cargo built for
//! this test (scripts/containers.sh; docs/deploy.md says why).
//!
//! It checks, through the containers only:
//! - the demo container tells the seed story (Y created with X's email, X deactivated, Outreach
//!   user 1 remapped to Y) and exits 0, and the admin API shows the remap and the mapping;
//! - the two processor replicas share the partitions: each holds a non-empty set, and with the
//!   admin's processor (a third member of the group) they hold every partition once;
//! - `down` then `up` keeps the mapping (the named volumes);
//! - every container passes its health check, and stops on SIGTERM within its compose
//!   `stop_grace_period` with an exit code other than 137 (killed).
//!
//! podman 4.3 cannot wait for `service_healthy` (podman-compose ignores the condition), so the
//! test starts the stack in the order those conditions give, running each container's health
//! check itself between the steps.
//!
//! It needs podman, podman-compose 1.6.0, debootstrap and tansu (`scripts/containers.sh
//! install`, as root). Without one it is skipped, except under CI (`CI` set), where it fails.
//! Run it with `--nocapture` to see each step's time.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const PROJECT: &str = "usersync-ctest";
const IMAGE: &str = "localhost/usersync:ctest";
const EMAIL: &str = "abc@def.com";
/// `kafka.partitions`, the default the compose file keeps.
const PARTITIONS: usize = 12;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The tools the test needs that this machine lacks.
fn missing_tools() -> Vec<&'static str> {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing = Vec::new();
    for tool in ["podman", "tansu"] {
        if !runs(tool, "--version") {
            missing.push(tool);
        }
    }
    if !runs("debootstrap", "--version") {
        missing.push("debootstrap");
    }
    let venv = repo().join("target/containers/venv/bin/podman-compose");
    let compose = Command::new("podman-compose")
        .arg("--version")
        .output()
        .is_ok_and(|o| text(&o.stdout).contains("podman-compose version 1.6.0"));
    if !compose && !venv.exists() {
        missing.push("podman-compose 1.6.0");
    }
    missing
}

/// Step timings, printed as the test goes and at the end.
struct Clock {
    started: Instant,
    step: Instant,
    steps: Vec<(String, Duration)>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            started: Instant::now(),
            step: Instant::now(),
            steps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &str) {
        let took = self.step.elapsed();
        eprintln!("containers: {what}: {took:.1?}");
        self.steps.push((what.to_owned(), took));
        self.step = Instant::now();
    }

    fn summary(&self) -> String {
        let mut lines: Vec<String> = self
            .steps
            .iter()
            .map(|(what, took)| format!("  {took:>8.1?}  {what}"))
            .collect();
        lines.push(format!("  {:>8.1?}  in all", self.started.elapsed()));
        lines.join("\n")
    }
}

/// The compose project of the test: brought down with its volumes when dropped, with every
/// container's last log lines printed first when the test failed.
struct Stack {
    env_file: PathBuf,
    admin_url: String,
    token: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Stack {
    fn new() -> Stack {
        let dir = repo().join("target/containers");
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // No secret in the env file: the compose file's `secrets` service makes them, as for a
        // user who runs the one command.
        let env_file = dir.join("ctest.env");
        std::fs::write(
            &env_file,
            format!("USERSYNC_IMAGE={IMAGE}\nUSERSYNC_ADMIN_PORT={port}\n"),
        )
        .unwrap();
        Stack {
            env_file,
            admin_url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            // No kept connections: `down` and `up` replace the server behind the port.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// `scripts/containers.sh ARGS` with the test's project, image and env file.
    fn script(&self, args: &[&str]) -> Output {
        Command::new(repo().join("scripts/containers.sh"))
            .args(args)
            .env("USERSYNC_CONTAINERS_PROJECT", PROJECT)
            .env("USERSYNC_CONTAINERS_ENV", &self.env_file)
            .env("USERSYNC_IMAGE", IMAGE)
            .env("USERSYNC_BINARY", env!("CARGO_BIN_EXE_usersync"))
            .output()
            .expect("scripts/containers.sh runs")
    }

    fn compose(&self, args: &[&str]) {
        let mut all = vec!["compose", "--profile", "demo"];
        all.extend_from_slice(args);
        let output = self.script(&all);
        assert!(
            output.status.success(),
            "podman-compose {args:?} failed:\n{}\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }

    /// The containers of `service`, by name.
    fn containers(&self, service: &str) -> Vec<String> {
        let output = podman(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=io.podman.compose.project={PROJECT}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ]);
        let mut names: Vec<String> = text(&output.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect();
        names.sort();
        names
    }

    /// Runs each container's health check until it passes (podman here cannot schedule them).
    fn wait_healthy(&self, services: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        for service in services {
            let names = self.containers(service);
            assert!(!names.is_empty(), "no container for {service}");
            for name in names {
                loop {
                    let check = podman(&["healthcheck", "run", &name]);
                    if check.status.success() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{name} is not healthy within {within:?}: {}{}\nits log:\n{}",
                        text(&check.stdout),
                        text(&check.stderr),
                        tail(&logs(&name), 30)
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// The admin token the `secrets` service made, as an operator reads it (`exec admin cat
    /// …`), after checking that only the admin's user can read it.
    fn read_admin_token(&self) -> String {
        let admin = self.containers("admin").remove(0);
        let file = "/run/usersync/secrets/admin-token";
        let mode = podman(&["exec", &admin, "stat", "--format", "%a %u", file]);
        assert_eq!(text(&mode.stdout).trim(), "400 10001", "{mode:?}");
        let cat = podman(&["exec", &admin, "cat", file]);
        assert!(cat.status.success(), "{cat:?}");
        let token = text(&cat.stdout);
        assert!(
            token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
            "a random token of 48 hex digits, not {} characters",
            token.len()
        );
        token
    }

    /// `GET path` on the admin API, with the token.
    fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.admin_url);
        self.runtime.block_on(async {
            let response = self
                .http
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "GET {url}: {status} {body}");
            body
        })
    }

    /// Waits until the consumer group's members — the two processor replicas and the
    /// processor of the admin's `usersync run` — hold every partition between them, each
    /// replica a non-empty set and no partition twice. Their sets, by container.
    fn wait_group_settled(&self, within: Duration) -> Vec<(String, BTreeSet<i32>)> {
        let replicas = self.containers("processor");
        assert_eq!(replicas.len(), 2, "deploy.replicas of the processor");
        let members: Vec<String> = replicas
            .iter()
            .cloned()
            .chain(self.containers("admin"))
            .collect();
        let deadline = Instant::now() + within;
        loop {
            let held: Vec<(String, BTreeSet<i32>)> = members
                .iter()
                .map(|name| (name.clone(), assigned_partitions(&logs(name))))
                .collect();
            let total: usize = held.iter().map(|(_, set)| set.len()).sum();
            let union: BTreeSet<i32> = held.iter().flat_map(|(_, set)| set.clone()).collect();
            let replicas_hold = held[..2].iter().all(|(_, set)| !set.is_empty());
            if replicas_hold && union.len() == PARTITIONS && total == PARTITIONS {
                return held;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas do not share the {PARTITIONS} partitions within {within:?}: {held:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The Salesforce user Outreach user `id` is mapped to now.
    fn mapped_to(&self, outreach_user_id: i64) -> Option<String> {
        let answer = self.get(&format!(
            "/api/v1/mappings?outreach_user_id={outreach_user_id}"
        ));
        answer["mappings"][0]["salesforce_user_id"]
            .as_str()
            .map(str::to_owned)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let all = podman(&[
                "ps",
                "-a",
                "--filter",
                &format!("label=io.podman.compose.project={PROJECT}"),
                "--format",
                "{{.Names}} {{.Status}}",
            ]);
            eprintln!("containers of {PROJECT}:\n{}", text(&all.stdout));
            for line in text(&all.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                eprintln!("== {name}, last lines:\n{}", tail(&logs(name), 25));
            }
        }
        if std::env::var_os("USERSYNC_CONTAINERS_KEEP").is_none() {
            let _ = self.script(&["compose", "--profile", "demo", "down", "-v", "-t", "30"]);
        }
    }
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs")
}

fn logs(name: &str) -> String {
    let output = podman(&["logs", name]);
    text(&output.stdout) + &text(&output.stderr)
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn inspect(name: &str, format: &str) -> String {
    text(&podman(&["inspect", "--format", format, name]).stdout)
        .trim()
        .to_owned()
}

/// The partitions a processor's JSON log says it holds: those of its last assignment.
fn assigned_partitions(log: &str) -> BTreeSet<i32> {
    log.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| {
            let message = line["fields"]["message"].as_str();
            message == Some("partitions assigned") || message == Some("partitions revoked")
        })
        .filter(|line| line["fields"]["message"] == "partitions assigned")
        .and_then(|line| line["fields"]["partitions"].as_str().map(str::to_owned))
        .map(|list| {
            list.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for a container to exit; its exit code.
fn wait_exit(name: &str, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        if inspect(name, "{{.State.Status}}") == "exited" {
            return inspect(name, "{{.State.ExitCode}}").parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not finish within {within:?}; its log:\n{}",
            tail(&logs(name), 40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The services of docker-compose.yml the stack runs, with their `stop_grace_period`, in the
/// order they stop (the roles while Kafka and PostgreSQL still serve them).
const STOP_ORDER: [(&str, Duration); 8] = [
    ("admin", Duration::from_secs(30)),
    ("processor", Duration::from_secs(30)),
    ("subscriber", Duration::from_secs(30)),
    ("salesforce-sim", Duration::from_secs(10)),
    ("outreach-sim", Duration::from_secs(10)),
    ("postgres", Duration::from_secs(10)),
    ("kafka", Duration::from_secs(10)),
    ("demo", Duration::from_secs(10)),
];

#[test]
fn the_compose_stack_tells_the_story_keeps_its_state_and_stops_cleanly() {
    let missing = missing_tools();
    if !missing.is_empty() {
        let message = format!(
            "the container test needs {}: scripts/containers.sh install (as root)",
            missing.join(", ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        eprintln!("skipped: {message}");
        return;
    }
    let mut clock = Clock::new();
    let mut stack = Stack::new();

    let images = stack.script(&["images"]);
    assert!(
        images.status.success(),
        "scripts/containers.sh images failed:\n{}",
        text(&images.stderr)
    );
    eprint!("{}", text(&images.stderr));
    clock.lap("images (base, stand-ins, the project's from the host binary)");

    // What an earlier run left behind, if it was killed.
    let _ = stack.script(&["compose", "--profile", "demo", "down", "-v", "-t", "5"]);
    let infrastructure = ["kafka", "postgres"];
    let roles = [
        "salesforce-sim",
        "outreach-sim",
        "subscriber",
        "processor",
        "admin",
    ];
    stack.compose(&["up", "-d", "kafka", "postgres"]);
    stack.wait_healthy(&infrastructure, Duration::from_secs(120));
    let mut up = vec!["up", "-d"];
    up.extend(roles);
    stack.compose(&up);
    stack.wait_healthy(&roles, Duration::from_secs(120));
    assert_eq!(
        stack.containers("processor").len(),
        2,
        "deploy.replicas of the processor"
    );
    let secrets = stack.containers("secrets").remove(0);
    assert_eq!(wait_exit(&secrets, Duration::from_secs(10)), 0, "{secrets}");
    stack.token = stack.read_admin_token();
    clock.lap("up: Kafka and PostgreSQL healthy, then the simulators and roles healthy");

    // Both replicas hold partitions of the one group before the story starts, as the
    // end-to-end tests wait for (a rebalance on tansu can take a while).
    let assignments = stack.wait_group_settled(Duration::from_secs(180));
    eprintln!("containers: partitions held: {assignments:?}");
    clock.lap("the consumer group settled: the replicas share the partitions");

    // The story, told by the demo container through the simulators and the admin API.
    stack.compose(&["up", "-d", "demo"]);
    let demo = stack.containers("demo").remove(0);
    let exit = wait_exit(&demo, Duration::from_secs(300));
    let story = logs(&demo);
    eprintln!("the demo container said:\n{story}");
    assert_eq!(exit, 0, "the demo container's exit code");
    let remap = story.find("decision: remap").expect("the remap is told");
    let conflict = story
        .find("decision: conflict")
        .expect("Y's conflict is told");
    assert!(conflict < remap, "{story}");
    assert!(
        story.contains("Outreach user 1 ↔ Salesforce user Y"),
        "{story}"
    );
    let remaps = stack.get(&format!("/api/v1/decisions?action=remap&email={EMAIL}"));
    let decision = &remaps["decisions"][0]["decision"];
    assert_eq!(decision["outreach_user_id"], 1, "{remaps}");
    let x = decision["previous_salesforce_user_id"]
        .as_str()
        .expect("the remap names X")
        .to_owned();
    let y = decision["salesforce_user_id"]
        .as_str()
        .expect("the remap names Y")
        .to_owned();
    assert_ne!(x, y);
    assert_eq!(stack.mapped_to(1).as_deref(), Some(y.as_str()));
    clock.lap("the story, through the containers");

    // `down` keeps the named volumes; `up` finds the mapping in PostgreSQL again. podman-compose
    // stops every container at once, Kafka and PostgreSQL with the roles that still need them to
    // finish; the roles go first here, as Docker Compose stops dependents first.
    let mut stop = vec!["stop", "-t", "30"];
    stop.extend(roles);
    stack.compose(&stop);
    stack.compose(&["down", "-t", "30"]);
    for volume in ["postgres-data", "kafka-data", "secrets"] {
        let name = format!("{PROJECT}_{volume}");
        assert!(
            podman(&["volume", "exists", &name]).status.success(),
            "{name} outlived down"
        );
    }
    clock.lap("down, the volumes kept");
    stack.compose(&["up", "-d", "kafka", "postgres"]);
    stack.wait_healthy(&infrastructure, Duration::from_secs(120));
    stack.compose(&up);
    stack.wait_healthy(&roles, Duration::from_secs(120));
    assert_eq!(
        stack.read_admin_token(),
        stack.token,
        "the secrets survived down and up"
    );
    assert_eq!(
        stack.mapped_to(1).as_deref(),
        Some(y.as_str()),
        "the mapping survived down and up"
    );
    stack.wait_group_settled(Duration::from_secs(180));
    clock.lap("up again, the mapping kept, the group settled");

    // SIGTERM: each container stops within its grace period, by itself.
    let mut stops = Vec::new();
    for (service, bound) in STOP_ORDER {
        for name in stack.containers(service) {
            if inspect(&name, "{{.State.Status}}") != "running" {
                continue;
            }
            let started = Instant::now();
            let stop = podman(&["stop", "-t", &bound.as_secs().to_string(), &name]);
            let took = started.elapsed();
            assert!(stop.status.success(), "podman stop {name}: {stop:?}");
            let exit = inspect(&name, "{{.State.ExitCode}}");
            eprintln!("containers: {name} stopped in {took:.1?}, exit {exit}");
            stops.push((name, took, bound, exit));
        }
    }
    assert_eq!(stops.len(), 8, "every container was running: {stops:?}");
    for (name, took, bound, exit) in &stops {
        assert!(
            took < bound && exit != "137",
            "{name} took {took:?} (bound {bound:?}) and exited {exit}; its log:\n{}",
            tail(&logs(name), 20)
        );
    }
    clock.lap("SIGTERM to each container");
    eprintln!("containers: timings\n{}", clock.summary());
}
