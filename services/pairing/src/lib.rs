//! The pairing service: six-digit pairing keys, the printer certificate authority and
//! printer credentials. Routes live under [`PREFIX`].

use axum::Router;
use printworks_common::AppContext;
use printworks_common::http::service_index;

pub const NAME: &str = "pairing";
pub const PREFIX: &str = "/pairing/v1";

pub fn router(ctx: AppContext) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .with_state(ctx)
}
