//! What the provider-input targets share: the fixed clock and hosts, the selector byte of the
//! targets that feed several parsers, and seed inputs shaped like what Outreach and Salesforce
//! send (the bodies of their documentation, and the absurd numbers this project bounds).
//!
//! A target feeding several parsers reads its first byte as the parser to use
//! ([`split_selector`]); seeds carry that byte in front. The status codes some parsers take
//! come from the second byte ([`status_of`]).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The clock of every target: 2026-01-01T00:00:00Z.
pub fn now() -> DateTime<Utc> {
    crate::observed_at()
}

/// The instance every Salesforce REST input is read against.
pub const INSTANCE_URL: &str = "https://acme.my.salesforce.com";

/// The Outreach API root every page is read against.
pub const API_URL: &str = "https://api.outreach.io/api/v2";

/// The refresh token a token request redeemed.
pub const REDEEMED: &str = "r-redeemed-0000";

/// The Salesforce org and user of the seeds.
pub const ORG_ID: &str = "00D5e000000AbcdEAC";
pub const USER_ID: &str = "0055e000001XyzQAAS";

/// Status codes a refusal is classified under.
pub const STATUSES: [u16; 12] = [400, 401, 403, 404, 405, 409, 415, 422, 429, 500, 502, 503];

/// The selector (first byte, modulo `choices`) and the rest of `data`.
pub fn split_selector(data: &[u8], choices: u8) -> Option<(u8, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((first % choices, rest))
}

/// A status code from [`STATUSES`] picked by the first byte of `data`, and the rest.
pub fn status_of(data: &[u8]) -> Option<(u16, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((STATUSES[usize::from(*first) % STATUSES.len()], rest))
}

fn with_selector(selector: u8, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut seed = vec![selector];
    seed.extend_from_slice(body.as_ref());
    seed
}

fn with_status(selector: u8, status: u16, body: impl AsRef<[u8]>) -> Vec<u8> {
    let index = STATUSES
        .iter()
        .position(|s| *s == status)
        .expect("a listed status");
    let mut seed = vec![selector, u8::try_from(index).expect("few statuses")];
    seed.extend_from_slice(body.as_ref());
    seed
}

fn text(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Outreach token responses: as documented, without a new refresh token, and with the
/// lifetimes and member types a broken or hostile endpoint could send.
pub fn outreach_token_seeds() -> Vec<Vec<u8>> {
    let full = |expires_in: Value| {
        json!({"access_token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2l~n",
               "token_type": "bearer", "expires_in": expires_in,
               "refresh_token": "5c1a6f0d~2bb8a1e0", "scope": "users.all webhooks.all",
               "created_at": 1_767_225_600})
    };
    let mut seeds: Vec<Value> = [
        json!(7200),
        json!(9_223_372_036_854_775_807_i64),
        json!(18_446_744_073_709_551_615_u64),
        json!(1e30),
        json!(-1),
        json!(0),
        json!(7199.5),
        json!("7200"),
        Value::Null,
    ]
    .into_iter()
    .map(full)
    .collect();
    seeds.extend([
        json!({"access_token": "a-2", "token_type": "bearer", "expires_in": 7200}),
        json!({"access_token": "a-2", "refresh_token": REDEEMED, "expires_in": 7200}),
        json!({"access_token": "a-2", "refresh_token": "", "expires_in": 7200}),
        json!({"refresh_token": "r-new~1", "expires_in": 7200}),
        json!({"access_token": 42, "refresh_token": "r-new-1"}),
        json!({"access_token": "a-2", "refresh_token": 7}),
        json!({"error": "invalid_grant", "error_description": "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."}),
        json!([]),
    ]);
    let mut bytes: Vec<Vec<u8>> = seeds.iter().map(text).collect();
    bytes.push(b"<html><body>502 Bad Gateway</body></html>".to_vec());
    bytes
}

/// An Outreach user resource.
fn outreach_user(id: Value, email: &str) -> Value {
    json!({"type": "user", "id": id,
           "attributes": {"email": email, "username": "jdoe", "firstName": "Jane",
                          "lastName": "Doe", "title": "AE", "locked": false,
                          "custom1": "0055e000001XyzQAAS", "custom2": null,
                          "updatedAt": "2025-01-02T03:04:05.000Z", "createdAt": "2024-01-02T03:04:05.000Z"},
           "relationships": {"profile": {"data": {"type": "profile", "id": 3}},
                             "role": {"data": null},
                             "mailboxes": {"data": [{"type": "mailbox", "id": 9}],
                                           "links": {"related": "https://api.outreach.io/api/v2/mailboxes?filter[user][id]=42"}},
                             "teams": {"links": {"related": "https://api.outreach.io/api/v2/teams"}}},
           "links": {"self": "https://api.outreach.io/api/v2/users/42"}})
}

/// JSON:API documents Outreach answers with: selector 0 a page of users, 1 one user, 2 an
/// error body under a status, 3 a page of webhooks.
pub fn outreach_jsonapi_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        with_selector(
            0,
            text(
                &json!({"data": [outreach_user(json!(42), "jane.doe@acme.test"),
                                   outreach_user(json!(43), "john@acme.test")],
                          "links": {"first": "https://api.outreach.io/api/v2/users?page[size]=2",
                                    "next": "https://api.outreach.io/api/v2/users?page[after]=eyJpZCI6NDN9&page[size]=2"},
                          "meta": {"count": 2500, "count_truncated": false}}),
            ),
        ),
        with_selector(
            0,
            text(&json!({"data": [outreach_user(json!(44), "x@acme.test")],
                          "links": {"next": "/api/v2/users?page[after]=abc"}})),
        ),
        with_selector(
            0,
            text(&json!({"data": [], "links": {"next": "https://evil.example/api/v2/users"}})),
        ),
        with_selector(0, text(&json!({"data": [], "links": {"next": null}}))),
        with_selector(
            1,
            text(&json!({"data": outreach_user(json!(42), "jane.doe@acme.test")})),
        ),
        with_selector(
            1,
            text(&json!({"data": outreach_user(json!("42"), "a@b.c")})),
        ),
        with_selector(
            1,
            text(&json!({"data": {"type": "user", "id": 9_223_372_036_854_775_807_i64}})),
        ),
        with_selector(
            3,
            text(&json!({"data": [{"type": "webhook", "id": 7,
                "attributes": {"url": "https://usersync.example/webhooks/outreach",
                               "resource": "user", "action": "*", "active": true,
                               "payloadVersion": 2, "createdAt": "2025-01-02T03:04:05.000Z"}}]})),
        ),
    ];
    let errors = [
        (
            422,
            json!({"errors": [{"id": "validationError", "title": "Validation Error",
                                 "detail": "Email has already been taken",
                                 "source": {"pointer": "/data/attributes/email"}}]}),
        ),
        (
            404,
            json!({"errors": [{"id": "resourceNotFound", "title": "Resource Not Found",
                                 "detail": "Could not find 'user' with ID '99'."}]}),
        ),
        (
            403,
            json!({"errors": [{"id": "unauthorizedOauthScope", "title": "Unauthorized OAuth Scope",
                                 "detail": "Your OAuth token does not grant access to the 'users.write' scope."}]}),
        ),
        (
            415,
            json!({"errors": [{"id": "unsupportedMediaType", "title": "Unsupported Media Type",
                                 "details": "Expected Content-Type header to be application/vnd.api+json"}]}),
        ),
        (
            401,
            json!({"error": "Invalid JWT token.", "description": "The JWT token could not be decoded."}),
        ),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "The provided authorization grant is invalid"}),
        ),
        (
            429,
            json!({"errors": [{"id": "rateLimitExceeded", "title": "Rate Limit Exceeded",
                                 "detail": "You have exceeded your permitted rate limit of 10,000; please try again at 2026-01-01 01:00:00 UTC."}]}),
        ),
        (
            503,
            json!({"errors": [{"id": "serviceUnavailable", "detail": {"maintenance": true}}]}),
        ),
        (500, json!({"errors": []})),
    ];
    seeds.extend(
        errors
            .iter()
            .map(|(status, body)| with_status(2, *status, text(body))),
    );
    seeds.push(with_status(
        2,
        502,
        "<html><body>502 Bad Gateway</body></html>",
    ));
    seeds
}

/// Response headers, one `Name: value` a line: Outreach's budget headers in every documented
/// form, `Retry-After` as delta, decimal, HTTP date and ISO instant, absurd values, and
/// Salesforce's `Sforce-Limit-Info`.
pub fn rate_limit_seeds() -> Vec<Vec<u8>> {
    [
        "X-RateLimit-Limit: 10000\nX-RateLimit-Remaining: 9999\nX-RateLimit-Reset: 1767229200\n",
        "X-RateLimit-Limit: 10000\nX-RateLimit-Remaining: 9999, 19988\nX-RateLimit-Reset: 3600\n",
        "X-RateLimit-Limit: 10000\nX-RateLimit-Remaining: 0\nX-RateLimit-Reset: 1767225660\nRetry-After: 60\n",
        "X-RateLimit-Remaining: -3\nX-RateLimit-Reset: 9223372036854775807\n",
        "Retry-After: 17\n",
        "Retry-After: 1.5\n",
        "Retry-After: Thu, 01 Jan 2026 00:01:30 GMT\n",
        "Retry-After: 2026-01-01T00:10:00Z\n",
        "Retry-After: 2026-01-01T00:10:00\n",
        "Retry-After: 1767225630\n",
        "Retry-After: 1e30\n",
        "Retry-After: 18446744073709551615\n",
        "Retry-After: Fri, 31 Dec 9999 23:59:59 GMT\n",
        "Sforce-Limit-Info: api-usage=25/15000\n",
        "Sforce-Limit-Info: api-usage=3/5000; per-app-api-usage=1/100(appName=usersync)\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Outreach webhook deliveries: a create, a lock in payload versions 1 and 2, a partial update
/// with nulls, and events of other resources and actions.
pub fn webhook_seeds() -> Vec<Vec<u8>> {
    let created = json!({
        "data": {"type": "user", "id": "42", "attributes": {
            "email": "Jane.Doe@Acme.test", "username": "jdoe", "firstName": "Jane",
            "lastName": "Doe", "locked": false, "title": "AE",
            "createdAt": "2025-01-02T03:04:05.000Z", "updatedAt": "2025-01-02T03:04:05.000Z"}},
        "meta": {"deliveredAt": "2025-01-02T03:04:06.120Z", "eventName": "user.created"}});
    let locked = json!({
        "data": {"type": "user", "id": "42",
                 "attributes": {"locked": true, "updatedAt": "2025-02-03T04:05:06.789Z"}},
        "meta": {"deliveredAt": "2025-02-03T04:05:07.000Z", "eventName": "user.updated"}});
    let mut locked_v2 = locked.clone();
    locked_v2["beforeUpdate"] = json!({"type": "user", "id": "42",
        "attributes": {"locked": false, "updatedAt": "2025-01-02T03:04:05.000Z"}});
    let renamed = json!({
        "data": {"type": "user", "id": 42,
                 "attributes": {"firstName": null, "lastName": "Li", "email": "jane.li@acme.test",
                                "username": null, "locked": false,
                                "updatedAt": "2025-03-04T05:06:07.000+02:00"}},
        "meta": {"eventName": "user.updated"}});
    let account = json!({
        "data": {"type": "account", "id": "7", "attributes": {"name": "Acme"}},
        "meta": {"eventName": "account.created"}});
    let destroyed = json!({
        "data": {"type": "user", "id": "42", "attributes": {}},
        "meta": {"eventName": "user.destroyed"}});
    [created, locked, locked_v2, renamed, account, destroyed]
        .iter()
        .map(text)
        .collect()
}

/// A Salesforce token response.
fn salesforce_token(instance_url: &str, extra: &[(&str, Value)]) -> Value {
    let mut body = json!({
        "access_token": "00D5e000000AbcdEAC!AQ0~AQPm7",
        "signature": "d/SxeYBxH0GSVko0HMgcUxuZy0PA2cDDz1u7g7JtDHw=",
        "scope": "refresh_token api",
        "instance_url": instance_url,
        "id": format!("https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"),
        "token_type": "Bearer",
        "issued_at": "1767225600000",
    });
    for (name, value) in extra {
        body[*name] = value.clone();
    }
    body
}

/// Salesforce token endpoint answers: selector 0 a success body, 1 a refusal under a status,
/// 2 a userinfo body.
pub fn salesforce_token_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = [
        salesforce_token(INSTANCE_URL, &[]),
        salesforce_token(
            "https://acme.my.salesforce.com/",
            &[(
                "refresh_token",
                json!("5Aep861TSESvWeug_xvFHRBTTbf_YrTWgEyjBJ"),
            )],
        ),
        salesforce_token(INSTANCE_URL, &[("issued_at", json!(1e308))]),
        salesforce_token(
            INSTANCE_URL,
            &[("issued_at", json!("99999999999999999999999"))],
        ),
        salesforce_token("http://acme.my.salesforce.com", &[]),
        salesforce_token("https://user:pw@evil.example", &[]),
        salesforce_token(
            INSTANCE_URL,
            &[("id", json!("https://login.salesforce.com/id/x/y"))],
        ),
    ]
    .iter()
    .map(|body| with_selector(0, text(body)))
    .collect();
    let refusals = [
        (
            400,
            json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
        ),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "request not supported on this domain"}),
        ),
        (
            400,
            json!({"error": "invalid_client_id", "error_description": "client identifier invalid"}),
        ),
        (
            401,
            json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
        ),
        (
            400,
            json!({"error": "inactive_user", "error_description": "inactive user"}),
        ),
    ];
    seeds.extend(
        refusals
            .iter()
            .map(|(status, body)| with_status(1, *status, text(body))),
    );
    seeds.push(with_status(1, 503, "<html>Service Unavailable</html>"));
    seeds.push(with_selector(
        2,
        text(
            &json!({"sub": format!("https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"),
                     "user_id": USER_ID, "organization_id": ORG_ID,
                     "preferred_username": "integration@acme.example", "active": true,
                     "utcOffset": -28_800_000, "updated_at": "2025-01-02T03:04:05Z"}),
        ),
    ));
    seeds
}

/// A Salesforce User record as the REST API renders it.
fn salesforce_user(id: &str) -> Value {
    json!({"attributes": {"type": "User", "url": format!("/services/data/v62.0/sobjects/User/{id}")},
           "Id": id, "Username": "ann@acme.example", "Email": "Ann@Acme.example",
           "FirstName": "Ann", "LastName": null, "Title": "AE", "IsActive": true,
           "CreatedDate": "2024-06-18T11:30:45.000+0000",
           "LastModifiedDate": "2024-06-19T08:00:00.250+0000"})
}

/// Salesforce REST answers: selector 0 a query page, 1 an sobject read of [`USER_ID`], 2 an
/// error body under a status, 3 a `Sforce-Limit-Info` value.
pub fn salesforce_rest_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        with_selector(
            0,
            text(&json!({"totalSize": 2500, "done": false,
                          "nextRecordsUrl": "/services/data/v62.0/query/01gD0000002HU6KIAW-2000",
                          "records": [salesforce_user(USER_ID), salesforce_user("005000000000001AAA")]})),
        ),
        with_selector(
            0,
            text(&json!({"totalSize": 1, "done": true, "records": [salesforce_user(USER_ID)]})),
        ),
        with_selector(
            0,
            text(&json!({"totalSize": 3, "done": false,
                          "nextRecordsUrl": "https://evil.example/services/data/v62.0/query/x-2000",
                          "records": []})),
        ),
        with_selector(
            0,
            text(
                &json!({"totalSize": 18_446_744_073_709_551_615_u64, "done": true, "records": []}),
            ),
        ),
        with_selector(1, text(&salesforce_user(USER_ID))),
        with_selector(1, text(&salesforce_user("005000000000001AAA"))),
        with_selector(3, "api-usage=25/15000"),
        with_selector(
            3,
            "api-usage=3/5000; per-app-api-usage=1/100(appName=usersync)",
        ),
        with_selector(3, "api-usage=18446744073709551615/0"),
    ];
    let errors = [
        (
            401,
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        ),
        (
            403,
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
        ),
        (
            403,
            json!([{"message": "insufficient access rights on object id", "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY"}]),
        ),
        (
            400,
            json!([{"message": "\nSELECT Id, Foo__c FROM User\n           ^\nERROR at Row:1:Column:12\nNo such column 'Foo__c' on entity 'User'.", "errorCode": "INVALID_FIELD"}]),
        ),
        (
            404,
            json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
        ),
        (
            400,
            json!({"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}),
        ),
        (503, json!([])),
    ];
    seeds.extend(
        errors
            .iter()
            .map(|(status, body)| with_status(2, *status, text(body))),
    );
    seeds
}
