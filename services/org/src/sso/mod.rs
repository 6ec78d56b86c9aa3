//! An organization's identity provider (federated sign-in, OpenID Connect):
//! `GET|PUT|DELETE /org/v1/organizations/{org}/sso`, and the proof that the
//! organization owns an e-mail domain: `POST …/sso/domains/{domain}/verify` looks up the
//! TXT record `_printworks-challenge.<domain>` (through [`dns`]) for the value the
//! configuration answers. Only a proven domain sends its addresses to the provider, and
//! one organization at most proves a domain. Admins only; every change audited.

pub mod dns;

use axum::extract::State;
use axum::http::StatusCode;
use printworks_common::audit::{AuditEvent, Outcome};
use printworks_common::auth::{Auth, Role};
use printworks_common::crypto::random_token;
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Path};
use printworks_common::{ApiError, AppContext};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use printworks_account::federation::provider::Reach;

use crate::OrgState;
use crate::access::{membership, relock};

/// Most e-mail domains one provider vouches for.
pub const MAX_DOMAINS: usize = 20;
/// The DNS name under a domain that holds its proof.
pub const TXT_LABEL: &str = "_printworks-challenge";
const TXT_PREFIX: &str = "printworks-domain-verification=";

pub fn secret_context(org: Uuid) -> String {
    format!("sso-client-secret:{org}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoRequest {
    issuer: String,
    client_id: String,
    /// Required when the provider is first configured; omitted, the stored one stays.
    client_secret: Option<SecretString>,
    domains: Vec<String>,
    default_role: String,
    enforced: bool,
}

#[derive(Serialize)]
pub struct SsoView {
    issuer: String,
    client_id: String,
    default_role: String,
    enforced: bool,
    /// Where the provider must send people back (register it there).
    redirect_uri: String,
    domains: Vec<DomainView>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct DomainView {
    domain: String,
    /// `pending` until the TXT record is found, then `verified`.
    #[sqlx(skip)]
    status: &'static str,
    #[sqlx(skip)]
    txt_name: String,
    #[sqlx(skip)]
    txt_value: String,
    #[serde(skip)]
    challenge: String,
    #[serde(with = "time::serde::rfc3339::option")]
    verified_at: Option<OffsetDateTime>,
}

/// A domain name as an admin typed it: lower case, labels of letters, digits and
/// hyphens, at least two labels.
pub fn parse_domain(input: &str) -> Result<String, ApiError> {
    let d = input.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if d.len() < 3 || d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
        return Err(ApiError::invalid(format!(
            "{:?} is not a domain name (like example.com).",
            input.chars().take(100).collect::<String>()
        )));
    }
    Ok(d)
}

/// Whether the organization proved the e-mail domain.
pub async fn proves(db: impl sqlx::PgExecutor<'_>, org: Uuid, domain: &str) -> sqlx::Result<bool> {
    let proven: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM org_sso_domains
         WHERE organization_id = $1 AND domain = $2 AND verified_at IS NOT NULL",
    )
    .bind(org)
    .bind(domain)
    .fetch_optional(db)
    .await?;
    Ok(proven.is_some())
}

/// What a change that would leave the organization's people no way to sign in under a
/// federation-only policy is answered.
fn federation_only(detail: &str) -> ApiError {
    Problem::new(
        StatusCode::CONFLICT,
        "conflict",
        "The policy allows only sign-in through this provider",
    )
    .detail(detail.to_owned())
    .into()
}

fn domain_claimed(domain: &str) -> ApiError {
    Problem::new(
        StatusCode::CONFLICT,
        "domain-claimed",
        "Another organization has proven this domain",
    )
    .detail(format!(
        "{domain} is already proven by another organization; its addresses sign in there."
    ))
    .into()
}

fn invalid_provider(reason: &str) -> ApiError {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-identity-provider",
        "The identity provider cannot be used",
    )
    .detail(reason.to_owned())
    .into()
}

async fn view(ctx: &AppContext, org: Uuid) -> Result<Option<SsoView>, ApiError> {
    let row: Option<(String, String, String, bool, OffsetDateTime, OffsetDateTime)> =
        sqlx::query_as(
            "SELECT issuer, client_id, default_role, enforced, created_at, updated_at
             FROM org_identity_providers WHERE organization_id = $1",
        )
        .bind(org)
        .fetch_optional(&ctx.db)
        .await?;
    let Some((issuer, client_id, default_role, enforced, created_at, updated_at)) = row else {
        return Ok(None);
    };
    let mut domains: Vec<DomainView> = sqlx::query_as(
        "SELECT domain, challenge, verified_at FROM org_sso_domains
         WHERE organization_id = $1 ORDER BY domain",
    )
    .bind(org)
    .fetch_all(&ctx.db)
    .await?;
    for d in &mut domains {
        d.status = if d.verified_at.is_some() {
            "verified"
        } else {
            "pending"
        };
        d.txt_name = format!("{TXT_LABEL}.{}", d.domain);
        d.txt_value = format!("{TXT_PREFIX}{}", d.challenge);
    }
    Ok(Some(SsoView {
        issuer,
        client_id,
        default_role,
        enforced,
        redirect_uri: ctx
            .settings
            .public_url
            .link(printworks_account::federation::signin::CALLBACK_PATH),
        domains,
        created_at,
        updated_at,
    }))
}

/// The configuration as the routes answer it: 404 if there is none.
async fn answer(ctx: &AppContext, org: Uuid) -> Result<Json<SsoView>, ApiError> {
    view(ctx, org)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

pub async fn get(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
) -> Result<Json<SsoView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    answer(&state.ctx, org).await
}

pub async fn put(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
    Json(req): Json<SsoRequest>,
) -> Result<Json<SsoView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    m.require_person()?;
    let issuer = req.issuer.trim().to_owned();
    let client_id = req.client_id.trim().to_owned();
    if client_id.is_empty() || client_id.len() > 255 {
        return Err(ApiError::invalid("client_id must be 1 to 255 characters."));
    }
    let role = match Role::parse(&req.default_role) {
        Some(r @ (Role::Member | Role::Guest)) => r,
        _ => {
            return Err(ApiError::invalid(
                "default_role must be member or guest (admins are made by admins).",
            ));
        }
    };
    if req.domains.is_empty() || req.domains.len() > MAX_DOMAINS {
        return Err(ApiError::invalid(format!(
            "domains must name 1 to {MAX_DOMAINS} e-mail domains."
        )));
    }
    let mut domains = req
        .domains
        .iter()
        .map(|d| parse_domain(d))
        .collect::<Result<Vec<_>, _>>()?;
    domains.sort();
    domains.dedup();
    if let Some(secret) = &req.client_secret {
        let n = secret.expose_secret().len();
        if n == 0 || n > 1000 {
            return Err(ApiError::invalid(
                "client_secret must be 1 to 1000 characters.",
            ));
        }
    }
    // The provider is asked before anything is stored: a wrong issuer, one that cannot
    // be reached or whose metadata is unfit is refused with the reason.
    let reach = Reach::from_settings(&state.ctx.settings.account);
    printworks_account::federation::provider::discover(&issuer, reach)
        .await
        .map_err(|reason| invalid_provider(&reason))?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let fresh = relock(&mut tx, &m).await?;
    let admin = fresh.require_admin()?;
    for d in &domains {
        let elsewhere: Option<Uuid> = sqlx::query_scalar(
            "SELECT organization_id FROM org_sso_domains
             WHERE domain = $1 AND verified_at IS NOT NULL AND organization_id <> $2",
        )
        .bind(d)
        .bind(org)
        .fetch_optional(&mut *tx)
        .await?;
        if elsewhere.is_some() {
            return Err(domain_claimed(d));
        }
    }
    let sealed = req.client_secret.as_ref().map(|s| {
        state
            .ctx
            .secrets
            .seal(&secret_context(org), s.expose_secret().as_bytes())
    });
    let before: Option<(String, String)> = sqlx::query_as(
        "SELECT issuer, client_id FROM org_identity_providers WHERE organization_id = $1",
    )
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    // Another provider (or another client at it) vouches for nothing the old one proved:
    // its secret must be given anew, and every domain proven again.
    let replaced = before
        .as_ref()
        .is_some_and(|(i, c)| i != &issuer || c != &client_id);
    if replaced && sealed.is_none() {
        return Err(ApiError::invalid(
            "client_secret is required when the issuer or client_id changes.",
        ));
    }
    let allowed = crate::policy::of(&mut *tx, org)
        .await?
        .map(|p| p.allowed_auth);
    if allowed.as_deref() == Some("federation") {
        // Sign-in goes through proven domains: while the policy allows nothing else, no
        // change may leave a proven domain unproven.
        let proven: Vec<String> = sqlx::query_scalar(
            "SELECT domain FROM org_sso_domains WHERE organization_id = $1 AND verified_at IS NOT NULL",
        )
        .bind(org)
        .fetch_all(&mut *tx)
        .await?;
        if replaced || proven.iter().any(|d| !domains.contains(d)) {
            return Err(federation_only(
                "This change would leave a proven domain unproven, and nobody of it could sign in: set the policy's allowed_auth to both first.",
            ));
        }
    }
    if req.enforced && allowed.as_deref() == Some("password") {
        return Err(ApiError::invalid(
            "enforced would leave the domains' addresses no way to sign in while the policy's allowed_auth is password: change the policy first.",
        ));
    }
    let updated = sqlx::query(
        "UPDATE org_identity_providers SET issuer = $2, client_id = $3,
             client_secret_sealed = coalesce($4, client_secret_sealed),
             default_role = $5, enforced = $6, updated_at = $7
         WHERE organization_id = $1",
    )
    .bind(org)
    .bind(&issuer)
    .bind(&client_id)
    .bind(&sealed)
    .bind(role.as_str())
    .bind(req.enforced)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        let Some(sealed) = &sealed else {
            return Err(ApiError::invalid(
                "client_secret is required when the provider is first configured.",
            ));
        };
        sqlx::query(
            "INSERT INTO org_identity_providers (organization_id, issuer, client_id,
                 client_secret_sealed, default_role, enforced, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(org)
        .bind(&issuer)
        .bind(&client_id)
        .bind(sealed)
        .bind(role.as_str())
        .bind(req.enforced)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM org_sso_domains WHERE organization_id = $1 AND domain <> ALL($2)")
        .bind(org)
        .bind(&domains)
        .execute(&mut *tx)
        .await?;
    if replaced {
        sqlx::query(
            "UPDATE org_sso_domains SET verified_at = NULL, challenge = $2 || '.' || domain
             WHERE organization_id = $1",
        )
        .bind(org)
        .bind(random_token())
        .execute(&mut *tx)
        .await?;
    }
    for d in &domains {
        sqlx::query(
            "INSERT INTO org_sso_domains (organization_id, domain, challenge, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(d)
        .bind(random_token())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    AuditEvent::new("sso.configured", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .detail("issuer", issuer.as_str())
        .detail("client_id", client_id.as_str())
        .detail("domains", domains.join(" "))
        .detail("default_role", role.as_str())
        .detail("enforced", req.enforced)
        .detail("client_secret_changed", sealed.is_some())
        .detail("domains_to_prove_again", replaced)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    answer(&state.ctx, org).await
}

pub async fn delete(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path(org): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    m.require_person()?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let fresh = relock(&mut tx, &m).await?;
    let admin = fresh.require_admin()?;
    let policy = crate::policy::of(&mut *tx, org).await?;
    if policy.is_some_and(|p| p.allowed_auth == "federation") {
        return Err(federation_only(
            "Nobody could sign in to act here any more: set the policy's allowed_auth to both first.",
        ));
    }
    let removed = sqlx::query("DELETE FROM org_identity_providers WHERE organization_id = $1")
        .bind(org)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::not_found());
    }
    AuditEvent::new("sso.removed", admin.audit_actor(), Outcome::Success)
        .organization(org)
        .source(client.addr)
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn verify_domain(
    State(state): State<OrgState>,
    auth: Auth,
    client: ClientInfo,
    Path((org, domain)): Path<(Uuid, String)>,
) -> Result<Json<SsoView>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    m.require_person()?;
    let domain = parse_domain(&domain).map_err(|_| ApiError::not_found())?;
    let challenge: Option<(String, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT challenge, verified_at FROM org_sso_domains
         WHERE organization_id = $1 AND domain = $2",
    )
    .bind(org)
    .bind(&domain)
    .fetch_optional(&state.ctx.db)
    .await?;
    let Some((challenge, verified_at)) = challenge else {
        return Err(ApiError::not_found());
    };
    if verified_at.is_none() {
        let name = format!("{TXT_LABEL}.{domain}.");
        let expected = format!("{TXT_PREFIX}{challenge}");
        let found = dns::txt(state.ctx.settings.org.dns_server, &name).await;
        let proven = found
            .as_ref()
            .is_ok_and(|values| values.iter().any(|v| v == &expected));
        let now = state.ctx.now();
        let mut tx = state.ctx.db.begin().await?;
        let fresh = relock(&mut tx, &m).await?;
        let admin = fresh.require_admin()?;
        if !proven {
            let why = match &found {
                Ok(v) if v.is_empty() => format!("No TXT record was found at {name}"),
                Ok(_) => format!("The TXT records at {name} do not hold {expected}"),
                Err(e) => format!("The DNS lookup of {name} failed ({e})"),
            };
            AuditEvent::new("sso.domain_verified", admin.audit_actor(), Outcome::Failure)
                .organization(org)
                .source(client.addr)
                .detail("domain", domain.as_str())
                .write(&mut tx, now)
                .await?;
            tx.commit().await?;
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "domain-not-proven",
                "The domain's DNS does not prove it is yours",
            )
            .detail(format!(
                "{why}. Add a TXT record {name} with the value {expected}, wait for it to be published, and try again."
            ))
            .into());
        }
        let claimed = sqlx::query_scalar::<_, i32>(
            "SELECT 1 FROM org_sso_domains WHERE domain = $1 AND verified_at IS NOT NULL",
        )
        .bind(&domain)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_some() {
            return Err(domain_claimed(&domain));
        }
        // Only the challenge that was found: a provider swapped meanwhile made a new one.
        let marked = sqlx::query(
            "UPDATE org_sso_domains SET verified_at = $3
             WHERE organization_id = $1 AND domain = $2 AND challenge = $4 AND verified_at IS NULL",
        )
        .bind(org)
        .bind(&domain)
        .bind(now)
        .bind(&challenge)
        .execute(&mut *tx)
        .await;
        match marked {
            // Another organization proved it a moment ago (the unique index decides).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(domain_claimed(&domain));
            }
            Ok(done) if done.rows_affected() == 0 => {
                return Err(ApiError::conflict(
                    "The configuration changed while the domain was checked: look at it again and verify anew.",
                ));
            }
            other => other?,
        };
        AuditEvent::new("sso.domain_verified", admin.audit_actor(), Outcome::Success)
            .organization(org)
            .source(client.addr)
            .detail("domain", domain.as_str())
            .write(&mut tx, now)
            .await?;
        tx.commit().await?;
    }
    answer(&state.ctx, org).await
}
