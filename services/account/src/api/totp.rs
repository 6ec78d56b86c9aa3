//! TOTP enrolment: `POST /account/v1/totp {password}` (start; the password again, so a
//! stolen session cannot take the account over), `POST /account/v1/totp/confirm {code}`
//! (turns it on, returns recovery codes), `POST /account/v1/totp/disable {code}` (a
//! current code, or a recovery code for someone who lost the authenticator).
//!
//! Every password or code tried here counts in the account's throttle; a success here
//! does not clear it (only a login does), so these routes cannot be used to reset it.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::http::{ClientInfo, Json};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::users::find_user;
use crate::AccountState;
use crate::login::{self, LoginError};
use crate::session::SessionUser;
use crate::totp;
use printworks_common::throttle::Gate;

#[derive(Deserialize)]
pub(crate) struct Enrol {
    password: SecretString,
}

#[derive(Serialize)]
pub(crate) struct Enrolment {
    secret: String,
    otpauth_uri: String,
    /// The otpauth URI as a QR code: a PNG, base64.
    qr_png: String,
}

pub(crate) async fn enrol(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Json(req): Json<Enrol>,
) -> Result<(StatusCode, Json<Enrolment>), ApiError> {
    let me = find_user(&state, user.user_id()).await?;
    match login::check_password(
        &state,
        &me.email,
        req.password,
        &client,
        &login::subject(&me.email),
    )
    .await
    {
        Ok(_) => {
            state
                .throttle
                .refund(&state.ctx.db, &login::subject(&me.email))
                .await?;
        }
        Err(LoginError::InvalidCredentials) => {
            return Err(ApiError::invalid("The password is wrong."));
        }
        Err(e) => return Err(e.into()),
    }
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
    let stored = sqlx::query(
        "INSERT INTO totp_credentials (user_id, secret_sealed, created_at)
         VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET secret_sealed = $2, created_at = $3, last_used_step = NULL
         WHERE totp_credentials.confirmed_at IS NULL",
    )
    .bind(me.id)
    .bind(totp::seal(&state, me.id, &secret))
    .bind(state.ctx.now())
    .execute(&state.ctx.db)
    .await?
    .rows_affected();
    if stored == 0 {
        return Err(ApiError::conflict("TOTP was turned on meanwhile."));
    }
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
pub(crate) struct Code {
    code: String,
}

#[derive(Serialize)]
pub(crate) struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// Counts the attempt in the account's throttle (refusing it while the account must
/// wait) and bounds the code's length. Returns the throttle's key, for the refund.
async fn count_attempt(
    state: &AccountState,
    user: &SessionUser,
    code: &str,
) -> Result<String, ApiError> {
    if code.len() > 32 {
        return Err(ApiError::invalid("The code is too long."));
    }
    let me = find_user(state, user.user_id()).await?;
    let subject = login::subject(&me.email);
    match state
        .throttle
        .attempt(&state.ctx.db, &subject, state.ctx.now())
        .await?
    {
        Gate::Allowed => Ok(subject),
        Gate::Wait(wait) => Err(LoginError::Throttled(wait).into()),
    }
}

async fn audit_wrong_code(
    state: &AccountState,
    user: &SessionUser,
    client: &ClientInfo,
    action: &'static str,
) -> Result<(), ApiError> {
    let mut conn = state.ctx.db.acquire().await?;
    AuditEvent::new(action, Actor::User(user.user_id()), Outcome::Failure)
        .source(client.addr)
        .detail("reason", "wrong_code")
        .write(&mut conn, state.ctx.now())
        .await?;
    Ok(())
}

fn wrong_code() -> ApiError {
    ApiError::invalid("The code is wrong or was already used.")
}

/// Checks the code of the pending enrolment and turns TOTP on, in one transaction under
/// the credential's row lock: a concurrent enrolment cannot swap the secret in between,
/// and two confirmations cannot both hand out recovery codes.
pub(crate) async fn confirm(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Json(req): Json<Code>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let subject = count_attempt(&state, &user, &req.code).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let pending: Option<bool> = sqlx::query_scalar(
        "SELECT confirmed_at IS NULL FROM totp_credentials WHERE user_id = $1 FOR UPDATE",
    )
    .bind(user.user_id())
    .fetch_optional(&mut *tx)
    .await?;
    if pending != Some(true) {
        return Err(ApiError::conflict(
            "There is no TOTP enrolment to confirm. Start one first.",
        ));
    }
    if totp::verify(&mut tx, &state, user.user_id(), &req.code, false, false)
        .await?
        .is_none()
    {
        drop(tx);
        audit_wrong_code(&state, &user, &client, "totp.enable").await?;
        return Err(wrong_code());
    }
    sqlx::query("UPDATE totp_credentials SET confirmed_at = $2 WHERE user_id = $1")
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
    state.throttle.refund(&state.ctx.db, &subject).await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

pub(crate) async fn disable(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Json(req): Json<Code>,
) -> Result<StatusCode, ApiError> {
    if !totp::enabled(&state.ctx.db, user.user_id()).await? {
        return Err(ApiError::conflict("TOTP is not on."));
    }
    let subject = count_attempt(&state, &user, &req.code).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let Some(factor) = totp::verify(&mut tx, &state, user.user_id(), &req.code, true, true).await?
    else {
        drop(tx);
        audit_wrong_code(&state, &user, &client, "totp.disable").await?;
        return Err(wrong_code());
    };
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
    .detail(
        "with",
        if factor == totp::SecondFactor::RecoveryCode {
            "recovery_code"
        } else {
            "totp"
        },
    )
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    state.throttle.refund(&state.ctx.db, &subject).await?;
    Ok(StatusCode::NO_CONTENT)
}
