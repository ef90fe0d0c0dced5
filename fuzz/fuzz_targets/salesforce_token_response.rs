//! Salesforce's token endpoint and userinfo answers, selected by the first byte: (0) a success
//! body through `parse_token_response` for a production login host and a plain-HTTP one, (1) a
//! refusal under a status (second byte) through `token_failure`, (2) a userinfo body through
//! `parse_userinfo`.
//!
//! Besides never panicking: a session's instance URL is an http(s) URL with a host and no
//! trailing slash, https when the login host is, and its org and user ids are the identity
//! URL's; an empty refresh token is none; a refusal with an OAuth body is classified by the
//! table, and one without keeps at most an excerpt; no message repeats the access token.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use serde_json::Value;
use usersync::salesforce::auth::{
    AuthOperation, DisconnectReason, LOGIN_URL, SalesforceAuthError, classify,
    ids_from_identity_url, parse_token_response, parse_userinfo, token_failure,
};
use usersync::model::salesforce_id::SalesforceId;
use usersync_fuzz::providers::{salesforce_token_seeds, split_selector, status_of};
use usersync_fuzz::write_seeds_if_asked;

/// The access token of a body, when it holds a `~` (which none of the parser's texts do) and
/// no other string of the body holds it (an instance URL may be quoted in a message).
fn marked_access_token(body: &str) -> Option<String> {
    let Value::Object(mut members) = serde_json::from_str::<Value>(body).ok()? else {
        return None;
    };
    let Some(Value::String(token)) = members.remove("access_token") else {
        return None;
    };
    (token.contains('~') && !holds(&Value::Object(members), &token)).then_some(token)
}

/// Whether a string in `value` (a key or a value, at any depth) holds `text`.
fn holds(value: &Value, text: &str) -> bool {
    match value {
        Value::String(s) => s.contains(text),
        Value::Array(items) => items.iter().any(|v| holds(v, text)),
        Value::Object(members) => members
            .iter()
            .any(|(k, v)| k.contains(text) || holds(v, text)),
        _ => false,
    }
}

fn token(body: &str) {
    for host in [LOGIN_URL, "http://127.0.0.1:8080"] {
        match parse_token_response(body, host) {
            Ok((session, refresh)) => {
                assert!(!session.access_token.expose().trim().is_empty());
                let url = url::Url::parse(&session.instance_url).expect("an instance URL");
                assert!(matches!(url.scheme(), "https" | "http"));
                assert!(url.host_str().is_some_and(|h| !h.is_empty()));
                assert!(!session.instance_url.ends_with('/'));
                if host == LOGIN_URL {
                    assert_eq!(url.scheme(), "https");
                }
                let (org, user) =
                    ids_from_identity_url(&session.identity_url).expect("the identity URL");
                assert_eq!(
                    (org, user),
                    (session.org_id.clone(), session.user_id.clone())
                );
                assert_eq!(
                    SalesforceId::parse(session.org_id.as_str()).as_ref(),
                    Ok(&session.org_id)
                );
                if let Some(refresh) = refresh {
                    assert!(!refresh.expose().trim().is_empty());
                }
                if let Some(secret) = marked_access_token(body) {
                    assert!(
                        !format!("{session:?}").contains(&secret),
                        "Debug shows the token"
                    );
                }
            }
            Err(problem) => {
                assert!(!problem.is_empty());
                if let Some(secret) = marked_access_token(body) {
                    assert!(
                        !problem.contains(&secret),
                        "the error repeats the access token"
                    );
                }
            }
        }
    }
}

fn refusal(status: u16, body: &str) {
    let status = StatusCode::from_u16(status).expect("a listed status");
    let operation = AuthOperation::ObtainToken {
        flow: "refresh token",
    };
    let error = token_failure(operation, status, body);
    let _ = error.disconnect_reason();
    assert!(!error.to_string().is_empty());
    match &error {
        SalesforceAuthError::Token {
            error: code,
            description,
            reason,
            hint,
            ..
        } => {
            let row = classify(code, description);
            assert_eq!(
                *reason,
                row.map_or(DisconnectReason::Other, |row| row.reason)
            );
            assert_eq!(*hint, row.and_then(|row| row.hint));
            assert_eq!(error.disconnect_reason(), Some(*reason));
        }
        SalesforceAuthError::Status { body: kept, .. } => {
            assert!(kept.chars().count() <= 301, "an excerpt, not the body");
        }
        other => panic!("a refusal became {other:?}"),
    }
}

fn userinfo(body: &str) {
    if let Ok(identity) = parse_userinfo(body) {
        assert_eq!(
            SalesforceId::parse(identity.user_id.as_str()).as_ref(),
            Ok(&identity.user_id)
        );
    }
}

fuzz_target!(
    init: {
        write_seeds_if_asked(salesforce_token_seeds);
    },
    |data: &[u8]| {
        let Some((selector, rest)) = split_selector(data, 3) else {
            return;
        };
        match selector {
            0 => token(&String::from_utf8_lossy(rest)),
            1 => {
                if let Some((status, body)) = status_of(rest) {
                    refusal(status, &String::from_utf8_lossy(body));
                }
            }
            _ => userinfo(&String::from_utf8_lossy(rest)),
        }
    }
);
