//! What printers call on the printer endpoint (their identity comes from their client
//! certificate, [`crate::Printer`]):
//!
//! - `GET /printer/v1/events`: server-sent events, held open — `settings` (firewall,
//!   PIN hash, version) first, then a `job` for every job waiting for this printer, in
//!   queue order (id, name, size, sha256 and the relay's signature over printer, job,
//!   size and digest), an `abort` for each aborted job it has not acknowledged, and a
//!   `heartbeat` when idle. On reconnect everything not finished is sent again: the
//!   printer keeps jobs by id.
//! - `GET /printer/v1/jobs/{job}/content`: the job's file, decrypted as it streams,
//!   with `Range` so an interrupted download resumes. Only this printer's jobs.
//! - `POST /printer/v1/jobs/{job}/status {state, progress, message}`.
//! - `POST /printer/v1/settings/applied {version}`: the printer applied its settings.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::crypto::hex;
use printworks_common::error::Problem;
use printworks_common::http::{Json, Path};
use printworks_pairing::PrinterIdentity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::blob::{ByteStream, read_exact};
use crate::dispatch::EventStream;
use crate::jobs::record;
use crate::registry::Registration;
use crate::seal::{CHUNK, HEADER, OpenError, Opener, chunk_span};
use crate::{Printer, RelayState};

/// Download resumptions recorded in a job's history, at most.
const MAX_RESUMES_RECORDED: i64 = 20;

/// What one event stream has sent, so that a wake-up sends only what is new.
struct Feed {
    state: RelayState,
    printer: PrinterIdentity,
    /// This stream's id in `printer_streams`: while the printer's row names it, it is the
    /// printer's live stream; once another takes over, this one ends.
    id: Uuid,
    stream: Arc<EventStream>,
    _registration: Registration<Arc<EventStream>>,
    pending: VecDeque<Event>,
    sent_jobs: HashSet<Uuid>,
    sent_aborts: HashSet<Uuid>,
    first: bool,
}

#[derive(Deserialize)]
struct Dispatchable {
    id: Uuid,
    name: String,
    content_type: String,
    size: i64,
    sha256: String,
    state: String,
}

#[derive(Deserialize)]
struct SettingsRow {
    firewall_enabled: bool,
    pin_hash: Option<String>,
    version: i64,
}

/// Everything one wake-up of a stream needs, in one statement: whether the stream
/// still owns the printer; the printer's queued jobs claimed (`FOR UPDATE SKIP LOCKED`,
/// only by the owner) with their history; its jobs to send, in queue order; its aborts
/// not acknowledged; its settings.
#[derive(sqlx::FromRow)]
struct Collected {
    mine: bool,
    jobs: sqlx::types::Json<Vec<Dispatchable>>,
    aborts: Vec<Uuid>,
    /// When the newest of `aborts` was asked for.
    latest_abort: Option<time::OffsetDateTime>,
    settings: Option<sqlx::types::Json<SettingsRow>>,
}

const COLLECT: &str = "
WITH owner AS (
    SELECT stream_id = $3 AS mine FROM printer_streams WHERE printer_id = $1
), claimed AS (
    UPDATE print_jobs SET state = 'dispatched', updated_at = $2
    WHERE id IN (SELECT id FROM print_jobs WHERE printer_id = $1 AND state = 'queued'
                 ORDER BY seq FOR UPDATE SKIP LOCKED)
      AND EXISTS (SELECT 1 FROM owner WHERE mine)
    RETURNING id
), history AS (
    INSERT INTO print_job_events (job_id, state, at) SELECT id, 'dispatched', $2 FROM claimed
)
SELECT
    coalesce((SELECT mine FROM owner), false) AS mine,
    (SELECT coalesce(json_agg(json_build_object(
                'id', j.id, 'name', j.name, 'content_type', j.content_type, 'size', j.size,
                'sha256', encode(j.sha256, 'hex'),
                'state', CASE WHEN j.state = 'queued' THEN 'dispatched' ELSE j.state END)
            ORDER BY j.seq), '[]')
     FROM print_jobs j
     WHERE j.printer_id = $1
       AND (j.state IN ('dispatched', 'downloading', 'printing') OR j.id IN (SELECT id FROM claimed))
    ) AS jobs,
    ARRAY(SELECT id FROM print_jobs WHERE printer_id = $1 AND abort_requested_at IS NOT NULL
            AND abort_acknowledged_at IS NULL ORDER BY seq) AS aborts,
    (SELECT max(abort_requested_at) FROM print_jobs WHERE printer_id = $1
            AND abort_acknowledged_at IS NULL) AS latest_abort,
    (SELECT json_build_object('firewall_enabled', firewall_enabled, 'pin_hash', pin_hash,
                              'version', version)
     FROM printer_security WHERE printer_id = $1) AS settings";

impl Feed {
    /// Claims the printer's queued jobs and queues the events it has not sent yet:
    /// one query. `false` when another stream has taken the printer over.
    async fn collect(&mut self) -> anyhow::Result<bool> {
        let ctx = &self.state.ctx;
        let printer = self.printer.printer_id;
        let now = ctx.now();
        ctx.metrics.printer_event_collects.inc();
        let c: Collected = sqlx::query_as(COLLECT)
            .bind(printer)
            .bind(now)
            .bind(self.id)
            .fetch_one(&ctx.db)
            .await?;
        if !c.mine {
            return Ok(false);
        }
        let signer = &self.state.ctx.job_signer;
        for job in c.jobs.0 {
            if !self.sent_jobs.insert(job.id) {
                continue;
            }
            let size = u64::try_from(job.size).unwrap_or_default();
            let signature = signer.sign(printer, job.id, size, &job.sha256);
            let data = json!({
                "id": job.id,
                "name": job.name,
                "content_type": job.content_type,
                "size": size,
                "sha256": job.sha256,
                "state": job.state,
                "signature": signature,
                "key_id": signer.key_id,
            });
            self.pending.push_back(
                Event::default()
                    .event("job")
                    .id(job.id.to_string())
                    .data(data.to_string()),
            );
        }
        for job in c.aborts {
            if self.sent_aborts.insert(job) {
                self.pending.push_back(
                    Event::default()
                        .event("abort")
                        .data(json!({ "id": job }).to_string()),
                );
            }
        }
        let settings = c.settings.map(|s| s.0).unwrap_or(SettingsRow {
            firewall_enabled: false,
            pin_hash: None,
            version: 0,
        });
        if self.stream.settings_unsent(settings.version) {
            let data = json!({
                "firewall_enabled": settings.firewall_enabled,
                "pin_hash": settings.pin_hash,
                "version": settings.version,
            });
            // Settings go first: a printer applies them before it prints.
            self.pending
                .push_front(Event::default().event("settings").data(data.to_string()));
        }
        // What the stream has seen is what this statement read — not the clock, which
        // an abort asked for on another replica need not agree with.
        self.stream.saw(c.latest_abort, settings.version);
        Ok(true)
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            if !self.first {
                let stop = self.state.ctx.shutdown.clone();
                tokio::select! {
                    () = self.stream.notify.notified() => {}
                    // The process stops: end the stream (the printer reconnects elsewhere).
                    () = stop.cancelled() => return None,
                }
            }
            self.first = false;
            match self.collect().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(printer_id = %self.printer.printer_id, "event stream ended: the printer opened another");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(printer_id = %self.printer.printer_id, error = %format!("{e:#}"), "event stream");
                    // Nothing was claimed; try again shortly, whatever wakes us.
                    self.first = true;
                    let stop = self.state.ctx.shutdown.clone();
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        () = stop.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// `GET /printer/v1/events`: takes the printer over (a stream it opened before, here or
/// on another replica, is woken and ends), then streams.
pub async fn events(
    State(state): State<RelayState>,
    Printer(printer): Printer,
) -> Result<Response, ApiError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "WITH taken AS (
             INSERT INTO printer_streams (printer_id, stream_id, opened_at) VALUES ($1, $2, $3)
             ON CONFLICT (printer_id) DO UPDATE SET stream_id = $2, opened_at = $3
             RETURNING printer_id)
         SELECT pg_notify('printworks_printer_work', printer_id::text) FROM taken",
    )
    .bind(printer.printer_id)
    .bind(id)
    .bind(state.ctx.now())
    .execute(&state.ctx.db)
    .await?;
    let stream = Arc::new(EventStream::new());
    let registration = state.wakers.register(printer.printer_id, stream.clone());
    let heartbeat = state.ctx.settings.relay.heartbeat_interval;
    let feed = Feed {
        state,
        printer,
        id,
        stream,
        _registration: registration,
        pending: VecDeque::new(),
        sent_jobs: HashSet::new(),
        sent_aborts: HashSet::new(),
        first: true,
    };
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(heartbeat)
                .event(Event::default().event("heartbeat")),
        )
        .into_response())
}

#[derive(sqlx::FromRow)]
struct Stored {
    state: String,
    size: i64,
    sha256: Vec<u8>,
    content_type: String,
    blob_key: String,
    key_sealed: Vec<u8>,
}

/// A single byte range of `bytes=a-b`, `bytes=a-` or `bytes=-n`; `Err` when it cannot
/// be satisfied. Several ranges, another unit, or one that does not parse mean the
/// whole file.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    // A range that does not parse is ignored (RFC 9110 §14.2): the whole file.
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| s.parse::<u64>().ok();
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => match number(n) {
            Some(0) => return Err(()),
            Some(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            None => return Ok(None),
        },
        (a, "") => match number(a) {
            Some(a) => (a, size.saturating_sub(1)),
            None => return Ok(None),
        },
        (a, b) => match (number(a), number(b)) {
            (Some(a), Some(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
            _ => return Ok(None),
        },
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn gone(state: &str) -> ApiError {
    Problem::new(
        StatusCode::GONE,
        "job-finished",
        "This job is no longer to be printed",
    )
    .detail(format!("The job is {state}."))
    .into()
}

fn damaged() -> ApiError {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "job-file-damaged",
        "The stored file of this job was altered; it is not sent",
    )
    .into()
}

/// Marks the job failed because its stored file does not authenticate.
async fn fail_damaged(state: RelayState, job: Uuid, err: OpenError) {
    tracing::error!(job_id = %job, error = %err, "a stored job file failed authentication; not sent");
    let now = state.ctx.now();
    let result = async {
        let mut tx = state.ctx.db.begin().await?;
        let org: Option<Uuid> = sqlx::query_scalar(
            "UPDATE print_jobs SET state = 'failed', message = $2, finished_at = $3, updated_at = $3
             WHERE id = $1 AND state NOT IN ('completed', 'failed', 'aborted')
             RETURNING organization_id",
        )
        .bind(job)
        .bind("the stored file was altered; it was not sent")
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(org) = org {
            record(
                &mut tx,
                job,
                "failed",
                None,
                Some("the stored file was altered; it was not sent"),
                now,
            )
            .await?;
            AuditEvent::new("job.file_damaged", Actor::System, Outcome::Failure)
                .organization(org)
                .target("job", job)
                .write(&mut tx, now)
                .await?;
        }
        tx.commit().await
    };
    if let Err(e) = result.await {
        tracing::warn!(job_id = %job, error = %e, "cannot mark a damaged job failed");
    }
}

pub async fn content(
    State(state): State<RelayState>,
    Printer(printer): Printer,
    Path(job): Path<Uuid>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = &state.ctx;
    let stored: Option<Stored> = sqlx::query_as(
        "SELECT state, size, sha256, content_type, blob_key, key_sealed FROM print_jobs
         WHERE id = $1 AND printer_id = $2 AND state <> 'receiving'",
    )
    .bind(job)
    .bind(printer.printer_id)
    .fetch_optional(&ctx.db)
    .await?;
    let stored = stored.ok_or_else(ApiError::not_found)?;
    if !matches!(
        stored.state.as_str(),
        "queued" | "dispatched" | "downloading" | "printing"
    ) {
        return Err(gone(&stored.state));
    }
    let size = u64::try_from(stored.size).unwrap_or_default();
    let etag = format!("\"{}\"", hex(&stored.sha256));
    let range = match range(&headers, size) {
        Ok(r) => r,
        Err(()) => {
            return Err(Problem::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                "The range is outside the file",
            )
            .detail(format!("The file has {size} bytes."))
            .header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).map_err(anyhow::Error::from)?,
            )
            .into());
        }
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let key: [u8; 32] = ctx
        .secrets
        .open(&format!("job-key:{job}"), &stored.key_sealed)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("a job's data key does not open"))?;
    let header_bytes = read_exact(state.store.as_ref(), &stored.blob_key, 0, HEADER).await?;
    let opener = match Opener::new(&key, job, size, &header_bytes) {
        Ok(o) => o,
        Err(e) => {
            fail_damaged(state.clone(), job, e).await;
            return Err(damaged());
        }
    };
    // The first chunk is opened before anything is answered: a damaged file is refused
    // with an error, not sent in part.
    let first = if size == 0 { 0 } else { start / CHUNK };
    let last = if size == 0 { 0 } else { end / CHUNK };
    let (from, _) = chunk_span(size, first);
    let (last_start, last_len) = chunk_span(size, last);
    let sealed = state
        .store
        .read_range(&stored.blob_key, from, last_start + last_len - from)
        .await?;
    let mut chunks_stream = Box::pin(decrypt(sealed, opener, size, first, last, start, end));
    let head = match chunks_stream.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(DecryptError::Open(e))) => {
            fail_damaged(state.clone(), job, e).await;
            return Err(damaged());
        }
        Some(Err(DecryptError::Io(e))) => return Err(anyhow::Error::from(e).into()),
        None => bytes::Bytes::new(),
    };
    // Downloading starts with the first request for the file (a HEAD only looks).
    if method != axum::http::Method::HEAD {
        let now = ctx.now();
        let mut tx = ctx.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE print_jobs SET state = 'downloading', updated_at = $2 WHERE id = $1 AND state IN ('queued', 'dispatched')",
        )
        .bind(job)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 1 {
            record(&mut tx, job, "downloading", None, None, now).await?;
        }
        // Resumptions are worth knowing about, up to a point: a printer fetching in
        // pieces must not flood the history.
        if start > 0 {
            let resumed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM print_job_events WHERE job_id = $1 AND message LIKE 'download resumed at byte %'",
            )
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
            if resumed < MAX_RESUMES_RECORDED {
                record(
                    &mut tx,
                    job,
                    "downloading",
                    None,
                    Some(&format!("download resumed at byte {start}")),
                    now,
                )
                .await?;
            }
        }
        tx.commit().await?;
    }

    let failing_state = state.clone();
    let rest = chunks_stream.map(move |r| match r {
        Ok(b) => Ok(b),
        Err(DecryptError::Open(e)) => {
            // Not one unauthenticated byte goes out: the transfer stops here.
            tokio::spawn(fail_damaged(failing_state.clone(), job, e.clone()));
            Err(std::io::Error::other(e))
        }
        Err(DecryptError::Io(e)) => Err(e),
    });
    let body = Body::from_stream(futures_util::stream::once(async move { Ok(head) }).chain(rest));
    let length = if size == 0 { 0 } else { end - start + 1 };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&stored.content_type).map_err(anyhow::Error::from)?,
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(anyhow::Error::from)?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        res.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
                .map_err(anyhow::Error::from)?,
        );
    }
    Ok(res)
}

enum DecryptError {
    Open(OpenError),
    Io(std::io::Error),
}

/// Plaintext bytes `start..=end` from the sealed chunks `first..=last` as they arrive.
fn decrypt(
    sealed: ByteStream,
    opener: Opener,
    size: u64,
    first: u64,
    last: u64,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<bytes::Bytes, DecryptError>> + Send {
    struct S {
        sealed: ByteStream,
        opener: Opener,
        buf: Vec<u8>,
        index: u64,
    }
    let s = S {
        sealed,
        opener,
        buf: Vec::new(),
        index: first,
    };
    futures_util::stream::try_unfold(s, move |mut s| async move {
        if s.index > last || size == 0 && s.index > 0 {
            return Ok(None);
        }
        let (_, len) = chunk_span(size, s.index);
        while (s.buf.len() as u64) < len {
            match s.sealed.try_next().await.map_err(DecryptError::Io)? {
                Some(b) => s.buf.extend_from_slice(&b),
                None => return Err(DecryptError::Open(OpenError::Tampered(s.index))),
            }
        }
        let rest = s.buf.split_off(len as usize);
        let sealed = std::mem::replace(&mut s.buf, rest);
        let plain = s.opener.open(s.index, sealed).map_err(DecryptError::Open)?;
        let chunk_start = s.index * CHUNK;
        let from = start.saturating_sub(chunk_start) as usize;
        let to = ((end + 1).saturating_sub(chunk_start) as usize).min(plain.len());
        s.index += 1;
        let bytes = bytes::Bytes::copy_from_slice(plain.get(from..to).unwrap_or_default());
        Ok(Some((bytes, s)))
    })
}

#[derive(Deserialize)]
pub struct Status {
    state: String,
    progress: Option<f32>,
    message: Option<String>,
}

#[derive(Serialize)]
pub struct StatusAnswer {
    id: Uuid,
    status: String,
}

fn clean_message(m: Option<&str>) -> Option<String> {
    m.map(|m| {
        m.chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect::<String>()
    })
    .filter(|m| !m.trim().is_empty())
}

pub async fn status(
    State(state): State<RelayState>,
    Printer(printer): Printer,
    Path(job): Path<Uuid>,
    Json(req): Json<Status>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let new = req.state.as_str();
    if !matches!(
        new,
        "downloading" | "printing" | "completed" | "failed" | "aborted"
    ) {
        return Err(ApiError::invalid(
            "state must be downloading, printing, completed, failed or aborted.",
        ));
    }
    if req.progress.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err(ApiError::invalid("progress must be between 0 and 100."));
    }
    let message = clean_message(req.message.as_deref());
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let current: Option<(String, Option<time::OffsetDateTime>)> = sqlx::query_as(
        "SELECT state, abort_requested_at FROM print_jobs
         WHERE id = $1 AND printer_id = $2 AND state <> 'receiving' FOR UPDATE",
    )
    .bind(job)
    .bind(printer.printer_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (current, abort_requested) = current.ok_or_else(ApiError::not_found)?;
    let rank = |s: &str| match s {
        "queued" => 0,
        "dispatched" => 1,
        "downloading" => 2,
        "printing" => 3,
        _ => 4,
    };
    let terminal = rank(&current) == 4;
    if current == "aborted" && abort_requested.is_some() {
        // The printer hears of the abort: whatever it says now, the job stays aborted.
        // Its first word after the abort is kept; repeats are not.
        let first = sqlx::query(
            "UPDATE print_jobs SET abort_acknowledged_at = $2 WHERE id = $1 AND abort_acknowledged_at IS NULL",
        )
        .bind(job)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if first && new != "aborted" {
            record(
                &mut tx,
                job,
                "aborted",
                None,
                Some(&format!("the printer reported {new} after the abort")),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        return Ok(Json(StatusAnswer {
            id: job,
            status: current,
        }));
    }
    if terminal || rank(new) < rank(&current) {
        if current == new {
            return Ok(Json(StatusAnswer {
                id: job,
                status: current,
            }));
        }
        return Err(ApiError::conflict(format!(
            "The job is {current}; it cannot become {new}."
        )));
    }
    sqlx::query(
        "UPDATE print_jobs SET state = $2,
                progress = CASE WHEN state = $2 THEN coalesce($3, progress) ELSE $3 END,
                message = coalesce($4, message),
                updated_at = $5, finished_at = CASE WHEN $2 IN ('completed', 'failed', 'aborted') THEN $5 END
         WHERE id = $1",
    )
    .bind(job)
    .bind(new)
    .bind(req.progress)
    .bind(&message)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // Progress within a state is kept on the job; a new state goes into the history.
    if new != current || message.is_some() {
        record(&mut tx, job, new, req.progress, message.as_deref(), now).await?;
    }
    tx.commit().await?;
    Ok(Json(StatusAnswer {
        id: job,
        status: new.to_owned(),
    }))
}

#[derive(Deserialize)]
pub struct Applied {
    version: i64,
}

pub async fn settings_applied(
    State(state): State<RelayState>,
    Printer(printer): Printer,
    Json(req): Json<Applied>,
) -> Result<StatusCode, ApiError> {
    let confirmed = printworks_org::printers::confirm_security(
        &state.ctx.db,
        printer.printer_id,
        req.version,
        state.ctx.now(),
    )
    .await?;
    if !confirmed {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM printer_security WHERE printer_id = $1")
                .bind(printer.printer_id)
                .fetch_optional(&state.ctx.db)
                .await?;
        // Confirming the current version again (or version 0 when nothing was ever set)
        // is fine; anything else is not what the printer was sent.
        if current != Some(req.version) && !(current.is_none() && req.version == 0) {
            tracing::info!(printer_id = %printer.printer_id, version = req.version, ?current, "settings confirmation for another version");
            return Err(ApiError::conflict(
                "That is not the printer's current settings version.",
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
