//! The browser authorization-code flows, started from the admin page: the admin is sent to the
//! provider's consent page, signs in there (as any user: that user becomes the authorizing
//! one), and comes back to usersync's callback with a code, which usersync redeems for a
//! refresh token, seals and stores, then reconnects the side with it.
//!
//! - `GET /api/v1/connections/{side}/authorize` (admin token) answers
//!   `{"authorize_url": …}`; the page navigates there. Salesforce: the web server flow with
//!   `state` and PKCE (`S256`), scopes `api refresh_token`, at `salesforce.login_url`. Outreach:
//!   the authorization-code flow with `state` (Outreach documents no PKCE) at the authorize
//!   endpoint beside `outreach.token_url`, with the scopes the processor uses.
//! - `GET /oauth/{side}/callback?code&state` (no admin token: the browser arrives from the
//!   provider; `state` is the proof). The reconnect it asks for is recorded as an admin action
//!   of whoever started the flow (the start's token needs the role `admin`). A `state` is single use, lives [`PENDING_LIFETIME`], and
//!   belongs to one side; anything else is refused before the code is looked at. The browser
//!   is sent back to the page: `/?authorized=<side>`, or `/?authorization_failed=<side>&reason=…`
//!   with the reason in words (the page writes it as text).
//!
//! The `state` is also bound to the browser that started the flow (docs/security.md, "Admin
//! server"): the start answers with a cookie `usersync_authorize_<side>` (HttpOnly,
//! `SameSite=Lax` so the provider's redirect back brings it, `Path` the callback's, `Secure`
//! when `admin.public_url` is https) holding a random value kept with the state. A callback
//! whose cookie does not hold it is refused, and the state stays for the browser that has it:
//! a callback URL seen elsewhere (a log, a shoulder, a link sent to the operator) cannot be
//! completed by another browser, nor a stranger's code be planted in the operator's.
//!
//! The callback URLs are `<admin.public_url>/oauth/{side}/callback` (Outreach:
//! `outreach.redirect_uri` when set, since every Outreach token request sends it). The page
//! must be opened at the same host the callback goes to, or the cookie is not there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::actor::Actor;
use super::{AdminState, ApiError};
use crate::config::{Config, SalesforceAuthFlow};
use crate::connection::Side;
use crate::connection::authorization::{OutreachAuthorization, SalesforceAuthorization};
use crate::connection::pkce;
use crate::store::{AdminAction, AdminActionKind};
use chrono::Utc;

/// How long a started authorization may take to come back.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// The Outreach scopes the processor needs: users, and webhooks when it registers one.
fn outreach_scopes(config: &Config) -> &'static str {
    if config.outreach.webhook_url.is_empty() {
        "users.all"
    } else {
        "users.all webhooks.all"
    }
}

/// One authorization on its way through the provider's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub side: Side,
    /// The PKCE verifier (Salesforce) of the request.
    pub verifier: String,
    pub redirect_uri: String,
    /// The value of the cookie the starting browser got: the callback must bring it.
    pub browser: String,
    /// Who started it: the reconnect its callback asks for is recorded as theirs.
    pub actor: String,
    started: Instant,
}

/// Why a callback is refused before its code is redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateRefused {
    #[error("the callback carries no state")]
    Missing,
    #[error("the state is unknown, already used or expired: start again from the page")]
    Unknown,
    #[error("the state was issued for the other side: start again from the page")]
    OtherSide,
    #[error(
        "this browser did not start the authorization (its usersync cookie is missing or from \
         another attempt): start again from the admin page, opened at the address the callback \
         goes to"
    )]
    OtherBrowser,
}

/// The authorizations started and not yet back, by `state`.
#[derive(Clone, Default)]
pub struct PendingAuthorizations {
    inner: Arc<Mutex<HashMap<String, Pending>>>,
}

impl PendingAuthorizations {
    /// Starts one for `side`, by `actor`: its `state`, and the pending entry with the PKCE
    /// verifier and the browser's cookie value.
    pub fn start(
        &self,
        side: Side,
        redirect_uri: String,
        actor: &str,
        now: Instant,
    ) -> (String, Pending) {
        let state = pkce::random_token();
        let pending = Pending {
            side,
            verifier: pkce::random_token(),
            redirect_uri,
            browser: pkce::random_token(),
            actor: actor.to_owned(),
            started: now,
        };
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, p| now.duration_since(p.started) < PENDING_LIFETIME);
        all.insert(state.clone(), pending.clone());
        (state, pending)
    }

    /// Takes the one `state` names, once; it must be for `side`, not expired, and come back
    /// in the browser that started it (`browser`: its cookie's value). A callback from another
    /// browser leaves the state to the one that has the cookie.
    pub fn take(
        &self,
        state: Option<&str>,
        side: Side,
        browser: Option<&str>,
        now: Instant,
    ) -> Result<Pending, StateRefused> {
        let state = state
            .filter(|s| !s.is_empty())
            .ok_or(StateRefused::Missing)?;
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pending = all.get(state).ok_or(StateRefused::Unknown)?;
        let same_browser =
            browser.is_some_and(|b| bool::from(b.as_bytes().ct_eq(pending.browser.as_bytes())));
        let fresh = now.duration_since(pending.started) < PENDING_LIFETIME;
        if fresh && pending.side == side && !same_browser {
            return Err(StateRefused::OtherBrowser);
        }
        let pending = all.remove(state).ok_or(StateRefused::Unknown)?;
        if !fresh {
            return Err(StateRefused::Unknown);
        }
        if pending.side != side {
            return Err(StateRefused::OtherSide);
        }
        Ok(pending)
    }
}

/// Where the provider sends the browser back to.
pub fn callback_url(config: &Config, side: Side) -> String {
    if side == Side::Outreach && !config.outreach.redirect_uri.is_empty() {
        return config.outreach.redirect_uri.clone();
    }
    let base = match config.admin.public_url.trim_end_matches('/') {
        "" => format!("http://{}", config.admin.listen),
        public => public.to_owned(),
    };
    format!("{base}/oauth/{side}/callback")
}

/// The provider's authorize URL for one pending authorization.
fn authorize_url(
    config: &Config,
    side: Side,
    state: &str,
    pending: &Pending,
) -> Result<String, String> {
    match side {
        Side::Salesforce => {
            let sf = &config.salesforce;
            if sf.consumer_key.is_empty() {
                return Err("salesforce.consumer_key is not set".into());
            }
            let mut url = url::Url::parse(&format!(
                "{}/services/oauth2/authorize",
                sf.login_url.trim_end_matches('/')
            ))
            .map_err(|e| format!("salesforce.login_url: {e}"))?;
            url.query_pairs_mut()
                .append_pair("response_type", "code")
                .append_pair("client_id", &sf.consumer_key)
                .append_pair("redirect_uri", &pending.redirect_uri)
                .append_pair("scope", "api refresh_token")
                .append_pair("state", state)
                .append_pair("code_challenge", &pkce::challenge(&pending.verifier))
                .append_pair("code_challenge_method", "S256");
            Ok(url.into())
        }
        Side::Outreach => {
            let outreach = &config.outreach;
            if outreach.client_id.is_empty() {
                return Err("outreach.client_id is not set".into());
            }
            let mut url = url::Url::parse(&outreach.token_url)
                .and_then(|token| token.join("authorize"))
                .map_err(|e| format!("outreach.token_url: {e}"))?;
            url.query_pairs_mut()
                .append_pair("client_id", &outreach.client_id)
                .append_pair("redirect_uri", &pending.redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("scope", outreach_scopes(config))
                .append_pair("state", state);
            Ok(url.into())
        }
    }
}

/// The name of the cookie that binds `side`'s pending authorization to the browser.
fn cookie_name(side: Side) -> String {
    format!("usersync_authorize_{side}")
}

/// The cookie's `Path`: the callback's own, so no other request of the site carries it.
fn cookie_path(side: Side, redirect_uri: &str) -> String {
    url::Url::parse(redirect_uri)
        .map(|url| url.path().to_owned())
        .unwrap_or_else(|_| format!("/oauth/{side}/callback"))
}

/// The cookie a start sets: the browser's value of `pending`, for the callback only.
fn browser_cookie(side: Side, pending: &Pending, secure: bool) -> Cookie<'static> {
    Cookie::build((cookie_name(side), pending.browser.clone()))
        .path(cookie_path(side, &pending.redirect_uri))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(
            PENDING_LIFETIME.as_secs() as i64
        ))
        .build()
}

/// The value of `side`'s cookie among the request's cookies.
fn browser_of(headers: &HeaderMap, side: Side) -> Option<String> {
    let name = cookie_name(side);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| Cookie::split_parse(value.to_owned()))
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

/// Whether the browser reaches the callback over https (`admin.public_url`), so the cookie
/// must never travel without TLS.
fn secure_cookie(config: &Config) -> bool {
    url::Url::parse(&config.admin.public_url).is_ok_and(|url| url.scheme() == "https")
}

/// `GET /api/v1/connections/{side}/authorize`.
pub(super) async fn start(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(side): Path<String>,
) -> Result<Response, ApiError> {
    let side = super::connections::side_of(&side)?;
    let config = state.config.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::CONFLICT,
        code: "not_configured",
        message: "this process has no configuration to authorize with".into(),
    })?;
    if state.authorizations.is_none() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "no_secret_key",
            message: "the new authorization could not be stored: no secret key".into(),
        });
    }
    let (key, pending) = state.pending.start(
        side,
        callback_url(config, side),
        &actor.name,
        Instant::now(),
    );
    let url = authorize_url(config, side, &key, &pending).map_err(|message| ApiError {
        status: StatusCode::CONFLICT,
        code: "not_configured",
        message,
    })?;
    tracing::info!(%side, redirect_uri = %pending.redirect_uri, actor = %actor.name, "browser authorization started");
    let cookie = browser_cookie(side, &pending, secure_cookie(config));
    Ok((
        [(header::SET_COOKIE, cookie.to_string())],
        Json(json!({ "authorize_url": url, "redirect_uri": pending.redirect_uri })),
    )
        .into_response())
}

/// What the provider puts on the callback.
#[derive(Debug, Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oauth/{side}/callback`.
pub(super) async fn callback(
    State(state): State<AdminState>,
    Path(side): Path<String>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    let Ok(side) = side.parse::<Side>() else {
        return (StatusCode::NOT_FOUND, "no such side").into_response();
    };
    let browser = browser_of(&headers, side);
    match complete(&state, side, browser.as_deref(), callback).await {
        Ok(()) => {
            tracing::info!(%side, "browser authorization stored; reconnecting");
            Redirect::to(&format!("/?authorized={side}")).into_response()
        }
        Err(reason) => {
            tracing::warn!(%side, %reason, "browser authorization refused");
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("authorization_failed", side.as_str())
                .append_pair("reason", &reason)
                .finish();
            Redirect::to(&format!("/?{query}")).into_response()
        }
    }
}

/// Checks the state and the browser, redeems the code, stores the refresh token, asks for the
/// reconnect.
async fn complete(
    state: &AdminState,
    side: Side,
    browser: Option<&str>,
    callback: Callback,
) -> Result<(), String> {
    let pending = state
        .pending
        .take(callback.state.as_deref(), side, browser, Instant::now())
        .map_err(|e| e.to_string())?;
    if let Some(error) = callback.error {
        let description = callback.error_description.unwrap_or_default();
        return Err(format!("{} refused: {error}: {description}", side.title()));
    }
    let code = callback
        .code
        .filter(|c| !c.is_empty())
        .ok_or("the callback carries no code")?;
    let (config, authorizations) = match (&state.config, &state.authorizations) {
        (Some(config), Some(authorizations)) => (config, authorizations),
        _ => return Err("this process cannot store an authorization".into()),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let saved = match side {
        Side::Salesforce => {
            let sf = &config.salesforce;
            let secret = (!sf.consumer_secret.expose().is_empty()).then(|| {
                crate::salesforce::auth::Secret::new(sf.consumer_secret.expose().to_owned())
            });
            let (session, refresh_token) = crate::salesforce::auth::exchange_code(
                &http,
                &sf.login_url,
                &sf.consumer_key,
                secret.as_ref(),
                &code,
                &pending.redirect_uri,
                &pending.verifier,
            )
            .await
            .map_err(|e| e.to_string())?;
            tracing::info!(user_id = %session.user_id, "Salesforce authorized in the browser");
            let authorization = SalesforceAuthorization {
                flow: SalesforceAuthFlow::RefreshToken,
                consumer_key: None,
                consumer_secret: None,
                username: None,
                private_key_pem: None,
                refresh_token: Some(refresh_token.expose().to_owned()),
            };
            authorizations.save(side, &authorization).await
        }
        Side::Outreach => {
            let outreach = &config.outreach;
            let app = crate::outreach::auth::OAuthApp {
                token_url: url::Url::parse(&outreach.token_url)
                    .map_err(|e| format!("outreach.token_url: {e}"))?,
                client_id: outreach.client_id.clone(),
                client_secret: outreach.client_secret.expose().to_owned(),
                redirect_uri: pending.redirect_uri.clone(),
            };
            let tokens = crate::outreach::auth::exchange_code(&http, &app, &code)
                .await
                .map_err(|e| e.to_string())?;
            let authorization = OutreachAuthorization {
                refresh_token: tokens.refresh_token,
            };
            authorizations.save(side, &authorization).await
        }
    };
    saved.map_err(|e| format!("storing the new authorization: {e}"))?;
    let action = AdminAction {
        at: Utc::now(),
        action: AdminActionKind::Reconnect,
        detail: json!({ "side": side, "new_authorization": true, "browser": true }),
        actor: Some(pending.actor.clone()),
    };
    let sequence = state
        .store
        .append_admin_action(&action)
        .await
        .map_err(|e| {
            format!("the new authorization is stored, but the reconnect could not be recorded: {e}")
        })?;
    state.actions.announce(sequence, action);
    state.connections.connecting(side);
    state.connections.request_reconnect(side);
    tracing::info!(%side, sequence, actor = %pending.actor, "reconnect with a browser authorization recorded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_taken_once_for_its_side_within_its_lifetime() {
        let pending = PendingAuthorizations::default();
        let now = Instant::now();
        let (state, started) = pending.start(Side::Salesforce, "http://cb".into(), "ops", now);
        let browser = Some(started.browser.as_str());
        assert_eq!(started.side, Side::Salesforce);
        assert_ne!(state, started.verifier);
        assert_ne!(state, started.browser);
        assert_eq!(
            pending.take(Some(&state), Side::Salesforce, browser, now),
            Ok(started.clone())
        );
        assert_eq!(
            pending.take(Some(&state), Side::Salesforce, browser, now),
            Err(StateRefused::Unknown),
            "single use"
        );
        assert_eq!(
            pending.take(None, Side::Salesforce, browser, now),
            Err(StateRefused::Missing)
        );
        assert_eq!(
            pending.take(Some("forged"), Side::Salesforce, browser, now),
            Err(StateRefused::Unknown)
        );

        let (other, p) = pending.start(Side::Outreach, "http://cb".into(), "ops", now);
        assert_eq!(
            pending.take(Some(&other), Side::Salesforce, Some(&p.browser), now),
            Err(StateRefused::OtherSide)
        );
        let (late, p) = pending.start(Side::Outreach, "http://cb".into(), "ops", now);
        assert_eq!(
            pending.take(
                Some(&late),
                Side::Outreach,
                Some(&p.browser),
                now + PENDING_LIFETIME
            ),
            Err(StateRefused::Unknown),
            "expired"
        );
    }

    #[test]
    fn a_state_is_taken_only_in_the_browser_that_started_it() {
        let pending = PendingAuthorizations::default();
        let now = Instant::now();
        let (state, started) = pending.start(Side::Outreach, "http://cb".into(), "ops", now);
        for stranger in [None, Some(""), Some("another-browser")] {
            assert_eq!(
                pending.take(Some(&state), Side::Outreach, stranger, now),
                Err(StateRefused::OtherBrowser),
                "{stranger:?}"
            );
        }
        assert_eq!(
            pending.take(Some(&state), Side::Outreach, Some(&started.browser), now),
            Ok(started),
            "a stranger's attempt leaves the state to the browser that has the cookie"
        );
    }

    #[test]
    fn the_browser_cookie_is_http_only_lax_on_the_callback_path() {
        let pending = PendingAuthorizations::default();
        let (_, started) = pending.start(
            Side::Salesforce,
            "https://usersync.acme.example/oauth/salesforce/callback".into(),
            "ops",
            Instant::now(),
        );
        let cookie = browser_cookie(Side::Salesforce, &started, true);
        assert_eq!(cookie.name(), "usersync_authorize_salesforce");
        assert_eq!(cookie.value(), started.browser);
        assert_eq!(cookie.path(), Some("/oauth/salesforce/callback"));
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Lax));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.max_age(), Some(cookie::time::Duration::seconds(600)));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; usersync_authorize_salesforce={}", started.browser)
                .parse()
                .unwrap(),
        );
        assert_eq!(
            browser_of(&headers, Side::Salesforce).as_deref(),
            Some(started.browser.as_str())
        );
        assert_eq!(browser_of(&headers, Side::Outreach), None);
        let mut config = Config::default();
        assert!(!secure_cookie(&config));
        config.admin.public_url = "https://usersync.acme.example".into();
        assert!(secure_cookie(&config));
    }

    #[test]
    fn authorize_urls_carry_state_pkce_and_the_callback() {
        let mut config = Config::default();
        config.salesforce.consumer_key = "3MVG9key".into();
        config.outreach.client_id = "outreach-app".into();
        config.admin.public_url = "https://usersync.acme.example/".into();
        let pending = PendingAuthorizations::default();
        let now = Instant::now();

        let (state, p) = pending.start(
            Side::Salesforce,
            callback_url(&config, Side::Salesforce),
            "ops",
            now,
        );
        let url = url::Url::parse(&authorize_url(&config, Side::Salesforce, &state, &p).unwrap())
            .unwrap();
        assert_eq!(
            url.as_str().split('?').next(),
            Some("https://login.salesforce.com/services/oauth2/authorize")
        );
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "3MVG9key");
        assert_eq!(
            query["redirect_uri"],
            "https://usersync.acme.example/oauth/salesforce/callback"
        );
        assert_eq!(query["state"], state);
        assert_eq!(query["code_challenge"], pkce::challenge(&p.verifier));
        assert_eq!(query["code_challenge_method"], "S256");

        let (state, p) = pending.start(
            Side::Outreach,
            callback_url(&config, Side::Outreach),
            "ops",
            now,
        );
        let url =
            url::Url::parse(&authorize_url(&config, Side::Outreach, &state, &p).unwrap()).unwrap();
        assert_eq!(
            url.as_str().split('?').next(),
            Some("https://api.outreach.io/oauth/authorize")
        );
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query["scope"], "users.all");
        assert_eq!(
            query["redirect_uri"],
            "https://usersync.acme.example/oauth/outreach/callback"
        );
        assert!(!query.contains_key("code_challenge"));

        config.outreach.redirect_uri = "https://registered.example/cb".into();
        assert_eq!(
            callback_url(&config, Side::Outreach),
            "https://registered.example/cb"
        );
        config.salesforce.consumer_key.clear();
        assert!(authorize_url(&config, Side::Salesforce, &state, &p).is_err());
    }
}
