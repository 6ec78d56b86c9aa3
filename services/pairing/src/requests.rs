//! The printer's side of pairing: `POST /pairing/v1/requests` (no token) with its CSR
//! answers a six-digit code to show and a poll token only it knows;
//! `POST /pairing/v1/requests/{id}/poll {poll_token}` answers 202 while nobody has
//! entered the code, 200 with the credentials once someone has (and again, to the same
//! poll token, for [`RECOLLECT_WINDOW`] after the first time, in case that answer was
//! lost), and 410 when the request expired or its credentials were erased.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::crypto::{random_token, token_digest};
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Path};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::code::PairingCode;
use crate::{PAIRING_TTL, POLL_INTERVAL_SECS, PairingState, csr};
use printworks_common::printer::repair_message;

/// After a printer first collects its credentials, it may collect them again for this
/// long (the answer was lost on the way, say); then they are erased.
pub const RECOLLECT_WINDOW: time::Duration = time::Duration::minutes(5);

/// Pairing requests one source address may have waiting at once.
pub const MAX_PENDING_PER_ADDRESS: i64 = 20;

#[derive(Deserialize)]
pub struct NewRequest {
    serial: String,
    model: String,
    firmware_version: String,
    csr_pem: String,
    /// A printer that was paired before and still holds its shared secret proves it
    /// here; only then is it paired again under the same identity.
    previous: Option<Previous>,
}

/// Proof of a previous identity: a challenge from
/// `POST /pairing/v1/printers/{printer_id}/challenge` and
/// [`printworks_common::printer::repair_proof`] over it and this request's CSR.
#[derive(Deserialize)]
pub struct Previous {
    printer_id: Uuid,
    challenge: String,
    proof: String,
}

#[derive(Serialize)]
pub struct Created {
    request_id: Uuid,
    /// Only this printer knows it: it collects the credentials with it.
    poll_token: String,
    /// Six digits to show on the printer's screen.
    code: String,
    expires_in: i64,
    interval: u64,
}

/// 1 to 64 printable ASCII characters (what a printer's firmware reports).
fn printable(value: &str, field: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to 64 printable ASCII characters."
        )));
    }
    Ok(v.to_owned())
}

fn try_later(detail: &str) -> ApiError {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "pairing-busy",
        "Too many printers are waiting to be paired",
    )
    .detail(detail)
    .header(header::RETRY_AFTER, HeaderValue::from_static("60"))
    .into()
}

pub async fn create(
    State(state): State<PairingState>,
    client: ClientInfo,
    Json(req): Json<NewRequest>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let serial = printable(&req.serial, "serial")?;
    let model = printable(&req.model, "model")?;
    let firmware = printable(&req.firmware_version, "firmware_version")?;
    let checked = csr::check(&req.csr_pem).map_err(|e| ApiError::invalid(e.to_string()))?;
    let ctx = &state.ctx;
    let proven = match &req.previous {
        Some(p) => {
            if p.proof.len() > 100 {
                return Err(ApiError::invalid("previous.proof is not a proof."));
            }
            crate::renewal::check_secret_proof(
                &state,
                p.printer_id,
                &p.challenge,
                &p.proof,
                &repair_message(p.printer_id, &p.challenge, &checked.der),
                &client,
                "printer.repair_proof",
            )
            .await?;
            Some(p.printer_id)
        }
        None => None,
    };
    let now = ctx.now();
    let source = client.addr.map(|a| a.to_string());
    let source_key = client.rate_key().map(|a| a.to_string());
    let source_net = client.network().map(|n| n.to_string());

    let mut tx = ctx.db.begin().await?;
    // Requests from one network are counted one after another, so its limit holds.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!(
            "pairing-net:{}",
            source_net.as_deref().unwrap_or("-")
        ))
        .execute(&mut *tx)
        .await?;
    // Requests nobody claimed in time give their codes back.
    sqlx::query(
        "UPDATE pairing_requests SET state = 'expired' WHERE state = 'pending' AND expires_at <= $1",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let (pending, from_here, from_network): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE source_key IS NOT DISTINCT FROM $1),
                count(*) FILTER (WHERE source_net IS NOT DISTINCT FROM $2)
         FROM pairing_requests WHERE state = 'pending'",
    )
    .bind(&source_key)
    .bind(&source_net)
    .fetch_one(&mut *tx)
    .await?;
    if from_here >= MAX_PENDING_PER_ADDRESS
        || from_network >= i64::from(ctx.settings.printers.pairing_max_pending_per_network)
    {
        return Err(ApiError::too_many_requests(std::time::Duration::from_secs(
            60,
        )));
    }
    if pending >= i64::from(ctx.settings.printers.pairing_max_pending) {
        tracing::warn!(pending, "pairing requests at their limit");
        return Err(try_later("Try again in a minute."));
    }

    let id = Uuid::new_v4();
    let poll_token = random_token();
    // A code is unique among the waiting requests: draw again on the rare collision.
    for _ in 0..20 {
        let code = PairingCode::generate();
        let inserted = sqlx::query(
            "INSERT INTO pairing_requests
               (id, code_hash, poll_token_hash, serial, model, firmware_version, csr_der,
                source_addr, source_key, created_at, expires_at, state, source_net,
                proven_printer_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, $13)
             ON CONFLICT (code_hash) WHERE state = 'pending' DO NOTHING",
        )
        .bind(id)
        .bind(code.digest(&ctx.secrets))
        .bind(token_digest(&poll_token))
        .bind(&serial)
        .bind(&model)
        .bind(&firmware)
        .bind(&checked.der)
        .bind(&source)
        .bind(&source_key)
        .bind(now)
        .bind(now + PAIRING_TTL)
        .bind(&source_net)
        .bind(proven)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            tracing::info!(request_id = %id, key = %checked.key_kind, "pairing requested");
            return Ok((
                StatusCode::CREATED,
                Json(Created {
                    request_id: id,
                    poll_token,
                    code: code.as_str().to_owned(),
                    expires_in: PAIRING_TTL.whole_seconds(),
                    interval: POLL_INTERVAL_SECS,
                }),
            ));
        }
    }
    Err(try_later("No free pairing code; try again in a minute."))
}

#[derive(Deserialize)]
pub struct Poll {
    poll_token: String,
}

pub use printworks_common::printer::Credentials;

#[derive(sqlx::FromRow)]
struct Row {
    state: String,
    expires_at: OffsetDateTime,
    claimed_at: Option<OffsetDateTime>,
    collected_at: Option<OffsetDateTime>,
    credentials_sealed: Option<Vec<u8>>,
}

pub fn sealing_context(request: Uuid) -> String {
    format!("pairing-credentials:{request}")
}

fn gone() -> ApiError {
    Problem::new(
        StatusCode::GONE,
        "pairing-request-gone",
        "This pairing request expired or was already collected",
    )
    .detail("Start pairing again.")
    .into()
}

pub async fn poll(
    State(state): State<PairingState>,
    Path(id): Path<Uuid>,
    Json(req): Json<Poll>,
) -> Result<Response, ApiError> {
    if req.poll_token.is_empty() || req.poll_token.len() > 100 {
        return Err(ApiError::not_found());
    }
    let ctx = &state.ctx;
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, expires_at, claimed_at, collected_at, credentials_sealed FROM pairing_requests
         WHERE id = $1 AND poll_token_hash = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(token_digest(&req.poll_token))
    .fetch_optional(&mut *tx)
    .await?;
    // An unknown request, or the wrong token: nothing to say.
    let row = row.ok_or_else(ApiError::not_found)?;
    match row.state.as_str() {
        "pending" if row.expires_at > now => {
            let left = (row.expires_at - now).whole_seconds().max(1);
            let body = serde_json::json!({
                "status": "pending",
                "expires_in": left,
                "interval": POLL_INTERVAL_SECS,
            });
            Ok((
                StatusCode::ACCEPTED,
                [(header::RETRY_AFTER, POLL_INTERVAL_SECS.to_string())],
                Json(body),
            )
                .into_response())
        }
        // Collected first here, or again within the window after the first time (the
        // same poll token, so the same printer and its key): a lost answer does not mean
        // pairing again.
        "claimed" | "collected"
            if row.credentials_sealed.is_some()
                && row
                    .claimed_at
                    .is_some_and(|claimed| claimed + PAIRING_TTL > now)
                && row
                    .collected_at
                    .is_none_or(|first| first + RECOLLECT_WINDOW > now) =>
        {
            let sealed = row.credentials_sealed.ok_or_else(gone)?;
            let plain = ctx
                .secrets
                .open(&sealing_context(id), &sealed)
                .ok_or_else(|| anyhow::anyhow!("sealed pairing credentials do not open"))?;
            let credentials: Credentials =
                serde_json::from_slice(&plain).map_err(anyhow::Error::from)?;
            let first = row.collected_at.is_none();
            if first {
                sqlx::query(
                    "UPDATE pairing_requests SET state = 'collected', collected_at = $2 WHERE id = $1",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            tracing::info!(request_id = %id, printer_id = %credentials.printer_id, again = !first, "pairing credentials collected");
            Ok((StatusCode::OK, Json(credentials)).into_response())
        }
        _ => {
            // Expired, or collected or claimed too long ago: the secrets go, if still here.
            sqlx::query(
                "UPDATE pairing_requests SET credentials_sealed = NULL,
                        state = CASE WHEN state = 'collected' THEN state ELSE 'expired' END
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Err(gone())
        }
    }
}
