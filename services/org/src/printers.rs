//! Printers of an organization: `GET …/{org}/printers` (admins see all; others the
//! printers they claimed or that are shared with them or a team of theirs),
//! `GET …/{org}/printers/{printer}`, `PUT …/{org}/printers/{printer}/shares
//! {grantee_type, grantee_id}` and `DELETE …/shares/{grantee_type}/{grantee_id}` (admins
//! and members), and the security settings `GET|PUT …/{org}/printers/{printer}/security
//! {firewall_enabled, pin}` (admins): the six-digit PIN stored only as an Argon2 hash,
//! `pin: null` clearing it, every change a new version for the relay to push.
//!
//! Printers are created when they are claimed (the pairing service calls [`register`]).

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::Auth;
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::{Membership, Writer, membership};
use crate::shares::{Grantee, Shared, check_grantee, remove_share};

#[derive(Serialize, sqlx::FromRow)]
pub struct PrinterView {
    id: Uuid,
    name: String,
    model: Option<String>,
    serial: Option<String>,
    claimed_by: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl PrinterView {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The printers of $1 the caller may see: all for admins ($2 = 'admin'), else those
/// claimed by $3 (while not a guest) or shared with $3 or a team of $3.
macro_rules! visible_printers {
    ($tail:literal) => {
        concat!(
            "SELECT p.id, p.name, p.model, p.serial, p.claimed_by, p.created_at FROM printers p
             WHERE p.organization_id = $1 AND p.",
            paired!(),
            "
               AND ($2 = 'admin' OR ($2 <> 'guest' AND p.claimed_by = $3) OR EXISTS (
                   SELECT 1 FROM printer_shares s WHERE s.printer_id = p.id
                     AND ((s.grantee_type = 'user' AND s.grantee_id = $3)
                       OR (s.grantee_type = 'team' AND s.grantee_id IN
                             (SELECT team_id FROM team_members WHERE user_id = $3))))) ",
            $tail
        )
    };
}

/// The printer, if it is in the caller's organization and visible to them.
pub async fn visible(db: &PgPool, m: &Membership, printer: Uuid) -> Result<PrinterView, ApiError> {
    let row: Option<PrinterView> = sqlx::query_as(visible_printers!("AND p.id = $4"))
        .bind(m.org)
        .bind(m.role.as_str())
        .bind(m.user_id())
        .bind(printer)
        .fetch_optional(db)
        .await?;
    row.ok_or_else(ApiError::not_found)
}

/// A printer the caller may use, in any organization of theirs.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UsablePrinter {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub model: Option<String>,
}

/// Every printer the caller may use, across their organizations (a client: its own),
/// oldest first, at most `max`. An organization whose security policy refuses the
/// caller's sign-in is left out, as its routes would refuse them.
pub async fn usable_everywhere(
    ctx: &printworks_common::AppContext,
    caller: &printworks_common::auth::Caller,
    max: usize,
) -> Result<Vec<UsablePrinter>, ApiError> {
    let mut out = Vec::new();
    for m in crate::access::memberships_everywhere(ctx, caller).await? {
        let org = m.org;
        let rows: Vec<PrinterView> =
            sqlx::query_as(visible_printers!("ORDER BY p.created_at, p.id LIMIT $4"))
                .bind(org)
                .bind(m.role.as_str())
                .bind(m.user_id())
                .bind(i64::try_from(max - out.len()).unwrap_or(0))
                .fetch_all(&ctx.db)
                .await?;
        out.extend(rows.into_iter().map(|p| UsablePrinter {
            id: p.id,
            organization_id: org,
            name: p.name,
            model: p.model,
        }));
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

/// Adds a printer the writer claimed to their organization (in the caller's
/// transaction). For the pairing service.
pub async fn register(
    conn: &mut PgConnection,
    writer: &Writer<'_>,
    name: &str,
    model: Option<&str>,
    serial: Option<&str>,
    now: OffsetDateTime,
) -> sqlx::Result<Uuid> {
    let (org, claimed_by) = (writer.org, writer.user_id());
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO printers (id, organization_id, name, model, serial, claimed_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(org)
    .bind(name)
    .bind(model)
    .bind(serial)
    .bind(claimed_by)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Takes the printer's row lock (for the rest of the transaction on `conn`) if it is
/// still paired: `false` if it is not. What changes a printer's credentials or its
/// owner takes it first, so such changes happen one after another.
pub async fn lock_paired(conn: &mut PgConnection, printer: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query_scalar::<_, i32>(concat!(
        "SELECT 1 FROM printers WHERE id = $1 AND ",
        paired!(),
        " FOR UPDATE"
    ))
    .bind(printer)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// Proof that the caller may remove — or pair again — a printer now: admins, and the
/// person who added it while they may still change printers (not a guest). Only
/// [`lock_for_removal`] makes one; [`remove`] and [`repaired`] take it.
pub struct Removal {
    printer: Uuid,
    by: Membership,
}

impl Removal {
    pub fn printer(&self) -> Uuid {
        self.printer
    }

    pub fn audit_actor(&self) -> printworks_common::audit::Actor {
        self.by.actor()
    }
}

/// Takes the organization's lock and then the printer's (held for the rest of the
/// transaction on `conn`), reads the caller's role again under them, and answers whether
/// the caller may remove — or pair again — the printer now: 404 if it is gone or the
/// caller no longer belongs, 403 if their role does not allow it.
pub async fn lock_for_removal(
    conn: &mut PgConnection,
    m: &Membership,
    printer: Uuid,
) -> Result<Removal, ApiError> {
    let fresh = crate::access::relock(&mut *conn, m).await?;
    let claimed_by: Option<Option<Uuid>> = sqlx::query_scalar(concat!(
        "SELECT claimed_by FROM printers WHERE id = $1 AND organization_id = $2 AND ",
        paired!(),
        " FOR UPDATE"
    ))
    .bind(printer)
    .bind(m.org)
    .fetch_optional(&mut *conn)
    .await?;
    let claimed_by = claimed_by.ok_or_else(ApiError::not_found)?;
    fresh.require_admin_or_maker(
        claimed_by,
        "Only admins and the person who added the printer can remove it or pair it again.",
    )?;
    Ok(Removal { printer, by: fresh })
}

/// Marks the printer unpaired (in the caller's transaction): its certificates stop being
/// valid at once (the printer endpoint checks that the printer is paired, and a trigger
/// tells it to drop live connections). `false` if it was not paired.
pub async fn remove(
    conn: &mut PgConnection,
    removal: &Removal,
    now: OffsetDateTime,
) -> sqlx::Result<bool> {
    let printer = removal.printer;
    Ok(sqlx::query(concat!(
        "UPDATE printers SET unpaired_at = $2 WHERE id = $1 AND ",
        paired!()
    ))
    .bind(printer)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// A printer of the organization was paired again (same serial): it keeps its id,
/// shares and settings, under the name just given. For the pairing service.
pub async fn repaired(
    conn: &mut PgConnection,
    removal: &Removal,
    name: &str,
    model: &str,
) -> sqlx::Result<()> {
    let printer = removal.printer;
    sqlx::query("UPDATE printers SET name = $2, model = $3 WHERE id = $1")
        .bind(printer)
        .bind(name)
        .bind(model)
        .execute(conn)
        .await?;
    Ok(())
}

/// `DELETE …/{org}/printers/{printer}`: unpairs the printer (admins, or the person who
/// claimed it while an admin or member). Its certificates stop being valid at once — the printer endpoint checks
/// that the printer is still paired, and a trigger tells it to drop live connections.
pub async fn unpair(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, printer)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    visible(&state.ctx.db, &m, printer).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    // The person who added it may remove it while they may still change printers (a
    // guest no longer may); checked again under the locks.
    let removal = lock_for_removal(&mut tx, &m, printer).await?;
    if !remove(&mut tx, &removal, now).await? {
        return Err(ApiError::not_found());
    }
    // Its unfinished jobs fail now: nothing more is sent for it.
    let failed = state
        .jobs
        .printer_left(&mut tx, printer, "the printer was removed", now)
        .await?;
    AuditEvent::new("printer.unpair", removal.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("printer", printer)
        .detail("jobs_failed", failed)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paginated<PrinterView>>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let page = Page::from_query(&q)?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<PrinterView> = sqlx::query_as(visible_printers!(
        "AND ($4::timestamptz IS NULL OR (p.created_at, p.id) < ($4, $5))
         ORDER BY p.created_at DESC, p.id DESC LIMIT $6"
    ))
    .bind(org)
    .bind(m.role.as_str())
    .bind(m.user_id())
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    Ok(Json(page.finish(rows, |p| (p.created_at, p.id))))
}

pub async fn get(
    State(state): State<OrgState>,
    auth: Auth,
    Path((org, printer)): Path<(Uuid, Uuid)>,
) -> Result<Json<PrinterView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    Ok(Json(visible(&state.ctx.db, &m, printer).await?))
}

pub async fn share(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, printer)): Path<(Uuid, Uuid)>,
    Json(req): Json<Grantee>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    visible(&state.ctx.db, &m, printer).await?;
    let kind = check_grantee(&state, org, &req.grantee_type, req.grantee_id).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let added = sqlx::query(
        "INSERT INTO printer_shares (printer_id, grantee_type, grantee_id, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(printer)
    .bind(kind)
    .bind(req.grantee_id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if added == 1 {
        AuditEvent::new("printer.share", writer.audit_actor(), Outcome::Success)
            .organization(org)
            .source(client.addr)
            .target("printer", printer)
            .detail("grantee", format!("{kind}:{}", req.grantee_id))
            .write(&mut tx, now)
            .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unshare(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, printer, kind, grantee)): Path<(Uuid, Uuid, String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    visible(&state.ctx.db, &m, printer).await?;
    remove_share(
        &state,
        &writer.into(),
        client.addr,
        Shared::Printer,
        printer,
        &kind,
        grantee,
    )
    .await
}

/// The security settings of a printer; version 0 means never set (firewall off, no PIN).
#[derive(Serialize, sqlx::FromRow)]
pub struct SecurityView {
    firewall_enabled: bool,
    pin_set: bool,
    version: i64,
    confirmed_version: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    updated_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    confirmed_at: Option<OffsetDateTime>,
    /// What the printer confirmed without being able to apply it (`firewall`, `pin`).
    not_applied: Vec<String>,
}

async fn security_view(db: &PgPool, printer: Uuid) -> sqlx::Result<SecurityView> {
    let row: Option<SecurityView> = sqlx::query_as(
        "SELECT firewall_enabled, pin_hash IS NOT NULL AS pin_set, version, confirmed_version,
                updated_at, confirmed_at, not_applied
         FROM printer_security WHERE printer_id = $1",
    )
    .bind(printer)
    .fetch_optional(db)
    .await?;
    Ok(row.unwrap_or(SecurityView {
        firewall_enabled: false,
        pin_set: false,
        version: 0,
        confirmed_version: None,
        updated_at: None,
        confirmed_at: None,
        not_applied: Vec::new(),
    }))
}

pub async fn get_security(
    State(state): State<OrgState>,
    auth: Auth,
    Path((org, printer)): Path<(Uuid, Uuid)>,
) -> Result<Json<SecurityView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    visible(&state.ctx.db, &m, printer).await?;
    Ok(Json(security_view(&state.ctx.db, printer).await?))
}

/// `{firewall_enabled: bool, pin: "123456" | null}`: both required (`pin: null` clears
/// the PIN, so leaving it out must not).
pub async fn put_security(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, printer)): Path<(Uuid, Uuid)>,
    printworks_common::http::Json(body): printworks_common::http::Json<Value>,
) -> Result<Json<SecurityView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    let admin = m.require_admin()?;
    visible(&state.ctx.db, &m, printer).await?;
    let firewall = body
        .get("firewall_enabled")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::invalid("firewall_enabled (true or false) is required."))?;
    let pin = match body.get("pin") {
        Some(Value::Null) => None,
        Some(Value::String(pin)) if pin.len() == 6 && pin.bytes().all(|b| b.is_ascii_digit()) => {
            Some(pin.clone())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "pin must be exactly six digits, or null to clear it.",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "pin is required: six digits, or null to clear it.",
            ));
        }
    };
    let pin_hash = match pin {
        Some(pin) => Some(state.pins.hash(SecretString::from(pin)).await?),
        None => None,
    };
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO printer_security (printer_id, firewall_enabled, pin_hash, version, updated_by, updated_at)
         VALUES ($1, $2, $3, 1, $4, $5)
         ON CONFLICT (printer_id) DO UPDATE SET firewall_enabled = $2, pin_hash = $3,
             version = printer_security.version + 1, updated_by = $4, updated_at = $5
         RETURNING version",
    )
    .bind(printer)
    .bind(firewall)
    .bind(&pin_hash)
    .bind(admin.user_id())
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    AuditEvent::new("printer.security", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("printer", printer)
        .detail("firewall_enabled", firewall)
        .detail("pin_set", pin_hash.is_some())
        .detail("version", version)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(Json(security_view(&state.ctx.db, printer).await?))
}
