//! The guards on every HTTP exchange with a provider (Salesforce, Outreach and their OAuth
//! hosts), written once for both clients (docs/security.md, "Secrets at rest and in transit"):
//!
//! - [`origin`]: where a request carrying a bearer token may go — only to the origin it was
//!   configured for, whatever a response links to — and which endpoints may be plain HTTP.
//! - [`body`]: how much of a response usersync reads — up to a cap per endpoint, so that no
//!   answer, however large, can exhaust the memory of the process.

pub mod body;
pub mod origin;

/// Stand-ins for a provider in the tests of the clients that talk to one.
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::SocketAddr;

    use axum::http::StatusCode;

    /// Serves `app` on a free loopback port for the rest of the test.
    pub(crate) async fn serve(app: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    /// Answers every request with `status` and a body of `size` spaces (with its length).
    pub(crate) async fn oversized(status: StatusCode, size: usize) -> SocketAddr {
        serve(axum::Router::new().fallback(move || async move { (status, vec![b' '; size]) })).await
    }
}
