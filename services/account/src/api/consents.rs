//! `GET /account/v1/consents` (the apps I allowed) and
//! `DELETE /account/v1/consents/{client_id}` (withdraw: the app's refresh tokens are
//! revoked at once, its access tokens stop at their expiry and fail introspection now).

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AccountState;
use crate::session::SessionUser;

#[derive(Serialize, sqlx::FromRow)]
pub(crate) struct ConsentView {
    client_id: String,
    client_name: String,
    organization_id: Option<Uuid>,
    scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    granted_at: OffsetDateTime,
    #[serde(skip)]
    key: Uuid,
}

pub(crate) async fn list(
    State(state): State<AccountState>,
    user: SessionUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<ConsentView>>, ApiError> {
    let page = Page::from_query(&q)?;
    let (after_time, after_key) = page.after.unzip();
    let rows: Vec<ConsentView> = sqlx::query_as(
        "SELECT c.client_id, k.name AS client_name, k.organization_id, c.scopes, c.granted_at,
                md5(c.client_id)::uuid AS key
         FROM oauth_consents c JOIN oauth_clients k ON k.id = c.client_id
         WHERE c.user_id = $1 AND k.revoked_at IS NULL
           AND ($2::timestamptz IS NULL OR (c.granted_at, md5(c.client_id)::uuid) < ($2, $3))
         ORDER BY c.granted_at DESC, md5(c.client_id)::uuid DESC LIMIT $4",
    )
    .bind(user.user_id())
    .bind(after_time)
    .bind(after_key)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |c| (c.granted_at, c.key))))
}

pub(crate) async fn withdraw(
    State(state): State<AccountState>,
    user: SessionUser,
    client_info: ClientInfo,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let deleted = sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
        .bind(user.user_id())
        .bind(&client_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found());
    }
    let revoked = sqlx::query(
        "UPDATE oauth_refresh_tokens SET revoked_at = $3
         WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL",
    )
    .bind(user.user_id())
    .bind(&client_id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    AuditEvent::new(
        "consent.revoke",
        Actor::User(user.user_id()),
        Outcome::Success,
    )
    .source(client_info.addr)
    .target("oauth_client", &client_id)
    .detail("refresh_tokens_revoked", revoked)
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
