//! The web server flow (OAuth authorization code, with PKCE): `GET
//! /services/oauth2/authorize` and the codes it hands out, which the token endpoint redeems
//! with `grant_type=authorization_code`.
//!
//! A real org shows a login page, then the consent page, then redirects the browser to the
//! connected app's callback URL with `code` and the echoed `state`. The simulator has no one
//! typing: a test says who signs in ([`WebServerFlow::signs_in`]) and whether they deny; with
//! nobody signing in, the login page is all the browser gets. Everything else is checked as
//! Salesforce does:
//! - an unknown `client_id`, or a `redirect_uri` that is not one of the app's callback URLs, is
//!   an error page (never a redirect): `invalid_client_id` / `client identifier invalid`,
//!   `redirect_uri_mismatch` / `redirect_uri must match configuration`;
//! - a `response_type` other than `code`, or a `code_challenge_method` other than `S256`, is
//!   redirected as `error=…`; a denial as `error=access_denied`;
//! - a code lives 15 minutes and is redeemed once (any attempt uses it up), by the same client
//!   with the same `redirect_uri`; with a challenge, the `code_verifier` must match it:
//!   `invalid_grant` / `invalid authorization code`, `redirect_uri_mismatch`, `invalid_grant` /
//!   `invalid code verifier`.

use std::collections::{BTreeSet, HashMap};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::oauth::Refusal;

/// How long a code may wait for its redemption.
pub const CODE_LIFETIME: TimeDelta = TimeDelta::minutes(15);

const BAD_CODE: Refusal = Refusal {
    status: StatusCode::BAD_REQUEST,
    error: "invalid_grant",
    description: "invalid authorization code",
};
const BAD_VERIFIER: Refusal = Refusal {
    status: StatusCode::BAD_REQUEST,
    error: "invalid_grant",
    description: "invalid code verifier",
};
const REDIRECT_MISMATCH: Refusal = Refusal {
    status: StatusCode::BAD_REQUEST,
    error: "redirect_uri_mismatch",
    description: "redirect_uri must match configuration",
};

/// What the browser gets from `/services/oauth2/authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizePage {
    /// 302 to this URL (the callback with `code` or `error`, and `state`).
    Redirect(String),
    /// An error page, shown without redirecting.
    Error {
        error: &'static str,
        description: &'static str,
    },
    /// The login page: nobody signs in.
    Login,
}

/// The query of an authorize request, as sent.
#[derive(Debug, Default, Clone)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

#[derive(Debug, Clone)]
struct IssuedCode {
    username: String,
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    expires_at: DateTime<Utc>,
}

/// The connected app's callback URLs, who signs in at the login page, and the codes issued.
#[derive(Debug, Default)]
pub struct WebServerFlow {
    callback_urls: BTreeSet<String>,
    signs_in: Option<String>,
    denies: bool,
    codes: HashMap<String, IssuedCode>,
}

impl WebServerFlow {
    /// Adds a callback URL to the connected app.
    pub fn add_callback_url(&mut self, url: &str) {
        self.callback_urls.insert(url.to_owned());
    }

    /// The user who signs in at the login page (`None`: nobody does).
    pub fn signs_in(&mut self, username: Option<&str>) {
        self.signs_in = username.map(str::to_owned);
    }

    /// Whether the user who signs in denies the app access.
    pub fn set_denies(&mut self, denies: bool) {
        self.denies = denies;
    }

    /// Answers an authorize request for the app `consumer_key`; `can_sign_in` says whether a
    /// user may sign in (an inactive one may not: the login page stays).
    pub fn authorize(
        &mut self,
        consumer_key: &str,
        request: &AuthorizeRequest,
        can_sign_in: impl Fn(&str) -> bool,
        code: String,
        now: DateTime<Utc>,
    ) -> AuthorizePage {
        if request.client_id.as_deref() != Some(consumer_key) {
            return AuthorizePage::Error {
                error: "invalid_client_id",
                description: "client identifier invalid",
            };
        }
        let Some(redirect_uri) = request
            .redirect_uri
            .as_deref()
            .filter(|uri| self.callback_urls.contains(*uri))
        else {
            return AuthorizePage::Error {
                error: REDIRECT_MISMATCH.error,
                description: REDIRECT_MISMATCH.description,
            };
        };
        let mut reply: Vec<(&str, String)> = Vec::new();
        let method = request.code_challenge_method.as_deref();
        if request.response_type.as_deref() != Some("code") {
            reply.push(("error", "unsupported_response_type".into()));
            reply.push(("error_description", "response type not supported".into()));
        } else if request.code_challenge.is_some() && !matches!(method, None | Some("S256")) {
            reply.push(("error", "invalid_request".into()));
            reply.push(("error_description", "invalid code_challenge_method".into()));
        } else {
            let Some(username) = self.signs_in.clone().filter(|u| can_sign_in(u)) else {
                return AuthorizePage::Login;
            };
            if self.denies {
                reply.push(("error", "access_denied".into()));
                reply.push(("error_description", "end-user denied authorization".into()));
            } else {
                self.codes.insert(
                    code.clone(),
                    IssuedCode {
                        username,
                        client_id: consumer_key.to_owned(),
                        redirect_uri: redirect_uri.to_owned(),
                        challenge: request.code_challenge.clone(),
                        expires_at: now + CODE_LIFETIME,
                    },
                );
                reply.push(("code", code));
            }
        }
        if let Some(state) = &request.state {
            reply.push(("state", state.clone()));
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(reply)
            .finish();
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        AuthorizePage::Redirect(format!("{redirect_uri}{separator}{query}"))
    }

    /// Redeems `code` (once, whatever the outcome): the user it was issued for.
    pub fn redeem(
        &mut self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<String, Refusal> {
        let issued = self.codes.remove(code).ok_or(BAD_CODE)?;
        if issued.expires_at <= now || issued.client_id != client_id {
            return Err(BAD_CODE);
        }
        if issued.redirect_uri != redirect_uri {
            return Err(REDIRECT_MISMATCH);
        }
        if let Some(challenge) = &issued.challenge {
            let verifier = verifier.ok_or(BAD_VERIFIER)?;
            if s256_challenge(verifier) != *challenge {
                return Err(BAD_VERIFIER);
            }
        }
        Ok(issued.username)
    }
}

/// The `S256` code challenge of `verifier` (RFC 7636): base64url of its SHA-256, no padding.
///
/// Computed here rather than borrowed from the product's PKCE code: a shared function would
/// let a wrong challenge in the product pass against its own simulator.
fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "3MVG9sim";
    const CALLBACK: &str = "http://127.0.0.1:8700/oauth/salesforce/callback";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn flow() -> WebServerFlow {
        let mut flow = WebServerFlow::default();
        flow.add_callback_url(CALLBACK);
        flow.signs_in(Some("ann@acme.example"));
        flow
    }

    fn request() -> AuthorizeRequest {
        AuthorizeRequest {
            response_type: Some("code".into()),
            client_id: Some(APP.into()),
            redirect_uri: Some(CALLBACK.into()),
            state: Some("s t&ate".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
        }
    }

    fn authorize(flow: &mut WebServerFlow, request: &AuthorizeRequest) -> AuthorizePage {
        flow.authorize(APP, request, |_| true, "aPrxCODE".into(), Utc::now())
    }

    #[test]
    fn a_signed_in_user_is_redirected_with_a_code_the_verifier_redeems_once() {
        let mut flow = flow();
        assert_eq!(
            authorize(&mut flow, &request()),
            AuthorizePage::Redirect(format!("{CALLBACK}?code=aPrxCODE&state=s+t%26ate"))
        );
        let now = Utc::now();
        assert_eq!(
            flow.redeem("aPrxCODE", APP, CALLBACK, Some(VERIFIER), now),
            Ok("ann@acme.example".into())
        );
        assert_eq!(
            flow.redeem("aPrxCODE", APP, CALLBACK, Some(VERIFIER), now),
            Err(BAD_CODE),
            "used up"
        );
    }

    #[test]
    fn a_wrong_verifier_another_redirect_or_a_late_redemption_is_refused() {
        let mut flow = flow();
        let now = Utc::now();
        authorize(&mut flow, &request());
        assert_eq!(
            flow.redeem("aPrxCODE", APP, CALLBACK, Some("not-the-verifier"), now),
            Err(BAD_VERIFIER)
        );
        authorize(&mut flow, &request());
        assert_eq!(
            flow.redeem("aPrxCODE", APP, CALLBACK, None, now),
            Err(BAD_VERIFIER)
        );
        authorize(&mut flow, &request());
        assert_eq!(
            flow.redeem("aPrxCODE", APP, "http://elsewhere/cb", Some(VERIFIER), now),
            Err(REDIRECT_MISMATCH)
        );
        authorize(&mut flow, &request());
        assert_eq!(
            flow.redeem(
                "aPrxCODE",
                APP,
                CALLBACK,
                Some(VERIFIER),
                Utc::now() + CODE_LIFETIME
            ),
            Err(BAD_CODE)
        );
    }

    #[test]
    fn unknown_apps_and_callbacks_get_an_error_page_not_a_redirect() {
        let mut flow = flow();
        let mut foreign = request();
        foreign.redirect_uri = Some("https://attacker.example/cb".into());
        assert!(matches!(
            authorize(&mut flow, &foreign),
            AuthorizePage::Error {
                error: "redirect_uri_mismatch",
                ..
            }
        ));
        let mut unknown = request();
        unknown.client_id = Some("someone-else".into());
        assert!(matches!(
            authorize(&mut flow, &unknown),
            AuthorizePage::Error {
                error: "invalid_client_id",
                ..
            }
        ));
    }

    #[test]
    fn a_denial_a_bad_method_and_nobody_signing_in() {
        let mut flow = flow();
        let mut plain = request();
        plain.code_challenge_method = Some("plain".into());
        let AuthorizePage::Redirect(to) = authorize(&mut flow, &plain) else {
            panic!("redirected")
        };
        assert!(to.contains("error=invalid_request"), "{to}");
        flow.set_denies(true);
        let AuthorizePage::Redirect(to) = authorize(&mut flow, &request()) else {
            panic!("redirected")
        };
        assert!(
            to.contains("error=access_denied") && to.contains("state=s+t%26ate"),
            "{to}"
        );
        flow.signs_in(None);
        assert_eq!(authorize(&mut flow, &request()), AuthorizePage::Login);
        flow.signs_in(Some("ann@acme.example"));
        flow.set_denies(false);
        let inactive = flow.authorize(APP, &request(), |_| false, "c".into(), Utc::now());
        assert_eq!(
            inactive,
            AuthorizePage::Login,
            "an inactive user cannot sign in"
        );
    }
}
