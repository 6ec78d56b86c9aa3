//! OAuth client registration by organization admins:
//! `POST /account/v1/clients`, `GET /account/v1/clients?organization_id=`,
//! `DELETE /account/v1/clients/{client_id}`.
//!
//! Callable from the browser session or with an access token (`organization.write` to
//! change, `organization.read` to list); the caller must be an admin of the organization
//! now (read from the database). A client secret is shown once and stored as a digest.

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Caller, Role, ScopeSet};
use printworks_common::crypto::{base64url, random_bytes, random_token, token_digest};
use printworks_common::error::Problem;
use printworks_common::http::{ClientInfo, Json, Page, PageQuery, Paginated, Path, Query};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AccountState;
use crate::client_columns;
use crate::oauth::clients::{
    Client, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN,
    validate_redirect_uri,
};
use crate::session::SessionUser;

/// A person, signed in with the browser session or calling with an access token that
/// grants the route's scope (checked by the route table, [`crate::routes`]) and was
/// issued to a first-party client (the Printworks CLI): a third-party app must not mint
/// clients of its own, which would outlive the consent it was given.
pub struct Person {
    pub user_id: Uuid,
    /// The browser session, or the one the token came through: what the
    /// organization's policy is checked against.
    pub session_id: Option<Uuid>,
}

impl<St> FromRequestParts<St> for Person
where
    AccountState: FromRef<St>,
    St: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let (user_id, session_id) = if let Some(caller) = parts.extensions.get::<Caller>().cloned()
        {
            let account = AccountState::from_ref(state);
            let first_party: Option<bool> =
                sqlx::query_scalar("SELECT first_party FROM oauth_clients WHERE id = $1")
                    .bind(&caller.client_id)
                    .fetch_optional(&account.ctx.db)
                    .await?;
            if first_party != Some(true) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Only Printworks' own apps may manage OAuth clients",
                )
                .into());
            }
            let user = caller.user_id().ok_or_else(|| {
                printworks_common::auth::unauthenticated(
                    "This needs a token issued to a person.",
                    true,
                )
            })?;
            (user, caller.session_id)
        } else {
            let s = SessionUser::from_request_parts(parts, state).await?;
            (s.user_id(), Some(s.session.id))
        };
        Ok(Self {
            user_id,
            session_id,
        })
    }
}

/// 404 unless the person belongs to the organization (other tenants learn nothing); 403
/// when they do but are not an admin, or their sign-in does not meet the organization's
/// policy.
async fn require_admin(state: &AccountState, org: Uuid, person: &Person) -> Result<(), ApiError> {
    admin_only(state.orgs.role(org, person.user_id).await?)?;
    state
        .orgs
        .policy(org, person.user_id, person.session_id, state.ctx.now())
        .await
}

fn admin_only(role: Option<Role>) -> Result<(), ApiError> {
    match role {
        Some(Role::Admin) => Ok(()),
        Some(_) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Only organization admins may do this",
        )
        .into()),
        None => Err(ApiError::not_found()),
    }
}

#[derive(Deserialize)]
pub(crate) struct Register {
    organization_id: Uuid,
    name: String,
    #[serde(rename = "type")]
    client_type: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    scopes: Vec<String>,
    grant_types: Vec<String>,
    /// For client_credentials: the role the client holds in the organization.
    role: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Registered {
    client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(flatten)]
    client: ClientView,
}

#[derive(Serialize)]
pub struct ClientView {
    id: String,
    organization_id: Option<Uuid>,
    name: String,
    #[serde(rename = "type")]
    client_type: String,
    redirect_uris: Vec<String>,
    scopes: Vec<String>,
    grant_types: Vec<String>,
    role: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl From<Client> for ClientView {
    fn from(c: Client) -> Self {
        Self {
            id: c.id,
            organization_id: c.organization_id,
            name: c.name,
            client_type: c.client_type,
            redirect_uris: c.redirect_uris,
            scopes: c.scopes,
            grant_types: c.grant_types,
            role: c.role,
            created_at: c.created_at,
        }
    }
}

pub(crate) struct Checked {
    name: String,
    public: bool,
    redirect_uris: Vec<String>,
    scopes: ScopeSet,
    grants: Vec<&'static str>,
    role: Option<Role>,
}

fn check(req: &Register) -> Result<Checked, ApiError> {
    let name = super::display_name(&req.name)
        .map_err(|_| ApiError::invalid("name must be 1 to 100 characters."))?;
    let public = match req.client_type.as_str() {
        "public" => true,
        "confidential" => false,
        _ => return Err(ApiError::invalid("type must be public or confidential.")),
    };
    if req.redirect_uris.len() > 10 {
        return Err(ApiError::invalid("At most 10 redirect_uris."));
    }
    for uri in &req.redirect_uris {
        validate_redirect_uri(uri).map_err(ApiError::invalid)?;
    }
    if req.scopes.is_empty() || req.scopes.len() > 20 {
        return Err(ApiError::invalid("scopes must name 1 to 20 scopes."));
    }
    let scopes = ScopeSet::parse(&req.scopes.join(" ")).map_err(ApiError::invalid)?;
    let mut grants = Vec::new();
    for g in &req.grant_types {
        let known = [
            GRANT_AUTHORIZATION_CODE,
            GRANT_REFRESH_TOKEN,
            GRANT_CLIENT_CREDENTIALS,
        ]
        .into_iter()
        .find(|k| k == g)
        .ok_or_else(|| {
            ApiError::invalid(
                "grant_types may hold authorization_code, refresh_token, client_credentials.",
            )
        })?;
        if !grants.contains(&known) {
            grants.push(known);
        }
    }
    if grants.is_empty() {
        return Err(ApiError::invalid(
            "grant_types must name at least one grant.",
        ));
    }
    let code = grants.contains(&GRANT_AUTHORIZATION_CODE);
    let credentials = grants.contains(&GRANT_CLIENT_CREDENTIALS);
    if code && req.redirect_uris.is_empty() {
        return Err(ApiError::invalid(
            "authorization_code needs at least one redirect_uri.",
        ));
    }
    if !code && !req.redirect_uris.is_empty() {
        return Err(ApiError::invalid(
            "redirect_uris are only for authorization_code.",
        ));
    }
    if grants.contains(&GRANT_REFRESH_TOKEN) && !code {
        return Err(ApiError::invalid("refresh_token needs authorization_code."));
    }
    if credentials && public {
        return Err(ApiError::invalid(
            "A public client cannot use client_credentials.",
        ));
    }
    let role = match (&req.role, credentials) {
        (Some(r), true) => Some(
            Role::parse(r)
                .ok_or_else(|| ApiError::invalid("role must be admin, member or guest."))?,
        ),
        (None, true) => {
            return Err(ApiError::invalid(
                "client_credentials needs role: the role the client holds in the organization.",
            ));
        }
        (Some(_), false) => return Err(ApiError::invalid("role is only for client_credentials.")),
        (None, false) => None,
    };
    Ok(Checked {
        name,
        public,
        redirect_uris: req.redirect_uris.clone(),
        scopes,
        grants,
        role,
    })
}

pub(crate) async fn register(
    State(state): State<AccountState>,
    person: Person,
    client_info: ClientInfo,
    Json(req): Json<Register>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    require_admin(&state, req.organization_id, &person).await?;
    crate::verification::require(&state.ctx.db, person.user_id).await?;
    let c = check(&req)?;
    let id = base64url(&random_bytes::<16>());
    let secret = (!c.public).then(random_token);
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    // Again under the organization's lock: an admin demoted a moment ago (whose
    // clients were withdrawn then) registers nothing after.
    admin_only(
        state
            .orgs
            .role_locked(&mut tx, req.organization_id, person.user_id)
            .await?,
    )?;
    let client: Client = sqlx::query_as(concat!(
        "INSERT INTO oauth_clients (id, organization_id, name, client_type, secret_hash, redirect_uris,
                                    scopes, grant_types, role, first_party, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, false, $10, $11)
         RETURNING ",
        client_columns!()
    ))
    .bind(&id)
    .bind(req.organization_id)
    .bind(&c.name)
    .bind(if c.public { "public" } else { "confidential" })
    .bind(secret.as_deref().map(token_digest))
    .bind(&c.redirect_uris)
    .bind(c.scopes.to_strings())
    .bind(c.grants.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>())
    .bind(c.role.map(Role::as_str))
    .bind(person.user_id)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    AuditEvent::new(
        "oauth_client.register",
        Actor::User(person.user_id),
        Outcome::Success,
    )
    .organization(req.organization_id)
    .source(client_info.addr)
    .target("oauth_client", &id)
    .detail("scopes", c.scopes.to_string())
    .detail("grant_types", c.grants.join(" "))
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            client_id: id,
            client_secret: secret,
            client: client.into(),
        }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    organization_id: Uuid,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(crate) async fn list(
    State(state): State<AccountState>,
    person: Person,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paginated<ClientView>>, ApiError> {
    require_admin(&state, q.organization_id, &person).await?;
    let page = Page::from_query(&PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    })?;
    let (after_time, after_id) = page.after.unzip();
    // Client ids are base64url of 16 random bytes: the cursor carries those bytes as a
    // UUID, and the query compares the id text.
    let rows: Vec<Client> = sqlx::query_as(concat!(
        "SELECT ",
        client_columns!(),
        " FROM oauth_clients
         WHERE organization_id = $1 AND revoked_at IS NULL
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(q.organization_id)
    .bind(after_time)
    .bind(after_id.map(|u| base64url(u.as_bytes())))
    .bind(page.fetch_limit())
    .fetch_all(&state.ctx.db)
    .await?;
    let views: Vec<ClientView> = rows.into_iter().map(ClientView::from).collect();
    Ok(Json(page.finish(views, |c| {
        (c.created_at, Uuid::from_bytes(uuid_bytes_of(&c.id)))
    })))
}

fn uuid_bytes_of(id: &str) -> [u8; 16] {
    printworks_common::crypto::base64url_decode(id)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .unwrap_or_default()
}

pub(crate) async fn revoke(
    State(state): State<AccountState>,
    person: Person,
    client_info: ClientInfo,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let org: Option<Option<Uuid>> = sqlx::query_scalar(
        "SELECT organization_id FROM oauth_clients WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(&client_id)
    .fetch_optional(&state.ctx.db)
    .await?;
    let Some(Some(org)) = org else {
        return Err(ApiError::not_found());
    };
    require_admin(&state, org, &person).await?;
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    crate::oauth::clients::revoke(&mut tx, &client_id, now).await?;
    AuditEvent::new(
        "oauth_client.revoke",
        Actor::User(person.user_id),
        Outcome::Success,
    )
    .organization(org)
    .source(client_info.addr)
    .target("oauth_client", &client_id)
    .write(&mut tx, now)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
