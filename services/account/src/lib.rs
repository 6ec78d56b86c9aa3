//! The account service: people, passwords, TOTP, browser sessions, and the OAuth2 /
//! OpenID Connect provider whose tokens every other service verifies.
//! Routes live under [`PREFIX`].

use axum::Router;
use printworks_common::AppContext;
use printworks_common::http::service_index;

pub const NAME: &str = "account";
pub const PREFIX: &str = "/account/v1";

pub fn router(ctx: AppContext) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .with_state(ctx)
}
