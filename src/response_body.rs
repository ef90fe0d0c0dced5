//! Reading a provider's HTTP response body, up to a bound.
//!
//! reqwest's `bytes()` and `text()` keep whatever arrives. A body from Outreach or Salesforce
//! (or from a proxy in front of them) that never ends would grow until the process runs out of
//! memory, which no provider answer may cause (docs/security.md, "Provider input"). Every client
//! of a provider reads bodies through [`read`] instead: at most [`MAX_RESPONSE_BODY`] bytes, the
//! same bound the Pub/Sub client puts on a gRPC message, and far above the largest real answer
//! (a page of a thousand Outreach users is a few megabytes).

use bytes::{Bytes, BytesMut};

/// The largest response body read from a provider: 64 MiB.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed while the body was arriving.
    #[error("reading the response body: {0}")]
    Network(#[source] reqwest::Error),
    /// The body (or its announced `Content-Length`) is longer than the bound.
    #[error("the response body is longer than {limit} bytes; it was not read")]
    TooLarge { limit: usize },
}

/// The body of `response`, at most [`MAX_RESPONSE_BODY`] bytes.
pub async fn read(response: reqwest::Response) -> Result<Bytes, BodyError> {
    read_at_most(response, MAX_RESPONSE_BODY).await
}

/// The body of `response` as text (invalid UTF-8 replaced), at most [`MAX_RESPONSE_BODY`]
/// bytes.
pub async fn read_text(response: reqwest::Response) -> Result<String, BodyError> {
    let body = read(response).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The body of `response`, refused as soon as it is known to pass `limit` bytes: from its
/// `Content-Length` before anything is read, else from the chunks as they arrive.
pub async fn read_at_most(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let too_large = BodyError::TooLarge { limit };
    if response
        .content_length()
        .is_some_and(|announced| usize::try_from(announced).map_or(true, |n| n > limit))
    {
        return Err(too_large);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Network)? {
        if chunk.len() > limit - body.len() {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use futures::stream;

    /// Serves `/announced` (a body with its `Content-Length`) and `/streamed` (the same body in
    /// chunks, with no length announced) on loopback.
    async fn server(size: usize) -> String {
        let app = Router::new()
            .route("/announced", get(move || async move { vec![b'x'; size] }))
            .route(
                "/streamed",
                get(move || async move {
                    let chunks = (0..size)
                        .map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"x")))
                        .collect::<Vec<_>>();
                    Body::from_stream(stream::iter(chunks))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    async fn fetch(url: &str, limit: usize) -> Result<Bytes, BodyError> {
        let response = reqwest::get(url)
            .await
            .expect("the loopback server answers");
        read_at_most(response, limit).await
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_read_whole() {
        let base = server(10).await;
        for path in ["announced", "streamed"] {
            let body = fetch(&format!("{base}/{path}"), 10).await.unwrap();
            assert_eq!(&body[..], b"xxxxxxxxxx", "{path}");
        }
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_refused_announced_or_not() {
        let base = server(11).await;
        for path in ["announced", "streamed"] {
            match fetch(&format!("{base}/{path}"), 10).await {
                Err(BodyError::TooLarge { limit: 10 }) => {}
                other => panic!("{path}: {other:?}"),
            }
        }
        let error = fetch(&format!("{base}/announced"), 10).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the response body is longer than 10 bytes; it was not read"
        );
    }
}
