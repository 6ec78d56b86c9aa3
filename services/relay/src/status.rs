//! Live printer status (process data), kept apart from print files:
//!
//! - `POST /printer/v1/status` ([`report`]): the printer's status now. The latest is
//!   kept per printer; the history keeps at most one report a minute (and one at every
//!   change of state, at most one in 5 s) for 24 hours. A printer that reports more
//!   than twice a second is answered 429.
//! - `GET /relay/v1/printers/{printer}/status` ([`get`]): the latest, and whether the
//!   printer holds its event stream now — for everyone who may see the printer.
//! - `GET /relay/v1/printers/{printer}/status/events` ([`events`]): server-sent `status`
//!   events, the current one first and then the status whenever it changed (changes in
//!   quick succession may arrive as their last), on any replica: a report is
//!   announced on the `printworks_printer_status` channel, which every replica follows
//!   on its dispatch listener's connection ([`crate::dispatch::run`]). Access is checked again at every sweep, and the stream ends when the
//!   caller's token expires or the process stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use printworks_common::auth::Auth;
use printworks_common::error::Problem;
use printworks_common::http::{Json, Path};
use printworks_common::{ApiError, AppContext};
use printworks_proto::{PrinterStatus, StatusView};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{Printer, RelayState};

/// The channel a report is announced on (payload: the printer's id).
pub const CHANNEL: &str = "printworks_printer_status";
/// How long the history keeps reports.
pub const HISTORY: time::Duration = time::Duration::hours(24);
/// The history keeps at most one report per printer in this long (and every change of
/// state).
pub const HISTORY_STEP: time::Duration = time::Duration::minutes(1);
/// A change of state is kept in the history unless one was kept this recently.
pub const CHANGE_STEP: time::Duration = time::Duration::seconds(5);
/// Reports closer together than this are refused (429), whatever their state.
const MIN_INTERVAL: time::Duration = time::Duration::milliseconds(500);
/// How often a status stream looks again whatever it heard: the printer's connection,
/// the caller's access.
const SWEEP: Duration = Duration::from_secs(5);

/// Hints to this replica's status streams: a printer whose status changed, or `None`:
/// look again at everything.
pub type Hints = broadcast::Sender<Option<Uuid>>;

pub fn hints() -> Hints {
    broadcast::channel(1024).0
}

/// `POST /printer/v1/status`.
pub async fn report(
    State(state): State<RelayState>,
    Printer(printer): Printer,
    Json(status): Json<PrinterStatus>,
) -> Result<StatusCode, ApiError> {
    status.check().map_err(ApiError::invalid)?;
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    // A job it names is one of its own: a printer cannot show people another's job.
    if let Some(job) = status.job_id {
        let own: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM print_jobs WHERE id = $1 AND printer_id = $2")
                .bind(job)
                .bind(printer.printer_id)
                .fetch_optional(&mut *tx)
                .await?;
        if own.is_none() {
            return Err(ApiError::invalid(
                "job_id is not one of this printer's jobs.",
            ));
        }
    }
    let previous: Option<(sqlx::types::Json<serde_json::Value>, OffsetDateTime)> = sqlx::query_as(
        "SELECT status, reported_at FROM printer_status WHERE printer_id = $1 FOR UPDATE",
    )
    .bind(printer.printer_id)
    .fetch_optional(&mut *tx)
    .await?;
    let changed_state = previous.as_ref().is_none_or(|(s, _)| {
        s.0.get("state").and_then(|v| v.as_str()) != Some(status.state.as_str())
    });
    // Whatever the state: a printer alternating states must not write without bound.
    if let Some((_, at)) = &previous
        && now - *at < MIN_INTERVAL
    {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many status reports",
        )
        .detail("Report at most once a second while printing, and on change otherwise.")
        .header(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        )
        .into());
    }
    let json = sqlx::types::Json(&status);
    sqlx::query(
        "INSERT INTO printer_status (printer_id, status, reported_at) VALUES ($1, $2, $3)
         ON CONFLICT (printer_id) DO UPDATE SET status = $2, reported_at = $3",
    )
    .bind(printer.printer_id)
    .bind(json)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // The history at reduced resolution: a row a minute, and a change of state unless
    // one was kept in the last few seconds (a flapping printer writes no more than that).
    sqlx::query(
        "INSERT INTO printer_status_history (printer_id, reported_at, status)
         SELECT $1, $2, $3
         WHERE NOT EXISTS (SELECT 1 FROM printer_status_history
                           WHERE printer_id = $1 AND reported_at > CASE WHEN $4 THEN $6 ELSE $5 END)
         ON CONFLICT DO NOTHING",
    )
    .bind(printer.printer_id)
    .bind(now)
    .bind(json)
    .bind(changed_state)
    .bind(now - HISTORY_STEP)
    .bind(now - CHANGE_STEP)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM printer_status_history WHERE printer_id = $1 AND reported_at < $2")
        .bind(printer.printer_id)
        .bind(now - HISTORY)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(printer.printer_id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The printer's latest status and whether it is connected now.
pub async fn view(db: &sqlx::PgPool, printer: Uuid) -> Result<StatusView, ApiError> {
    let row: (
        bool,
        Option<sqlx::types::Json<PrinterStatus>>,
        Option<OffsetDateTime>,
    ) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM printer_streams WHERE printer_id = $1),
                    (SELECT status FROM printer_status WHERE printer_id = $1),
                    (SELECT reported_at FROM printer_status WHERE printer_id = $1)",
    )
    .bind(printer)
    .fetch_one(db)
    .await?;
    Ok(StatusView {
        printer_id: printer,
        connected: row.0,
        status: row.1.map(|s| s.0),
        reported_at: row.2,
    })
}

/// `GET /relay/v1/printers/{printer}/status`.
pub async fn get(
    State(state): State<RelayState>,
    auth: Auth,
    Path(printer): Path<Uuid>,
) -> Result<Json<StatusView>, ApiError> {
    printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    Ok(Json(view(&state.ctx.db, printer).await?))
}

/// Most status streams one caller (a person, or a client acting on its own) holds open
/// with one replica; more are refused (429).
pub const MAX_STREAMS_PER_CALLER: usize = 16;

/// The status streams open with this replica, per caller.
#[derive(Default)]
pub struct Streams {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Streams {
    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more stream of `caller`, held until the guard is dropped.
    fn take(self: &std::sync::Arc<Self>, caller: String) -> Option<StreamSlot> {
        let mut counts = self.counts();
        let n = counts.entry(caller.clone()).or_default();
        if *n >= MAX_STREAMS_PER_CALLER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.clone(),
            caller,
        })
    }
}

/// One open stream's place in [`Streams`].
struct StreamSlot {
    streams: std::sync::Arc<Streams>,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.streams.counts();
        if let Some(n) = counts.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

/// One status stream's state.
struct Watch {
    _slot: StreamSlot,
    ctx: AppContext,
    caller: printworks_common::auth::Caller,
    printer: Uuid,
    hints: broadcast::Receiver<Option<Uuid>>,
    last: Option<StatusView>,
    expires_at: OffsetDateTime,
    sweep: tokio::time::Interval,
    first: bool,
}

impl Watch {
    /// The status as an event, if it differs from the last one sent.
    async fn changed(&mut self) -> anyhow::Result<Option<Event>> {
        let now = view(&self.ctx.db, self.printer)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.last.as_ref() == Some(&now) {
            return Ok(None);
        }
        let event = Event::default()
            .event("status")
            .data(serde_json::to_string(&now)?);
        self.last = Some(now);
        Ok(Some(event))
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.first {
                self.first = false;
            } else {
                let stop = self.ctx.shutdown.clone();
                let until_expiry = (self.expires_at - self.ctx.now())
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(until_expiry) => return None,
                    _ = self.sweep.tick() => {
                        // Still allowed to see it? (Removed from the organization, the
                        // printer unshared or unpaired: the stream ends.)
                        if printworks_org::fleet::usable(&self.ctx, &self.caller, self.printer).await.is_err() {
                            return None;
                        }
                        if self.ctx.now() >= self.expires_at {
                            return None;
                        }
                    }
                    hint = self.hints.recv() => match hint {
                        Ok(Some(p)) if p != self.printer => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                }
            }
            match self.changed().await {
                Ok(Some(e)) => return Some((Ok(e), self)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(printer_id = %self.printer, error = %format!("{e:#}"), "status stream");
                }
            }
        }
    }
}

/// `GET /relay/v1/printers/{printer}/status/events`.
pub async fn events(
    State(state): State<RelayState>,
    auth: Auth,
    Path(printer): Path<Uuid>,
) -> Result<Response, ApiError> {
    printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    let who = match auth.subject {
        printworks_common::auth::Subject::User(id) => format!("user:{id}"),
        printworks_common::auth::Subject::Client { .. } => format!("client:{}", auth.client_id),
    };
    let Some(slot) = state.status_streams.take(who) else {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            "Too many status streams open",
        )
        .detail(format!(
            "At most {MAX_STREAMS_PER_CALLER} status streams per caller are held open; close one first."
        ))
        .into());
    };
    let expires_at =
        OffsetDateTime::from_unix_timestamp(auth.expires_at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.reset();
    let watch = Watch {
        _slot: slot,
        hints: state.status_hints.subscribe(),
        ctx: state.ctx.clone(),
        caller: auth.0,
        printer,
        last: None,
        expires_at,
        sweep,
        first: true,
    };
    let stream = futures_util::stream::unfold(watch, Watch::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Removes history older than [`HISTORY`] (printers that stopped reporting keep none).
pub async fn prune(db: &sqlx::PgPool, now: OffsetDateTime) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM printer_status_history WHERE reported_at < $1")
            .bind(now - HISTORY)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
