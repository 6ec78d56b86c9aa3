//! `POST /account/v1/sessions` (log in), `GET /account/v1/sessions` (mine),
//! `DELETE /account/v1/sessions/{id}`, `DELETE /account/v1/sessions/current` (log out).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::users::UserView;
use crate::session::{self, SessionUser, SessionView};
use crate::{AccountState, login};

#[derive(Deserialize)]
pub struct LogIn {
    email: String,
    password: SecretString,
    totp_code: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct LoggedIn {
    session: SessionSummary,
    user: UserView,
}

#[derive(Serialize)]
pub(crate) struct SessionSummary {
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

pub(crate) async fn log_in(
    State(state): State<AccountState>,
    client: ClientInfo,
    jar: CookieJar,
    Json(req): Json<LogIn>,
) -> Result<Response, ApiError> {
    if req.email.len() > 320 || req.totp_code.as_ref().is_some_and(|c| c.len() > 32) {
        return Err(ApiError::invalid("The e-mail address or code is too long."));
    }
    let (account, new) = login::login(
        &state,
        &req.email,
        req.password,
        req.totp_code.as_deref(),
        &client,
        &jar,
    )
    .await?;
    let user = super::users::find_user(&state, account.id).await?;
    let device = crate::device::issue(&state, &jar, &login::subject(&account.email));
    let jar = jar.add(session::cookie(&state, &new)).add(device);
    let body = LoggedIn {
        session: SessionSummary {
            id: new.id,
            expires_at: new.expires_at,
        },
        user,
    };
    Ok((StatusCode::CREATED, jar, Json(body)).into_response())
}

pub(crate) async fn list(
    State(state): State<AccountState>,
    user: SessionUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<SessionView>>, ApiError> {
    let page = Page::from_query(&q)?;
    let now = state.ctx.now();
    let idle = time::Duration::try_from(state.ctx.settings.account.session_idle_timeout)
        .unwrap_or(time::Duration::hours(24));
    let (after_time, after_id) = page.after.unzip();
    let mut rows: Vec<SessionView> = sqlx::query_as(
        "SELECT id, user_agent, source_addr, created_at, last_seen_at, expires_at FROM sessions
         WHERE user_id = $1 AND ended_at IS NULL AND expires_at > $2 AND last_seen_at > $3
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
         ORDER BY created_at DESC, id DESC LIMIT $6",
    )
    .bind(user.user_id())
    .bind(now)
    .bind(now - idle)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    for row in &mut rows {
        row.current = row.id == user.session.id;
    }
    Ok(Json(page.finish(rows, |s| (s.created_at, s.id))))
}

async fn end_session(
    state: &AccountState,
    user: &SessionUser,
    id: Uuid,
    client: &ClientInfo,
    reason: &str,
) -> Result<bool, ApiError> {
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let ended = session::end(&mut tx, user.user_id(), id, reason, now).await?;
    if ended {
        AuditEvent::new("session.end", Actor::User(user.user_id()), Outcome::Success)
            .source(client.addr)
            .target("session", id)
            .detail("reason", reason)
            .write(&mut tx, now)
            .await?;
    }
    tx.commit().await?;
    Ok(ended)
}

pub(crate) async fn end_one(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if end_session(&state, &user, id, &client, "ended_by_user").await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

pub(crate) async fn logout(
    State(state): State<AccountState>,
    user: SessionUser,
    client: ClientInfo,
    jar: CookieJar,
) -> Result<Response, ApiError> {
    end_session(&state, &user, user.session.id, &client, "logout").await?;
    let jar = jar.add(session::removal_cookie(&state));
    Ok((StatusCode::NO_CONTENT, jar).into_response())
}
