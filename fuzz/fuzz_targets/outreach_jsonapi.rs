//! Outreach's JSON:API answers, selected by the first byte: (0) a page of users read by
//! `read_user_page`, (1) one user read by `read_single_user`, (2) an error body under a status
//! (second byte) through `ErrorBody::parse`, `classify` and `classify_token_failure`, (3) a
//! page of webhooks through `WebhookResource::into_webhook`.
//!
//! Besides never panicking: a page's next link stays on the API's origin, a single user is the
//! one asked for; an unrecognised error body is kept short, every
//! error has a summary, a code and a message, and a 429 is `RateLimited` with the wait given.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use url::Url;
use usersync::outreach::client::{read_single_user, read_user_page};
use usersync::outreach::error::{OutreachError, classify, classify_token_failure};
use usersync::outreach::jsonapi::{Document, ErrorBody};
use usersync::outreach::webhooks::registration::WebhookResource;
use usersync::outreach::{Operation, OutreachUserId};
use usersync_fuzz::providers::{API_URL, outreach_jsonapi_seeds, split_selector, status_of};
use usersync_fuzz::write_seeds_if_asked;

struct Fixed {
    api_url: Url,
    page_url: Url,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let api_url: Url = API_URL.parse().expect("the API URL");
    let page_url = api_url
        .join("v2/users?page[size]=1000&count=false")
        .expect("a page URL");
    Fixed { api_url, page_url }
});

/// Any error's rendering: a code, a message, and the retry facts asked without panicking.
fn check_error(error: &OutreachError) {
    assert!(!error.code().is_empty());
    assert!(!error.to_string().is_empty());
    let _ = (error.is_retryable(), error.needs_reauthorization());
}

fn page(body: &[u8]) {
    let fixed = &*FIXED;
    match read_user_page(body, &fixed.page_url, &fixed.api_url, &Operation::ListUsers) {
        Ok(page) => {
            for user in &page.users {
                let _ = user.email_normalized();
            }
            if let Some(next) = &page.next {
                assert_eq!(next.origin(), fixed.api_url.origin(), "{next}");
            }
        }
        Err(error) => {
            assert_eq!(error.code(), "decode");
            check_error(&error);
        }
    }
}

fn single(body: &[u8]) {
    let asked = OutreachUserId(42);
    for expected in [Some(asked), None] {
        match read_single_user(body, expected, &Operation::GetUser { id: asked }) {
            Ok(user) => {
                if let Some(expected) = expected {
                    assert_eq!(user.id, expected);
                }
            }
            Err(error) => {
                assert_eq!(error.code(), "decode");
                check_error(&error);
            }
        }
    }
}

fn error_body(status: u16, body: &[u8]) {
    let parsed = ErrorBody::parse(body);
    assert!(!parsed.summary().is_empty());
    if let ErrorBody::Other(text) = &parsed {
        assert!(
            text.chars().count() <= 300,
            "an unrecognised body kept whole"
        );
    }
    if let Some(first) = parsed.first() {
        assert_eq!(parsed.code(), first.code.as_deref());
    }
    let status = StatusCode::from_u16(status).expect("a listed status");
    let wait = Some(Duration::from_secs(7));
    let operation = Operation::CreateUser {
        email: Some("jane@acme.test".to_owned()),
    };
    let api = classify(operation.clone(), status, &parsed, wait);
    check_error(&api);
    if api.is_email_taken() {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        assert!(matches!(
            api,
            OutreachError::RateLimited { retry_after, .. } if Some(retry_after) == wait
        ));
    }
    if status.is_server_error() {
        assert!(api.is_retryable(), "{api}");
    }
    let token = classify_token_failure(Operation::RefreshToken, status, &parsed, wait);
    check_error(&token);
}

fn webhooks(body: &[u8]) {
    let Ok(document) = serde_json::from_slice::<Document<Vec<WebhookResource>>>(body) else {
        return;
    };
    for resource in document.data.unwrap_or_default() {
        if let Ok(webhook) = resource.into_webhook() {
            let _ = webhook.covers_user_events();
        }
    }
}

fuzz_target!(
    init: {
        write_seeds_if_asked(outreach_jsonapi_seeds);
        LazyLock::force(&FIXED);
    },
    |data: &[u8]| {
        let Some((selector, body)) = split_selector(data, 4) else {
            return;
        };
        match selector {
            0 => page(body),
            1 => single(body),
            2 => {
                if let Some((status, body)) = status_of(body) {
                    error_body(status, body);
                }
            }
            _ => webhooks(body),
        }
    }
);
