//! Token signing keys: Ed25519 (JOSE `EdDSA`), each with a `kid`, kept in the database
//! (private halves sealed with the master key) so every replica signs with the same key
//! and every verifier sees the same public keys.
//!
//! A key's life: published (in the JWKS and to verifiers) → signing, `publish_lead`
//! later, so that caches hold it before any token names it → published until the last
//! token it signed has expired, then gone. `printworks keys rotate` starts a new key's
//! life and schedules the old key's end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use jsonwebtoken::EncodingKey;
use printworks_common::clock::SharedClock;
use printworks_common::crypto::{SecretBox, base64url, random_bytes};
use printworks_common::hooks::{BoxFuture, PublishedKey, PublishedKeys};
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::RwLock;

/// How long a new key is published before it signs. Longer than the JWKS cache lifetime
/// we announce, so that a client that cached the JWKS still knows the key.
pub const PUBLISH_LEAD: Duration = Duration::from_secs(600);
/// The JWKS `Cache-Control: max-age`.
pub const JWKS_MAX_AGE_SECS: u64 = 300;

fn sealing_context(kid: &str) -> String {
    format!("signing-key:{kid}")
}

pub struct Signer {
    pub kid: String,
    pub key: EncodingKey,
}

/// Signing keys of this process: the current key is looked up in the database on each
/// signature (so a rotation takes effect everywhere at `signs_from`); decrypted keys are
/// cached by `kid`.
pub struct SigningKeys {
    db: PgPool,
    secrets: SecretBox,
    clock: SharedClock,
    cache: RwLock<HashMap<String, Arc<Signer>>>,
}

impl SigningKeys {
    pub fn new(db: PgPool, secrets: SecretBox, clock: SharedClock) -> Self {
        Self {
            db,
            secrets,
            clock,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Makes sure a key signs now: on a fresh database, creates the first one (once, even
    /// with several replicas starting together).
    pub async fn ensure_current(&self) -> anyhow::Result<()> {
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('printworks.signing_keys'))")
            .execute(&mut *tx)
            .await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM signing_keys
                            WHERE signs_from <= $1 AND (published_until IS NULL OR published_until > $1))",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            let kid = insert_key(&mut tx, &self.secrets, now, now).await?;
            tracing::info!(%kid, "created the first token signing key");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The key that signs now.
    pub async fn current(&self) -> anyhow::Result<Arc<Signer>> {
        let now = self.clock.now();
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT kid, private_key_sealed FROM signing_keys
             WHERE signs_from <= $1 AND (published_until IS NULL OR published_until > $1)
             ORDER BY signs_from DESC, created_at DESC LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.db)
        .await?;
        let (kid, sealed) = row.context("no token signing key is active")?;
        if let Some(s) = self.cache.read().await.get(&kid) {
            return Ok(s.clone());
        }
        let pkcs8 = self
            .secrets
            .open(&sealing_context(&kid), &sealed)
            .context("the signing key does not open with this master key")?;
        let signer = Arc::new(Signer {
            kid: kid.clone(),
            key: EncodingKey::from_ed_der(&pkcs8),
        });
        self.cache.write().await.insert(kid, signer.clone());
        Ok(signer)
    }

    /// The public keys published now, as a JWKS document.
    pub async fn jwks(&self) -> anyhow::Result<Value> {
        let keys: Vec<Value> = published(&self.db, self.clock.now())
            .await?
            .into_iter()
            .map(|k| k.jwk)
            .collect();
        Ok(json!({ "keys": keys }))
    }
}

/// The public keys published at `now`, oldest first: the JWKS, and what every service
/// verifies access tokens with ([`Published`]).
pub async fn published(db: &PgPool, now: OffsetDateTime) -> sqlx::Result<Vec<PublishedKey>> {
    let rows: Vec<(String, Value, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT kid, public_jwk, published_until FROM signing_keys
         WHERE published_from <= $1 AND (published_until IS NULL OR published_until > $1)
         ORDER BY published_from",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kid, jwk, published_until)| PublishedKey {
            kid,
            jwk,
            published_until,
        })
        .collect())
}

/// The account service's published keys, for every service's token verifier
/// (`AppContext::new`).
pub struct Published(pub PgPool);

impl PublishedKeys for Published {
    fn published(&self, now: OffsetDateTime) -> BoxFuture<'_, sqlx::Result<Vec<PublishedKey>>> {
        Box::pin(published(&self.0, now))
    }
}

async fn insert_key(
    conn: &mut sqlx::PgConnection,
    secrets: &SecretBox,
    published_from: OffsetDateTime,
    signs_from: OffsetDateTime,
) -> anyhow::Result<String> {
    let pair = Ed25519KeyPair::generate().context("generating an Ed25519 key")?;
    let pkcs8 = pair.to_pkcs8v1().context("encoding the key")?;
    let kid = base64url(&random_bytes::<12>());
    let jwk = json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid,
        "x": base64url(pair.public_key().as_ref()),
    });
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, private_key_sealed, public_jwk, created_at,
                                   published_from, signs_from)
         VALUES ($1, 'EdDSA', $2, $3, $4, $4, $5)",
    )
    .bind(&kid)
    .bind(secrets.seal(&sealing_context(&kid), pkcs8.as_ref()))
    .bind(&jwk)
    .bind(published_from)
    .bind(signs_from)
    .execute(&mut *conn)
    .await?;
    Ok(kid)
}

pub struct Rotation {
    pub kid: String,
    pub signs_from: OffsetDateTime,
    pub retiring: Vec<(String, OffsetDateTime)>,
}

/// Publishes a new key now that signs from `now + publish_lead`; keys signing until then
/// stay published until their last token (lifetime `token_ttl`) has expired.
pub async fn rotate(
    db: &PgPool,
    secrets: &SecretBox,
    now: OffsetDateTime,
    publish_lead: Duration,
    token_ttl: Duration,
) -> anyhow::Result<Rotation> {
    let lead = time::Duration::try_from(publish_lead)?;
    let ttl = time::Duration::try_from(token_ttl)?;
    let signs_from = now + lead;
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('printworks.signing_keys'))")
        .execute(&mut *tx)
        .await?;
    let retire_at = signs_from + ttl + time::Duration::minutes(1);
    let retiring: Vec<(String, OffsetDateTime)> = sqlx::query_as(
        "UPDATE signing_keys SET published_until = $1
         WHERE published_until IS NULL OR published_until > $1
         RETURNING kid, published_until",
    )
    .bind(retire_at)
    .fetch_all(&mut *tx)
    .await?;
    let kid = insert_key(&mut tx, secrets, now, signs_from).await?;
    tx.commit().await?;
    Ok(Rotation {
        kid,
        signs_from,
        retiring,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_pkcs8_is_accepted_by_jsonwebtoken() {
        let pair = Ed25519KeyPair::generate().unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let key = EncodingKey::from_ed_der(pkcs8.as_ref());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k".into());
        let token =
            jsonwebtoken::encode(&header, &json!({"sub": "x", "exp": 4_000_000_000u64}), &key)
                .unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k",
            "x": base64url(pair.public_key().as_ref()),
        }))
        .unwrap();
        let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_aud = false;
        assert!(jsonwebtoken::decode::<Value>(&token, &dk, &v).is_ok());
    }
}
