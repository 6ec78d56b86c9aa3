//! Who is calling. People and apps carry OAuth2 access tokens: JWTs (RFC 9068, `typ:
//! at+jwt`) signed by the account service with EdDSA and a `kid`. Every service verifies
//! them locally, on every call, with the public keys the account service publishes (the
//! same keys as its JWKS, read through [`crate::hooks::PublishedKeys`]): signature, algorithm, type,
//! issuer, audience, expiry (by the injected clock) and, through [`Auth`], the scope the
//! route's table row names ([`crate::routes`]). Roles are never taken from a token.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::hooks::PublishedKeys;
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::context::AppContext;
use crate::error::{ApiError, Problem};

/// The JOSE `typ` of access tokens (RFC 9068), which ID tokens do not carry.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The `aud` of access tokens: the Printworks API. ID tokens carry the client's id.
pub const API_AUDIENCE: &str = "printworks-api";
/// Tolerance for clocks of other machines when checking `iat`.
const CLOCK_SKEW_SECS: i64 = 60;
/// A token with an unknown `kid` triggers at most one reload of the keys per interval.
const KEY_RELOAD_INTERVAL: time::Duration = time::Duration::seconds(1);
/// Keys are reloaded at least this often, so a key retired (or withdrawn) in the
/// database stops being trusted here too.
const KEY_CACHE_TTL: time::Duration = time::Duration::seconds(60);

pub use printworks_proto::{Role, Scope, ScopeSet};

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    /// A user's id, or for `client_credentials` the client's id.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// The browser session the grant came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// For `client_credentials`: the organization the client acts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<Uuid>,
}

/// On whose behalf a request is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A person, through an app (`client_id`).
    User(Uuid),
    /// An automated system: a confidential client acting inside its organization.
    Client { organization_id: Uuid },
}

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub subject: Subject,
    pub client_id: String,
    pub scopes: ScopeSet,
    pub session_id: Option<Uuid>,
    pub token_id: String,
    pub expires_at: i64,
}

impl Caller {
    pub fn user_id(&self) -> Option<Uuid> {
        match self.subject {
            Subject::User(id) => Some(id),
            Subject::Client { .. } => None,
        }
    }

    fn from_claims(c: AccessClaims) -> Option<Self> {
        let subject = match c.org {
            Some(organization_id) if c.sub == c.client_id => Subject::Client { organization_id },
            Some(_) => return None,
            None => Subject::User(Uuid::parse_str(&c.sub).ok()?),
        };
        Some(Self {
            subject,
            scopes: ScopeSet::from_strings(c.scope.split(' ')),
            client_id: c.client_id,
            session_id: c.sid,
            token_id: c.jti,
            expires_at: c.exp,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is not an access token signed with an accepted algorithm")]
    WrongType,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token signature or claims are invalid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// Verifies access tokens with the published keys, cached in memory and asked for again
/// (from their owner, [`PublishedKeys`]) when a token names a key not seen yet.
///
/// A token whose signature and claims checked out is remembered (by the SHA-256 of the
/// whole token, never the token itself) with its claims, so a client calling again
/// with the same token costs a hash instead of an Ed25519 verification — the largest
/// part of an API call (docs/benchmarks.md). Everything that can change since is still
/// checked on every call: that the token's key is still published (a retired key
/// refuses its cached tokens too), expiry and `iat` by the injected clock.
pub struct TokenVerifier {
    keys_source: Arc<dyn PublishedKeys>,
    issuer: String,
    clock: SharedClock,
    keys: RwLock<KeyCache>,
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// Tokens remembered as verified, at most (a few MiB); when full, the expired ones
/// go, and if none had, all of them.
const VERIFIED_CACHE_MAX: usize = 10_000;

/// A token that verified: its key and claims.
struct Verified {
    kid: String,
    claims: AccessClaims,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, CachedKey>,
    /// By the injected clock, like every expiry.
    loaded_at: Option<time::OffsetDateTime>,
}

#[derive(Clone)]
struct CachedKey {
    key: DecodingKey,
    published_until: Option<time::OffsetDateTime>,
}

impl TokenVerifier {
    pub fn new(keys_source: Arc<dyn PublishedKeys>, issuer: String, clock: SharedClock) -> Self {
        Self {
            keys_source,
            issuer,
            clock,
            keys: RwLock::new(KeyCache::default()),
            verified: std::sync::Mutex::default(),
        }
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed);
        }
        let digest = crate::crypto::sha256(token.as_bytes());
        let seen = self
            .verified()
            .get(&digest)
            .map(|v| (v.kid.clone(), v.claims.clone()));
        if let Some((kid, claims)) = seen {
            self.key(&kid).await?;
            return self.current(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[API_AUDIENCE]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = self.current(data.claims)?;
        let now = self.clock.now().unix_timestamp();
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_CACHE_MAX {
            verified.retain(|_, v| v.claims.exp > now);
            if verified.len() >= VERIFIED_CACHE_MAX {
                verified.clear();
            }
        }
        verified.insert(
            digest,
            Verified {
                kid,
                claims: claims.clone(),
            },
        );
        Ok(claims)
    }

    /// `claims` if they hold now (by the injected clock): not expired, not issued in
    /// the future.
    fn current(&self, claims: AccessClaims) -> Result<AccessClaims, TokenError> {
        let now = self.clock.now().unix_timestamp();
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + CLOCK_SKEW_SECS {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let now = self.clock.now();
        let usable = |k: &CachedKey| k.published_until.is_none_or(|until| until > now);
        {
            let cache = self.keys.read().await;
            let fresh = cache.loaded_at.is_some_and(|t| now - t < KEY_CACHE_TTL);
            if fresh && let Some(k) = cache.keys.get(kid) {
                return usable(k)
                    .then(|| k.key.clone())
                    .ok_or(TokenError::UnknownKey);
            }
        }
        let mut cache = self.keys.write().await;
        let recently = cache
            .loaded_at
            .is_some_and(|t| now - t < KEY_RELOAD_INTERVAL);
        let fresh = cache.loaded_at.is_some_and(|t| now - t < KEY_CACHE_TTL);
        if !(recently || fresh && cache.keys.contains_key(kid)) {
            match load_published_keys(self.keys_source.as_ref(), self.clock.now()).await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.loaded_at = Some(now);
                }
                Err(e) => tracing::warn!(error = %e, "cannot load the token signing keys"),
            }
        }
        cache
            .keys
            .get(kid)
            .filter(|k| usable(k))
            .map(|k| k.key.clone())
            .ok_or(TokenError::UnknownKey)
    }

    /// Forget cached keys (after a rotation in this process).
    pub async fn reload(&self) {
        *self.keys.write().await = KeyCache::default();
    }
}

async fn load_published_keys(
    source: &dyn PublishedKeys,
    now: time::OffsetDateTime,
) -> Result<HashMap<String, CachedKey>, sqlx::Error> {
    let mut keys = HashMap::new();
    for published in source.published(now).await? {
        let parsed = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(published.jwk)
            .ok()
            .and_then(|jwk| DecodingKey::from_jwk(&jwk).ok());
        match parsed {
            Some(key) => {
                keys.insert(
                    published.kid,
                    CachedKey {
                        key,
                        published_until: published.published_until,
                    },
                );
            }
            None => tracing::error!(kid = %published.kid, "a published signing key does not parse"),
        }
    }
    Ok(keys)
}

/// A caller holding a valid access token that grants the scope its route's table row
/// names. Only the table's access layer ([`crate::routes`]) finds the caller, so a
/// handler on a row without a scope cannot take this: it answers 500 and logs why.
#[derive(Debug)]
pub struct Auth(pub Caller);

impl std::ops::Deref for Auth {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

/// 401 with a `WWW-Authenticate` challenge (RFC 6750).
pub fn unauthenticated(detail: &str, token_was_sent: bool) -> ApiError {
    let challenge = if token_was_sent {
        "Bearer realm=\"printworks\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"printworks\""
    };
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authentication is required",
    )
    .detail(detail)
    .header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    )
    .into()
}

pub fn insufficient_scope(scope: Scope) -> ApiError {
    let challenge = format!(
        "Bearer realm=\"printworks\", error=\"insufficient_scope\", scope=\"{}\"",
        scope.as_str()
    );
    let mut p = Problem::new(
        StatusCode::FORBIDDEN,
        "insufficient-scope",
        "The token does not grant this",
    )
    .detail(format!("This needs the scope {}.", scope.as_str()))
    .with("required_scope", scope.as_str());
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        p = p.header(header::WWW_AUTHENTICATE, v);
    }
    p.into()
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller of a request that must carry an access token granting `scope`: 401
/// without a valid token, 403 `insufficient-scope` without the scope.
pub async fn authenticate(
    ctx: &AppContext,
    parts: &Parts,
    scope: Scope,
) -> Result<Caller, ApiError> {
    let Some(token) = bearer_token(parts) else {
        return Err(unauthenticated(
            "Send an access token: Authorization: Bearer <token>.",
            false,
        ));
    };
    let claims = ctx.tokens.verify(token).await.map_err(|e| {
        tracing::info!(reason = %e, "access token refused");
        unauthenticated("The access token is not valid.", true)
    })?;
    let caller = Caller::from_claims(claims)
        .ok_or_else(|| unauthenticated("The access token is not valid.", true))?;
    if !caller.scopes.contains(scope) {
        return Err(insufficient_scope(scope));
    }
    Ok(caller)
}

impl<St: Send + Sync> FromRequestParts<St> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(Auth(caller.clone())),
            None => {
                tracing::error!(
                    "a handler takes the token's caller on a route whose table row names no scope"
                );
                Err(ApiError::Internal(anyhow::anyhow!("route without a scope")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use crate::hooks::PublishedKey;
    use futures_util::future::BoxFuture;

    /// One Ed25519 key, published until `until` (changeable).
    struct OneKey {
        jwk: serde_json::Value,
        until: std::sync::Mutex<Option<time::OffsetDateTime>>,
    }

    impl PublishedKeys for OneKey {
        fn published(
            &self,
            now: time::OffsetDateTime,
        ) -> BoxFuture<'_, sqlx::Result<Vec<PublishedKey>>> {
            let until = *self.until.lock().unwrap();
            let keys = until
                .is_none_or(|u| u > now)
                .then(|| PublishedKey {
                    kid: "k1".into(),
                    jwk: self.jwk.clone(),
                    published_until: until,
                })
                .into_iter()
                .collect();
            Box::pin(async move { Ok(keys) })
        }
    }

    /// A verifier, its clock and key, and a signer of access tokens with that key.
    fn verifier() -> (
        TokenVerifier,
        Arc<ManualClock>,
        Arc<OneKey>,
        impl Fn(i64) -> String,
    ) {
        use aws_lc_rs::signature::KeyPair as _;
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let source = Arc::new(OneKey {
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519",
                "x": crate::crypto::base64url(pair.public_key().as_ref())}),
            until: std::sync::Mutex::new(None),
        });
        let clock = ManualClock::new(time::macros::datetime!(2026-11-30 12:00 UTC));
        let verifier = TokenVerifier::new(source.clone(), "https://pw".into(), clock.clone());
        let key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref());
        let now = clock.now().unix_timestamp();
        let sign = move |ttl: i64| {
            let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
            header.typ = Some(ACCESS_TOKEN_TYPE.into());
            header.kid = Some("k1".into());
            let claims = AccessClaims {
                iss: "https://pw".into(),
                sub: Uuid::new_v4().to_string(),
                aud: API_AUDIENCE.into(),
                exp: now + ttl,
                iat: now,
                jti: Uuid::new_v4().to_string(),
                client_id: "c".into(),
                scope: "printer.read".into(),
                sid: None,
                org: None,
            };
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };
        (verifier, clock, source, sign)
    }

    #[tokio::test]
    async fn a_token_verified_once_still_expires_and_dies_with_its_key() {
        let (verifier, clock, key, sign) = verifier();
        let token = sign(600);
        let first = verifier.verify(&token).await.unwrap();
        // Remembered: the same claims again, without a second verification.
        assert_eq!(verifier.verify(&token).await.unwrap(), first);
        assert_eq!(verifier.verified().len(), 1);
        // Another signature on the same claims is checked, not looked up.
        let (body, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{body}.{}", crate::crypto::base64url(&[7u8; 64]));
        assert_eq!(verifier.verify(&forged).await, Err(TokenError::Invalid));
        // Expiry is read on every call, by the clock.
        clock.advance(time::Duration::seconds(601));
        assert_eq!(verifier.verify(&token).await, Err(TokenError::Expired));
        // A key withdrawn refuses the tokens it signed, remembered or not.
        let (verifier, clock, key2, sign) = (verifier, clock, key, sign);
        let token = sign(3600);
        verifier.verify(&token).await.unwrap();
        *key2.until.lock().unwrap() = Some(clock.now());
        clock.advance(time::Duration::seconds(61));
        assert_eq!(verifier.verify(&token).await, Err(TokenError::UnknownKey));
    }

    #[tokio::test]
    async fn the_verified_tokens_are_bounded() {
        let (verifier, _clock, _key, sign) = verifier();
        let token = sign(600);
        verifier.verify(&token).await.unwrap();
        {
            let mut verified = verifier.verified();
            let entry = |i: usize| {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&(i as u64).to_be_bytes());
                d
            };
            let claims = verified.values().next().unwrap().claims.clone();
            for i in 1..VERIFIED_CACHE_MAX {
                verified.insert(
                    entry(i),
                    Verified {
                        kid: "k1".into(),
                        claims: claims.clone(),
                    },
                );
            }
            assert_eq!(verified.len(), VERIFIED_CACHE_MAX);
        }
        verifier.verify(&sign(600)).await.unwrap();
        assert!(verifier.verified().len() <= VERIFIED_CACHE_MAX);
        assert_eq!(verifier.verified().len(), 1);
    }

    #[test]
    fn client_subjects_must_name_their_client() {
        let claims = |sub: &str, org: Option<Uuid>| AccessClaims {
            iss: "i".into(),
            sub: sub.into(),
            aud: API_AUDIENCE.into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            client_id: "c1".into(),
            scope: "printer.read".into(),
            sid: None,
            org,
        };
        let org = Uuid::new_v4();
        assert_eq!(
            Caller::from_claims(claims("c1", Some(org)))
                .unwrap()
                .subject,
            Subject::Client {
                organization_id: org
            }
        );
        assert!(Caller::from_claims(claims("c2", Some(org))).is_none());
        assert!(Caller::from_claims(claims("not-a-uuid", None)).is_none());
        let user = Uuid::new_v4();
        assert_eq!(
            Caller::from_claims(claims(&user.to_string(), None))
                .unwrap()
                .user_id(),
            Some(user)
        );
    }
}
