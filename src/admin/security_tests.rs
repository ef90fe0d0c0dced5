//! The admin server against a browser on the operator's machine (docs/security.md, "Admin
//! server"): each test sends what a hostile page, a rebound DNS name or a guesser would send,
//! through the router as it is served, and checks both the answer and that nothing changed.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::connection::Side;
use crate::connection::authorization::StoredAuthorizations;
use crate::connection::vault::{SecretKey, Vault};

/// The port the router believes it listens on (`admin.listen` 127.0.0.1:8700).
pub(super) const LISTEN: &str = "127.0.0.1:8700";

/// A router with a secret key (so a reconnect could store what it is given) and, when asked,
/// an admin token.
async fn admin(token: Option<&str>) -> (Router, AdminState) {
    admin_with(token, None).await
}

/// The same, with a configuration (what the browser authorization flows need).
async fn admin_with(
    token: Option<&str>,
    config: Option<crate::config::Config>,
) -> (Router, AdminState) {
    let tokens = token
        .map(|token| AdminToken::new("admin", Role::Admin, token))
        .into_iter()
        .collect();
    admin_with_tokens(tokens, config).await
}

/// A router with a secret key, `tokens` (none: loopback only) and, when given, a
/// configuration.
pub(super) async fn admin_with_tokens(
    tokens: Vec<AdminToken>,
    config: Option<crate::config::Config>,
) -> (Router, AdminState) {
    let store = crate::store::open("sqlite::memory:").await.unwrap();
    let addresses = match &config {
        Some(config) => AdminAddresses::new(
            LISTEN.parse().unwrap(),
            &config.admin.public_url,
            &config.admin.allowed_hosts,
        )
        .unwrap(),
        None => AdminAddresses::loopback(LISTEN.parse().unwrap()),
    };
    let key =
        SecretKey::from_base64("q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=", "test").unwrap();
    let state = AdminState {
        store: store.clone(),
        connections: Connections::new(),
        authorizations: Some(StoredAuthorizations::new(store, Some(Vault::new(key)))),
        decisions: None,
        config: config.map(Arc::new),
        outreach: None,
        tokens: tokens.into(),
        pending: Default::default(),
        actions: Default::default(),
        addresses,
    };
    (router(state.clone()), state)
}

/// A request as a same-origin page or the CLI sends it: `Host` names the listen address.
fn to(method: &str, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, LISTEN)
}

/// `GET path` naming the server `host`, as a rebound page or a probe would.
fn asked_as(host: &str, path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header(header::HOST, host)
        .body(Body::empty())
        .unwrap()
}

pub(super) async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_cross_site_form_post_of_a_reconnect_is_refused_and_stores_nothing() {
    let (router, state) = admin(None).await;
    let forged = to("POST", "/api/v1/connections/outreach/reconnect")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"refresh_token":"attacker-token"}"#))
        .unwrap();
    let (status, body) = send(&router, forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "origin_refused");
    assert!(message(&body).contains("http://evil.example"), "{body}");

    // The same body from a page that strips Origin: the content type alone refuses it.
    let stripped = to("POST", "/api/v1/connections/outreach/reconnect")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"refresh_token":"attacker-token"}"#))
        .unwrap();
    let (status, body) = send(&router, stripped).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert!(
        message(&body).contains("application/json") && message(&body).contains("text/plain"),
        "{body}"
    );
    let stored = state
        .authorizations
        .as_ref()
        .unwrap()
        .load::<crate::connection::authorization::OutreachAuthorization>(Side::Outreach)
        .await
        .unwrap();
    assert!(stored.is_none(), "nothing was stored");
    assert_eq!(
        state.connections.state(Side::Outreach).0,
        crate::connection::ConnectionState::NotConfigured
    );
}

#[tokio::test]
async fn a_mapping_or_a_settings_save_sent_as_a_form_is_refused() {
    let (router, _) = admin(None).await;
    for (method, path, content_type, body) in [
        (
            "POST",
            "/api/v1/mappings",
            "application/x-www-form-urlencoded",
            "outreach_user_id=1&salesforce_user_id=005000000000001AAA",
        ),
        (
            "POST",
            "/api/v1/mappings",
            "multipart/form-data; boundary=x",
            "--x--",
        ),
        ("PUT", "/api/v1/settings", "text/plain", "{}"),
        (
            "POST",
            "/api/v1/replay",
            "text/plain",
            r#"{"from":"latest"}"#,
        ),
    ] {
        let request = to(method, path)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let (status, answer) = send(&router, request).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{method} {path} as {content_type}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_call_without_a_body_still_needs_the_json_content_type() {
    let (router, state) = admin(None).await;
    for path in [
        "/api/v1/connections/salesforce/disconnect",
        "/api/v1/connections/salesforce/test",
        "/api/v1/connections/salesforce/reconnect",
        "/api/v1/resync",
    ] {
        let bare = to("POST", path).body(Body::empty()).unwrap();
        let (status, body) = send(&router, bare).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}: {body}");
        assert!(message(&body).contains("application/json"), "{body}");
    }
    let unmap = to("DELETE", "/api/v1/mappings/1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&router, unmap).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        state.connections.state(Side::Salesforce).0,
        crate::connection::ConnectionState::NotConfigured,
        "nothing was disconnected"
    );

    // What the CLI and the page send: the JSON content type and no body.
    let asked = to("POST", "/api/v1/connections/salesforce/disconnect")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&router, asked).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["connection"]["state"], "disconnected");
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_and_the_servers_own_names_are_not() {
    let (router, _) = admin(None).await;
    for host in [
        "attacker.example:8700",
        "attacker.example",
        "localhost:9999",
        "127.0.0.1",
    ] {
        let (status, body) = send(&router, asked_as(host, "/api/v1/settings")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}: {body}");
        assert_eq!(body["error"]["code"], "host_refused");
        assert!(message(&body).contains(host), "{body}");
    }
    for host in [
        "127.0.0.1:8700",
        "localhost:8700",
        "LOCALHOST:8700",
        "[::1]:8700",
    ] {
        let (status, _) = send(&router, asked_as(host, "/api/v1/settings")).await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
    // The page and the callbacks are guarded too; the probes are not (docs/security.md).
    for (path, expected) in [
        ("/", StatusCode::FORBIDDEN),
        ("/oauth/salesforce/callback", StatusCode::FORBIDDEN),
        ("/healthz", StatusCode::OK),
        ("/readyz", StatusCode::OK),
        ("/metrics", StatusCode::OK),
    ] {
        let (status, _) = send(&router, asked_as("10.1.2.3:8700", path)).await;
        assert_eq!(status, expected, "{path}");
    }
}

#[tokio::test]
async fn a_page_of_another_origin_cannot_read_or_change_anything() {
    let (router, _) = admin(None).await;
    for origin in [
        "http://evil.example",
        "http://localhost:3000",
        "https://127.0.0.1:8700.evil.example",
        "null",
    ] {
        let read = to("GET", "/api/v1/status")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(&router, read).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}: {body}");
        assert_eq!(body["error"]["code"], "origin_refused");
        assert!(message(&body).contains(origin), "{body}");
    }
    let own = to("POST", "/api/v1/connections/salesforce/disconnect")
        .header(header::ORIGIN, "http://localhost:8700")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&router, own).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_page_and_the_api_carry_the_security_headers() {
    let (router, _) = admin(None).await;
    let page = router
        .clone()
        .oneshot(to("GET", "/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    let html = String::from_utf8(
        axum::body::to_bytes(page.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(!html.contains("<style"), "no inline style");
    for script in html.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src="),
            "no inline script: <script{}",
            &script[..script.len().min(60)]
        );
    }
    for (asset, kind) in [("/page.js", "text/javascript"), ("/page.css", "text/css")] {
        assert!(
            html.contains(&format!("\"{asset}\"")),
            "the page loads {asset}"
        );
        let response = router
            .clone()
            .oneshot(to("GET", asset).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{asset}"
        );
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
    }

    let api = router
        .clone()
        .oneshot(to("GET", "/api/v1/status").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let headers = api.headers();
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
}

/// What `/metrics` says of wrong tokens so far (the counter is the process's: other tests add
/// to it too, so a test compares before and after with "at least").
fn auth_failures() -> f64 {
    let page = crate::metrics::global().render(&Connections::new());
    crate::metrics::sample(&page, "usersync_admin_auth_failures_total").unwrap_or(0.0)
}

/// A request from `client` (the address a served request knows its client by).
fn from(client: [u8; 4], token: &str) -> Request<Body> {
    let mut request = to("GET", "/api/v1/status")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            client, 50000,
        ))));
    request
}

/// On a paused clock: how long (in the runtime's time) the router took to answer.
async fn answered_after(router: &Router, request: Request<Body>) -> (StatusCode, Duration) {
    let started = tokio::time::Instant::now();
    let status = router.clone().oneshot(request).await.unwrap().status();
    (status, started.elapsed())
}

/// Whether `took` is the wait `expected`, on the timer's millisecond tick (a sleep ends on
/// the tick after its deadline).
fn waited(took: Duration, expected: Duration) -> bool {
    took >= expected && took <= expected + Duration::from_millis(1)
}

#[tokio::test]
async fn wrong_tokens_are_counted_and_slow_that_client_only() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let (router, _) = admin(Some(TOKEN)).await;
    tokio::time::pause();
    let guesser = [192, 0, 2, 7];
    let operator = [192, 0, 2, 8];
    let before = auth_failures();

    let (status, took) = answered_after(&router, from(guesser, "guess-1")).await;
    assert_eq!((status, took), (StatusCode::UNAUTHORIZED, Duration::ZERO));
    let (status, took) = answered_after(&router, from(guesser, "guess-2")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        waited(took, auth::delay_after(1)),
        "one failure before it: {took:?}"
    );
    // Even the right token waits: a quick answer must not tell a right guess.
    let (status, took) = answered_after(&router, from(guesser, TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(waited(took, auth::delay_after(2)), "{took:?}");
    // Another client is not held up by the guesser's failures.
    let (status, took) = answered_after(&router, from(operator, TOKEN)).await;
    assert_eq!((status, took), (StatusCode::OK, Duration::ZERO));
    // No token at all is a question, not a guess: answered 401 and not counted.
    let bare = to("GET", "/api/v1/status").body(Body::empty()).unwrap();
    assert_eq!(send(&router, bare).await.0, StatusCode::UNAUTHORIZED);

    assert!(
        auth_failures() >= before + 2.0,
        "two wrong tokens counted on /metrics"
    );
}

/// The browser authorization flow's `state` binds to the browser that started it: the start
/// sets a cookie, and a callback without it (another browser, a link sent to the operator)
/// is refused, leaving the state to the browser that has it.
#[tokio::test]
async fn an_authorization_callback_needs_the_browser_that_started_it() {
    let mut config = crate::config::Config::default();
    config.salesforce.consumer_key = "3MVG9key".into();
    let (router, _) = admin_with(None, Some(config.clone())).await;
    let started = router
        .clone()
        .oneshot(
            to("GET", "/api/v1/connections/salesforce/authorize")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let set_cookie = started.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for part in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/oauth/salesforce/callback",
        "Max-Age=600",
    ] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(started.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let authorize = url::Url::parse(body["authorize_url"].as_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();

    // The provider sends the browser back; `error` makes the outcome visible without a code
    // to redeem.
    let callback = format!("/oauth/salesforce/callback?state={state}&error=access_denied");
    let back = |cookie: Option<&str>| {
        let mut request = to("GET", &callback).header(header::ORIGIN, "null");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let router = router.clone();
        let request = request.body(Body::empty()).unwrap();
        async move {
            let response = router.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            let location = response.headers()[header::LOCATION].to_str().unwrap();
            url::form_urlencoded::parse(location.trim_start_matches("/?").as_bytes())
                .into_owned()
                .collect::<std::collections::HashMap<String, String>>()
        }
    };
    for stranger in [None, Some("usersync_authorize_salesforce=someone-else")] {
        let page = back(stranger).await;
        assert_eq!(page["authorization_failed"], "salesforce");
        assert!(
            page["reason"].contains("this browser did not start the authorization"),
            "{stranger:?}: {page:?}"
        );
    }
    // However the browser came back (a redirect chain may make it say `Origin: null`), the
    // right cookie gets it past the binding.
    let page = back(Some(&format!("theme=dark; {cookie}"))).await;
    assert_eq!(
        page["reason"], "Salesforce refused: access_denied: ",
        "the browser that started it got past the binding: {page:?}"
    );

    // Secure when the browser comes back over https.
    config.admin.public_url = "https://usersync.acme.example".into();
    let (router, _) = admin_with(None, Some(config)).await;
    let started = router
        .oneshot(asked_as(
            "usersync.acme.example",
            "/api/v1/connections/salesforce/authorize",
        ))
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let set_cookie = started.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.contains("Secure"), "{set_cookie}");
}
