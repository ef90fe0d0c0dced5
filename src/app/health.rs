//! Liveness for containers: `usersync health`, and the health listener every long-running
//! verb can serve.
//!
//! `usersync health` asks a running usersync in the same container whether it is alive, so an
//! image's health check needs nothing but the binary (no curl). It sends `GET /healthz` to
//!
//! 1. `--address`, or the variable `USERSYNC_HEALTH_LISTEN` — the health listener below;
//! 2. otherwise the admin server of `usersync run`: `admin.listen` of the configuration
//!    (`--config` / `USERSYNC_CONFIG`, and the `USERSYNC_…` variables).
//!
//! A wildcard address (`0.0.0.0`, `[::]`) is asked on loopback. Answer 200: healthy, exit 0;
//! anything else (nothing listening, a timeout, another status): exit 1 with a message naming
//! the URL asked.
//!
//! The health listener: `usersync subscriber|processor|run|sim … --health-listen HOST:PORT`
//! (or `USERSYNC_HEALTH_LISTEN`) serves the operator's routes ([`Probes`]) there while the
//! process runs — no API, no token. A role run alone has no admin server, so this is what its
//! container's health check, an orchestrator's probes and Prometheus ask. Because the verb and
//! `usersync health` read the same variable, one setting in a container's environment serves
//! both. The admin server serves the same routes beside its API.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::Connections;
use crate::store::Store;

/// The variable of `--health-listen` and of `usersync health --address`.
pub const HEALTH_LISTEN_ENV: &str = "USERSYNC_HEALTH_LISTEN";

/// `--health-listen`, shared by every long-running verb.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HealthListen {
    /// Serve GET /healthz (and, where the verb has them, /readyz and /metrics) on this address
    /// while running: no API, no token; for a container's health check (`usersync health`
    /// reads the same variable), an orchestrator's probes and Prometheus. Unset: nothing.
    #[arg(long, env = HEALTH_LISTEN_ENV, value_name = "HOST:PORT")]
    pub health_listen: Option<String>,
}

impl HealthListen {
    /// Binds the listener, when one is asked for, and serves `probes` there until the
    /// returned server is stopped. Fails, naming the address, when it cannot listen there.
    pub async fn start(&self, probes: Probes) -> anyhow::Result<HealthServer> {
        let Some(listen) = self
            .health_listen
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        else {
            return Ok(HealthServer(None));
        };
        let address: SocketAddr = listen.parse().map_err(|e| {
            anyhow::anyhow!(
                "--health-listen ({HEALTH_LISTEN_ENV}) {listen:?} is not host:port: {e}"
            )
        })?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!("cannot listen on --health-listen ({HEALTH_LISTEN_ENV}) {address}")
            })?;
        tracing::info!(%address, routes = ?probes.paths(), "health listener serving");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, probes.router(), stopped));
        Ok(HealthServer(Some((stop, task))))
    }
}

/// A running health listener (or none). Stopped by the verb after its role has stopped, so
/// the probes answer while the role drains.
#[must_use = "a health server runs until it is stopped"]
pub struct HealthServer(Option<(watch::Sender<bool>, JoinHandle<std::io::Result<()>>)>);

impl HealthServer {
    /// Stops serving and waits for the listener to close.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Some((stop, task)) = self.0 else {
            return Ok(());
        };
        let _ = stop.send(true);
        task.await
            .context("the health listener panicked")?
            .context("serving the health listener")
    }
}

/// The operator's routes: `/healthz` always (the process answers); `/readyz` when there is a
/// store to ask (ready when it answers); `/metrics` when there is a role's connection board
/// (the process's counters and each connection's state, as OpenMetrics text).
#[derive(Clone, Default)]
pub struct Probes {
    store: Option<Arc<dyn Store>>,
    connections: Option<Connections>,
}

impl Probes {
    /// `/healthz` alone (the simulators).
    pub fn alive() -> Probes {
        Probes::default()
    }

    /// Adds `/readyz`, asking `store`.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Probes {
        self.store = Some(store);
        self
    }

    /// Adds `/metrics`, with the state of `connections`.
    pub fn with_metrics(mut self, connections: Connections) -> Probes {
        self.connections = Some(connections);
        self
    }

    /// The paths served.
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths = vec!["/healthz"];
        if self.store.is_some() {
            paths.push("/readyz");
        }
        if self.connections.is_some() {
            paths.push("/metrics");
        }
        paths
    }

    /// The routes, ready to serve or to merge into the admin server's.
    pub fn router(self) -> axum::Router {
        let mut router = axum::Router::new().route("/healthz", get(|| async { "ok" }));
        if let Some(store) = self.store {
            router = router.route("/readyz", get(move || ready(store.clone())));
        }
        if let Some(connections) = self.connections {
            router = router.route(
                "/metrics",
                get(move || async move { metrics(&connections) }),
            );
        }
        router
    }
}

/// Ready when the store answers; 503 with the store's error otherwise.
async fn ready(store: Arc<dyn Store>) -> Response {
    match store.settings().await {
        Ok(_) => "ready".into_response(),
        Err(error) => {
            let body = serde_json::json!({
                "error": {"code": "store_unavailable", "message": error.to_string()}
            });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// Prometheus' page: the process's counters and each connection's state now.
fn metrics(connections: &Connections) -> Response {
    let page = crate::metrics::global().render(connections);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        page,
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Where to connect for a server listening on `listen`: the address itself, or loopback for a
/// wildcard (a server on `0.0.0.0` answers on `127.0.0.1`).
pub fn connect_address(listen: &str) -> Result<SocketAddr, String> {
    let listen = listen.trim();
    let mut address: SocketAddr = listen
        .parse()
        .map_err(|e| format!("{listen:?} is not host:port: {e}"))?;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(address)
}

/// The `/healthz` URL of `address`.
pub fn healthz_url(address: SocketAddr) -> String {
    format!("http://{address}/healthz")
}

/// Asks `address` for `/healthz`, waiting at most `timeout`. `Ok` with a line saying who
/// answered when it answered 200; an error naming the URL otherwise.
pub async fn check(address: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let url = healthz_url(address);
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("building the HTTP client of the health check")?;
    let response =
        client.get(&url).send().await.with_context(|| {
            format!("unhealthy: cannot reach {url} (waited at most {timeout:?})")
        })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body = body.trim();
        anyhow::bail!(
            "unhealthy: {url} answered {status}{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {}", body.chars().take(200).collect::<String>())
            }
        );
    }
    Ok(format!("healthy: {url} answered {status}"))
}

/// The address `usersync health` asks: `address` when given (the flag or
/// `USERSYNC_HEALTH_LISTEN`), else the configuration's `admin.listen`.
pub fn target(
    address: Option<&str>,
    admin_listen: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<SocketAddr> {
    if let Some(address) = address.map(str::trim).filter(|a| !a.is_empty()) {
        return connect_address(address)
            .map_err(|e| anyhow::anyhow!("--address ({HEALTH_LISTEN_ENV}): {e}"));
    }
    let listen = admin_listen()?;
    if listen.trim().is_empty() {
        anyhow::bail!(
            "admin.listen is empty, so this usersync has no admin server to ask; give --address \
             (or {HEALTH_LISTEN_ENV}) with the --health-listen address of the verb that runs"
        );
    }
    connect_address(&listen).map_err(|e| anyhow::anyhow!("admin.listen: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        assert_eq!(
            connect_address("0.0.0.0:8700").unwrap(),
            "127.0.0.1:8700".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_address("[::]:8700").unwrap(),
            "[::1]:8700".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_address(" 10.1.2.3:9 ").unwrap(),
            "10.1.2.3:9".parse::<SocketAddr>().unwrap()
        );
        let error = connect_address("admin:8700").unwrap_err();
        assert!(error.contains("\"admin:8700\" is not host:port"), "{error}");
    }

    #[test]
    fn the_flag_wins_over_the_configuration() {
        let asked = target(Some("0.0.0.0:8701"), || {
            panic!("the configuration is not read")
        });
        assert_eq!(asked.unwrap(), "127.0.0.1:8701".parse().unwrap());
        let asked = target(None, || Ok("127.0.0.1:8700".into()));
        assert_eq!(asked.unwrap(), "127.0.0.1:8700".parse().unwrap());
        let asked = target(Some(" "), || Ok("0.0.0.0:9000".into()));
        assert_eq!(asked.unwrap(), "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn without_an_admin_server_the_error_says_what_to_give() {
        let error = target(None, || Ok(String::new())).unwrap_err().to_string();
        assert!(error.contains("admin.listen is empty"), "{error}");
        assert!(error.contains("--address"), "{error}");
        let error = target(Some("nowhere"), || unreachable!())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--address (USERSYNC_HEALTH_LISTEN)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_listener_answers_until_shutdown() {
        let (stop, shutdown) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Probes::alive().router(), shutdown));
        let line = check(address, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            line,
            format!("healthy: http://{address}/healthz answered 200 OK")
        );
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
        let error = format!(
            "{:#}",
            check(address, Duration::from_secs(5)).await.unwrap_err()
        );
        assert!(
            error.starts_with(&format!("unhealthy: cannot reach http://{address}/healthz")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn another_status_is_unhealthy_and_quoted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/healthz",
            axum::routing::get(|| async {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "store down")
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        let error = check(address, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "unhealthy: http://{address}/healthz answered 503 Service Unavailable: store down"
            )
        );
    }

    #[tokio::test]
    async fn the_verb_flag_binds_or_names_the_address() {
        HealthListen::default()
            .start(Probes::alive())
            .await
            .unwrap()
            .stop()
            .await
            .unwrap();
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap();
        let busy = HealthListen {
            health_listen: Some(address.to_string()),
        };
        let error = format!("{:#}", busy.start(Probes::alive()).await.err().unwrap());
        assert!(
            error.starts_with(&format!(
                "cannot listen on --health-listen (USERSYNC_HEALTH_LISTEN) {address}"
            )),
            "{error}"
        );
        drop(taken);
        let free = HealthListen {
            health_listen: Some(address.to_string()),
        };
        let server = free.start(Probes::alive()).await.unwrap();
        check(address, Duration::from_secs(5)).await.unwrap();
        server.stop().await.unwrap();
        assert!(check(address, Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test]
    async fn a_role_s_probes_answer_health_readiness_and_metrics_and_no_api() {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let connections = Connections::new();
        connections.connected(crate::connection::Side::Outreach, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (_stop, shutdown) = watch::channel(false);
        let probes = Probes::alive().with_store(store).with_metrics(connections);
        assert_eq!(probes.paths(), ["/healthz", "/readyz", "/metrics"]);
        tokio::spawn(serve(listener, probes.router(), shutdown));
        let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
        assert_eq!(ready.text().await.unwrap(), "ready");
        let page = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            crate::metrics::sample(
                &page,
                "usersync_connection_state{side=\"outreach\",state=\"connected\"}"
            ),
            Some(1.0),
            "{page}"
        );
        for api in ["/api/v1/status", "/api/v1/settings", "/"] {
            let response = reqwest::get(format!("{url}{api}")).await.unwrap();
            assert_eq!(response.status(), 404, "{api}");
        }
    }

    #[tokio::test]
    async fn the_simulators_probes_answer_only_health() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (_stop, shutdown) = watch::channel(false);
        assert_eq!(Probes::alive().paths(), ["/healthz"]);
        tokio::spawn(serve(listener, Probes::alive().router(), shutdown));
        assert_eq!(
            reqwest::get(format!("{url}/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
        for absent in ["/readyz", "/metrics"] {
            let response = reqwest::get(format!("{url}{absent}")).await.unwrap();
            assert_eq!(response.status(), 404, "{absent}");
        }
    }
}
