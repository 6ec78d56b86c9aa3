//! UltiMaker Cura's Digital Library, as far as it is built: its projects are the
//! organization projects the person may see (`../shared/reference/cura-digital-library.md`
//! §5–§6).
//!
//! - `GET /cura/v1/feature_budgets`: the library is open, with no limit on projects
//!   (`library_max_private_projects: -1`, so Cura never counts them);
//! - `GET /cura/v1/projects?limit=&search=&shared=`: the projects the person may see in
//!   every organization of theirs whose policy their sign-in meets, most recently changed
//!   first, `search` matching the name, `shared=false` only their own; pages linked by an
//!   absolute `links.next` that carries the query (Cura fetches it verbatim);
//! - `GET /cura/v1/projects/{id}`: one of them.
//!
//! Not built yet: creating a project from Cura (`PUT /cura/v1/projects`: which
//! organization, and which scope — Cura's token carries `organization.read` only, and
//! `organization.write` would let a slicer invite people), and project files
//! (`/projects/{id}/files`, `PUT /files/upload`, the download).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::auth::Auth;
use printworks_common::cura::{errors, time as cura_time};
use printworks_common::http::{Path, Query};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::membership;

/// The largest page Cura may ask for.
const MAX_LIMIT: i64 = 100;

/// `GET /cura/v1/feature_budgets`.
pub async fn feature_budgets(_auth: Auth) -> axum::Json<Value> {
    axum::Json(json!({"data": {
        "library_max_private_projects": -1,
        "library_max_organization_shared_projects": -1,
        "library_max_team_shared_projects": -1,
    }}))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    description: String,
    owner_id: Option<Uuid>,
    /// Filled from the account service's directory.
    #[sqlx(skip)]
    owner_name: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

fn project_json(p: &Row) -> Value {
    json!({
        "library_project_id": p.id,
        "display_name": p.name,
        "username": p.owner_name,
        "description": p.description,
        "organization_id": p.organization_id,
        "created_by_user_id": p.owner_id,
        "created_at": cura_time(p.created_at),
        "last_updated": cura_time(p.updated_at),
        "is_inactive": false,
    })
}

/// The projects of `org` the caller may see (the same rule as `/org/v1/…/projects`:
/// admins and members all, guests those they own or that are shared with them), with
/// `$4`… conditions in `tail`.
macro_rules! seen_projects {
    ($tail:literal) => {
        concat!(
            "SELECT p.id, p.organization_id, p.name, p.description, p.owner_id,
                    p.created_at, p.updated_at
             FROM projects p
             WHERE p.organization_id = $3
               AND ($1 IN ('admin', 'member') OR p.owner_id = $2 OR EXISTS (
                   SELECT 1 FROM project_shares s WHERE s.project_id = p.id
                     AND ((s.grantee_type = 'user' AND s.grantee_id = $2)
                       OR (s.grantee_type = 'team' AND s.grantee_id IN
                             (SELECT team_id FROM team_members WHERE user_id = $2))))) ",
            $tail
        )
    };
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    search: Option<String>,
    shared: Option<String>,
    /// Where the previous page ended: `<unix nanos>_<id>`, from `links.next`.
    after: Option<String>,
}

/// `GET /cura/v1/projects`.
pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> Response {
    match projects(&state, &auth, &q).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => errors(e).await,
    }
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

async fn projects(state: &OrgState, auth: &Auth, q: &ListQuery) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}."
        )));
    }
    let search = q.search.as_deref().map(str::trim).unwrap_or_default();
    if search.chars().count() > 100 {
        return Err(ApiError::bad_request("search: at most 100 characters."));
    }
    let pattern = format!("%{}%", escape_like(search));
    let own_only = q.shared.as_deref() == Some("false");
    let after: Option<(OffsetDateTime, Uuid)> = match q.after.as_deref() {
        None => None,
        Some(a) => {
            let parsed = a.split_once('_').and_then(|(t, id)| {
                let t = OffsetDateTime::from_unix_timestamp_nanos(t.parse().ok()?).ok()?;
                Some((t, id.parse().ok()?))
            });
            Some(parsed.ok_or_else(|| ApiError::bad_request("after is not a page position."))?)
        }
    };
    let (after_time, after_id) = after.unzip();
    let mut rows: Vec<Row> = Vec::new();
    for m in crate::access::memberships_everywhere(&state.ctx, auth).await? {
        let org = m.org;
        let found: Vec<Row> = sqlx::query_as(seen_projects!(
            "AND p.name ILIKE $4
             AND (NOT $5 OR p.owner_id = $2)
             AND ($6::timestamptz IS NULL OR (p.updated_at, p.id) < ($6, $7))
             ORDER BY p.updated_at DESC, p.id DESC LIMIT $8"
        ))
        .bind(m.role.as_str())
        .bind(m.user_id())
        .bind(org)
        .bind(&pattern)
        .bind(own_only)
        .bind(after_time)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&state.ctx.db)
        .await?;
        rows.extend(found);
    }
    rows.sort_by_key(|r| std::cmp::Reverse((r.updated_at, r.id)));
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    named(state, &mut rows).await?;
    let next = match rows.last() {
        Some(last) if more => {
            let mut url = url::Url::parse(&state.ctx.settings.public_url.link("/cura/v1/projects"))
                .map_err(anyhow::Error::from)?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &limit.to_string());
                if !search.is_empty() {
                    query.append_pair("search", search);
                }
                if own_only {
                    query.append_pair("shared", "false");
                }
                query.append_pair(
                    "after",
                    &format!("{}_{}", last.updated_at.unix_timestamp_nanos(), last.id),
                );
            }
            Value::String(url.to_string())
        }
        _ => Value::Null,
    };
    Ok(json!({
        "data": rows.iter().map(project_json).collect::<Vec<_>>(),
        "links": { "next": next },
        "meta": { "page": {} },
    }))
}

/// `GET /cura/v1/projects/{id}`.
pub async fn get(State(state): State<OrgState>, auth: Auth, Path(project): Path<Uuid>) -> Response {
    match one(&state, &auth, project).await {
        Ok(p) => axum::Json(json!({ "data": project_json(&p) })).into_response(),
        Err(e) => errors(e).await,
    }
}

async fn one(state: &OrgState, auth: &Auth, project: Uuid) -> Result<Row, ApiError> {
    let org: Option<Uuid> =
        sqlx::query_scalar("SELECT organization_id FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&state.ctx.db)
            .await?;
    let org = org.ok_or_else(ApiError::not_found)?;
    let m = membership(&state.ctx, org, auth).await?;
    let row: Option<Row> = sqlx::query_as(seen_projects!("AND p.id = $4"))
        .bind(m.role.as_str())
        .bind(m.user_id())
        .bind(org)
        .bind(project)
        .fetch_optional(&state.ctx.db)
        .await?;
    let mut rows: Vec<Row> = row.into_iter().collect();
    named(state, &mut rows).await?;
    rows.pop().ok_or_else(ApiError::not_found)
}

/// The owners' display names, as Cura shows them on each project.
async fn named(state: &OrgState, rows: &mut [Row]) -> Result<(), ApiError> {
    let ids: Vec<Uuid> = rows.iter().filter_map(|r| r.owner_id).collect();
    let profiles = printworks_account::directory::profiles(&state.ctx.db, &ids).await?;
    for r in rows {
        r.owner_name = r
            .owner_id
            .and_then(|id| profiles.get(&id))
            .map(|p| p.display_name.clone());
    }
    Ok(())
}
