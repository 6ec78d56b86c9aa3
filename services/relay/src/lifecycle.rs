//! How jobs end when nobody ends them: jobs that waited too long for their printer
//! expire, those of a printer that left fail ([`PrinterJobsOfRelay`]), and the hourly
//! [`cleanup`] also removes uploads that never finished and old finished jobs' files.

use printworks_common::hooks::{BoxFuture, PrinterJobs};
use printworks_proto::JobState;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RelayState;
use crate::upload::discard;

/// `jobs` failed at `at` with `message`, in their histories.
async fn record_failed(
    conn: &mut sqlx::PgConnection,
    jobs: &[Uuid],
    message: &str,
    at: OffsetDateTime,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO print_job_events (job_id, state, message, at)
         SELECT id, $4, $2, $3 FROM unnest($1::uuid[]) AS id",
    )
    .bind(jobs)
    .bind(message)
    .bind(at)
    .bind(JobState::Failed.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// The jobs of `printer` that have not finished fail now (in the caller's transaction),
/// each with `message` in its history: queued ones are never sent, and those the printer
/// had are over (the printer is gone, and its connections with it). Returns how many.
pub async fn fail_unfinished(
    conn: &mut sqlx::PgConnection,
    printer: Uuid,
    message: &str,
    now: OffsetDateTime,
) -> sqlx::Result<u64> {
    let failed: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE print_jobs SET state = $4, message = $2, finished_at = $3, updated_at = $3
         WHERE printer_id = $1 AND state = ANY($5)
         RETURNING id",
    )
    .bind(printer)
    .bind(message)
    .bind(now)
    .bind(JobState::Failed.as_str())
    .bind(JobState::UNFINISHED.map(JobState::as_str))
    .fetch_all(&mut *conn)
    .await?;
    record_failed(conn, &failed, message, now).await?;
    Ok(failed.len() as u64)
}

/// Jobs still waiting for their printer `ttl` after they were sent fail (expired): a
/// printer that stays away does not keep people's files queued for ever. A `held` job
/// (sent from a slicer without "print") waits at most [`HELD_TTL`] (or `ttl`, if
/// shorter) for someone to start it, so plain uploads do not fill a printer's queue
/// quota for a week. Returns how many expired.
/// The longest a held job waits for someone to start it.
pub const HELD_TTL: time::Duration = time::Duration::days(1);

pub async fn expire_queued(
    db: &sqlx::PgPool,
    now: OffsetDateTime,
    ttl: std::time::Duration,
) -> sqlx::Result<u64> {
    let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::days(7));
    let days = ttl.whole_days().max(1);
    let held_ttl = ttl.min(HELD_TTL);
    let held_hours = held_ttl.whole_hours().max(1);
    let mut tx = db.begin().await?;
    let mut expired = 0;
    // The states are written out, not bound: it lets the partial index
    // print_jobs_active (`state IN` JobState::ACTIVE) serve the scan.
    for (query, message) in [
        (
            "UPDATE print_jobs SET state = $4, message = $2, finished_at = $3, updated_at = $3
             WHERE id IN (SELECT id FROM print_jobs WHERE state = 'queued' AND created_at < $1
                          LIMIT 1000 FOR UPDATE SKIP LOCKED)
             RETURNING id",
            format!("expired: the printer did not take it within {days} days"),
        ),
        (
            "UPDATE print_jobs SET state = $4, message = $2, finished_at = $3, updated_at = $3
             WHERE id IN (SELECT id FROM print_jobs WHERE state = 'held' AND created_at < $1
                          LIMIT 1000 FOR UPDATE SKIP LOCKED)
             RETURNING id",
            format!("expired: nobody started it within {held_hours} hours"),
        ),
    ] {
        let limit = if query.contains("'held'") {
            held_ttl
        } else {
            ttl
        };
        let ids: Vec<Uuid> = sqlx::query_scalar(query)
            .bind(now - limit)
            .bind(&message)
            .bind(now)
            .bind(JobState::Failed.as_str())
            .fetch_all(&mut *tx)
            .await?;
        record_failed(&mut tx, &ids, &message, now).await?;
        expired += ids.len();
    }
    tx.commit().await?;
    Ok(expired as u64)
}

/// The relay's side of [`PrinterJobs`], for the services that remove printers.
pub struct PrinterJobsOfRelay;

impl PrinterJobs for PrinterJobsOfRelay {
    fn printer_left<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        printer: Uuid,
        reason: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(fail_unfinished(conn, printer, reason, now))
    }

    fn member_left<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        org: Uuid,
        user: Uuid,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(async move {
            let revoked = sqlx::query(
                "UPDATE printer_upload_keys SET revoked_at = $3
                 WHERE organization_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(org)
            .bind(user)
            .bind(now)
            .execute(conn)
            .await?;
            Ok(revoked.rows_affected())
        })
    }
}

/// Hourly: uploads that never finished (a crash mid-upload) are removed with their
/// blobs; jobs waiting longer than `PRINTWORKS_QUEUED_JOB_TTL` expire; jobs still
/// active on printers that were unpaired fail; the files of jobs
/// finished longer ago than `PRINTWORKS_JOB_RETENTION` are deleted (their rows and
/// history stay). Returns how many things were cleaned.
pub async fn cleanup(state: &RelayState) -> anyhow::Result<usize> {
    let ctx = &state.ctx;
    let now = ctx.now();
    // The state lists below are written out, not bound, so that the partial indexes
    // print_jobs_receiving (`state = 'receiving'`, JobState::Receiving) and
    // print_jobs_active (`state IN (...)`, JobState::ACTIVE) serve them.
    let stale: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, blob_key FROM print_jobs WHERE state = 'receiving' AND created_at < $1 LIMIT 1000",
    )
    .bind(now - time::Duration::hours(1) - time::Duration::try_from(ctx.settings.relay.upload_timeout)?)
    .fetch_all(&ctx.db)
    .await?;
    for (id, key) in &stale {
        let spool = state.store.spool_dir().join(format!("{id}.sealed"));
        discard(state, *id, &spool, key).await;
    }
    // Unpairing fails a printer's jobs at once; this catches any left behind (a
    // removal written by something other than the org and pairing services).
    // The org service says which printers are paired; asked a page at a time.
    let mut orphaned: Vec<Uuid> = Vec::new();
    let mut after = Uuid::nil();
    while orphaned.len() < 1000 {
        let active: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT printer_id FROM print_jobs
             WHERE state IN ('held', 'queued', 'dispatched', 'downloading', 'printing', 'paused')
               AND printer_id > $1
             ORDER BY printer_id LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&ctx.db)
        .await?;
        let Some(last) = active.last() else { break };
        after = *last;
        let paired: std::collections::HashSet<Uuid> =
            printworks_org::fleet::paired_among(&ctx.db, &active)
                .await?
                .into_iter()
                .map(|(printer, _)| printer)
                .collect();
        orphaned.extend(active.into_iter().filter(|p| !paired.contains(p)));
    }
    let mut failed = expire_queued(&ctx.db, now, ctx.settings.relay.queued_job_ttl).await?;
    for printer in &orphaned {
        let mut tx = ctx.db.begin().await?;
        failed += fail_unfinished(&mut tx, *printer, "the printer was removed", now).await?;
        tx.commit().await?;
    }
    let expired: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, blob_key FROM print_jobs
         WHERE finished_at < $1 AND blob_deleted_at IS NULL LIMIT 1000",
    )
    .bind(now - time::Duration::try_from(ctx.settings.relay.job_retention)?)
    .fetch_all(&ctx.db)
    .await?;
    for (id, key) in &expired {
        state.store.delete(key).await?;
        sqlx::query("UPDATE print_jobs SET blob_deleted_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&ctx.db)
            .await?;
    }
    Ok(stale.len() + usize::try_from(failed).unwrap_or(usize::MAX) + expired.len())
}
