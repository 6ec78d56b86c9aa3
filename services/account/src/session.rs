//! Browser sessions: a random 256-bit secret in an HttpOnly cookie, only its SHA-256 in
//! the database. A session ends at its absolute lifetime (14 days by default), after
//! its idle timeout, when its owner ends it, or when the password changes; ending it
//! revokes the refresh tokens issued through it.

use std::net::IpAddr;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use printworks_common::crypto::{random_token, token_digest};
use printworks_common::error::Problem;
use printworks_common::{ApiError, AppContext};
use serde::Serialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AccountState;

/// The cookie's name: with https, the `__Host-` prefix pins it to this origin, `Path=/`
/// and `Secure`.
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-pw_session"
    } else {
        "pw_session"
    }
}

/// A session that is valid now.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ActiveSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub amr: Vec<String>,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct SessionView {
    pub id: Uuid,
    pub user_agent: Option<String>,
    pub source_addr: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[sqlx(skip)]
    pub current: bool,
}

pub struct NewSession {
    pub id: Uuid,
    pub token: String,
    pub expires_at: OffsetDateTime,
}

/// Starts a session (in the caller's transaction) and returns its cookie secret.
pub async fn create(
    conn: &mut PgConnection,
    state: &AccountState,
    user_id: Uuid,
    amr: &[&str],
    addr: Option<IpAddr>,
    user_agent: Option<&str>,
) -> sqlx::Result<NewSession> {
    insert(conn, state, user_id, amr, None, addr, user_agent).await
}

/// Starts a session that came from `organization`'s identity provider: it ends at the
/// federated maximum (`PRINTWORKS_FEDERATED_SESSION_MAX`), and the person then signs in
/// at the provider again.
pub async fn create_federated(
    conn: &mut PgConnection,
    state: &AccountState,
    user_id: Uuid,
    amr: &[&str],
    organization: Uuid,
    addr: Option<IpAddr>,
    user_agent: Option<&str>,
) -> sqlx::Result<NewSession> {
    insert(
        conn,
        state,
        user_id,
        amr,
        Some(organization),
        addr,
        user_agent,
    )
    .await
}

async fn insert(
    conn: &mut PgConnection,
    state: &AccountState,
    user_id: Uuid,
    amr: &[&str],
    federated_org: Option<Uuid>,
    addr: Option<IpAddr>,
    user_agent: Option<&str>,
) -> sqlx::Result<NewSession> {
    let now = state.ctx.now();
    let settings = &state.ctx.settings.account;
    let mut lifetime =
        time::Duration::try_from(settings.session_lifetime).unwrap_or(time::Duration::days(14));
    if federated_org.is_some() {
        let max = time::Duration::try_from(settings.federated_session_max)
            .unwrap_or(time::Duration::hours(12));
        lifetime = lifetime.min(max);
    }
    let id = Uuid::new_v4();
    let token = random_token();
    let expires_at = now + lifetime;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, token_hash, amr, user_agent, source_addr,
                               created_at, last_seen_at, expires_at, federated_org)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
    )
    .bind(id)
    .bind(user_id)
    .bind(token_digest(&token))
    .bind(amr.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    .bind(user_agent)
    .bind(addr.map(|a| a.to_string()))
    .bind(now)
    .bind(expires_at)
    .bind(federated_org)
    .execute(conn)
    .await?;
    Ok(NewSession {
        id,
        token,
        expires_at,
    })
}

/// The session a cookie secret belongs to, if it is still valid; marks it used.
pub async fn find(state: &AccountState, token: &str) -> sqlx::Result<Option<ActiveSession>> {
    if token.len() > 100 {
        return Ok(None);
    }
    let now = state.ctx.now();
    let idle = time::Duration::try_from(state.ctx.settings.account.session_idle_timeout)
        .unwrap_or(time::Duration::hours(24));
    let session: Option<ActiveSession> = sqlx::query_as(
        "SELECT id, user_id, amr, created_at, last_seen_at FROM sessions
         WHERE token_hash = $1 AND ended_at IS NULL AND expires_at > $2 AND last_seen_at > $3",
    )
    .bind(token_digest(token))
    .bind(now)
    .bind(now - idle)
    .fetch_optional(&state.ctx.db)
    .await?;
    if let Some(s) = &session
        && now - s.last_seen_at > time::Duration::minutes(1)
    {
        sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
            .bind(s.id)
            .bind(now)
            .execute(&state.ctx.db)
            .await?;
    }
    Ok(session)
}

/// How a session's person signed in, as an organization's policy asks: the
/// authentication methods, when, and through which organization's provider.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Standing {
    pub amr: Vec<String>,
    pub created_at: OffsetDateTime,
    pub federated_org: Option<Uuid>,
}

impl Standing {
    /// A second factor was checked, as `organization` may count it: TOTP here, or one
    /// reported by that organization's own provider (another organization's provider
    /// saying so proves nothing to this one).
    pub fn has_second_factor_for(&self, organization: Uuid) -> bool {
        self.amr.iter().any(|m| m == "otp")
            || (self.federated_org == Some(organization) && self.amr.iter().any(|m| m == "mfa"))
    }
}

/// The standing of `user_id`'s session `session_id`, if it has not ended — nor, for a
/// session from a provider, expired (a password session's refresh tokens outlive it by
/// design; a federated one's do not: see `oauth::token`).
pub async fn standing(
    db: impl sqlx::PgExecutor<'_>,
    user_id: Uuid,
    session_id: Uuid,
    now: OffsetDateTime,
) -> sqlx::Result<Option<Standing>> {
    sqlx::query_as(
        "SELECT amr, created_at, federated_org FROM sessions
         WHERE id = $1 AND user_id = $2 AND ended_at IS NULL
           AND (federated_org IS NULL OR expires_at > $3)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(now)
    .fetch_optional(db)
    .await
}

/// Ends a session of `user_id` and revokes the refresh tokens issued through it.
/// Returns false when there is no such active session of that user.
pub async fn end(
    conn: &mut PgConnection,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> sqlx::Result<bool> {
    let ended = sqlx::query(
        "UPDATE sessions SET ended_at = $3, ended_reason = $4
         WHERE id = $1 AND user_id = $2 AND ended_at IS NULL",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(now)
    .bind(reason)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE oauth_refresh_tokens SET revoked_at = $2
         WHERE session_id = $1 AND revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(ended == 1)
}

/// Ends every session of `user_id` but `keep`, and revokes every refresh token of the
/// user (a password change: whoever knew the old one is out).
pub async fn end_all_but(
    conn: &mut PgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: &str,
    now: OffsetDateTime,
) -> sqlx::Result<u64> {
    let ended = sqlx::query(
        "UPDATE sessions SET ended_at = $3, ended_reason = $4
         WHERE user_id = $1 AND ended_at IS NULL AND id IS DISTINCT FROM $2",
    )
    .bind(user_id)
    .bind(keep)
    .bind(now)
    .bind(reason)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE oauth_refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(ended)
}

/// The `Set-Cookie` for a new session.
pub fn cookie(state: &AccountState, s: &NewSession) -> Cookie<'static> {
    let https = state.ctx.settings.public_url.is_https();
    let max_age = s.expires_at - state.ctx.now();
    Cookie::build((cookie_name(https), s.token.clone()))
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Lax)
        .max_age(max_age)
        .build()
}

/// The `Set-Cookie` that deletes the session cookie.
pub fn removal_cookie(state: &AccountState) -> Cookie<'static> {
    let https = state.ctx.settings.public_url.is_https();
    let mut c = Cookie::build((cookie_name(https), ""))
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Lax)
        .build();
    c.make_removal();
    c
}

/// The signed-in person, from the session cookie. For the account's own pages and its
/// self-service API (sessions, TOTP, password, consents): things a third-party app with
/// a token must not do.
///
/// Cross-site requests cannot use it to change anything: the cookie is `SameSite=Lax`,
/// JSON bodies need a CORS preflight this server never grants, and a state-changing
/// request that announces itself as cross-site (`Sec-Fetch-Site`) is refused outright.
#[derive(Clone, Debug)]
pub struct SessionUser {
    pub session: ActiveSession,
}

impl SessionUser {
    pub fn user_id(&self) -> Uuid {
        self.session.user_id
    }
}

fn is_cross_site_write(parts: &Parts) -> bool {
    let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    unsafe_method
        && parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site")
}

pub async fn session_from_parts_headers(
    headers: &axum::http::HeaderMap,
    state: &AccountState,
) -> Result<Option<ActiveSession>, ApiError> {
    let jar = CookieJar::from_headers(headers);
    let name = cookie_name(state.ctx.settings.public_url.is_https());
    match jar.get(name) {
        Some(c) => Ok(find(state, c.value()).await?),
        None => Ok(None),
    }
}

impl<S> FromRequestParts<S> for SessionUser
where
    AccountState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AccountState::from_ref(state);
        if is_cross_site_write(parts) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "cross-site-request",
                "Cross-site requests are refused",
            )
            .into());
        }
        match session_from_parts_headers(&parts.headers, &state).await? {
            Some(session) => Ok(SessionUser { session }),
            None => Err(printworks_common::auth::unauthenticated(
                "Sign in first: this needs a browser session.",
                false,
            )),
        }
    }
}

impl FromRef<AccountState> for AppContext {
    fn from_ref(s: &AccountState) -> AppContext {
        s.ctx.clone()
    }
}
