//! `POST /org/v1/organizations` (the creator becomes its first admin) and
//! `GET /org/v1/organizations` (mine, with my role).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Auth, Caller, Role, scope};
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Query};
use printworks_common::{ApiError, AppContext};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub fn router() -> Router<AppContext> {
    Router::new().route("/organizations", get(list).post(create))
}

fn person(caller: &Caller) -> Result<Uuid, ApiError> {
    caller.user_id().ok_or_else(|| {
        printworks_common::auth::unauthenticated("This needs a token issued to a person.", true)
    })
}

#[derive(Deserialize)]
struct Create {
    name: String,
}

#[derive(Serialize, sqlx::FromRow)]
struct OrganizationView {
    id: Uuid,
    name: String,
    role: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

fn organization_name(input: &str) -> Result<String, ApiError> {
    let name = input.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name must be 1 to 100 characters, without control characters.",
        ));
    }
    Ok(name.to_owned())
}

async fn create(
    State(ctx): State<AppContext>,
    auth: Auth<scope::OrganizationWrite>,
    client: ClientInfo,
    Json(req): Json<Create>,
) -> Result<(StatusCode, Json<OrganizationView>), ApiError> {
    let user_id = person(&auth)?;
    let name = organization_name(&req.name)?;
    let id = Uuid::new_v4();
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
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

async fn list(
    State(ctx): State<AppContext>,
    auth: Auth<scope::OrganizationRead>,
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
    .fetch_all(&ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |o| (o.created_at, o.id))))
}
