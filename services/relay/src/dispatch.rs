//! How work reaches the replica that holds a printer's connection. The queue itself
//! lives in PostgreSQL; this is only the wake-up: a trigger sends a small hint
//! (`printworks_printer_work`, the printer's id) when a job becomes ready, a job is
//! aborted, or the printer's settings change, and the replica holding that printer's
//! event stream wakes it. Behind the hints, a sweep every [`SWEEP_INTERVAL`] asks the
//! database which connected printers have work waiting and wakes those: a lost hint
//! delays a job, it never loses one.

use std::sync::Arc;
use std::time::Duration;

use printworks_common::AppContext;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::listen::{Follower, Next};
use crate::registry::Registry;

/// How often waiting work is looked for, whatever the hints said.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
const CHANNEL: &str = "printworks_printer_work";

/// The event streams open on this replica, by printer.
pub type Wakers = Registry<Arc<Notify>>;

/// Wakes the event streams of `printer` on this replica.
pub fn wake(wakers: &Wakers, printer: Uuid) {
    for n in wakers.of(printer) {
        n.notify_one();
    }
}

/// Of the connected printers, those with work waiting: a job ready to send, an abort
/// not yet acknowledged, or settings not yet confirmed.
async fn waiting(ctx: &AppContext, printers: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT printer_id FROM print_jobs
         WHERE printer_id = ANY($1)
           AND (state = 'queued' OR (abort_requested_at IS NOT NULL AND abort_acknowledged_at IS NULL))
         UNION
         SELECT printer_id FROM printer_security
         WHERE printer_id = ANY($1) AND version > coalesce(confirmed_version, 0)",
    )
    .bind(printers)
    .fetch_all(&ctx.db)
    .await
}

async fn sweep(ctx: &AppContext, wakers: &Wakers) {
    let printers = wakers.printers();
    for chunk in printers.chunks(5000) {
        match waiting(ctx, chunk).await {
            Ok(ids) => ids.into_iter().for_each(|p| wake(wakers, p)),
            Err(e) => tracing::warn!(error = %e, "dispatch sweep"),
        }
    }
}

/// Listens for hints and sweeps, until `stop`.
pub async fn run(ctx: AppContext, wakers: Arc<Wakers>, stop: CancellationToken) {
    let mut follow = Follower::new(&ctx, "dispatch", CHANNEL, SWEEP_INTERVAL, &stop);
    while let Some(next) = follow.next().await {
        match next {
            Next::Sweep => sweep(&ctx, &wakers).await,
            Next::Hint(Some(printer)) => wake(&wakers, printer),
            Next::Hint(None) => {}
        }
    }
}
