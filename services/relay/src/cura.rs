//! UltiMaker Cura's cloud printing API, at the API root `{PUBLIC_URL}`
//! (`../shared/reference/cura-cloud-api.md` §4): every printer the person may use is a
//! "cluster" of one printer.
//!
//! - `GET /connect/v1/clusters` (Cura asks every 60 s): the clusters;
//! - `GET /connect/v1/clusters/{cluster}/status` (every 10 s while one is active): its
//!   printer, from the live status, and its queue.
//!
//! Answers are wrapped as Cura parses them, `{"data": …}`; refusals as `{"errors":
//! [{"id", "code", "title", "http_status", "detail"}]}`; `generated_time` with
//! milliseconds and a `Z`, the one date format Cura's parser takes. Not built yet: the
//! upload, print and queue actions (`PUT /cura/v1/jobs/upload`, `POST
//! /connect/v1/clusters/{cluster}/print/{job}`, `…/action/{action}`) and the Digital
//! Library.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::auth::Auth;
use printworks_common::cura::{errors as cura_error, time as cura_time};
use printworks_common::http::Path;
use printworks_proto::{JobState, PrinterState};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RelayState;

/// The most clusters one answer lists.
pub const MAX_CLUSTERS: usize = 100;
/// The most jobs one cluster's status lists.
const MAX_JOBS: i64 = 100;

/// Cura's machine definition id for a model: `Ultimaker S5` → `ultimaker_s5`.
pub fn printer_type(model: Option<&str>) -> String {
    let model = model.unwrap_or("unknown");
    let mut out = String::new();
    for c in model.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

fn printer_status_name(connected: bool, state: Option<PrinterState>) -> &'static str {
    match state {
        _ if !connected => "unreachable",
        Some(PrinterState::Printing | PrinterState::Paused) => "printing",
        Some(PrinterState::Error) => "error",
        Some(PrinterState::Offline) => "unreachable",
        Some(PrinterState::Idle) | None => "idle",
    }
}

/// `GET /connect/v1/clusters`.
pub async fn clusters(State(state): State<RelayState>, auth: Auth) -> Response {
    match list(&state, &auth).await {
        Ok(v) => axum::Json(json!({ "data": v })).into_response(),
        Err(e) => cura_error(e).await,
    }
}

async fn list(state: &RelayState, auth: &Auth) -> Result<Vec<Value>, ApiError> {
    let printers =
        printworks_org::printers::usable_everywhere(&state.ctx, auth, MAX_CLUSTERS).await?;
    let mut out = Vec::with_capacity(printers.len());
    for p in printers {
        let view = crate::status::view(&state.ctx.db, p.id).await?;
        let firmware = view
            .status
            .as_ref()
            .and_then(|s| s.firmware_version.clone())
            .unwrap_or_default();
        out.push(json!({
            "cluster_id": p.id,
            "host_guid": p.id,
            "host_name": p.name,
            "friendly_name": p.name,
            "is_online": view.connected,
            "status": "active",
            "display_status": if view.connected { "online" } else { "offline" },
            "host_version": firmware,
            "printer_type": printer_type(p.model.as_deref()),
            "printer_count": 1,
            "capabilities": ["queue"],
        }));
    }
    Ok(out)
}

/// `GET /connect/v1/clusters/{cluster}/status`.
pub async fn status(
    State(state): State<RelayState>,
    auth: Auth,
    Path(cluster): Path<Uuid>,
) -> Response {
    match cluster_status(&state, &auth, cluster).await {
        Ok(v) => axum::Json(json!({ "data": v })).into_response(),
        Err(e) => cura_error(e).await,
    }
}

/// How a job's state reads in Cura's monitor.
fn cura_job_status(state: JobState) -> &'static str {
    match state {
        JobState::Dispatched => "sent_to_printer",
        JobState::Downloading => "pre_print",
        JobState::Printing => "printing",
        JobState::Paused => "paused",
        _ => "queued",
    }
}

async fn cluster_status(state: &RelayState, auth: &Auth, cluster: Uuid) -> Result<Value, ApiError> {
    let usable = printworks_org::fleet::usable(&state.ctx, auth, cluster).await?;
    let db = &state.ctx.db;
    let name = printworks_org::printers::visible(db, usable.membership(), cluster)
        .await?
        .name()
        .to_owned();
    let view = crate::status::view(db, cluster).await?;
    let model = usable.printer.model.clone().unwrap_or_default();
    let firmware = view
        .status
        .as_ref()
        .and_then(|s| s.firmware_version.clone())
        .unwrap_or_default();
    let printer = json!({
        "uuid": cluster,
        "unique_name": cluster.to_string(),
        "friendly_name": name,
        "machine_variant": model,
        "status": printer_status_name(view.connected, view.status.as_ref().map(|s| s.state)),
        "enabled": true,
        "firmware_version": firmware,
        "configuration": [],
    });
    let mut states: Vec<&str> = vec![JobState::Queued.as_str()];
    states.extend(JobState::WITH_PRINTER.map(JobState::as_str));
    let jobs: Vec<(Uuid, String, String, OffsetDateTime, Option<f32>)> = sqlx::query_as(
        "SELECT id, name, state, created_at, progress FROM print_jobs
         WHERE printer_id = $1 AND state = ANY($2) ORDER BY seq LIMIT $3",
    )
    .bind(cluster)
    .bind(&states)
    .bind(MAX_JOBS)
    .fetch_all(db)
    .await?;
    let print_jobs: Vec<Value> = jobs
        .into_iter()
        .map(|(id, name, job_state, created, progress)| {
            let job_state = JobState::parse(&job_state).unwrap_or(JobState::Queued);
            let started = matches!(job_state, JobState::Printing | JobState::Paused);
            json!({
                "uuid": id,
                "name": name,
                "created_at": cura_time(created),
                "force": false,
                "machine_variant": model,
                "started": started,
                "status": cura_job_status(job_state),
                // Printworks knows a print's progress, not its length: Cura shows the
                // share of a nominal 100 seconds.
                "time_total": 100,
                "time_elapsed": progress.map_or(0, |p| p.round() as i64),
                "configuration": [],
                "printer_uuid": started.then_some(cluster),
            })
        })
        .collect();
    Ok(json!({
        "generated_time": cura_time(state.ctx.now()),
        "printers": [printer],
        "print_jobs": print_jobs,
        "unavailable": false,
    }))
}

/// How long an `upload_url` may be used, once, after Cura asked for it.
pub const UPLOAD_WINDOW: time::Duration = time::Duration::minutes(10);
/// How long an uploaded file stays printable (Cura prints an unchanged scene again by
/// the same `job_id`).
pub const UPLOAD_KEPT: time::Duration = time::Duration::hours(24);
/// The most uploads one person holds at once.
const MAX_UPLOADS_PER_PERSON: i64 = 20;

/// `PUT /cura/v1/jobs/upload {"data": {"job_name", "file_size", "content_type"}}`: a
/// pre-signed `upload_url`, good once, for [`UPLOAD_WINDOW`] (Cura sends no token with
/// the upload). A person only.
pub async fn request_upload(
    State(state): State<RelayState>,
    auth: Auth,
    body: axum::body::Bytes,
) -> Response {
    match new_upload(&state, &auth, &body).await {
        Ok(v) => axum::Json(json!({ "data": v })).into_response(),
        Err(e) => cura_error(e).await,
    }
}

async fn new_upload(state: &RelayState, auth: &Auth, body: &[u8]) -> Result<Value, ApiError> {
    let Some(user) = auth.user_id() else {
        return Err(printworks_common::error::role_forbids(
            "Cura uploads are made by people.",
        ));
    };
    let req: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::bad_request("Send {\"data\": {\"job_name\", \"file_size\", \"content_type\"}}.")
    })?;
    let data = &req["data"];
    let job_name = data["job_name"].as_str().map(str::trim).unwrap_or_default();
    if job_name.is_empty()
        || job_name.chars().count() > 190
        || job_name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "job_name must be 1 to 190 characters, without control characters.",
        ));
    }
    let max = state.ctx.settings.relay.max_job_bytes;
    let size = data["file_size"]
        .as_u64()
        .ok_or_else(|| ApiError::invalid("file_size must be a number of bytes."))?;
    if size > max {
        return Err(crate::upload::too_large(max));
    }
    let content_type = match data["content_type"].as_str() {
        Some(crate::upload::GCODE) => crate::upload::GCODE,
        Some(crate::upload::UFP) => crate::upload::UFP,
        _ => {
            return Err(ApiError::invalid(
                "Printworks prints G-code (text/x-gcode) and UFP (application/x-ufp).",
            ));
        }
    };
    let ctx = &state.ctx;
    let now = ctx.now();
    let id = Uuid::new_v4();
    let token = printworks_common::crypto::random_token();
    let data_key = crate::seal::new_data_key();
    let mut tx = ctx.db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("cura-uploads:{user}"))
        .execute(&mut *tx)
        .await?;
    let (held, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(declared_size), 0)::bigint FROM cura_uploads
         WHERE user_id = $1 AND expires_at > $2",
    )
    .bind(user)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    if held >= MAX_UPLOADS_PER_PERSON {
        return Err(ApiError::conflict(format!(
            "You hold {MAX_UPLOADS_PER_PERSON} uploads from Cura already; they are kept a day."
        )));
    }
    // What one person's uploads may keep at once: four files of the largest size.
    let budget = max.saturating_mul(4);
    if u64::try_from(bytes).unwrap_or(0).saturating_add(size) > budget {
        return Err(printworks_common::error::Problem::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "storage-quota-exceeded",
            "Not enough upload storage left",
        )
        .detail(format!(
            "Your uploads from Cura may keep at most {budget} bytes at once; they are kept a day."
        ))
        .into());
    }
    sqlx::query(
        "INSERT INTO cura_uploads (id, user_id, job_name, content_type, declared_size,
                                   upload_token_hash, blob_key, key_sealed, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(user)
    .bind(job_name)
    .bind(content_type)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(printworks_common::crypto::token_digest(&token))
    .bind(format!("cura-uploads/{user}/{id}"))
    .bind(
        ctx.secrets
            .seal(&format!("cura-upload-key:{id}"), &data_key),
    )
    .bind(now)
    // Until the file arrives, only as long as its URL is good.
    .bind(now + UPLOAD_WINDOW)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(json!({
        "job_id": id,
        "status": "uploading",
        "job_name": job_name,
        "content_type": content_type,
        "upload_url": ctx.settings.public_url.link(&format!("/cura/v1/uploads/{token}")),
    }))
}

/// `PUT /cura/v1/uploads/{token}`: the file itself, as Cura sends it — no token, only
/// `Content-Type`. Once per URL, within [`UPLOAD_WINDOW`], at most the size Cura
/// announced; sealed as it streams, like a job. Checked against a printer's limits when
/// it is printed (the printer is chosen after the upload).
pub async fn upload(
    State(state): State<RelayState>,
    Path(token): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    match receive_upload(&state, &token, &headers, body).await {
        Ok(()) => axum::http::StatusCode::OK.into_response(),
        Err(e) => cura_error(e).await,
    }
}

async fn receive_upload(
    state: &RelayState,
    token: &str,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(), ApiError> {
    use futures_util::TryStreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let ctx = &state.ctx;
    let now = ctx.now();
    if token.len() > 100 {
        return Err(ApiError::not_found());
    }
    // Claimed at once: the URL is good for one upload, even one that fails.
    let row: Option<(Uuid, i64, String, Vec<u8>, String)> = sqlx::query_as(
        "UPDATE cura_uploads SET uploading_since = $2
         WHERE upload_token_hash = $1 AND uploading_since IS NULL AND created_at > $3
         RETURNING id, declared_size, content_type, key_sealed, blob_key",
    )
    .bind(printworks_common::crypto::token_digest(token))
    .bind(now)
    .bind(now - UPLOAD_WINDOW)
    .fetch_optional(&ctx.db)
    .await?;
    let (id, declared, content_type, key_sealed, blob_key) = row.ok_or_else(ApiError::not_found)?;
    let sent_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
    if sent_type.as_deref().is_some_and(|t| t != content_type) {
        return Err(ApiError::invalid(
            "The file's Content-Type is not the one the upload was asked for.",
        ));
    }
    let key: [u8; 32] = ctx
        .secrets
        .open(&format!("cura-upload-key:{id}"), &key_sealed)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("a Cura upload's data key does not open"))?;
    let declared = u64::try_from(declared).unwrap_or(0);
    let spool = state.store.spool_dir().join(format!("cura-{id}.sealed"));
    // However the upload ends — an error, or the request dropped (the client went, the
    // deadline passed) — its spool file goes.
    let _spool_guard = SpoolGuard(spool.clone());
    async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&spool)
            .await
            .map_err(crate::upload::spool_write)?;
        let (mut sealer, mut out) = crate::seal::Sealer::new(&key, id);
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|_| ApiError::bad_request("The upload was interrupted."))?
        {
            size += chunk.len() as u64;
            if size > declared {
                return Err(ApiError::invalid(
                    "The file is larger than the upload asked for.",
                ));
            }
            sealer.push(&chunk, &mut out).map_err(ApiError::from)?;
            if out.len() >= 256 * 1024 {
                file.write_all(&out)
                    .await
                    .map_err(crate::upload::spool_write)?;
                out.clear();
            }
        }
        if size != declared {
            return Err(ApiError::invalid(
                "The file is smaller than the upload asked for.",
            ));
        }
        sealer.finish(&mut out).map_err(ApiError::from)?;
        file.write_all(&out)
            .await
            .map_err(crate::upload::spool_write)?;
        file.sync_all().await.map_err(crate::upload::spool_write)?;
        drop(file);
        state.store.put_file(&blob_key, &spool).await?;
        let at = ctx.now();
        sqlx::query(
            "UPDATE cura_uploads SET uploaded_at = $2, size = $3, expires_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(at)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(at + UPLOAD_KEPT)
        .execute(&ctx.db)
        .await?;
        Ok::<_, ApiError>(())
    }
    .await
}

/// Removes a spool file when dropped.
struct SpoolGuard(std::path::PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `POST /connect/v1/clusters/{cluster}/print/{job_id}`: the uploaded file becomes a job
/// of the cluster's printer — checked against its limits, sealed, limited and audited
/// like any job, with the same authorization as `POST /relay/v1/printers/{printer}/jobs`.
/// The same `job_id` may be printed again (Cura does, for an unchanged scene) until the
/// upload expires.
pub async fn print(
    State(state): State<RelayState>,
    auth: Auth,
    client: printworks_common::http::ClientInfo,
    Path((cluster, upload)): Path<(Uuid, Uuid)>,
) -> Response {
    match print_upload(&state, &auth, &client, cluster, upload).await {
        Ok((job, relay_job)) => axum::Json(json!({"data": {
            "job_id": job,
            "status": "queued",
            "generated_time": cura_time(state.ctx.now()),
            "cluster_job_id": relay_job,
        }}))
        .into_response(),
        Err(e) => cura_error(e).await,
    }
}

async fn print_upload(
    state: &RelayState,
    auth: &Auth,
    client: &printworks_common::http::ClientInfo,
    cluster: Uuid,
    upload: Uuid,
) -> Result<(Uuid, Uuid), ApiError> {
    let usable = printworks_org::fleet::usable(&state.ctx, auth, cluster).await?;
    let ctx = &state.ctx;
    // Only the person's own upload, uploaded and not expired.
    let row: Option<(String, String, i64, Vec<u8>, String)> = sqlx::query_as(
        "SELECT job_name, content_type, size, key_sealed, blob_key FROM cura_uploads
         WHERE id = $1 AND user_id = $2 AND uploaded_at IS NOT NULL AND expires_at > $3",
    )
    .bind(upload)
    .bind(auth.user_id())
    .bind(ctx.now())
    .fetch_optional(&ctx.db)
    .await?;
    let (job_name, content_type, size, key_sealed, blob_key) =
        row.ok_or_else(ApiError::not_found)?;
    let key: [u8; 32] = ctx
        .secrets
        .open(&format!("cura-upload-key:{upload}"), &key_sealed)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("a Cura upload's data key does not open"))?;
    let size = u64::try_from(size).unwrap_or(0);
    let (content_type, ext) = if content_type == crate::upload::UFP {
        (crate::upload::UFP, "ufp")
    } else {
        (crate::upload::GCODE, "gcode")
    };
    let stream = crate::download::plaintext(state, &blob_key, &key, upload, size).await?;
    let incoming = crate::upload::Incoming {
        name: format!("{job_name}.{ext}"),
        content_type,
        declared: Some(size),
        idempotency_key: None,
        state: JobState::Queued,
        detail: Some(("cura_upload", upload.to_string())),
    };
    let job = crate::upload::store(state, auth, &usable, client, incoming, stream).await?;
    Ok((upload, job))
}

/// `POST /connect/v1/clusters/{cluster}/print_jobs/{job}/action/{action}`: Cura's queue
/// actions on the relay's jobs, with the relay's authorization (admins, whoever sent the
/// job, whoever claimed the printer): `pause`, `resume`, `abort`, and `remove` (an abort
/// of a job still waiting). `move` is refused — a printer's jobs run in the order they
/// were sent —, and `force` (send despite a configuration mismatch) has nothing to do:
/// Printworks holds no job back for its configuration. Cura ignores the answers.
pub async fn action(
    State(state): State<RelayState>,
    auth: Auth,
    client: printworks_common::http::ClientInfo,
    Path((cluster, job, action)): Path<(Uuid, Uuid, String)>,
) -> Response {
    use axum::http::StatusCode;
    let on_cluster = match crate::jobs::job_view(&state.ctx.db, job).await {
        Ok(Some(view)) => view.printer_id() == cluster,
        Ok(None) => false,
        Err(e) => return cura_error(e.into()).await,
    };
    if !on_cluster {
        return cura_error(ApiError::not_found()).await;
    }
    let answer = match action.as_str() {
        "pause" => crate::jobs::pause(State(state), auth, client, Path(job)).await,
        "resume" => crate::jobs::resume(State(state), auth, client, Path(job)).await,
        "abort" => crate::jobs::abort(State(state), auth, client, Path(job)).await,
        "remove" => crate::jobs::abort_job(State(state), auth, client, Path(job), true).await,
        "move" => {
            return cura_error(ApiError::conflict(
                "A printer's jobs run in the order they were sent; they cannot be moved.",
            ))
            .await;
        }
        "force" => {
            // Checked like the other actions: only those who may act on the job.
            if let Err(e) = printworks_org::fleet::usable(&state.ctx, &auth, cluster).await {
                return cura_error(e).await;
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        _ => return cura_error(ApiError::not_found()).await,
    };
    match answer {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => cura_error(e).await,
    }
}

/// `GET /cura-packages/v1/user/packages`: what Cura's Marketplace syncs every minute
/// while signed in. Printworks keeps no packages: an empty list, so Cura neither errs nor
/// offers to remove anything.
pub async fn user_packages() -> axum::Json<Value> {
    axum::Json(json!({ "data": [] }))
}

/// Removes uploads past [`UPLOAD_KEPT`] with their files; how many.
pub async fn expire_uploads(state: &RelayState) -> anyhow::Result<usize> {
    let ctx = &state.ctx;
    // Oldest first; one whose file will not go is tried again an hour later, after
    // the others (its expiry moves on), so it never blocks the sweep.
    let old: Vec<(Uuid, String, Option<time::OffsetDateTime>)> = sqlx::query_as(
        "SELECT id, blob_key, uploaded_at FROM cura_uploads WHERE expires_at < $1
         ORDER BY expires_at LIMIT 1000",
    )
    .bind(ctx.now())
    .fetch_all(&ctx.db)
    .await?;
    let mut removed = 0;
    for (id, key, uploaded) in &old {
        // A file never uploaded has no blob.
        if uploaded.is_some()
            && let Err(e) = state.store.delete(key).await
        {
            tracing::warn!(upload_id = %id, error = %format!("{e:#}"), "cannot delete an expired Cura upload; trying again later");
            let _ = sqlx::query("UPDATE cura_uploads SET expires_at = $2 WHERE id = $1")
                .bind(id)
                .bind(ctx.now() + time::Duration::hours(1))
                .execute(&ctx.db)
                .await;
            continue;
        }
        if let Err(e) = sqlx::query("DELETE FROM cura_uploads WHERE id = $1")
            .bind(id)
            .execute(&ctx.db)
            .await
        {
            tracing::warn!(upload_id = %id, error = %e, "cannot remove an expired Cura upload");
            continue;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_become_machine_definition_ids() {
        assert_eq!(printer_type(Some("Ultimaker S5")), "ultimaker_s5");
        assert_eq!(printer_type(Some("  Prusa i3 MK3S+ ")), "prusa_i3_mk3s");
        assert_eq!(printer_type(None), "unknown");
    }
}
