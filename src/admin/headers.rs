//! What every answer of the guarded admin routes tells the browser (docs/security.md, "Admin
//! server"): the page may run only its own script and style (`page.js`, `page.css`: nothing
//! inline, so an injected `<script>` or `style` does not run), no site may frame it (a
//! clickjacking page cannot put its buttons under the operator's mouse), no answer is sniffed
//! into another type, no address is sent on as a referrer (the OAuth callback's carries a code),
//! and nothing is kept in a cache.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;

/// The page's policy: its own script, style and API (`connect-src 'self'` covers the live
/// feed's `ws:`/`wss:` on the same host and port), nothing inline, no frame around it.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Everything else (JSON, the assets, redirects): nothing to run, nothing to frame.
const API_POLICY: &str = "default-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Adds the security headers a handler did not set itself.
pub(super) fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    let defaults: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_SECURITY_POLICY, API_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // For browsers that predate `frame-ancestors`.
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in defaults {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
}
