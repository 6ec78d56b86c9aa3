//! E-mail addresses are verified: sign-up sends a link through the outbox (its token a
//! 256-bit secret, stored as SHA-256, valid [`LINK_TTL`], good once); following it
//! (`GET /account/verify-email?token=…`) marks the address verified. Until then the
//! account may sign in and look around, but not create organizations, claim printers
//! or register clients ([`require`], which those services call): an address nobody has
//! shown they receive mail at must not own anything. `POST
//! /account/v1/users/me/email-verification` sends the link again (at most once a
//! minute, [`MAX_PER_DAY`] a day), withdrawing one that still waits to be sent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::crypto::{random_token, token_digest};
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Query};
use printworks_common::{ApiError, mail};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AccountState;
use crate::pages::message;
use crate::session::SessionUser;

/// How long a verification link works.
pub const LINK_TTL: time::Duration = time::Duration::hours(24);
/// A new link is sent at most this often…
pub const RESEND_SPACING: time::Duration = time::Duration::minutes(1);
/// …and at most this many a day.
pub const MAX_PER_DAY: i64 = 10;

fn topic(user: Uuid) -> String {
    format!("verify-email:{user}")
}

/// Sends `email` a verification link for `user` (in the caller's transaction; wake the
/// outbox after the commit). A link of the same account still waiting to be sent is
/// withdrawn: one message at a time.
pub async fn send(
    conn: &mut PgConnection,
    state: &AccountState,
    user: Uuid,
    email: &str,
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    let token = random_token();
    sqlx::query(
        "INSERT INTO email_verifications (token_hash, user_id, email, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_digest(&token))
    .bind(user)
    .bind(email)
    .bind(now)
    .bind(now + LINK_TTL)
    .execute(&mut *conn)
    .await?;
    mail::cancel(&mut *conn, &topic(user), now).await?;
    let link = format!(
        "{}/account/verify-email?token={token}",
        state.ctx.settings.public_url
    );
    let body = format!(
        "Confirm that this is your e-mail address for Printworks by opening this link \
         (it works once, for 24 hours):\r\n\r\n    {link}\r\n\r\n\
         Until then you can sign in, but not create organizations, add printers or \
         register applications. If you did not sign up, ignore this message.\r\n"
    );
    mail::enqueue(
        conn,
        &state.ctx.secrets,
        email,
        "Confirm your e-mail address for Printworks",
        &body,
        Some(&topic(user)),
        now,
    )
    .await?;
    Ok(())
}

/// Whether the person's address is verified.
pub async fn verified(db: impl sqlx::PgExecutor<'_>, user: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT email_verified_at IS NOT NULL FROM users WHERE id = $1",
    )
    .bind(user)
    .fetch_optional(db)
    .await?
    .unwrap_or(false))
}

/// 403 `email-unverified` unless the person's address is verified.
pub async fn require(db: impl sqlx::PgExecutor<'_>, user: Uuid) -> Result<(), ApiError> {
    if verified(db, user).await? {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "email-unverified",
        "Confirm your e-mail address first",
    )
    .detail(
        "Open the link we e-mailed you when you signed up (or ask for a new one with \
         POST /account/v1/users/me/email-verification); until then you cannot create \
         organizations, add printers or register applications.",
    )
    .into())
}

#[derive(Deserialize)]
pub struct Link {
    token: Option<String>,
}

/// `GET /account/verify-email?token=…`: the link in the e-mail.
pub async fn follow(
    State(state): State<AccountState>,
    client: ClientInfo,
    Query(link): Query<Link>,
) -> Result<Response, ApiError> {
    let invalid = || {
        message(
            StatusCode::BAD_REQUEST,
            "This link does not work",
            "It is unknown, was used already, or expired (links work for 24 hours). Sign in and ask for a new one.",
            Some(("/account/login", "Sign in")),
        )
    };
    let Some(token) = link.token.filter(|t| !t.is_empty() && t.len() <= 100) else {
        return Ok(invalid());
    };
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let found: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE email_verifications SET used_at = $2
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
         RETURNING user_id, email",
    )
    .bind(token_digest(&token))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user, email)) = found else {
        return Ok(invalid());
    };
    // Only the address the link was sent to: one the account no longer has stays as it is.
    let marked = sqlx::query(
        "UPDATE users SET email_verified_at = coalesce(email_verified_at, $3)
         WHERE id = $1 AND lower(email) = lower($2)",
    )
    .bind(user)
    .bind(&email)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if marked == 0 {
        return Ok(invalid());
    }
    AuditEvent::new("user.email_verify", Actor::User(user), Outcome::Success)
        .source(client.addr)
        .target("user", user)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(message(
        StatusCode::OK,
        "Your e-mail address is confirmed",
        "Thank you. You can now create organizations, add printers and register applications.",
        Some(("/account/", "Continue")),
    ))
}

#[derive(Serialize)]
pub struct Sent {
    sent: bool,
}

/// `POST /account/v1/users/me/email-verification`: the link again.
pub async fn resend(
    State(state): State<AccountState>,
    user: SessionUser,
) -> Result<(StatusCode, Json<Sent>), ApiError> {
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let row: Option<(String, Option<OffsetDateTime>)> =
        sqlx::query_as("SELECT email, email_verified_at FROM users WHERE id = $1 FOR UPDATE")
            .bind(user.user_id())
            .fetch_optional(&mut *tx)
            .await?;
    let (email, verified_at) = row.ok_or_else(ApiError::not_found)?;
    if verified_at.is_some() {
        return Err(ApiError::conflict(
            "Your e-mail address is confirmed already.",
        ));
    }
    let (today, last): (i64, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT count(*), max(created_at) FROM email_verifications
         WHERE user_id = $1 AND created_at > $2",
    )
    .bind(user.user_id())
    .bind(now - time::Duration::days(1))
    .fetch_one(&mut *tx)
    .await?;
    let wait = match last {
        Some(last) if last + RESEND_SPACING > now => Some(last + RESEND_SPACING - now),
        _ if today >= MAX_PER_DAY => Some(time::Duration::hours(1)),
        _ => None,
    };
    if let Some(wait) = wait {
        return Err(ApiError::too_many_requests(
            std::time::Duration::try_from(wait).unwrap_or(std::time::Duration::from_secs(60)),
        ));
    }
    send(&mut tx, &state, user.user_id(), &email, now).await?;
    tx.commit().await?;
    state.ctx.outbox.queued();
    Ok((StatusCode::ACCEPTED, Json(Sent { sent: true })))
}
