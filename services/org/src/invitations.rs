//! Invitations: `POST …/{org}/invitations {email, role}` (admins) → the token, shown this
//! once, stored as SHA-256, e-mailed through the outbox; `GET …/{org}/invitations`
//! (pending ones); `DELETE …/{org}/invitations/{id}` (revoke); and
//! `POST /org/v1/invitations/accept {token}`, which joins the signed-in person — only
//! the person the invitation was addressed to, once, before it expires.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Auth, Role};
use printworks_common::crypto::{random_token, token_digest};
use printworks_common::email::Email;
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::{forbidden, membership};
use printworks_common::mail;

/// Invitations an organization may have waiting at once (each one sends an e-mail to
/// an address of the inviter's choosing: this is not a mailing service).
pub const MAX_PENDING: i64 = 100;
/// Invitations an organization may send in 24 hours, revoked ones included (revoking
/// and inviting again would otherwise send mail without end).
pub const MAX_PER_DAY: i64 = 200;

#[derive(Deserialize)]
pub struct Invite {
    email: String,
    role: String,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct InvitationView {
    id: Uuid,
    email: String,
    role: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

#[derive(Serialize)]
pub struct Created {
    #[serde(flatten)]
    invitation: InvitationView,
    /// Shown this once.
    token: String,
}

/// What an invitation's e-mail is about, in the outbox.
pub fn invitation_topic(id: Uuid) -> String {
    format!("invitation:{id}")
}

pub async fn create(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
    Json(req): Json<Invite>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let admin = m.require_admin()?;
    // A person invites: the invitation names them, and goes when they stop being an
    // admin. (An automated client's invitation would outlive any accountable person.)
    m.require_person()?;
    let email = Email::parse(&req.email).map_err(ApiError::invalid)?;
    let role = Role::parse(&req.role)
        .ok_or_else(|| ApiError::invalid("role must be admin, member or guest."))?;
    let existing =
        printworks_account::directory::find_by_email(&state.ctx.db, email.as_str()).await?;
    let already = match existing {
        Some(user) => crate::role_of(&state.ctx.db, org, user).await?.is_some(),
        None => false,
    };
    if already {
        return Err(ApiError::conflict("This person is already a member."));
    }
    let token = random_token();
    let id = Uuid::new_v4();
    let now = state.ctx.now();
    let ttl = time::Duration::try_from(state.ctx.settings.org.invitation_ttl)
        .unwrap_or(time::Duration::days(7));
    let mut tx = state.ctx.db.begin().await?;
    // Under the organization's lock: the cap holds against concurrent invitations,
    // and an admin demoted or removed a moment ago (whose pending invitations were
    // withdrawn under the same lock) cannot add one after.
    let org_name: String =
        sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1 FOR UPDATE")
            .bind(org)
            .fetch_one(&mut *tx)
            .await?;
    crate::access::relock(&mut tx, &m).await?.require_admin()?;
    let (pending, today, oldest): (i64, i64, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2),
                count(*) FILTER (WHERE created_at > $3),
                min(created_at) FILTER (WHERE created_at > $3)
         FROM invitations WHERE organization_id = $1",
    )
    .bind(org)
    .bind(now)
    .bind(now - time::Duration::days(1))
    .fetch_one(&mut *tx)
    .await?;
    if pending >= MAX_PENDING {
        return Err(ApiError::conflict(format!(
            "At most {MAX_PENDING} invitations may wait at once; revoke some first."
        )));
    }
    if today >= MAX_PER_DAY {
        // When the oldest of the day's invitations leaves the 24-hour window.
        let wait = oldest.map_or(time::Duration::HOUR, |t| t + time::Duration::days(1) - now);
        return Err(ApiError::too_many_requests(
            std::time::Duration::try_from(wait).unwrap_or(std::time::Duration::from_secs(60)),
        ));
    }
    let invitation: InvitationView = sqlx::query_as(
        "INSERT INTO invitations (id, organization_id, email, role, token_hash, invited_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, email, role, created_at, expires_at",
    )
    .bind(id)
    .bind(org)
    .bind(email.as_str())
    .bind(role.as_str())
    .bind(token_digest(&token))
    .bind(admin.user_id())
    .bind(now)
    .bind(now + ttl)
    .fetch_one(&mut *tx)
    .await?;
    let body = format!(
        "You are invited to join {org_name} on Printworks as {role}.\r\n\r\n\
         Sign in at {base}/account/login and accept the invitation with this token \
         (the Printworks CLI does it for you):\r\n\r\n    {token}\r\n\r\n\
         It works once, for {email}, until {expires}.\r\n",
        base = state.ctx.settings.public_url,
        expires = invitation
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    );
    mail::enqueue(
        &mut tx,
        &state.ctx.secrets,
        email.as_str(),
        &format!("Invitation to {org_name} on Printworks"),
        &body,
        Some(&invitation_topic(id)),
        now,
    )
    .await?;
    AuditEvent::new("invitation.create", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("invitation", id)
        .detail("email", email.as_str())
        .detail("role", role.as_str())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    state.ctx.outbox.queued();
    Ok((StatusCode::CREATED, Json(Created { invitation, token })))
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<InvitationView>>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<InvitationView> = sqlx::query_as(
        "SELECT id, email, role, created_at, expires_at FROM invitations
         WHERE organization_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(org)
    .bind(state.ctx.now())
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |i| (i.created_at, i.id))))
}

pub async fn revoke(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let admin = m.require_admin()?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let revoked = sqlx::query(
        "UPDATE invitations SET revoked_at = $3
         WHERE id = $1 AND organization_id = $2 AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(org)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if revoked == 0 {
        return Err(ApiError::not_found());
    }
    // Its e-mail, if it still waits, goes with it.
    mail::cancel(&mut tx, &invitation_topic(id), now).await?;
    AuditEvent::new("invitation.revoke", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("invitation", id)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Accept {
    token: String,
}

#[derive(Serialize)]
pub struct Accepted {
    organization_id: Uuid,
    role: String,
}

pub async fn accept(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Json(req): Json<Accept>,
) -> Result<Json<Accepted>, ApiError> {
    let Some(user_id) = auth.user_id() else {
        return Err(forbidden("An invitation is accepted by a person."));
    };
    // Unknown, expired, used or revoked: one answer.
    let gone = || {
        printworks_common::error::Problem::new(
            StatusCode::NOT_FOUND,
            "invitation-not-found",
            "No such invitation, or it expired or was used",
        )
        .into()
    };
    if req.token.is_empty() || req.token.len() > 100 {
        return Err(gone());
    }
    let now = state.ctx.now();
    let found: Option<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT id, organization_id, email FROM invitations
         WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(token_digest(&req.token))
    .bind(now)
    .fetch_optional(&state.ctx.db)
    .await?;
    let Some((id, org, email)) = found else {
        return Err(gone());
    };
    let me = printworks_account::directory::profile(&state.ctx.db, user_id)
        .await?
        .ok_or_else(gone)?;
    if !me.email.eq_ignore_ascii_case(&email) {
        let mut conn = state.ctx.db.acquire().await?;
        AuditEvent::new("invitation.accept", Actor::User(user_id), Outcome::Failure)
            .organization(org)
            .source(client.addr)
            .target("invitation", id)
            .detail("reason", "wrong_person")
            .write(&mut conn, now)
            .await?;
        return Err(forbidden("This invitation is addressed to someone else."));
    }
    // The organization's lock first, then the invitation's (the order member changes,
    // which withdraw invitations, take them in), and the invitation read again: it
    // may have been used, revoked or withdrawn meanwhile.
    let mut tx = state.ctx.db.begin().await?;
    crate::access::lock_org(&mut tx, org).await?;
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM invitations
         WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2
         FOR UPDATE",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(role) = role else {
        return Err(gone());
    };
    let joined = sqlx::query(
        "INSERT INTO organization_members (organization_id, user_id, role, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(org)
    .bind(user_id)
    .bind(&role)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if joined == 0 {
        return Err(ApiError::conflict(
            "You are already a member of this organization.",
        ));
    }
    sqlx::query("UPDATE invitations SET accepted_at = $2, accepted_by = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    AuditEvent::new("invitation.accept", Actor::User(user_id), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("invitation", id)
        .detail("role", role.as_str())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(Json(Accepted {
        organization_id: org,
        role,
    }))
}
