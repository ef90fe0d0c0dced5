//! An Outreach token response body: `read_token_response`, as the token keeper reads a
//! refresh (with the redeemed refresh token) and an authorization-code exchange (without).
//!
//! Besides never panicking: a usable response's access token is not blank and its expiry,
//! when given, lies within the token lifetime bounds from now; the refresh token kept is the
//! response's own when it brought a non-blank one, else the redeemed one; what is persisted
//! follows from that; and neither `Debug` nor an error message repeats a token (one with a
//! `~`, a character none of the parser's own texts holds).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use usersync::outreach::auth::{
    MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME, TokenResponse, read_token_response,
};
use usersync_fuzz::providers::{REDEEMED, now, outreach_token_seeds};
use usersync_fuzz::write_seeds_if_asked;

/// The non-blank string member `name` of a JSON object body, if any.
fn member(body: &[u8], name: &str) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()?.get(name)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn check(body: &[u8], redeemed: Option<&str>, response: &TokenResponse) {
    let now = now();
    let sent = member(body, "refresh_token");
    match &sent {
        // A readable refresh token is always taken, whatever else is wrong with the body.
        Some(new) => {
            assert_eq!(response.refresh_token.as_deref(), Some(new.as_str()));
            assert_eq!(response.rotated, redeemed != Some(new.as_str()));
        }
        None => {
            assert!(!response.rotated, "rotated without a new refresh token");
            assert_eq!(response.refresh_token.as_deref(), redeemed);
        }
    }
    if let Some(refresh) = &response.refresh_token {
        assert!(!refresh.trim().is_empty(), "a blank refresh token is kept");
    }
    match &response.tokens {
        Ok(tokens) => {
            assert!(!tokens.access_token.trim().is_empty());
            assert_eq!(Some(&tokens.refresh_token), response.refresh_token.as_ref());
            if let Some(at) = tokens.expires_at {
                let lifetime = (at - now).to_std().expect("the expiry is in the future");
                assert!(
                    (MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&lifetime),
                    "lifetime {lifetime:?}"
                );
            }
            assert_eq!(response.to_keep().as_ref(), Some(tokens));
        }
        Err(problem) => {
            assert!(!problem.is_empty());
            if let Some(access) = member(body, "access_token").filter(|a| a.contains('~')) {
                assert!(
                    !problem.contains(&access),
                    "the error repeats the access token"
                );
            }
            match response.to_keep() {
                Some(kept) => {
                    assert!(response.rotated);
                    assert_eq!(Some(&kept.refresh_token), response.refresh_token.as_ref());
                    assert!(kept.access_token.is_empty());
                    assert!(kept.is_expired(now), "a kept placeholder is expired");
                }
                None => assert!(!response.rotated),
            }
        }
    }
    // Tokens holding a `~` (which no message of the parser contains) must not show.
    let shown = format!("{response:?}");
    for secret in [sent, member(body, "access_token")].into_iter().flatten() {
        if secret.contains('~') {
            assert!(!shown.contains(&secret), "Debug shows a token");
        }
    }
}

fuzz_target!(
    init: {
        write_seeds_if_asked(outreach_token_seeds);
    },
    |data: &[u8]| {
        for redeemed in [Some(REDEEMED), None] {
            let response = read_token_response(data, redeemed, now());
            check(data, redeemed, &response);
        }
    }
);
