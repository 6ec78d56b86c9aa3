//! The organization service: organizations, roles (admin, member, guest), invitations,
//! teams, projects, sharing, printer security settings and the audit log.
//! Routes live under [`PREFIX`].
//!
//! So far: creating organizations and listing mine, and the membership reads other
//! services use ([`Directory`]).

pub mod organizations;

use axum::Router;
use printworks_account::{BoxFuture, OrgDirectory};
use printworks_common::AppContext;
use printworks_common::auth::Role;
use printworks_common::http::service_index;
use sqlx::PgPool;
use uuid::Uuid;

pub const NAME: &str = "org";
pub const PREFIX: &str = "/org/v1";

pub fn router(ctx: AppContext) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .nest(PREFIX, organizations::router())
        .with_state(ctx)
}

/// The user's role in the organization, read now (never from a token).
pub async fn role_of(
    db: &PgPool,
    organization_id: Uuid,
    user_id: Uuid,
) -> sqlx::Result<Option<Role>> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM organization_members WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(organization_id)
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    Ok(role.as_deref().and_then(Role::parse))
}

/// Organization reads for other services (the account service's client registration
/// and consent page).
pub struct Directory {
    db: PgPool,
}

impl Directory {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }
}

impl OrgDirectory for Directory {
    fn role(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> BoxFuture<'_, anyhow::Result<Option<Role>>> {
        Box::pin(async move { Ok(role_of(&self.db, organization_id, user_id).await?) })
    }

    fn name(&self, organization_id: Uuid) -> BoxFuture<'_, anyhow::Result<Option<String>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
                    .bind(organization_id)
                    .fetch_optional(&self.db)
                    .await?,
            )
        })
    }
}
