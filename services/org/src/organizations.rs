//! `POST /org/v1/organizations` (the creator becomes its first admin),
//! `GET /org/v1/organizations` (mine, with my role), `GET …/{org}`, `PATCH …/{org}`
//! (rename; admins).

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Auth, Caller, Role};
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use printworks_common::names::checked_name;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::membership;

fn person(caller: &Caller) -> Result<Uuid, ApiError> {
    caller.user_id().ok_or_else(|| {
        crate::access::forbidden(
            "This needs a token issued to a person; an automated client acts only inside its own organization.",
        )
    })
}

#[derive(Deserialize)]
pub struct Name {
    pub name: String,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct OrganizationView {
    id: Uuid,
    name: String,
    role: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// The organization's name, for other services (on a pool or in a transaction).
pub async fn name_of(db: impl sqlx::PgExecutor<'_>, org: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
        .bind(org)
        .fetch_optional(db)
        .await
}

pub async fn create(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Json(req): Json<Name>,
) -> Result<(StatusCode, Json<OrganizationView>), ApiError> {
    let user_id = person(&auth)?;
    let name = checked_name(&req.name, "name")?;
    printworks_account::verification::require(&state.ctx.db, user_id).await?;
    let id = Uuid::new_v4();
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query(
        "INSERT INTO organizations (id, name, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(id)
    .bind(&name)
    .bind(user_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO organization_members (organization_id, user_id, role, created_at) VALUES ($1, $2, 'admin', $3)",
    )
    .bind(id)
    .bind(user_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    AuditEvent::new(
        "organization.create",
        Actor::User(user_id),
        Outcome::Success,
    )
    .organization(id)
    .source(client.addr)
    .target("organization", id)
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(OrganizationView {
            id,
            name,
            role: Role::Admin.as_str().to_owned(),
            created_at: now,
        }),
    ))
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<OrganizationView>>, ApiError> {
    let user_id = person(&auth)?;
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<OrganizationView> = sqlx::query_as(
        "SELECT o.id, o.name, m.role, o.created_at
         FROM organizations o JOIN organization_members m ON m.organization_id = o.id
         WHERE m.user_id = $1 AND ($2::timestamptz IS NULL OR (o.created_at, o.id) < ($2, $3))
         ORDER BY o.created_at DESC, o.id DESC LIMIT $4",
    )
    .bind(user_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |o| (o.created_at, o.id))))
}

async fn view(state: &OrgState, org: Uuid, role: Role) -> Result<OrganizationView, ApiError> {
    let (name, created_at): (String, OffsetDateTime) =
        sqlx::query_as("SELECT name, created_at FROM organizations WHERE id = $1")
            .bind(org)
            .fetch_one(&state.ctx.db)
            .await?;
    Ok(OrganizationView {
        id: org,
        name,
        role: role.as_str().to_owned(),
        created_at,
    })
}

pub async fn get(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
) -> Result<Json<OrganizationView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    Ok(Json(view(&state, org, m.role).await?))
}

pub async fn rename(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
    Json(req): Json<Name>,
) -> Result<Json<OrganizationView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let admin = m.require_admin()?;
    let name = checked_name(&req.name, "name")?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let old: String = sqlx::query_scalar(
        "UPDATE organizations o SET name = $2, updated_at = $3 FROM organizations p
         WHERE o.id = $1 AND p.id = o.id RETURNING p.name",
    )
    .bind(org)
    .bind(&name)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    AuditEvent::new("organization.rename", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("organization", org)
        .detail("from", old)
        .detail("to", name)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(Json(view(&state, org, m.role).await?))
}
