//! The organization service: organizations, roles (admin, member, guest), invitations,
//! teams, projects, sharing, printer security settings and the audit log. Routes live
//! under [`PREFIX`]; [`routes`] is their table: each with its handler and the scope it
//! needs (enforced from the table; the tests hold each against every role).

/// "A printer is paired", as SQL on `printers` (alias-free): the one place the rule is
/// written. Use with `concat!`.
macro_rules! paired {
    () => {
        "unpaired_at IS NULL"
    };
}

pub mod access;
pub mod audit;
pub mod fleet;
pub mod invitations;
pub mod library;
pub mod members;
pub mod organizations;
pub mod policy;
pub mod printers;
pub mod projects;
pub mod shares;
pub mod sso;
pub mod teams;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use printworks_account::OrgDirectory;
use printworks_account::federation::{IdentityProvider, Lookup};
use printworks_common::AppContext;
use printworks_common::audit::{integrity, retention};
use printworks_common::auth::{Role, Scope};
use printworks_common::hashing::PasswordHasher;
use printworks_common::hooks::BoxFuture;
use printworks_common::hooks::PrinterJobs;
use printworks_common::routes::{Access::Token, RouteTable};
use printworks_common::tasks::Task;
use sqlx::PgPool;
use uuid::Uuid;

/// The tables the org service owns (see `printworks_common::db::Owned`), and the
/// triggers that tell the printer endpoint when a printer leaves or its settings change.
pub const OWNED: printworks_common::db::Owned = printworks_common::db::Owned {
    tables: &[
        "organizations",
        "organization_members",
        "invitations",
        "teams",
        "team_members",
        "projects",
        "project_shares",
        "printers",
        "printer_shares",
        "printer_security",
        "org_identity_providers",
        "org_sso_domains",
        "org_policies",
    ],
    functions: &["org_notify_printer_unpaired", "org_notify_printer_security"],
};

/// The org service's sealed values: organizations' identity provider client secrets.
pub const SEALED: &[printworks_common::reseal::SealedColumn] =
    &[printworks_common::reseal::SealedColumn {
        table: "org_identity_providers",
        key: "organization_id",
        key_is_uuid: true,
        column: "client_secret_sealed",
        context_prefix: "sso-client-secret:",
    }];

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

/// Every route of the org service: method, path (under [`PREFIX`]), handler and the
/// scope its token must grant. Every route takes an access token.
#[rustfmt::skip]
pub fn routes() -> RouteTable<OrgState> {
    use Scope::*;
    RouteTable::new(PREFIX)
        .index(NAME, env!("CARGO_PKG_VERSION"))
        .get("/organizations", Token(OrganizationRead), organizations::list)
        .post("/organizations", Token(OrganizationWrite), organizations::create)
        .get("/organizations/{org}", Token(OrganizationRead), organizations::get)
        .patch("/organizations/{org}", Token(OrganizationWrite), organizations::rename)
        .get("/organizations/{org}/members", Token(OrganizationRead), members::list)
        .patch("/organizations/{org}/members/{user}", Token(OrganizationWrite), members::change_role)
        .delete("/organizations/{org}/members/{user}", Token(OrganizationWrite), members::remove)
        .delete("/organizations/{org}/members/{user}/sessions", Token(OrganizationWrite), members::end_sessions)
        .get("/organizations/{org}/sso", Token(OrganizationRead), sso::get)
        .put("/organizations/{org}/sso", Token(OrganizationWrite), sso::put)
        .delete("/organizations/{org}/sso", Token(OrganizationWrite), sso::delete)
        .post("/organizations/{org}/sso/domains/{domain}/verify", Token(OrganizationWrite), sso::verify_domain)
        .get("/organizations/{org}/policy", Token(OrganizationRead), policy::get)
        .put("/organizations/{org}/policy", Token(OrganizationWrite), policy::put)
        .get("/organizations/{org}/invitations", Token(OrganizationRead), invitations::list)
        .post("/organizations/{org}/invitations", Token(OrganizationWrite), invitations::create)
        .delete("/organizations/{org}/invitations/{invitation}", Token(OrganizationWrite), invitations::revoke)
        .post("/invitations/accept", Token(OrganizationWrite), invitations::accept)
        .get("/organizations/{org}/teams", Token(OrganizationRead), teams::list)
        .post("/organizations/{org}/teams", Token(OrganizationWrite), teams::create)
        .get("/organizations/{org}/teams/{team}", Token(OrganizationRead), teams::get)
        .delete("/organizations/{org}/teams/{team}", Token(OrganizationWrite), teams::delete)
        .put("/organizations/{org}/teams/{team}/members/{user}", Token(OrganizationWrite), teams::add_member)
        .delete("/organizations/{org}/teams/{team}/members/{user}", Token(OrganizationWrite), teams::remove_member)
        .get("/organizations/{org}/projects", Token(OrganizationRead), projects::list)
        .post("/organizations/{org}/projects", Token(OrganizationWrite), projects::create)
        .get("/organizations/{org}/projects/{project}", Token(OrganizationRead), projects::get)
        .patch("/organizations/{org}/projects/{project}", Token(OrganizationWrite), projects::update)
        .put("/organizations/{org}/projects/{project}/shares", Token(OrganizationWrite), projects::share)
        .delete("/organizations/{org}/projects/{project}/shares/{grantee_type}/{grantee}", Token(OrganizationWrite), projects::unshare)
        .get("/organizations/{org}/printers", Token(PrinterRead), printers::list)
        .get("/organizations/{org}/printers/{printer}", Token(PrinterRead), printers::get)
        .delete("/organizations/{org}/printers/{printer}", Token(PrinterWrite), printers::unpair)
        .put("/organizations/{org}/printers/{printer}/shares", Token(PrinterWrite), printers::share)
        .delete("/organizations/{org}/printers/{printer}/shares/{grantee_type}/{grantee}", Token(PrinterWrite), printers::unshare)
        .get("/organizations/{org}/printers/{printer}/security", Token(PrinterRead), printers::get_security)
        .put("/organizations/{org}/printers/{printer}/security", Token(PrinterWrite), printers::put_security)
        .get("/organizations/{org}/audit-events", Token(AuditRead), audit::list)
        .get("/organizations/{org}/audit-events/verify", Token(AuditRead), audit::verify)
        .get("/organizations/{org}/audit-events/export", Token(AuditRead), audit::export)
        .merge(library_routes())
}

/// UltiMaker Cura's Digital Library (its projects), at the paths Cura builds.
#[rustfmt::skip]
fn library_routes() -> RouteTable<OrgState> {
    use printworks_common::routes::Access::Token;
    use printworks_common::auth::Scope::OrganizationRead;
    RouteTable::new("/cura/v1")
        .get("/feature_budgets", Token(OrganizationRead), library::feature_budgets)
        .get("/projects", Token(OrganizationRead), library::list)
        .get("/projects/{project}", Token(OrganizationRead), library::get)
}

/// The org service's routes, built from [`routes`].
pub fn router(ctx: AppContext, jobs: Arc<dyn PrinterJobs>) -> anyhow::Result<Router> {
    let state = OrgState {
        pins: PasswordHasher::from_settings(&ctx.settings.account)?,
        jobs,
        ctx,
    };
    Ok(routes().into_router(&state.ctx).with_state(state))
}

/// The org service's background work: every five minutes, signing the heads of the
/// audit chains that grew ([`integrity::checkpoint`]); hourly, pruning expired audit
/// records ([`retention::prune`]; replicas doing it at once take turns per chain).
pub fn tasks(ctx: &AppContext) -> Vec<Task> {
    let (signing, pruning) = (ctx.clone(), ctx.clone());
    vec![
        Task::periodic("audit-checkpoint", CHECKPOINT_INTERVAL, move || {
            let ctx = signing.clone();
            async move {
                integrity::checkpoint(&ctx.db, &ctx.secrets, ctx.now()).await?;
                Ok(())
            }
        }),
        Task::periodic("audit-retention", RETENTION_INTERVAL, move || {
            let ctx = pruning.clone();
            async move {
                let n =
                    retention::prune(&ctx.db, ctx.now(), ctx.settings.org.audit_retention).await?;
                if n > 0 {
                    tracing::info!(removed = n, "audit retention pruned old records");
                }
                Ok(())
            }
        }),
    ]
}

/// How often expired audit records are pruned.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

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
    secrets: printworks_common::crypto::SecretBox,
}

impl Directory {
    pub fn new(db: PgPool, secrets: printworks_common::crypto::SecretBox) -> Self {
        Self { db, secrets }
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

    fn identity_provider(
        &self,
        lookup: Lookup,
    ) -> BoxFuture<'_, anyhow::Result<Option<IdentityProvider>>> {
        Box::pin(async move {
            let (org, domain) = match lookup {
                Lookup::Domain(d) => (None, Some(d)),
                Lookup::Organization(o) => (Some(o), None),
            };
            let row: Option<ProviderRow> = sqlx::query_as(
                "SELECT p.organization_id, o.name, p.issuer, p.client_id, p.client_secret_sealed,
                        p.default_role, p.enforced, pol.allowed_auth, pol.notice
                 FROM org_identity_providers p
                 JOIN organizations o ON o.id = p.organization_id
                 LEFT JOIN org_policies pol ON pol.organization_id = p.organization_id
                 WHERE p.organization_id = $1
                    OR p.organization_id = (SELECT organization_id FROM org_sso_domains
                                            WHERE domain = $2 AND verified_at IS NOT NULL)",
            )
            .bind(org)
            .bind(domain)
            .fetch_optional(&self.db)
            .await?;
            let Some(r) = row else { return Ok(None) };
            let secret = self
                .secrets
                .open(
                    &sso::secret_context(r.organization_id),
                    &r.client_secret_sealed,
                )
                .and_then(|s| String::from_utf8(s).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("an identity provider's client secret does not open")
                })?;
            Ok(Some(IdentityProvider {
                organization_id: r.organization_id,
                organization_name: r.name,
                issuer: r.issuer,
                client_id: r.client_id,
                client_secret: secrecy::SecretString::from(secret),
                default_role: Role::parse(&r.default_role).unwrap_or(Role::Guest),
                enforced: r.enforced,
                federation_allowed: r.allowed_auth.as_deref() != Some("password"),
                notice: r.notice,
            }))
        })
    }

    fn proves_domain<'a>(
        &'a self,
        organization_id: Uuid,
        domain: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { Ok(sso::proves(&self.db, organization_id, domain).await?) })
    }

    fn provision<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        organization_id: Uuid,
        user_id: Uuid,
        role: Role,
        now: time::OffsetDateTime,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            access::lock_org(&mut *conn, organization_id).await?;
            let added = sqlx::query(
                "INSERT INTO organization_members (organization_id, user_id, role, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(organization_id)
            .bind(user_id)
            .bind(role.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if added {
                printworks_common::audit::AuditEvent::new(
                    "member.provisioned",
                    printworks_common::audit::Actor::User(user_id),
                    printworks_common::audit::Outcome::Success,
                )
                .organization(organization_id)
                .target("user", user_id)
                .detail("role", role.as_str())
                .write(&mut *conn, now)
                .await?;
            }
            Ok(added)
        })
    }

    fn policy(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        session_id: Option<Uuid>,
        now: time::OffsetDateTime,
    ) -> BoxFuture<'_, Result<(), printworks_common::ApiError>> {
        Box::pin(policy::enforce_person(
            &self.db,
            organization_id,
            user_id,
            session_id,
            now,
        ))
    }

    fn notice(
        &self,
        organization_id: Uuid,
    ) -> BoxFuture<'_, anyhow::Result<Option<(String, String)>>> {
        Box::pin(async move {
            Ok(sqlx::query_as(
                "SELECT o.name, p.notice FROM org_policies p
                 JOIN organizations o ON o.id = p.organization_id
                 WHERE p.organization_id = $1 AND p.notice IS NOT NULL",
            )
            .bind(organization_id)
            .fetch_optional(&self.db)
            .await?)
        })
    }
}

#[derive(sqlx::FromRow)]
struct ProviderRow {
    organization_id: Uuid,
    name: String,
    issuer: String,
    client_id: String,
    client_secret_sealed: Vec<u8>,
    default_role: String,
    enforced: bool,
    allowed_auth: Option<String>,
    notice: Option<String>,
}
