//! Where a request carrying a bearer token may go.
//!
//! A provider's answer can name further URLs: Outreach's `links.next`, Salesforce's
//! `nextRecordsUrl`. Following one sends the bearer token there, so a link to another origin
//! (scheme, host and port) than the one configured is refused, not followed: a tampered or
//! buggy answer must not hand the token to another host. And a plain `http://` endpoint would
//! carry the token in the clear, so one is allowed only on the loopback interface (a local
//! simulator) unless the configuration says otherwise (`allow_insecure_endpoints`,
//! `config.rs`).

use url::{Host, Url};

/// A link that leads away from the origin the bearer token is meant for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to follow a link to another origin: {link} (the bearer token goes to {trusted} \
     only)"
)]
pub struct ForeignOrigin {
    pub link: String,
    pub trusted: String,
}

/// `Ok` when `link` is on the same origin (scheme, host, port; a default port counts as
/// written) as `trusted`, the endpoint the token was configured for.
pub fn check_same_origin(trusted: &Url, link: &Url) -> Result<(), ForeignOrigin> {
    if link.origin() == trusted.origin() {
        Ok(())
    } else {
        Err(ForeignOrigin {
            link: link.to_string(),
            trusted: trusted.origin().ascii_serialization(),
        })
    }
}

/// Whether `url` names this machine: `localhost` (and names under it), `127.0.0.0/8` or `::1`.
/// Traffic to it never leaves the machine, so plain HTTP there exposes nothing on a network.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(address)) => address.is_loopback(),
        Some(Host::Ipv6(address)) => address.is_loopback(),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Whether a request to `url` would travel in the clear over a network: plain `http` to a host
/// other than this machine.
pub fn is_insecure(url: &Url) -> bool {
    url.scheme() == "http" && !is_loopback(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        text.parse().unwrap()
    }

    #[test]
    fn only_the_same_scheme_host_and_port_is_the_same_origin() {
        let trusted = url("https://acme.my.salesforce.com");
        for same in [
            "https://acme.my.salesforce.com/services/data/v62.0/query/01g-2000",
            "https://ACME.my.salesforce.com:443/x?y=z",
        ] {
            assert_eq!(check_same_origin(&trusted, &url(same)), Ok(()), "{same}");
        }
        for other in [
            "https://evil.example/services/data/v62.0/query/01g-2000",
            "http://acme.my.salesforce.com/services/data/v62.0/query/01g-2000",
            "https://acme.my.salesforce.com:8443/services/data/",
            "https://acme.my.salesforce.com.evil.example/",
            "https://evil.example@other.example/",
        ] {
            let refused = check_same_origin(&trusted, &url(other)).unwrap_err();
            assert_eq!(refused.trusted, "https://acme.my.salesforce.com");
            assert!(refused.to_string().contains("another origin"), "{refused}");
        }
    }

    #[test]
    fn loopback_hosts_are_told_from_the_network() {
        for local in [
            "http://127.0.0.1:8720",
            "http://127.9.0.1/",
            "http://[::1]:7011",
            "http://localhost:8710/api/v2",
            "http://LocalHost./x",
            "http://sim.localhost:1/",
        ] {
            assert!(is_loopback(&url(local)), "{local}");
            assert!(!is_insecure(&url(local)), "{local}");
        }
        for remote in [
            "http://salesforce-sim:8720",
            "http://10.0.0.1/",
            "http://[2001:db8::1]/",
            "http://localhost.evil.example/",
            "http://0.0.0.0:8700/",
        ] {
            assert!(!is_loopback(&url(remote)), "{remote}");
            assert!(is_insecure(&url(remote)), "{remote}");
        }
        assert!(!is_insecure(&url("https://api.outreach.io/api/v2")));
    }
}
