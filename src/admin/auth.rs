//! The admin tokens: every `/api` call carries `Authorization: Bearer <token>`, one of the
//! named tokens of `[[admin.tokens]]` or `admin.token` (`super::tokens`).
//!
//! Without a token configured the server binds to loopback only ([`super::bind`]) and lets
//! every call through as the actor `local`: whoever can reach a loopback port already runs on
//! the machine (the guard, `super::guard`, keeps the operator's browser from being used to
//! reach it). With tokens, a call without one of them is answered 401 before any handler runs;
//! beyond loopback each must be at least [`super::MIN_TOKEN_CHARS`] long. A call with a
//! token is made by that token's [`Actor`], put on the request for the handlers to record; a
//! `viewer` making a call that needs `admin` ([`role_needed`]) is answered 403 `forbidden`,
//! naming the role needed, before any handler runs.
//!
//! Guessing is made slow and visible (docs/security.md, "Admin server"):
//! - the token given is compared with every configured one as SHA-256 digests in constant
//!   time (`subtle`), all of them each time, so neither where they first differ, nor their
//!   lengths, nor which one matched shows in the time taken;
//! - each wrong token is counted on `/metrics` (`usersync_admin_auth_failures_total`);
//! - a client (by IP address) that sent a wrong token recently waits before its next call is
//!   looked at — [`delay_after`] its recent failures, at most [`MAX_DELAY`] — whatever that
//!   call carries, so a guesser cannot tell a right guess by a quick answer. The wait is a
//!   sleep of that request's own task: other clients, and the processor, are not held up.
//!
//! A browser cannot set a header on a WebSocket, so the live feed also takes the token as
//! `?access_token=` (RFC 6750 §2.3); no request line is logged by usersync, so it does not
//! end up in a log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::ApiError;
use super::actor::{Actor, Role, role_needed};
use super::tokens::AdminToken;

/// The wait after the first recent failure; it doubles with each further one.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait, however many failures.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// A client's failures are forgotten this long after its last one.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);
/// How many clients' failures are remembered; past it, the stalest are forgotten first.
const MAX_CLIENTS: usize = 4096;

/// How long a client with `failures` recent wrong tokens waits before its next call is
/// looked at.
pub fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// The tokens a server accepts and the recent wrong ones, shared by every request of one
/// server.
#[derive(Clone)]
pub(super) struct TokenGate {
    /// Empty: no token asked, every call is the local actor's.
    tokens: Arc<[KnownToken]>,
    failures: Arc<FailureBook>,
}

/// A configured token as the gate keeps it: its digest, and whose it is.
struct KnownToken {
    digest: [u8; 32],
    actor: Actor,
}

impl TokenGate {
    pub(super) fn new(tokens: &[AdminToken]) -> TokenGate {
        let tokens = tokens
            .iter()
            .filter(|t| !t.token.expose().is_empty())
            .map(|t| KnownToken {
                digest: Sha256::digest(t.token.expose().as_bytes()).into(),
                actor: Actor {
                    name: t.name.clone(),
                    role: t.role,
                },
            })
            .collect();
        TokenGate {
            tokens,
            failures: Arc::default(),
        }
    }

    /// Whose token `given` is: compared with every configured token, each in constant time,
    /// none skipped once one matched.
    fn actor_of(&self, given: &str) -> Option<&Actor> {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut found = None;
        for known in self.tokens.iter() {
            let same = bool::from(given.as_slice().ct_eq(known.digest.as_slice()));
            if same {
                found = Some(&known.actor);
            }
        }
        found
    }
}

/// Recent wrong tokens by client address (`None`: a request that came without one, such as a
/// test's).
#[derive(Default)]
struct FailureBook {
    clients: Mutex<HashMap<Option<IpAddr>, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl FailureBook {
    /// How long `client` waits now.
    fn wait_for(&self, client: Option<IpAddr>, now: Instant) -> Duration {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get(&client) {
            Some(f) if now.duration_since(f.last) < FORGET_AFTER => delay_after(f.count),
            _ => Duration::ZERO,
        }
    }

    /// `client` sent a wrong token at `now`.
    fn failed(&self, client: Option<IpAddr>, now: Instant) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if clients.len() >= MAX_CLIENTS
                && let Some(stalest) = clients.iter().min_by_key(|(_, f)| f.last).map(|(c, _)| *c)
            {
                clients.remove(&stalest);
            }
        }
        let entry = clients.entry(client).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }
}

/// Lets the request through, as its [`Actor`], when no token is configured or when it carries
/// one of them with a role that may make the call.
pub(super) async fn require_token(
    State(gate): State<TokenGate>,
    mut request: Request,
    next: Next,
) -> Response {
    if gate.tokens.is_empty() {
        request.extensions_mut().insert(Actor::local());
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let wait = gate.failures.wait_for(client, Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let given = bearer(request.headers()).or_else(|| feed_query_token(&request));
    let message = match given.as_deref().map(|given| gate.actor_of(given)) {
        Some(Some(actor)) => {
            let needed = role_needed(request.method(), request.uri().path());
            if !actor.role.allows(needed) {
                return forbidden(actor, needed, request.method(), request.uri().path());
            }
            request.extensions_mut().insert(actor.clone());
            return next.run(request).await;
        }
        Some(None) => {
            gate.failures.failed(client, Instant::now());
            crate::metrics::global().admin_auth_failure();
            tracing::warn!(
                client = %client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
                "an admin API call carried a wrong admin token"
            );
            "the admin token given is not one of this server's (admin.token, admin.tokens)"
        }
        None => "this call needs an admin token: send Authorization: Bearer <token>",
    };
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: message.into(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("a valid header"),
    );
    response
}

/// 403 for a token whose role may not make the call, naming the role it needs.
fn forbidden(actor: &Actor, needed: Role, method: &axum::http::Method, path: &str) -> Response {
    tracing::info!(actor = %actor.name, role = %actor.role, %method, path, "an admin API call refused: its token's role may not make it");
    ApiError {
        status: StatusCode::FORBIDDEN,
        code: "forbidden",
        message: format!(
            "{method} {path} needs a token with the role {needed}; the token {:?} has the role \
             {} (a viewer reads, an admin also changes)",
            actor.name, actor.role
        ),
    }
    .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// `?access_token=` on the live feed only: the one route a browser cannot send a header to.
fn feed_query_token(request: &Request) -> Option<String> {
    if request.uri().path() != "/api/v1/feed" {
        return None;
    }
    url::form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_with_each_failure_up_to_its_bound() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), Duration::from_millis(100));
        assert_eq!(delay_after(2), Duration::from_millis(200));
        assert_eq!(delay_after(4), Duration::from_millis(800));
        assert_eq!(delay_after(6), Duration::from_millis(3200));
        assert_eq!(delay_after(7), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_slow_their_own_client_only_and_are_forgotten() {
        let book = FailureBook::default();
        let now = Instant::now();
        let guesser = Some(IpAddr::from([192, 0, 2, 7]));
        let admin = Some(IpAddr::from([192, 0, 2, 8]));
        book.failed(guesser, now);
        book.failed(guesser, now);
        book.failed(guesser, now);
        assert_eq!(book.wait_for(guesser, now), Duration::from_millis(400));
        assert_eq!(book.wait_for(admin, now), Duration::ZERO);
        assert_eq!(book.wait_for(guesser, now + FORGET_AFTER), Duration::ZERO);
        book.failed(guesser, now + FORGET_AFTER);
        assert_eq!(
            book.wait_for(guesser, now + FORGET_AFTER),
            FIRST_DELAY,
            "counted afresh"
        );
    }

    #[test]
    fn the_book_of_failures_stays_bounded() {
        let book = FailureBook::default();
        let now = Instant::now();
        for n in 0..(MAX_CLIENTS as u32 + 10) {
            book.failed(Some(IpAddr::from(n.to_be_bytes())), now);
        }
        let remembered = book.clients.lock().unwrap().len();
        assert_eq!(remembered, MAX_CLIENTS);
    }

    #[test]
    fn tokens_are_compared_whole_and_name_their_actor() {
        let gate = TokenGate::new(&[
            AdminToken::new("ops", Role::Admin, "0123456789abcdef0123456789abcdef"),
            AdminToken::new("ci", Role::Viewer, "fedcba9876543210fedcba9876543210"),
        ]);
        let actor = |given: &str| gate.actor_of(given).map(|a| (a.name.as_str(), a.role));
        assert_eq!(
            actor("0123456789abcdef0123456789abcdef"),
            Some(("ops", Role::Admin))
        );
        assert_eq!(
            actor("fedcba9876543210fedcba9876543210"),
            Some(("ci", Role::Viewer))
        );
        assert_eq!(actor("0123456789abcdef0123456789abcde"), None);
        assert_eq!(actor("0123456789abcdef0123456789abcdefX"), None);
        assert_eq!(actor(""), None);
    }
}
