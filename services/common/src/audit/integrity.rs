//! The audit chains' integrity: signed checkpoints of their heads ([`checkpoint`], run
//! every few minutes by the org service's background job) and verification
//! ([`verify_chain`] for one chain, behind `GET /org/v1/organizations/{org}/audit-events/verify`;
//! [`verify_all`] for `printworks audit verify`).
//!
//! A checkpoint is an HMAC ([`checkpoint_mac`]) under a key derived from the master
//! key, which the database does not hold: someone who can write to the database could
//! rewrite a chain and recompute every hash, but not sign its new heads. Retention
//! ([`super::retention::prune`]) prunes a chain only up to a checkpoint old enough, which
//! stays as the chain's signed start; [`RetentionRule`] tells the verifier so.

use futures_util::TryStreamExt as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{GLOBAL_CHAIN, chain_hash};
use crate::crypto::{SecretBox, constant_time_eq};

/// The first record that breaks a chain, and how.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Break {
    pub chain_index: i64,
    pub id: Option<Uuid>,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Verification {
    pub chain_id: Uuid,
    pub ok: bool,
    pub records_checked: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_record: Option<Break>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    chain_index: i64,
    occurred_at: OffsetDateTime,
    organization_id: Option<Uuid>,
    actor_type: String,
    actor_id: Option<String>,
    source_addr: Option<String>,
    action: String,
    outcome: String,
    target_type: Option<String>,
    target_id: Option<String>,
    record: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// Whether the columns of a row say what its hashed record says.
fn columns_match(r: &Row, chain: Uuid) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(&r.record) else {
        return false;
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let occurred = r
        .occurred_at
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    s("id") == Some(r.id.to_string())
        && v.get("chain_index").and_then(Value::as_i64) == Some(r.chain_index)
        && s("chain_id") == Some(chain.to_string())
        && s("occurred_at") == occurred
        && s("organization_id") == r.organization_id.map(|o| o.to_string())
        && s("actor_type").as_deref() == Some(r.actor_type.as_str())
        && s("actor_id") == r.actor_id
        && s("source_addr") == r.source_addr
        && s("action").as_deref() == Some(r.action.as_str())
        && s("outcome").as_deref() == Some(r.outcome.as_str())
        && s("target_type") == r.target_type
        && s("target_id") == r.target_id
}

#[derive(sqlx::FromRow)]
struct Checkpoint {
    chain_index: i64,
    hash: Vec<u8>,
    signed_at: OffsetDateTime,
    prev_index: i64,
    mac: Vec<u8>,
}

impl Checkpoint {
    fn signed(&self, secrets: &SecretBox, chain: Uuid) -> bool {
        constant_time_eq(
            &checkpoint_mac(
                secrets,
                chain,
                self.chain_index,
                &self.hash,
                self.signed_at,
                self.prev_index,
            ),
            &self.mac,
        )
    }
}

/// The signature of a checkpoint: an HMAC, under a key derived from the master key, of
/// the chain, the record's index and hash, the time, and the previous checkpoint's index
/// (so that checkpoints form a chain of their own).
pub fn checkpoint_mac(
    secrets: &SecretBox,
    chain: Uuid,
    index: i64,
    hash: &[u8],
    signed_at: OffsetDateTime,
    prev_index: i64,
) -> [u8; 32] {
    let mut message = format!("printworks-audit-checkpoint-v2\n{chain}\n{index}\n").into_bytes();
    message.extend_from_slice(hash);
    message.extend_from_slice(
        format!(
            "\n{}\n{prev_index}",
            signed_at.unix_timestamp_nanos() / 1000
        )
        .as_bytes(),
    );
    secrets.mac("audit-checkpoint", &message)
}

/// One read-only transaction that sees the whole chain as of one moment.
async fn snapshot(db: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Signs the head of every chain that grew since its last checkpoint — but only after
/// checking the records since that checkpoint: a chain that no longer verifies is not
/// signed (and is reported in the log). Returns how many checkpoints were made.
pub async fn checkpoint(
    db: &PgPool,
    secrets: &SecretBox,
    now: OffsetDateTime,
) -> sqlx::Result<u64> {
    // Microseconds: what PostgreSQL keeps, so the signature checks on read.
    let now = now
        .replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now);
    let chains: Vec<Uuid> = sqlx::query_scalar(
        "SELECT c.chain_id FROM audit_chains c
         WHERE c.last_index > greatest(c.pruned_through_index, coalesce(
                 (SELECT max(k.chain_index) FROM audit_checkpoints k WHERE k.chain_id = c.chain_id), 0))",
    )
    .fetch_all(db)
    .await?;
    let mut made = 0;
    for chain in chains {
        let mut tx = snapshot(db).await?;
        let head: Option<ChainHead> = sqlx::query_as(
            "SELECT last_index, last_hash, pruned_through_index, pruned_through_hash
             FROM audit_chains WHERE chain_id = $1",
        )
        .bind(chain)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(head) = head else { continue };
        let last: Option<Checkpoint> = sqlx::query_as(
            "SELECT chain_index, hash, signed_at, prev_index, mac FROM audit_checkpoints
             WHERE chain_id = $1 ORDER BY chain_index DESC LIMIT 1",
        )
        .bind(chain)
        .fetch_optional(&mut *tx)
        .await?;
        // Where the records to check start: the last checkpoint, or the chain's start.
        let (from_index, from_hash, prev_index) = match &last {
            Some(k) if !k.signed(secrets, chain) => {
                tracing::error!(%chain, index = k.chain_index, "audit checkpoint with a bad signature; not signing this chain");
                continue;
            }
            Some(k) => (k.chain_index, k.hash.clone(), k.chain_index),
            None if head.pruned_through_index == 0 => (0, vec![0u8; 32], 0),
            None => {
                tracing::error!(%chain, "audit chain pruned without a checkpoint; not signing it");
                continue;
            }
        };
        let rows: Vec<(i64, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT chain_index, record, prev_hash, hash FROM audit_events
             WHERE chain_id = $1 AND chain_index > $2 AND chain_index <= $3 ORDER BY chain_index",
        )
        .bind(chain)
        .bind(from_index)
        .bind(head.last_index)
        .fetch_all(&mut *tx)
        .await?;
        let mut prev = from_hash;
        let mut expected = from_index + 1;
        let mut sound = true;
        for (index, record, prev_hash, hash) in &rows {
            if *index != expected
                || *prev_hash != prev
                || chain_hash(prev_hash, record)[..] != hash[..]
            {
                sound = false;
                break;
            }
            prev = hash.clone();
            expected += 1;
        }
        if !sound || expected - 1 != head.last_index || prev != head.last_hash {
            tracing::error!(%chain, "audit chain does not verify since its last checkpoint; not signing it");
            continue;
        }
        drop(tx);
        made += sqlx::query(
            "INSERT INTO audit_checkpoints (chain_id, chain_index, hash, signed_at, prev_index, mac)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(chain)
        .bind(head.last_index)
        .bind(&head.last_hash)
        .bind(now)
        .bind(prev_index)
        .bind(&checkpoint_mac(secrets, chain, head.last_index, &head.last_hash, now, prev_index)[..])
        .execute(db)
        .await?
        .rows_affected();
    }
    Ok(made)
}

#[derive(sqlx::FromRow)]
struct ChainHead {
    last_index: i64,
    last_hash: Vec<u8>,
    pruned_through_index: i64,
    pruned_through_hash: Option<Vec<u8>>,
}

/// What the verifier knows of retention, to tell a chain pruned by it from one whose
/// recent records were cut away: records are pruned only up to a checkpoint signed
/// longer than `retention` before `now`.
#[derive(Clone, Copy, Debug)]
pub struct RetentionRule {
    pub now: OffsetDateTime,
    pub retention: std::time::Duration,
}

/// Walks a chain, as of one moment, from its start (or the signed checkpoint retention
/// pruned it to) to its head, checking that each record's hash is that of its
/// predecessor's hash and its own text, that its columns say what its text says, that
/// no index is missing or out of place, that the chain passes through every signed
/// checkpoint (whose signatures, and links from one to the next, must check), and that
/// it ends where its head says. Reports the first record that fails.
pub async fn verify_chain(
    db: &PgPool,
    secrets: &SecretBox,
    chain: Uuid,
    rule: RetentionRule,
) -> sqlx::Result<Verification> {
    let mut tx = snapshot(db).await?;
    let fail = |index: i64, id: Option<Uuid>, reason: &str, checked: i64| Verification {
        chain_id: chain,
        ok: false,
        records_checked: checked,
        first_bad_record: Some(Break {
            chain_index: index,
            id,
            reason: reason.to_owned(),
        }),
    };
    let head: Option<ChainHead> = sqlx::query_as(
        "SELECT last_index, last_hash, pruned_through_index, pruned_through_hash FROM audit_chains WHERE chain_id = $1",
    )
    .bind(chain)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(ChainHead {
        last_index,
        last_hash,
        pruned_through_index: pruned_index,
        pruned_through_hash: pruned_hash,
    }) = head
    else {
        let leftovers: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_events WHERE chain_id = $1)
                 OR EXISTS (SELECT 1 FROM audit_checkpoints WHERE chain_id = $1)",
        )
        .bind(chain)
        .fetch_one(&mut *tx)
        .await?;
        if leftovers {
            return Ok(fail(
                0,
                None,
                "the chain's head is gone (its records remain)",
                0,
            ));
        }
        return Ok(Verification {
            chain_id: chain,
            ok: true,
            records_checked: 0,
            first_bad_record: None,
        });
    };
    let checkpoints: Vec<Checkpoint> = sqlx::query_as(
        "SELECT chain_index, hash, signed_at, prev_index, mac FROM audit_checkpoints
         WHERE chain_id = $1 AND chain_index >= $2 ORDER BY chain_index",
    )
    .bind(chain)
    .bind(pruned_index)
    .fetch_all(&mut *tx)
    .await?;
    // Every checkpoint is ours, and each names the one before it.
    let mut previous: Option<i64> = None;
    for k in &checkpoints {
        if !k.signed(secrets, chain) {
            return Ok(fail(
                k.chain_index,
                None,
                "a checkpoint does not carry the server's signature (forged or altered)",
                0,
            ));
        }
        // The first names none (or, in a pruned chain, one pruned away).
        let linked = match previous {
            Some(p) => k.prev_index == p,
            None => pruned_index > 0 || k.prev_index == 0,
        };
        if !linked {
            return Ok(fail(
                k.chain_index,
                None,
                "signed checkpoints before this one were removed",
                0,
            ));
        }
        previous = Some(k.chain_index);
    }
    // A pruned chain starts at a signed checkpoint older than the retention period.
    let mut pending = checkpoints.iter().peekable();
    if pruned_index > 0 {
        let cutoff =
            rule.now - time::Duration::try_from(rule.retention).unwrap_or(time::Duration::ZERO);
        let anchored = pending
            .next_if(|k| k.chain_index == pruned_index)
            .is_some_and(|k| Some(&k.hash) == pruned_hash.as_ref() && k.signed_at < cutoff);
        if !anchored {
            return Ok(fail(
                pruned_index,
                None,
                "the chain's start was moved: it does not begin at a signed checkpoint older than the retention period",
                0,
            ));
        }
    }
    let mut expected_index = pruned_index + 1;
    let mut prev = Some(pruned_hash.unwrap_or_else(|| vec![0u8; 32]));
    // A prune under way (or cut short) deletes the oldest records batch by batch before
    // it records the new start: a missing beginning is retention's work only if a signed
    // checkpoint older than the retention period covers it. The records after it are
    // then held to that checkpoint (its hash) rather than to their lost predecessor.
    let first_present: Option<i64> =
        sqlx::query_scalar("SELECT min(chain_index) FROM audit_events WHERE chain_id = $1")
            .bind(chain)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(first) = first_present.filter(|f| *f > expected_index) {
        let cutoff =
            rule.now - time::Duration::try_from(rule.retention).unwrap_or(time::Duration::ZERO);
        let covered = checkpoints
            .iter()
            .any(|k| k.chain_index >= first - 1 && k.signed_at < cutoff);
        if !covered {
            return Ok(fail(
                expected_index,
                None,
                "record missing (deleted, or indexes rewritten)",
                0,
            ));
        }
        while pending.next_if(|k| k.chain_index < first - 1).is_some() {}
        prev = pending
            .next_if(|k| k.chain_index == first - 1)
            .map(|k| k.hash.clone());
        expected_index = first;
    }
    let mut checked = 0;
    let mut rows = sqlx::query_as::<_, Row>(
        "SELECT id, chain_index, occurred_at, organization_id, actor_type, actor_id, source_addr,
                action, outcome, target_type, target_id, record, prev_hash, hash
         FROM audit_events WHERE chain_id = $1 ORDER BY chain_index",
    )
    .bind(chain)
    .fetch(&mut *tx);
    while let Some(r) = rows.try_next().await? {
        if r.chain_index <= pruned_index {
            return Ok(fail(
                r.chain_index,
                Some(r.id),
                "a record older than the pruned point is still present",
                checked,
            ));
        }
        if r.chain_index != expected_index {
            return Ok(fail(
                expected_index,
                None,
                "record missing (deleted, or indexes rewritten)",
                checked,
            ));
        }
        if prev.as_ref().is_some_and(|p| *p != r.prev_hash) {
            return Ok(fail(
                r.chain_index,
                Some(r.id),
                "does not follow its predecessor (removed, inserted or reordered)",
                checked,
            ));
        }
        if chain_hash(&r.prev_hash, &r.record)[..] != r.hash[..] {
            return Ok(fail(
                r.chain_index,
                Some(r.id),
                "its content was changed (hash mismatch)",
                checked,
            ));
        }
        if !columns_match(&r, chain) {
            return Ok(fail(
                r.chain_index,
                Some(r.id),
                "its columns were changed (they differ from the hashed record)",
                checked,
            ));
        }
        if let Some(k) = pending.next_if(|k| k.chain_index == r.chain_index)
            && k.hash != r.hash
        {
            return Ok(fail(
                r.chain_index,
                Some(r.id),
                &format!(
                    "it is not the record signed at {}: the chain was rewritten up to here",
                    k.signed_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                ),
                checked,
            ));
        }
        checked += 1;
        prev = Some(r.hash);
        expected_index += 1;
    }
    if let Some(k) = pending.next() {
        return Ok(fail(
            k.chain_index,
            None,
            "a signed checkpoint names a record that is no longer there (records removed)",
            checked,
        ));
    }
    if expected_index - 1 != last_index || prev.as_ref() != Some(&last_hash) {
        return Ok(fail(
            expected_index,
            None,
            "the chain ends before its head: the newest records were removed",
            checked,
        ));
    }
    Ok(Verification {
        chain_id: chain,
        ok: true,
        records_checked: checked,
        first_bad_record: None,
    })
}

/// The head of every chain — its id, last index and last hash — by chain id: what a
/// backup records and a restore compares.
pub async fn heads(conn: &mut sqlx::PgConnection) -> sqlx::Result<Vec<(Uuid, i64, Vec<u8>)>> {
    sqlx::query_as("SELECT chain_id, last_index, last_hash FROM audit_chains ORDER BY chain_id")
        .fetch_all(conn)
        .await
}

/// Every chain (also one whose head was removed), the global one first.
pub async fn verify_all(
    db: &PgPool,
    secrets: &SecretBox,
    rule: RetentionRule,
) -> sqlx::Result<Vec<Verification>> {
    let chains: Vec<Uuid> = sqlx::query_scalar(
        "SELECT chain_id FROM (
             SELECT chain_id FROM audit_chains
             UNION SELECT DISTINCT chain_id FROM audit_events
             UNION SELECT DISTINCT chain_id FROM audit_checkpoints) c
         ORDER BY chain_id = $1 DESC, chain_id",
    )
    .bind(GLOBAL_CHAIN)
    .fetch_all(db)
    .await?;
    let mut out = Vec::new();
    for c in chains {
        out.push(verify_chain(db, secrets, c, rule).await?);
    }
    Ok(out)
}
