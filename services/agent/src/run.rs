//! `printworks printer run`: the printer at work. Three loops share the printer's
//! state, which is kept in the state directory so that nothing is lost on a restart:
//!
//! - the **event stream** (`GET /printer/v1/events`) held open, reconnected with
//!   jittered exponential backoff; it adds jobs to the local queue (by id: a job sent
//!   twice is queued once), marks aborted jobs, applies settings and confirms them;
//! - the **worker** takes the queue in order: downloads each job, resuming with
//!   `Range` after an interruption, checks its SHA-256 and the relay's signature (with
//!   the key pinned when the printer paired), and only then "prints" it, reporting
//!   progress; a printer that loses the network mid-job keeps printing;
//! - the **outbox** sends the status reports in order, keeping them until the printer
//!   endpoint has them: reports made while offline arrive when the network is back.

mod bridge;

pub use bridge::Bridge;

use std::collections::VecDeque;
use std::path::PathBuf;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use printworks_proto::printer::path;
use printworks_proto::{
    AbortEvent, Heater, HoldEvent, JobEvent, JobStatusReport, PrinterEvent, PrinterState,
    PrinterStatus, ReportedState, SettingsAppliedRequest, SettingsEvent,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::crypto::{random_below, verify_job};
use crate::state::{StateDir, ensure_private_dir, write_private};
use crate::{Saved, printer_client};

/// How the agent behaves (tests make it quick).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How long a "print" takes, in total.
    pub print_time: Duration,
    /// Progress reports per print.
    pub print_steps: u32,
    /// The longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// A connection that carried nothing (not even a heartbeat) for this long is dead.
    pub idle_timeout: Duration,
    /// Print through OctoPrint instead of simulating (`--octoprint`).
    pub octoprint: Option<Bridge>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            print_time: Duration::from_secs(20),
            print_steps: 10,
            max_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            octoprint: None,
        }
    }
}

/// Where a job is, on the printer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Waiting,
    Printing,
    Done,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalJob {
    pub id: Uuid,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub signature: String,
    pub phase: Phase,
    pub aborted: bool,
    /// Someone asked to hold the print (`pause`), until a `resume`. (Not written when
    /// false: books from before pause existed read and write the same.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Its file's path in OctoPrint, once OctoPrint prints it (bridge only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// How many pause and resume events for it were heard in this run (the bridge
    /// carries out each new one; not kept: after a restart the relay sends the wishes
    /// not yet settled again).
    #[serde(skip)]
    pub holds: u64,
}

/// A status report waiting in the outbox (kept in `book.json`: the state is written as
/// it travels, `"printing"` and so on).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Report {
    job: Uuid,
    state: ReportedState,
    progress: Option<f32>,
    message: Option<String>,
}

impl Report {
    /// What `POST /printer/v1/jobs/{job}/status` carries.
    fn body(&self) -> JobStatusReport {
        JobStatusReport {
            message: self.message.clone(),
            progress: self.progress,
            state: self.state,
        }
    }
}

/// What the printer keeps between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    jobs: Vec<LocalJob>,
    outbox: VecDeque<Report>,
    /// The last settings applied.
    settings: Option<SettingsEvent>,
}

struct Shared {
    book: Mutex<Book>,
    path: PathBuf,
    /// A job was queued, or aborted.
    work: Notify,
    /// A report is waiting.
    reports: Notify,
    /// What the printer is doing now, for its status reports (not kept between runs).
    live: Mutex<Live>,
    /// [`Shared::live`] changed.
    status: Notify,
}

/// The job being printed now, how far, and whether it is held.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Live {
    job: Option<Uuid>,
    progress: Option<f32>,
    paused: bool,
}

impl Shared {
    fn change<T>(&self, f: impl FnOnce(&mut Book) -> T) -> anyhow::Result<T> {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut book);
        write_private(&self.path, &serde_json::to_vec(&*book)?)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        f(&self.book.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_live(&self, live: Live) {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = live;
        self.status.notify_one();
    }

    fn live(&self) -> Live {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(
        &self,
        job: Uuid,
        state: ReportedState,
        progress: Option<f32>,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        self.push(job, false, state, progress, message)
    }

    /// The job is over on the printer: marked done and its last report queued in one
    /// write, so a crash between the two cannot lose the report.
    fn finish(
        &self,
        job: Uuid,
        state: ReportedState,
        progress: Option<f32>,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        self.push(job, true, state, progress, message)
    }

    fn push(
        &self,
        job: Uuid,
        done: bool,
        state: ReportedState,
        progress: Option<f32>,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        self.change(|b| {
            if done && let Some(j) = b.jobs.iter_mut().find(|j| j.id == job) {
                j.phase = Phase::Done;
            }
            b.outbox.push_back(Report {
                job,
                state,
                progress,
                message: message.map(str::to_owned),
            });
        })?;
        self.reports.notify_one();
        Ok(())
    }
}

/// Jittered exponential backoff: 0.5 s doubling to `max`, each pause between half and
/// all of the step.
struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            step: Duration::from_millis(500),
            max,
        }
    }

    fn reset(&mut self) {
        self.step = Duration::from_millis(500);
    }

    async fn wait(&mut self) {
        let jitter = u64::from(random_below(1000));
        let pause = self.step.mul_f64(0.5 + jitter as f64 / 2000.0);
        tokio::time::sleep(pause).await;
        self.step = (self.step * 2).min(self.max);
    }
}

/// Runs the printer until `stop`.
pub async fn run(
    state: &StateDir,
    options: RunOptions,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let saved = state.load()?;
    let jobs_dir = state.path().join("jobs");
    ensure_private_dir(&jobs_dir)?;
    let book_path = state.path().join("book.json");
    let mut book: Book = match std::fs::read(&book_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("book.json is damaged")?,
        Err(_) => Book::default(),
    };
    // A print that was under way when the printer stopped is lost (as on a real
    // printer after a power cut: the plate must be cleared by hand) — unless OctoPrint
    // prints it, which went on without the agent and is followed again.
    let bridged = options.octoprint.is_some();
    for job in book
        .jobs
        .iter_mut()
        .filter(|j| j.phase == Phase::Printing && !(bridged && j.remote.is_some()))
    {
        job.phase = Phase::Done;
        book.outbox.push_back(Report {
            job: job.id,
            state: ReportedState::Failed,
            progress: None,
            message: Some("the printer restarted in the middle of the print".into()),
        });
    }
    let shared = Arc::new(Shared {
        book: Mutex::new(book),
        path: book_path,
        work: Notify::new(),
        reports: Notify::new(),
        live: Mutex::default(),
        status: Notify::new(),
    });
    shared.change(|_| ())?;
    let client = printer_client(&saved)?;
    let ctx = Ctx {
        saved: Arc::new(saved),
        client,
        shared,
        options,
        jobs_dir,
        stop: stop.clone(),
    };
    let events = tokio::spawn(events_loop(ctx.clone()));
    let worker = tokio::spawn(worker_loop(ctx.clone()));
    let outbox = tokio::spawn(outbox_loop(ctx.clone()));
    let status = tokio::spawn(status_loop(ctx.clone()));
    stop.cancelled().await;
    for task in [events, worker, outbox, status] {
        task.abort();
    }
    Ok(())
}

#[derive(Clone)]
struct Ctx {
    saved: Arc<Saved>,
    client: reqwest::Client,
    shared: Arc<Shared>,
    options: RunOptions,
    jobs_dir: PathBuf,
    stop: CancellationToken,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.saved.printer.printer_url)
    }
}

async fn events_loop(ctx: Ctx) {
    let mut backoff = Backoff::new(ctx.options.max_backoff);
    loop {
        match listen(&ctx, &mut backoff).await {
            // The replica is stopping: another one takes the printer, after a moment's
            // jitter so that its printers do not all arrive in the same instant.
            Ok(Ended::Reconnect) => {
                tracing::info!("the printer endpoint asked to reconnect; reconnecting");
                let jitter = u64::from(random_below(1000));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                continue;
            }
            Ok(Ended::Closed) => tracing::info!("the event stream ended; reconnecting"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "event stream lost; reconnecting"),
        }
        backoff.wait().await;
    }
}

/// How an event stream ended.
enum Ended {
    /// The server closed it.
    Closed,
    /// The server said `reconnect` (it is stopping).
    Reconnect,
}

/// One connection of the event stream, until it ends.
async fn listen(ctx: &Ctx, backoff: &mut Backoff) -> anyhow::Result<Ended> {
    let mut events = Events::open(&ctx.client, &ctx.saved.printer.printer_url).await?;
    backoff.reset();
    tracing::info!("connected to the printer endpoint");
    while let Some(event) = events.next(ctx.options.idle_timeout).await? {
        if event == PrinterEvent::Reconnect {
            return Ok(Ended::Reconnect);
        }
        handle(ctx, event).await?;
    }
    Ok(Ended::Closed)
}

/// The printer's event stream (`GET /printer/v1/events`), read event by event.
pub struct Events {
    res: reqwest::Response,
    buf: Vec<u8>,
}

impl Events {
    /// Opens the stream at `printer_url` (the printer endpoint) with `client` (a
    /// [`printer_client`]).
    pub async fn open(client: &reqwest::Client, printer_url: &str) -> anyhow::Result<Self> {
        let res = client
            .get(format!("{printer_url}{}", path::EVENTS))
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if res.status() == StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "the printer endpoint refuses this printer's certificate (renew it, or pair again)"
            );
        }
        anyhow::ensure!(
            res.status().is_success(),
            "the event stream answered {}",
            res.status()
        );
        Ok(Self {
            res,
            buf: Vec::new(),
        })
    }

    /// The next event (heartbeats included); `None` when the server ended the stream,
    /// an error when nothing at all arrived for `idle_timeout`.
    pub async fn next(&mut self, idle_timeout: Duration) -> anyhow::Result<Option<PrinterEvent>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let mut event = "message";
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(event) = PrinterEvent::parse(event, &data)
                    .with_context(|| format!("a {event} event that does not parse"))?
                {
                    return Ok(Some(event));
                }
                continue;
            }
            let chunk = tokio::time::timeout(idle_timeout, self.res.chunk())
                .await
                .context("no heartbeat")??;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.buf.extend_from_slice(&chunk);
        }
    }
}

async fn handle(ctx: &Ctx, event: PrinterEvent) -> anyhow::Result<()> {
    match event {
        PrinterEvent::Job(JobEvent {
            id,
            name,
            size,
            sha256,
            signature,
            ..
        }) => {
            let job = LocalJob {
                id,
                name,
                size,
                sha256,
                signature,
                phase: Phase::Waiting,
                aborted: false,
                paused: false,
                remote: None,
                holds: 0,
            };
            let added = ctx.shared.change(|b| {
                if b.jobs.iter().any(|j| j.id == job.id) {
                    false
                } else {
                    b.jobs.push(job.clone());
                    true
                }
            })?;
            if added {
                tracing::info!(job_id = %job.id, name = %job.name, "job received");
                ctx.shared.work.notify_one();
            }
        }
        PrinterEvent::Abort(AbortEvent { id }) => {
            let known = ctx.shared.change(|b| {
                b.jobs.iter_mut().find(|j| j.id == id).map(|j| {
                    j.aborted = true;
                    j.phase
                })
            })?;
            // A job it never had, or finished, is acknowledged at once; a running one
            // is acknowledged by the worker when it has stopped.
            if known.is_none_or(|p| p == Phase::Done) {
                ctx.shared
                    .report(id, ReportedState::Aborted, None, Some("stopped"))?;
            }
            ctx.shared.work.notify_one();
        }
        PrinterEvent::Settings(settings) => {
            let version = settings.version;
            let firewall = settings.firewall_enabled;
            // Behind OctoPrint, what it cannot express is said, never claimed.
            let not_applied = match ctx.options.octoprint {
                Some(_) => bridge::not_applied(&settings),
                None => Vec::new(),
            };
            ctx.shared.change(|b| b.settings = Some(settings))?;
            tracing::info!(version, firewall, ?not_applied, "settings applied");
            let res = ctx
                .client
                .post(ctx.url(path::SETTINGS_APPLIED))
                .json(&SettingsAppliedRequest {
                    version,
                    not_applied,
                })
                .send()
                .await?;
            anyhow::ensure!(
                res.status().is_success(),
                "confirming settings: {}",
                res.status()
            );
        }
        PrinterEvent::Pause(HoldEvent { id }) | PrinterEvent::Resume(HoldEvent { id }) => {
            let pause = matches!(event, PrinterEvent::Pause(_));
            ctx.shared.change(|b| {
                if let Some(j) = b.jobs.iter_mut().find(|j| j.id == id) {
                    j.paused = pause;
                    j.holds += 1;
                }
            })?;
            tracing::info!(job_id = %id, pause, "hold changed");
            ctx.shared.work.notify_one();
        }
        PrinterEvent::Heartbeat | PrinterEvent::Reconnect => {}
    }
    Ok(())
}

async fn outbox_loop(ctx: Ctx) {
    let mut backoff = Backoff::new(ctx.options.max_backoff);
    loop {
        let next = ctx.shared.read(|b| b.outbox.front().cloned());
        let Some(report) = next else {
            ctx.shared.reports.notified().await;
            continue;
        };
        let sent = ctx
            .client
            .post(ctx.url(&path::job_status(report.job)))
            .json(&report.body())
            .send()
            .await;
        match sent {
            // Accepted, or refused for good (the job is gone or finished): either way done.
            Ok(res)
                if res.status().is_success()
                    || res.status().is_client_error()
                        && res.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                if !res.status().is_success() {
                    tracing::info!(job_id = %report.job, status = %res.status(), "a status report was refused");
                }
                let _ = ctx.shared.change(|b| b.outbox.pop_front());
                backoff.reset();
            }
            Ok(res) => {
                tracing::warn!(status = %res.status(), "status report not taken; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "status report not sent; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// The simulated printer's status: hot while it prints, cold otherwise.
fn simulated_status(live: Live) -> PrinterStatus {
    let heater = |name: &str, hot: f32| Heater {
        name: name.into(),
        actual: if live.job.is_some() { hot } else { 24.0 },
        target: live.job.map(|_| hot),
    };
    PrinterStatus {
        state: match (live.job, live.paused) {
            (Some(_), true) => PrinterState::Paused,
            (Some(_), false) => PrinterState::Printing,
            (None, _) => PrinterState::Idle,
        },
        heaters: vec![heater("tool0", 210.0), heater("bed", 60.0)],
        job_id: live.job,
        progress: live.progress,
        firmware_version: Some(concat!("printworks-agent ", env!("CARGO_PKG_VERSION")).into()),
        message: None,
    }
}

/// Reports the printer's status: when it changes, at most once a second while it
/// prints in one state, and never twice within 600 ms (a change right after a report
/// waits for the next tick). A status not taken is tried again a second later, at the
/// earliest.
async fn status_loop(ctx: Ctx) {
    let mut sent: Option<PrinterStatus> = None;
    let mut attempted: Option<(PrinterState, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut firmware = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = ctx.shared.status.notified() => {}
        }
        let now = match &ctx.options.octoprint {
            Some(b) => bridge::status(b, ctx.shared.live(), &mut firmware).await,
            None => simulated_status(ctx.shared.live()),
        };
        if sent.as_ref() == Some(&now) {
            continue;
        }
        if let Some((state, at)) = attempted {
            let gap = if state == now.state { 1000 } else { 600 };
            if at.elapsed() < Duration::from_millis(gap) {
                continue;
            }
        }
        attempted = Some((now.state, tokio::time::Instant::now()));
        match ctx
            .client
            .post(ctx.url(printworks_proto::status::STATUS_PATH))
            .json(&now)
            .send()
            .await
        {
            Ok(res) if res.status().is_success() => sent = Some(now),
            Ok(res) => tracing::debug!(status = %res.status(), "status report not taken"),
            Err(e) => tracing::debug!(error = %e, "status report not sent"),
        }
    }
}

async fn worker_loop(ctx: Ctx) {
    loop {
        let next = ctx
            .shared
            .read(|b| b.jobs.iter().find(|j| j.phase != Phase::Done).cloned());
        let Some(job) = next else {
            ctx.shared.work.notified().await;
            continue;
        };
        let outcome = work(&ctx, &job).await;
        ctx.shared.set_live(Live::default());
        if let Err(e) = outcome {
            tracing::warn!(job_id = %job.id, error = %format!("{e:#}"), "job failed");
            let _ = ctx
                .shared
                .finish(job.id, ReportedState::Failed, None, Some(&format!("{e:#}")));
        }
        let _ = tokio::fs::remove_file(ctx.jobs_dir.join(format!("{}.gcode", job.id))).await;
    }
}

fn held(ctx: &Ctx, id: Uuid) -> bool {
    ctx.shared
        .read(|b| b.jobs.iter().any(|j| j.id == id && j.paused))
}

fn aborted(ctx: &Ctx, id: Uuid) -> bool {
    ctx.shared
        .read(|b| b.jobs.iter().any(|j| j.id == id && j.aborted))
}

/// Downloads (resuming), checks, prints and reports one job.
async fn work(ctx: &Ctx, job: &LocalJob) -> anyhow::Result<()> {
    if let Some(b) = &ctx.options.octoprint
        && let Some(path) = bridge::started(job)
    {
        return bridge::follow_then_tidy(ctx, b, job, path).await;
    }
    if aborted(ctx, job.id) {
        return stop_aborted(ctx, job);
    }
    let file = ctx.jobs_dir.join(format!("{}.gcode", job.id));
    ctx.shared
        .report(job.id, ReportedState::Downloading, Some(0.0), None)?;
    download(ctx, job, &file).await?;
    if aborted(ctx, job.id) {
        return stop_aborted(ctx, job);
    }
    // Nothing is printed that is not exactly what the relay signed.
    let digest = sha256_file(&file).await?;
    anyhow::ensure!(
        digest == job.sha256,
        "the downloaded file does not match its SHA-256; not printed"
    );
    anyhow::ensure!(
        verify_job(
            &ctx.saved.printer.job_signing_key,
            ctx.saved.printer.printer_id,
            job.id,
            job.size,
            &digest,
            &job.signature,
        ),
        "the job's signature is not the relay's; not printed"
    );
    match &ctx.options.octoprint {
        Some(b) => bridge::print(ctx, b, job, &file).await,
        None => simulate(ctx, job).await,
    }
}

/// "Prints" the job: progress in steps over `print_time`, held while paused.
async fn simulate(ctx: &Ctx, job: &LocalJob) -> anyhow::Result<()> {
    ctx.shared.change(|b| {
        if let Some(j) = b.jobs.iter_mut().find(|j| j.id == job.id) {
            j.phase = Phase::Printing;
        }
    })?;
    let steps = ctx.options.print_steps.max(1);
    for step in 0..=steps {
        if aborted(ctx, job.id) {
            return stop_aborted(ctx, job);
        }
        let progress = 100.0 * step as f32 / steps as f32;
        if held(ctx, job.id) {
            // Hold the print until resumed (or aborted), saying so.
            ctx.shared.set_live(Live {
                job: Some(job.id),
                progress: Some(progress),
                paused: true,
            });
            ctx.shared
                .report(job.id, ReportedState::Paused, Some(progress), None)?;
            while held(ctx, job.id) && !aborted(ctx, job.id) {
                ctx.shared.work.notified().await;
            }
            if aborted(ctx, job.id) {
                return stop_aborted(ctx, job);
            }
            ctx.shared
                .report(job.id, ReportedState::Printing, Some(progress), None)?;
        }
        ctx.shared.set_live(Live {
            job: Some(job.id),
            progress: Some(progress),
            paused: false,
        });
        if step < steps {
            ctx.shared
                .report(job.id, ReportedState::Printing, Some(progress), None)?;
            tokio::time::sleep(ctx.options.print_time / steps).await;
        }
    }
    ctx.shared
        .finish(job.id, ReportedState::Completed, Some(100.0), None)?;
    tracing::info!(job_id = %job.id, name = %job.name, "printed");
    Ok(())
}

fn stop_aborted(ctx: &Ctx, job: &LocalJob) -> anyhow::Result<()> {
    ctx.shared
        .finish(job.id, ReportedState::Aborted, None, Some("stopped"))?;
    tracing::info!(job_id = %job.id, "aborted");
    Ok(())
}

/// The whole file, resuming where a broken transfer stopped.
async fn download(ctx: &Ctx, job: &LocalJob, file: &std::path::Path) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(ctx.options.max_backoff);
    loop {
        if aborted(ctx, job.id) || ctx.stop.is_cancelled() {
            return Ok(());
        }
        let have = tokio::fs::metadata(file)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have >= job.size {
            return Ok(());
        }
        match fetch(ctx, job, file, have).await {
            Ok(()) => backoff.reset(),
            Err(Fetch::Fatal(e)) => return Err(e),
            Err(Fetch::Retry(e)) => {
                tracing::info!(job_id = %job.id, have, error = %format!("{e:#}"), "download interrupted; resuming");
                backoff.wait().await;
            }
        }
    }
}

enum Fetch {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

async fn fetch(ctx: &Ctx, job: &LocalJob, file: &std::path::Path, from: u64) -> Result<(), Fetch> {
    let mut req = ctx.client.get(ctx.url(&path::job_content(job.id)));
    if from > 0 {
        req = req.header("range", format!("bytes={from}-"));
    }
    let res = req.send().await.map_err(|e| Fetch::Retry(e.into()))?;
    let status = res.status();
    if status == StatusCode::GONE || status == StatusCode::NOT_FOUND {
        return Err(Fetch::Fatal(anyhow::anyhow!(
            "the job is no longer to be printed ({status})"
        )));
    }
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::INTERNAL_SERVER_ERROR
    {
        return Err(Fetch::Fatal(anyhow::anyhow!(
            "the printer endpoint refused the download ({status})"
        )));
    }
    let resumed = status == StatusCode::PARTIAL_CONTENT;
    if !(status == StatusCode::OK || resumed) {
        return Err(Fetch::Retry(anyhow::anyhow!("download answered {status}")));
    }
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(file)
        .await
        .map_err(|e| Fetch::Fatal(e.into()))?;
    let mut stream = res.bytes_stream();
    loop {
        match stream.try_next().await {
            Ok(Some(bytes)) => out
                .write_all(&bytes)
                .await
                .map_err(|e| Fetch::Fatal(e.into()))?,
            Ok(None) => break,
            Err(e) => {
                let _ = out.sync_all().await;
                return Err(Fetch::Retry(e.into()));
            }
        }
    }
    out.sync_all().await.map_err(|e| Fetch::Fatal(e.into()))?;
    Ok(())
}

async fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut f = tokio::fs::File::open(path).await?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(printworks_proto::hex(ctx.finish().as_ref()))
}

/// The jobs the printer knows, for tests and diagnostics.
pub fn local_jobs(state: &StateDir) -> anyhow::Result<Vec<LocalJob>> {
    let path = state.path().join("book.json");
    let book: Book = serde_json::from_slice(&std::fs::read(path)?)?;
    Ok(book.jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `book.json` as the agent wrote it when states and settings were plain JSON
    /// (`"state": "printing"`, the settings event's data as it came): it reads, and is
    /// written back byte for byte.
    #[test]
    fn books_written_before_read_and_write_the_same() {
        let job = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let before = format!(
            r#"{{"jobs":[{{"id":"{job}","name":"benchy.gcode","size":42,"sha256":"ab01","signature":"c2ln","phase":"printing","aborted":false}}],"outbox":[{{"job":"{job}","state":"printing","progress":12.5,"message":null}},{{"job":"{job}","state":"aborted","progress":null,"message":"stopped"}}],"settings":{{"firewall_enabled":true,"pin_hash":null,"version":3}}}}"#
        );
        let book: Book = serde_json::from_str(&before).unwrap();
        assert_eq!(book.outbox[0].state, ReportedState::Printing);
        assert_eq!(book.outbox[1].state, ReportedState::Aborted);
        assert_eq!(book.settings.as_ref().map(|s| s.version), Some(3));
        assert_eq!(serde_json::to_string(&book).unwrap(), before);
        let empty: Book =
            serde_json::from_str(r#"{"jobs":[],"outbox":[],"settings":null}"#).unwrap();
        assert!(empty.settings.is_none());
    }

    /// The status report's body is what the agent built with `json!` before.
    #[test]
    fn reports_are_sent_as_before() {
        let job = Uuid::new_v4();
        for (state, progress, message) in [
            (ReportedState::Downloading, Some(0.0f32), None),
            (ReportedState::Printing, Some(50.0), None),
            (ReportedState::Failed, None, Some("the printer restarted")),
        ] {
            let report = Report {
                job,
                state,
                progress,
                message: message.map(str::to_owned),
            };
            let by_hand = serde_json::json!({
                "state": state.as_str(),
                "progress": progress,
                "message": message,
            });
            assert_eq!(
                serde_json::to_string(&report.body()).unwrap(),
                by_hand.to_string()
            );
        }
    }
}
