//! Audit retention: records older than `PRINTWORKS_AUDIT_RETENTION` are deleted (the
//! only deletion the append-only trigger allows, in a transaction that says it is
//! retention's) up to a signed checkpoint, which stays as the chain's start so that the
//! chain still verifies ([`super::integrity::verify_chain`]). Run hourly by the org
//! service's background job.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// Records deleted per transaction by [`prune`].
pub const PRUNE_BATCH: i64 = 1000;

/// Deletes records older than `now - retention`, chain by chain. A chain is pruned up to
/// its newest signed checkpoint older than the cutoff — never past one — and that
/// checkpoint stays as the chain's new start, from which verification continues.
///
/// The oldest records go first, [`PRUNE_BATCH`] at a time, each batch in a short
/// transaction of its own that does not touch the chain's head: appends to the chain go
/// on meanwhile, however large the backlog. Only the last step — recording the new start
/// and dropping the checkpoints before it — takes the head's lock, briefly. Pruners of
/// one chain (several replicas) take turns by an advisory lock per transaction; one cut
/// short leaves a chain that still verifies (see
/// [`verify_chain`](super::integrity::verify_chain)) and is finished by the next run.
/// Returns how many records were removed.
pub async fn prune(
    db: &PgPool,
    now: OffsetDateTime,
    retention: std::time::Duration,
) -> sqlx::Result<u64> {
    let cutoff = now - time::Duration::try_from(retention).unwrap_or(time::Duration::days(365));
    let chains: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT c.chain_id, max(k.chain_index) FROM audit_chains c
             JOIN audit_checkpoints k ON k.chain_id = c.chain_id
             WHERE k.signed_at < $1 AND k.chain_index > c.pruned_through_index
             GROUP BY c.chain_id",
    )
    .bind(cutoff)
    .fetch_all(db)
    .await?;
    let mut removed = 0;
    for (chain, through) in chains {
        loop {
            let mut tx = db.begin().await?;
            sqlx::query("SET LOCAL printworks.audit_retention = 'on'")
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("audit-prune:{chain}"))
                .execute(&mut *tx)
                .await?;
            // One that waited finds the work done and moves nothing backwards.
            let pruned: i64 = sqlx::query_scalar(
                "SELECT pruned_through_index FROM audit_chains WHERE chain_id = $1",
            )
            .bind(chain)
            .fetch_one(&mut *tx)
            .await?;
            if pruned >= through {
                break;
            }
            let deleted = sqlx::query(
                "DELETE FROM audit_events WHERE chain_id = $1 AND chain_index <= LEAST($2,
                   (SELECT min(chain_index) FROM audit_events WHERE chain_id = $1) + $3 - 1)",
            )
            .bind(chain)
            .bind(through)
            .bind(PRUNE_BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            removed += deleted;
            let done = deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX);
            if done {
                let hash: Vec<u8> = sqlx::query_scalar(
                    "SELECT hash FROM audit_checkpoints WHERE chain_id = $1 AND chain_index = $2",
                )
                .bind(chain)
                .bind(through)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM audit_checkpoints WHERE chain_id = $1 AND chain_index < $2",
                )
                .bind(chain)
                .bind(through)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE audit_chains SET pruned_through_index = $2, pruned_through_hash = $3
                     WHERE chain_id = $1",
                )
                .bind(chain)
                .bind(through)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            if done {
                break;
            }
        }
    }
    Ok(removed)
}
