//! Minting tokens: access tokens (JWT, RFC 9068), ID tokens (OpenID Connect Core), and
//! refresh tokens (opaque, stored as digests, rotated on every use).

use jsonwebtoken::{Algorithm, Header};
use printworks_common::auth::{ACCESS_TOKEN_TYPE, API_AUDIENCE, AccessClaims, Scope, ScopeSet};
use printworks_common::crypto::{random_token, token_digest};
use serde::Serialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AccountState;

fn header(kid: &str, typ: &str) -> Header {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.to_owned());
    h.typ = Some(typ.to_owned());
    h
}

pub fn access_ttl(state: &AccountState) -> time::Duration {
    time::Duration::try_from(state.ctx.settings.account.access_token_ttl)
        .unwrap_or(time::Duration::minutes(10))
}

/// Who the access token is for.
pub enum Grantee {
    User { id: Uuid, session_id: Option<Uuid> },
    Client { organization_id: Uuid },
}

pub async fn access_token(
    state: &AccountState,
    client_id: &str,
    grantee: &Grantee,
    scopes: &ScopeSet,
) -> anyhow::Result<(String, i64)> {
    let now = state.ctx.now();
    let ttl = access_ttl(state);
    let (sub, sid, org) = match grantee {
        Grantee::User { id, session_id } => (id.to_string(), *session_id, None),
        Grantee::Client { organization_id } => (client_id.to_owned(), None, Some(*organization_id)),
    };
    let claims = AccessClaims {
        iss: state.ctx.settings.public_url.as_str().to_owned(),
        sub,
        aud: API_AUDIENCE.to_owned(),
        exp: (now + ttl).unix_timestamp(),
        iat: now.unix_timestamp(),
        jti: Uuid::new_v4().to_string(),
        client_id: client_id.to_owned(),
        scope: scopes.to_string(),
        sid,
        org,
    };
    let signer = state.keys.current().await?;
    let token = jsonwebtoken::encode(
        &header(&signer.kid, ACCESS_TOKEN_TYPE),
        &claims,
        &signer.key,
    )?;
    Ok((token, ttl.whole_seconds()))
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    amr: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
}

pub struct IdTokenInput<'a> {
    pub client_id: &'a str,
    pub user_id: Uuid,
    pub session_id: Option<Uuid>,
    pub auth_time: OffsetDateTime,
    pub nonce: Option<&'a str>,
    pub amr: &'a [String],
    pub scopes: &'a ScopeSet,
}

pub async fn id_token(state: &AccountState, input: IdTokenInput<'_>) -> anyhow::Result<String> {
    let (name, email, verified): (String, String, bool) = sqlx::query_as(
        "SELECT display_name, email, email_verified_at IS NOT NULL FROM users WHERE id = $1",
    )
    .bind(input.user_id)
    .fetch_one(&state.ctx.db)
    .await?;
    let now = state.ctx.now();
    let issuer = state.ctx.settings.public_url.as_str();
    let with_email = input.scopes.contains(Scope::Email);
    let claims = IdClaims {
        iss: issuer,
        sub: input.user_id.to_string(),
        aud: input.client_id,
        exp: (now + access_ttl(state)).unix_timestamp(),
        iat: now.unix_timestamp(),
        auth_time: input.auth_time.unix_timestamp(),
        nonce: input.nonce,
        amr: input.amr,
        sid: input.session_id,
        name: input
            .scopes
            .contains(Scope::Profile)
            .then_some(name.as_str()),
        email: with_email.then_some(email.as_str()),
        email_verified: with_email.then_some(verified),
    };
    let signer = state.keys.current().await?;
    Ok(jsonwebtoken::encode(
        &header(&signer.kid, "JWT"),
        &claims,
        &signer.key,
    )?)
}

pub struct RefreshTokenInput<'a> {
    pub family_id: Uuid,
    pub client_id: &'a str,
    pub user_id: Uuid,
    pub session_id: Option<Uuid>,
    pub scopes: &'a ScopeSet,
    pub auth_time: OffsetDateTime,
}

/// Stores a new refresh token of the family (in the caller's transaction) and returns it.
pub async fn refresh_token(
    conn: &mut PgConnection,
    state: &AccountState,
    input: RefreshTokenInput<'_>,
) -> sqlx::Result<String> {
    let now = state.ctx.now();
    let ttl = time::Duration::try_from(state.ctx.settings.account.refresh_token_ttl)
        .unwrap_or(time::Duration::days(30));
    let token = random_token();
    sqlx::query(
        "INSERT INTO oauth_refresh_tokens (id, token_hash, family_id, client_id, user_id,
                                           session_id, scopes, auth_time, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(Uuid::new_v4())
    .bind(token_digest(&token))
    .bind(input.family_id)
    .bind(input.client_id)
    .bind(input.user_id)
    .bind(input.session_id)
    .bind(input.scopes.to_strings())
    .bind(input.auth_time)
    .bind(now)
    .bind(now + ttl)
    .execute(conn)
    .await?;
    Ok(token)
}
