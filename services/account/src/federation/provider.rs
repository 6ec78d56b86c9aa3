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
use std::sync::{Mutex, OnceLock};
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

fn http_client() -> Result<&'static reqwest::Client, HttpError> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                .build()
                .ok()
        })
        .as_ref()
        .ok_or_else(|| HttpError::Transport("no HTTP client".into()))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    }
}

/// An address inside this network (loopback, private, link-local, unspecified, shared):
/// never reached through a provider's URLs, unless the provider itself is on this
/// machine.
fn is_internal(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some()
        }
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost")
        }
        None => true,
    }
}

/// Whether Printworks talks to this URL for a provider whose issuer is on this machine
/// (`local`, as in the tests) or not: https to a public host; plain http only to a
/// loopback address, and only for a local provider (the rule RFC 8252 sets for redirect
/// URIs) — an https provider cannot send Printworks to this machine or its network.
/// Never with credentials in the URL.
pub fn url_allowed(url: &url::Url, local: bool) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry a user name or password".into());
    }
    let loopback = is_loopback(url);
    match url.scheme() {
        "http" | "https" if local && loopback => Ok(()),
        "https" if !is_internal(url) => Ok(()),
        "https" => Err("the URL names an address inside this network".into()),
        _ => Err("the URL must use https".into()),
    }
}

/// Whether the issuer is a provider on this machine (a loopback address).
pub fn is_local(issuer: &str) -> bool {
    url::Url::parse(issuer).is_ok_and(|u| is_loopback(&u))
}

/// The HTTP client for requests to `issuer`'s provider: see [`url_allowed`].
pub fn http_for(
    issuer: &str,
) -> impl Fn(HttpRequest) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>> {
    let local = is_local(issuer);
    move |request| Box::pin(send(request, local))
}

/// Every request to a provider: checked URL, no redirects, bounded answer.
async fn send(request: HttpRequest, local: bool) -> Result<HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let url = url::Url::parse(&parts.uri.to_string())
        .map_err(|_| HttpError::Refused("not a URL".into()))?;
    url_allowed(&url, local).map_err(HttpError::Refused)?;
    let mut answer = http_client()?
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
pub fn issuer_url(issuer: &str) -> Result<IssuerUrl, String> {
    if issuer.len() > 500 {
        return Err("the issuer is longer than 500 characters".into());
    }
    let url = url::Url::parse(issuer).map_err(|_| "the issuer is not a URL".to_owned())?;
    url_allowed(&url, is_loopback(&url)).map_err(|e| format!("issuer: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the issuer must not have a query or fragment".into());
    }
    IssuerUrl::new(issuer.to_owned()).map_err(|_| "the issuer is not a URL".into())
}

/// Fetches the provider's discovery document and keys, and checks they are fit for
/// Printworks: the issuer they name is exactly `issuer`, the authorization code flow is
/// offered, every endpoint is one Printworks may talk to, and there are keys to check
/// ID tokens with. The error is the reason, for the admin.
pub async fn discover(issuer: &str) -> Result<CoreProviderMetadata, String> {
    let issuer_url = issuer_url(issuer)?;
    let local = is_local(issuer);
    let metadata = CoreProviderMetadata::discover_async(issuer_url, &http_for(issuer))
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
        url_allowed(url, local).map_err(|e| format!("{what}: {e}"))?;
    }
    if let Some(userinfo) = metadata.userinfo_endpoint() {
        url_allowed(userinfo.url(), local).map_err(|e| format!("userinfo endpoint: {e}"))?;
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
        now: OffsetDateTime,
    ) -> Result<CoreProviderMetadata, String> {
        if let Some(c) = self.cached().get(issuer)
            && now - c.fetched_at < METADATA_TTL
        {
            return Ok(c.metadata.clone());
        }
        self.fetch(issuer, now).await
    }

    /// The metadata fetched again, for a token signed with a key not seen yet — unless it
    /// was fetched less than [`KEY_REFRESH_INTERVAL`] ago (then `None`: a stranger's
    /// tokens cannot make Printworks hammer the provider).
    pub async fn refreshed(
        &self,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<Option<CoreProviderMetadata>, String> {
        if self
            .cached()
            .get(issuer)
            .is_some_and(|c| now - c.fetched_at < KEY_REFRESH_INTERVAL)
        {
            return Ok(None);
        }
        self.fetch(issuer, now).await.map(Some)
    }

    async fn fetch(
        &self,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<CoreProviderMetadata, String> {
        let metadata = discover(issuer).await?;
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

    #[test]
    fn a_provider_cannot_send_printworks_into_its_own_network() {
        let allowed = |u: &str, local: bool| url_allowed(&url::Url::parse(u).unwrap(), local);
        assert!(allowed("https://login.example.com/token", false).is_ok());
        assert!(allowed("https://203.0.113.7/token", false).is_ok());
        for internal in [
            "https://127.0.0.1/token",
            "https://10.1.2.3/token",
            "https://192.168.0.1/token",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/token",
            "https://[::1]/token",
            "https://[fd00::1]/token",
            "https://[::ffff:10.0.0.1]/token",
            "https://localhost/token",
            "https://0.0.0.0/token",
        ] {
            assert!(allowed(internal, false).is_err(), "{internal}");
        }
        // Plain http: only a provider on this machine, to this machine.
        assert!(allowed("http://login.example.com/token", false).is_err());
        assert!(allowed("http://127.0.0.1:8080/token", false).is_err());
        assert!(allowed("http://127.0.0.1:8080/token", true).is_ok());
        assert!(allowed("http://login.example.com/token", true).is_err());
        assert!(allowed("https://user:pw@login.example.com/token", false).is_err());
        assert!(issuer_url("http://127.0.0.1:8080").is_ok());
        assert!(issuer_url("http://10.0.0.1").is_err());
        assert!(issuer_url("https://login.example.com/tenant?x=1").is_err());
        assert!(issuer_url(&format!("https://login.example.com/{}", "a".repeat(500))).is_err());
    }
}
