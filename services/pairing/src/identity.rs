//! Printer credentials as the pairing service keeps them, and how the printer endpoint
//! (the relay) recognises a printer: by the SHA-256 of the client certificate it
//! presented, which must be recorded here, unrevoked, within its validity by the
//! injected clock, and belong to a printer that is still paired.

use std::collections::HashSet;

use printworks_common::crypto::SecretBox;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ca::Issued;

/// Who is on the other end of a printer connection.
pub use printworks_proto::PrinterIdentity;

/// The printer a certificate (by its SHA-256) identifies, if it is valid now.
pub async fn identify(
    db: &PgPool,
    fingerprint: &[u8],
    now: OffsetDateTime,
) -> sqlx::Result<Option<PrinterIdentity>> {
    let row: Option<(Uuid, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT printer_id, serial, not_after FROM printer_certificates
         WHERE fingerprint = $1 AND revoked_at IS NULL AND not_before <= $2 AND not_after > $2",
    )
    .bind(fingerprint)
    .bind(now)
    .fetch_optional(db)
    .await?;
    let Some((printer_id, certificate_serial, not_after)) = row else {
        return Ok(None);
    };
    // The printer must still be paired: the org service says so, and to which
    // organization.
    Ok(printworks_org::fleet::paired(db, printer_id)
        .await?
        .map(|p| PrinterIdentity {
            printer_id,
            organization_id: p.organization_id,
            certificate_serial,
            not_after,
        }))
}

/// Of these certificates (by SHA-256), the ones still valid now.
pub async fn still_valid(
    db: &PgPool,
    fingerprints: &[Vec<u8>],
    now: OffsetDateTime,
) -> sqlx::Result<HashSet<Vec<u8>>> {
    let rows: Vec<(Vec<u8>, Uuid)> = sqlx::query_as(
        "SELECT fingerprint, printer_id FROM printer_certificates
         WHERE fingerprint = ANY($1) AND revoked_at IS NULL AND not_before <= $2 AND not_after > $2",
    )
    .bind(fingerprints)
    .bind(now)
    .fetch_all(db)
    .await?;
    let printers: Vec<Uuid> = rows.iter().map(|(_, p)| *p).collect();
    let paired: HashSet<Uuid> = printworks_org::fleet::paired_among(db, &printers)
        .await?
        .into_iter()
        .map(|(printer, _)| printer)
        .collect();
    Ok(rows
        .into_iter()
        .filter(|(_, p)| paired.contains(p))
        .map(|(fingerprint, _)| fingerprint)
        .collect())
}

/// Records an issued certificate (`how`: pairing, renewal or secret).
pub async fn record_certificate(
    conn: &mut PgConnection,
    printer_id: Uuid,
    issued: &Issued,
    now: OffsetDateTime,
    how: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO printer_certificates
           (serial, printer_id, fingerprint, not_before, not_after, issued_at, issued_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&issued.serial)
    .bind(printer_id)
    .bind(&issued.fingerprint[..])
    .bind(issued.not_before)
    .bind(issued.not_after)
    .bind(now)
    .bind(how)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes every certificate of the printer (a trigger tells the printer endpoint,
/// which drops live connections).
pub async fn revoke_all(
    conn: &mut PgConnection,
    printer_id: Uuid,
    now: OffsetDateTime,
    reason: &str,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE printer_certificates SET revoked_at = $2, revoked_reason = $3
         WHERE printer_id = $1 AND revoked_at IS NULL",
    )
    .bind(printer_id)
    .bind(now)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected())
}

fn secret_context(printer_id: Uuid) -> String {
    format!("printer-secret:{printer_id}")
}

/// Stores (or replaces) the printer's shared secret, sealed with the master key.
pub async fn store_secret(
    conn: &mut PgConnection,
    secrets: &SecretBox,
    printer_id: Uuid,
    secret: &str,
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    let sealed = secrets.seal(&secret_context(printer_id), secret.as_bytes());
    sqlx::query(
        "INSERT INTO printer_secrets (printer_id, secret_sealed, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (printer_id) DO UPDATE SET secret_sealed = $2, created_at = $3",
    )
    .bind(printer_id)
    .bind(sealed)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The printer's shared secret, if it is still paired.
pub async fn load_secret(
    conn: &mut PgConnection,
    secrets: &SecretBox,
    printer_id: Uuid,
) -> anyhow::Result<Option<(Uuid, Vec<u8>)>> {
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT secret_sealed FROM printer_secrets WHERE printer_id = $1")
            .bind(printer_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let Some(printer) = printworks_org::fleet::paired(&mut *conn, printer_id).await? else {
        return Ok(None);
    };
    let org = printer.organization_id;
    let secret = secrets
        .open(&secret_context(printer_id), &sealed)
        .ok_or_else(|| anyhow::anyhow!("a printer secret does not open"))?;
    Ok(Some((org, secret)))
}
