//! The account service: people, passwords, TOTP, browser sessions, and the OAuth2 /
//! OpenID Connect provider whose tokens every other service verifies.
//!
//! Routes: the JSON API under [`PREFIX`]; the pages under `/account/`; the provider under
//! `/oauth/` and `/.well-known/openid-configuration`.

pub mod api;
pub mod device;
pub mod directory;
pub mod email;
pub mod keys;
pub mod login;
pub mod oauth;
pub mod pages;
pub mod password;
pub mod session;
pub mod tokens;
pub mod totp;
pub mod verification;

use std::sync::Arc;

use axum::Router;
use printworks_common::AppContext;
use printworks_common::auth::Role;
use printworks_common::http::{rate_limit, service_index};
use uuid::Uuid;

use crate::keys::SigningKeys;
use crate::password::{PasswordHasher, PasswordPolicy};
use printworks_common::throttle::Throttle;

/// The account service's sealed values: TOTP secrets and the token signing keys.
pub const SEALED: &[printworks_common::reseal::SealedColumn] = &[
    printworks_common::reseal::SealedColumn {
        table: "totp_credentials",
        key: "user_id",
        key_is_uuid: true,
        column: "secret_sealed",
        context_prefix: "totp:",
    },
    printworks_common::reseal::SealedColumn {
        table: "signing_keys",
        key: "kid",
        key_is_uuid: false,
        column: "private_key_sealed",
        context_prefix: "signing-key:",
    },
];

pub const NAME: &str = "account";
pub const PREFIX: &str = "/account/v1";

pub use printworks_common::hooks::BoxFuture;

/// What the account service needs to know about organizations, which the org service
/// owns. The binary passes the org crate's implementation.
pub trait OrgDirectory: Send + Sync + 'static {
    /// The user's role in the organization, read now.
    fn role(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> BoxFuture<'_, anyhow::Result<Option<Role>>>;
    /// The user's role, read on `conn` after taking the organization's row lock there
    /// (held until that transaction ends): membership changes wait for it, so what the
    /// caller then writes cannot slip past a demotion that withdraws it.
    fn role_locked<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> BoxFuture<'a, anyhow::Result<Option<Role>>>;
    /// The organization's name, to show on the consent page.
    fn name(&self, organization_id: Uuid) -> BoxFuture<'_, anyhow::Result<Option<String>>>;
}

#[derive(Clone)]
pub struct AccountState {
    pub ctx: AppContext,
    pub policy: PasswordPolicy,
    pub passwords: PasswordHasher,
    pub throttle: Throttle,
    pub keys: Arc<SigningKeys>,
    pub orgs: Arc<dyn OrgDirectory>,
}

impl AccountState {
    pub fn new(ctx: AppContext, orgs: Arc<dyn OrgDirectory>) -> anyhow::Result<Self> {
        let s = &ctx.settings.account;
        Ok(Self {
            policy: PasswordPolicy::from_settings(s),
            passwords: PasswordHasher::from_settings(s)?,
            throttle: Throttle {
                free_attempts: s.login_free_attempts,
                max_delay: s.login_max_delay,
            },
            keys: Arc::new(SigningKeys::new(
                ctx.db.clone(),
                ctx.secrets.clone(),
                ctx.clock.clone(),
            )),
            orgs,
            ctx,
        })
    }
}

/// The account service's routes. Creates the first signing key on a fresh database.
pub async fn router(ctx: AppContext, orgs: Arc<dyn OrgDirectory>) -> anyhow::Result<Router> {
    let state = AccountState::new(ctx, orgs)?;
    state.keys.ensure_current().await?;
    let limit = rate_limit(&state.ctx.settings);

    let api = Router::new()
        .merge(api::users::router())
        .merge(api::sessions::router())
        .merge(api::clients::router())
        .merge(api::consents::router());
    let limited_api = Router::new()
        .merge(api::users::limited_router())
        .merge(api::sessions::limited_router())
        .merge(api::totp::limited_router())
        .route_layer(limit.clone());
    let limited_pages = pages::limited_router()
        .merge(oauth::token::router())
        .route_layer(limit);

    Ok(Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .nest(PREFIX, api.merge(limited_api))
        .merge(pages::router())
        .merge(limited_pages)
        .merge(oauth::authorize::router())
        .merge(oauth::discovery::router())
        .merge(oauth::introspect::router())
        .with_state(state))
}
