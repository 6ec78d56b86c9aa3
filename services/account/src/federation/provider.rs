//! The relying-party side of OpenID Connect, with the `openidconnect` crate: an
//! organization's provider is discovered and checked ([`discover`]), its metadata and
//! keys cached ([`Providers`]; fetched again, at most every [`KEY_REFRESH_INTERVAL`],
//! when a token names a key not seen yet — the provider rotated), and ID tokens checked
//! for signature, `iss`, `aud`, `exp` (by the injected clock) and `nonce`.
//!
//! Every request to a provider goes through [`http_for`]: https to a public host (plain
//! http, or an address on this machine, only for a provider on a loopback address, the
//! rule RFC 8252 sets for redirect URIs), no redirects followed, a time limit and a size
//! limit on the answer.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, IssuerUrl, RedirectUrl, ResponseTypes,
};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

/// How long discovered metadata (and keys) are used before they are fetched again.
pub const METADATA_TTL: time::Duration = time::Duration::hours(1);
/// A token naming an unknown key fetches the keys again at most this often per issuer.
pub const KEY_REFRESH_INTERVAL: time::Duration = time::Duration::seconds(10);
/// The largest answer read from a provider.
const MAX_ANSWER_BYTES: usize = 512 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The client of a discovered provider.
pub type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Refused(String),
    #[error("the provider did not answer: {0}")]
    Transport(String),
    #[error("the provider's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// Whether Printworks may reach a provider on this machine (a loopback address): the
/// tests' provider. Off by default (`PRINTWORKS_FEDERATION_ALLOW_LOOPBACK`): an
/// organization's admin must not be able to point Printworks at its own ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub loopback: bool,
}

impl Reach {
    pub fn from_settings(s: &printworks_common::settings::AccountSettings) -> Self {
        Self {
            loopback: s.federation_allow_loopback,
        }
    }
}

/// The HTTP client for one [`Reach`]: no redirects, time limits, and a resolver that
/// never hands out an address inside this network (so neither does a host name that
/// resolves to one, nor DNS rebinding).
fn http_client(reach: Reach) -> Result<&'static reqwest::Client, HttpError> {
    static PUBLIC: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    static LOOPBACK: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    let cell = if reach.loopback { &LOOPBACK } else { &PUBLIC };
    cell.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .dns_resolver(Arc::new(OutsideOnly(reach)))
            .build()
            .ok()
    })
    .as_ref()
    .ok_or_else(|| HttpError::Transport("no HTTP client".into()))
}

/// A resolver that drops every address [`ip_allowed`] refuses.
struct OutsideOnly(Reach);

impl reqwest::dns::Resolve for OutsideOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<std::net::SocketAddr> =
                found.filter(|a| ip_allowed(a.ip(), reach)).collect();
            if allowed.is_empty() {
                return Err("the name resolves only to addresses inside this network".into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An address on the public internet — or, with `reach.loopback`, on this machine.
pub fn ip_allowed(ip: IpAddr, reach: Reach) -> bool {
    if ip.is_loopback() || ip.to_canonical().is_loopback() {
        return reach.loopback;
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 198 && (b & 0xfe) == 18)
                || (a == 192 && b == 0))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                // NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and IPv4-compatible (::/96).
                || (first == 0x64 && v6.segments()[1] == 0xff9b)
                || v6.segments()[..6].iter().all(|s| *s == 0)
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

/// Whether Printworks talks to this URL: https to a public host; with `reach.loopback`
/// also http or https to a loopback address (the rule RFC 8252 sets for redirect URIs).
/// Never with credentials in the URL. A host name is checked again when it is resolved
/// ([`OutsideOnly`]).
pub fn url_allowed(url: &url::Url, reach: Reach) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry a user name or password".into());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                return Err("the URL names this machine".into());
            }
            None
        }
        None => return Err("the URL has no host".into()),
    };
    let loopback = ip.is_some_and(|ip| ip.to_canonical().is_loopback());
    match (url.scheme(), ip) {
        ("http" | "https", Some(_)) if loopback && reach.loopback => Ok(()),
        ("https", Some(ip)) if ip_allowed(ip, reach) => Ok(()),
        ("https", Some(_)) => Err("the URL names an address inside this network".into()),
        ("https", None) => Ok(()),
        _ => Err("the URL must use https".into()),
    }
}

/// The HTTP client for requests to a provider: see [`url_allowed`].
pub fn http_for(
    reach: Reach,
) -> impl Fn(HttpRequest) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>> {
    move |request| Box::pin(send(request, reach))
}

/// Every request to a provider: checked URL, no redirects, bounded answer.
async fn send(request: HttpRequest, reach: Reach) -> Result<HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let url = url::Url::parse(&parts.uri.to_string())
        .map_err(|_| HttpError::Refused("not a URL".into()))?;
    url_allowed(&url, reach).map_err(HttpError::Refused)?;
    let mut answer = http_client(reach)?
        .request(parts.method, url)
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError::Transport(without_url(&e)))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| HttpError::Transport(without_url(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(HttpError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let mut response = HttpResponse::new(bytes);
    *response.status_mut() = answer.status();
    *response.headers_mut() = answer.headers().clone();
    Ok(response)
}

fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "the connection failed".into()
    }
}

/// The issuer as an admin typed it, checked: a URL Printworks may talk to, without a
/// query or fragment (discovery compares it character for character).
pub fn issuer_url(issuer: &str, reach: Reach) -> Result<IssuerUrl, String> {
    if issuer.len() > 500 {
        return Err("the issuer is longer than 500 characters".into());
    }
    let url = url::Url::parse(issuer).map_err(|_| "the issuer is not a URL".to_owned())?;
    url_allowed(&url, reach).map_err(|e| format!("issuer: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the issuer must not have a query or fragment".into());
    }
    IssuerUrl::new(issuer.to_owned()).map_err(|_| "the issuer is not a URL".into())
}

/// Fetches the provider's discovery document and keys, and checks they are fit for
/// Printworks: the issuer they name is exactly `issuer`, the authorization code flow is
/// offered, every endpoint is one Printworks may talk to, and there are keys to check
/// ID tokens with. The error is the reason, for the admin.
pub async fn discover(issuer: &str, reach: Reach) -> Result<CoreProviderMetadata, String> {
    let issuer_url = issuer_url(issuer, reach)?;
    let metadata = CoreProviderMetadata::discover_async(issuer_url, &http_for(reach))
        .await
        .map_err(|e| discovery_reason(&e))?;
    let code = ResponseTypes::new(vec![CoreResponseType::Code]);
    if !metadata.response_types_supported().contains(&code) {
        return Err("the provider does not offer the authorization code flow".into());
    }
    let Some(token) = metadata.token_endpoint() else {
        return Err("the provider names no token endpoint".into());
    };
    for (what, url) in [
        (
            "authorization endpoint",
            metadata.authorization_endpoint().url(),
        ),
        ("token endpoint", token.url()),
        ("JWKS", metadata.jwks_uri().url()),
    ] {
        url_allowed(url, reach).map_err(|e| format!("{what}: {e}"))?;
    }
    if let Some(userinfo) = metadata.userinfo_endpoint() {
        url_allowed(userinfo.url(), reach).map_err(|e| format!("userinfo endpoint: {e}"))?;
    }
    if metadata.jwks().keys().is_empty() {
        return Err("the provider publishes no signing keys".into());
    }
    Ok(metadata)
}

fn discovery_reason<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    use openidconnect::DiscoveryError as D;
    match e {
        D::Request(e) => format!("the provider cannot be reached: {e}"),
        D::Response(status, _, _) => {
            format!("the provider's discovery document answered HTTP {status}")
        }
        D::Parse(_) => "the provider's discovery document or keys are not valid".into(),
        D::Validation(reason) => format!("the discovery document is wrong: {reason}"),
        D::UrlParse(_) => "the issuer is not a URL".into(),
        D::Other(reason) => format!("discovery failed: {reason}"),
        _ => "discovery failed".into(),
    }
}

/// A provider's metadata, as last fetched.
#[derive(Clone)]
struct Cached {
    metadata: CoreProviderMetadata,
    fetched_at: OffsetDateTime,
}

/// Discovered providers by issuer, shared by the requests of this process.
#[derive(Default)]
pub struct Providers {
    cache: Mutex<HashMap<String, Cached>>,
}

impl Providers {
    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The provider's metadata: cached for [`METADATA_TTL`], else discovered now.
    pub async fn metadata(
        &self,
        issuer: &str,
        reach: Reach,
        now: OffsetDateTime,
    ) -> Result<CoreProviderMetadata, String> {
        if let Some(c) = self.cached().get(issuer)
            && now - c.fetched_at < METADATA_TTL
        {
            return Ok(c.metadata.clone());
        }
        self.fetch(issuer, reach, now).await
    }

    /// The metadata fetched again, for a token signed with a key not seen yet — unless it
    /// was fetched less than [`KEY_REFRESH_INTERVAL`] ago (then `None`: a stranger's
    /// tokens cannot make Printworks hammer the provider).
    pub async fn refreshed(
        &self,
        issuer: &str,
        reach: Reach,
        now: OffsetDateTime,
    ) -> Result<Option<CoreProviderMetadata>, String> {
        if self
            .cached()
            .get(issuer)
            .is_some_and(|c| now - c.fetched_at < KEY_REFRESH_INTERVAL)
        {
            return Ok(None);
        }
        self.fetch(issuer, reach, now).await.map(Some)
    }

    async fn fetch(
        &self,
        issuer: &str,
        reach: Reach,
        now: OffsetDateTime,
    ) -> Result<CoreProviderMetadata, String> {
        let metadata = discover(issuer, reach).await?;
        let mut cache = self.cached();
        if cache.len() >= 1000 {
            cache.clear();
        }
        cache.insert(
            issuer.to_owned(),
            Cached {
                metadata: metadata.clone(),
                fetched_at: now,
            },
        );
        Ok(metadata)
    }
}

/// The client Printworks is at `metadata`'s provider, returning to `redirect`.
pub fn client(
    metadata: CoreProviderMetadata,
    client_id: &str,
    client_secret: &SecretString,
    redirect: &str,
) -> Result<Client, String> {
    let redirect = RedirectUrl::new(redirect.to_owned())
        .map_err(|_| "the callback is not a URL".to_owned())?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.to_owned()),
        Some(ClientSecret::new(client_secret.expose_secret().to_owned())),
    )
    .set_redirect_uri(redirect))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Reach = Reach { loopback: false };
    const TESTS: Reach = Reach { loopback: true };

    #[test]
    fn a_provider_cannot_send_printworks_into_its_own_network() {
        let allowed = |u: &str, reach| url_allowed(&url::Url::parse(u).unwrap(), reach);
        assert!(allowed("https://login.example.com/token", PUBLIC).is_ok());
        assert!(
            allowed("https://203.0.113.7/token", PUBLIC).is_err(),
            "documentation"
        );
        assert!(allowed("https://8.8.8.8/token", PUBLIC).is_ok());
        for internal in [
            "https://127.0.0.1/token",
            "https://2130706433/token",
            "https://0x7f.1/token",
            "https://10.1.2.3/token",
            "https://192.168.0.1/token",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/token",
            "https://198.18.0.1/token",
            "https://0.1.2.3/token",
            "https://224.0.0.1/token",
            "https://[::1]/token",
            "https://[fd00::1]/token",
            "https://[fe80::1]/token",
            "https://[fec0::1]/token",
            "https://[::ffff:10.0.0.1]/token",
            "https://[::ffff:127.0.0.1]/token",
            "https://[64:ff9b::a00:1]/token",
            "https://[::a00:1]/token",
            "https://localhost/token",
            "https://localhost./token",
            "https://api.localhost/token",
            "https://0.0.0.0/token",
        ] {
            assert!(allowed(internal, PUBLIC).is_err(), "{internal}");
        }
        // Plain http never, but to this machine when loopback is allowed (the tests).
        assert!(allowed("http://login.example.com/token", PUBLIC).is_err());
        assert!(allowed("http://127.0.0.1:8080/token", PUBLIC).is_err());
        assert!(allowed("http://127.0.0.1:8080/token", TESTS).is_ok());
        assert!(allowed("http://login.example.com/token", TESTS).is_err());
        assert!(allowed("https://10.0.0.1/token", TESTS).is_err());
        assert!(allowed("https://user:pw@login.example.com/token", PUBLIC).is_err());
        assert!(issuer_url("http://127.0.0.1:8080", TESTS).is_ok());
        assert!(issuer_url("http://127.0.0.1:8080", PUBLIC).is_err());
        assert!(issuer_url("https://login.example.com/tenant?x=1", PUBLIC).is_err());
        let long = format!("https://login.example.com/{}", "a".repeat(500));
        assert!(issuer_url(&long, PUBLIC).is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_this_network_is_not_reached() {
        use reqwest::dns::Resolve as _;
        let name = |n: &str| n.parse::<reqwest::dns::Name>().unwrap();
        // `localhost` resolves to loopback: refused unless loopback is allowed.
        assert!(
            OutsideOnly(PUBLIC)
                .resolve(name("localhost"))
                .await
                .is_err()
        );
        assert!(OutsideOnly(TESTS).resolve(name("localhost")).await.is_ok());
    }
}
