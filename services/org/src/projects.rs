//! Projects: `GET …/{org}/projects`, `POST …/{org}/projects {name, description?}`,
//! `GET|PATCH …/{org}/projects/{project}`, `PUT …/{org}/projects/{project}/shares
//! {grantee_type, grantee_id, permission}`, `DELETE
//! …/{org}/projects/{project}/shares/{grantee_type}/{grantee_id}`.
//!
//! Who sees and edits what:
//! - admins see, edit and share every project;
//! - members see every project, and edit and share those they own or that are shared
//!   with them (or a team of theirs) at `edit`;
//! - guests create none; they see the projects they own (made before a demotion) or
//!   that are shared with them, and edit and share only those they own.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::Auth;
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::{Allowed, Membership, membership};
use crate::shares::{Shared, check_grantee, remove_share};
use printworks_common::names::checked_name;

#[derive(Serialize, sqlx::FromRow)]
pub struct ProjectView {
    id: Uuid,
    name: String,
    description: String,
    owner_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    /// `view` or `edit`: what the caller may do with it.
    access: String,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct ShareView {
    grantee_type: String,
    grantee_id: Uuid,
    permission: String,
}

#[derive(Serialize)]
pub struct ProjectDetail {
    #[serde(flatten)]
    project: ProjectView,
    shares: Vec<ShareView>,
}

/// The projects of organization $3 the caller may see, with `access`: 'edit' or
/// 'view'. Parameters: $1 the caller's role, $2 the caller's user id (NULL for a
/// client). `$tail` adds conditions on `v` and the ordering.
macro_rules! with_access {
    ($tail:literal) => {
        concat!(
            "SELECT * FROM (SELECT p.id, p.name, p.description, p.owner_id, p.created_at, p.updated_at,
                    CASE
                      WHEN $1 = 'admin' THEN 'edit'
                      WHEN p.owner_id = $2 THEN 'edit'
                      WHEN $1 = 'member' AND EXISTS (
                          SELECT 1 FROM project_shares s WHERE s.project_id = p.id AND s.permission = 'edit'
                            AND ((s.grantee_type = 'user' AND s.grantee_id = $2)
                              OR (s.grantee_type = 'team' AND s.grantee_id IN (SELECT team_id FROM team_members WHERE user_id = $2))))
                        THEN 'edit'
                      WHEN $1 = 'member' THEN 'view'
                      WHEN EXISTS (
                          SELECT 1 FROM project_shares s WHERE s.project_id = p.id
                            AND ((s.grantee_type = 'user' AND s.grantee_id = $2)
                              OR (s.grantee_type = 'team' AND s.grantee_id IN (SELECT team_id FROM team_members WHERE user_id = $2))))
                        THEN 'view'
                    END AS access
             FROM projects p WHERE p.organization_id = $3) v WHERE v.access IS NOT NULL ",
            $tail
        )
    };
}

async fn visible(state: &OrgState, m: &Membership, project: Uuid) -> Result<ProjectView, ApiError> {
    let row: Option<ProjectView> = sqlx::query_as(with_access!("AND v.id = $4"))
        .bind(m.role.as_str())
        .bind(m.user_id())
        .bind(m.org)
        .bind(project)
        .fetch_optional(&state.ctx.db)
        .await?;
    row.ok_or_else(ApiError::not_found)
}

fn require_edit<'a>(m: &'a Membership, p: &ProjectView) -> Result<Allowed<'a>, ApiError> {
    m.require_granted(
        p.access == "edit",
        "You may look at this project, not change or share it.",
    )
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<ProjectView>>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<ProjectView> = sqlx::query_as(with_access!(
        "AND ($4::timestamptz IS NULL OR (v.created_at, v.id) < ($4, $5))
         ORDER BY v.created_at DESC, v.id DESC LIMIT $6"
    ))
    .bind(m.role.as_str())
    .bind(m.user_id())
    .bind(org)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |p| (p.created_at, p.id))))
}

#[derive(Deserialize)]
pub struct NewProject {
    name: String,
    #[serde(default)]
    description: String,
}

fn checked_description(d: &str) -> Result<String, ApiError> {
    if d.chars().count() > 2000 || d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(
            "description may hold at most 2000 characters, without control characters.",
        ));
    }
    Ok(d.to_owned())
}

pub async fn create(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
    Json(req): Json<NewProject>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    // Admins and members create projects (the person creating one owns it); guests
    // only use what is shared with them.
    let writer = m.require_writer()?;
    let owner = m.require_person()?;
    let name = checked_name(&req.name, "name")?;
    let description = checked_description(&req.description)?;
    let id = Uuid::new_v4();
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query(
        "INSERT INTO projects (id, organization_id, name, description, owner_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(org)
    .bind(&name)
    .bind(&description)
    .bind(owner)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    AuditEvent::new("project.create", writer.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("project", id)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectView {
            id,
            name,
            description,
            owner_id: Some(owner),
            created_at: now,
            updated_at: now,
            access: "edit".into(),
        }),
    ))
}

pub async fn get(
    State(state): State<OrgState>,
    auth: Auth,
    Path((org, project)): Path<(Uuid, Uuid)>,
) -> Result<Json<ProjectDetail>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let project = visible(&state, &m, project).await?;
    let shares: Vec<ShareView> = sqlx::query_as(
        "SELECT grantee_type, grantee_id, permission FROM project_shares WHERE project_id = $1 ORDER BY created_at",
    )
    .bind(project.id)
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(ProjectDetail { project, shares }))
}

#[derive(Deserialize)]
pub struct Patch {
    name: Option<String>,
    description: Option<String>,
}

pub async fn update(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, project)): Path<(Uuid, Uuid)>,
    Json(req): Json<Patch>,
) -> Result<Json<ProjectView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let current = visible(&state, &m, project).await?;
    let editor = require_edit(&m, &current)?;
    let name = req
        .name
        .as_deref()
        .map(|n| checked_name(n, "name"))
        .transpose()?;
    let description = req
        .description
        .as_deref()
        .map(checked_description)
        .transpose()?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query(
        "UPDATE projects SET name = coalesce($2, name), description = coalesce($3, description), updated_at = $4
         WHERE id = $1",
    )
    .bind(project)
    .bind(&name)
    .bind(&description)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    AuditEvent::new("project.update", editor.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("project", project)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(Json(visible(&state, &m, project).await?))
}

#[derive(Deserialize)]
pub struct Share {
    grantee_type: String,
    grantee_id: Uuid,
    permission: String,
}

pub async fn share(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, project)): Path<(Uuid, Uuid)>,
    Json(req): Json<Share>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let current = visible(&state, &m, project).await?;
    require_edit(&m, &current)?;
    let sharer =
        m.require_writer_or_owner(current.owner_id, "Guests share only their own projects.")?;
    let kind = check_grantee(&state, org, &req.grantee_type, req.grantee_id).await?;
    if !matches!(req.permission.as_str(), "view" | "edit") {
        return Err(ApiError::invalid("permission must be view or edit."));
    }
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query(
        "INSERT INTO project_shares (project_id, grantee_type, grantee_id, permission, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (project_id, grantee_type, grantee_id) DO UPDATE SET permission = $4",
    )
    .bind(project)
    .bind(kind)
    .bind(req.grantee_id)
    .bind(&req.permission)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    AuditEvent::new("project.share", sharer.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("project", project)
        .detail("grantee", format!("{kind}:{}", req.grantee_id))
        .detail("permission", req.permission.as_str())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unshare(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, project, kind, grantee)): Path<(Uuid, Uuid, String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let current = visible(&state, &m, project).await?;
    let editor = require_edit(&m, &current)?;
    remove_share(
        &state,
        &editor,
        client.addr,
        Shared::Project,
        project,
        &kind,
        grantee,
    )
    .await
}
