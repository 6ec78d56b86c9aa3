//! How work reaches the replica that holds a printer's connection. The queue itself
//! lives in PostgreSQL; this is only the wake-up: a trigger sends a small hint
//! (`printworks_printer_work`, the printer's id) when a job becomes ready, a job is
//! aborted, the printer's settings change or another event stream takes the printer
//! over, and the replica holding that printer's event stream wakes it. Behind the hints,
//! a sweep every `PRINTWORKS_DISPATCH_SWEEP_INTERVAL` asks the database which connected
//! printers have work their stream has not seen — a job still queued, an abort newer
//! than the newest it sent, settings newer than it sent — and wakes those: a lost
//! hint delays a job, it never loses one, and work a printer has been told of and not
//! yet acknowledged (an abort, unconfirmed settings) wakes nobody again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use printworks_common::AppContext;
use printworks_proto::JobState;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::listen::{Follower, Next};
use crate::registry::Registry;

const CHANNEL: &str = "printworks_printer_work";

/// An event stream open on this replica: how to wake it, and what it last saw.
#[derive(Debug, Default)]
pub struct EventStream {
    pub notify: Notify,
    /// When the newest abort the stream has sent was asked for (unix microseconds).
    seen_at: AtomicI64,
    /// When the newest pause or resume it has sent was asked for (unix microseconds).
    hold_seen_at: AtomicI64,
    /// The settings version it sent (-1: none yet).
    settings_sent: AtomicI64,
}

impl EventStream {
    pub fn new() -> Self {
        Self {
            notify: Notify::new(),
            seen_at: AtomicI64::new(i64::MIN),
            hold_seen_at: AtomicI64::new(i64::MIN),
            settings_sent: AtomicI64::new(-1),
        }
    }

    /// Whether the stream has not sent the settings version `version` yet.
    pub fn settings_unsent(&self, version: i64) -> bool {
        version > self.settings_sent.load(Ordering::Relaxed)
    }

    /// The stream has sent the aborts asked for up to `latest_abort` and the pauses and
    /// resumes up to `latest_hold` (as the database recorded them), and the settings
    /// version `settings`.
    pub fn saw(
        &self,
        latest_abort: Option<OffsetDateTime>,
        latest_hold: Option<OffsetDateTime>,
        settings: i64,
    ) {
        if let Some(at) = latest_abort {
            self.seen_at.fetch_max(micros(at), Ordering::Relaxed);
        }
        if let Some(at) = latest_hold {
            self.hold_seen_at.fetch_max(micros(at), Ordering::Relaxed);
        }
        self.settings_sent.fetch_max(settings, Ordering::Relaxed);
    }
}

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

impl EventStream {}

/// The event streams open on this replica, by printer.
pub type Wakers = Registry<Arc<EventStream>>;

/// Wakes the event streams of `printer` on this replica.
pub fn wake(wakers: &Wakers, printer: Uuid) {
    for s in wakers.of(printer) {
        s.notify.notify_one();
    }
}

/// Of the connected printers, what may be waiting: a job still queued, the newest abort
/// not acknowledged, settings not confirmed.
#[derive(sqlx::FromRow)]
struct Waiting {
    printer_id: Uuid,
    queued: bool,
    latest_abort: Option<OffsetDateTime>,
    /// The newest pause or resume not yet settled by the printer's report.
    latest_hold: Option<OffsetDateTime>,
    settings_version: Option<i64>,
}

async fn waiting(ctx: &AppContext, printers: &[Uuid]) -> sqlx::Result<Vec<Waiting>> {
    let mut waiting: Vec<Waiting> = sqlx::query_as(
        "SELECT printer_id, bool_or(state = $2) AS queued,
                max(CASE WHEN abort_acknowledged_at IS NULL THEN abort_requested_at END) AS latest_abort,
                max(CASE WHEN state = ANY($3) THEN hold_changed_at END) AS latest_hold,
                NULL::bigint AS settings_version
         FROM print_jobs
         WHERE printer_id = ANY($1)
           AND (state = $2 OR (abort_requested_at IS NOT NULL AND abort_acknowledged_at IS NULL)
                OR (hold_changed_at IS NOT NULL AND state = ANY($3)))
         GROUP BY printer_id",
    )
    .bind(printers)
    .bind(JobState::Queued.as_str())
    .bind(JobState::WITH_PRINTER.map(JobState::as_str))
    .fetch_all(&ctx.db)
    .await?;
    // The settings waiting to be confirmed, as the org service (their owner) says.
    let at: std::collections::HashMap<Uuid, usize> = waiting
        .iter()
        .enumerate()
        .map(|(i, w)| (w.printer_id, i))
        .collect();
    for (printer_id, version) in
        printworks_org::fleet::unconfirmed_security(&ctx.db, printers).await?
    {
        match at.get(&printer_id) {
            Some(&i) => waiting[i].settings_version = Some(version),
            None => waiting.push(Waiting {
                printer_id,
                queued: false,
                latest_abort: None,
                latest_hold: None,
                settings_version: Some(version),
            }),
        }
    }
    Ok(waiting)
}

/// Whether `stream` has not seen what `w` says waits.
fn unseen(stream: &EventStream, w: &Waiting) -> bool {
    let seen_at = stream.seen_at.load(Ordering::Relaxed);
    let abort_new = w.latest_abort.is_some_and(|a| micros(a) > seen_at);
    let hold_seen_at = stream.hold_seen_at.load(Ordering::Relaxed);
    let hold_new = w.latest_hold.is_some_and(|h| micros(h) > hold_seen_at);
    let settings_new = w
        .settings_version
        .is_some_and(|v| stream.settings_unsent(v));
    w.queued || abort_new || hold_new || settings_new
}

async fn sweep(ctx: &AppContext, wakers: &Wakers) {
    let printers = wakers.printers();
    for chunk in printers.chunks(5000) {
        match waiting(ctx, chunk).await {
            Ok(rows) => {
                for w in rows {
                    for s in wakers.of(w.printer_id) {
                        if unseen(&s, &w) {
                            s.notify.notify_one();
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "dispatch sweep"),
        }
    }
}

/// Listens for hints and sweeps, until `stop`: work for printers (this channel), and
/// printers' status changes for this replica's status streams (`status::CHANNEL`, on
/// the same connection).
pub async fn run(
    ctx: AppContext,
    wakers: Arc<Wakers>,
    status: crate::status::Hints,
    stop: CancellationToken,
) {
    let every = ctx.settings.relay.dispatch_sweep_interval;
    let channels = [CHANNEL, crate::status::CHANNEL];
    let mut follow = Follower::new(&ctx, "dispatch", &channels, every, &stop);
    while let Some(next) = follow.next().await {
        match next {
            Next::Sweep => {
                sweep(&ctx, &wakers).await;
                let _ = status.send(None);
            }
            Next::Hint(0, Some(printer)) => wake(&wakers, printer),
            Next::Hint(0, None) => {}
            Next::Hint(_, printer) => {
                let _ = status.send(printer);
            }
        }
    }
}
