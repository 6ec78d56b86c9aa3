//! Where a request comes from, for audit records, session lists and rate limits.
//!
//! The address is the TCP peer's, unless that peer is a trusted proxy
//! (`PRINTWORKS_TRUSTED_PROXIES`): then it is the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy. Forwarded headers from anyone
//! else are ignored, since any client can send them.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Request, header};
use ipnet::IpNet;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

use crate::context::AppContext;

/// The client's address given the TCP peer, the headers and the trusted proxies.
pub fn client_addr(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|a| a.to_canonical())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.iter().any(|net| net.contains(a)))
            .unwrap_or(peer),
    )
}

/// The rate-limit key of an address: IPv4 as is, IPv6 by its /64 (one subscriber's
/// network), so rotating through a prefix does not reset the limit.
pub fn limit_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The network an address belongs to, as limits on what one network may hold count it:
/// an IPv4 /24 or an IPv6 /48 (one site, typically).
pub fn network_of(addr: IpAddr) -> ipnet::IpNet {
    let prefix = match addr {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 48,
    };
    #[allow(clippy::expect_used)]
    ipnet::IpNet::new(addr, prefix)
        .expect("24 and 48 are valid prefix lengths")
        .trunc()
}

/// The source address (see the module docs) and the (truncated) `User-Agent`.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub addr: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The address as rate limits and throttles count it (IPv6 by its /64).
    pub fn rate_key(&self) -> Option<IpAddr> {
        self.addr.map(limit_key)
    }

    /// The source network (IPv4 /24, IPv6 /48), see [`network_of`].
    pub fn network(&self) -> Option<ipnet::IpNet> {
        self.addr.map(network_of)
    }
}

impl<S> FromRequestParts<S> for ClientInfo
where
    AppContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ctx = AppContext::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        let addr = client_addr(peer, &parts.headers, &ctx.settings.trusted_proxies);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect());
        Ok(Self { addr, user_agent })
    }
}

/// The rate limiter's key: the client address by the same rules, IPv6 by /64.
#[derive(Clone, Debug)]
pub struct ClientKeyExtractor {
    pub trusted: std::sync::Arc<Vec<IpNet>>,
}

impl KeyExtractor for ClientKeyExtractor {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        client_addr(peer, req.headers(), &self.trusted)
            .map(limit_key)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(network_of(v4).to_string(), "203.0.113.0/24");
        let v6: IpAddr = "2001:db8:1234:5678::9".parse().unwrap();
        assert_eq!(network_of(v6).to_string(), "2001:db8:1234::/48");
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers("203.0.113.9, 198.51.100.7, 10.0.0.9");
        // From the proxy: the right-most untrusted hop.
        assert_eq!(
            client_addr(Some(proxy), &h, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        // From anyone else: the header is ignored.
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_addr(Some(stranger), &h, &trusted), Some(stranger));
        // Nothing trusted configured: the peer.
        assert_eq!(client_addr(Some(proxy), &h, &[]), Some(proxy));
        // A proxy without the header, or with garbage: the proxy itself.
        assert_eq!(
            client_addr(Some(proxy), &headers("nonsense"), &trusted),
            Some(proxy)
        );
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
    }
}
