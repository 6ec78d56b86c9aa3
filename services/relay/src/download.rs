//! `GET /printer/v1/jobs/{job}/content`: a job's file, decrypted as it streams, with
//! `Range` so an interrupted download resumes. Only the calling printer's jobs; a file
//! that does not authenticate is never sent, and its job fails.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::crypto::hex;
use printworks_common::error::Problem;
use printworks_common::http::Path;
use printworks_proto::JobState;
use uuid::Uuid;

use crate::blob::{ByteStream, read_exact};
use crate::jobs::{record, stored_state};
use crate::seal::{CHUNK, HEADER, OpenError, Opener, chunk_span};
use crate::{Printer, RelayState};

/// Download resumptions recorded in a job's history, at most.
const MAX_RESUMES_RECORDED: i64 = 20;

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

fn gone(state: JobState) -> ApiError {
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
            "UPDATE print_jobs SET state = $4, message = $2, finished_at = $3, updated_at = $3
             WHERE id = $1 AND state <> ALL($5)
             RETURNING organization_id",
        )
        .bind(job)
        .bind("the stored file was altered; it was not sent")
        .bind(now)
        .bind(JobState::Failed.as_str())
        .bind(JobState::TERMINAL.map(JobState::as_str))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(org) = org {
            record(
                &mut tx,
                job,
                JobState::Failed,
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
         WHERE id = $1 AND printer_id = $2 AND state <> $3",
    )
    .bind(job)
    .bind(printer.printer_id)
    .bind(JobState::Receiving.as_str())
    .fetch_optional(&ctx.db)
    .await?;
    let stored = stored.ok_or_else(ApiError::not_found)?;
    let current = stored_state(&stored.state)?;
    // A held job is not the printer's yet.
    if current == JobState::Held {
        return Err(ApiError::not_found());
    }
    if !current.is_active() {
        return Err(gone(current));
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
        // As JobState::on_download says (queued | dispatched → downloading), in one
        // statement whatever the state became since it was read.
        let from = JobState::ALL
            .into_iter()
            .filter(|s| s.on_download() == Some(JobState::Downloading))
            .map(JobState::as_str)
            .collect::<Vec<_>>();
        let moved = sqlx::query(
            "UPDATE print_jobs SET state = $3, updated_at = $2 WHERE id = $1 AND state = ANY($4)",
        )
        .bind(job)
        .bind(now)
        .bind(JobState::Downloading.as_str())
        .bind(from)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 1 {
            record(&mut tx, job, JobState::Downloading, None, None, now).await?;
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
                    JobState::Downloading,
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

/// The whole plaintext of the sealed blob at `blob_key` (sealed with `key` for `id`, of
/// `size` bytes), as it streams; a damaged or tampered file ends the stream with an error.
pub(crate) async fn plaintext(
    state: &RelayState,
    blob_key: &str,
    key: &[u8; 32],
    id: Uuid,
    size: u64,
) -> anyhow::Result<impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + use<>> {
    let header_bytes = read_exact(state.store.as_ref(), blob_key, 0, HEADER).await?;
    let opener = Opener::new(key, id, size, &header_bytes)
        .map_err(|e| anyhow::anyhow!("the stored file does not open: {e:?}"))?;
    let last = if size == 0 { 0 } else { (size - 1) / CHUNK };
    let (from, _) = chunk_span(size, 0);
    let (last_start, last_len) = chunk_span(size, last);
    let sealed = state
        .store
        .read_range(blob_key, from, last_start + last_len - from)
        .await?;
    let stream = decrypt(sealed, opener, size, 0, last, 0, size.saturating_sub(1)).map(|r| {
        r.map_err(|e| match e {
            DecryptError::Io(e) => e,
            DecryptError::Open(e) => {
                std::io::Error::other(format!("the stored file is damaged: {e:?}"))
            }
        })
    });
    Ok(Box::pin(stream))
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
