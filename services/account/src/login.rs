//! Logging in, shared by the JSON API and the login pages.
//!
//! One answer for an unknown e-mail address and a wrong password, in about the same time
//! (an unknown account still costs one Argon2 verification, of a dummy hash), and the
//! same throttling for both. Every attempt is counted before it is checked (see
//! [`crate::throttle`]) and every failure is audited.

use std::net::IpAddr;
use std::time::Duration;

use axum_extra::extract::cookie::CookieJar;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::http::ClientInfo;
use secrecy::SecretString;
use uuid::Uuid;

use crate::AccountState;
use crate::password::Verified;
use crate::session::{self, NewSession};
use crate::totp::{self, SecondFactor};
use printworks_common::email::Email;
use printworks_common::throttle::Gate;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("too many attempts")]
    Throttled(Duration),
    #[error("wrong e-mail address or password")]
    InvalidCredentials,
    #[error("a second factor is required")]
    SecondFactorRequired,
    #[error("wrong second factor")]
    InvalidSecondFactor,
    #[error("this address signs in through its organization's identity provider")]
    FederationRequired,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for LoginError {
    fn from(e: sqlx::Error) -> Self {
        LoginError::Internal(e.into())
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
}

/// The throttle's key: the normalised address, or for input that is no address at all,
/// the trimmed lower-case input (bounded).
pub fn subject(email_input: &str) -> String {
    match Email::parse(email_input) {
        Ok(e) => e.as_str().to_owned(),
        Err(_) => email_input
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| !c.is_control())
            .take(254)
            .collect(),
    }
}

/// What this attempt at `email_input` is counted against: the browser's device, when it
/// proves it logged in to that account before (see [`crate::device`]), else the account
/// itself — so a stranger's failures slow every attempt but the owner's from a browser
/// they used before.
pub fn throttle_subject(state: &AccountState, jar: &CookieJar, email_input: &str) -> String {
    let account = subject(email_input);
    crate::device::proven(state, jar, &account).unwrap_or(account)
}

pub async fn audit_failure(
    state: &AccountState,
    actor: Actor,
    addr: Option<IpAddr>,
    reason: &str,
    email: Option<&str>,
) -> anyhow::Result<()> {
    let mut event = AuditEvent::new("session.login", actor, Outcome::Failure)
        .source(addr)
        .detail("reason", reason);
    if let Some(email) = email {
        event = event.detail("email", email);
    }
    let mut conn = state.ctx.db.acquire().await?;
    event.write(&mut conn, state.ctx.now()).await?;
    Ok(())
}

/// Checks the password. The attempt is counted against `counted` (see
/// [`throttle_subject`]), and may be refused, before the check.
pub async fn check_password(
    state: &AccountState,
    email_input: &str,
    password: SecretString,
    client: &ClientInfo,
    counted: &str,
) -> Result<Account, LoginError> {
    let subject = subject(email_input);
    // An organization that proved the address's domain and enforces its provider:
    // no password, whatever it is (and before it costs a hash or a throttle step).
    if let Ok(email) = Email::parse(email_input)
        && let Some(idp) = crate::federation::signin::provider_for_email(state, &email).await?
        && idp.enforced
    {
        audit_failure(
            state,
            Actor::Anonymous,
            client.addr,
            "federation_required",
            Some(&subject),
        )
        .await?;
        return Err(LoginError::FederationRequired);
    }
    if let Gate::Wait(wait) = state
        .throttle
        .attempt(&state.ctx.db, counted, state.ctx.now())
        .await?
    {
        audit_failure(
            state,
            Actor::Anonymous,
            client.addr,
            "throttled",
            Some(&subject),
        )
        .await?;
        return Err(LoginError::Throttled(wait));
    }
    let account: Option<Account> = sqlx::query_as(
        "SELECT id, email, display_name, password_hash FROM users WHERE lower(email) = lower($1)",
    )
    .bind(&subject)
    .fetch_optional(&state.ctx.db)
    .await?;
    let password = SecretString::from(crate::password::normalise(
        secrecy::ExposeSecret::expose_secret(&password),
    ));
    let verdict = state
        .passwords
        .verify(password, account.as_ref().map(|a| a.password_hash.clone()))
        .await?;
    match (account, verdict) {
        (Some(account), Verified::Yes) => Ok(account),
        (Some(account), Verified::YesRehash(fresh)) => {
            sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                .bind(account.id)
                .bind(&fresh)
                .execute(&state.ctx.db)
                .await?;
            tracing::info!(user_id = %account.id, "password hash upgraded to the current parameters");
            Ok(Account {
                password_hash: fresh,
                ..account
            })
        }
        (Some(account), Verified::No) => {
            audit_failure(
                state,
                Actor::User(account.id),
                client.addr,
                "wrong_password",
                None,
            )
            .await?;
            Err(LoginError::InvalidCredentials)
        }
        (None, _) => {
            audit_failure(
                state,
                Actor::Anonymous,
                client.addr,
                "unknown_account",
                Some(&subject),
            )
            .await?;
            Err(LoginError::InvalidCredentials)
        }
    }
}

/// Checks a second factor of an account whose password was right, consuming it. The
/// caller has counted the attempt (a login request counts once, whichever of its checks
/// fails); a failure is audited.
pub async fn check_second_factor(
    state: &AccountState,
    account: &Account,
    code: &str,
    client: &ClientInfo,
) -> Result<SecondFactor, LoginError> {
    let mut tx = state.ctx.db.begin().await?;
    let factor = totp::verify(&mut tx, state, account.id, code, true, true).await?;
    tx.commit().await?;
    match factor {
        Some(f) => Ok(f),
        None => {
            audit_failure(
                state,
                Actor::User(account.id),
                client.addr,
                "wrong_second_factor",
                None,
            )
            .await?;
            Err(LoginError::InvalidSecondFactor)
        }
    }
}

/// Starts the session of an account that has passed every check, audits it, and clears
/// the throttle subject the attempt was `counted` against.
pub async fn start_session(
    state: &AccountState,
    account: &Account,
    factor: Option<SecondFactor>,
    client: &ClientInfo,
    counted: &str,
) -> Result<NewSession, LoginError> {
    let amr: &[&str] = match factor {
        Some(_) => &["pwd", "otp"],
        None => &["pwd"],
    };
    let mut tx = state.ctx.db.begin().await?;
    let new = session::create(
        &mut tx,
        state,
        account.id,
        amr,
        client.addr,
        client.user_agent.as_deref(),
    )
    .await?;
    let mut event = AuditEvent::new("session.login", Actor::User(account.id), Outcome::Success)
        .source(client.addr)
        .target("session", new.id)
        .detail("amr", amr.join(" "));
    if factor == Some(SecondFactor::RecoveryCode) {
        event = event.detail("recovery_code_used", true);
    }
    event.write(&mut tx, state.ctx.now()).await?;
    tx.commit().await?;
    state.throttle.succeeded(&state.ctx.db, counted).await?;
    Ok(new)
}

/// The whole login of the JSON API: password, then the second factor if TOTP is on.
/// `jar` is the browser's (its device cookie decides what the attempt counts against).
pub async fn login(
    state: &AccountState,
    email_input: &str,
    password: SecretString,
    second_factor: Option<&str>,
    client: &ClientInfo,
    jar: &CookieJar,
) -> Result<(Account, NewSession), LoginError> {
    let counted = throttle_subject(state, jar, email_input);
    let account = check_password(state, email_input, password, client, &counted).await?;
    let factor = if totp::enabled(&state.ctx.db, account.id).await? {
        match second_factor.map(str::trim).filter(|c| !c.is_empty()) {
            None => return Err(LoginError::SecondFactorRequired),
            Some(code) => Some(check_second_factor(state, &account, code, client).await?),
        }
    } else {
        None
    };
    let session = start_session(state, &account, factor, client, &counted).await?;
    Ok((account, session))
}
