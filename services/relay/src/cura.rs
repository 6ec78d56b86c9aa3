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

/// A date as Cura's parser takes it: `%Y-%m-%dT%H:%M:%S.%fZ`, in UTC.
pub fn cura_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

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

/// A refusal in Cura's error envelope, from any [`ApiError`].
async fn cura_error(e: ApiError) -> Response {
    let res = e.into_response();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = problem["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:printworks:problem:"))
        .unwrap_or("error");
    let title = problem["title"]
        .as_str()
        .unwrap_or("The request was refused");
    let mut error = json!({
        "id": problem["request_id"].as_str().unwrap_or_default(),
        "code": code,
        "title": title,
        "http_status": status.as_u16().to_string(),
    });
    if let Some(detail) = problem["detail"].as_str() {
        error["detail"] = json!(detail);
    }
    (status, axum::Json(json!({ "errors": [error] }))).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_as_curas_parser_takes_them() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_763_035_200_500_000_000).unwrap();
        assert_eq!(cura_time(t), "2025-11-13T12:00:00.500Z");
    }

    #[test]
    fn models_become_machine_definition_ids() {
        assert_eq!(printer_type(Some("Ultimaker S5")), "ultimaker_s5");
        assert_eq!(printer_type(Some("  Prusa i3 MK3S+ ")), "prusa_i3_mk3s");
        assert_eq!(printer_type(None), "unknown");
    }
}
