//! The relay service: print jobs, their encrypted storage, dispatch, and the printer
//! endpoint (mutual TLS on its own listener). Routes live under [`PREFIX`].

use axum::Router;
use printworks_common::AppContext;
use printworks_common::http::service_index;

pub const NAME: &str = "relay";
pub const PREFIX: &str = "/relay/v1";

pub fn router(ctx: AppContext) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .with_state(ctx)
}
