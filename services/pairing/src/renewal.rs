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
    SecretBox, base64url, base64url_decode, constant_time_eq, hmac_sha256, random_bytes,
    token_digest,
};
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Path};
pub use printworks_common::printer::renewal_message;
use printworks_common::throttle::Gate;
use printworks_common::{ApiError, AppContext};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
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

/// Length of a challenge's random part and of its tag, in bytes.
const NONCE: usize = 16;
const TAG: usize = 16;

fn challenge_tag(secrets: &SecretBox, printer: Uuid, expires: i64, nonce: &[u8]) -> [u8; 32] {
    let mut data = Vec::with_capacity(16 + 8 + NONCE);
    data.extend_from_slice(printer.as_bytes());
    data.extend_from_slice(&expires.to_be_bytes());
    data.extend_from_slice(nonce);
    secrets.mac("printer-challenge", &data)
}

/// A challenge for `printer`: its expiry, a random part and a MAC over both and the
/// printer (base64url). Nothing is stored until it is answered, so nobody can use up
/// or push out the challenges of a printer by asking for many.
pub fn issue_challenge(secrets: &SecretBox, printer: Uuid, now: time::OffsetDateTime) -> String {
    let expires = (now + CHALLENGE_TTL).unix_timestamp();
    let nonce = random_bytes::<NONCE>();
    let mut raw = Vec::with_capacity(8 + NONCE + TAG);
    raw.extend_from_slice(&expires.to_be_bytes());
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&challenge_tag(secrets, printer, expires, &nonce)[..TAG]);
    base64url(&raw)
}

/// When `challenge` expires, if it is one this service issued for `printer` and it has
/// not expired at `now` (whether it was answered already is for [`use_challenge`]).
pub fn challenge_expiry(
    secrets: &SecretBox,
    printer: Uuid,
    challenge: &str,
    now: time::OffsetDateTime,
) -> Option<time::OffsetDateTime> {
    if challenge.len() > 100 {
        return None;
    }
    let raw = base64url_decode(challenge)?;
    if raw.len() != 8 + NONCE + TAG {
        return None;
    }
    let (expires, rest) = raw.split_at(8);
    let (nonce, tag) = rest.split_at(NONCE);
    let expires = i64::from_be_bytes(expires.try_into().ok()?);
    if !constant_time_eq(tag, &challenge_tag(secrets, printer, expires, nonce)[..TAG]) {
        return None;
    }
    let expires = time::OffsetDateTime::from_unix_timestamp(expires).ok()?;
    (expires > now && expires <= now + CHALLENGE_TTL).then_some(expires)
}

/// Marks a valid challenge answered (in the caller's transaction): `false` if it was
/// answered before. Answered challenges are kept until they expire.
pub async fn use_challenge(
    conn: &mut sqlx::PgConnection,
    printer: Uuid,
    challenge: &str,
    expires: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO printer_challenges (challenge_hash, printer_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(token_digest(challenge))
    .bind(printer)
    .bind(now)
    .bind(expires)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// What wrong proofs of a printer's secret are counted against: the printer *and* the
/// network the proof came from, so a stranger who knows a printer's id slows only
/// himself, never the printer (the secret has 256 bits: counting is against noise, not
/// against a search that could succeed).
pub fn proof_subject(printer: Uuid, client: &ClientInfo) -> String {
    match client.rate_key() {
        Some(key) => format!("pairing:printer:{printer}:{key}"),
        None => format!("pairing:printer:{printer}"),
    }
}

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
    let has_secret: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM printer_secrets WHERE printer_id = $1)")
            .bind(printer)
            .fetch_one(&ctx.db)
            .await?;
    if !has_secret
        || printworks_org::fleet::paired(&ctx.db, printer)
            .await?
            .is_none()
    {
        return Err(ApiError::not_found());
    }
    Ok((
        StatusCode::CREATED,
        Json(Challenge {
            challenge: issue_challenge(&ctx.secrets, printer, ctx.now()),
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
    action: &'static str,
    printer: Uuid,
    org: Option<Uuid>,
    addr: Option<IpAddr>,
    reason: &str,
) -> sqlx::Result<()> {
    let mut event = AuditEvent::new(action, Actor::Printer(printer), Outcome::Failure)
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
    if req.proof.len() > 100 {
        return Err(refused());
    }
    let proven = check_secret_proof(
        &state,
        printer,
        &req.challenge,
        &req.proof,
        &renewal_message(printer, &req.challenge, &checked.der),
        &client,
        "printer.certificate_renew",
    )
    .await?;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    // One renewal at a time per printer (its row lock orders them), and only while it
    // is still paired.
    let refusal = if !printworks_org::printers::lock_paired(&mut tx, printer).await? {
        Some("not_paired")
    } else if !proven.still_current(&mut tx, &ctx.secrets, printer).await? {
        Some("secret_changed")
    } else {
        None
    };
    if let Some(reason) = refusal {
        drop(tx);
        let action = "printer.certificate_renew";
        audit_failure(ctx, action, printer, Some(proven.org), client.addr, reason).await?;
        return Err(refused());
    }
    let org = proven.org;
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
    state
        .guesses
        .refund(&ctx.db, &proof_subject(printer, &client))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Renewed {
            certificate_pem: issued.pem,
            ca_chain_pem: state.ca.cert_pem().to_owned(),
            not_after: issued.not_after,
        }),
    ))
}

/// Checks a proof of `printer`'s shared secret over `message` (which names the
/// challenge): the challenge must be one this service issued for the printer, unexpired
/// and not answered before (it is used up here, right or wrong); only then is the
/// attempt counted ([`proof_subject`]) and the proof compared, in constant time. Every
/// refusal is audited as `action`. The caller that acts on the proof asks
/// [`Proven::still_current`] under the printer's lock.
pub async fn check_secret_proof(
    state: &PairingState,
    printer: Uuid,
    challenge: &str,
    proof: &str,
    message: &[u8],
    client: &ClientInfo,
    action: &'static str,
) -> Result<Proven, ApiError> {
    let ctx = &state.ctx;
    let now = ctx.now();
    let refuse = |org: Option<Uuid>, reason: &'static str| async move {
        audit_failure(ctx, action, printer, org, client.addr, reason).await?;
        Err::<Proven, ApiError>(refused())
    };
    let Some(expires) = challenge_expiry(&ctx.secrets, printer, challenge, now) else {
        return refuse(None, "no_such_challenge").await;
    };
    // The connection goes back before any refusal is audited (on a connection of its
    // own): holding one while waiting for another starves the pool under a flood.
    let mut conn = ctx.db.acquire().await?;
    let loaded = identity::load_secret(&mut conn, &ctx.secrets, printer).await?;
    let Some((org, secret)) = loaded else {
        drop(conn);
        return refuse(None, "not_paired").await;
    };
    let fresh = use_challenge(&mut conn, printer, challenge, expires, now).await?;
    drop(conn);
    if !fresh {
        return refuse(Some(org), "challenge_used").await;
    }
    let subject = proof_subject(printer, client);
    if let Gate::Wait(wait) = state.guesses.attempt(&ctx.db, &subject, now).await? {
        audit_failure(ctx, action, printer, Some(org), client.addr, "throttled").await?;
        return Err(ApiError::too_many_requests(wait));
    }
    let expected = hmac_sha256(&secret, message);
    let given = base64url_decode(proof).unwrap_or_default();
    if !constant_time_eq(&given, &expected) {
        return refuse(Some(org), "wrong_proof").await;
    }
    Ok(Proven { org, secret })
}

/// A proof [`check_secret_proof`] accepted: the printer's organization, and the secret
/// it was checked against.
pub struct Proven {
    pub org: Uuid,
    secret: Vec<u8>,
}

impl Proven {
    /// Whether the secret the proof was checked against is still the printer's — asked
    /// under the printer's lock, so a re-pairing between the check and the use of the
    /// proof (which gives the printer a new secret) makes the proof worthless.
    pub async fn still_current(
        &self,
        conn: &mut PgConnection,
        secrets: &SecretBox,
        printer: Uuid,
    ) -> anyhow::Result<bool> {
        Ok(match identity::load_secret(conn, secrets, printer).await? {
            Some((org, secret)) => org == self.org && constant_time_eq(&secret, &self.secret),
            None => false,
        })
    }
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
    // Under the printer's row lock: concurrent renewals are taken one after another, so
    // the spacing below lets exactly one of them through.
    if !printworks_org::printers::lock_paired(&mut tx, who.printer_id).await? {
        return Err(ApiError::not_found());
    }
    // The asking certificate may have been revoked while this request waited.
    let asking_live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM printer_certificates
                        WHERE serial = $1 AND revoked_at IS NULL AND not_after > $2)",
    )
    .bind(&who.certificate_serial)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    if !asking_live {
        return Err(ApiError::not_found());
    }
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
    // The printer is left with one certificate: every other one is revoked now, and the
    // one that asked retires soon — long enough to store the new one and reconnect, not
    // long enough to live on beside it.
    sqlx::query(
        "UPDATE printer_certificates SET revoked_at = $3, revoked_reason = 'superseded'
         WHERE printer_id = $1 AND serial <> $2 AND revoked_at IS NULL",
    )
    .bind(who.printer_id)
    .bind(&who.certificate_serial)
    .bind(now)
    .execute(&mut *tx)
    .await?;
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
