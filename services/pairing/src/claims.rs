//! `POST /pairing/v1/claims {organization_id, code, name}`: an admin or member of the
//! organization (scope `printer.write`) enters the code a printer shows. The code is
//! single-use and dies 600 s after it was made, by the injected clock. Two people
//! entering the same code at once: exactly one wins (the request's row lock).
//!
//! Guessing is bounded: every attempt is counted before the code is checked, against
//! the person, the organization and the source address, each slowed by growing waits
//! after a few misses (and a success takes back only its own count, so pairing a
//! printer of one's own cannot reset them). A wrong, expired or used code gets one
//! answer, and every miss is audited.
//!
//! A printer already in the organization with the same serial is re-paired: the same
//! printer keeps its id, shares and settings; its old certificates are revoked at once.

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::{Auth, scope};
use printworks_common::crypto::random_token;
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json};
use printworks_common::throttle::Gate;
use printworks_org::access::membership;
use printworks_org::organizations::checked_name;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::code::PairingCode;
use crate::requests::{Credentials, sealing_context};
use crate::{PairingState, identity};

#[derive(Deserialize)]
pub struct Claim {
    organization_id: Uuid,
    code: String,
    name: String,
}

#[derive(Serialize)]
pub struct Claimed {
    printer_id: Uuid,
    organization_id: Uuid,
    name: String,
    /// Whether a printer of the same serial was re-paired (same id, new credentials).
    repaired: bool,
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

#[derive(sqlx::FromRow)]
struct Waiting {
    id: Uuid,
    serial: String,
    model: String,
    firmware_version: String,
    csr_der: Vec<u8>,
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

pub async fn claim(
    State(state): State<PairingState>,
    auth: Auth<scope::PrinterWrite>,
    client: ClientInfo,
    Json(req): Json<Claim>,
) -> Result<(StatusCode, Json<Claimed>), ApiError> {
    let ctx = &state.ctx;
    let org = req.organization_id;
    let m = membership(ctx, org, &auth).await?;
    let writer = m.require_writer()?;
    let name = checked_name(&req.name, "name")?;
    let code = PairingCode::parse(&req.code).map_err(ApiError::invalid)?;
    let now = ctx.now();

    // Counted before the code is looked at; any subject still waiting refuses.
    let subjects = subjects(writer.user_id(), org, &client);
    let mut wait = None;
    for s in &subjects {
        if let Gate::Wait(w) = state.guesses.attempt(&ctx.db, s, now).await? {
            wait = Some(wait.map_or(w, |x: std::time::Duration| x.max(w)));
        }
    }
    if let Some(wait) = wait {
        let mut conn = ctx.db.acquire().await?;
        AuditEvent::new("printer.claim", writer.audit_actor(), Outcome::Failure)
            .organization(org)
            .source(client.addr)
            .detail("reason", "throttled")
            .write(&mut conn, now)
            .await?;
        return Err(ApiError::too_many_requests(wait));
    }

    let mut tx = ctx.db.begin().await?;
    let waiting: Option<Waiting> = sqlx::query_as(
        "SELECT id, serial, model, firmware_version, csr_der FROM pairing_requests
         WHERE code_hash = $1 AND state = 'pending' AND expires_at > $2
         FOR UPDATE",
    )
    .bind(code.digest(&ctx.secrets))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(waiting) = waiting else {
        drop(tx);
        let mut conn = ctx.db.acquire().await?;
        AuditEvent::new("printer.claim", writer.audit_actor(), Outcome::Failure)
            .organization(org)
            .source(client.addr)
            .detail("reason", "no_such_code")
            .write(&mut conn, now)
            .await?;
        return Err(no_such_code());
    };

    let csr = crate::csr::check_der(&waiting.csr_der)
        .map_err(|e| anyhow::anyhow!("a stored CSR no longer checks: {e}"))?;
    // Re-pairing: the organization's printer with this serial, if any.
    let existing: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM printers WHERE organization_id = $1 AND serial = $2 AND unpaired_at IS NULL
         FOR UPDATE",
    )
    .bind(org)
    .bind(&waiting.serial)
    .fetch_optional(&mut *tx)
    .await?;
    let printer_id = match existing {
        Some(id) => {
            identity::revoke_all(&mut tx, id, now, "re-paired").await?;
            printworks_org::printers::repaired(&mut tx, id, &name, &waiting.model).await?;
            id
        }
        None => {
            printworks_org::printers::register(
                &mut tx,
                org,
                &name,
                Some(&waiting.model),
                Some(&waiting.serial),
                writer.user_id(),
                now,
            )
            .await?
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
    let organization_name: String =
        sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
            .bind(org)
            .fetch_one(&mut *tx)
            .await?;
    let credentials = Credentials {
        printer_id,
        organization_id: org,
        organization_name,
        shared_secret,
        certificate_pem: issued.pem.clone(),
        ca_chain_pem: state.ca.cert_pem().to_owned(),
        printer_url: ctx.settings.printer_url(),
        job_signing_key: printworks_common::printer::job_signing_public_key(&ctx.secrets),
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
    AuditEvent::new("printer.claim", writer.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .target("printer", printer_id)
        .detail("serial", waiting.serial.as_str())
        .detail("model", waiting.model.as_str())
        .detail("firmware_version", waiting.firmware_version.as_str())
        .detail("certificate_serial", issued.serial.as_str())
        .detail("repaired", existing.is_some())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    // A right code is no evidence about the next one: take back this attempt only.
    for s in &subjects {
        state.guesses.refund(&ctx.db, s).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(Claimed {
            printer_id,
            organization_id: org,
            name,
            repaired: existing.is_some(),
        }),
    ))
}
