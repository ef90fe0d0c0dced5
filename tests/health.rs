//! `usersync health` as a container's health check runs it: the real binary, its exit code and
//! its message.

use std::net::SocketAddr;
use std::process::{Command, Output};

use tokio::sync::watch;

/// Runs `usersync health` with `args` and `env`, in an environment free of the caller's
/// `USERSYNC_…` variables.
fn health(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_usersync"));
    command.arg("health").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("USERSYNC_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A health listener on a free loopback port, serving until the sender is dropped.
async fn healthy_server() -> (SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(usersync::app::health::serve(
        listener,
        usersync::app::health::Probes::alive().router(),
        shutdown,
    ));
    (address, stop)
}

/// A loopback address nothing listens on.
fn closed_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_server_exits_0_and_says_so() {
    let (address, _stop) = healthy_server().await;
    let output =
        tokio::task::spawn_blocking(move || health(&["--address", &address.to_string()], &[]))
            .await
            .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        text(&output.stdout).trim(),
        format!("healthy: http://{address}/healthz answered 200 OK")
    );
}

#[test]
fn nothing_listening_exits_1_naming_the_address() {
    let address = closed_address();
    let output = health(&["--address", &address.to_string()], &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "usersync: unhealthy: cannot reach http://{address}/healthz"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_address_comes_from_the_health_listener_variable_then_admin_listen() {
    let (address, _stop) = healthy_server().await;
    let wildcard = format!("0.0.0.0:{}", address.port());
    let by_variable = {
        let wildcard = wildcard.clone();
        tokio::task::spawn_blocking(move || health(&[], &[("USERSYNC_HEALTH_LISTEN", wildcard)]))
    };
    let output = by_variable.await.unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        text(&output.stdout).contains(&format!("http://127.0.0.1:{}/healthz", address.port())),
        "a wildcard listen address is asked on loopback: {output:?}"
    );

    let by_config =
        tokio::task::spawn_blocking(move || health(&[], &[("USERSYNC_ADMIN__LISTEN", wildcard)]));
    let output = by_config.await.unwrap();
    assert!(output.status.success(), "admin.listen is asked: {output:?}");

    let closed = closed_address();
    let output = health(&[], &[("USERSYNC_ADMIN__LISTEN", closed.to_string())]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains(&format!("http://{closed}/healthz")),
        "{output:?}"
    );
}

#[test]
fn without_an_admin_server_it_says_what_to_give() {
    let output = health(&[], &[("USERSYNC_ADMIN__LISTEN", String::new())]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("admin.listen is empty") && stderr.contains("--address"),
        "{stderr}"
    );
}
