//! OAuth clients: what is registered, which redirect URIs match, and how a client proves
//! itself at the token endpoint.

use std::net::IpAddr;

use axum::http::HeaderMap;
use axum::http::header;
use base64::Engine as _;
use printworks_common::auth::{Role, ScopeSet};
use printworks_common::crypto::{constant_time_eq, token_digest};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

use super::OAuthError;

pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Client {
    pub id: String,
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub client_type: String,
    pub secret_hash: Option<Vec<u8>>,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub role: Option<String>,
    pub first_party: bool,
    pub created_at: OffsetDateTime,
}

/// The columns of [`Client`], as a literal for `concat!` (queries are static strings).
#[macro_export]
macro_rules! client_columns {
    () => {
        "id, organization_id, name, client_type, secret_hash, redirect_uris, scopes, \
         grant_types, role, first_party, created_at"
    };
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.client_type == "public"
    }

    /// Whether people's consent is taken as given: only for a confidential client
    /// shipped with Printworks. A public client — even the built-in command-line one —
    /// is asked for like any other (RFC 8252 §8.6: anyone can present its id).
    pub fn trusted_without_consent(&self) -> bool {
        self.first_party && !self.is_public()
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    pub fn scope_set(&self) -> ScopeSet {
        ScopeSet::from_strings(&self.scopes)
    }

    /// Exact match, except that for a loopback IP literal with `http` any port matches
    /// (RFC 8252 §7.3: native apps listen on a port the OS picks).
    pub fn redirect_uri_allowed(&self, requested: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|registered| redirect_matches(registered, requested))
    }
}

pub fn redirect_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(reg), Ok(req)) = (Url::parse(registered), Url::parse(requested)) else {
        return false;
    };
    let loopback = |u: &Url| match u.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
        _ => false,
    };
    reg.scheme() == "http"
        && req.scheme() == "http"
        && loopback(&reg)
        && reg.host() == req.host()
        && reg.path() == req.path()
        && reg.query() == req.query()
        && req.fragment().is_none()
        && req.username().is_empty()
        && req.password().is_none()
}

/// A redirect URI a client may register: https, or http on a loopback IP literal (native
/// apps); absolute, without fragment or credentials.
pub fn validate_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > 2000 {
        return Err("A redirect URI may be at most 2000 characters long.".into());
    }
    let url = Url::parse(uri).map_err(|_| format!("{uri:?} is not an absolute URL."))?;
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{uri:?} must not have a fragment or credentials."));
    }
    let loopback_ip = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        _ => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback_ip => Ok(()),
        _ => Err(format!(
            "{uri:?} must use https (or http on 127.0.0.1 or [::1] for native apps)."
        )),
    }
}

pub async fn find(db: &PgPool, id: &str) -> sqlx::Result<Option<Client>> {
    if id.is_empty() || id.len() > 100 || super::has_control(id) {
        return Ok(None);
    }
    sqlx::query_as(concat!(
        "SELECT ",
        client_columns!(),
        " FROM oauth_clients WHERE id = $1 AND revoked_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Credentials a client presented at the token, revocation or introspection endpoint.
pub struct Presented {
    pub client_id: Option<String>,
    pub secret: Option<String>,
    pub via_basic: bool,
}

/// From `Authorization: Basic` (client_secret_basic) or the form (client_secret_post, or
/// a public client's bare client_id). Both at once is refused (RFC 6749 §2.3).
pub fn presented(
    headers: &HeaderMap,
    form_client_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Presented, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, creds)| creds.trim().to_owned());
    match basic {
        Some(creds) => {
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "Use one client authentication method, not two.",
                ));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(creds)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::invalid_client(true))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_client(true))?;
            let decode =
                |s: &str| percent_decode(s).ok_or_else(|| OAuthError::invalid_client(true));
            let id = decode(id)?;
            if form_client_id.is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request("client_id does not match."));
            }
            Ok(Presented {
                client_id: Some(id),
                secret: Some(decode(secret)?),
                via_basic: true,
            })
        }
        // An empty client_secret is no secret (a public client such as Cura sends one).
        None => Ok(Presented {
            client_id: form_client_id.map(str::to_owned),
            secret: form_secret.filter(|s| !s.is_empty()).map(str::to_owned),
            via_basic: false,
        }),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// The client the credentials prove: a confidential client must give its secret, a
/// public client must not have one.
pub async fn authenticate(db: &PgPool, p: &Presented) -> Result<Client, OAuthError> {
    let id = p
        .client_id
        .as_deref()
        .ok_or_else(|| OAuthError::invalid_client(p.via_basic))?;
    let client = find(db, id)
        .await?
        .ok_or_else(|| OAuthError::invalid_client(p.via_basic))?;
    match (&client.secret_hash, &p.secret) {
        (Some(stored), Some(secret))
            if secret.len() <= 200 && constant_time_eq(stored, &token_digest(secret)) =>
        {
            Ok(client)
        }
        (None, None) => Ok(client),
        _ => Err(OAuthError::invalid_client(p.via_basic)),
    }
}

/// Revokes a client and every refresh token it holds (in the caller's transaction). Its
/// access tokens stop working for its organization at once (the organization's routes
/// check the client), and for everything else within their lifetime.
pub async fn revoke(
    conn: &mut PgConnection,
    client_id: &str,
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE oauth_clients SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(client_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE oauth_refresh_tokens SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL")
        .bind(client_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The live clients of `organization` that `user` registered.
pub async fn registered_by(
    conn: &mut PgConnection,
    organization: Uuid,
    user: Uuid,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT id FROM oauth_clients WHERE organization_id = $1 AND created_by = $2 AND revoked_at IS NULL",
    )
    .bind(organization)
    .bind(user)
    .fetch_all(conn)
    .await
}

/// The role a client acting on its own (`client_credentials`) holds in `org`: `None` if
/// it is revoked, of another organization, or acts for people only. For the org
/// service, which reads it on every call such a client makes.
pub async fn client_role(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
    client_id: &str,
) -> sqlx::Result<Option<Role>> {
    let role: Option<Option<String>> = sqlx::query_scalar(
        "SELECT role FROM oauth_clients WHERE id = $1 AND organization_id = $2 AND revoked_at IS NULL",
    )
    .bind(client_id)
    .bind(org)
    .fetch_optional(db)
    .await?;
    Ok(role.flatten().as_deref().and_then(Role::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_any_port_and_nothing_else() {
        let reg = "http://127.0.0.1/callback";
        assert!(redirect_matches(reg, "http://127.0.0.1:53682/callback"));
        assert!(redirect_matches(reg, "http://127.0.0.1/callback"));
        assert!(!redirect_matches(reg, "http://127.0.0.1:53682/callback/x"));
        assert!(!redirect_matches(
            reg,
            "http://127.0.0.1:53682/callback?x=1"
        ));
        assert!(!redirect_matches(reg, "http://localhost:53682/callback"));
        assert!(!redirect_matches(reg, "http://127.0.0.2:53682/callback"));
        assert!(!redirect_matches(reg, "https://127.0.0.1:53682/callback"));
        assert!(!redirect_matches(
            reg,
            "http://evil@127.0.0.1:53682/callback"
        ));
        assert!(redirect_matches("http://[::1]/cb", "http://[::1]:8000/cb"));
        let web = "https://app.example.com/cb";
        assert!(redirect_matches(web, web));
        assert!(!redirect_matches(web, "https://app.example.com:444/cb"));
        assert!(!redirect_matches(web, "https://app.example.com/cb/"));
        assert!(!redirect_matches(
            web,
            "https://app.example.com/cb?next=https://evil.example"
        ));
        assert!(!redirect_matches(
            web,
            "https://app.example.com.evil.example/cb"
        ));
    }

    #[test]
    fn registrable_redirect_uris() {
        assert!(validate_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(validate_redirect_uri("http://127.0.0.1/callback").is_ok());
        assert!(validate_redirect_uri("http://[::1]:8080/cb").is_ok());
        for bad in [
            "http://app.example.com/cb",
            "http://localhost/cb",
            "https://app.example.com/cb#frag",
            "https://user:pw@app.example.com/cb",
            "javascript:alert(1)",
            "/relative",
            "com.example.app:/cb",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad} accepted");
        }
    }
}
