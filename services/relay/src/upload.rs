//! Sending a print job: the upload pipeline from the streamed body to a queued job —
//! quotas, idempotency, the G-code and UFP checks, sealing and storage.
//!
//! `POST /relay/v1/printers/{printer}/jobs?name=…` (scope `print_job.write`) with the
//! file as the streamed body (`text/x-gcode` or `application/x-ufp`). Allowed to admins,
//! the person who claimed the printer and those it is shared with (directly or through a
//! team). The body is never held whole: it is hashed, checked and sealed as it streams
//! to a spool file, which then becomes the stored blob. Over `PRINTWORKS_MAX_JOB_BYTES`
//! answers 413, and a refused upload leaves nothing behind. An `Idempotency-Key` header
//! makes a retried upload return the job it already made.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::{Auth, Caller};
use printworks_common::crypto::hex;
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Path, Query};
use printworks_gcode::{Checker, profile_for};
use printworks_org::fleet::PairedPrinter;
use printworks_proto::JobState;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;
use uuid::Uuid;

use crate::jobs::{job_view, record};
use crate::seal::{Sealer, new_data_key};
use crate::{RelayState, ufp};

pub const GCODE: &str = "text/x-gcode";
pub const UFP: &str = "application/x-ufp";

#[derive(Deserialize)]
pub struct Submit {
    name: Option<String>,
}

pub(crate) fn job_name(name: Option<&str>) -> Result<String, ApiError> {
    let name = name.map(str::trim).unwrap_or_default();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name (in the query) must be 1 to 200 characters, without control characters.",
        ));
    }
    Ok(name.to_owned())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .ok()
        .filter(|v| (1..=200).contains(&v.len()) && v.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 1 to 200 visible ASCII characters.")
        })?;
    Ok(Some(v.to_owned()))
}

pub(crate) fn too_large(max: u64) -> ApiError {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "The request body is too large",
    )
    .detail(format!("A print job may be at most {max} bytes."))
    .into()
}

/// Removes what a refused or failed upload left: its row (while it is still being
/// received), then its blob and spool file. A row that became `queued` — a commit that
/// went through although it reported an error — keeps its blob.
pub(crate) async fn discard(state: &RelayState, id: Uuid, spool: &std::path::Path, blob_key: &str) {
    let _ = tokio::fs::remove_file(spool).await;
    let removed = sqlx::query("DELETE FROM print_jobs WHERE id = $1 AND state = $2")
        .bind(id)
        .bind(JobState::Receiving.as_str())
        .execute(&state.ctx.db)
        .await;
    match removed {
        Ok(r) if r.rows_affected() == 0 => {}
        Ok(_) => {
            if let Err(e) = state.store.delete(blob_key).await {
                tracing::warn!(job_id = %id, error = %format!("{e:#}"), "cannot delete the blob of a refused upload");
            }
        }
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e, "cannot delete a refused upload; the cleanup job will")
        }
    }
}

/// Takes back a job stored `held` whose request then failed (the rest of its form was
/// refused): its row, history and blob go, as if it never arrived. A job started (or
/// aborted) meanwhile stays.
pub(crate) async fn withdraw(state: &RelayState, id: Uuid) {
    let removed: Result<Option<String>, _> = sqlx::query_scalar(
        "DELETE FROM print_jobs WHERE id = $1 AND state = $2 RETURNING blob_key",
    )
    .bind(id)
    .bind(JobState::Held.as_str())
    .fetch_optional(&state.ctx.db)
    .await;
    match removed {
        Ok(Some(key)) => {
            if let Err(e) = state.store.delete(&key).await {
                tracing::warn!(job_id = %id, error = %format!("{e:#}"), "cannot delete the blob of a withdrawn upload; it stays in the store");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(job_id = %id, error = %e, "cannot withdraw a failed upload"),
    }
}

/// Discards an upload that did not finish, however it ended: an error, a refusal, or
/// the request dropped (the client went away, or the upload timed out).
struct Upload {
    state: RelayState,
    id: Uuid,
    spool: std::path::PathBuf,
    blob_key: String,
    done: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let (state, id, spool, key) = (
                self.state.clone(),
                self.id,
                self.spool.clone(),
                self.blob_key.clone(),
            );
            tokio::spawn(async move { discard(&state, id, &spool, &key).await });
        }
    }
}

/// The stored job this submitter already made with this key, if any.
async fn replayed(
    state: &RelayState,
    printer: Uuid,
    caller: &Caller,
    key: &str,
    request: (&str, &str, Option<u64>),
) -> Result<Option<Response>, ApiError> {
    let existing: Option<(Uuid, String, String, String, i64)> = sqlx::query_as(
        "SELECT id, state, name, content_type, size FROM print_jobs
         WHERE printer_id = $1 AND coalesce(submitted_by::text, submitted_by_client) = $2 AND idempotency_key = $3",
    )
    .bind(printer)
    .bind(submitter_key(caller))
    .bind(key)
    .fetch_optional(&state.ctx.db)
    .await?;
    let (name, content_type, length) = request;
    match existing {
        None => Ok(None),
        Some((_, s, ..)) if s == JobState::Receiving.as_str() => Err(ApiError::conflict(
            "An upload with this Idempotency-Key is still in progress.",
        )),
        Some((_, _, n, ct, size))
            if n != name
                || ct != content_type
                || length.is_some_and(|l| i64::try_from(l).ok() != Some(size)) =>
        {
            Err(ApiError::invalid(
                "This Idempotency-Key was used for another upload (another name, type or size).",
            ))
        }
        Some((id, ..)) => {
            let job = job_view(&state.ctx.db, id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            let mut res = (StatusCode::CREATED, Json(job)).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(Some(res))
        }
    }
}

fn submitter_key(caller: &Caller) -> String {
    caller
        .user_id()
        .map_or_else(|| caller.client_id.clone(), |u| u.to_string())
}

pub async fn submit(
    State(state): State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    Path(printer): Path<Uuid>,
    Query(q): Query<Submit>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let usable = printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    let printer = usable.printer.clone();
    let name = job_name(q.name.as_deref())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
    let content_type = match content_type.as_deref() {
        Some(GCODE) => GCODE,
        Some(UFP) => UFP,
        _ => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("Send G-code as text/x-gcode or a UFP package as application/x-ufp.")
            .into());
        }
    };
    let max = state.ctx.settings.relay.max_job_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let key = idempotency_key(&headers)?;
    if let Some(key) = &key
        && let Some(res) = replayed(
            &state,
            printer.id,
            &auth,
            key,
            (&name, content_type, declared),
        )
        .await?
    {
        return Ok(res);
    }
    let incoming = Incoming {
        name,
        content_type,
        declared,
        idempotency_key: key,
        state: JobState::Queued,
        detail: None,
    };
    let id = store(
        &state,
        &auth,
        &usable,
        &client,
        incoming,
        body.into_data_stream(),
    )
    .await?;
    let job = job_view(&state.ctx.db, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

/// A file on its way to becoming a job.
pub(crate) struct Incoming {
    pub name: String,
    /// [`GCODE`] or [`UFP`].
    pub content_type: &'static str,
    /// The length the request declared, if it did.
    pub declared: Option<u64>,
    pub idempotency_key: Option<String>,
    /// What it becomes once stored: `queued`, or `held` (to be started).
    pub state: JobState,
    /// A detail for the audit record (`upload_key`: the key that sent it).
    pub detail: Option<(&'static str, String)>,
}

/// Streams `body` into a sealed, checked, stored job for `usable`'s printer, sent by
/// `caller`; its id. Nothing is kept of a refused or failed upload.
pub(crate) async fn store<S, E>(
    state: &RelayState,
    caller: &Caller,
    usable: &printworks_org::fleet::Usable,
    client: &ClientInfo,
    incoming: Incoming,
    body: S,
) -> Result<Uuid, ApiError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send,
{
    let Incoming {
        name,
        content_type,
        declared,
        idempotency_key: key,
        state: stored_as,
        detail,
    } = incoming;
    let printer = usable.printer.clone();
    let max = state.ctx.settings.relay.max_job_bytes;
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let ctx = &state.ctx;
    let id = Uuid::new_v4();
    let blob_key = format!("jobs/{}/{id}", printer.organization_id);
    let data_key = new_data_key();
    let now = ctx.now();
    // The row first, so that a crash mid-upload leaves something the cleanup finds —
    // once the quotas let it in, under the organization's quota lock.
    let mut tx = ctx.db.begin().await?;
    check_quotas(
        &mut tx,
        ctx,
        &printer,
        &submitter_key(caller),
        declared.unwrap_or(0),
        None,
    )
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO print_jobs (id, printer_id, organization_id, submitted_by, submitted_by_client,
                                 idempotency_key, name, content_type, size, sha256, blob_key, key_sealed,
                                 state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $12, '', $9, $10, $13, $11, $11)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(printer.id)
    .bind(printer.organization_id)
    .bind(caller.user_id())
    .bind(caller.user_id().is_none().then(|| caller.client_id.clone()))
    .bind(&key)
    .bind(&name)
    .bind(content_type)
    .bind(&blob_key)
    .bind(ctx.secrets.seal(&format!("job-key:{id}"), &data_key))
    .bind(now)
    // The declared size counts against the storage quotas while the file arrives, so
    // uploads running side by side see each other (a chunked one counts at its end).
    .bind(i64::try_from(declared.unwrap_or(0)).unwrap_or(i64::MAX))
    .bind(JobState::Receiving.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if inserted == 0 {
        // The same Idempotency-Key raced us.
        return Err(ApiError::conflict(
            "An upload with this Idempotency-Key is already in progress.",
        ));
    }

    let spool = state.store.spool_dir().join(format!("{id}.sealed"));
    let mut upload = Upload {
        state: state.clone(),
        id,
        spool: spool.clone(),
        blob_key: blob_key.clone(),
        done: false,
    };
    let stored = async {
        let (size, digest) = receive(
            state,
            id,
            &data_key,
            &spool,
            body,
            content_type,
            printer.model.as_deref(),
            max,
        )
        .await?;
        state.store.put_file(&blob_key, &spool).await?;
        let queued = async {
            let now = ctx.now();
            let mut tx = ctx.db.begin().await?;
            // The stored bytes once more, with the real size, before the job counts.
            check_quotas(&mut tx, ctx, &printer, "", size, Some(id)).await?;
            // Only a job still arriving is queued: one failed meanwhile (its printer
            // was removed) stays failed.
            let queued = sqlx::query(
                "UPDATE print_jobs SET state = $5, size = $2, sha256 = $3, updated_at = $4
                 WHERE id = $1 AND state = $6",
            )
            .bind(id)
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(&digest[..])
            .bind(now)
            .bind(stored_as.as_str())
            .bind(JobState::Receiving.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if queued == 0 {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "printer-removed",
                    "The printer was removed",
                )
                .detail(
                    "The printer was removed while the file was being sent; nothing was queued.",
                )
                .into());
            }
            record(&mut tx, id, stored_as, None, None, now).await?;
            let mut audit = AuditEvent::new("job.submit", usable.audit_actor(), Outcome::Success)
                .organization(printer.organization_id)
                .source(client.addr)
                .target("job", id)
                .detail("printer_id", printer.id.to_string())
                .detail("name", name.as_str())
                .detail("size", size)
                .detail("sha256", hex(&digest))
                .detail("state", stored_as.as_str());
            if let Some((key, value)) = &detail {
                audit = audit.detail(key, value.as_str());
            }
            audit.write(&mut tx, now).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(())
        };
        queued.await?;
        Ok::<_, ApiError>(size)
    }
    .await;
    // Whatever went wrong, nothing is kept; the answer waits until it is gone.
    upload.done = true;
    let size = match stored {
        Ok(size) => size,
        Err(e) => {
            discard(state, id, &spool, &blob_key).await;
            return Err(e);
        }
    };
    tracing::info!(job_id = %id, printer_id = %printer.id, size, state = %stored_as, "print job stored");
    Ok(id)
}

fn queue_full(detail: String) -> ApiError {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "job-queue-full",
        "Too many jobs are waiting",
    )
    .detail(detail)
    .header(header::RETRY_AFTER, HeaderValue::from_static("60"))
    .into()
}

/// A write to the spool failed: the disk (or its quota) is full — 507, try later; else
/// an error of the server.
pub(crate) fn spool_write(e: std::io::Error) -> ApiError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            tracing::error!(error = %e, "the job spool is full: an upload was refused");
            Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "The job store is full",
            )
            .detail(
                "The server has no room for this job now; nothing of it was kept. Try again later.",
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("300"))
            .into()
        }
        _ => anyhow::Error::from(e).into(),
    }
}

fn storage_full(detail: String) -> ApiError {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "storage-quota-exceeded",
        "Not enough job storage left",
    )
    .detail(detail)
    .into()
}

/// What the printer and its organization hold now, against their limits, under the
/// organization's quota lock (a transaction-scoped advisory lock, so concurrent uploads
/// of one organization are checked one after another): unfinished jobs, stored bytes
/// (with `adding` more; `this` is the job being checked, not counted twice), and — for
/// a new upload (`submitter` not empty) — the uploads that submitter has going.
async fn check_quotas(
    tx: &mut sqlx::PgConnection,
    ctx: &printworks_common::AppContext,
    printer: &PairedPrinter,
    submitter: &str,
    adding: u64,
    this: Option<Uuid>,
) -> Result<(), ApiError> {
    let limits = &ctx.settings.relay;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("job-quota:{}", printer.organization_id))
        .execute(&mut *tx)
        .await?;
    let now = ctx.now();
    let live_upload =
        now - time::Duration::try_from(limits.upload_timeout).unwrap_or(time::Duration::HOUR);
    let (printer_jobs, org_jobs, printer_bytes, org_bytes, uploading): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE printer_id = $2 AND state = ANY($6)),
                    count(*) FILTER (WHERE state = ANY($6)),
                    coalesce(sum(size) FILTER (WHERE printer_id = $2), 0)::bigint,
                    coalesce(sum(size), 0)::bigint,
                    count(*) FILTER (WHERE state = $7 AND created_at > $4
                                       AND coalesce(submitted_by::text, submitted_by_client) = $3)
             FROM print_jobs
             WHERE organization_id = $1 AND blob_deleted_at IS NULL AND id IS DISTINCT FROM $5",
        )
        .bind(printer.organization_id)
        .bind(printer.id)
        .bind(submitter)
        .bind(live_upload)
        .bind(this)
        .bind(JobState::UNFINISHED.map(JobState::as_str))
        .bind(JobState::Receiving.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let adding = i64::try_from(adding).unwrap_or(i64::MAX);
    if this.is_none() {
        if !submitter.is_empty() && uploading >= i64::from(limits.max_uploads_per_caller) {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-uploads",
                "Too many uploads at once",
            )
            .detail(format!(
                "You may send at most {} files at once; wait for one to finish.",
                limits.max_uploads_per_caller
            ))
            .header(header::RETRY_AFTER, HeaderValue::from_static("10"))
            .into());
        }
        if printer_jobs >= i64::from(limits.max_queued_jobs_per_printer) {
            return Err(queue_full(format!(
                "A printer may have at most {} unfinished jobs; wait for some to finish or abort them.",
                limits.max_queued_jobs_per_printer
            )));
        }
        if org_jobs >= i64::from(limits.max_queued_jobs_per_org) {
            return Err(queue_full(format!(
                "An organization may have at most {} unfinished jobs.",
                limits.max_queued_jobs_per_org
            )));
        }
    }
    let over = |held: i64, limit: u64| {
        held.saturating_add(adding) > i64::try_from(limit).unwrap_or(i64::MAX)
    };
    if over(printer_bytes, limits.max_stored_bytes_per_printer) {
        return Err(storage_full(format!(
            "A printer's jobs may keep at most {} bytes of files ({} are kept); files of finished jobs are deleted after the retention period.",
            limits.max_stored_bytes_per_printer, printer_bytes
        )));
    }
    if over(org_bytes, limits.max_stored_bytes_per_org) {
        return Err(storage_full(format!(
            "An organization's jobs may keep at most {} bytes of files ({} are kept).",
            limits.max_stored_bytes_per_org, org_bytes
        )));
    }
    Ok(())
}

/// Streams the body into a sealed spool file, hashing and checking it on the way.
/// Returns its size and SHA-256.
#[allow(clippy::too_many_arguments)]
async fn receive<S, E>(
    state: &RelayState,
    id: Uuid,
    data_key: &[u8; 32],
    spool: &std::path::Path,
    mut stream: S,
    content_type: &str,
    model: Option<&str>,
    max: u64,
) -> Result<(u64, [u8; 32]), ApiError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let profile = profile_for(model);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(spool)
        .await
        .map_err(spool_write)?;
    let (mut sealer, header) = Sealer::new(data_key, id);
    let mut out = header;
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut checker = (content_type == GCODE).then(|| Checker::new(profile));
    let mut size = 0u64;
    loop {
        let chunk = match stream.try_next().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(_) => return Err(ApiError::bad_request("The upload was interrupted.")),
        };
        size += chunk.len() as u64;
        if size > max {
            return Err(too_large(max));
        }
        hasher.update(&chunk);
        if let Some(c) = checker.as_mut() {
            c.feed(&chunk).map_err(ApiError::invalid)?;
        }
        sealer.push(&chunk, &mut out).map_err(ApiError::from)?;
        if out.len() >= 256 * 1024 {
            file.write_all(&out).await.map_err(spool_write)?;
            out.clear();
        }
    }
    if let Some(c) = checker {
        c.finish().map_err(ApiError::invalid)?;
    }
    sealer.finish(&mut out).map_err(ApiError::from)?;
    file.write_all(&out).await.map_err(spool_write)?;
    file.sync_all().await.map_err(spool_write)?;
    drop(file);
    if content_type == UFP {
        let path = spool.to_path_buf();
        let key = *data_key;
        state
            .ufp_checkers
            .run(move || {
                let reader =
                    ufp::SealedFile::open(&path, &key, id, size).map_err(|e| e.to_string())?;
                ufp::check(reader, profile, size)
            })
            .await?
            .map_err(ApiError::invalid)?;
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hasher.finish().as_ref());
    Ok((size, digest))
}
