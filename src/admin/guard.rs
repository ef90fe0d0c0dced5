//! Who may ask the admin server anything: the defenses against a browser on the operator's
//! machine, in front of every route but the probes (docs/security.md, "Admin server").
//!
//! - **`Host` names this server.** A web page whose DNS name is rebound to 127.0.0.1 talks to
//!   this port as if it were its own site, but its requests carry its own name in `Host`. Only
//!   the server's names pass: the loopback names (`localhost`, `127.0.0.1`, `[::1]`) with the
//!   listen port, the listen address itself, `admin.public_url`, and `admin.allowed_hosts`.
//! - **`Origin`, when a browser sends one, is one of those names.** A page of another site (or
//!   another port of this machine) may send requests here, and since the WebSocket handshake is
//!   not held back by the same-origin rule, also open the live feed; a browser says whose page
//!   asks in `Origin`, and anything not this server is refused — the feed's upgrade included.
//! - **A state-changing call is JSON.** An HTML form can only post
//!   `application/x-www-form-urlencoded`, `multipart/form-data` or `text/plain`, and a script
//!   of another origin sending `application/json` must first ask in a CORS preflight, which this
//!   server never grants. So every POST, PUT, PATCH and DELETE must say
//!   `Content-Type: application/json` — a call without a body too (the CLI and the page send the
//!   header on every one). One rule for every call, rather than a custom header beside it, and
//!   it holds even where a browser (or a privacy extension) leaves `Origin` out.
//!
//! The probes (`/healthz`, `/readyz`, `/metrics`) are outside this guard: an orchestrator and
//! Prometheus ask them by pod IP, they change nothing and return no secret. The OAuth callbacks
//! (`/oauth/…`) pass the `Host` check but not the `Origin` one: the browser arrives there from
//! the provider's pages, whatever a browser then says in `Origin`, and what guards them is the
//! `state` and the cookie that binds it to the browser (`super::authorize`).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The names this admin server answers to, each as a client writes it in `Host`
/// (`host` or `host:port`, lower case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAddresses {
    hosts: BTreeSet<String>,
}

impl AdminAddresses {
    /// The names of a server bound to `local` (its real port), reached by browsers at
    /// `public_url` (empty: none) and by whatever else `allowed_hosts` lists
    /// (`admin.allowed_hosts`, each `host` or `host:port`).
    pub fn new(
        local: SocketAddr,
        public_url: &str,
        allowed_hosts: &[String],
    ) -> Result<AdminAddresses, String> {
        let mut addresses = AdminAddresses::loopback(local);
        if !local.ip().is_unspecified() && !local.ip().is_loopback() {
            addresses.hosts.insert(authority(local.ip(), local.port()));
        }
        let public_url = public_url.trim();
        if !public_url.is_empty() {
            let url = url::Url::parse(public_url)
                .map_err(|e| format!("admin.public_url {public_url:?} is not a URL: {e}"))?;
            let host = url
                .host_str()
                .ok_or_else(|| format!("admin.public_url {public_url:?} names no host"))?
                .to_ascii_lowercase();
            let port = url.port_or_known_default().ok_or_else(|| {
                format!("admin.public_url {public_url:?} is neither http nor https")
            })?;
            // A browser leaves the scheme's own port out of `Host`; other clients may not.
            if url.port().is_none() {
                addresses.hosts.insert(host.clone());
            }
            addresses.hosts.insert(format!("{host}:{port}"));
        }
        for entry in allowed_hosts {
            addresses.hosts.insert(allowed_host(entry)?);
        }
        Ok(addresses)
    }

    /// The loopback names of a server bound to `local`, and nothing else: what a server that
    /// only ever listens on loopback (the demo, tests) answers to.
    pub fn loopback(local: SocketAddr) -> AdminAddresses {
        let port = local.port();
        let mut hosts = BTreeSet::new();
        for name in ["localhost", "127.0.0.1", "[::1]"] {
            hosts.insert(format!("{name}:{port}"));
            if port == 80 {
                hosts.insert(name.to_owned());
            }
        }
        if local.ip().is_loopback() {
            hosts.insert(authority(local.ip(), port));
        }
        AdminAddresses { hosts }
    }

    /// Whether `host` (a `Host` header) names this server.
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.contains(&host.trim().to_ascii_lowercase())
    }

    /// Whether `origin` (an `Origin` header) is a page of this server: `http` or `https`, with
    /// a host and port this server answers to. `null` (a sandboxed frame, a file) never is.
    pub fn allows_origin(&self, origin: &str) -> bool {
        let Ok(url) = url::Url::parse(origin.trim()) else {
            return false;
        };
        let bare = matches!(url.path(), "" | "/") && url.query().is_none();
        if !matches!(url.scheme(), "http" | "https") || !bare {
            return false;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let written = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        self.hosts.contains(&written) || self.hosts.contains(&format!("{host}:{port}"))
    }
}

/// `ip:port` as a client writes it (IPv6 in brackets).
fn authority(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// One `admin.allowed_hosts` entry, checked and lower-cased: `host` or `host:port`, without a
/// scheme, a path or anything else; the error names the entry.
pub fn allowed_host(entry: &str) -> Result<String, String> {
    let trimmed = entry.trim();
    let refused = |why: &str| {
        Err(format!(
            "admin.allowed_hosts entry {entry:?} {why}: write host or host:port as a client \
             sends it in Host (usersync-admin:8700, usersync.acme.example, [fd00::5]:8700)"
        ))
    };
    if trimmed.is_empty() {
        return refused("is empty");
    }
    if trimmed.contains("://") {
        return refused("has a scheme");
    }
    if trimmed.contains(['/', '?', '#', '@', ' ', ',']) {
        return refused("is more than a host and a port");
    }
    match url::Url::parse(&format!("http://{trimmed}/")) {
        Ok(url) if url.host_str().is_some() && url.path() == "/" => {}
        Ok(_) => return refused("is more than a host and a port"),
        Err(e) => return refused(&format!("is not a host name ({e})")),
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// The guard itself: refuses a request whose `Host` or `Origin` is not this server's, and a
/// state-changing one that is not JSON; gives every answer the security headers.
pub(super) async fn same_site_only(
    State(addresses): State<Arc<AdminAddresses>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match refusal(&addresses, &request) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
    super::headers::secure(&mut response);
    response
}

/// Why `request` is refused, if it is; the checks in the order a request meets them.
fn refusal(addresses: &AdminAddresses, request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        None => {
            return Some(forbidden(
                "host_refused",
                "the request names no host (Host header): this admin server answers only \
                 requests that name it"
                    .into(),
            ));
        }
        Some(host) if !addresses.allows_host(&host) => {
            return Some(forbidden(
                "host_refused",
                format!(
                    "Host {host:?} is not a name of this admin server; if clients reach it by \
                     that name, add it to admin.allowed_hosts (or set admin.public_url)"
                ),
            ));
        }
        Some(_) => {}
    }
    let from_a_provider = request.uri().path().starts_with(OAUTH_CALLBACKS);
    if let Some(origin) = headers.get(header::ORIGIN).filter(|_| !from_a_provider) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if !addresses.allows_origin(&origin) {
            return Some(forbidden(
                "origin_refused",
                format!(
                    "Origin {origin:?} is not this admin server: a page of another site may not \
                     call it; open the admin page at one of the server's own addresses"
                ),
            ));
        }
    }
    if !request.method().is_safe() {
        return json_content_type(headers).err();
    }
    None
}

/// Where the providers send the browser back to (`/oauth/{side}/callback`).
const OAUTH_CALLBACKS: &str = "/oauth/";

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        code,
        message,
    }
}

/// Refuses a state-changing call not sent as `application/json` (parameters such as
/// `charset` are fine), naming what it came as.
pub(super) fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let media = given.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        message: format!(
            "a call that changes something must be sent with Content-Type: application/json, \
             with or without a body (it came as {:?})",
            if given.is_empty() { "nothing" } else { &given }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(listen: &str, public_url: &str, allowed: &[&str]) -> AdminAddresses {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        AdminAddresses::new(listen.parse().unwrap(), public_url, &allowed).unwrap()
    }

    #[test]
    fn the_loopback_names_pass_with_the_listen_port_only() {
        let addresses = at("127.0.0.1:8700", "", &[]);
        for host in [
            "127.0.0.1:8700",
            "localhost:8700",
            "Localhost:8700",
            "[::1]:8700",
        ] {
            assert!(addresses.allows_host(host), "{host}");
        }
        for host in [
            "127.0.0.1",
            "localhost:8701",
            "attacker.example:8700",
            "localhost.:8700",
            "0.0.0.0:8700",
            "",
        ] {
            assert!(!addresses.allows_host(host), "{host}");
        }
    }

    #[test]
    fn a_wildcard_listener_answers_its_public_url_and_allowed_hosts() {
        let addresses = at(
            "0.0.0.0:8700",
            "https://usersync.acme.example/",
            &["admin:8700", "USERSYNC-ADMIN.tools.svc:8700"],
        );
        for host in [
            "usersync.acme.example",
            "usersync.acme.example:443",
            "admin:8700",
            "usersync-admin.tools.svc:8700",
            "localhost:8700",
        ] {
            assert!(addresses.allows_host(host), "{host}");
        }
        for host in [
            "0.0.0.0:8700",
            "admin",
            "usersync.acme.example:8700",
            "10.0.0.7:8700",
        ] {
            assert!(!addresses.allows_host(host), "{host}");
        }
        let specific = at("10.0.0.7:8700", "", &[]);
        assert!(specific.allows_host("10.0.0.7:8700"));
        let published = at("0.0.0.0:8700", "http://127.0.0.1:18700", &[]);
        assert!(published.allows_host("127.0.0.1:18700"));
        assert!(!published.allows_host("127.0.0.1"));
    }

    #[test]
    fn an_origin_passes_only_with_a_host_and_port_of_this_server() {
        let addresses = at("127.0.0.1:8700", "https://usersync.acme.example", &[]);
        for origin in [
            "http://127.0.0.1:8700",
            "http://localhost:8700",
            "https://usersync.acme.example",
            "https://usersync.acme.example:443",
        ] {
            assert!(addresses.allows_origin(origin), "{origin}");
        }
        for origin in [
            "null",
            "http://evil.example",
            "http://localhost:3000",
            "http://localhost",
            "https://usersync.acme.example.evil.example",
            "ftp://127.0.0.1:8700",
            "http://127.0.0.1:8700/path",
            "",
        ] {
            assert!(!addresses.allows_origin(origin), "{origin}");
        }
    }

    #[test]
    fn an_allowed_host_entry_is_a_host_and_maybe_a_port() {
        assert_eq!(allowed_host(" Admin:8700 ").unwrap(), "admin:8700");
        assert_eq!(allowed_host("[fd00::5]:8700").unwrap(), "[fd00::5]:8700");
        for (entry, why) in [
            ("", "is empty"),
            ("http://admin:8700", "has a scheme"),
            ("admin:8700/api", "is more than a host and a port"),
            ("admin:87000", "is not a host name"),
            ("a,b", "is more than a host and a port"),
        ] {
            let error = allowed_host(entry).unwrap_err();
            assert!(
                error.contains(why) && error.contains(&format!("{entry:?}")),
                "{entry}: {error}"
            );
        }
        let error = AdminAddresses::new(
            "0.0.0.0:8700".parse().unwrap(),
            "",
            &["http://x".to_owned()],
        )
        .unwrap_err();
        assert!(error.contains("admin.allowed_hosts"), "{error}");
    }

    #[test]
    fn only_a_json_body_is_taken() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            json_content_type(&headers)
        };
        assert!(with("application/json").is_ok());
        assert!(with("Application/JSON; charset=utf-8").is_ok());
        let refused = with("text/plain").unwrap_err();
        assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            refused.message.contains("\"text/plain\"")
                && refused.message.contains("application/json"),
            "{}",
            refused.message
        );
        let none = json_content_type(&HeaderMap::new()).unwrap_err();
        assert!(none.message.contains("\"nothing\""), "{}", none.message);
    }
}
