//! `GET /printer/v1/events`: the printer's event stream (server-sent events, held
//! open): `settings` (firewall, PIN hash, version) first, then a `job` for every job
//! waiting for this printer, in queue order (id, name, size, sha256 and the relay's
//! signature over printer, job, size and digest), an `abort` for each aborted job it has
//! not acknowledged, a `pause` or `resume` for each job someone paused or resumed (the
//! newest wish), and a `heartbeat` when idle. On reconnect everything not finished
//! is sent again: the printer keeps jobs by id. The events are
//! [`printworks_proto::PrinterEvent`]s, which the agent parses with the same types.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_proto::printer::event;
use printworks_proto::{
    AbortEvent, HoldEvent, JobEvent, JobState, PrinterEvent, PrinterIdentity, SettingsEvent,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::dispatch::EventStream;
use crate::registry::Registration;
use crate::{Printer, RelayState};

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
    /// The pause (true) or resume (false) last sent for each job, and when it was asked.
    sent_holds: HashMap<Uuid, (bool, String)>,
    first: bool,
    /// The process is stopping: `reconnect` was sent, the stream ends.
    ended: bool,
}

#[derive(Deserialize)]
struct Hold {
    id: Uuid,
    pause: bool,
    /// When it was asked: a new wish the same way (after the printer held a print by
    /// itself, say) is sent again.
    at: String,
}

#[derive(Deserialize)]
struct Dispatchable {
    id: Uuid,
    name: String,
    content_type: String,
    size: i64,
    sha256: String,
    state: JobState,
}

/// What one wake-up of a stream needs of the relay's tables, in one statement: whether
/// the stream still owns the printer; the printer's queued jobs claimed (`FOR UPDATE
/// SKIP LOCKED`, only by the owner) with their history; its jobs to send, in queue
/// order; its aborts not acknowledged. (Its settings are the org service's to read.)
#[derive(sqlx::FromRow)]
struct Collected {
    mine: bool,
    jobs: sqlx::types::Json<Vec<Dispatchable>>,
    aborts: Vec<Uuid>,
    /// Jobs with the printer that someone paused or resumed: the newest wish for each.
    holds: sqlx::types::Json<Vec<Hold>>,
    /// When the newest of `aborts` was asked for.
    latest_abort: Option<time::OffsetDateTime>,
    /// When the newest of `holds` was asked for.
    latest_hold: Option<time::OffsetDateTime>,
}

/// [`Collected`] for the printer `$1` at `$2` by the stream `$3`. The claim is
/// [`JobState::on_dispatch`] (`queued → dispatched`, `$4`); the jobs sent are the claimed
/// ones and those [`JobState::WITH_PRINTER`] (`$5`). `'queued'` (JobState::Queued) is
/// written out, not bound: it lets the partial index `print_jobs_active` serve the
/// claim, and the list reads claimed jobs as they were before the claim (`'queued'`).
const COLLECT: &str = "
WITH owner AS (
    SELECT stream_id = $3 AS mine FROM printer_streams WHERE printer_id = $1
), claimed AS (
    UPDATE print_jobs SET state = $4, updated_at = $2
    WHERE id IN (SELECT id FROM print_jobs WHERE printer_id = $1 AND state = 'queued'
                 ORDER BY seq FOR UPDATE SKIP LOCKED)
      AND EXISTS (SELECT 1 FROM owner WHERE mine)
    RETURNING id
), history AS (
    INSERT INTO print_job_events (job_id, state, at) SELECT id, $4, $2 FROM claimed
)
SELECT
    coalesce((SELECT mine FROM owner), false) AS mine,
    (SELECT coalesce(json_agg(json_build_object(
                'id', j.id, 'name', j.name, 'content_type', j.content_type, 'size', j.size,
                'sha256', encode(j.sha256, 'hex'),
                'state', CASE WHEN j.state = 'queued' THEN $4 ELSE j.state END)
            ORDER BY j.seq), '[]')
     FROM print_jobs j
     WHERE j.printer_id = $1
       AND (j.state = ANY($5) OR j.id IN (SELECT id FROM claimed))
    ) AS jobs,
    ARRAY(SELECT id FROM print_jobs WHERE printer_id = $1 AND abort_requested_at IS NOT NULL
            AND abort_acknowledged_at IS NULL ORDER BY seq) AS aborts,
    (SELECT coalesce(json_agg(json_build_object('id', id, 'pause', pause_requested,
                                                 'at', hold_changed_at::text) ORDER BY seq), '[]')
     FROM print_jobs WHERE printer_id = $1 AND hold_changed_at IS NOT NULL
       AND state IN ('dispatched', 'downloading', 'printing', 'paused')) AS holds,
    (SELECT max(hold_changed_at) FROM print_jobs WHERE printer_id = $1
       AND state IN ('dispatched', 'downloading', 'printing', 'paused')) AS latest_hold,
    (SELECT max(abort_requested_at) FROM print_jobs WHERE printer_id = $1
            AND abort_acknowledged_at IS NULL) AS latest_abort";

/// A protocol event as a server-sent event.
fn sse(event: &PrinterEvent) -> serde_json::Result<Event> {
    let mut e = Event::default().event(event.name());
    if let Some(id) = event.id() {
        e = e.id(id);
    }
    if let Some(data) = event.data()? {
        e = e.data(data);
    }
    Ok(e)
}

/// The stream ends (the printer went, or another stream took it over): the printer
/// counts as connected no longer — unless another stream of it holds the row by now.
impl Drop for Feed {
    fn drop(&mut self) {
        let (db, printer, id) = (self.state.ctx.db.clone(), self.printer.printer_id, self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let gone = sqlx::query(
                    "WITH gone AS (
                         DELETE FROM printer_streams WHERE printer_id = $1 AND stream_id = $2
                         RETURNING printer_id)
                     SELECT pg_notify($3, printer_id::text) FROM gone",
                )
                .bind(printer)
                .bind(id)
                .bind(crate::status::CHANNEL)
                .execute(&db)
                .await;
                if let Err(e) = gone {
                    tracing::warn!(printer_id = %printer, error = %e, "could not mark the printer disconnected");
                }
            });
        }
    }
}

impl Feed {
    fn push_back(&mut self, event: PrinterEvent) -> serde_json::Result<()> {
        self.pending.push_back(sse(&event)?);
        Ok(())
    }

    /// Reads the printer's settings, then claims its queued jobs and queues the events
    /// it has not sent yet. `false` when another stream has taken the printer over.
    /// The settings are read first: a failure then claims nothing, so no job is ever
    /// queued for the printer ahead of the settings it must apply before printing.
    async fn collect(&mut self) -> anyhow::Result<bool> {
        let ctx = self.state.ctx.clone();
        let printer = self.printer.printer_id;
        let now = ctx.now();
        ctx.metrics.printer_event_collects.inc();
        let s = printworks_org::fleet::security_settings(&ctx.db, printer).await?;
        let c: Collected = sqlx::query_as(COLLECT)
            .bind(printer)
            .bind(now)
            .bind(self.id)
            .bind(JobState::Dispatched.as_str())
            .bind(JobState::WITH_PRINTER.map(JobState::as_str))
            .fetch_one(&ctx.db)
            .await?;
        if !c.mine {
            return Ok(false);
        }
        let signer = ctx.job_signer.clone();
        for job in c.jobs.0 {
            if !self.sent_jobs.insert(job.id) {
                continue;
            }
            let size = u64::try_from(job.size).unwrap_or_default();
            self.push_back(PrinterEvent::Job(JobEvent {
                signature: signer.sign(printer, job.id, size, &job.sha256),
                key_id: signer.key_id.clone(),
                content_type: job.content_type,
                id: job.id,
                name: job.name,
                sha256: job.sha256,
                size,
                state: job.state,
            }))?;
        }
        for id in c.aborts {
            if self.sent_aborts.insert(id) {
                self.push_back(PrinterEvent::Abort(AbortEvent { id }))?;
            }
        }
        for hold in c.holds.0 {
            let wish = (hold.pause, hold.at);
            if self.sent_holds.get(&hold.id) != Some(&wish) {
                self.sent_holds.insert(hold.id, wish);
                let event = HoldEvent { id: hold.id };
                self.push_back(if hold.pause {
                    PrinterEvent::Pause(event)
                } else {
                    PrinterEvent::Resume(event)
                })?;
            }
        }
        let version = s.version;
        if self.stream.settings_unsent(version) {
            // Settings go first: a printer applies them before it prints.
            let settings = PrinterEvent::Settings(SettingsEvent {
                firewall_enabled: s.firewall_enabled,
                pin_hash: s.pin_hash,
                version,
            });
            self.pending.push_front(sse(&settings)?);
        }
        // What the stream has seen is what these statements read — not the clock, which
        // an abort asked for on another replica need not agree with.
        self.stream.saw(c.latest_abort, c.latest_hold, version);
        Ok(true)
    }

    /// The process stops: tell the printer to connect again (to another replica), then
    /// end the stream. What it was sent and has not finished, the next stream sends again.
    fn stopping(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        self.ended = true;
        tracing::debug!(printer_id = %self.printer.printer_id, "event stream: the process stops; the printer is told to reconnect");
        let e = sse(&PrinterEvent::Reconnect).ok()?;
        Some((Ok(e), self))
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            if !self.first {
                let stop = self.state.ctx.shutdown.clone();
                tokio::select! {
                    () = self.stream.notify.notified() => {}
                    () = stop.cancelled() => return self.stopping(),
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
                        () = stop.cancelled() => return self.stopping(),
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
         SELECT pg_notify('printworks_printer_work', printer_id::text),
                pg_notify('printworks_printer_status', printer_id::text) FROM taken",
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
        sent_holds: HashMap::new(),
        first: true,
        ended: false,
    };
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(heartbeat)
                .event(Event::default().event(event::HEARTBEAT)),
        )
        .into_response())
}
