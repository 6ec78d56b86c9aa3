//! The organization's security policy: `GET|PUT /org/v1/organizations/{org}/policy`.
//! `require_mfa` (a second factor: TOTP here, or one the provider reports in `amr`),
//! `max_session_age` (seconds since sign-in), `allowed_auth` (`password`, `federation`
//! through the organization's own provider, or `both`) and a system use `notice` shown
//! before sign-in (IEC 62443 CR 1.12). [`enforce`] applies it, read from the database,
//! on every call a person makes in the organization — where the role is read — so a
//! change takes effect at once.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_account::session::{Standing, standing};
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::{Auth, Caller, Subject};
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Path};
use printworks_common::{ApiError, AppContext};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::{membership, relock};

/// Bounds of `max_session_age`, in seconds (five minutes to a year).
pub const MIN_SESSION_AGE: i32 = 300;
pub const MAX_SESSION_AGE: i32 = 31_536_000;
const MAX_NOTICE_CHARS: usize = 2000;

#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub require_mfa: bool,
    /// Seconds after sign-in a session may act here; null: no limit of the
    /// organization's own.
    #[sqlx(rename = "max_session_age_secs")]
    pub max_session_age: Option<i32>,
    /// `password`, `federation` or `both`.
    pub allowed_auth: String,
    pub notice: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            require_mfa: false,
            max_session_age: None,
            allowed_auth: "both".into(),
            notice: None,
        }
    }
}

impl Policy {
    /// Whether a session of this standing may act in organization `org`, or the problem
    /// that says how to comply.
    pub fn check(&self, org: Uuid, s: &Standing, now: OffsetDateTime) -> Result<(), ApiError> {
        let federated_here = s.federated_org == Some(org);
        match self.allowed_auth.as_str() {
            "federation" if !federated_here => {
                return Err(refusal(
                    "organization-requires-federation",
                    "This organization requires sign-in through its identity provider",
                    "Sign out, then sign in with “Sign in with single sign-on” and your organization account.",
                ));
            }
            "password" if s.federated_org.is_some() => {
                return Err(refusal(
                    "organization-requires-password",
                    "This organization requires sign-in with a Printworks password",
                    "Sign out, then sign in with your e-mail address and password.",
                ));
            }
            _ => {}
        }
        if self.require_mfa && !s.has_second_factor_for(org) {
            return Err(refusal(
                "organization-requires-mfa",
                "This organization requires a second factor",
                "Turn on an authenticator app (TOTP) for your account, sign out and sign in again with its code (or sign in through the organization's identity provider with its second factor), then get a new access token.",
            ));
        }
        if let Some(max) = self.max_session_age
            && now - s.created_at > time::Duration::seconds(i64::from(max))
        {
            return Err(refusal(
                "session-too-old",
                "This organization requires a more recent sign-in",
                "Sign out, sign in again, then get a new access token.",
            ));
        }
        Ok(())
    }
}

fn refusal(slug: &'static str, title: &'static str, detail: &str) -> ApiError {
    Problem::new(StatusCode::FORBIDDEN, slug, title)
        .detail(detail.to_owned())
        .into()
}

/// The organization's policy, if it set one.
pub async fn of(db: impl sqlx::PgExecutor<'_>, org: Uuid) -> sqlx::Result<Option<Policy>> {
    sqlx::query_as(
        "SELECT require_mfa, max_session_age_secs, allowed_auth, notice
         FROM org_policies WHERE organization_id = $1",
    )
    .bind(org)
    .fetch_optional(db)
    .await
}

/// Applies the organization's policy to a person's call. An automated client acting on
/// its own is not a person signing in, and is not subject to it.
pub async fn enforce(ctx: &AppContext, org: Uuid, caller: &Caller) -> Result<(), ApiError> {
    match caller.subject {
        Subject::User(user) => {
            enforce_person(&ctx.db, org, user, caller.session_id, ctx.now()).await
        }
        Subject::Client { .. } => Ok(()),
    }
}

/// Whether `user`'s sign-in `session` meets the organization's policy (none set: yes).
pub async fn enforce_person(
    db: &sqlx::PgPool,
    org: Uuid,
    user: Uuid,
    session: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let Some(policy) = of(db, org).await? else {
        return Ok(());
    };
    let session = match session {
        Some(sid) => standing(db, user, sid, now).await?,
        None => None,
    };
    let Some(session) = session else {
        return Err(refusal(
            "session-ended",
            "The sign-in this token came from has ended",
            "Sign in again, then get a new access token.",
        ));
    };
    policy.check(org, &session, now)
}

pub async fn get(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
) -> Result<Json<Policy>, ApiError> {
    membership(&state.ctx, org, &auth).await?;
    Ok(Json(of(&state.ctx.db, org).await?.unwrap_or_default()))
}

pub async fn put(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
    Json(mut req): Json<Policy>,
) -> Result<Json<Policy>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    // How people sign in is for people to decide, not an automated client.
    m.require_person()?;
    if !matches!(
        req.allowed_auth.as_str(),
        "password" | "federation" | "both"
    ) {
        return Err(ApiError::invalid(
            "allowed_auth must be password, federation or both.",
        ));
    }
    if let Some(max) = req.max_session_age
        && !(MIN_SESSION_AGE..=MAX_SESSION_AGE).contains(&max)
    {
        return Err(ApiError::invalid(format!(
            "max_session_age must be {MIN_SESSION_AGE} to {MAX_SESSION_AGE} seconds, or null."
        )));
    }
    req.notice = req
        .notice
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if let Some(n) = &req.notice
        && (n.chars().count() > MAX_NOTICE_CHARS || n.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(ApiError::invalid(format!(
            "notice must be at most {MAX_NOTICE_CHARS} characters of text."
        )));
    }
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let fresh = relock(&mut tx, &m).await?;
    let admin = fresh.require_admin()?;
    let enforced: Option<bool> = sqlx::query_scalar(
        "SELECT enforced FROM org_identity_providers WHERE organization_id = $1",
    )
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    if req.allowed_auth == "federation" && enforced.is_none() {
        return Err(ApiError::invalid(
            "allowed_auth federation needs the organization's identity provider: configure it first (PUT …/sso).",
        ));
    }
    if req.allowed_auth == "password" && enforced == Some(true) {
        return Err(ApiError::invalid(
            "allowed_auth password would leave the addresses the identity provider enforces no way to sign in: turn enforced off first (PUT …/sso).",
        ));
    }
    // The admin setting it must still be able to act under it: no locking oneself out.
    let lock_out = |why: String| -> ApiError {
        Problem::new(
            StatusCode::CONFLICT,
            "policy-would-lock-you-out",
            "Your own sign-in does not meet this policy",
        )
        .detail(why)
        .into()
    };
    let mine = match (auth.user_id(), auth.session_id) {
        (Some(user), Some(sid)) => standing(&mut *tx, user, sid, now).await?,
        _ => None,
    };
    let Some(mine) = mine else {
        return Err(lock_out(
            "The sign-in your token came from has ended: sign in again, then set the policy."
                .into(),
        ));
    };
    if let Err(refused) = req.check(org, &mine, now) {
        return Err(lock_out(format!(
            "You could no longer act in this organization ({refused}). Meet the policy first, then set it."
        )));
    }
    sqlx::query(
        "INSERT INTO org_policies (organization_id, require_mfa, max_session_age_secs,
                                   allowed_auth, notice, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (organization_id) DO UPDATE SET require_mfa = $2,
             max_session_age_secs = $3, allowed_auth = $4, notice = $5, updated_at = $6",
    )
    .bind(org)
    .bind(req.require_mfa)
    .bind(req.max_session_age)
    .bind(&req.allowed_auth)
    .bind(&req.notice)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    AuditEvent::new("organization.policy", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .detail("require_mfa", req.require_mfa)
        .detail("max_session_age", req.max_session_age)
        .detail("allowed_auth", req.allowed_auth.as_str())
        .detail("notice_set", req.notice.is_some())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(Json(req))
}
