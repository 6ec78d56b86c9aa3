//! What other services read of the organization's printers, through these functions
//! only (the org service owns `printers` and `printer_security`; see
//! `docs/development.md`, "Who owns which table"): whether a printer is paired and to
//! which organization, whether a caller may use it, and its security settings as the
//! relay pushes them to the printer.
//!
//! "A printer is paired" is written once, in [`paired!`](crate::paired).

use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::Caller;
use printworks_common::{ApiError, AppContext};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::access::{Membership, membership};

/// A paired printer, as other services need it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PairedPrinter {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub model: Option<String>,
    pub claimed_by: Option<Uuid>,
}

/// The printer, if it is paired.
pub async fn paired(
    db: impl sqlx::PgExecutor<'_>,
    printer: Uuid,
) -> sqlx::Result<Option<PairedPrinter>> {
    sqlx::query_as(concat!(
        "SELECT id, organization_id, model, claimed_by FROM printers WHERE id = $1 AND ",
        paired!()
    ))
    .bind(printer)
    .fetch_optional(db)
    .await
}

/// Of these printers, those still paired, with their organization.
pub async fn paired_among(
    db: impl sqlx::PgExecutor<'_>,
    printers: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    sqlx::query_as(concat!(
        "SELECT id, organization_id FROM printers WHERE id = ANY($1) AND ",
        paired!()
    ))
    .bind(printers)
    .fetch_all(db)
    .await
}

/// The organization's paired printer a pairing request replaces: the one it proved to
/// be (`proven`), else — without a proof — the newest with the same serial.
pub async fn paired_for_repairing(
    conn: &mut PgConnection,
    org: Uuid,
    proven: Option<Uuid>,
    serial: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(concat!(
        "SELECT id FROM printers WHERE organization_id = $1 AND ",
        paired!(),
        " AND (id = $2 OR ($2 IS NULL AND serial = $3))
         ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(org)
    .bind(proven)
    .bind(serial)
    .fetch_optional(conn)
    .await
}

/// Proof that the caller may use a printer (send it jobs, see them): the printer is
/// paired and visible to them — an admin, the person who added it, or someone it is
/// shared with. Only [`usable`] makes one.
pub struct Usable {
    pub printer: PairedPrinter,
    by: Membership,
}

impl Usable {
    /// The caller's membership of the printer's organization.
    pub fn membership(&self) -> &Membership {
        &self.by
    }

    /// Who used it, for the audit log.
    pub fn audit_actor(&self) -> printworks_common::audit::Actor {
        self.by.actor()
    }
}

/// The printer, if it is paired and the caller may use it; anything else is 404.
pub async fn usable(ctx: &AppContext, caller: &Caller, printer: Uuid) -> Result<Usable, ApiError> {
    let p = paired(&ctx.db, printer)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let m = membership(ctx, p.organization_id, caller).await?;
    crate::printers::visible(&ctx.db, &m, printer).await?;
    Ok(Usable { printer: p, by: m })
}

/// A printer's security settings as the printer receives them (version 0: never set).
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SecuritySettings {
    pub firewall_enabled: bool,
    /// The PIN's Argon2 hash (PHC string), never the PIN.
    pub pin_hash: Option<String>,
    pub version: i64,
}

/// The printer's current security settings.
pub async fn security_settings(
    db: impl sqlx::PgExecutor<'_>,
    printer: Uuid,
) -> sqlx::Result<SecuritySettings> {
    let row: Option<SecuritySettings> = sqlx::query_as(
        "SELECT firewall_enabled, pin_hash, version FROM printer_security WHERE printer_id = $1",
    )
    .bind(printer)
    .fetch_optional(db)
    .await?;
    Ok(row.unwrap_or_default())
}

/// Of these printers, those whose settings changed since they last confirmed them,
/// with the version waiting.
pub async fn unconfirmed_security(
    db: impl sqlx::PgExecutor<'_>,
    printers: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "SELECT printer_id, version FROM printer_security
         WHERE printer_id = ANY($1) AND version > coalesce(confirmed_version, 0)",
    )
    .bind(printers)
    .fetch_all(db)
    .await
}

/// What a printer's "I applied settings version N" amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// N is the current version, confirmed now (audited).
    Confirmed,
    /// N is the current version (or 0 when nothing was ever set), confirmed before.
    AlreadyConfirmed,
    /// N is not what the printer was sent: the current version is this.
    NotCurrent(Option<i64>),
}

/// A setting a printer confirmed without applying it (it has no way to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotApplied {
    Firewall,
    Pin,
}

impl NotApplied {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "firewall" => Some(Self::Firewall),
            "pin" => Some(Self::Pin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firewall => "firewall",
            Self::Pin => "pin",
        }
    }
}

/// The printer reports that it applied `version` of its settings, but for
/// `not_applied`. A confirmation of the current version that says something new of what
/// was not applied (a printer moved behind OctoPrint, say) is recorded, and audited, as
/// a confirmation.
pub async fn confirm_security(
    db: &sqlx::PgPool,
    printer: Uuid,
    version: i64,
    not_applied: &[NotApplied],
    now: OffsetDateTime,
) -> sqlx::Result<Confirmation> {
    let not_applied: Vec<&str> = not_applied.iter().map(|n| n.as_str()).collect();
    let mut tx = db.begin().await?;
    let org: Option<Uuid> = sqlx::query_scalar(
        "UPDATE printer_security s SET confirmed_version = $2, confirmed_at = $3, not_applied = $4
         FROM printers p
         WHERE s.printer_id = $1 AND p.id = s.printer_id AND s.version = $2
           AND (s.confirmed_version IS NULL OR s.confirmed_version < $2
                OR s.not_applied IS DISTINCT FROM $4::text[])
         RETURNING p.organization_id",
    )
    .bind(printer)
    .bind(version)
    .bind(now)
    .bind(&not_applied)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(org) = org else {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM printer_security WHERE printer_id = $1")
                .bind(printer)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        return Ok(
            if current == Some(version) || (current.is_none() && version == 0) {
                Confirmation::AlreadyConfirmed
            } else {
                Confirmation::NotCurrent(current)
            },
        );
    };
    AuditEvent::new(
        "printer.security_confirmed",
        Actor::Printer(printer),
        Outcome::Success,
    )
    .organization(org)
    .target("printer", printer)
    .detail("version", version)
    .detail("not_applied", not_applied.clone())
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(Confirmation::Confirmed)
}
