//! The pairing service: six-digit pairing keys, the printer certificate authority and
//! printer credentials. Routes live under [`PREFIX`]:
//!
//! 1. the printer asks to be paired (`POST /pairing/v1/requests`, no token) and shows
//!    the code it gets;
//! 2. a person of the organization enters it (`POST /pairing/v1/claims`), which adds
//!    the printer and issues its certificate;
//! 3. the printer collects its credentials, once (`POST /pairing/v1/requests/{id}/poll`).
//!
//! A printer whose certificate expired proves itself with its shared secret (an HMAC
//! over a server challenge) to get a new one; while its certificate is valid it renews
//! over the printer endpoint ([`renewal::renew_over_tls`], served by the relay).

pub mod ca;
pub mod claims;
pub mod code;
pub mod csr;
pub mod identity;
pub mod renewal;
pub mod requests;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use printworks_common::AppContext;
use printworks_common::auth::Scope;
use printworks_common::hooks::PrinterJobs;
use printworks_common::routes::{Access, RouteTable};
use printworks_common::tasks::Task;
use printworks_common::throttle::Throttle;

pub use ca::PrinterCa;
pub use identity::{PrinterIdentity, identify};

/// The pairing service's sealed values: printers' shared secrets, and credentials
/// waiting to be collected.
pub const SEALED: &[printworks_common::reseal::SealedColumn] = &[
    printworks_common::reseal::SealedColumn {
        table: "printer_secrets",
        key: "printer_id",
        key_is_uuid: true,
        column: "secret_sealed",
        context_prefix: "printer-secret:",
    },
    printworks_common::reseal::SealedColumn {
        table: "pairing_requests",
        key: "id",
        key_is_uuid: true,
        column: "credentials_sealed",
        context_prefix: "pairing-credentials:",
    },
];

/// The tables the pairing service owns (see `printworks_common::db::Owned`).
pub const OWNED: printworks_common::db::Owned = printworks_common::db::Owned {
    tables: &[
        "pairing_requests",
        "printer_certificates",
        "printer_secrets",
        "printer_challenges",
        "pairing_guess_budget",
    ],
    functions: &["notify_printer_revoked"],
};

pub const NAME: &str = "pairing";
pub const PREFIX: &str = "/pairing/v1";

/// How long a pairing code can be claimed, and its credentials collected after that.
pub const PAIRING_TTL: time::Duration = time::Duration::seconds(600);
/// How often a waiting printer should poll, in seconds.
pub const POLL_INTERVAL_SECS: u64 = 5;
/// Wrong codes (or renewal proofs) a subject may try before each further try must wait
/// 1 s, 2 s, 4 s … up to [`MAX_GUESS_DELAY`].
pub const FREE_GUESSES: u32 = 5;
pub const MAX_GUESS_DELAY: Duration = Duration::from_secs(300);
/// Largest pairing request body (the CSR is most of it).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct PairingState {
    pub ctx: AppContext,
    pub ca: Arc<PrinterCa>,
    /// Counts wrong codes per person, organization, source address and serial, and
    /// wrong proofs of a printer's secret per printer and network.
    pub guesses: Throttle,
    /// The relay's print jobs, failed when a re-pairing replaces a printer.
    pub jobs: Arc<dyn PrinterJobs>,
}

impl FromRef<PairingState> for AppContext {
    fn from_ref(s: &PairingState) -> AppContext {
        s.ctx.clone()
    }
}

impl PairingState {
    pub fn new(ctx: AppContext, ca: Arc<PrinterCa>, jobs: Arc<dyn PrinterJobs>) -> Self {
        Self {
            ctx,
            ca,
            jobs,
            guesses: Throttle {
                free_attempts: FREE_GUESSES,
                max_delay: MAX_GUESS_DELAY,
            },
        }
    }
}

/// Every route of the pairing service, each limited per source address (they let
/// strangers guess codes and secrets).
#[rustfmt::skip]
pub fn routes() -> RouteTable<PairingState> {
    use Access::*;
    RouteTable::new(PREFIX)
        .post("/requests", Public, requests::create).max_body(MAX_REQUEST_BYTES).rate_limited()
        .post("/requests/{id}/poll", Public, requests::poll).rate_limited()
        .post("/claims", Token(Scope::PrinterWrite), claims::claim).rate_limited()
        .post("/printers/{printer}/challenge", Public, renewal::challenge).rate_limited()
        .post("/printers/{printer}/certificate", Public, renewal::renew_with_secret).max_body(MAX_REQUEST_BYTES).rate_limited()
}

/// `GET /pairing/v1/`: the service's name and version (the one row a cache may keep).
pub fn index() -> RouteTable<PairingState> {
    RouteTable::new(PREFIX).index(NAME, env!("CARGO_PKG_VERSION"))
}

/// The pairing service's routes, built from [`routes`] and [`index`].
pub fn router(ctx: AppContext, ca: Arc<PrinterCa>, jobs: Arc<dyn PrinterJobs>) -> Router {
    let state = PairingState::new(ctx, ca, jobs);
    routes()
        .into_router(&state.ctx)
        // Codes, poll tokens, secrets and certificates: never kept by a cache.
        .layer(axum::middleware::map_response(no_store))
        .merge(index().into_router(&state.ctx))
        .with_state(state)
}

async fn no_store(mut res: axum::response::Response) -> axum::response::Response {
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// The pairing service's background work, every five minutes: credentials no longer
/// collectable are erased, pairing requests older than a day and answered challenges
/// that expired are deleted ([`cleanup`]).
pub fn tasks(ctx: &AppContext) -> Vec<Task> {
    let ctx = ctx.clone();
    vec![Task::periodic(
        "pairing-cleanup",
        Duration::from_secs(300),
        move || {
            let ctx = ctx.clone();
            async move { Ok(cleanup(&ctx).await?) }
        },
    )]
}

pub async fn cleanup(ctx: &AppContext) -> sqlx::Result<()> {
    let now = ctx.now();
    sqlx::query(
        "UPDATE pairing_requests SET credentials_sealed = NULL
         WHERE credentials_sealed IS NOT NULL
           AND (collected_at < $1 OR claimed_at < $2)",
    )
    .bind(now - requests::RECOLLECT_WINDOW)
    .bind(now - PAIRING_TTL)
    .execute(&ctx.db)
    .await?;
    sqlx::query("DELETE FROM pairing_requests WHERE created_at < $1")
        .bind(now - time::Duration::days(1))
        .execute(&ctx.db)
        .await?;
    sqlx::query("DELETE FROM printer_challenges WHERE expires_at < $1")
        .bind(now)
        .execute(&ctx.db)
        .await?;
    Ok(())
}
