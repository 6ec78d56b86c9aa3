//! Teams: `GET …/{org}/teams` (admins and members see all; guests the teams they are
//! in), `POST …/{org}/teams {name}` (admins and members), `GET …/{org}/teams/{team}`,
//! `DELETE …/{org}/teams/{team}`, and `PUT|DELETE …/{org}/teams/{team}/members/{user}`.
//!
//! A team is managed by the person who made it (while they are an admin or a member) and
//! by the organization's admins: only they add people to it, remove people from it or
//! delete it — anyone else could join a team to inherit what is shared with it. Anyone
//! may leave a team. Who may manage is read again under the organization's lock, and a
//! person is added only if they still belong to the organization under that same lock
//! (removing someone from the organization takes it too): an addition cannot slip in
//! beside a removal.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::Auth;
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::{Membership, membership};
use crate::organizations::Name;
use printworks_common::names::checked_name;

/// The most people a team holds.
pub const MAX_TEAM_SIZE: i64 = 1000;

#[derive(Serialize, sqlx::FromRow)]
pub struct TeamView {
    id: Uuid,
    name: String,
    member_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

#[derive(Serialize)]
pub struct TeamDetail {
    #[serde(flatten)]
    team: TeamView,
    members: Vec<printworks_account::directory::Profile>,
}

/// Whether the caller manages `team` now: an admin, or its creator while an admin or a
/// member. Read on `conn`, which holds the organization's lock (taken here). 404 if the
/// team is gone or the caller no longer belongs; 403 if they may not manage it.
async fn lock_and_require_manager(
    conn: &mut sqlx::PgConnection,
    m: &Membership,
    team: Uuid,
) -> Result<(), ApiError> {
    let fresh = crate::access::relock(&mut *conn, m).await?;
    let created_by: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT created_by FROM teams WHERE id = $1 AND organization_id = $2")
            .bind(team)
            .bind(m.org)
            .fetch_optional(&mut *conn)
            .await?;
    let created_by = created_by.ok_or_else(ApiError::not_found)?;
    fresh.require_admin_or_maker(
        created_by,
        "Only the team's creator and the organization's admins manage a team.",
    )?;
    Ok(())
}

/// The team, if it is in `org` and the caller may see it.
async fn visible_team(state: &OrgState, m: &Membership, team: Uuid) -> Result<TeamView, ApiError> {
    let guest_user = m.guest_scope();
    let row: Option<TeamView> = sqlx::query_as(
        "SELECT t.id, t.name, (SELECT count(*) FROM team_members x WHERE x.team_id = t.id) AS member_count, t.created_at
         FROM teams t
         WHERE t.id = $1 AND t.organization_id = $2
           AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM team_members x WHERE x.team_id = t.id AND x.user_id = $3))",
    )
    .bind(team)
    .bind(m.org)
    .bind(guest_user)
    .fetch_optional(&state.ctx.db)
    .await?;
    row.ok_or_else(ApiError::not_found)
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<TeamView>>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let guest_user = m.guest_scope();
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<TeamView> = sqlx::query_as(
        "SELECT t.id, t.name, (SELECT count(*) FROM team_members x WHERE x.team_id = t.id) AS member_count, t.created_at
         FROM teams t
         WHERE t.organization_id = $1
           AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM team_members x WHERE x.team_id = t.id AND x.user_id = $2))
           AND ($3::timestamptz IS NULL OR (t.created_at, t.id) < ($3, $4))
         ORDER BY t.created_at DESC, t.id DESC LIMIT $5",
    )
    .bind(org)
    .bind(guest_user)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |t| (t.created_at, t.id))))
}

pub async fn create(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
    Json(req): Json<Name>,
) -> Result<(StatusCode, Json<TeamView>), ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    let name = checked_name(&req.name, "name")?;
    let id = Uuid::new_v4();
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO teams (id, organization_id, name, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(org)
    .bind(&name)
    .bind(writer.user_id())
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::conflict("A team of this name exists."));
    }
    AuditEvent::new("team.create", writer.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("team", id)
        .detail("name", name.as_str())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(TeamView {
            id,
            name,
            member_count: 0,
            created_at: now,
        }),
    ))
}

pub async fn get(
    State(state): State<OrgState>,
    auth: Auth,
    Path((org, team)): Path<(Uuid, Uuid)>,
) -> Result<Json<TeamDetail>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let team = visible_team(&state, &m, team).await?;
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM team_members WHERE team_id = $1 ORDER BY added_at")
            .bind(team.id)
            .fetch_all(&state.ctx.db)
            .await?;
    let profiles = printworks_account::directory::profiles(&state.ctx.db, &ids).await?;
    let members = ids
        .iter()
        .filter_map(|id| profiles.get(id).cloned())
        .collect();
    Ok(Json(TeamDetail { team, members }))
}

pub async fn delete(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, team)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    visible_team(&state, &m, team).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    lock_and_require_manager(&mut tx, &m, team).await?;
    let deleted = sqlx::query("DELETE FROM teams WHERE id = $1 AND organization_id = $2")
        .bind(team)
        .bind(org)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found());
    }
    // Shares to the team go with it.
    sqlx::query("DELETE FROM printer_shares WHERE grantee_type = 'team' AND grantee_id = $1")
        .bind(team)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM project_shares WHERE grantee_type = 'team' AND grantee_id = $1")
        .bind(team)
        .execute(&mut *tx)
        .await?;
    AuditEvent::new("team.delete", writer.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("team", team)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_member(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, team, user)): Path<(Uuid, Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    visible_team(&state, &m, team).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    lock_and_require_manager(&mut tx, &m, team).await?;
    // Someone outside the organization is, from here, someone who does not exist — read
    // under the organization's lock, which a removal from it holds too.
    if crate::role_of(&mut *tx, org, user).await?.is_none() {
        return Err(ApiError::not_found());
    }
    sqlx::query("SELECT 1 FROM teams WHERE id = $1 FOR UPDATE")
        .bind(team)
        .execute(&mut *tx)
        .await?;
    let size: i64 = sqlx::query_scalar("SELECT count(*) FROM team_members WHERE team_id = $1")
        .bind(team)
        .fetch_one(&mut *tx)
        .await?;
    if size >= MAX_TEAM_SIZE {
        return Err(ApiError::conflict(format!(
            "A team holds at most {MAX_TEAM_SIZE} people."
        )));
    }
    let added = sqlx::query(
        "INSERT INTO team_members (team_id, user_id, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(team)
    .bind(user)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if added == 1 {
        AuditEvent::new("team.member_add", writer.audit_actor(), Outcome::Success)
            .organization(org)
            .source(client.addr)
            .target("team", team)
            .detail("user_id", user.to_string())
            .write(&mut tx, now)
            .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, team, user)): Path<(Uuid, Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    visible_team(&state, &m, team).await?;
    let leaving = m.user_id() == Some(user);
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    // Anyone may leave a team; removing someone else is for its managers.
    let remover = if leaving {
        m.require_admin_or_self(user)?
    } else {
        let writer = m.require_writer()?;
        lock_and_require_manager(&mut tx, &m, team).await?;
        writer.into()
    };
    let removed = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
        .bind(team)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::not_found());
    }
    AuditEvent::new(
        "team.member_remove",
        remover.audit_actor(),
        Outcome::Success,
    )
    .organization(org)
    .source(client.addr)
    .target("team", team)
    .detail("user_id", user.to_string())
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
