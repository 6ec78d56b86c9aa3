//! The print jobs people and apps look at and abort, and what the rest of the relay
//! shares about a job: how the API shows it ([`JobView`]) and its history ([`record`]).
//!
//! - `GET /relay/v1/jobs/{job}`, `GET /relay/v1/printers/{printer}/jobs` (paginated),
//!   scope `print_job.read`;
//! - `POST /relay/v1/jobs/{job}/abort` (admins, whoever sent it, whoever claimed the
//!   printer), scope `print_job.write`.
//!
//! Jobs arrive through [`crate::upload`] and end on their own (expired, their printer
//! gone) through [`crate::lifecycle`]. States ([`JobState`]): `queued → dispatched →
//! downloading → printing → completed | failed | aborted`, each change kept with its
//! time; a printer's jobs run in the order sent.

use axum::extract::State;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::Auth;
use printworks_common::crypto::hex;
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use printworks_proto::JobState;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RelayState;

#[derive(Serialize, sqlx::FromRow)]
pub struct JobView {
    id: Uuid,
    printer_id: Uuid,
    organization_id: Uuid,
    name: String,
    content_type: String,
    size: i64,
    #[serde(serialize_with = "serialize_hex")]
    sha256: Vec<u8>,
    #[sqlx(rename = "state")]
    status: String,
    progress: Option<f32>,
    message: Option<String>,
    submitted_by: Option<Uuid>,
    submitted_by_client: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    finished_at: Option<OffsetDateTime>,
}

impl JobView {
    pub fn printer_id(&self) -> Uuid {
        self.printer_id
    }

    /// Its state (a stored state that does not parse reads as failed).
    pub fn state(&self) -> JobState {
        JobState::parse(&self.status).unwrap_or(JobState::Failed)
    }
}

fn serialize_hex<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(v))
}

#[derive(Serialize, sqlx::FromRow)]
pub struct HistoryEntry {
    state: String,
    progress: Option<f32>,
    message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

#[derive(Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    job: JobView,
    /// Every change, oldest first (the last 200).
    history: Vec<HistoryEntry>,
}

/// The columns of [`JobView`].
macro_rules! job_columns {
    () => {
        "id, printer_id, organization_id, name, content_type, size, sha256, state, progress,
         message, submitted_by, submitted_by_client, created_at, updated_at, finished_at"
    };
}

/// The job as the API shows it; `None` while it is still being received.
pub(crate) async fn job_view(db: &sqlx::PgPool, id: Uuid) -> sqlx::Result<Option<JobView>> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM print_jobs WHERE id = $1 AND state <> $2"
    ))
    .bind(id)
    .bind(JobState::Receiving.as_str())
    .fetch_optional(db)
    .await
}

/// A state as stored (`print_jobs.state`), which the table's check keeps to
/// [`JobState`]'s.
pub(crate) fn stored_state(state: &str) -> anyhow::Result<JobState> {
    JobState::parse(state)
        .ok_or_else(|| anyhow::anyhow!("a stored job state does not parse: {state:?}"))
}

/// Records a change in the job's history (in the caller's transaction).
pub async fn record(
    conn: &mut sqlx::PgConnection,
    job: Uuid,
    state: JobState,
    progress: Option<f32>,
    message: Option<&str>,
    at: OffsetDateTime,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO print_job_events (job_id, state, progress, message, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(job)
        .bind(state.as_str())
        .bind(progress)
        .bind(message)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(
    State(state): State<RelayState>,
    auth: Auth,
    Path(job): Path<Uuid>,
) -> Result<Json<JobDetail>, ApiError> {
    let view = job_view(&state.ctx.db, job)
        .await?
        .ok_or_else(ApiError::not_found)?;
    printworks_org::fleet::usable(&state.ctx, &auth, view.printer_id).await?;
    let mut history: Vec<HistoryEntry> = sqlx::query_as(
        "SELECT state, progress, message, at FROM print_job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 200",
    )
    .bind(job)
    .fetch_all(&state.ctx.db)
    .await?;
    history.reverse();
    Ok(Json(JobDetail { job: view, history }))
}

pub async fn list(
    State(state): State<RelayState>,
    auth: Auth,
    Path(printer): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<JobView>>, ApiError> {
    printworks_org::fleet::usable(&state.ctx, &auth, printer).await?;
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<JobView> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM print_jobs
         WHERE printer_id = $1 AND state <> $5
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(printer)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .bind(JobState::Receiving.as_str())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |j| (j.created_at, j.id))))
}

/// The job and the caller's use of its printer: 404 unless they may see it.
async fn controlled(
    state: &RelayState,
    auth: &Auth,
    job: Uuid,
) -> Result<(JobView, printworks_org::fleet::Usable), ApiError> {
    let view = job_view(&state.ctx.db, job)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let usable = printworks_org::fleet::usable(&state.ctx, auth, view.printer_id).await?;
    Ok((view, usable))
}

/// Who may abort, pause or resume a job: admins, the person who added the printer while
/// they may still change printers, and whoever sent the job.
fn controller<'a>(
    view: &JobView,
    usable: &'a printworks_org::fleet::Usable,
    auth: &Auth,
    refusal: &str,
) -> Result<printworks_org::access::Allowed<'a>, ApiError> {
    let (printer, m) = (&usable.printer, usable.membership());
    let sender = view.submitted_by.is_some() && view.submitted_by == m.user_id()
        || view.submitted_by_client.as_deref() == Some(auth.client_id.as_str())
            && m.user_id().is_none();
    match m.require_admin_or_maker(printer.claimed_by, refusal) {
        Ok(writer) => Ok(writer.into()),
        Err(_) => m.require_granted(sender, refusal),
    }
}

pub async fn abort(
    state: State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    job: Path<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    abort_job(state, auth, client, job, false).await
}

/// Aborts the job; with `only_waiting`, only one still waiting (`queued` or `held`),
/// checked under the same row lock (Cura's "remove from the queue").
pub(crate) async fn abort_job(
    State(state): State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    Path(job): Path<Uuid>,
    only_waiting: bool,
) -> Result<Json<JobView>, ApiError> {
    let (view, usable) = controlled(&state, &auth, job).await?;
    let printer = &usable.printer;
    let m = usable.membership();
    let aborter = controller(
        &view,
        &usable,
        &auth,
        "Only admins, whoever sent the job and whoever added the printer can abort it.",
    )?;
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let current: String =
        sqlx::query_scalar("SELECT state FROM print_jobs WHERE id = $1 FOR UPDATE")
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
    let current = stored_state(&current)?;
    if !current.is_active() {
        return Err(ApiError::conflict(format!("The job is {current} already.")));
    }
    if only_waiting && !matches!(current, JobState::Queued | JobState::Held) {
        return Err(ApiError::conflict(format!(
            "The job is {current}: only a job still waiting can be removed from the queue; abort it instead."
        )));
    }
    // One the printer has heard of keeps telling it until it reports on the job.
    let reached_printer = current.has_reached_printer();
    sqlx::query(
        "UPDATE print_jobs SET state = $4, finished_at = $2, updated_at = $2,
                abort_requested_at = CASE WHEN $3 THEN $2 END
         WHERE id = $1",
    )
    .bind(job)
    .bind(now)
    .bind(reached_printer)
    .bind(JobState::Aborted.as_str())
    .execute(&mut *tx)
    .await?;
    let by = if m.user_id().is_some() {
        "aborted by a person"
    } else {
        "aborted by an automated client"
    };
    record(&mut tx, job, JobState::Aborted, None, Some(by), now).await?;
    let done = Controlled {
        action: "job.abort",
        actor: aborter.audit_actor(),
        printer,
        job,
        was: current,
    };
    done.audit_and_answer(&state, tx, &client, now).await
}

/// `POST /relay/v1/jobs/{job}/start`: a `held` job (sent without "print" through the
/// OctoPrint upload API) joins the printer's queue. The same people as for abort; any
/// other state is 409.
pub async fn start(
    State(state): State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    Path(job): Path<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    let (view, usable) = controlled(&state, &auth, job).await?;
    let who = controller(
        &view,
        &usable,
        &auth,
        "Only admins, whoever sent the job and whoever added the printer can start it.",
    )?;
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let current: String =
        sqlx::query_scalar("SELECT state FROM print_jobs WHERE id = $1 FOR UPDATE")
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
    let current = stored_state(&current)?;
    if current != JobState::Held {
        return Err(ApiError::conflict(format!(
            "The job is {current}: only a held job can be started."
        )));
    }
    sqlx::query("UPDATE print_jobs SET state = $2, updated_at = $3 WHERE id = $1")
        .bind(job)
        .bind(JobState::Queued.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    record(&mut tx, job, JobState::Queued, None, None, now).await?;
    let done = Controlled {
        action: "job.start",
        actor: who.audit_actor(),
        printer: &usable.printer,
        job,
        was: current,
    };
    done.audit_and_answer(&state, tx, &client, now).await
}

/// An abort, pause or resume written in `tx`: what is audited of it.
struct Controlled<'a> {
    action: &'static str,
    actor: printworks_common::audit::Actor,
    printer: &'a printworks_org::fleet::PairedPrinter,
    job: Uuid,
    was: JobState,
}

impl Controlled<'_> {
    /// Audits it, commits, and answers the job as it is now.
    async fn audit_and_answer(
        self,
        state: &RelayState,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        client: &ClientInfo,
        now: time::OffsetDateTime,
    ) -> Result<Json<JobView>, ApiError> {
        AuditEvent::new(self.action, self.actor, Outcome::Success)
            .organization(self.printer.organization_id)
            .source(client.addr)
            .target("job", self.job)
            .detail("printer_id", self.printer.id.to_string())
            .detail("was", self.was.as_str())
            .write(&mut tx, now)
            .await?;
        tx.commit().await?;
        Ok(Json(
            job_view(&state.ctx.db, self.job)
                .await?
                .ok_or_else(ApiError::not_found)?,
        ))
    }
}

pub async fn pause(
    state: State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    job: Path<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    hold(state, auth, client, job, true).await
}

pub async fn resume(
    state: State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    job: Path<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    hold(state, auth, client, job, false).await
}

/// `POST /relay/v1/jobs/{job}/pause|resume`: asks the printer to hold the print, or to
/// go on. Only a job the printer has (`dispatched`, `downloading`, `printing`,
/// `paused`); pausing one paused (or asked to pause), or resuming one neither, is 409.
/// The printer answers by reporting `paused` or `printing`; the job's state is the
/// printer's word, and a report that does what was asked settles the wish.
async fn hold(
    State(state): State<RelayState>,
    auth: Auth,
    client: ClientInfo,
    Path(job): Path<Uuid>,
    pause: bool,
) -> Result<Json<JobView>, ApiError> {
    let (view, usable) = controlled(&state, &auth, job).await?;
    let printer = &usable.printer;
    let who = controller(
        &view,
        &usable,
        &auth,
        "Only admins, whoever sent the job and whoever added the printer can pause or resume it.",
    )?;
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let (current, requested): (String, bool) =
        sqlx::query_as("SELECT state, pause_requested FROM print_jobs WHERE id = $1 FOR UPDATE")
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
    let current = stored_state(&current)?;
    if !current.has_reached_printer() {
        return Err(ApiError::conflict(format!(
            "The job is {current}: only a job the printer has can be paused or resumed."
        )));
    }
    // The printer may hold a print by itself (its own button, filament run out): what
    // counts is what it reported and what was last asked.
    let held = current == JobState::Paused || requested;
    if held == pause {
        return Err(ApiError::conflict(if pause {
            "The job is paused already (or asked to pause)."
        } else {
            "The job is not paused."
        }));
    }
    sqlx::query(
        "UPDATE print_jobs SET pause_requested = $2, hold_changed_at = $3, updated_at = $3
         WHERE id = $1",
    )
    .bind(job)
    .bind(pause)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let said = match (pause, usable.membership().user_id().is_some()) {
        (true, true) => "pause asked by a person",
        (true, false) => "pause asked by an automated client",
        (false, true) => "resume asked by a person",
        (false, false) => "resume asked by an automated client",
    };
    record(&mut tx, job, current, None, Some(said), now).await?;
    let done = Controlled {
        action: if pause { "job.pause" } else { "job.resume" },
        actor: who.audit_actor(),
        printer,
        job,
        was: current,
    };
    done.audit_and_answer(&state, tx, &client, now).await
}
