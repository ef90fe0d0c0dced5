//! Salesforce REST answers, selected by the first byte: (0) a query page through
//! `read_query_page`, its records as they come and as users; (1) an sobject read through
//! `read_user`; (2) an error body under a status (second byte) through `refusal`; (3) a
//! `Sforce-Limit-Info` value through `ApiUsage::parse`.
//!
//! Besides never panicking: a page is the last exactly when it names no next page, its next
//! page stays on the instance, it keeps every record, and its users have valid ids; a read user
//! is the user asked for; `REQUEST_LIMIT_EXCEEDED` is told apart and an unrecognised body is
//! kept to an excerpt; an API usage reads back the same from its own rendering.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use serde_json::Value;
use usersync::model::salesforce_id::SalesforceId;
use usersync::salesforce::rest::{
    ApiUsage, RestOperation, SalesforceRestError, read_query_page, read_user, refusal,
    user_from_record,
};
use usersync_fuzz::providers::{
    INSTANCE_URL, USER_ID, salesforce_rest_seeds, split_selector, status_of,
};
use usersync_fuzz::write_seeds_if_asked;

static ASKED: LazyLock<SalesforceId> =
    LazyLock::new(|| SalesforceId::parse(USER_ID).expect("a user id"));

fn page(body: &str) {
    let records_sent = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("records")?.as_array().map(Vec::len));
    if let Ok((page, next)) = read_query_page(body, 7, INSTANCE_URL, Ok) {
        assert_eq!(page.number, 7);
        assert_eq!(page.done, next.is_none());
        assert_eq!(
            Some(page.records.len()),
            records_sent,
            "every record is kept"
        );
        if let Some(next) = &next {
            let next = url::Url::parse(next).expect("an absolute URL");
            let instance = url::Url::parse(INSTANCE_URL).expect("the instance");
            assert_eq!(next.origin(), instance.origin(), "{next}");
        }
    }
    if let Ok((page, _)) = read_query_page(body, 1, INSTANCE_URL, |r| user_from_record(&r)) {
        for user in &page.records {
            assert_eq!(SalesforceId::parse(user.id.as_str()).as_ref(), Ok(&user.id));
        }
    }
}

fn error_body(status: u16, body: &str) {
    let status = StatusCode::from_u16(status).expect("a listed status");
    let operation = RestOperation::Query {
        page: 1,
        soql: "SELECT Id FROM User".to_owned(),
    };
    let error = refusal(operation, status, body);
    assert!(!error.to_string().is_empty());
    let _ = error.disconnect_reason();
    match &error {
        SalesforceRestError::RequestLimitExceeded { .. } => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(error.error_code(), Some("REQUEST_LIMIT_EXCEEDED"));
        }
        SalesforceRestError::PermissionDenied { .. } => assert_eq!(status, StatusCode::FORBIDDEN),
        SalesforceRestError::Refused {
            status: kept,
            code,
            message,
            ..
        } => {
            assert_eq!(*kept, status.as_u16());
            if code.is_empty() && serde_json::from_str::<Value>(body).is_err() {
                assert!(message.chars().count() <= 301, "an excerpt, not the body");
            }
        }
        other => panic!("a refusal became {other:?}"),
    }
}

fuzz_target!(
    init: {
        write_seeds_if_asked(salesforce_rest_seeds);
        LazyLock::force(&ASKED);
    },
    |data: &[u8]| {
        let Some((selector, rest)) = split_selector(data, 4) else {
            return;
        };
        match selector {
            0 => page(&String::from_utf8_lossy(rest)),
            1 => {
                if let Ok(user) = read_user(&String::from_utf8_lossy(rest), &ASKED) {
                    assert_eq!(user.id, *ASKED);
                }
            }
            2 => {
                if let Some((status, body)) = status_of(rest) {
                    error_body(status, &String::from_utf8_lossy(body));
                }
            }
            _ => {
                if let Some(usage) = ApiUsage::parse(&String::from_utf8_lossy(rest)) {
                    let rendered = format!("api-usage={}/{}", usage.used, usage.limit);
                    assert_eq!(ApiUsage::parse(&rendered), Some(usage));
                }
            }
        }
    }
);
