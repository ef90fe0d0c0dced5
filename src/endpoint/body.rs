//! How much of a provider's answer usersync reads.
//!
//! reqwest reads a body whole, however long, so a wrong or hostile answer (an endless stream, a
//! gigabyte of JSON) would grow the process until it is killed. Every read of a Salesforce or
//! Outreach answer goes through [`read_capped`] instead, with the cap of its endpoint: a
//! `Content-Length` over the cap is refused before anything is read, and a body without one is
//! counted as it arrives and dropped at the first byte over. The error names the endpoint
//! (without its query, which may hold an email) and the cap.
//!
//! Each cap below says why it is far above what its endpoint sends; docs/security.md lists them.

use bytes::{Bytes, BytesMut};
use url::Url;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// OAuth answers (token, userinfo, revoke, and their errors): a token answer is under 2 KB
/// (an access token, a refresh token, a few URLs and ids).
pub const OAUTH_ANSWER_CAP: usize = 64 * KIB;

/// One page of a REST or JSON:API read: at most 2,000 Salesforce records of the dozen User
/// fields usersync selects (about 4 MB) or 1,000 Outreach users (under 10 MB), and the single
/// records, version lists and error bodies of the same APIs.
pub const API_PAGE_CAP: usize = 64 * MIB;

/// A change event's Avro schema, fetched as JSON: a few hundred fields, some hundred KB.
pub const EVENT_SCHEMA_CAP: usize = 4 * MIB;

/// One answer of a streaming API carrying events (a CometD `/meta/connect`, a Pub/Sub
/// `FetchResponse`): Salesforce caps an event at 1 MB and a Pub/Sub subscription at 100
/// events in flight; a batch larger than 64 MiB is refused rather than held.
pub const STREAM_BATCH_CAP: usize = 64 * MIB;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed while the body arrived.
    #[error("reading the answer of {endpoint}: {source}")]
    Network {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The body is longer than the endpoint's cap.
    #[error(
        "the answer of {endpoint} is larger than {cap} bytes, the most usersync reads from it; \
         refused"
    )]
    TooLarge { endpoint: String, cap: usize },
}

/// The endpoint a URL names, for a message: scheme, host, port and path, without the query,
/// fragment or credentials.
pub fn endpoint(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The whole body of `response`, or an error once it passes `cap` bytes.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, BodyError> {
    let url = response.url().clone();
    let endpoint = || endpoint(&url);
    let declared = response.content_length();
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(BodyError::TooLarge {
            endpoint: endpoint(),
            cap,
        });
    }
    let expected = declared.map_or(0, |length| length as usize);
    let mut body = BytesMut::with_capacity(expected);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body.freeze()),
            Err(source) => {
                return Err(BodyError::Network {
                    endpoint: endpoint(),
                    source,
                });
            }
        };
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge {
                endpoint: endpoint(),
                cap,
            });
        }
        body.extend_from_slice(&chunk);
    }
}

/// [`read_capped`] as text; bytes that are not UTF-8 become U+FFFD, as reqwest's `text` does.
pub async fn read_capped_text(
    response: reqwest::Response,
    cap: usize,
) -> Result<String, BodyError> {
    let bytes = read_capped(response, cap).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use futures::stream;

    use super::*;

    /// A server answering `/declared` with `size` bytes and a `Content-Length`, and `/streamed`
    /// with `size` bytes in 1 KiB chunks and none.
    async fn server(size: usize) -> SocketAddr {
        let app = Router::new()
            .route("/declared", get(move || async move { vec![b'x'; size] }))
            .route(
                "/streamed",
                get(move || async move {
                    let chunks = (0..size.div_ceil(KIB)).map(move |i| {
                        let len = KIB.min(size - i * KIB);
                        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; len]))
                    });
                    Body::from_stream(stream::iter(chunks))
                }),
            );
        crate::endpoint::test_support::serve(app).await
    }

    async fn fetch(address: SocketAddr, path: &str, cap: usize) -> Result<Bytes, BodyError> {
        let url = format!("http://{address}{path}?filter[email]=ann@acme.example");
        let response = reqwest::get(url).await.unwrap();
        read_capped(response, cap).await
    }

    #[tokio::test]
    async fn a_body_up_to_the_cap_is_read_whole() {
        let address = server(10 * KIB).await;
        for path in ["/declared", "/streamed"] {
            let body = fetch(address, path, 10 * KIB).await.unwrap();
            assert_eq!(body.len(), 10 * KIB, "{path}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_naming_the_endpoint_and_the_cap() {
        let address = server(10 * KIB + 1).await;
        for path in ["/declared", "/streamed"] {
            let refused = fetch(address, path, 10 * KIB).await.unwrap_err();
            let message = refused.to_string();
            assert!(
                matches!(refused, BodyError::TooLarge { cap: 10240, .. })
                    && message.contains(&format!("http://{address}{path}"))
                    && message.contains("10240 bytes")
                    && !message.contains("ann@acme.example"),
                "{message}"
            );
        }
    }

    #[test]
    fn the_endpoint_leaves_out_query_and_credentials() {
        let url: Url = "https://user:pw@api.outreach.io/api/v2/users?filter[email]=a@b.example#x"
            .parse()
            .unwrap();
        assert_eq!(endpoint(&url), "https://api.outreach.io/api/v2/users");
    }
}
