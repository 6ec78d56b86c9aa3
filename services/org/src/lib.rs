//! The organization service: organizations, roles (admin, member, guest), invitations,
//! teams, projects, sharing, printer security settings and the audit log. Routes live
//! under [`PREFIX`]; [`ROUTES`] lists every one with the scope it needs (the router is
//! built from the same list, and the tests hold each against every role).

pub mod access;
pub mod audit;
pub mod invitations;
pub mod members;
pub mod organizations;
pub mod printers;
pub mod projects;
pub mod shares;
pub mod teams;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use printworks_account::password::PasswordHasher;
use printworks_account::{BoxFuture, OrgDirectory};
use printworks_common::AppContext;
use printworks_common::auth::{Role, Scope};
use printworks_common::hooks::PrinterJobs;
use printworks_common::http::service_index;
use sqlx::PgPool;
use uuid::Uuid;

pub const NAME: &str = "org";
pub const PREFIX: &str = "/org/v1";

#[derive(Clone)]
pub struct OrgState {
    pub ctx: AppContext,
    /// Argon2id for printer PINs (the same cost as passwords).
    pub pins: PasswordHasher,
    /// The relay's print jobs, failed when a printer leaves.
    pub jobs: Arc<dyn PrinterJobs>,
}

impl FromRef<OrgState> for AppContext {
    fn from_ref(s: &OrgState) -> AppContext {
        s.ctx.clone()
    }
}

/// Declares the routes once: the router and [`ROUTES`] come from the same lines.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path, $scope:ident;)*) => {
        /// Every route of the org service: method, path (under [`PREFIX`]) and the scope
        /// its token must grant.
        pub const ROUTES: &[(&str, &str, Scope)] = &[
            $((routes!(@upper $method), concat!("/org/v1", $path), Scope::$scope)),*
        ];

        fn api() -> Router<OrgState> {
            let mut r = Router::new();
            $(r = r.route($path, axum::routing::$method($handler));)*
            r
        }
    };
    (@upper get) => { "GET" };
    (@upper post) => { "POST" };
    (@upper put) => { "PUT" };
    (@upper patch) => { "PATCH" };
    (@upper delete) => { "DELETE" };
}

routes! {
    get "/organizations" => organizations::list, OrganizationRead;
    post "/organizations" => organizations::create, OrganizationWrite;
    get "/organizations/{org}" => organizations::get, OrganizationRead;
    patch "/organizations/{org}" => organizations::rename, OrganizationWrite;
    get "/organizations/{org}/members" => members::list, OrganizationRead;
    patch "/organizations/{org}/members/{user}" => members::change_role, OrganizationWrite;
    delete "/organizations/{org}/members/{user}" => members::remove, OrganizationWrite;
    get "/organizations/{org}/invitations" => invitations::list, OrganizationRead;
    post "/organizations/{org}/invitations" => invitations::create, OrganizationWrite;
    delete "/organizations/{org}/invitations/{invitation}" => invitations::revoke, OrganizationWrite;
    post "/invitations/accept" => invitations::accept, OrganizationWrite;
    get "/organizations/{org}/teams" => teams::list, OrganizationRead;
    post "/organizations/{org}/teams" => teams::create, OrganizationWrite;
    get "/organizations/{org}/teams/{team}" => teams::get, OrganizationRead;
    delete "/organizations/{org}/teams/{team}" => teams::delete, OrganizationWrite;
    put "/organizations/{org}/teams/{team}/members/{user}" => teams::add_member, OrganizationWrite;
    delete "/organizations/{org}/teams/{team}/members/{user}" => teams::remove_member, OrganizationWrite;
    get "/organizations/{org}/projects" => projects::list, OrganizationRead;
    post "/organizations/{org}/projects" => projects::create, OrganizationWrite;
    get "/organizations/{org}/projects/{project}" => projects::get, OrganizationRead;
    patch "/organizations/{org}/projects/{project}" => projects::update, OrganizationWrite;
    put "/organizations/{org}/projects/{project}/shares" => projects::share, OrganizationWrite;
    delete "/organizations/{org}/projects/{project}/shares/{grantee_type}/{grantee}" => projects::unshare, OrganizationWrite;
    get "/organizations/{org}/printers" => printers::list, PrinterRead;
    get "/organizations/{org}/printers/{printer}" => printers::get, PrinterRead;
    delete "/organizations/{org}/printers/{printer}" => printers::unpair, PrinterWrite;
    put "/organizations/{org}/printers/{printer}/shares" => printers::share, PrinterWrite;
    delete "/organizations/{org}/printers/{printer}/shares/{grantee_type}/{grantee}" => printers::unshare, PrinterWrite;
    get "/organizations/{org}/printers/{printer}/security" => printers::get_security, PrinterRead;
    put "/organizations/{org}/printers/{printer}/security" => printers::put_security, PrinterWrite;
    get "/organizations/{org}/audit-events" => audit::list, AuditRead;
    get "/organizations/{org}/audit-events/verify" => audit::verify, AuditRead;
    get "/organizations/{org}/audit-events/export" => audit::export, AuditRead;
}

/// The org service's routes; starts the audit retention job, which stops with the
/// process.
pub fn router(ctx: AppContext, jobs: Arc<dyn PrinterJobs>) -> anyhow::Result<Router> {
    let state = OrgState {
        pins: PasswordHasher::from_settings(&ctx.settings.account)?,
        jobs,
        ctx,
    };
    spawn_retention(state.ctx.clone());
    Ok(Router::new()
        .route(
            &format!("{PREFIX}/"),
            service_index(NAME, env!("CARGO_PKG_VERSION")),
        )
        .nest(PREFIX, api())
        .with_state(state))
}

/// Every five minutes, signs the heads of the audit chains that grew
/// ([`audit::checkpoint`]); hourly, prunes expired audit records (replicas doing it
/// at once are ordered by each chain's row lock).
fn spawn_retention(ctx: AppContext) {
    let stop = ctx.shutdown.child_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = audit::checkpoint(&ctx.db, &ctx.secrets, ctx.now()).await {
                tracing::warn!(error = %e, "audit checkpoint");
            }
            if ticks.is_multiple_of(12) {
                match audit::prune(&ctx.db, ctx.now(), ctx.settings.org.audit_retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "audit retention pruned old records"),
                    Err(e) => tracing::warn!(error = %e, "audit retention"),
                }
            }
            ticks += 1;
        }
    });
}

/// How often the audit chains' heads are signed.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// The user's role in the organization, read now (never from a token), on the pool or
/// inside a transaction.
pub async fn role_of(
    db: impl sqlx::PgExecutor<'_>,
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

    fn role_locked<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> BoxFuture<'a, anyhow::Result<Option<Role>>> {
        Box::pin(async move {
            access::lock_org(&mut *conn, organization_id).await?;
            Ok(role_of(&mut *conn, organization_id, user_id).await?)
        })
    }

    fn name(&self, organization_id: Uuid) -> BoxFuture<'_, anyhow::Result<Option<String>>> {
        Box::pin(async move { Ok(organizations::name_of(&self.db, organization_id).await?) })
    }
}

/// Kept for the binary's `audit verify` command.
pub use audit::{RetentionRule, Verification, verify_all};
