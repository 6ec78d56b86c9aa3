//! What one service does when another changes something it depends on, without the two
//! depending on each other: the relay owns print jobs, but printers leave through the
//! org service (unpairing) and the pairing service (a re-pairing that replaces one).
//! The binary hands each service the owner's implementation, as it hands the account
//! service the org service's directory.

use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The print jobs of a printer, as the services that remove printers must treat them.
pub trait PrinterJobs: Send + Sync + 'static {
    /// `printer` left its organization (unpaired, or replaced by a re-pairing that could
    /// not prove it was the same printer): its jobs that have not finished are failed
    /// now, in the caller's transaction, with `reason` in their history — none is sent
    /// to anyone after. Returns how many were failed.
    fn printer_left<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        printer: Uuid,
        reason: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;
}
