//! TOTP enrolment: `POST /account/v1/totp` (start), `POST /account/v1/totp/confirm`
//! (turns it on, returns recovery codes), `POST /account/v1/totp/disable` (needs a
//! current code). Wrong codes count in the account's throttle.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::http::{ClientInfo, Json};
use serde::{Deserialize, Serialize};

use super::users::find_user;
use crate::AccountState;
use crate::login::{self, LoginError};
use crate::session::SessionUser;
use crate::throttle::Gate;
use crate::totp::{self, SecondFactor};

pub fn limited_router() -> Router<AccountState> {
    Router::new()
        .route("/totp", post(enrol))
        .route("/totp/confirm", post(confirm))
        .route("/totp/disable", post(disable))
}

#[derive(Serialize)]
struct Enrolment {
    secret: String,
    otpauth_uri: String,
    /// The otpauth URI as a QR code: a PNG, base64.
    qr_png: String,
}

async fn enrol(
    State(state): State<AccountState>,
    user: SessionUser,
) -> Result<(StatusCode, Json<Enrolment>), ApiError> {
    let me = find_user(&state, user.user_id()).await?;
    if me.totp_enabled {
        return Err(ApiError::conflict(
            "TOTP is already on. Turn it off first to enrol a new authenticator.",
        ));
    }
    let secret = totp::new_secret();
    let t = totp::build(&secret, &me.email)?;
    let uri = t
        .to_url()
        .map_err(|e| anyhow::anyhow!("otpauth URI: {e}"))?;
    let png = totp::qr_png(&uri)?;
    sqlx::query(
        "INSERT INTO totp_credentials (user_id, secret_sealed, created_at)
         VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET secret_sealed = $2, created_at = $3, last_used_step = NULL
         WHERE totp_credentials.confirmed_at IS NULL",
    )
    .bind(me.id)
    .bind(totp::seal(&state, me.id, &secret))
    .bind(state.ctx.now())
    .execute(&state.ctx.db)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Enrolment {
            secret: totp::base32(&secret),
            otpauth_uri: uri,
            qr_png: base64_std(&png),
        }),
    ))
}

/// Images in JSON use the standard base64 alphabet (as `data:` URLs do).
fn base64_std(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[derive(Deserialize)]
struct Code {
    code: String,
}

#[derive(Serialize)]
struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// Counts the attempt in the account's throttle, then checks the code.
async fn check_code(
    state: &AccountState,
    user: &SessionUser,
    client: &ClientInfo,
    code: &str,
    confirmed: bool,
) -> Result<Option<SecondFactor>, ApiError> {
    if code.len() > 32 {
        return Err(ApiError::invalid("The code is too long."));
    }
    let me = find_user(state, user.user_id()).await?;
    let subject = login::subject(&me.email);
    if let Gate::Wait(wait) = state
        .throttle
        .attempt(&state.ctx.db, &subject, state.ctx.now())
        .await?
    {
        return Err(LoginError::Throttled(wait).into());
    }
    let mut tx = state.ctx.db.begin().await?;
    let ok = totp::verify(&mut tx, state, me.id, code, false, confirmed).await?;
    tx.commit().await?;
    if ok.is_some() {
        state.throttle.succeeded(&state.ctx.db, &subject).await?;
    } else {
        let mut conn = state.ctx.db.acquire().await?;
        AuditEvent::new(
            if confirmed {
                "totp.disable"
            } else {
                "totp.enable"
            },
            Actor::User(me.id),
            Outcome::Failure,
        )
        .source(client.addr)
        .detail("reason", "wrong_code")
        .write(&mut conn, state.ctx.now())
        .await?;
    }
    Ok(ok)
}

async fn confirm(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Json(req): Json<Code>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let pending: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM totp_credentials WHERE user_id = $1 AND confirmed_at IS NULL)",
    )
    .bind(user.user_id())
    .fetch_one(&state.ctx.db)
    .await?;
    if !pending {
        return Err(ApiError::conflict(
            "There is no TOTP enrolment to confirm. Start one first.",
        ));
    }
    if check_code(&state, &user, &client, &req.code, false)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid("The code is wrong or was already used."));
    }
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query(
        "UPDATE totp_credentials SET confirmed_at = $2 WHERE user_id = $1 AND confirmed_at IS NULL",
    )
    .bind(user.user_id())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let codes = totp::replace_recovery_codes(&mut tx, user.user_id(), now).await?;
    AuditEvent::new("totp.enable", Actor::User(user.user_id()), Outcome::Success)
        .source(client.addr)
        .target("user", user.user_id())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

async fn disable(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Json(req): Json<Code>,
) -> Result<StatusCode, ApiError> {
    if !totp::enabled(&state.ctx.db, user.user_id()).await? {
        return Err(ApiError::conflict("TOTP is not on."));
    }
    if check_code(&state, &user, &client, &req.code, true)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid("The code is wrong or was already used."));
    }
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query("DELETE FROM totp_credentials WHERE user_id = $1")
        .bind(user.user_id())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user.user_id())
        .execute(&mut *tx)
        .await?;
    AuditEvent::new(
        "totp.disable",
        Actor::User(user.user_id()),
        Outcome::Success,
    )
    .source(client.addr)
    .target("user", user.user_id())
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
