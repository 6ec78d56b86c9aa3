//! What printers report on the printer endpoint (their identity comes from their
//! client certificate, [`crate::Printer`]), in the protocol's types
//! ([`printworks_proto`]):
//!
//! - `POST /printer/v1/jobs/{job}/status {state, progress, message}`;
//! - `POST /printer/v1/settings/applied {version}`: the printer applied its settings;
//! - `GET /printer/v1/identity`, `POST /printer/v1/certificate {csr_pem}`.
//!
//! Its event stream is [`crate::events`], its downloads [`crate::download`].

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::http::{ClientInfo, Json, Path};
use printworks_org::fleet::{Confirmation, NotApplied, confirm_security};
use printworks_pairing::renewal::{Renewed, renew_over_tls};
use printworks_proto::{
    JobState, JobStatusAnswer, JobStatusReport, PrinterIdentity, ReportOutcome, ReportedState,
    SettingsAppliedRequest, TlsRenewalRequest,
};
use uuid::Uuid;

use crate::jobs::{record, stored_state};
use crate::{Printer, RelayState};

fn clean_message(m: Option<&str>) -> Option<String> {
    m.map(|m| {
        m.chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect::<String>()
    })
    .filter(|m| !m.trim().is_empty())
}

/// `POST /printer/v1/jobs/{job}/status {state, progress, message}`: what the printer
/// says of one of its jobs; the job moves as [`JobState::on_report`] says.
pub async fn status(
    State(state): State<RelayState>,
    Printer(printer): Printer,
    Path(job): Path<Uuid>,
    Json(req): Json<JobStatusReport<String>>,
) -> Result<Json<JobStatusAnswer>, ApiError> {
    let Some(reported) = ReportedState::parse(&req.state) else {
        return Err(ApiError::invalid(
            "state must be downloading, printing, paused, completed, failed or aborted.",
        ));
    };
    if req.progress.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err(ApiError::invalid("progress must be between 0 and 100."));
    }
    let message = clean_message(req.message.as_deref());
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let current: Option<(String, Option<time::OffsetDateTime>)> = sqlx::query_as(
        "SELECT state, abort_requested_at FROM print_jobs
         WHERE id = $1 AND printer_id = $2 AND state <> $3 FOR UPDATE",
    )
    .bind(job)
    .bind(printer.printer_id)
    .bind(JobState::Receiving.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let (current, abort_requested) = current.ok_or_else(ApiError::not_found)?;
    let current = stored_state(&current)?;
    let answer = |status| Json(JobStatusAnswer { id: job, status });
    let new = match current.on_report(reported, abort_requested.is_some()) {
        ReportOutcome::AcknowledgesAbort => {
            // The printer hears of the abort: whatever it says now, the job stays
            // aborted. Its first word after the abort is kept; repeats are not.
            let first = sqlx::query(
                "UPDATE print_jobs SET abort_acknowledged_at = $2 WHERE id = $1 AND abort_acknowledged_at IS NULL",
            )
            .bind(job)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if first && reported != ReportedState::Aborted {
                record(
                    &mut tx,
                    job,
                    JobState::Aborted,
                    None,
                    Some(&format!("the printer reported {reported} after the abort")),
                    now,
                )
                .await?;
            }
            tx.commit().await?;
            return Ok(answer(current));
        }
        ReportOutcome::AlreadyThere => return Ok(answer(current)),
        ReportOutcome::Refused => {
            return Err(ApiError::conflict(format!(
                "The job is {current}; it cannot become {reported}."
            )));
        }
        ReportOutcome::MovesTo(new) => new,
    };
    sqlx::query(
        "UPDATE print_jobs SET state = $2,
                progress = CASE WHEN state = $2 THEN coalesce($3, progress) ELSE $3 END,
                message = coalesce($4, message),
                updated_at = $5, finished_at = CASE WHEN $6 THEN $5 END
         WHERE id = $1",
    )
    .bind(job)
    .bind(new.as_str())
    .bind(req.progress)
    .bind(&message)
    .bind(now)
    .bind(new.is_terminal())
    .execute(&mut *tx)
    .await?;
    // The printer did what was last asked (held the print, or went on with it): the
    // wish is settled and no longer sent on each connection.
    sqlx::query(
        "UPDATE print_jobs SET hold_changed_at = NULL
         WHERE id = $1 AND hold_changed_at IS NOT NULL
           AND ((state = 'paused' AND pause_requested) OR (state = 'printing' AND NOT pause_requested))",
    )
    .bind(job)
    .execute(&mut *tx)
    .await?;
    // Progress within a state is kept on the job; a new state goes into the history.
    if new != current || message.is_some() {
        record(&mut tx, job, new, req.progress, message.as_deref(), now).await?;
    }
    tx.commit().await?;
    Ok(answer(new))
}

/// `POST /printer/v1/settings/applied {version}`: the printer applied its settings.
pub async fn settings_applied(
    State(state): State<RelayState>,
    Printer(printer): Printer,
    Json(req): Json<SettingsAppliedRequest>,
) -> Result<StatusCode, ApiError> {
    let mut not_applied = Vec::new();
    for name in &req.not_applied {
        let Some(n) = NotApplied::parse(name) else {
            return Err(ApiError::invalid(
                "not_applied names settings: firewall, pin.",
            ));
        };
        not_applied.push(n);
    }
    not_applied.sort();
    not_applied.dedup();
    let confirmation = confirm_security(
        &state.ctx.db,
        printer.printer_id,
        req.version,
        &not_applied,
        state.ctx.now(),
    )
    .await?;
    match confirmation {
        Confirmation::Confirmed | Confirmation::AlreadyConfirmed => Ok(StatusCode::NO_CONTENT),
        // Not what the printer was sent.
        Confirmation::NotCurrent(current) => {
            tracing::info!(printer_id = %printer.printer_id, version = req.version, ?current, "settings confirmation for another version");
            Err(ApiError::conflict(
                "That is not the printer's current settings version.",
            ))
        }
    }
}

/// `GET /printer/v1/identity`: who the endpoint takes the caller for.
pub async fn identity(Printer(who): Printer) -> Json<PrinterIdentity> {
    Json(who)
}

/// `POST /printer/v1/certificate {csr_pem}`: a new certificate while the current one
/// is valid.
pub async fn renew(
    State(state): State<RelayState>,
    Printer(who): Printer,
    client: ClientInfo,
    Json(req): Json<TlsRenewalRequest>,
) -> Result<(StatusCode, Json<Renewed>), ApiError> {
    let renewed = renew_over_tls(&state.ctx, &state.ca, &who, &req.csr_pem, client.addr).await?;
    Ok((StatusCode::CREATED, Json(renewed)))
}
