//! Who may do what in an organization. The role is read from the database on every
//! call — never from a token — so a change takes effect on the next request.
//!
//! Authorization by type (the habit of lldap's access-control crate): a [`Membership`]
//! is only obtained for a caller who belongs to the organization, and the functions
//! that change things admins or writers may change take an [`Admin`] or a [`Writer`],
//! which only [`Membership::require_admin`] and [`Membership::require_writer`] make.
//! A forgotten check is a type error, not a hole.

use axum::http::StatusCode;
use printworks_account::oauth::clients::client_role;
use printworks_common::audit;
use printworks_common::auth::{Caller, Role, Subject};
use printworks_common::error::Problem;
use printworks_common::{ApiError, AppContext};
use sqlx::PgConnection;
use uuid::Uuid;

/// A caller's standing in one organization.
#[derive(Clone, Debug)]
pub struct Membership {
    pub org: Uuid,
    pub role: Role,
    who: Who,
}

#[derive(Clone, Debug)]
enum Who {
    User(Uuid),
    /// A confidential client acting inside its own organization (client_credentials).
    Client(String),
}

/// Proof that the caller is an admin of [`Membership::org`]. Only
/// [`Membership::require_admin`] makes one (the field is private).
#[derive(Clone, Copy, Debug)]
pub struct Admin<'a>(&'a Membership);

/// Proof that the caller is an admin or a member (not a guest) of [`Membership::org`].
/// Only [`Membership::require_writer`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a>(&'a Membership);

impl std::ops::Deref for Admin<'_> {
    type Target = Membership;
    fn deref(&self) -> &Membership {
        self.0
    }
}

impl std::ops::Deref for Writer<'_> {
    type Target = Membership;
    fn deref(&self) -> &Membership {
        self.0
    }
}

pub fn forbidden(detail: &str) -> ApiError {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Your role in this organization does not allow this",
    )
    .detail(detail)
    .into()
}

impl Membership {
    /// The person, if the caller is one (not a client acting on its own).
    pub fn user_id(&self) -> Option<Uuid> {
        match &self.who {
            Who::User(id) => Some(*id),
            Who::Client(_) => None,
        }
    }

    pub fn audit_actor(&self) -> audit::Actor {
        match &self.who {
            Who::User(id) => audit::Actor::User(*id),
            Who::Client(id) => audit::Actor::Client(id.clone()),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The caller's role read again on `conn` (inside a transaction that holds the
    /// organization's lock): `None` if they no longer belong — a person removed, a
    /// client revoked.
    pub async fn current_role(&self, conn: &mut PgConnection) -> sqlx::Result<Option<Role>> {
        match &self.who {
            Who::User(id) => crate::role_of(conn, self.org, *id).await,
            Who::Client(id) => client_role(conn, self.org, id).await,
        }
    }

    pub fn require_admin(&self) -> Result<Admin<'_>, ApiError> {
        if self.role == Role::Admin {
            Ok(Admin(self))
        } else {
            Err(forbidden("This needs the admin role."))
        }
    }

    pub fn require_writer(&self) -> Result<Writer<'_>, ApiError> {
        match self.role {
            Role::Admin | Role::Member => Ok(Writer(self)),
            Role::Guest => Err(forbidden(
                "Guests cannot change the organization, its teams or its printers.",
            )),
        }
    }

    /// The person behind the call, for what only a person can do (own a project, …).
    pub fn require_person(&self) -> Result<Uuid, ApiError> {
        self.user_id()
            .ok_or_else(|| forbidden("This needs a person; an automated client cannot do it."))
    }
}

/// A person must have confirmed their e-mail address before they add what outlives a
/// session (an organization, a printer, a client): 403 `email-unverified` otherwise.
/// An automated client acting on its own has no address and passes.
pub async fn require_verified(ctx: &AppContext, m: &Membership) -> Result<(), ApiError> {
    match m.user_id() {
        Some(user) => printworks_account::verification::require(&ctx.db, user).await,
        None => Ok(()),
    }
}

/// The caller's membership of `org`. Someone who does not belong to it gets 404, as if
/// it did not exist: other tenants learn nothing.
pub async fn membership(
    ctx: &AppContext,
    org: Uuid,
    caller: &Caller,
) -> Result<Membership, ApiError> {
    match &caller.subject {
        Subject::User(user_id) => {
            let role = crate::role_of(&ctx.db, org, *user_id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok(Membership {
                org,
                role,
                who: Who::User(*user_id),
            })
        }
        Subject::Client { organization_id } => {
            if *organization_id != org {
                return Err(ApiError::not_found());
            }
            let role = client_role(&ctx.db, org, &caller.client_id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok(Membership {
                org,
                role,
                who: Who::Client(caller.client_id.clone()),
            })
        }
    }
}

/// Takes the organization's row lock for the rest of the transaction on `conn`. Every
/// change to who belongs, with which role, and to what admins granted (invitations,
/// clients) takes it first, so such changes happen one after another.
pub async fn lock_org(conn: &mut PgConnection, org: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE")
        .bind(org)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the organization's lock (held for the rest of the transaction on `conn`) and
/// reads the caller's role again under it; 404 if they no longer belong.
pub async fn lock_org_and_role(conn: &mut PgConnection, m: &Membership) -> Result<Role, ApiError> {
    lock_org(&mut *conn, m.org).await?;
    m.current_role(conn).await?.ok_or_else(ApiError::not_found)
}

/// The caller's standing, read again under the organization's lock: someone removed or
/// demoted (or a client revoked) a moment ago cannot act on a membership read before.
pub async fn still_admin(conn: &mut PgConnection, m: &Membership) -> Result<(), ApiError> {
    match m.current_role(conn).await? {
        Some(Role::Admin) => Ok(()),
        Some(_) => Err(forbidden("This needs the admin role.")),
        None => Err(ApiError::not_found()),
    }
}
