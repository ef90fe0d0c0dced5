//! Conformance of the Outreach simulator to Outreach's documented wire behaviour.
//!
//! Every test starts its own simulator in-process and talks raw HTTP with `reqwest` — never
//! through product code — so these tests pin the wire format itself: media types, document
//! shapes, status codes, headers and error bodies, as docs/simulators.md
//! describes them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, redirect};
use serde_json::{Value, json};
use usersync_sim::outreach::{OutreachSim, SimConfig, SimUser};

const JSON_API: &str = "application/vnd.api+json";

/// A response, read whole.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn header_number(&self, name: &str) -> i64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .parse()
            .unwrap()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

async fn read(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A request with full control over the token and the content type.
async fn raw(
    method: Method,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut request = http().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    read(request.send().await.unwrap()).await
}

/// A well-formed JSON:API request to `{api_url}{path}`.
async fn api(
    sim: &OutreachSim,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let url = format!("{}{path}", sim.api_url());
    raw(method, &url, Some(token), Some(JSON_API), body.as_ref()).await
}

async fn get(sim: &OutreachSim, token: &str, path: &str) -> Reply {
    api(sim, token, Method::GET, path, None).await
}

async fn token_request(sim: &OutreachSim, form: &[(&str, &str)]) -> Reply {
    read(
        http()
            .post(sim.token_url())
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn start() -> OutreachSim {
    start_with(SimConfig::default()).await
}

async fn start_with(config: SimConfig) -> OutreachSim {
    OutreachSim::start(config).await.unwrap()
}

fn no_mint_throttle() -> SimConfig {
    SimConfig {
        mint_throttle: Duration::ZERO,
        ..SimConfig::default()
    }
}

fn all_token(sim: &OutreachSim) -> String {
    sim.issue_tokens(&["users.all"]).access_token
}

fn seed(sim: &OutreachSim, email: &str) -> i64 {
    sim.seed_user(SimUser::new(0, email))
}

fn create_body(email: &str) -> Value {
    json!({"data": {"type": "user", "attributes": {"email": email, "firstName": "New", "lastName": "Hire"}}})
}

fn error_ids(reply: &Reply) -> Vec<&str> {
    reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {}", reply.body))
        .iter()
        .map(|error| error["id"].as_str().unwrap())
        .collect()
}

fn pointer(reply: &Reply) -> &str {
    reply.body["errors"][0]["source"]["pointer"]
        .as_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Media type

#[tokio::test]
async fn reads_and_writes_without_the_json_api_media_type_are_415() {
    let sim = start().await;
    let token = all_token(&sim);
    let users = format!("{}/users", sim.api_url());
    for (method, content_type) in [
        (Method::GET, None),
        (Method::GET, Some("application/json")),
        (Method::POST, Some("application/json")),
        (Method::GET, Some("application/vnd.api+json; charset=utf-8")),
    ] {
        let body = (method == Method::POST).then(|| create_body("a@x.test"));
        let reply = raw(
            method.clone(),
            &users,
            Some(&token),
            content_type,
            body.as_ref(),
        )
        .await;
        assert_eq!(reply.status, 415, "{method} {content_type:?}");
        assert_eq!(reply.header("content-type"), Some(JSON_API));
        let error = &reply.body["errors"][0];
        assert_eq!(error["id"], "unsupportedMediaType");
        assert_eq!(error["title"], "Unsupported Media Type");
        assert!(
            error["details"].is_string(),
            "the documented key is 'details': {error}"
        );
    }
    assert!(sim.users().is_empty());
    let ok = get(&sim, &token, "/users").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some(JSON_API));
}

// ---------------------------------------------------------------------------------------
// Authentication and scopes

#[tokio::test]
async fn missing_or_undecodable_tokens_get_the_gateways_bare_401() {
    let sim = start().await;
    let users = format!("{}/users", sim.api_url());
    let expected = json!({"error": "Invalid JWT token.", "description": "The JWT token could not be decoded."});
    for token in [None, Some("garbage"), Some("a.b.c"), Some("")] {
        let reply = raw(Method::GET, &users, token, Some(JSON_API), None).await;
        assert_eq!(reply.status, 401, "{token:?}");
        assert_eq!(reply.body, expected);
    }
    let basic = read(
        http()
            .get(&users)
            .header("authorization", "Basic dXNlcjpwYXNz")
            .header("content-type", JSON_API)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((basic.status, basic.body), (401, expected));
}

#[tokio::test]
async fn issued_access_tokens_are_jwt_shaped() {
    let sim = start().await;
    let tokens = sim.issue_tokens(&["users.read"]);
    assert_eq!(tokens.access_token.split('.').count(), 3);
    assert_eq!(tokens.expires_in, 7200);
    assert_ne!(tokens.refresh_token, tokens.access_token);
}

#[tokio::test]
async fn expired_revoked_and_foreign_tokens_get_a_json_api_401() {
    let sim = start().await;
    let expired = all_token(&sim);
    sim.expire_access_tokens();
    let reply = get(&sim, &expired, "/users").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("content-type"), Some(JSON_API));
    assert_eq!(
        reply.body,
        json!({"errors": [{"id": "unauthorized", "title": "Unauthorized", "detail": "The access token expired."}]})
    );

    let revoked = all_token(&sim);
    sim.revoke_tokens();
    let reply = get(&sim, &revoked, "/users").await;
    assert_eq!(
        (reply.status, error_ids(&reply)),
        (401, vec!["unauthorized"])
    );

    let other_sim = start().await;
    let foreign = all_token(&other_sim);
    let reply = get(&sim, &foreign, "/users").await;
    assert_eq!(
        (reply.status, error_ids(&reply)),
        (401, vec!["unauthorized"])
    );
}

#[tokio::test]
async fn scopes_are_not_additive() {
    let sim = start().await;
    let write_only = sim.issue_tokens(&["users.write"]).access_token;
    let read_only = sim.issue_tokens(&["users.read"]).access_token;

    let reply = get(&sim, &write_only, "/users").await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.body,
        json!({"errors": [{"id": "unauthorizedOauthScope", "title": "Unauthorized OAuth Scope",
            "detail": "Your authorization does not include the required scope 'users.read'."}]})
    );
    let created = api(
        &sim,
        &write_only,
        Method::POST,
        "/users",
        Some(create_body("w@x.test")),
    )
    .await;
    assert_eq!(created.status, 201);

    let reply = api(
        &sim,
        &read_only,
        Method::POST,
        "/users",
        Some(create_body("r@x.test")),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.body["errors"][0]["detail"],
        "Your authorization does not include the required scope 'users.write'."
    );
    assert_eq!(get(&sim, &read_only, "/users/1").await.status, 200);
    assert_eq!(sim.users().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Users: create, read, update

#[tokio::test]
async fn create_answers_201_with_the_resource_and_the_next_id() {
    let sim = start().await;
    let token = all_token(&sim);
    sim.seed_user(SimUser::new(5, "five@x.test"));
    sim.seed_user(SimUser::new(9, "nine@x.test"));

    let mut body = create_body("new@acme.test");
    body["data"]["attributes"]["custom3"] = json!("c3");
    body["data"]["relationships"] = json!({"profile": {"data": {"type": "profile", "id": 3}}});
    let reply = api(&sim, &token, Method::POST, "/users", Some(body)).await;

    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some(JSON_API));
    let data = &reply.body["data"];
    assert_eq!(data["type"], "user");
    assert_eq!(data["id"], json!(10), "ids are JSON integers, max + 1");
    assert_eq!(data["attributes"]["email"], "new@acme.test");
    assert_eq!(data["attributes"]["name"], "New Hire");
    assert_eq!(data["attributes"]["locked"], false);
    assert_eq!(data["attributes"]["custom3"], "c3");
    assert_eq!(data["attributes"]["title"], Value::Null);
    let created_at = data["attributes"]["createdAt"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok() && created_at.ends_with('Z'));
    assert_eq!(
        data["attributes"]["updatedAt"],
        data["attributes"]["createdAt"]
    );
    let self_link = format!("{}/users/10", sim.api_url());
    assert_eq!(data["links"]["self"], json!(self_link));
    assert_eq!(reply.header("location"), Some(self_link.as_str()));
    assert_eq!(sim.user(10).unwrap().email, "new@acme.test");
}

#[tokio::test]
async fn the_first_user_gets_id_one() {
    let sim = start().await;
    let token = all_token(&sim);
    let reply = api(
        &sim,
        &token,
        Method::POST,
        "/users",
        Some(create_body("a@x.test")),
    )
    .await;
    assert_eq!(reply.body["data"]["id"], json!(1));
}

#[tokio::test]
async fn a_duplicate_email_is_422_case_insensitively() {
    let sim = start().await;
    let token = all_token(&sim);
    let mut locked = SimUser::new(0, "Jane@Acme.test");
    locked.locked = true;
    sim.seed_user(locked);

    let reply = api(
        &sim,
        &token,
        Method::POST,
        "/users",
        Some(create_body("jane@acme.TEST")),
    )
    .await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        reply.body,
        json!({"errors": [{"id": "validationError", "title": "Validation Error",
            "detail": "Email has already been taken", "source": {"pointer": "/data/attributes/email"}}]})
    );
    assert_eq!(sim.users().len(), 1);
}

#[tokio::test]
async fn create_validates_the_document() {
    let sim = start().await;
    let token = all_token(&sim);
    let post = |body: Value| api(&sim, &token, Method::POST, "/users", Some(body));

    let missing_email =
        post(json!({"data": {"type": "user", "attributes": {"firstName": "X"}}})).await;
    assert_eq!(
        (missing_email.status, pointer(&missing_email)),
        (422, "/data/attributes/email")
    );

    let mut read_only = create_body("a@x.test");
    read_only["data"]["attributes"]["name"] = json!("Someone");
    let reply = post(read_only).await;
    assert_eq!(
        (reply.status, pointer(&reply)),
        (422, "/data/attributes/name")
    );

    let mut unknown = create_body("a@x.test");
    unknown["data"]["attributes"]["salary"] = json!(1);
    let reply = post(unknown).await;
    assert_eq!(
        (reply.status, pointer(&reply)),
        (422, "/data/attributes/salary")
    );

    let mut wrong_type = create_body("a@x.test");
    wrong_type["data"]["type"] = json!("prospect");
    let reply = post(wrong_type).await;
    assert_eq!((reply.status, pointer(&reply)), (422, "/data/type"));

    let url = format!("{}/users", sim.api_url());
    let malformed = read(
        http()
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", JSON_API)
            .body("{\"data\":")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(error_ids(&malformed), ["badRequest"]);
    assert!(sim.users().is_empty());
}

#[tokio::test]
async fn get_one_user_and_404_for_an_unknown_id() {
    let sim = start().await;
    let token = all_token(&sim);
    let id = seed(&sim, "a@x.test");
    let reply = get(&sim, &token, &format!("/users/{id}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"]["id"], json!(id));
    assert_eq!(reply.body["data"]["attributes"]["email"], "a@x.test");

    let missing = get(&sim, &token, "/users/7").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({"errors": [{"id": "resourceNotFound", "title": "Resource Not Found",
            "detail": "Could not find 'user' with ID '7'."}]})
    );
}

#[tokio::test]
async fn patch_changes_only_supplied_attributes() {
    let sim = start().await;
    let token = all_token(&sim);
    let mut user = SimUser::new(0, "a@x.test");
    user.first_name = Some("Ann".into());
    user.title = Some("AE".into());
    let id = sim.seed_user(user);

    let body =
        json!({"data": {"type": "user", "id": id, "attributes": {"locked": true, "title": null}}});
    let reply = api(
        &sim,
        &token,
        Method::PATCH,
        &format!("/users/{id}"),
        Some(body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let attributes = &reply.body["data"]["attributes"];
    assert_eq!(attributes["locked"], true);
    assert_eq!(attributes["title"], Value::Null);
    assert_eq!(attributes["firstName"], "Ann");
    let stored = sim.user(id).unwrap();
    assert!(stored.locked && stored.title.is_none());
}

#[tokio::test]
async fn patch_cannot_change_the_email() {
    let sim = start().await;
    let token = all_token(&sim);
    let id = seed(&sim, "a@x.test");
    let body = json!({"data": {"type": "user", "id": id, "attributes": {"email": "b@x.test"}}});
    let reply = api(
        &sim,
        &token,
        Method::PATCH,
        &format!("/users/{id}"),
        Some(body),
    )
    .await;
    assert_eq!(reply.status, 422);
    assert_eq!(error_ids(&reply), ["validationError"]);
    assert_eq!(pointer(&reply), "/data/attributes/email");
    assert_eq!(sim.user(id).unwrap().email, "a@x.test");
}

#[tokio::test]
async fn patch_id_must_match_the_url() {
    let sim = start().await;
    let token = all_token(&sim);
    let first = seed(&sim, "a@x.test");
    let second = seed(&sim, "b@x.test");
    let body = json!({"data": {"type": "user", "id": second, "attributes": {"locked": true}}});
    let reply = api(
        &sim,
        &token,
        Method::PATCH,
        &format!("/users/{first}"),
        Some(body),
    )
    .await;
    assert_eq!((reply.status, pointer(&reply)), (422, "/data/id"));
    assert!(!sim.user(first).unwrap().locked && !sim.user(second).unwrap().locked);

    let no_id = json!({"data": {"type": "user", "attributes": {"locked": true}}});
    let reply = api(
        &sim,
        &token,
        Method::PATCH,
        &format!("/users/{first}"),
        Some(no_id),
    )
    .await;
    assert_eq!((reply.status, pointer(&reply)), (422, "/data/id"));

    let read_only = json!({"data": {"type": "user", "id": first, "attributes": {"updatedAt": "2020-01-01T00:00:00.000Z"}}});
    let reply = api(
        &sim,
        &token,
        Method::PATCH,
        &format!("/users/{first}"),
        Some(read_only),
    )
    .await;
    assert_eq!(
        (reply.status, pointer(&reply)),
        (422, "/data/attributes/updatedAt")
    );

    let missing = json!({"data": {"type": "user", "id": 99, "attributes": {}}});
    assert_eq!(
        api(&sim, &token, Method::PATCH, "/users/99", Some(missing))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn users_cannot_be_deleted() {
    let sim = start().await;
    let token = all_token(&sim);
    let id = seed(&sim, "a@x.test");
    let reply = api(&sim, &token, Method::DELETE, &format!("/users/{id}"), None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(error_ids(&reply), ["methodNotAllowed"]);
    assert!(
        reply
            .header("allow")
            .is_some_and(|allow| !allow.contains("DELETE"))
    );
    assert!(sim.user(id).is_some());
}

// ---------------------------------------------------------------------------------------
// Collections

#[tokio::test]
async fn pagination_follows_links_next_through_every_user_once() {
    let sim = start().await;
    let token = all_token(&sim);
    for i in 0..2_500 {
        seed(&sim, &format!("user{i}@x.test"));
    }
    let mut url = format!("{}/users?page[size]=1000&count=true", sim.api_url());
    let mut page_sizes = Vec::new();
    let mut seen = BTreeSet::new();
    let last_page = loop {
        let reply = raw(Method::GET, &url, Some(&token), Some(JSON_API), None).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["meta"]["count"], json!(2_500));
        let data = reply.body["data"].as_array().unwrap();
        page_sizes.push(data.len());
        for user in data {
            assert!(
                seen.insert(user["id"].as_i64().unwrap()),
                "user {} twice",
                user["id"]
            );
        }
        let first = reply.body["links"]["first"].as_str().unwrap();
        assert!(first.starts_with(&sim.api_url()) && first.contains("page[size]=1000"));
        match reply.body["links"]["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break reply,
        }
        assert!(page_sizes.len() < 10, "pagination does not end");
    };
    assert_eq!(page_sizes, [1000, 1000, 500]);
    assert_eq!(seen, (1..=2_500).collect::<BTreeSet<i64>>());
    assert!(last_page.body["links"].get("next").is_none());
}

#[tokio::test]
async fn default_page_size_is_50_and_above_1000_is_refused() {
    let sim = start().await;
    let token = all_token(&sim);
    for i in 0..60 {
        seed(&sim, &format!("u{i}@x.test"));
    }
    let reply = get(&sim, &token, "/users").await;
    assert_eq!(reply.body["data"].as_array().unwrap().len(), 50);
    assert!(reply.body["links"]["next"].is_string());
    assert!(
        reply.body.get("meta").is_none(),
        "counting is off by default"
    );

    let too_big = get(&sim, &token, "/users?page[size]=1001").await;
    assert_eq!(too_big.status, 400);
    assert_eq!(error_ids(&too_big), ["badRequest"]);

    let forged = get(&sim, &token, "/users?page[after]=50").await;
    assert_eq!(forged.status, 400);
}

#[tokio::test]
async fn links_are_absent_when_nothing_matches() {
    let sim = start().await;
    let token = all_token(&sim);
    seed(&sim, "a@x.test");
    let reply = get(&sim, &token, "/users?filter[email]=nobody@x.test").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"], json!([]));
    assert!(reply.body.get("links").is_none(), "{}", reply.body);

    let empty_sim = start().await;
    let reply = get(&empty_sim, &all_token(&empty_sim), "/users").await;
    assert_eq!(reply.body, json!({"data": []}));
}

#[tokio::test]
async fn a_single_page_has_first_but_no_next() {
    let sim = start().await;
    let token = all_token(&sim);
    seed(&sim, "a@x.test");
    let reply = get(&sim, &token, "/users").await;
    assert!(reply.body["links"]["first"].is_string());
    assert!(reply.body["links"].get("next").is_none());
}

#[tokio::test]
async fn sparse_fieldsets_return_only_the_named_fields() {
    let sim = start().await;
    let token = all_token(&sim);
    let id = seed(&sim, "a@x.test");
    let keys = |reply: &Reply, path: &str| -> Vec<String> {
        reply
            .body
            .pointer(path)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let list = get(&sim, &token, "/users?fields[user]=email,locked").await;
    assert_eq!(keys(&list, "/data/0/attributes"), ["email", "locked"]);
    assert_eq!(list.body["data"][0]["id"], json!(id));
    assert_eq!(list.body["data"][0]["type"], "user");
    assert!(
        list.body["links"]["first"]
            .as_str()
            .unwrap()
            .contains("fields[user]=email%2Clocked")
    );

    let one = get(&sim, &token, &format!("/users/{id}?fields[user]=updatedAt")).await;
    assert_eq!(keys(&one, "/data/attributes"), ["updatedAt"]);

    let unknown = get(&sim, &token, "/users?fields[user]=salary").await;
    assert_eq!(unknown.status, 400);
}

#[tokio::test]
async fn filters_by_email_id_and_locked() {
    let sim = start().await;
    let token = all_token(&sim);
    seed(&sim, "ann@x.test");
    let bob = seed(&sim, "Bob@X.test");
    let mut locked = SimUser::new(0, "cat@x.test");
    locked.locked = true;
    let cat = sim.seed_user(locked);
    let ids = |reply: Reply| -> Vec<i64> {
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(get(&sim, &token, "/users?filter[email]=bob@x.TEST").await),
        [bob]
    );
    assert_eq!(
        ids(get(&sim, &token, "/users?filter%5Bemail%5D=bob%40x.test").await),
        [bob]
    );
    assert_eq!(
        ids(get(&sim, &token, &format!("/users?filter[id]={bob}")).await),
        [bob]
    );
    assert_eq!(
        ids(get(&sim, &token, &format!("/users?filter[id]={bob},{cat}")).await),
        [bob, cat]
    );
    assert_eq!(
        ids(get(&sim, &token, "/users?filter[locked]=true").await),
        [cat]
    );
}

#[tokio::test]
async fn filtering_on_a_non_filterable_attribute_is_422() {
    let sim = start().await;
    let token = all_token(&sim);
    for attribute in ["title", "custom1", "shoeSize"] {
        let reply = get(&sim, &token, &format!("/users?filter[{attribute}]=x")).await;
        assert_eq!(reply.status, 422, "{attribute}");
        assert_eq!(error_ids(&reply), ["validationError"]);
        assert_eq!(
            reply.body["errors"][0]["source"]["parameter"],
            json!(format!("filter[{attribute}]"))
        );
    }
}

// ---------------------------------------------------------------------------------------
// Rate limits

#[tokio::test]
async fn every_authenticated_response_carries_rate_limit_headers() {
    let sim = start().await;
    let token = all_token(&sim);
    let write_only = sim.issue_tokens(&["users.write"]).access_token;
    let users = format!("{}/users", sim.api_url());
    let replies = [
        get(&sim, &token, "/users").await,
        get(&sim, &token, "/users/404").await,
        get(&sim, &write_only, "/users").await,
        raw(Method::GET, &users, Some(&token), None, None).await,
        api(
            &sim,
            &token,
            Method::POST,
            "/users",
            Some(json!({"data": {"type": "user"}})),
        )
        .await,
        api(&sim, &token, Method::DELETE, "/users/1", None).await,
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 403, 415, 422, 405]);
    let mut remaining = Vec::new();
    for reply in &replies {
        assert_eq!(reply.header_number("x-ratelimit-limit"), 10_000);
        let reset = reply.header_number("x-ratelimit-reset");
        assert!(
            reset > chrono::Utc::now().timestamp(),
            "reset is the epoch second the window ends"
        );
        remaining.push(reply.header_number("x-ratelimit-remaining"));
    }
    assert_eq!(remaining, [9_999, 9_998, 9_997, 9_996, 9_995, 9_994]);
}

#[tokio::test]
async fn an_exhausted_budget_answers_429_with_retry_after() {
    let config = SimConfig {
        rate_limit_per_window: 3,
        rate_limit_window: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let sim = start_with(config).await;
    let token = all_token(&sim);
    let other_token = all_token(&sim);
    assert_eq!(get(&sim, &token, "/users").await.status, 200);
    assert_eq!(
        get(&sim, &other_token, "/users").await.status,
        200,
        "same user, same budget"
    );
    let last = get(&sim, &token, "/users").await;
    assert_eq!(
        (last.status, last.header_number("x-ratelimit-remaining")),
        (200, 0)
    );

    let refused = get(&sim, &token, "/users").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header_number("x-ratelimit-remaining"), 0);
    assert_eq!(refused.header_number("x-ratelimit-limit"), 3);
    let retry_after = refused.header_number("retry-after");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(error_ids(&refused), ["rateLimitExceeded"]);
    assert_eq!(refused.body["errors"][0]["title"], "Rate Limit Exceeded");
    let detail = refused.body["errors"][0]["detail"].as_str().unwrap();
    let reset =
        chrono::DateTime::from_timestamp(refused.header_number("x-ratelimit-reset"), 0).unwrap();
    let reset_text = reset.format("%Y-%m-%dT%H:%M:%S").to_string();
    assert_eq!(
        detail,
        format!(
            "You have exceeded your permitted rate limit of 3; please try again at {reset_text}."
        )
    );
}

#[tokio::test]
async fn a_new_window_restores_the_budget() {
    let config = SimConfig {
        rate_limit_per_window: 1,
        rate_limit_window: Duration::from_secs(1),
        ..SimConfig::default()
    };
    let sim = start_with(config).await;
    let token = all_token(&sim);
    assert_eq!(get(&sim, &token, "/users").await.status, 200);
    let refused = get(&sim, &token, "/users").await;
    assert_eq!(refused.status, 429);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = get(&sim, &token, "/users").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header_number("x-ratelimit-remaining"), 0);
}

// ---------------------------------------------------------------------------------------
// OAuth

#[tokio::test]
async fn an_authorization_code_is_exchanged_for_working_tokens() {
    let sim = start().await;
    seed(&sim, "a@x.test");
    let config = SimConfig::default();
    let code = sim.issue_authorization_code(&["users.all"]);
    let reply = token_request(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("redirect_uri", &config.redirect_uri),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = &reply.body;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], json!(7200));
    assert_eq!(body["scope"], "users.all");
    let created_at = body["created_at"].as_i64().unwrap();
    assert!((created_at - chrono::Utc::now().timestamp()).abs() < 60);
    assert!(body["refresh_token"].is_string());
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(get(&sim, access, "/users").await.status, 200);

    let reused = token_request(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("redirect_uri", &config.redirect_uri),
        ],
    )
    .await;
    assert_eq!(
        (reused.status, &reused.body["error"]),
        (400, &json!("invalid_grant"))
    );
}

#[tokio::test]
async fn the_token_endpoint_also_takes_json() {
    let sim = start().await;
    let config = SimConfig::default();
    let code = sim.issue_authorization_code(&["users.read", "users.write"]);
    let body = json!({
        "grant_type": "authorization_code", "code": code, "client_id": config.client_id,
        "client_secret": config.client_secret, "redirect_uri": config.redirect_uri,
    });
    let reply = raw(
        Method::POST,
        &sim.token_url(),
        None,
        Some("application/json"),
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["scope"], "users.read users.write");
}

fn refresh_form<'a>(config: &'a SimConfig, refresh_token: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", &config.client_id),
        ("client_secret", &config.client_secret),
        ("redirect_uri", &config.redirect_uri),
    ]
}

#[tokio::test]
async fn refresh_mints_a_new_refresh_token_and_the_old_one_keeps_working() {
    let sim = start_with(no_mint_throttle()).await;
    let config = SimConfig::default();
    let original = sim.issue_tokens(&["users.all"]);

    let first = token_request(&sim, &refresh_form(&config, &original.refresh_token)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let newer = first.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(newer, original.refresh_token);
    assert_eq!(first.body["scope"], "users.all");
    let access = first.body["access_token"].as_str().unwrap();
    assert_eq!(get(&sim, access, "/users").await.status, 200);

    let again = token_request(&sim, &refresh_form(&config, &original.refresh_token)).await;
    assert_eq!(again.status, 200, "older refresh tokens stay valid");
    let from_newer = token_request(&sim, &refresh_form(&config, &newer)).await;
    assert_eq!(from_newer.status, 200);
}

#[tokio::test]
async fn refresh_after_revocation_is_invalid_grant() {
    let sim = start_with(no_mint_throttle()).await;
    let config = SimConfig::default();
    let tokens = sim.issue_tokens(&["users.all"]);
    sim.revoke_tokens();
    let expected = json!({"error": "invalid_grant", "error_description": "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."});
    let reply = token_request(&sim, &refresh_form(&config, &tokens.refresh_token)).await;
    assert_eq!((reply.status, &reply.body), (400, &expected));
    let unknown = token_request(&sim, &refresh_form(&config, "never-issued")).await;
    assert_eq!((unknown.status, &unknown.body), (400, &expected));
    assert_eq!(get(&sim, &tokens.access_token, "/users").await.status, 401);
}

#[tokio::test]
async fn a_wrong_client_secret_is_invalid_client() {
    let sim = start_with(no_mint_throttle()).await;
    let config = SimConfig::default();
    let tokens = sim.issue_tokens(&["users.all"]);
    let mut form = refresh_form(&config, &tokens.refresh_token);
    form[3] = ("client_secret", "wrong");
    let reply = token_request(&sim, &form).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.body,
        json!({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."})
    );
}

#[tokio::test]
async fn malformed_token_requests_name_the_problem() {
    let sim = start_with(no_mint_throttle()).await;
    let config = SimConfig::default();
    let secret = [
        ("client_id", config.client_id.as_str()),
        ("client_secret", config.client_secret.as_str()),
    ];

    let no_grant = token_request(&sim, &secret).await;
    assert_eq!(
        (no_grant.status, &no_grant.body["error"]),
        (400, &json!("invalid_request"))
    );

    let password = [secret[0], secret[1], ("grant_type", "password")];
    let reply = token_request(&sim, &password).await;
    assert_eq!(
        (reply.status, &reply.body["error"]),
        (400, &json!("unsupported_grant_type"))
    );

    let no_token = [
        secret[0],
        secret[1],
        ("grant_type", "refresh_token"),
        ("redirect_uri", &config.redirect_uri),
    ];
    let reply = token_request(&sim, &no_token).await;
    assert_eq!(
        (reply.status, &reply.body["error"]),
        (400, &json!("invalid_request"))
    );
}

#[tokio::test]
async fn a_second_mint_within_the_throttle_is_429() {
    let sim = start().await;
    let config = SimConfig::default();
    let code = sim.issue_authorization_code(&["users.all"]);
    let exchanged = token_request(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("redirect_uri", &config.redirect_uri),
        ],
    )
    .await;
    assert_eq!(exchanged.status, 200);
    let refresh_token = exchanged.body["refresh_token"].as_str().unwrap();
    let throttled = token_request(&sim, &refresh_form(&config, refresh_token)).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(error_ids(&throttled), ["rateLimitExceeded"]);
    let retry_after = throttled.header_number("retry-after");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn authorize_redirects_with_a_code_and_the_state() {
    let sim = start().await;
    let config = SimConfig::default();
    let url = reqwest::Url::parse_with_params(
        &sim.authorize_url(),
        [
            ("client_id", config.client_id.as_str()),
            ("redirect_uri", config.redirect_uri.as_str()),
            ("response_type", "code"),
            ("scope", "users.read users.write"),
            ("state", "xyz 42"),
        ],
    )
    .unwrap();
    let reply = read(http().get(url).send().await.unwrap()).await;
    assert_eq!(reply.status, 302);
    let location = reqwest::Url::parse(reply.headers[LOCATION].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(&config.redirect_uri));
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(params["state"], "xyz 42");
    let code = &params["code"];
    let exchanged = token_request(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("redirect_uri", &config.redirect_uri),
        ],
    )
    .await;
    assert_eq!(exchanged.status, 200);
    assert_eq!(exchanged.body["scope"], "users.read users.write");

    let foreign = reqwest::Url::parse_with_params(
        &sim.authorize_url(),
        [
            ("client_id", config.client_id.as_str()),
            ("redirect_uri", "http://evil.test/cb"),
            ("response_type", "code"),
            ("scope", "users.all"),
        ],
    )
    .unwrap();
    let refused = read(http().get(foreign).send().await.unwrap()).await;
    assert_eq!(refused.status, 400, "never redirect to an unregistered URI");
    assert!(refused.headers.get(LOCATION).is_none());
}

// ---------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn fail_next_answers_the_chosen_5xx_then_recovers() {
    let sim = start().await;
    let token = all_token(&sim);
    sim.fail_next(2, 503);
    sim.fail_next(1, 500);
    sim.fail_next(1, 502);

    for _ in 0..2 {
        let reply = get(&sim, &token, "/users").await;
        assert_eq!(reply.status, 503);
        assert_eq!(error_ids(&reply), ["scheduledServerMaintenance"]);
        assert_eq!(
            reply.body["errors"][0]["title"],
            "Scheduled Server Maintenance"
        );
        let retry_at = reply
            .header("retry-after")
            .expect("503 carries Retry-After");
        assert!(
            chrono::DateTime::parse_from_rfc3339(retry_at).is_ok(),
            "{retry_at}"
        );
    }
    let internal = get(&sim, &token, "/users").await;
    assert_eq!(
        (internal.status, error_ids(&internal)),
        (500, vec!["internalServerError"])
    );
    let gateway = get(&sim, &token, "/users").await;
    assert_eq!(
        (gateway.status, error_ids(&gateway)),
        (502, vec!["badGateway"])
    );
    assert_eq!(get(&sim, &token, "/users").await.status, 200);
}

#[tokio::test]
async fn the_error_ratio_fails_a_deterministic_share() {
    let sim = start().await;
    let token = all_token(&sim);
    sim.set_error_ratio(0.5);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&sim, &token, "/users").await.status);
    }
    assert_eq!(statuses, [200, 500, 200, 500, 200, 500]);
    sim.set_error_ratio(0.0);
    assert_eq!(get(&sim, &token, "/users").await.status, 200);
}

#[tokio::test]
async fn latency_delays_but_does_not_change_the_answer() {
    let sim = start().await;
    let token = all_token(&sim);
    seed(&sim, "a@x.test");
    let latency = Duration::from_millis(150);
    sim.set_latency(latency);
    let started = Instant::now();
    let reply = get(&sim, &token, "/users").await;
    assert!(started.elapsed() >= latency);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"][0]["attributes"]["email"], "a@x.test");
}

#[tokio::test]
async fn a_rate_limit_storm_answers_429_with_retry_after_one() {
    let sim = start().await;
    let token = all_token(&sim);
    sim.rate_limit_storm(2);
    for _ in 0..2 {
        let reply = get(&sim, &token, "/users").await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(error_ids(&reply), ["rateLimitExceeded"]);
        assert_eq!(reply.header_number("x-ratelimit-remaining"), 0);
    }
    assert_eq!(get(&sim, &token, "/users").await.status, 200);
}

#[tokio::test]
async fn exhausting_the_rate_limit_then_clearing_faults() {
    let sim = start().await;
    let token = all_token(&sim);
    sim.exhaust_rate_limit();
    let refused = get(&sim, &token, "/users").await;
    assert_eq!(refused.status, 429);
    assert!(refused.header_number("retry-after") >= 1);
    assert_eq!(refused.header_number("x-ratelimit-remaining"), 0);
    sim.clear_faults();
    let restored = get(&sim, &token, "/users").await;
    assert_eq!(restored.status, 200);
    assert_eq!(restored.header_number("x-ratelimit-remaining"), 9_999);
}

#[tokio::test]
async fn removing_a_scope_reaches_existing_tokens() {
    let sim = start().await;
    let tokens = sim.issue_tokens(&["users.read", "users.write"]);
    sim.remove_scope("users.write");
    let reply = api(
        &sim,
        &tokens.access_token,
        Method::POST,
        "/users",
        Some(create_body("a@x.test")),
    )
    .await;
    assert_eq!(
        (reply.status, error_ids(&reply)),
        (403, vec!["unauthorizedOauthScope"])
    );
    assert_eq!(get(&sim, &tokens.access_token, "/users").await.status, 200);
}

#[tokio::test]
async fn expired_access_tokens_can_be_refreshed() {
    let sim = start().await;
    let config = SimConfig::default();
    let tokens = sim.issue_tokens(&["users.all"]);
    sim.expire_access_tokens();
    assert_eq!(get(&sim, &tokens.access_token, "/users").await.status, 401);
    let refreshed = token_request(&sim, &refresh_form(&config, &tokens.refresh_token)).await;
    assert_eq!(
        refreshed.status, 200,
        "a direct issue does not start the mint throttle"
    );
    let access = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(get(&sim, access, "/users").await.status, 200);
}

#[tokio::test]
async fn clear_faults_removes_every_switch() {
    let sim = start().await;
    let token = all_token(&sim);
    sim.fail_next(5, 503);
    sim.rate_limit_storm(5);
    sim.set_error_ratio(1.0);
    sim.set_latency(Duration::from_millis(50));
    sim.clear_faults();
    assert_eq!(get(&sim, &token, "/users").await.status, 200);
}

// ---------------------------------------------------------------------------------------
// Accounting and the control API

#[tokio::test]
async fn the_request_counter_counts_api_and_oauth_but_not_control_calls() {
    let sim = start_with(no_mint_throttle()).await;
    let config = SimConfig::default();
    let tokens = sim.issue_tokens(&["users.all"]);
    seed(&sim, "a@x.test");
    assert_eq!(sim.request_count(), 0, "direct calls are not requests");

    get(&sim, &tokens.access_token, "/users?filter[id]=1").await;
    token_request(&sim, &refresh_form(&config, &tokens.refresh_token)).await;
    raw(
        Method::GET,
        &format!("{}/users", sim.api_url()),
        None,
        Some(JSON_API),
        None,
    )
    .await;
    read(
        http()
            .get(format!("{}/_sim/requests", sim.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    read(
        http()
            .get(format!("{}/_sim/users", sim.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(sim.request_count(), 3);
    let requests = sim.requests();
    let summary: Vec<(&str, &str, u16)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("GET", "/api/v2/users?filter[id]=1", 200),
            ("POST", "/oauth/token", 200),
            ("GET", "/api/v2/users", 401),
        ]
    );
    sim.reset_requests();
    assert_eq!(sim.request_count(), 0);
    assert!(sim.requests().is_empty());
}

/// A call to the simulator's control API.
async fn control(sim: &OutreachSim, method: Method, path: &str, body: Option<Value>) -> Reply {
    let mut request = http().request(method, format!("{}/_sim{path}", sim.base_url()));
    if let Some(body) = body {
        request = request.json(&body);
    }
    read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn the_control_api_drives_the_simulator_over_http() {
    let sim = start().await;
    let post = |path: &'static str, body: Value| control(&sim, Method::POST, path, Some(body));

    let seeded = post("/users", json!({"email": "a@x.test", "first_name": "Ann"})).await;
    assert_eq!(seeded.status, 201, "{}", seeded.body);
    assert_eq!(seeded.body["id"], json!(1));
    assert_eq!(
        post("/users", json!({"email": "A@x.test"})).await.status,
        422
    );
    let explicit = post(
        "/users",
        json!({"id": 40, "email": "b@x.test", "locked": true}),
    )
    .await;
    assert_eq!(explicit.body["id"], json!(40));
    let listed = control(&sim, Method::GET, "/users", None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 2);
    assert!(sim.user(40).unwrap().locked);

    let tokens = post("/tokens", json!({"scopes": ["users.read"]})).await;
    assert_eq!(tokens.body["expires_in"], json!(7200));
    let access = tokens.body["access_token"].as_str().unwrap().to_owned();
    let code = post("/authorization-codes", json!({"scopes": ["users.all"]})).await;
    assert!(code.body["code"].is_string());

    let faults = post("/faults", json!({"fail_next": {"n": 1, "status": 503}})).await;
    assert_eq!(faults.status, 204);
    assert_eq!(get(&sim, &access, "/users").await.status, 503);
    assert_eq!(get(&sim, &access, "/users").await.status, 200);

    post("/faults", json!({"rate_limit_storm": 3, "latency_ms": 1})).await;
    assert_eq!(
        control(&sim, Method::DELETE, "/faults", None).await.status,
        204
    );
    assert_eq!(get(&sim, &access, "/users").await.status, 200);

    post("/faults", json!({"revoke_tokens": true})).await;
    assert_eq!(get(&sim, &access, "/users").await.status, 401);

    let not_an_error = post("/faults", json!({"fail_next": {"n": 1, "status": 200}})).await;
    assert_eq!(not_an_error.status, 422);
    assert_eq!(post("/faults", json!({"meltdown": true})).await.status, 400);

    let log = control(&sim, Method::GET, "/requests", None).await;
    assert_eq!(log.body["count"], json!(4), "control calls are not counted");
    assert_eq!(
        log.body["requests"][0],
        json!({"method": "GET", "path": "/api/v2/users", "status": 503})
    );
    assert_eq!(
        control(&sim, Method::DELETE, "/requests", None)
            .await
            .status,
        204
    );
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn the_sim_command_serves_out_of_process() {
    use tokio::io::AsyncBufReadExt;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args([
            "sim",
            "outreach",
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "7",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    let base = line.trim().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let client = http();
    let tokens = read(
        client
            .post(format!("{base}/_sim/tokens"))
            .json(&json!({"scopes": ["users.all"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let access = tokens.body["access_token"].as_str().unwrap();
    let reply = raw(
        Method::GET,
        &format!("{base}/api/v2/users"),
        Some(access),
        Some(JSON_API),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header_number("x-ratelimit-limit"), 7);
    child.kill().await.unwrap();
}
