//! `POST /oauth/token`: the `authorization_code`, `refresh_token` and
//! `client_credentials` grants.
//!
//! - A code works once, within a minute, for the client and redirect URI it was issued
//!   to, with the PKCE verifier of its challenge; presenting it again revokes what it
//!   gave (RFC 6749 §4.1.2).
//! - Refresh tokens (only with `offline_access`) are rotated on every use; presenting a
//!   rotated one again revokes its whole family, as Ory Hydra does — a stolen token
//!   and its legitimate holder cannot both keep going.
//! - `client_credentials` gives a confidential client an access token for its own
//!   organization, in which it holds the role its admin chose.

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::Response;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Scope, ScopeSet};
use printworks_common::crypto::{base64url, constant_time_eq, sha256, token_digest};
use printworks_common::http::ClientInfo;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::clients::{
    self, Client, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN,
};
use super::{OAuthError, no_store};
use crate::AccountState;
use crate::tokens::{self, Grantee, IdTokenInput, RefreshTokenInput};

#[derive(Deserialize, Default)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

/// Scopes that only make sense for a person.
const USER_ONLY: [Scope; 4] = [
    Scope::OpenId,
    Scope::Profile,
    Scope::Email,
    Scope::OfflineAccess,
];

pub fn form_or_error<T>(
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, OAuthError> {
    form.map(|Form(f)| f).map_err(|_| {
        OAuthError::invalid_request(
            "Send the parameters as application/x-www-form-urlencoded, each once.",
        )
    })
}

pub(crate) async fn token(
    State(state): State<AccountState>,
    headers: HeaderMap,
    client_info: ClientInfo,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let form = form_or_error(form)?;
    let presented = clients::presented(
        &headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )?;
    let client = clients::authenticate(&state.ctx.db, &presented).await?;
    let grant = form.grant_type.as_deref().unwrap_or_default();
    let response = match grant {
        GRANT_AUTHORIZATION_CODE => {
            authorization_code(&state, &client, &form, &client_info).await?
        }
        GRANT_REFRESH_TOKEN => refresh(&state, &client, &form, &client_info).await?,
        GRANT_CLIENT_CREDENTIALS => client_credentials(&state, &client, &form).await?,
        "" => return Err(OAuthError::invalid_request("grant_type is missing.")),
        _ => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                "Supported: authorization_code, refresh_token, client_credentials.",
            ));
        }
    };
    Ok(no_store(axum::Json(response)))
}

fn require_grant(client: &Client, grant: &str) -> Result<(), OAuthError> {
    if client.allows_grant(grant) {
        Ok(())
    } else {
        Err(OAuthError::new(
            "unauthorized_client",
            format!("This client may not use the {grant} grant."),
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CodeRow {
    client_id: String,
    user_id: Uuid,
    session_id: Option<Uuid>,
    redirect_uri: String,
    scopes: Vec<String>,
    code_challenge: Option<String>,
    code_challenge_method: String,
    nonce: Option<String>,
    auth_time: OffsetDateTime,
    amr: Vec<String>,
    expires_at: OffsetDateTime,
}

/// Whether what stands behind a grant still stands: the person, the session it came
/// through (not ended; with `fresh`, also not idle and within its lifetime — for a code
/// exchange; a refresh token only needs its session not ended), and for a third-party
/// client the person's consent.
///
/// The rows are locked until the caller's transaction ends — person, session, consent,
/// in that order, before any refresh token row — so that a concurrent logout, password
/// change or consent withdrawal waits for this grant and then sees, and revokes, the
/// refresh token it issued.
async fn grant_still_valid(
    conn: &mut sqlx::PgConnection,
    state: &AccountState,
    client: &Client,
    user_id: Uuid,
    session_id: Option<Uuid>,
    fresh: bool,
) -> sqlx::Result<bool> {
    let person: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 FOR SHARE")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    // Every grant of a person comes through a session; none means none stands.
    let (Some(_), Some(session_id)) = (person, session_id) else {
        return Ok(false);
    };
    let session: Option<(Option<OffsetDateTime>, OffsetDateTime, OffsetDateTime, bool)> =
        sqlx::query_as(
            "SELECT ended_at, expires_at, last_seen_at, federated_org IS NOT NULL FROM sessions
             WHERE id = $1 AND user_id = $2 FOR SHARE",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    let now = state.ctx.now();
    let idle = time::Duration::try_from(state.ctx.settings.account.session_idle_timeout)
        .unwrap_or(time::Duration::hours(24));
    // A session from an organization's provider lends its refresh tokens no more life
    // than it has: when it ends, the person must pass the provider again.
    let session_ok = match session {
        Some((None, expires_at, last_seen_at, federated)) => {
            (!fresh || last_seen_at > now - idle) && (expires_at > now || (!fresh && !federated))
        }
        _ => false,
    };
    if !session_ok {
        return Ok(false);
    }
    if client.trusted_without_consent() {
        return Ok(true);
    }
    let consent: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM oauth_consents WHERE user_id = $1 AND client_id = $2 FOR KEY SHARE",
    )
    .bind(user_id)
    .bind(&client.id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(consent.is_some())
}

/// Revokes a refresh token family (in the caller's transaction).
async fn revoke_family(
    conn: &mut sqlx::PgConnection,
    family_id: Uuid,
    now: OffsetDateTime,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE oauth_refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

async fn authorization_code(
    state: &AccountState,
    client: &Client,
    form: &TokenForm,
    client_info: &ClientInfo,
) -> Result<TokenResponse, OAuthError> {
    require_grant(client, GRANT_AUTHORIZATION_CODE)?;
    let code = form
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 100)
        .ok_or_else(|| OAuthError::invalid_request("code is missing."))?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let row: Option<CodeRow> = sqlx::query_as(
        "UPDATE oauth_codes SET consumed_at = $2 WHERE code_hash = $1 AND consumed_at IS NULL
         RETURNING client_id, user_id, session_id, redirect_uri, scopes, code_challenge,
                   code_challenge_method, nonce, auth_time, amr, expires_at",
    )
    .bind(token_digest(code))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        // Unknown, or used before: a replay revokes what the first use gave.
        let used: Option<(Option<Uuid>, Uuid, String)> = sqlx::query_as(
            "SELECT family_id, user_id, client_id FROM oauth_codes WHERE code_hash = $1",
        )
        .bind(token_digest(code))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((family, user_id, client_id)) = used {
            let revoked = match family {
                Some(f) => revoke_family(&mut tx, f, now).await?,
                None => 0,
            };
            AuditEvent::new(
                "oauth.code_replay",
                Actor::Client(client_id),
                Outcome::Failure,
            )
            .source(client_info.addr)
            .target("user", user_id)
            .detail("refresh_tokens_revoked", revoked)
            .write(&mut tx, now)
            .await?;
            tx.commit().await?;
        }
        return Err(OAuthError::invalid_grant("The code is not valid."));
    };
    // The code is spent whatever happens next: a failed exchange burns it too.
    if let Err(e) = check_code(state, client, form, &row) {
        tx.commit().await?;
        return Err(e);
    }
    if !grant_still_valid(&mut tx, state, client, row.user_id, row.session_id, true).await? {
        tx.commit().await?;
        return Err(OAuthError::invalid_grant(
            "The sign-in session has ended or the consent was withdrawn.",
        ));
    }
    let scopes = ScopeSet::from_strings(&row.scopes);
    let refresh_token =
        if scopes.contains(Scope::OfflineAccess) && client.allows_grant(GRANT_REFRESH_TOKEN) {
            let family_id = Uuid::new_v4();
            let token = tokens::refresh_token(
                &mut tx,
                state,
                RefreshTokenInput {
                    family_id,
                    client_id: &client.id,
                    user_id: row.user_id,
                    session_id: row.session_id,
                    scopes: &scopes,
                    auth_time: row.auth_time,
                },
            )
            .await?;
            sqlx::query("UPDATE oauth_codes SET family_id = $2 WHERE code_hash = $1")
                .bind(token_digest(code))
                .bind(family_id)
                .execute(&mut *tx)
                .await?;
            Some(token)
        } else {
            None
        };
    tx.commit().await?;
    let grantee = Grantee::User {
        id: row.user_id,
        session_id: row.session_id,
    };
    let (access_token, expires_in) =
        tokens::access_token(state, &client.id, &grantee, &scopes).await?;
    let id_token = if scopes.contains(Scope::OpenId) {
        Some(
            tokens::id_token(
                state,
                IdTokenInput {
                    client_id: &client.id,
                    user_id: row.user_id,
                    session_id: row.session_id,
                    auth_time: row.auth_time,
                    nonce: row.nonce.as_deref(),
                    amr: &row.amr,
                    scopes: &scopes,
                },
            )
            .await?,
        )
    } else {
        None
    };
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        scope: scopes.to_string(),
        refresh_token,
        id_token,
    })
}

/// What a code exchange must match: client, expiry, redirect URI, PKCE.
fn check_code(
    state: &AccountState,
    client: &Client,
    form: &TokenForm,
    row: &CodeRow,
) -> Result<(), OAuthError> {
    let now = state.ctx.now();
    if row.client_id != client.id || row.expires_at <= now {
        return Err(OAuthError::invalid_grant("The code is not valid."));
    }
    if form.redirect_uri.as_deref() != Some(row.redirect_uri.as_str()) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri must be the one of the authorization request.",
        ));
    }
    match (&row.code_challenge, form.code_verifier.as_deref()) {
        (Some(challenge), Some(verifier)) => {
            let valid_shape = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            // S512 is Cura's, stored only for Cura's codes.
            let computed = if row.code_challenge_method == "S512" {
                crate::cura::s512(verifier)
            } else {
                base64url(&sha256(verifier.as_bytes()))
            };
            if !(valid_shape && constant_time_eq(computed.as_bytes(), challenge.as_bytes())) {
                return Err(OAuthError::invalid_grant(
                    "The PKCE code_verifier does not match.",
                ));
            }
        }
        (Some(_), None) => {
            return Err(OAuthError::invalid_grant(
                "code_verifier is missing (PKCE).",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_grant(
                "This code was issued without PKCE.",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
pub(crate) struct RefreshRow {
    id: Uuid,
    family_id: Uuid,
    client_id: String,
    user_id: Uuid,
    session_id: Option<Uuid>,
    scopes: Vec<String>,
    auth_time: OffsetDateTime,
    expires_at: OffsetDateTime,
    rotated_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
}

async fn refresh(
    state: &AccountState,
    client: &Client,
    form: &TokenForm,
    client_info: &ClientInfo,
) -> Result<TokenResponse, OAuthError> {
    require_grant(client, GRANT_REFRESH_TOKEN)?;
    let presented = form
        .refresh_token
        .as_deref()
        .filter(|t| !t.is_empty() && t.len() <= 100)
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing."))?;
    let invalid = || OAuthError::invalid_grant("The refresh token is not valid.");
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    // Find the token, lock what stands behind it, then lock the token itself (the order
    // `grant_still_valid` explains).
    let peek: Option<RefreshRow> = sqlx::query_as(
        "SELECT id, family_id, client_id, user_id, session_id, scopes, auth_time, expires_at,
                rotated_at, revoked_at
         FROM oauth_refresh_tokens WHERE token_hash = $1",
    )
    .bind(token_digest(presented))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(peek) = peek else {
        return Err(invalid());
    };
    if peek.client_id != client.id {
        return Err(invalid());
    }
    let grant_ok =
        grant_still_valid(&mut tx, state, client, peek.user_id, peek.session_id, false).await?;
    let row: Option<RefreshRow> = sqlx::query_as(
        "SELECT id, family_id, client_id, user_id, session_id, scopes, auth_time, expires_at,
                rotated_at, revoked_at
         FROM oauth_refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(token_digest(presented))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(invalid());
    };
    if row.rotated_at.is_some() && row.revoked_at.is_none() {
        // Reuse of a rotated token: someone holds a copy. End the whole family.
        let revoked = revoke_family(&mut tx, row.family_id, now).await?;
        AuditEvent::new(
            "oauth.refresh_token_reuse",
            Actor::Client(client.id.clone()),
            Outcome::Failure,
        )
        .source(client_info.addr)
        .target("user", row.user_id)
        .detail("family_id", row.family_id.to_string())
        .detail("refresh_tokens_revoked", revoked)
        .write(&mut tx, now)
        .await?;
        tx.commit().await?;
        return Err(invalid());
    }
    if row.revoked_at.is_some() || row.rotated_at.is_some() || row.expires_at <= now {
        return Err(invalid());
    }
    if !grant_ok {
        return Err(OAuthError::invalid_grant(
            "The sign-in session has ended or the consent was withdrawn.",
        ));
    }
    let granted = ScopeSet::from_strings(&row.scopes);
    let scopes = match form.scope.as_deref() {
        None | Some("") => granted.clone(),
        Some(s) => {
            // Cura names its scopes UltiMaker's way on a refresh too.
            let s = if client.id == crate::cura::CLIENT_ID {
                crate::cura::printworks_scopes(s)
            } else {
                s.to_owned()
            };
            let asked = ScopeSet::parse(&s).map_err(|e| OAuthError::new("invalid_scope", e))?;
            if !asked.is_subset(&granted) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    "A refresh cannot add scopes that were not granted.",
                ));
            }
            asked
        }
    };
    sqlx::query("UPDATE oauth_refresh_tokens SET rotated_at = $2 WHERE id = $1")
        .bind(row.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let next = tokens::refresh_token(
        &mut tx,
        state,
        RefreshTokenInput {
            family_id: row.family_id,
            client_id: &client.id,
            user_id: row.user_id,
            session_id: row.session_id,
            scopes: &granted,
            auth_time: row.auth_time,
        },
    )
    .await?;
    tx.commit().await?;
    let grantee = Grantee::User {
        id: row.user_id,
        session_id: row.session_id,
    };
    let (access_token, expires_in) =
        tokens::access_token(state, &client.id, &grantee, &scopes).await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        scope: scopes.to_string(),
        refresh_token: Some(next),
        id_token: None,
    })
}

async fn client_credentials(
    state: &AccountState,
    client: &Client,
    form: &TokenForm,
) -> Result<TokenResponse, OAuthError> {
    require_grant(client, GRANT_CLIENT_CREDENTIALS)?;
    let (Some(organization_id), false) = (client.organization_id, client.is_public()) else {
        return Err(OAuthError::new(
            "unauthorized_client",
            "Only confidential clients of an organization may use client_credentials.",
        ));
    };
    let mut allowed = client.scope_set();
    for s in USER_ONLY {
        allowed.remove(s);
    }
    let scopes = match form.scope.as_deref() {
        None | Some("") => allowed,
        Some(s) => {
            let asked = ScopeSet::parse(s).map_err(|e| OAuthError::new("invalid_scope", e))?;
            if !asked.is_subset(&allowed) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    "A requested scope is not registered for this client, or needs a person.",
                ));
            }
            asked
        }
    };
    let (access_token, expires_in) = tokens::access_token(
        state,
        &client.id,
        &Grantee::Client { organization_id },
        &scopes,
    )
    .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        scope: scopes.to_string(),
        refresh_token: None,
        id_token: None,
    })
}
