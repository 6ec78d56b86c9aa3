//! New certificates for paired printers, from a fresh CSR:
//!
//! - while the current certificate is valid, over the printer endpoint's mutual-TLS
//!   session ([`renew_over_tls`], which the relay serves as `POST /printer/v1/certificate`),
//!   at most once a minute; the certificate that asked retires ten minutes later;
//! - after it expired, with the shared secret the printer got when it paired: it asks
//!   for a challenge (`POST /pairing/v1/printers/{printer}/challenge`), then sends
//!   `POST /pairing/v1/printers/{printer}/certificate {challenge, proof, csr_pem}` where
//!   `proof` is the HMAC-SHA256, under the secret, of [`renewal_message`]: the printer,
//!   the challenge and the digest of the CSR, so that the secret never crosses the wire
//!   and a proof cannot be replayed or moved to another CSR. Challenges are single-use
//!   and live five minutes; wrong proofs are slowed per printer and audited. The new
//!   certificate supersedes every earlier one (revoked at once).

use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::crypto::{
    base64url_decode, constant_time_eq, hmac_sha256, random_token, token_digest,
};
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Path};
pub use printworks_common::printer::{renewal_message, renewal_proof};
use printworks_common::throttle::Gate;
use printworks_common::{ApiError, AppContext};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ca::PrinterCa;
use crate::identity::{self, PrinterIdentity};
use crate::{PairingState, csr};

/// How long a renewal challenge can be answered.
pub const CHALLENGE_TTL: time::Duration = time::Duration::minutes(5);
/// A printer renews over mutual TLS at most this often.
pub const RENEWAL_SPACING: time::Duration = time::Duration::minutes(1);
/// How long a certificate stays valid after it renewed itself over mutual TLS.
pub const RETIREMENT_GRACE: time::Duration = time::Duration::minutes(10);
/// Challenges a printer may have open at once (older ones are dropped).
const OPEN_CHALLENGES: i64 = 5;

#[derive(Serialize)]
pub struct Challenge {
    challenge: String,
    expires_in: i64,
}

pub async fn challenge(
    State(state): State<PairingState>,
    Path(printer): Path<Uuid>,
) -> Result<(StatusCode, Json<Challenge>), ApiError> {
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let paired: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM printer_secrets s JOIN printers p ON p.id = s.printer_id
                        WHERE s.printer_id = $1 AND p.unpaired_at IS NULL)",
    )
    .bind(printer)
    .fetch_one(&mut *tx)
    .await?;
    if !paired {
        return Err(ApiError::not_found());
    }
    let challenge = random_token();
    sqlx::query(
        "INSERT INTO printer_challenges (challenge_hash, printer_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_digest(&challenge))
    .bind(printer)
    .bind(now)
    .bind(now + CHALLENGE_TTL)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM printer_challenges WHERE printer_id = $1 AND challenge_hash NOT IN (
           SELECT challenge_hash FROM printer_challenges WHERE printer_id = $1
           ORDER BY created_at DESC, challenge_hash LIMIT $2)",
    )
    .bind(printer)
    .bind(OPEN_CHALLENGES)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Challenge {
            challenge,
            expires_in: CHALLENGE_TTL.whole_seconds(),
        }),
    ))
}

#[derive(Deserialize)]
pub struct RenewBySecret {
    challenge: String,
    proof: String,
    csr_pem: String,
}

#[derive(Serialize)]
pub struct Renewed {
    pub certificate_pem: String,
    pub ca_chain_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
}

fn refused() -> ApiError {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "printer-proof-invalid",
        "The challenge is unknown or expired, or the proof is wrong",
    )
    .detail("Ask for a new challenge and sign it with the printer's shared secret.")
    .into()
}

async fn audit_failure(
    ctx: &AppContext,
    printer: Uuid,
    org: Option<Uuid>,
    addr: Option<IpAddr>,
    reason: &str,
) -> sqlx::Result<()> {
    let mut event = AuditEvent::new(
        "printer.certificate_renew",
        Actor::Printer(printer),
        Outcome::Failure,
    )
    .source(addr)
    .target("printer", printer)
    .detail("reason", reason);
    if let Some(org) = org {
        event = event.organization(org);
    }
    let mut conn = ctx.db.acquire().await?;
    event.write(&mut conn, ctx.now()).await?;
    Ok(())
}

pub async fn renew_with_secret(
    State(state): State<PairingState>,
    client: ClientInfo,
    Path(printer): Path<Uuid>,
    Json(req): Json<RenewBySecret>,
) -> Result<(StatusCode, Json<Renewed>), ApiError> {
    let ctx = &state.ctx;
    let checked = csr::check(&req.csr_pem).map_err(|e| ApiError::invalid(e.to_string()))?;
    if req.challenge.len() > 100 || req.proof.len() > 100 {
        return Err(refused());
    }
    let now = ctx.now();
    let subject = format!("pairing:printer:{printer}");
    if let Gate::Wait(wait) = state.guesses.attempt(&ctx.db, &subject, now).await? {
        return Err(ApiError::too_many_requests(wait));
    }
    let mut tx = ctx.db.begin().await?;
    // Single use: taken whether or not the proof is right.
    let taken = sqlx::query(
        "DELETE FROM printer_challenges WHERE challenge_hash = $1 AND printer_id = $2 AND expires_at > $3",
    )
    .bind(token_digest(&req.challenge))
    .bind(printer)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let secret = identity::load_secret(&mut tx, &ctx.secrets, printer).await?;
    let (org, secret) = match secret {
        Some(s) if taken == 1 => s,
        other => {
            tx.commit().await?;
            audit_failure(
                ctx,
                printer,
                other.map(|(o, _)| o),
                client.addr,
                "no_such_challenge",
            )
            .await?;
            return Err(refused());
        }
    };
    let expected = hmac_sha256(
        &secret,
        &renewal_message(printer, &req.challenge, &checked.der),
    );
    let given = base64url_decode(&req.proof).unwrap_or_default();
    if !constant_time_eq(&given, &expected) {
        tx.commit().await?;
        audit_failure(ctx, printer, Some(org), client.addr, "wrong_proof").await?;
        return Err(refused());
    }
    // Whatever certificates the printer had are superseded: if its key was stolen, the
    // thief's certificate dies now (the printer endpoint drops its connections).
    identity::revoke_all(&mut tx, printer, now, "superseded").await?;
    let issued = state.ca.issue_printer(
        &checked.public_key,
        printer,
        now,
        ctx.settings.printers.printer_cert_ttl,
    )?;
    identity::record_certificate(&mut tx, printer, &issued, now, "secret").await?;
    AuditEvent::new(
        "printer.certificate_renew",
        Actor::Printer(printer),
        Outcome::Success,
    )
    .organization(org)
    .source(client.addr)
    .target("printer", printer)
    .detail("by", "shared_secret")
    .detail("certificate_serial", issued.serial.as_str())
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    state.guesses.refund(&ctx.db, &subject).await?;
    Ok((
        StatusCode::CREATED,
        Json(Renewed {
            certificate_pem: issued.pem,
            ca_chain_pem: state.ca.cert_pem().to_owned(),
            not_after: issued.not_after,
        }),
    ))
}

/// A new certificate for the printer on a valid mutual-TLS session, from a fresh CSR,
/// at most once a minute. The certificate that asked stays valid for ten more minutes
/// (to store the new one and reconnect with it), then retires.
pub async fn renew_over_tls(
    ctx: &AppContext,
    ca: &PrinterCa,
    who: &PrinterIdentity,
    csr_pem: &str,
    addr: Option<IpAddr>,
) -> Result<Renewed, ApiError> {
    let checked = csr::check(csr_pem).map_err(|e| ApiError::invalid(e.to_string()))?;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    // One renewal a minute is plenty; more is a loop or an abuse of a stolen key.
    let recent: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM printer_certificates
                        WHERE printer_id = $1 AND issued_by <> 'pairing' AND issued_at > $2)",
    )
    .bind(who.printer_id)
    .bind(now - RENEWAL_SPACING)
    .fetch_one(&mut *tx)
    .await?;
    if recent {
        return Err(ApiError::too_many_requests(std::time::Duration::from_secs(
            60,
        )));
    }
    // Signed only once the request is let through.
    let issued = ca.issue_printer(
        &checked.public_key,
        who.printer_id,
        now,
        ctx.settings.printers.printer_cert_ttl,
    )?;
    // The certificate that asked retires soon after its successor exists: long enough
    // to store the new one and reconnect, not long enough to live on beside it.
    sqlx::query(
        "UPDATE printer_certificates SET not_after = LEAST(not_after, $2) WHERE serial = $1",
    )
    .bind(&who.certificate_serial)
    .bind(now + RETIREMENT_GRACE)
    .execute(&mut *tx)
    .await?;
    identity::record_certificate(&mut tx, who.printer_id, &issued, now, "renewal").await?;
    AuditEvent::new(
        "printer.certificate_renew",
        Actor::Printer(who.printer_id),
        Outcome::Success,
    )
    .organization(who.organization_id)
    .source(addr)
    .target("printer", who.printer_id)
    .detail("by", "mutual_tls")
    .detail("certificate_serial", issued.serial.as_str())
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(Renewed {
        certificate_pem: issued.pem,
        ca_chain_pem: ca.cert_pem().to_owned(),
        not_after: issued.not_after,
    })
}
