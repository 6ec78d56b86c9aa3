//! `POST /pairing/v1/claims {organization_id, code, name, serial?}`: an admin or member
//! of the organization (scope `printer.write`) enters the code a printer shows. The code
//! is single-use and dies 600 s after it was made, by the injected clock. Two people
//! entering the same code at once: exactly one wins (the request's row lock).
//!
//! Guessing is bounded (docs/security.md has the arithmetic):
//! - every attempt is counted before the code is checked, against the person, the
//!   organization and the source address, each slowed by growing waits after a few
//!   misses (a success takes back only its own count, so pairing a printer of one's own
//!   cannot reset them);
//! - a claim that gives only the code spends one service-wide budget of wrong codes
//!   (the same for every identity an attacker can make up); once it is spent, a claim
//!   must also give the printer's serial, and wrong codes are then counted against that
//!   serial — against the printer being guessed at, whoever guesses;
//! - a wrong, expired or used code gets one answer, and every miss is audited.
//!
//! A printer of the organization with the same serial (or the one the request proved to
//! be, with the old shared secret) is *re-paired*, which only someone who may remove it
//! may do (admins, and whoever added it while not a guest), checked under the locks.
//! With the proof it keeps its id, shares, settings and queued jobs; without, the old
//! printer is removed (its unfinished jobs fail, never to be sent) and a new one with a
//! new id takes its place: a device that cannot prove it is that printer gets nothing of
//! it.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::Auth;
use printworks_common::crypto::random_token;
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json};
use printworks_common::names::checked_name;
use printworks_common::throttle::Gate;
use printworks_org::access::{Writer, membership};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::code::PairingCode;
use crate::requests::{Credentials, sealing_context};
use crate::{PAIRING_TTL, PairingState, identity};

#[derive(Deserialize)]
pub struct Claim {
    organization_id: Uuid,
    code: String,
    name: String,
    /// The serial the printer shows beside the code: needed once the service-wide
    /// budget of wrong codes is spent, accepted always.
    serial: Option<String>,
}

#[derive(Serialize)]
pub struct Claimed {
    printer_id: Uuid,
    organization_id: Uuid,
    name: String,
    /// Whether a printer proved it was one of the organization's and was paired again
    /// under its own id (its shares, settings and queued jobs kept).
    repaired: bool,
    /// A printer of the same serial that could not prove it was this one, removed and
    /// replaced by this new printer.
    replaced_printer_id: Option<Uuid>,
}

fn no_such_code() -> ApiError {
    Problem::new(
        StatusCode::NOT_FOUND,
        "pairing-code-not-found",
        "No printer is waiting with this code",
    )
    .detail("Check the code on the printer's screen; codes last ten minutes and work once.")
    .into()
}

fn serial_required() -> ApiError {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "pairing-serial-required",
        "Enter the printer's serial number too",
    )
    .detail(
        "Many wrong pairing codes were entered lately; for a while, a claim must also give \
         the serial number the printer shows beside its code.",
    )
    .into()
}

#[derive(sqlx::FromRow)]
struct Waiting {
    id: Uuid,
    serial: String,
    model: String,
    firmware_version: String,
    csr_der: Vec<u8>,
    proven_printer_id: Option<Uuid>,
}

/// The subjects a pairing guess is counted against.
fn subjects(user: Option<Uuid>, org: Uuid, client: &ClientInfo) -> Vec<String> {
    let mut s = vec![format!("pairing:org:{org}")];
    if let Some(user) = user {
        s.push(format!("pairing:user:{user}"));
    }
    if let Some(key) = client.rate_key() {
        s.push(format!("pairing:addr:{key}"));
    }
    s
}

/// What a guess that names a serial is counted against: that printer, whoever guesses.
fn serial_subject(serial: &str) -> String {
    format!("pairing:serial:{}", serial.to_lowercase())
}

/// The service-wide budget of wrong codes entered without a serial: a token bucket of
/// half the budget, refilled at half the budget per [`PAIRING_TTL`], so no ten minutes
/// — the life of a code — see more than the whole budget spent. Takes one token;
/// `false` when none is left.
async fn take_guess_token(
    db: &sqlx::PgPool,
    budget: u32,
    now: time::OffsetDateTime,
) -> sqlx::Result<bool> {
    let capacity = f64::from(budget) / 2.0;
    let per_second = capacity / PAIRING_TTL.as_seconds_f64();
    sqlx::query(
        "INSERT INTO pairing_guess_budget (id, tokens, updated_at) VALUES (1, $1, $2)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(capacity)
    .bind(now)
    .execute(db)
    .await?;
    let taken: Option<f64> = sqlx::query_scalar(
        "UPDATE pairing_guess_budget
            SET tokens = LEAST($1, tokens + $2 * GREATEST(0, extract(epoch FROM $3 - updated_at)::float8)) - 1,
                updated_at = GREATEST(updated_at, $3)
          WHERE id = 1
            AND LEAST($1, tokens + $2 * GREATEST(0, extract(epoch FROM $3 - updated_at)::float8)) >= 1
          RETURNING tokens",
    )
    .bind(capacity)
    .bind(per_second)
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(taken.is_some())
}

/// A right code gives its token back.
async fn return_guess_token(db: impl sqlx::PgExecutor<'_>, budget: u32) -> sqlx::Result<()> {
    sqlx::query("UPDATE pairing_guess_budget SET tokens = LEAST($1, tokens + 1) WHERE id = 1")
        .bind(f64::from(budget) / 2.0)
        .execute(db)
        .await?;
    Ok(())
}

async fn audit_failure(
    ctx: &printworks_common::AppContext,
    writer: &Writer<'_>,
    org: Uuid,
    client: &ClientInfo,
    reason: &str,
) -> Result<(), ApiError> {
    let mut conn = ctx.db.acquire().await?;
    AuditEvent::new("printer.claim", writer.audit_actor(), Outcome::Failure)
        .organization(org)
        .source(client.addr)
        .detail("reason", reason)
        .write(&mut conn, ctx.now())
        .await?;
    Ok(())
}

pub async fn claim(
    State(state): State<PairingState>,
    auth: Auth,
    client: ClientInfo,
    Json(req): Json<Claim>,
) -> Result<(StatusCode, Json<Claimed>), ApiError> {
    let ctx = &state.ctx;
    let org = req.organization_id;
    let m = membership(ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    printworks_org::access::require_verified(ctx, &m).await?;
    let name = checked_name(&req.name, "name")?;
    let code = PairingCode::parse(&req.code).map_err(ApiError::invalid)?;
    let serial = match req.serial.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.len() <= 64 && s.bytes().all(|b| (0x20..0x7f).contains(&b)) => Some(s),
        Some(_) => {
            return Err(ApiError::invalid(
                "serial must be 1 to 64 printable ASCII characters.",
            ));
        }
    };
    let now = ctx.now();

    // Counted before the code is looked at; any subject still waiting refuses.
    let mut subjects = subjects(writer.user_id(), org, &client);
    if let Some(serial) = serial {
        subjects.push(serial_subject(serial));
    }
    let mut wait = None;
    for s in &subjects {
        if let Gate::Wait(w) = state.guesses.attempt(&ctx.db, s, now).await? {
            wait = Some(wait.map_or(w, |x: std::time::Duration| x.max(w)));
        }
    }
    if let Some(wait) = wait {
        audit_failure(ctx, &writer, org, &client, "throttled").await?;
        return Err(ApiError::too_many_requests(wait));
    }
    let budget = ctx.settings.printers.pairing_guess_budget;
    if serial.is_none() && !take_guess_token(&ctx.db, budget, now).await? {
        audit_failure(ctx, &writer, org, &client, "guess_budget_spent").await?;
        return Err(serial_required());
    }

    let mut tx = ctx.db.begin().await?;
    let waiting: Option<Waiting> = sqlx::query_as(
        "SELECT id, serial, model, firmware_version, csr_der, proven_printer_id
         FROM pairing_requests
         WHERE code_hash = $1 AND state = 'pending' AND expires_at > $2
           AND ($3::text IS NULL OR lower(serial) = lower($3))
         FOR UPDATE",
    )
    .bind(code.digest(&ctx.secrets))
    .bind(now)
    .bind(serial)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(waiting) = waiting else {
        drop(tx);
        audit_failure(ctx, &writer, org, &client, "no_such_code").await?;
        return Err(no_such_code());
    };
    // A right code is no evidence about the next one: take back this attempt only (and
    // its token), once the claim goes through.
    for s in &subjects {
        state.guesses.refund(&mut *tx, s).await?;
    }
    if serial.is_none() {
        return_guess_token(&mut *tx, budget).await?;
    }

    let csr = crate::csr::check_der(&waiting.csr_der)
        .map_err(|e| anyhow::anyhow!("a stored CSR no longer checks: {e}"))?;
    // The organization's lock, then the caller's role read again under it: a member
    // demoted or removed a moment ago claims nothing.
    let fresh = printworks_org::access::relock(&mut tx, &m).await?;
    let writer = fresh.require_writer().map_err(|_| writer_lost())?;
    // Re-pairing: the printer the request proved to be, if it is this organization's;
    // else the organization's printer with this serial, if any.
    let existing = printworks_org::fleet::paired_for_repairing(
        &mut tx,
        org,
        waiting.proven_printer_id,
        &waiting.serial,
    )
    .await?;
    let proven = existing.is_some() && existing == waiting.proven_printer_id;
    let removal = match existing {
        Some(id) => match printworks_org::printers::lock_for_removal(&mut tx, &m, id).await {
            Ok(removal) => Some(removal),
            Err(e) => {
                drop(tx);
                audit_failure(ctx, &writer, org, &client, "not_allowed_to_repair").await?;
                return Err(e);
            }
        },
        None => None,
    };
    let (printer_id, replaced) = match removal {
        Some(removal) if proven => {
            let id = removal.printer();
            identity::revoke_all(&mut tx, id, now, "re-paired").await?;
            printworks_org::printers::repaired(&mut tx, &removal, &name, &waiting.model).await?;
            (id, None)
        }
        other => {
            // Whatever had this serial could not prove it is this device: it goes, with
            // its credentials, and its unfinished jobs fail rather than reach a stranger.
            if let Some(removal) = &other {
                let old = removal.printer();
                printworks_org::printers::remove(&mut tx, removal, now).await?;
                let failed = state
                    .jobs
                    .printer_left(
                        &mut tx,
                        old,
                        "the printer was replaced by a re-pairing",
                        now,
                    )
                    .await?;
                AuditEvent::new("printer.unpair", removal.audit_actor(), Outcome::Success)
                    .organization(org)
                    .source(client.addr)
                    .target("printer", old)
                    .detail("reason", "replaced_by_pairing")
                    .detail("jobs_failed", failed)
                    .write(&mut tx, now)
                    .await?;
            }
            let id = printworks_org::printers::register(
                &mut tx,
                &writer,
                &name,
                Some(&waiting.model),
                Some(&waiting.serial),
                now,
            )
            .await?;
            (id, other.map(|r| r.printer()))
        }
    };
    let issued = state.ca.issue_printer(
        &csr.public_key,
        printer_id,
        now,
        ctx.settings.printers.printer_cert_ttl,
    )?;
    identity::record_certificate(&mut tx, printer_id, &issued, now, "pairing").await?;
    let shared_secret = random_token();
    identity::store_secret(&mut tx, &ctx.secrets, printer_id, &shared_secret, now).await?;
    let signer = &ctx.job_signer;
    let organization_name = printworks_org::organizations::name_of(&mut *tx, org)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let credentials = Credentials {
        printer_id,
        organization_id: org,
        organization_name,
        shared_secret,
        certificate_pem: issued.pem.clone(),
        ca_chain_pem: state.ca.cert_pem().to_owned(),
        printer_url: ctx.settings.printer_url(),
        job_signing_key: signer.public_key(),
        job_signing_key_id: signer.key_id.clone(),
    };
    let sealed = ctx.secrets.seal(
        &sealing_context(waiting.id),
        &serde_json::to_vec(&credentials).map_err(anyhow::Error::from)?,
    );
    sqlx::query(
        "UPDATE pairing_requests SET state = 'claimed', claimed_at = $2, claimed_by = $3,
                organization_id = $4, printer_id = $5, credentials_sealed = $6
         WHERE id = $1",
    )
    .bind(waiting.id)
    .bind(now)
    .bind(writer.user_id())
    .bind(org)
    .bind(printer_id)
    .bind(&sealed)
    .execute(&mut *tx)
    .await?;
    let mut event = AuditEvent::new("printer.claim", writer.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("printer", printer_id)
        .detail("serial", waiting.serial.as_str())
        .detail("model", waiting.model.as_str())
        .detail("firmware_version", waiting.firmware_version.as_str())
        .detail("certificate_serial", issued.serial.as_str())
        .detail("repaired", proven);
    if let Some(old) = replaced {
        event = event.detail("replaced_printer_id", old.to_string());
    }
    event.write(&mut tx, now).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Claimed {
            printer_id,
            organization_id: org,
            name,
            repaired: proven,
            replaced_printer_id: replaced,
        }),
    ))
}

fn writer_lost() -> ApiError {
    printworks_common::error::role_forbids(
        "Guests cannot change the organization, its teams or its printers.",
    )
}
