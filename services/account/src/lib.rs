//! The account service: people, passwords, TOTP, browser sessions, and the OAuth2 /
//! OpenID Connect provider whose tokens every other service verifies.
//!
//! Routes: the JSON API under [`PREFIX`]; the pages under `/account/`; the provider under
//! `/oauth/` and `/.well-known/openid-configuration`.

pub mod api;
pub mod cura;
pub mod device;
pub mod directory;
pub mod federation;
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
use printworks_common::auth::{Role, Scope};
use printworks_common::routes::{Access, RouteTable};
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

/// The tables the account service owns (see `printworks_common::db::Owned`).
pub const OWNED: printworks_common::db::Owned = printworks_common::db::Owned {
    tables: &[
        "users",
        "sessions",
        "totp_credentials",
        "recovery_codes",
        "mfa_challenges",
        "signing_keys",
        "oauth_clients",
        "oauth_codes",
        "oauth_refresh_tokens",
        "oauth_consents",
        "email_verifications",
        "federated_identities",
        "federated_logins",
    ],
    functions: &[],
};

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
    /// The identity provider a federated sign-in goes to: that of the organization that
    /// proved the e-mail domain, or the organization's own.
    fn identity_provider(
        &self,
        lookup: federation::Lookup,
    ) -> BoxFuture<'_, anyhow::Result<Option<federation::IdentityProvider>>>;
    /// Whether the organization proved it owns the e-mail domain.
    fn proves_domain<'a>(
        &'a self,
        organization_id: Uuid,
        domain: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Makes the person a member with `role` (just in time, at their first federated
    /// sign-in), in the caller's transaction, audited. False if they already were one.
    fn provision<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        organization_id: Uuid,
        user_id: Uuid,
        role: Role,
        now: time::OffsetDateTime,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Whether a person's sign-in (`session_id`) meets the organization's policy: the
    /// problem that says how to comply, if not.
    fn policy(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        session_id: Option<Uuid>,
        now: time::OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), printworks_common::ApiError>>;
    /// The organization's name and system use notification, if it set one.
    fn notice(
        &self,
        organization_id: Uuid,
    ) -> BoxFuture<'_, anyhow::Result<Option<(String, String)>>>;
}

#[derive(Clone)]
pub struct AccountState {
    pub ctx: AppContext,
    pub policy: PasswordPolicy,
    pub passwords: PasswordHasher,
    pub throttle: Throttle,
    pub keys: Arc<SigningKeys>,
    pub orgs: Arc<dyn OrgDirectory>,
    /// Organizations' identity providers, discovered.
    pub providers: Arc<federation::provider::Providers>,
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
            providers: Arc::default(),
            ctx,
        })
    }
}

/// Every route of the account service: the JSON API under [`PREFIX`], the OAuth2 /
/// OpenID Connect provider and the pages. The routes a stranger can use to guess a
/// secret share one per-address rate limit.
#[rustfmt::skip]
pub fn routes() -> RouteTable<AccountState> {
    use Access::*;
    use Scope::*;
    use api::{clients, consents, sessions, totp, users};
    use oauth::{authorize, discovery, introspect, token};
    let api = RouteTable::new(PREFIX)
        .index(NAME, env!("CARGO_PKG_VERSION"))
        .post("/users", Public, users::sign_up).rate_limited()
        .get("/users/me", Session, users::me)
        .post("/users/me/email-verification", Session, verification::resend).rate_limited()
        .post("/password", Session, users::change_password).rate_limited()
        .post("/sessions", Public, sessions::log_in).rate_limited()
        .get("/sessions", Session, sessions::list)
        .delete("/sessions/current", Session, sessions::logout)
        .delete("/sessions/{id}", Session, sessions::end_one)
        .post("/totp", Session, totp::enrol).rate_limited()
        .post("/totp/confirm", Session, totp::confirm).rate_limited()
        .post("/totp/disable", Session, totp::disable).rate_limited()
        .get("/consents", Session, consents::list)
        .delete("/consents/{client_id}", Session, consents::withdraw)
        .get("/clients", SessionOrToken(OrganizationRead), clients::list)
        .post("/clients", SessionOrToken(OrganizationWrite), clients::register)
        .delete("/clients/{client_id}", SessionOrToken(OrganizationWrite), clients::revoke);
    let provider = RouteTable::new("")
        .get("/.well-known/openid-configuration", Public, discovery::configuration)
        .get("/oauth/jwks", Public, discovery::jwks)
        .get("/oauth/authorize", Public, authorize::authorize)
        .post("/oauth/authorize", Public, authorize::decide)
        .post("/oauth/token", Client, token::token).rate_limited()
        .post("/oauth/revoke", Client, introspect::revoke)
        .post("/oauth/introspect", Client, introspect::introspect)
        .get("/oauth/userinfo", Token(OpenId), introspect::userinfo)
        .post("/oauth/userinfo", Token(OpenId), introspect::userinfo);
    let pages = RouteTable::new("")
        .get("/account/", Public, pages::home)
        .get("/account/login", Public, pages::login_page).rate_limited()
        .post("/account/login", Public, pages::login_submit).rate_limited()
        .post("/account/login/totp", Public, pages::totp_submit).rate_limited()
        .post("/account/login/federated", Public, federation::signin::start_page).rate_limited()
        .get(federation::signin::CALLBACK_PATH, Public, federation::signin::callback).rate_limited()
        .get("/account/verify-email", Public, verification::follow).rate_limited()
        .get("/account/logout", Public, pages::logout_page)
        .post("/account/logout", Public, pages::logout)
        .get("/assets/printworks.css", Public, pages::stylesheet);
    // UltiMaker Cura's account root (`CuraCloudAccountAPIRoot`): its sign-in at the paths
    // Cura builds, and the answers it parses.
    let cura = RouteTable::new(cura::ACCOUNT_ROOT)
        .get("/authorize", Public, authorize::authorize)
        .post("/token", Client, token::token).rate_limited()
        .get("/check-token", Token(OpenId), cura::check_token)
        .get("/users/permissions", Token(OpenId), cura::permissions)
        .get("/app/auth-success", Public, cura::auth_success)
        .get("/app/auth-error", Public, cura::auth_error);
    api.merge(provider).merge(pages).merge(cura)
}

/// The account service's routes, built from [`routes`]. Creates the first signing key
/// on a fresh database.
pub async fn router(ctx: AppContext, orgs: Arc<dyn OrgDirectory>) -> anyhow::Result<Router> {
    let state = AccountState::new(ctx, orgs)?;
    state.keys.ensure_current().await?;
    Ok(routes().into_router(&state.ctx).with_state(state))
}
