//! OAuth credentials: authorization codes, access tokens and refresh tokens, pure state.
//!
//! The rules follow docs/simulators.md and are kept apart from HTTP so they can be tested with a
//! chosen clock:
//!
//! - every credential belongs to a [`Grant`]: the authorizing Outreach user (the *subject*),
//!   the OAuth client, and the scopes;
//! - access tokens look like JWTs (three base64url segments, JSON header and claims) because
//!   Outreach's are JWTs, which makes "undecodable" (the gateway's 401) different from
//!   "decodable but unknown, revoked or expired" (the application's 401); the signature is
//!   random bytes — the simulator recognises its tokens by lookup, not by verifying;
//! - access tokens live `access_token_ttl` (7200 s by default); authorization codes are single
//!   use and live 10 minutes (an inference, Doorkeeper's default);
//! - every refresh mints a new refresh token; older ones stay valid until their own expiry
//!   (14 days) or until more than 100 exist for the same (subject, client), when the oldest
//!   are evicted (docs/simulators.md, an inference from the documented cap);
//! - one mint (code exchange or refresh) per (subject, client) per `mint_throttle`; the next
//!   one within it is throttled. Credentials issued directly by a test through the handle
//!   are not mints: they neither count against nor start the throttle;
//! - scopes are a set of strings; removing one from the grant affects every outstanding
//!   credential and what refreshes mint from them.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore;
use serde_json::{Value, json};

use super::base64url;

/// How long a refresh token stays valid.
pub const REFRESH_TOKEN_TTL: TimeDelta = TimeDelta::days(14);
/// How long an authorization code stays valid.
pub const AUTHORIZATION_CODE_TTL: TimeDelta = TimeDelta::minutes(10);
/// How many refresh tokens one (subject, client) pair may hold.
pub const MAX_REFRESH_TOKENS: usize = 100;

/// Who authorized what for which client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: String,
    pub client_id: String,
    pub scopes: BTreeSet<String>,
}

impl Grant {
    pub fn new(subject: &str, client_id: &str, scopes: &[&str]) -> Grant {
        Grant {
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The scopes as the token endpoint reports them: space-separated.
    pub fn scope_string(&self) -> String {
        self.scopes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A freshly minted token pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub grant: Grant,
    pub created_at: DateTime<Utc>,
}

/// What a bearer token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Valid(Grant),
    /// Not shaped like a JWT at all.
    Undecodable,
    /// Shaped like a JWT, but never issued here (or forgotten).
    Unknown,
    Revoked,
    Expired,
}

/// Why the token endpoint refused a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// `invalid_grant`: unknown, expired, revoked, used, or issued to another client or
    /// redirect URI.
    Invalid,
    /// `invalid_scope`: a refresh asked for scopes beyond the grant.
    InvalidScope,
    /// The mint throttle: try again at `retry_at`.
    Throttled { retry_at: DateTime<Utc> },
}

#[derive(Debug, Clone)]
struct AccessToken {
    grant: Grant,
    expires_at: DateTime<Utc>,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct RefreshToken {
    grant: Grant,
    expires_at: DateTime<Utc>,
    sequence: u64,
}

#[derive(Debug, Clone)]
struct AuthorizationCode {
    grant: Grant,
    redirect_uri: String,
    expires_at: DateTime<Utc>,
}

/// Every credential the simulator has issued.
#[derive(Debug)]
pub struct Credentials {
    access_ttl: TimeDelta,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, AuthorizationCode>,
    last_mint: HashMap<(String, String), DateTime<Utc>>,
    sequence: u64,
}

impl Credentials {
    pub fn new(access_ttl: TimeDelta) -> Credentials {
        Credentials {
            access_ttl,
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            last_mint: HashMap::new(),
            sequence: 0,
        }
    }

    /// Issues a token pair directly (test seeding): no throttle involved.
    pub fn issue(&mut self, grant: Grant, now: DateTime<Utc>) -> Minted {
        let access_token = encode_jwt(&grant, now, now + self.access_ttl);
        self.access.insert(
            access_token.clone(),
            AccessToken {
                grant: grant.clone(),
                expires_at: now + self.access_ttl,
                revoked: false,
            },
        );
        self.sequence += 1;
        let refresh_token = random_token();
        self.refresh.insert(
            refresh_token.clone(),
            RefreshToken {
                grant: grant.clone(),
                expires_at: now + REFRESH_TOKEN_TTL,
                sequence: self.sequence,
            },
        );
        self.evict_refresh_tokens(&grant);
        Minted {
            access_token,
            refresh_token,
            expires_in: u64::try_from(self.access_ttl.num_seconds()).unwrap_or(0),
            grant,
            created_at: now,
        }
    }

    /// Accepts `refresh_token`, chosen by the caller, as a refresh token of `grant` from
    /// `now` (valid for [`REFRESH_TOKEN_TTL`], evicted like any other). Not a mint: it neither
    /// counts against nor starts the throttle. For a simulator whose clients are configured
    /// before it starts (a compose file names the token for both sides).
    pub fn accept_refresh_token(&mut self, refresh_token: &str, grant: Grant, now: DateTime<Utc>) {
        self.sequence += 1;
        self.refresh.insert(
            refresh_token.to_owned(),
            RefreshToken {
                grant: grant.clone(),
                expires_at: now + REFRESH_TOKEN_TTL,
                sequence: self.sequence,
            },
        );
        self.evict_refresh_tokens(&grant);
    }

    /// Issues a single-use authorization code bound to `redirect_uri`.
    pub fn issue_code(&mut self, grant: Grant, redirect_uri: &str, now: DateTime<Utc>) -> String {
        let code = random_token();
        self.codes.insert(
            code.clone(),
            AuthorizationCode {
                grant,
                redirect_uri: redirect_uri.to_owned(),
                expires_at: now + AUTHORIZATION_CODE_TTL,
            },
        );
        code
    }

    /// `grant_type=authorization_code`.
    pub fn exchange_code(
        &mut self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        throttle: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Minted, GrantError> {
        let stored = self.codes.get(code).ok_or(GrantError::Invalid)?;
        if stored.expires_at <= now
            || stored.grant.client_id != client_id
            || stored.redirect_uri != redirect_uri
        {
            return Err(GrantError::Invalid);
        }
        let grant = stored.grant.clone();
        self.check_throttle(&grant, throttle, now)?;
        self.codes.remove(code);
        Ok(self.mint(grant, now))
    }

    /// `grant_type=refresh_token`. `scopes`, when given, may narrow the grant but not widen it.
    pub fn refresh(
        &mut self,
        refresh_token: &str,
        client_id: &str,
        scopes: Option<BTreeSet<String>>,
        throttle: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Minted, GrantError> {
        let stored = self.refresh.get(refresh_token).ok_or(GrantError::Invalid)?;
        if stored.expires_at <= now {
            self.refresh.remove(refresh_token);
            return Err(GrantError::Invalid);
        }
        if stored.grant.client_id != client_id {
            return Err(GrantError::Invalid);
        }
        let mut grant = stored.grant.clone();
        if let Some(scopes) = scopes {
            if !scopes.is_subset(&grant.scopes) {
                return Err(GrantError::InvalidScope);
            }
            grant.scopes = scopes;
        }
        self.check_throttle(&grant, throttle, now)?;
        Ok(self.mint(grant, now))
    }

    /// What `token` (from `Authorization: Bearer`) grants at `now`.
    pub fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Authentication {
        if !decodes_as_jwt(token) {
            return Authentication::Undecodable;
        }
        match self.access.get(token) {
            None => Authentication::Unknown,
            Some(stored) if stored.revoked => Authentication::Revoked,
            Some(stored) if stored.expires_at <= now => Authentication::Expired,
            Some(stored) => Authentication::Valid(stored.grant.clone()),
        }
    }

    /// Every access token, refresh token and outstanding code stops working.
    pub fn revoke_all(&mut self) {
        for token in self.access.values_mut() {
            token.revoked = true;
        }
        self.refresh.clear();
        self.codes.clear();
    }

    /// Every outstanding credential loses `scope`.
    pub fn remove_scope(&mut self, scope: &str) {
        let grants = self
            .access
            .values_mut()
            .map(|token| &mut token.grant)
            .chain(self.refresh.values_mut().map(|token| &mut token.grant))
            .chain(self.codes.values_mut().map(|code| &mut code.grant));
        for grant in grants {
            grant.scopes.remove(scope);
        }
    }

    /// Every access token expires now; refresh tokens are untouched.
    pub fn expire_access_tokens(&mut self, now: DateTime<Utc>) {
        for token in self.access.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }

    /// Every subject holding an access or refresh token.
    pub fn subjects(&self) -> BTreeSet<String> {
        self.access
            .values()
            .map(|token| &token.grant.subject)
            .chain(self.refresh.values().map(|token| &token.grant.subject))
            .cloned()
            .collect()
    }

    fn mint(&mut self, grant: Grant, now: DateTime<Utc>) -> Minted {
        self.last_mint
            .insert((grant.subject.clone(), grant.client_id.clone()), now);
        self.issue(grant, now)
    }

    fn check_throttle(
        &self,
        grant: &Grant,
        throttle: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<(), GrantError> {
        let key = (grant.subject.clone(), grant.client_id.clone());
        match self.last_mint.get(&key) {
            Some(&last) if now < last + throttle => Err(GrantError::Throttled {
                retry_at: last + throttle,
            }),
            _ => Ok(()),
        }
    }

    fn evict_refresh_tokens(&mut self, grant: &Grant) {
        let mut held: Vec<(u64, String)> = self
            .refresh
            .iter()
            .filter(|(_, token)| {
                token.grant.subject == grant.subject && token.grant.client_id == grant.client_id
            })
            .map(|(text, token)| (token.sequence, text.clone()))
            .collect();
        if held.len() <= MAX_REFRESH_TOKENS {
            return;
        }
        held.sort();
        let excess = held.len() - MAX_REFRESH_TOKENS;
        for (_, text) in held.into_iter().take(excess) {
            self.refresh.remove(&text);
        }
    }
}

/// Splits a scope parameter: space-separated, tolerating `+` from clients that did not
/// form-encode.
pub fn parse_scopes(text: &str) -> BTreeSet<String> {
    text.split([' ', '+'])
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect()
}

fn encode_jwt(grant: &Grant, issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({
        "iss": "outreach-simulator",
        "sub": grant.subject,
        "aud": grant.client_id,
        "iat": issued_at.timestamp(),
        "exp": expires_at.timestamp(),
        "jti": random_token(),
    });
    let mut signature = [0u8; 32];
    rand::rng().fill_bytes(&mut signature);
    format!(
        "{}.{}.{}",
        base64url::encode(header.to_string().as_bytes()),
        base64url::encode(claims.to_string().as_bytes()),
        base64url::encode(&signature)
    )
}

/// Whether `token` has a JWT's shape: three base64url segments, the first two JSON objects.
fn decodes_as_jwt(token: &str) -> bool {
    let segments: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = segments[..] else {
        return false;
    };
    let json_object = |segment: &str| {
        base64url::decode(segment)
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .is_some_and(|value| value.is_object())
    };
    json_object(header)
        && json_object(claims)
        && base64url::decode(signature).is_some_and(|bytes| !bytes.is_empty())
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64url::encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "client";
    const REDIRECT: &str = "http://app/callback";
    const MINUTE: TimeDelta = TimeDelta::minutes(1);

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn grant(scopes: &[&str]) -> Grant {
        Grant::new("admin@sim", CLIENT, scopes)
    }

    fn credentials() -> Credentials {
        Credentials::new(TimeDelta::hours(2))
    }

    #[test]
    fn issued_access_tokens_are_jwt_shaped_and_authenticate() {
        let mut store = credentials();
        let minted = store.issue(grant(&["users.read"]), t0());
        assert_eq!(minted.access_token.split('.').count(), 3);
        assert!(decodes_as_jwt(&minted.access_token));
        assert_eq!(minted.expires_in, 7200);
        assert_eq!(
            store.authenticate(&minted.access_token, t0()),
            Authentication::Valid(grant(&["users.read"]))
        );
    }

    #[test]
    fn distinguishes_undecodable_unknown_revoked_and_expired() {
        let mut store = credentials();
        assert_eq!(
            store.authenticate("not-a-jwt", t0()),
            Authentication::Undecodable
        );
        assert_eq!(
            store.authenticate("a.b.c", t0()),
            Authentication::Undecodable
        );
        let foreign = encode_jwt(&grant(&[]), t0(), t0());
        assert_eq!(store.authenticate(&foreign, t0()), Authentication::Unknown);

        let minted = store.issue(grant(&[]), t0());
        assert_eq!(
            store.authenticate(&minted.access_token, t0() + TimeDelta::hours(2)),
            Authentication::Expired
        );
        store.revoke_all();
        assert_eq!(
            store.authenticate(&minted.access_token, t0()),
            Authentication::Revoked
        );
    }

    #[test]
    fn a_code_is_exchanged_once_by_its_client_and_redirect() {
        let mut store = credentials();
        let code = store.issue_code(grant(&["users.all"]), REDIRECT, t0());
        assert_eq!(
            store.exchange_code(&code, "other", REDIRECT, MINUTE, t0()),
            Err(GrantError::Invalid)
        );
        assert_eq!(
            store.exchange_code(&code, CLIENT, "http://evil", MINUTE, t0()),
            Err(GrantError::Invalid)
        );
        let minted = store
            .exchange_code(&code, CLIENT, REDIRECT, MINUTE, t0())
            .unwrap();
        assert_eq!(minted.grant.scope_string(), "users.all");
        let later = t0() + TimeDelta::hours(1);
        assert_eq!(
            store.exchange_code(&code, CLIENT, REDIRECT, MINUTE, later),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn codes_expire_after_ten_minutes() {
        let mut store = credentials();
        let code = store.issue_code(grant(&[]), REDIRECT, t0());
        let late = t0() + AUTHORIZATION_CODE_TTL;
        assert_eq!(
            store.exchange_code(&code, CLIENT, REDIRECT, MINUTE, late),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn refresh_mints_a_new_refresh_token_and_the_old_one_stays_valid() {
        let mut store = credentials();
        let first = store.issue(grant(&["users.all"]), t0());
        let second = store
            .refresh(&first.refresh_token, CLIENT, None, MINUTE, t0())
            .unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_ne!(second.access_token, first.access_token);
        let later = t0() + MINUTE;
        assert!(
            store
                .refresh(&first.refresh_token, CLIENT, None, MINUTE, later)
                .is_ok()
        );
    }

    #[test]
    fn refresh_tokens_expire_after_fourteen_days() {
        let mut store = credentials();
        let minted = store.issue(grant(&[]), t0());
        let late = t0() + REFRESH_TOKEN_TTL;
        assert_eq!(
            store.refresh(&minted.refresh_token, CLIENT, None, MINUTE, late),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn refresh_is_bound_to_its_client() {
        let mut store = credentials();
        let minted = store.issue(grant(&[]), t0());
        assert_eq!(
            store.refresh(&minted.refresh_token, "other", None, MINUTE, t0()),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn refresh_may_narrow_scopes_but_not_widen_them() {
        let mut store = credentials();
        let minted = store.issue(grant(&["users.read", "users.write"]), t0());
        let wider = parse_scopes("users.read users.all");
        assert_eq!(
            store.refresh(&minted.refresh_token, CLIENT, Some(wider), MINUTE, t0()),
            Err(GrantError::InvalidScope)
        );
        let narrower = parse_scopes("users.read");
        let narrowed = store
            .refresh(&minted.refresh_token, CLIENT, Some(narrower), MINUTE, t0())
            .unwrap();
        assert_eq!(narrowed.grant.scope_string(), "users.read");
    }

    #[test]
    fn mints_are_throttled_per_subject_and_client_but_direct_issues_are_not() {
        let mut store = credentials();
        let seeded = store.issue(grant(&[]), t0());
        store.issue(grant(&[]), t0());
        let minted = store
            .refresh(&seeded.refresh_token, CLIENT, None, MINUTE, t0())
            .unwrap();
        let soon = t0() + TimeDelta::seconds(59);
        assert_eq!(
            store.refresh(&minted.refresh_token, CLIENT, None, MINUTE, soon),
            Err(GrantError::Throttled {
                retry_at: t0() + MINUTE
            })
        );
        let other_user = store.issue(Grant::new("other@sim", CLIENT, &[]), t0());
        assert!(
            store
                .refresh(&other_user.refresh_token, CLIENT, None, MINUTE, soon)
                .is_ok()
        );
        assert!(
            store
                .refresh(&minted.refresh_token, CLIENT, None, MINUTE, t0() + MINUTE)
                .is_ok()
        );
        assert!(
            store
                .refresh(
                    &minted.refresh_token,
                    CLIENT,
                    None,
                    TimeDelta::zero(),
                    t0() + MINUTE
                )
                .is_ok()
        );
    }

    #[test]
    fn a_throttled_code_exchange_leaves_the_code_usable() {
        let mut store = credentials();
        let seeded = store.issue(grant(&[]), t0());
        store
            .refresh(&seeded.refresh_token, CLIENT, None, MINUTE, t0())
            .unwrap();
        let code = store.issue_code(grant(&[]), REDIRECT, t0());
        assert!(matches!(
            store.exchange_code(&code, CLIENT, REDIRECT, MINUTE, t0()),
            Err(GrantError::Throttled { .. })
        ));
        assert!(
            store
                .exchange_code(&code, CLIENT, REDIRECT, MINUTE, t0() + MINUTE)
                .is_ok()
        );
    }

    #[test]
    fn only_the_newest_hundred_refresh_tokens_survive() {
        let mut store = credentials();
        let oldest = store.issue(grant(&[]), t0());
        let second = store.issue(grant(&[]), t0());
        for _ in 0..MAX_REFRESH_TOKENS - 1 {
            store.issue(grant(&[]), t0());
        }
        let zero = TimeDelta::zero();
        assert_eq!(
            store.refresh(&oldest.refresh_token, CLIENT, None, zero, t0()),
            Err(GrantError::Invalid)
        );
        assert!(
            store
                .refresh(&second.refresh_token, CLIENT, None, zero, t0())
                .is_ok()
        );
    }

    #[test]
    fn revoking_invalidates_refresh_tokens_and_codes() {
        let mut store = credentials();
        let minted = store.issue(grant(&[]), t0());
        let code = store.issue_code(grant(&[]), REDIRECT, t0());
        store.revoke_all();
        assert_eq!(
            store.refresh(&minted.refresh_token, CLIENT, None, MINUTE, t0()),
            Err(GrantError::Invalid)
        );
        assert_eq!(
            store.exchange_code(&code, CLIENT, REDIRECT, MINUTE, t0()),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn removing_a_scope_reaches_existing_tokens_and_their_refreshes() {
        let mut store = credentials();
        let minted = store.issue(grant(&["users.read", "users.write"]), t0());
        store.remove_scope("users.write");
        let Authentication::Valid(current) = store.authenticate(&minted.access_token, t0()) else {
            panic!("token should still be valid");
        };
        assert!(!current.has_scope("users.write") && current.has_scope("users.read"));
        let refreshed = store
            .refresh(&minted.refresh_token, CLIENT, None, MINUTE, t0())
            .unwrap();
        assert_eq!(refreshed.grant.scope_string(), "users.read");
        let fresh = store.issue(grant(&["users.write"]), t0());
        assert!(
            matches!(store.authenticate(&fresh.access_token, t0()), Authentication::Valid(g) if g.has_scope("users.write"))
        );
    }

    #[test]
    fn expiring_access_tokens_keeps_refresh_tokens() {
        let mut store = credentials();
        let minted = store.issue(grant(&[]), t0());
        store.expire_access_tokens(t0());
        assert_eq!(
            store.authenticate(&minted.access_token, t0()),
            Authentication::Expired
        );
        assert!(
            store
                .refresh(&minted.refresh_token, CLIENT, None, MINUTE, t0())
                .is_ok()
        );
    }

    #[test]
    fn scopes_parse_from_spaces_or_plus_signs() {
        let expected: BTreeSet<String> = ["users.read", "users.write"].map(String::from).into();
        assert_eq!(parse_scopes("users.read users.write"), expected);
        assert_eq!(parse_scopes("users.read+users.write"), expected);
        assert!(parse_scopes("").is_empty());
    }
}
