//! Where a request comes from, for audit records, session lists and rate limits.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

/// The peer address of the connection and the (truncated) `User-Agent`.
///
/// The address is the TCP peer: behind a reverse proxy it is the proxy's. Forwarded
/// headers are not trusted, since any client can send them.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub addr: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_canonical());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect());
        Ok(Self { addr, user_agent })
    }
}
