//! Sealing again, under the current master key, what an earlier one sealed — the step
//! of a master-key rotation after every replica runs with the new key (and the old one
//! as previous): `printworks keys reseal`. Each service names its columns of sealed
//! values ([`SealedColumn`]); the binary passes them all.

use sqlx::PgPool;

use crate::crypto::SecretBox;

/// A column of sealed values: its table, the column keying its rows (a uuid or text),
/// and the context each value was sealed for (`prefix` and the row's key).
#[derive(Clone, Copy, Debug)]
pub struct SealedColumn {
    pub table: &'static str,
    pub key: &'static str,
    pub key_is_uuid: bool,
    pub column: &'static str,
    pub context_prefix: &'static str,
}

/// The common crate's own: e-mail bodies waiting in the outbox, and the service keys.
pub const SEALED: &[SealedColumn] = &[
    SealedColumn {
        table: "email_outbox",
        key: "id",
        key_is_uuid: true,
        column: "body_sealed",
        context_prefix: "email:",
    },
    SealedColumn {
        table: "service_keys",
        key: "name",
        key_is_uuid: false,
        column: "key_sealed",
        context_prefix: "service-key:",
    },
];

/// What a pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Sealed again under the current key.
    pub resealed: u64,
    /// Under no key configured here: they stay as they are (and will not open).
    pub unopenable: u64,
}

const BATCH: i64 = 500;

/// Reseals every value of `columns` that is not under the current key, in batches of
/// short transactions (each row changed only if it is still the value read: a row
/// rewritten meanwhile by the service is under the current key already). With `check`,
/// changes nothing and counts what would be resealed.
pub async fn reseal(
    db: &PgPool,
    secrets: &SecretBox,
    columns: &[SealedColumn],
    check: bool,
) -> anyhow::Result<Resealed> {
    let mut total = Resealed::default();
    for c in columns {
        // Names come from the constants above and the services' own lists, never from
        // input; values are bound.
        let (key, cast) = (c.key, if c.key_is_uuid { "::uuid" } else { "" });
        let select = format!(
            "SELECT {key}::text, {col} FROM {table}
             WHERE {col} IS NOT NULL AND ($1::text IS NULL OR {key} > $1{cast})
             ORDER BY {key} LIMIT {BATCH}",
            col = c.column,
            table = c.table,
        );
        let update = format!(
            "UPDATE {table} SET {col} = $3 WHERE {key} = $1{cast} AND {col} = $2",
            col = c.column,
            table = c.table,
        );
        let mut after: Option<String> = None;
        loop {
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
                .bind(&after)
                .fetch_all(db)
                .await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            let mut tx = db.begin().await?;
            for (id, sealed) in rows {
                if secrets.is_current(&sealed) {
                    continue;
                }
                let context = format!("{}{id}", c.context_prefix);
                let Some(plain) = secrets.open(&context, &sealed) else {
                    total.unopenable += 1;
                    continue;
                };
                total.resealed += 1;
                if !check {
                    sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                        .bind(&id)
                        .bind(&sealed)
                        .bind(secrets.seal(&context, &plain))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }
    }
    Ok(total)
}
