//! The relying-party side of OpenID Connect, with the `openidconnect` crate: an
//! organization's provider is discovered and checked ([`discover`]), its metadata and
//! keys cached ([`Providers`]; fetched again, at most every [`KEY_REFRESH_INTERVAL`],
//! when a token names a key not seen yet — the provider rotated), and ID tokens checked
//! for signature, `iss`, `aud`, `exp` (by the injected clock) and `nonce`.
//!
//! Every request to a provider goes through [`send`]: https (or plain http to a
//! loopback address only, the rule RFC 8252 sets for redirect URIs), no redirects
//! followed, a time limit and a size limit on the answer.

use std::collections::HashMap;
use std::net::IpAddr;
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

fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

/// Whether Printworks talks to this URL: https, or http to a loopback address (a
/// provider on this machine, as in the tests); never with credentials in the URL.
pub fn url_allowed(url: &url::Url) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry a user name or password".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("the URL must use https".into()),
    }
}

/// Every request to a provider: checked URL, no redirects, bounded answer.
pub async fn send(request: HttpRequest) -> Result<HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let url = url::Url::parse(&parts.uri.to_string())
        .map_err(|_| HttpError::Refused("not a URL".into()))?;
    url_allowed(&url).map_err(HttpError::Refused)?;
    let mut answer = http_client()
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
    let url = url::Url::parse(issuer).map_err(|_| "the issuer is not a URL".to_owned())?;
    url_allowed(&url).map_err(|e| format!("issuer: {e}"))?;
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
    let metadata = CoreProviderMetadata::discover_async(issuer_url, &send)
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
        url_allowed(url).map_err(|e| format!("{what}: {e}"))?;
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
