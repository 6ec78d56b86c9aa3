//! Printer upload keys: what a slicer (PrusaSlicer, OrcaSlicer, Cura's OctoPrint plugin…)
//! sends jobs with, through the OctoPrint-compatible address of one printer
//! ([`crate::octoprint`]).
//!
//! - `POST /relay/v1/printers/{printer}/upload-keys {name}` (scope `print_job.write`): a
//!   person who may send jobs to the printer makes one; the key is in the answer once,
//!   kept only as its SHA-256. At most [`MAX_KEYS_PER_PERSON`] live keys per person and
//!   printer.
//! - `GET …/upload-keys` (scope `print_job.read`): the caller's keys; an admin's list
//!   holds everyone's keys of the printer. Paginated.
//! - `DELETE …/upload-keys/{key}` (scope `print_job.write`): its maker or an admin
//!   revokes it.
//!
//! A key acts as its maker, for this printer only and only to send jobs: on every use
//! the maker's rights are checked again as for a token ([`caller`]): still a member, the
//! printer still theirs to use, and the organization's security policy met by the
//! sign-in the key was made in (so in an organization with a policy a key lasts as long
//! as that sign-in).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::{Auth, Caller, Subject};
use printworks_common::crypto::{random_token, token_digest};
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use printworks_proto::ScopeSet;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RelayState;

/// The most live keys one person holds for one printer.
pub const MAX_KEYS_PER_PERSON: i64 = 10;
/// What every key starts with, so that it is recognised (and found by secret scanners).
pub const KEY_PREFIX: &str = "pwu_";

#[derive(Serialize, sqlx::FromRow)]
pub struct KeyView {
    id: Uuid,
    printer_id: Uuid,
    user_id: Uuid,
    name: String,
    /// The key's first characters, to tell keys apart.
    prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    last_used_at: Option<OffsetDateTime>,
}

#[derive(Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    view: KeyView,
    /// The key itself: shown this once.
    key: String,
    /// The address to enter in the slicer as an OctoPrint host.
    octoprint_url: String,
}

#[derive(Deserialize)]
pub struct NewKey {
    name: String,
}

/// The columns of [`KeyView`].
macro_rules! key_columns {
    () => {
        "id, printer_id, user_id, name, prefix, created_at, last_used_at"
    };
}

pub async fn create(
    State(state): State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    Path(printer): Path<Uuid>,
    Json(req): Json<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let usable = printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    // A key acts as a person; an app acting on its own makes none. It outlives the
    // sign-in, so, like everything that does, it needs a confirmed address.
    let user = usable.membership().require_person()?;
    printworks_org::access::require_verified(&state.ctx, usable.membership()).await?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name must be 1 to 100 characters, without control characters.",
        ));
    }
    let ctx = &state.ctx;
    let now = ctx.now();
    let key = format!("{KEY_PREFIX}{}", random_token());
    let id = Uuid::new_v4();
    let mut tx = ctx.db.begin().await?;
    // One person's keys of one printer are counted under a lock on that pair.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("upload-keys:{printer}:{user}"))
        .execute(&mut *tx)
        .await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM printer_upload_keys
         WHERE printer_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(printer)
    .bind(user)
    .fetch_one(&mut *tx)
    .await?;
    if live >= MAX_KEYS_PER_PERSON {
        return Err(ApiError::conflict(format!(
            "You hold {MAX_KEYS_PER_PERSON} upload keys for this printer already; revoke one first."
        )));
    }
    let view: KeyView = sqlx::query_as(concat!(
        "INSERT INTO printer_upload_keys (id, printer_id, organization_id, user_id, session_id,
                                          name, key_hash, prefix, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING ",
        key_columns!()
    ))
    .bind(id)
    .bind(printer)
    .bind(usable.printer.organization_id)
    .bind(user)
    .bind(auth.session_id)
    .bind(name)
    .bind(token_digest(&key))
    .bind(&key[..KEY_PREFIX.len() + 6])
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    AuditEvent::new("upload_key.create", usable.audit_actor(), Outcome::Success)
        .organization(usable.printer.organization_id)
        .source(client.addr)
        .target("upload_key", id)
        .detail("printer_id", printer.to_string())
        .detail("name", name)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            view,
            key,
            octoprint_url: ctx
                .settings
                .public_url
                .link(&format!("{}/{printer}/", crate::octoprint::PREFIX)),
        }),
    ))
}

pub async fn list(
    State(state): State<RelayState>,
    auth: Auth,
    Path(printer): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<KeyView>>, ApiError> {
    let usable = printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    let m = usable.membership();
    // Admins see everyone's keys of the printer (to revoke them); others their own.
    let only = if m.require_admin().is_ok() {
        None
    } else {
        Some(m.user_id().unwrap_or_default())
    };
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<KeyView> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM printer_upload_keys
         WHERE printer_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR user_id = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(printer)
    .bind(only)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |k| (k.created_at, k.id))))
}

pub async fn revoke(
    State(state): State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    Path((printer, key)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let usable = printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    let m = usable.membership();
    let ctx = &state.ctx;
    let maker: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM printer_upload_keys
         WHERE id = $1 AND printer_id = $2 AND revoked_at IS NULL",
    )
    .bind(key)
    .bind(printer)
    .fetch_optional(&ctx.db)
    .await?;
    let maker = maker.ok_or_else(ApiError::not_found)?;
    // Another person's key is not theirs to see unless they are an admin: 404.
    if m.user_id() != Some(maker) && m.require_admin().is_err() {
        return Err(ApiError::not_found());
    }
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let revoked = sqlx::query(
        "UPDATE printer_upload_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(key)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if revoked == 0 {
        return Err(ApiError::not_found());
    }
    AuditEvent::new("upload_key.revoke", usable.audit_actor(), Outcome::Success)
        .organization(usable.printer.organization_id)
        .source(client.addr)
        .target("upload_key", key)
        .detail("printer_id", printer.to_string())
        .detail("maker", maker.to_string())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The key a request carries: `X-Api-Key` (as slicers send it), or `Authorization:
/// Bearer` (which OctoPrint takes too).
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Who a key acts for, on `printer`: its maker, with `print_job.write` only, and the
/// sign-in it was made in; `None` when it is no live key of that printer. The maker's
/// rights are then checked as for any caller (`fleet::usable`). Its use is noted
/// (`last_used_at`, at most once a minute).
pub async fn caller(
    state: &RelayState,
    key: &str,
    printer: Uuid,
) -> Result<Option<(Caller, Uuid)>, ApiError> {
    if !key.starts_with(KEY_PREFIX) || key.len() > 100 {
        return Ok(None);
    }
    let now = state.ctx.now();
    let row: Option<(Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
        "UPDATE printer_upload_keys
         SET last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $3 - interval '1 minute'
                                 THEN $3 ELSE last_used_at END
         WHERE key_hash = $1 AND printer_id = $2 AND revoked_at IS NULL
         RETURNING id, user_id, session_id",
    )
    .bind(token_digest(key))
    .bind(printer)
    .bind(now)
    .fetch_optional(&state.ctx.db)
    .await?;
    Ok(row.map(|(id, user, session)| {
        (
            Caller {
                subject: Subject::User(user),
                client_id: format!("upload-key:{id}"),
                scopes: ScopeSet::from_strings(["print_job.write"]),
                session_id: session,
                token_id: id.to_string(),
                expires_at: i64::MAX,
            },
            id,
        )
    }))
}
