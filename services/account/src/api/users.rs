//! `POST /account/v1/users` (sign up), `GET /account/v1/users/me`,
//! `POST /account/v1/password` (change it).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::http::{ClientInfo, Json};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::login::{self, LoginError};
use crate::session::{self, SessionUser};
use crate::{AccountState, PREFIX, totp};
use printworks_common::email::Email;

#[derive(Deserialize)]
pub struct SignUp {
    email: String,
    password: SecretString,
    display_name: String,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[sqlx(default)]
    pub totp_enabled: bool,
    /// Whether the address was confirmed (the link in the sign-up e-mail followed).
    pub email_verified: bool,
}

pub(crate) async fn sign_up(
    State(state): State<AccountState>,
    client: ClientInfo,
    Json(req): Json<SignUp>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&req.email).map_err(ApiError::invalid)?;
    let display_name = super::display_name(&req.display_name)?;
    let password = state
        .policy
        .check(
            secrecy::ExposeSecret::expose_secret(&req.password),
            email.as_str(),
            &display_name,
        )
        .map_err(ApiError::invalid)?;
    let hash = state.passwords.hash(SecretString::from(password)).await?;
    let now = state.ctx.now();
    let id = Uuid::new_v4();
    let mut tx = state.ctx.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(&display_name)
    .bind(&hash)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::conflict(
            "An account with this e-mail address exists. Sign in instead.",
        ));
    }
    AuditEvent::new("user.create", Actor::User(id), Outcome::Success)
        .source(client.addr)
        .target("user", id)
        .write(&mut tx, now)
        .await?;
    crate::verification::send(&mut tx, &state, id, email.as_str(), now).await?;
    tx.commit().await?;
    state.ctx.outbox.queued();
    let view = UserView {
        id,
        email: email.to_string(),
        display_name,
        created_at: now,
        totp_enabled: false,
        email_verified: false,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("{PREFIX}/users/me"))],
        Json(view),
    )
        .into_response())
}

pub async fn find_user(state: &AccountState, id: Uuid) -> Result<UserView, ApiError> {
    let mut user: UserView =
        sqlx::query_as("SELECT id, email, display_name, created_at, email_verified_at IS NOT NULL AS email_verified FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.ctx.db)
            .await?
            .ok_or_else(ApiError::not_found)?;
    user.totp_enabled = totp::enabled(&state.ctx.db, id).await?;
    Ok(user)
}

pub(crate) async fn me(
    State(state): State<AccountState>,
    user: SessionUser,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(find_user(&state, user.user_id()).await?))
}

#[derive(Deserialize)]
pub struct ChangePassword {
    current_password: SecretString,
    new_password: SecretString,
}

/// Ends every other session and revokes every refresh token of the user.
pub(crate) async fn change_password(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Json(req): Json<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let me = find_user(&state, user.user_id()).await?;
    let account = match login::check_password(
        &state,
        &me.email,
        req.current_password,
        &client,
        &login::subject(&me.email),
    )
    .await
    {
        Ok(a) => a,
        Err(LoginError::InvalidCredentials) => {
            return Err(ApiError::invalid("The current password is wrong."));
        }
        Err(e) => return Err(e.into()),
    };
    let new = state
        .policy
        .check(
            secrecy::ExposeSecret::expose_secret(&req.new_password),
            &me.email,
            &me.display_name,
        )
        .map_err(ApiError::invalid)?;
    let hash = state.passwords.hash(SecretString::from(new)).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
        .bind(account.id)
        .bind(&hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    // A TOTP step begun with the old password must not finish with it.
    sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
        .bind(account.id)
        .execute(&mut *tx)
        .await?;
    let ended = session::end_all_but(
        &mut tx,
        account.id,
        Some(user.session.id),
        "password_changed",
        now,
    )
    .await?;
    AuditEvent::new("password.change", Actor::User(account.id), Outcome::Success)
        .source(client.addr)
        .target("user", account.id)
        .detail("sessions_ended", ended)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    state
        .throttle
        .succeeded(&state.ctx.db, &login::subject(&me.email))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
