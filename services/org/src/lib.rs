//! The organization service: organizations, roles (admin, member, guest), invitations,
//! teams, projects, sharing, printer security settings and the audit log.
//! Routes live under [`PREFIX`].

use axum::Router;
use printworks_common::AppContext;
use printworks_common::http::service_index;

pub const NAME: &str = "org";
pub const PREFIX: &str = "/org/v1";

pub fn router(ctx: AppContext) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .with_state(ctx)
}
