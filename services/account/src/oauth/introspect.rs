//! `POST /oauth/revoke` (RFC 7009), `POST /oauth/introspect` (RFC 7662) and
//! `GET|POST /oauth/userinfo` (OpenID Connect Core §5.3).

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Auth, Scope, ScopeSet};
use printworks_common::crypto::token_digest;
use printworks_common::http::{ClientInfo, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::clients::{self, Client};
use super::token::form_or_error;
use super::{OAuthError, no_store};
use crate::AccountState;

#[derive(Deserialize)]
pub(crate) struct TokenParam {
    token: Option<String>,
    #[allow(dead_code)] // accepted and ignored: every kind of token is looked for
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn authenticated_client(
    state: &AccountState,
    headers: &HeaderMap,
    p: &TokenParam,
) -> Result<Client, OAuthError> {
    let presented =
        clients::presented(headers, p.client_id.as_deref(), p.client_secret.as_deref())?;
    clients::authenticate(&state.ctx.db, &presented).await
}

/// Revokes a refresh token (and its family) of the calling client. Access tokens are
/// short-lived JWTs and expire by themselves. Unknown tokens answer 200 too (RFC 7009 §2.2).
pub(crate) async fn revoke(
    State(state): State<AccountState>,
    headers: HeaderMap,
    client_info: ClientInfo,
    form: Result<Form<TokenParam>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let p = form_or_error(form)?;
    let client = authenticated_client(&state, &headers, &p).await?;
    let token = p
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("token is missing."))?;
    if token.len() <= 100 {
        let now = state.ctx.now();
        let mut tx = state.ctx.db.begin().await?;
        let family: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT family_id, user_id FROM oauth_refresh_tokens WHERE token_hash = $1 AND client_id = $2",
        )
        .bind(token_digest(token))
        .bind(&client.id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((family_id, user_id)) = family {
            let revoked = sqlx::query(
                "UPDATE oauth_refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
            )
            .bind(family_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if revoked > 0 {
                AuditEvent::new(
                    "oauth.token_revoke",
                    Actor::Client(client.id.clone()),
                    Outcome::Success,
                )
                .source(client_info.addr)
                .target("user", user_id)
                .write(&mut tx, now)
                .await?;
            }
        }
        tx.commit().await?;
    }
    Ok(no_store(StatusCode::OK))
}

fn inactive() -> Response {
    no_store(axum::Json(json!({ "active": false })))
}

/// For confidential clients: is this token good now? A client learns only about tokens
/// issued to itself (RFC 7662 §4), unless the operator made it a resource server that
/// may look at any (`PRINTWORKS_INTROSPECTION_CLIENTS`); about others it is told
/// `active: false`, as for a token that does not exist. An access token is inactive once
/// its session has ended, its client is gone or (for a third-party app) the consent was
/// withdrawn — before it expires.
pub(crate) async fn introspect(
    State(state): State<AccountState>,
    headers: HeaderMap,
    form: Result<Form<TokenParam>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let p = form_or_error(form)?;
    let caller = authenticated_client(&state, &headers, &p).await?;
    if caller.is_public() {
        return Err(OAuthError::invalid_client(false));
    }
    let Some(token) = p.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(OAuthError::invalid_request("token is missing."));
    };
    let may_see = |client_id: &str| {
        client_id == caller.id
            || state
                .ctx
                .settings
                .account
                .introspection_clients
                .iter()
                .any(|c| c == &caller.id)
    };
    if let Ok(claims) = state.ctx.tokens.verify(token).await {
        if !may_see(&claims.client_id) || !access_token_live(&state, &claims).await? {
            return Ok(inactive());
        }
        let mut body = json!({
            "active": true,
            "token_type": "Bearer",
            "scope": claims.scope,
            "client_id": claims.client_id,
            "sub": claims.sub,
            "exp": claims.exp,
            "iat": claims.iat,
            "iss": claims.iss,
            "aud": claims.aud,
            "jti": claims.jti,
        });
        if let Some(sid) = claims.sid {
            body["sid"] = Value::from(sid.to_string());
        }
        if let Some(org) = claims.org {
            body["organization_id"] = Value::from(org.to_string());
        }
        return Ok(no_store(axum::Json(body)));
    }
    if token.len() <= 100 {
        let now = state.ctx.now();
        let row: Option<(String, Uuid, Vec<String>, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
            "SELECT client_id, user_id, scopes, created_at, expires_at FROM oauth_refresh_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL AND rotated_at IS NULL AND expires_at > $2
               -- A federated session's refresh tokens end with it (see oauth::token).
               AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = oauth_refresh_tokens.session_id
                               AND s.federated_org IS NOT NULL AND s.expires_at <= $2)",
        )
        .bind(token_digest(token))
        .bind(now)
        .fetch_optional(&state.ctx.db)
        .await?;
        if let Some((client_id, user_id, scopes, iat, exp)) = row.filter(|r| may_see(&r.0)) {
            return Ok(no_store(axum::Json(json!({
                "active": true,
                "token_type": "refresh_token",
                "scope": ScopeSet::from_strings(scopes).to_string(),
                "client_id": client_id,
                "sub": user_id.to_string(),
                "exp": exp.unix_timestamp(),
                "iat": iat.unix_timestamp(),
                "iss": state.ctx.settings.public_url.as_str(),
            }))));
        }
    }
    Ok(inactive())
}

async fn access_token_live(
    state: &AccountState,
    claims: &printworks_common::auth::AccessClaims,
) -> sqlx::Result<bool> {
    let client = clients::find(&state.ctx.db, &claims.client_id).await?;
    let Some(client) = client else {
        return Ok(false);
    };
    if let Some(sid) = claims.sid {
        // As for refresh tokens: the session must not have been ended (logout, password
        // change); an idle browser does not end what an app was given offline.
        let live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND ended_at IS NULL)",
        )
        .bind(sid)
        .fetch_one(&state.ctx.db)
        .await?;
        if !live {
            return Ok(false);
        }
    }
    if claims.org.is_none() && !client.trusted_without_consent() {
        let consented: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM oauth_consents WHERE user_id::text = $1 AND client_id = $2)",
        )
        .bind(&claims.sub)
        .bind(&claims.client_id)
        .fetch_one(&state.ctx.db)
        .await?;
        if !consented {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) async fn userinfo(
    State(state): State<AccountState>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let Some(user_id) = auth.user_id() else {
        return Err(printworks_common::auth::unauthenticated(
            "userinfo needs a token issued to a person.",
            true,
        ));
    };
    let row: Option<(String, String, bool)> = sqlx::query_as(
        "SELECT display_name, email, email_verified_at IS NOT NULL FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.ctx.db)
    .await?;
    let Some((name, email, verified)) = row else {
        return Err(printworks_common::auth::unauthenticated(
            "The account is gone.",
            true,
        ));
    };
    let mut body = json!({ "sub": user_id.to_string() });
    if auth.scopes.contains(Scope::Profile) {
        body["name"] = Value::from(name);
    }
    if auth.scopes.contains(Scope::Email) {
        body["email"] = Value::from(email);
        body["email_verified"] = Value::from(verified);
    }
    Ok(no_store(Json(body)).into_response())
}
