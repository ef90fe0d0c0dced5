//! `GET /api/v1/openapi.yaml`: the admin API described in OpenAPI (`docs/openapi.yaml`, built
//! into the binary), so a client or a contract test reads the API of the very server it talks
//! to.
//!
//! It is served without the admin token: it says what the routes take and answer, which the
//! page's script and docs/operations.md say too, and holds no secret. It stays behind the guard
//! (`super::guard`) like the page. `scripts/api-contract.sh` runs schemathesis against a running
//! server with it (docs/security.md, "API contract").

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as written in `docs/openapi.yaml`.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.yaml");

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.yaml";

pub(super) async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// Every path the admin router declares: the `.route("…")` strings of `mod.rs` (the one
    /// place they are written) and the probes it merges in.
    async fn routed_paths() -> BTreeSet<String> {
        let source = include_str!("mod.rs");
        let mut paths: BTreeSet<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| {
                let rest = rest.trim_start();
                let rest = rest.strip_prefix('"')?;
                Some(rest[..rest.find('"')?].to_owned())
            })
            .collect();
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let probes = crate::app::health::Probes::alive()
            .with_store(store)
            .with_metrics(crate::connection::Connections::new());
        paths.extend(probes.paths().into_iter().map(str::to_owned));
        paths
    }

    fn document_paths(document: &Value) -> BTreeSet<String> {
        document["paths"]
            .as_object()
            .expect("the document has paths")
            .keys()
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn the_document_names_every_route_of_the_router_and_no_other() {
        let document: Value = serde_yaml_ng::from_str(DOCUMENT).expect("docs/openapi.yaml parses");
        let routed = routed_paths().await;
        assert!(routed.len() > 20, "the routes were read: {routed:?}");
        assert!(routed.contains(PATH) && routed.contains("/api/v1/feed"));
        assert_eq!(document_paths(&document), routed);
    }

    #[tokio::test]
    async fn the_served_document_is_yaml_without_a_token() {
        let (url, _stop) = crate::admin::tests::serve_with_token(Some("doc-token")).await;
        let response = reqwest::get(format!("{url}{PATH}")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/yaml; charset=utf-8"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let document: Value = serde_yaml_ng::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(document["info"]["title"], "usersync admin API");
        assert_eq!(
            document["components"]["securitySchemes"]["adminToken"]["scheme"],
            "bearer"
        );
        // The operations that need the token say so; the document alone does not.
        assert_eq!(
            document["paths"][PATH]["get"]["security"],
            serde_json::json!([])
        );
        assert_eq!(document["security"][0]["adminToken"], serde_json::json!([]));
    }
}
