//! The relay service: print jobs, their encrypted storage, dispatch, and the printer
//! endpoint (mutual TLS on its own listener, [`endpoint`]). Public routes live under
//! [`PREFIX`]; the printers' own under [`PRINTER_PREFIX`] on the printer endpoint.

pub mod endpoint;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::routing::{get, post};
use printworks_common::http::{ClientInfo, Json, apply_common_layers, service_index};
use printworks_common::{ApiError, AppContext};
use printworks_pairing::PrinterCa;
use printworks_pairing::renewal::{Renewed, renew_over_tls};
use serde::Deserialize;
use tokio::net::TcpListener;

pub use endpoint::{Printer, PrinterEndpoint};

pub const NAME: &str = "relay";
pub const PREFIX: &str = "/relay/v1";
pub const PRINTER_PREFIX: &str = "/printer/v1";

#[derive(Clone)]
pub struct RelayState {
    pub ctx: AppContext,
    pub ca: Arc<PrinterCa>,
}

impl FromRef<RelayState> for AppContext {
    fn from_ref(s: &RelayState) -> AppContext {
        s.ctx.clone()
    }
}

/// The public routes (people and apps).
pub fn router(ctx: AppContext) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .with_state(ctx)
}

/// The printers' routes, served on the printer endpoint with the shared layers.
pub fn printer_router(state: RelayState) -> Router {
    let ctx = state.ctx.clone();
    let routes = Router::new()
        .route(&format!("{PRINTER_PREFIX}/identity"), get(identity))
        .route(&format!("{PRINTER_PREFIX}/certificate"), post(renew))
        .with_state(state);
    apply_common_layers(routes, &ctx)
}

/// Binds the printer endpoint on `listener` with the printers' routes.
pub fn printer_endpoint(
    listener: TcpListener,
    ctx: AppContext,
    ca: Arc<PrinterCa>,
) -> anyhow::Result<PrinterEndpoint> {
    let router = printer_router(RelayState {
        ctx: ctx.clone(),
        ca: ca.clone(),
    });
    PrinterEndpoint::new(listener, ctx, &ca, router)
}

/// `GET /printer/v1/identity`: who the endpoint takes the caller for.
async fn identity(Printer(who): Printer) -> Json<printworks_pairing::PrinterIdentity> {
    Json(who)
}

#[derive(Deserialize)]
struct Renew {
    csr_pem: String,
}

/// `POST /printer/v1/certificate {csr_pem}`: a new certificate while the current one
/// is valid.
async fn renew(
    State(state): State<RelayState>,
    Printer(who): Printer,
    client: ClientInfo,
    Json(req): Json<Renew>,
) -> Result<(axum::http::StatusCode, Json<Renewed>), ApiError> {
    let renewed = renew_over_tls(&state.ctx, &state.ca, &who, &req.csr_pem, client.addr).await?;
    Ok((axum::http::StatusCode::CREATED, Json(renewed)))
}
