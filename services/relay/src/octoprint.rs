//! `{PUBLIC_URL}/octoprint/{printer}/`: an OctoPrint-compatible host for one printer,
//! so that slicers that upload to OctoPrint (PrusaSlicer, OrcaSlicer, SuperSlicer,
//! Cura's OctoPrint plugin, `octoprint-cli`) send their files to Printworks. The key is
//! a printer upload key ([`crate::upload_keys`]) in `X-Api-Key`.
//!
//! Only what slicers use is answered, in OctoPrint's shapes:
//!
//! - `GET api/version`: `{"api", "server", "text"}`, `text` starting with `OctoPrint`
//!   (PrusaSlicer checks it), to test the connection;
//! - `GET api/job`: the printer's current job and progress as OctoPrint shows a job
//!   (clients use it to check the key);
//! - `POST api/files/local` (multipart: `file`, `print`, `select`, `path`): the file
//!   becomes a job — queued when `print` is true, else `held` until someone starts it
//!   (`POST /relay/v1/jobs/{job}/start`). Checked, sealed and limited like any job.
//!
//! Nothing else of OctoPrint is pretended: other paths are 404. Refusals are OctoPrint's
//! `{"error": "…"}` with the reason a slicer shows (a bad key 403, a file over the
//! printer's limits 422 naming the line, too large 413).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::Caller;
use printworks_common::http::{ClientInfo, Path};
use printworks_org::fleet::Usable;
use printworks_proto::JobState;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::RelayState;
use crate::jobs::record;
use crate::upload::{GCODE, Incoming, UFP, job_name, store};
use crate::upload_keys;

/// Where the OctoPrint-compatible hosts live: `/octoprint/{printer}/…`.
pub const PREFIX: &str = "/octoprint";
/// The OctoPrint version the host says it speaks (its API as of that release).
const SPEAKS: &str = "1.11.8";
/// The most form fields besides the file, and the longest of them.
const MAX_FIELDS: usize = 16;
const MAX_FIELD_BYTES: usize = 4096;

/// An answer in OctoPrint's error shape, from any refusal: its status, and its words.
async fn refusal(e: ApiError) -> Response {
    printworks_common::error::reshape(e.into_response(), |status, problem| {
        let text = problem["detail"]
            .as_str()
            .or_else(|| problem["title"].as_str())
            .unwrap_or("The request was refused.");
        (status, json!({ "error": text }))
    })
    .await
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({
            "error": "Invalid API key: use a Printworks upload key of this printer."
        })),
    )
        .into_response()
}

/// The key's maker and their use of the printer, or the refusal to answer.
async fn authorized(
    state: &RelayState,
    headers: &HeaderMap,
    printer: Uuid,
) -> Result<(Caller, Uuid, Usable), Response> {
    let Some(key) = upload_keys::presented(headers) else {
        return Err(forbidden());
    };
    let (caller, key_id) = match upload_keys::caller(state, key, printer).await {
        Ok(Some(found)) => found,
        Ok(None) => return Err(forbidden()),
        Err(e) => return Err(refusal(e).await),
    };
    match printworks_org::fleet::usable(&state.ctx, &caller, printer).await {
        Ok(usable) => Ok((caller, key_id, usable)),
        // The maker may no longer use the printer (left, removed, the printer unshared):
        // the key is worth nothing now.
        Err(ApiError::Problem(p)) if p.status() == StatusCode::NOT_FOUND => Err(forbidden()),
        Err(e) => Err(refusal(e).await),
    }
}

/// `GET /octoprint/{printer}/api/version`.
pub async fn version(
    State(state): State<RelayState>,
    Path(printer): Path<Uuid>,
    headers: HeaderMap,
) -> Response {
    if let Err(res) = authorized(&state, &headers, printer).await {
        return res;
    }
    axum::Json(json!({
        "api": "0.1",
        "server": SPEAKS,
        "text": format!("OctoPrint {SPEAKS} (Printworks {})", env!("CARGO_PKG_VERSION")),
    }))
    .into_response()
}

/// `GET /octoprint/{printer}/api/job`: the printer's current job as OctoPrint shows one.
pub async fn job(
    State(state): State<RelayState>,
    Path(printer): Path<Uuid>,
    headers: HeaderMap,
) -> Response {
    let maker = match authorized(&state, &headers, printer).await {
        Ok((caller, ..)) => caller.user_id(),
        Err(res) => return res,
    };
    match current_job(&state, printer, maker).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => refusal(e).await,
    }
}

/// The printer's current job: its file named only to whoever sent it (a key may send
/// jobs; it need not read other people's).
async fn current_job(
    state: &RelayState,
    printer: Uuid,
    maker: Option<Uuid>,
) -> Result<Value, ApiError> {
    let db = &state.ctx.db;
    let status = crate::status::view(db, printer).await?;
    let current: Option<(String, i64, Option<f32>, time::OffsetDateTime)> = sqlx::query_as(
        "SELECT CASE WHEN submitted_by IS NOT DISTINCT FROM $3 THEN name ELSE '' END,
                size, progress, created_at FROM print_jobs
         WHERE printer_id = $1 AND state = ANY($2) ORDER BY seq LIMIT 1",
    )
    .bind(printer)
    .bind(JobState::WITH_PRINTER.map(JobState::as_str))
    .bind(maker)
    .fetch_optional(db)
    .await?;
    let state_text = match status.status.as_ref().map(|s| s.state) {
        _ if !status.connected => "Offline",
        Some(printworks_proto::PrinterState::Printing) => "Printing",
        Some(printworks_proto::PrinterState::Paused) => "Paused",
        Some(printworks_proto::PrinterState::Error) => "Error",
        Some(printworks_proto::PrinterState::Offline) => "Offline",
        Some(printworks_proto::PrinterState::Idle) | None => "Operational",
    };
    let file = match &current {
        Some((name, size, _, created)) => {
            let name = (!name.is_empty()).then_some(name.as_str());
            json!({
                "name": name, "display": name, "path": name, "origin": "local",
                "size": size, "date": created.unix_timestamp(),
            })
        }
        None => json!({"name": null, "display": null, "path": null, "origin": null,
                       "size": null, "date": null}),
    };
    Ok(json!({
        "job": {
            "file": file,
            "estimatedPrintTime": null,
            "averagePrintTime": null,
            "lastPrintTime": null,
            "filament": null,
            "user": null,
        },
        "progress": {
            "completion": current.as_ref().and_then(|c| c.2),
            "filepos": null,
            "printTime": null,
            "printTimeLeft": null,
            "printTimeLeftOrigin": null,
        },
        "state": state_text,
    }))
}

/// What the form may still send: the bytes read so far, and how many it may reach.
/// Before the file and after it only the small fields (and their headers) may come —
/// [`FIELDS_BUDGET`] bytes —; while the file streams, up to the job size limit more. So
/// the parser never holds more than that in memory, whatever arrives (a preamble without
/// a boundary, endless headers).
#[derive(Default)]
struct Budget {
    read: std::sync::atomic::AtomicU64,
    limit: std::sync::atomic::AtomicU64,
}

/// The bytes the form may take besides the file.
const FIELDS_BUDGET: u64 = 64 * 1024;

impl Budget {
    fn allow(&self, more: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.limit.store(self.read.load(SeqCst) + more, SeqCst);
    }
}

/// A form field's text, at most [`MAX_FIELD_BYTES`] (more is refused).
async fn small_text(field: &mut multer::Field<'_>) -> Result<String, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
        if out.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request("A form field is too long."));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn unreadable(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::bad_request("The form is larger than a file and its fields may be.")
        }
        multer::Error::StreamReadFailed(_) => ApiError::bad_request(
            "The form is larger than a file and its fields may be, or was cut off.",
        ),
        _ => ApiError::bad_request("The form could not be read."),
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "y" | "on"
    )
}

/// What the file's name says it is.
fn content_type(file_name: &str) -> Option<&'static str> {
    let ext = file_name.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "gcode" | "gco" | "g" => Some(GCODE),
        "ufp" => Some(UFP),
        _ => None,
    }
}

/// `POST /octoprint/{printer}/api/files/local`.
pub async fn upload(
    State(state): State<RelayState>,
    Path(printer): Path<Uuid>,
    client: ClientInfo,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (caller, key_id, usable) = match authorized(&state, &headers, printer).await {
        Ok(a) => a,
        Err(res) => return res,
    };
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        return refusal(ApiError::bad_request(
            "Send the file as multipart/form-data, in a field named file.",
        ))
        .await;
    };
    let budget = std::sync::Arc::new(Budget::default());
    budget.allow(FIELDS_BUDGET);
    let stream = {
        use futures_util::StreamExt as _;
        use std::sync::atomic::Ordering::SeqCst;
        let budget = budget.clone();
        body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let read = budget.read.fetch_add(chunk.len() as u64, SeqCst) + chunk.len() as u64;
            if read > budget.limit.load(SeqCst) {
                return Err(std::io::Error::other("the form is too large"));
            }
            Ok::<_, std::io::Error>(chunk)
        })
    };
    // The file's own limit is the upload's (413 past PRINTWORKS_MAX_JOB_BYTES).
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .per_field(MAX_FIELD_BYTES as u64)
            .for_field("file", u64::MAX),
    );
    let form = multer::Multipart::with_constraints(stream, boundary, constraints);
    match receive(&state, &caller, key_id, &usable, &client, form, &budget).await {
        Ok((id, name, print)) => {
            let resource = state
                .ctx
                .settings
                .public_url
                .link(&format!("/relay/v1/jobs/{id}"));
            let mut res = (
                StatusCode::CREATED,
                axum::Json(json!({
                    "done": true,
                    "effectivePrint": print,
                    "effectiveSelect": print,
                    "files": {"local": {
                        "name": name, "display": name, "path": name, "origin": "local",
                        "refs": {"resource": resource},
                    }},
                    "printworks": {
                        "job_id": id,
                        "state": if print { "queued" } else { "held" },
                    },
                })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&resource) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        Err(e) => refusal(e).await,
    }
}

/// Reads the whole form: the small fields, and the one file streamed into a job, stored
/// `held`. Only once the form was read to its end is the job queued (when `print` said
/// so, wherever it came); a form that fails after the file withdraws the job, so that a
/// slicer retrying a failed upload never prints the file twice.
async fn receive(
    state: &RelayState,
    caller: &Caller,
    key_id: Uuid,
    usable: &Usable,
    client: &ClientInfo,
    form: multer::Multipart<'_>,
    budget: &Budget,
) -> Result<(Uuid, String, bool), ApiError> {
    let mut stored: Option<(Uuid, String)> = None;
    let read = read_form(
        state,
        caller,
        key_id,
        usable,
        client,
        form,
        budget,
        &mut stored,
    )
    .await;
    let outcome = match (read, &stored) {
        (Ok(print), Some((id, name))) => {
            if print {
                start(state, usable, *id)
                    .await
                    .map(|()| (*id, name.clone(), print))
            } else {
                Ok((*id, name.clone(), print))
            }
        }
        (Ok(_), None) => return Err(ApiError::bad_request("No file included.")),
        (Err(e), _) => Err(e),
    };
    if outcome.is_err()
        && let Some((id, _)) = stored
    {
        crate::upload::withdraw(state, id).await;
    }
    outcome
}

/// The form's fields, the file stored into `stored`; whether `print` was true (its
/// first value counts).
#[allow(clippy::too_many_arguments)]
async fn read_form(
    state: &RelayState,
    caller: &Caller,
    key_id: Uuid,
    usable: &Usable,
    client: &ClientInfo,
    mut form: multer::Multipart<'_>,
    budget: &Budget,
    stored: &mut Option<(Uuid, String)>,
) -> Result<bool, ApiError> {
    let mut print: Option<bool> = None;
    let mut fields = 0;
    while let Some(mut field) = form.next_field().await.map_err(unreadable)? {
        fields += 1;
        if fields > MAX_FIELDS + 1 {
            return Err(ApiError::bad_request("The form has too many fields."));
        }
        match field.name() {
            Some("file") if stored.is_some() => {
                return Err(ApiError::bad_request("Send one file per upload."));
            }
            Some("file") => {
                let file_name = field.file_name().unwrap_or_default().to_owned();
                // Only the name, not a folder of the sender's.
                let name = file_name
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let name = job_name(Some(&name))?;
                let Some(content_type) = content_type(&name) else {
                    return Err(printworks_common::error::Problem::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported-media-type",
                        "Unsupported media type",
                    )
                    .detail("Printworks prints G-code (.gcode, .gco, .g) and UFP (.ufp) files.")
                    .into());
                };
                let incoming = Incoming {
                    name: name.clone(),
                    content_type,
                    declared: None,
                    idempotency_key: None,
                    state: JobState::Held,
                    detail: Some(("upload_key", key_id.to_string())),
                };
                // The file, and room for the chunk that crosses the job limit (refused
                // with 413 by the upload itself).
                budget.allow(state.ctx.settings.relay.max_job_bytes + FIELDS_BUDGET + (4 << 20));
                let id = store(state, caller, usable, client, incoming, field).await?;
                budget.allow(FIELDS_BUDGET);
                *stored = Some((id, name));
            }
            Some("print") => {
                let v = truthy(&small_text(&mut field).await?);
                print.get_or_insert(v);
            }
            // select, path, userdata, and whatever else a client sends (octoprint-cli
            // sends its file's path as a second file part): read and left.
            _ => {
                small_text(&mut field).await?;
            }
        }
    }
    Ok(print.unwrap_or(false))
}

/// A job stored held, whose form said `print`: queued now.
async fn start(state: &RelayState, usable: &Usable, id: Uuid) -> Result<(), ApiError> {
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let started = sqlx::query(
        "UPDATE print_jobs SET state = $2, updated_at = $3 WHERE id = $1 AND state = $4",
    )
    .bind(id)
    .bind(JobState::Queued.as_str())
    .bind(now)
    .bind(JobState::Held.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if started == 1 {
        record(&mut tx, id, JobState::Queued, None, None, now).await?;
        AuditEvent::new("job.start", usable.audit_actor(), Outcome::Success)
            .organization(usable.printer.organization_id)
            .target("job", id)
            .detail("printer_id", usable.printer.id.to_string())
            .detail("was", JobState::Held.as_str())
            .write(&mut tx, now)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
