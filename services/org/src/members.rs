//! Members: `GET …/{org}/members` (admins and members), `PATCH …/{org}/members/{user}
//! {role}` (admins), `DELETE …/{org}/members/{user}` (admins, or anyone leaving).
//! The last admin can be neither demoted nor removed, nor leave: membership changes
//! lock the organization's row, so two admins demoting each other at once cannot both
//! succeed.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::{Auth, Role};
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::{Allowed, lock_org, membership, relock};

#[derive(Serialize)]
pub struct MemberView {
    user_id: Uuid,
    email: String,
    display_name: String,
    role: String,
    #[serde(with = "time::serde::rfc3339")]
    joined_at: OffsetDateTime,
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<MemberView>>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_writer()?;
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<(Uuid, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT user_id, role, created_at FROM organization_members
         WHERE organization_id = $1 AND ($2::timestamptz IS NULL OR (created_at, user_id) < ($2, $3))
         ORDER BY created_at DESC, user_id DESC LIMIT $4",
    )
    .bind(org)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let profiles = printworks_account::directory::profiles(&state.ctx.db, &ids).await?;
    let items = rows
        .into_iter()
        .filter_map(|(user_id, role, joined_at)| {
            let p = profiles.get(&user_id)?;
            Some(MemberView {
                user_id,
                email: p.email.clone(),
                display_name: p.display_name.clone(),
                role,
                joined_at,
            })
        })
        .collect();
    Ok(Json(page.finish(items, |v| (v.joined_at, v.user_id))))
}

/// Every current member of the organization with when they joined, in no particular
/// order: what the audit log's queries need to show admins the members' own events
/// (`printworks_common::audit::events`). As many rows as the organization has members
/// (there is no limit on that).
pub async fn joined(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
) -> sqlx::Result<Vec<(Uuid, OffsetDateTime)>> {
    sqlx::query_as(
        "SELECT user_id, created_at FROM organization_members WHERE organization_id = $1",
    )
    .bind(org)
    .fetch_all(db)
    .await
}

/// Locks the organization (serialising membership changes) and counts its admins.
async fn lock_and_count_admins(conn: &mut PgConnection, org: Uuid) -> sqlx::Result<i64> {
    lock_org(&mut *conn, org).await?;
    sqlx::query_scalar(
        "SELECT count(*) FROM organization_members WHERE organization_id = $1 AND role = 'admin'",
    )
    .bind(org)
    .fetch_one(&mut *conn)
    .await
}

/// What a person who is no longer an admin (removed, left or demoted) had granted in
/// the organization is withdrawn with it: the OAuth clients they registered (which may
/// act with an admin's role) and the invitations they sent that are still pending.
/// Each withdrawal is audited.
async fn withdraw_grants(
    conn: &mut PgConnection,
    m: &Allowed<'_>,
    user: Uuid,
    source: Option<std::net::IpAddr>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    for client in printworks_account::oauth::clients::registered_by(&mut *conn, m.org, user).await?
    {
        printworks_account::oauth::clients::revoke(&mut *conn, &client, now).await?;
        AuditEvent::new("oauth_client.revoke", m.audit_actor(), Outcome::Success)
            .organization(m.org)
            .source(source)
            .target("oauth_client", &client)
            .detail("reason", reason)
            .write(&mut *conn, now)
            .await?;
    }
    let invitations: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE invitations SET revoked_at = $3
         WHERE organization_id = $1 AND invited_by = $2 AND accepted_at IS NULL AND revoked_at IS NULL
         RETURNING id",
    )
    .bind(m.org)
    .bind(user)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for id in invitations {
        printworks_common::mail::cancel(&mut *conn, &crate::invitations::invitation_topic(id), now)
            .await?;
        AuditEvent::new("invitation.revoke", m.audit_actor(), Outcome::Success)
            .organization(m.org)
            .source(source)
            .target("invitation", id)
            .detail("reason", reason)
            .write(&mut *conn, now)
            .await?;
    }
    Ok(())
}

fn last_admin() -> ApiError {
    ApiError::conflict("This is the organization's last admin. Make someone else an admin first.")
}

#[derive(Deserialize)]
pub struct ChangeRole {
    role: String,
}

pub async fn change_role(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, user)): Path<(Uuid, Uuid)>,
    Json(req): Json<ChangeRole>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    let new = Role::parse(&req.role)
        .ok_or_else(|| ApiError::invalid("role must be admin, member or guest."))?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let admins = lock_and_count_admins(&mut tx, org).await?;
    let fresh = relock(&mut tx, &m).await?;
    let admin = fresh.require_admin()?;
    let old = crate::role_of(&mut *tx, org, user)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if old == Role::Admin && new != Role::Admin && admins <= 1 {
        return Err(last_admin());
    }
    if old != new {
        sqlx::query(
            "UPDATE organization_members SET role = $3 WHERE organization_id = $1 AND user_id = $2",
        )
        .bind(org)
        .bind(user)
        .bind(new.as_str())
        .execute(&mut *tx)
        .await?;
        AuditEvent::new("member.role_change", admin.audit_actor(), Outcome::Success)
            .organization(org)
            .source(client.addr)
            .target("user", user)
            .detail("from", old.as_str())
            .detail("to", new.as_str())
            .write(&mut tx, now)
            .await?;
        if old == Role::Admin {
            withdraw_grants(
                &mut tx,
                &admin.into(),
                user,
                client.addr,
                "registrar_no_longer_admin",
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Json(
        serde_json::json!({ "user_id": user, "role": new.as_str() }),
    ))
}

pub async fn remove(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, user)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let leaving = m.user_id() == Some(user);
    let allowed = m.require_admin_or_self(user)?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let admins = lock_and_count_admins(&mut tx, org).await?;
    if !leaving {
        relock(&mut tx, &m).await?.require_admin()?;
    }
    let role: Option<String> = sqlx::query_scalar(
        "DELETE FROM organization_members WHERE organization_id = $1 AND user_id = $2 RETURNING role",
    )
    .bind(org)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(role) = role else {
        return Err(ApiError::not_found());
    };
    if role == "admin" && admins <= 1 {
        return Err(last_admin());
    }
    // What they held in the organization goes with them.
    sqlx::query(
        "DELETE FROM team_members WHERE user_id = $2 AND team_id IN (SELECT id FROM teams WHERE organization_id = $1)",
    )
    .bind(org)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM printer_shares WHERE grantee_type = 'user' AND grantee_id = $2
           AND printer_id IN (SELECT id FROM printers WHERE organization_id = $1)",
    )
    .bind(org)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM project_shares WHERE grantee_type = 'user' AND grantee_id = $2
           AND project_id IN (SELECT id FROM projects WHERE organization_id = $1)",
    )
    .bind(org)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    AuditEvent::new(
        if leaving {
            "member.leave"
        } else {
            "member.remove"
        },
        allowed.audit_actor(),
        Outcome::Success,
    )
    .organization(org)
    .source(client.addr)
    .target("user", user)
    .detail("role", role)
    .write(&mut tx, now)
    .await?;
    let reason = if leaving {
        "registrar_left"
    } else {
        "registrar_removed"
    };
    withdraw_grants(&mut tx, &allowed, user, client.addr, reason, now).await?;
    // Their printer upload keys here go too: coming back does not revive them.
    state.jobs.member_left(&mut tx, org, user, now).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct SessionsEnded {
    ended: u64,
}

/// `DELETE …/members/{user}/sessions`: an admin signs a member out everywhere (every
/// session ends, every refresh token is revoked) — for an account the organization
/// manages: one whose address is in a domain it proved. Another person's own account is
/// theirs: 403.
pub async fn end_sessions(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, user)): Path<(Uuid, Uuid)>,
) -> Result<Json<SessionsEnded>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    m.require_person()?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let admin_m = relock(&mut tx, &m).await?;
    let admin = admin_m.require_admin()?;
    if crate::role_of(&mut *tx, org, user).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let email = printworks_account::directory::profile(&state.ctx.db, user)
        .await?
        .map(|p| p.email)
        .unwrap_or_default();
    let domain = printworks_common::email::domain_of(&email);
    if !crate::sso::proves(&mut *tx, org, domain).await? {
        return Err(crate::access::forbidden(
            "Only accounts the organization manages (with an address in a domain it proved) can be signed out by its admins. Remove the member instead.",
        ));
    }
    let ended =
        printworks_account::session::end_all_but(&mut tx, user, None, "ended_by_admin", now)
            .await?;
    AuditEvent::new(
        "member.sessions_ended",
        admin.audit_actor(),
        Outcome::Success,
    )
    .organization(org)
    .source(client.addr)
    .target("user", user)
    .detail("sessions", ended)
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(Json(SessionsEnded { ended }))
}
