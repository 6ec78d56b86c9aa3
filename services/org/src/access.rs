//! Who may do what in an organization. The role is read from the database on every
//! call — never from a token — so a change takes effect on the next request.
//!
//! Authorization by type (the habit of lldap's access-control crate): a [`Membership`]
//! is only obtained for a caller who belongs to the organization, and what changes
//! anything needs a proof the rules below make: an [`Admin`], a [`Writer`] (admin or
//! member) or an [`Allowed`] (a rule about the thing itself: leaving, one's own
//! project, the printer one added). Every change is audited, and only a proof names
//! the actor of an audit event ([`Admin::audit_actor`] …), so a change whose check was
//! forgotten does not compile; the functions that change printers for other services
//! take the proof too ([`crate::printers::register`], [`crate::printers::remove`]).
//! Every rule is here: handlers never compare roles themselves. Under the
//! organization's lock, [`relock`] reads the membership again and the proof is asked
//! for once more.

use printworks_account::oauth::clients::client_role;
use printworks_common::audit;
use printworks_common::auth::{Caller, Role, Subject};
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

/// Proof that a rule about the thing at hand lets the caller act on it (leaving the
/// organization, sharing one's own project, removing the printer one added). Only the
/// rules of [`Membership`] make one.
#[derive(Clone, Copy, Debug)]
pub struct Allowed<'a>(&'a Membership);

impl std::ops::Deref for Allowed<'_> {
    type Target = Membership;
    fn deref(&self) -> &Membership {
        self.0
    }
}

macro_rules! audited {
    ($($proof:ident),*) => {$(
        impl $proof<'_> {
            /// Who did it, for the audit log: only a proof says.
            pub fn audit_actor(&self) -> audit::Actor {
                self.0.actor()
            }
        }
    )*};
}

audited!(Admin, Writer, Allowed);

impl<'a> From<Admin<'a>> for Writer<'a> {
    fn from(a: Admin<'a>) -> Self {
        Writer(a.0)
    }
}

impl<'a> From<Writer<'a>> for Allowed<'a> {
    fn from(w: Writer<'a>) -> Self {
        Allowed(w.0)
    }
}

impl<'a> From<Admin<'a>> for Allowed<'a> {
    fn from(a: Admin<'a>) -> Self {
        Allowed(a.0)
    }
}

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

pub use printworks_common::error::role_forbids as forbidden;

impl Membership {
    /// The person, if the caller is one (not a client acting on its own).
    pub fn user_id(&self) -> Option<Uuid> {
        match &self.who {
            Who::User(id) => Some(*id),
            Who::Client(_) => None,
        }
    }

    pub(crate) fn actor(&self) -> audit::Actor {
        match &self.who {
            Who::User(id) => audit::Actor::User(*id),
            Who::Client(id) => audit::Actor::Client(id.clone()),
        }
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

    /// The caller leaves the organization (removing themselves), or an admin removes
    /// `user`.
    pub fn require_admin_or_self(&self, user: Uuid) -> Result<Allowed<'_>, ApiError> {
        if self.user_id() == Some(user) {
            return Ok(Allowed(self));
        }
        self.require_admin()
            .map(Allowed::from)
            .map_err(|_| forbidden("Only admins remove others; anyone may leave."))
    }

    /// Admins, and a member for what they made themselves (`made_by`: the team they
    /// created, the printer they added); guests never.
    pub fn require_admin_or_maker(
        &self,
        made_by: Option<Uuid>,
        refusal: &str,
    ) -> Result<Writer<'_>, ApiError> {
        match self.role {
            Role::Admin => Ok(Writer(self)),
            Role::Member if self.user_id().is_some() && self.user_id() == made_by => {
                Ok(Writer(self))
            }
            _ => Err(forbidden(refusal)),
        }
    }

    /// The caller's own grant on the thing at hand, as the thing's query read it (a
    /// project shared with them to edit): `granted` or 403 with `refusal`.
    pub fn require_granted(&self, granted: bool, refusal: &str) -> Result<Allowed<'_>, ApiError> {
        if granted {
            Ok(Allowed(self))
        } else {
            Err(forbidden(refusal))
        }
    }

    /// Admins and members; a guest only for what they own (`owner`).
    pub fn require_writer_or_owner(
        &self,
        owner: Option<Uuid>,
        refusal: &str,
    ) -> Result<Allowed<'_>, ApiError> {
        match self.role {
            Role::Admin | Role::Member => Ok(Allowed(self)),
            Role::Guest if self.user_id().is_some() && self.user_id() == owner => Ok(Allowed(self)),
            Role::Guest => Err(forbidden(refusal)),
        }
    }

    /// What a caller's view of teams and printers is narrowed to: `Some(person)` for a
    /// guest (only what is theirs or shared with them; an automated guest sees nothing
    /// personal), `None` for admins and members, who see the organization's.
    pub fn guest_scope(&self) -> Option<Uuid> {
        match self.role {
            Role::Guest => Some(self.user_id().unwrap_or(Uuid::nil())),
            Role::Admin | Role::Member => None,
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

/// The caller's memberships of every organization of theirs (a client: its own; at most
/// 100, oldest membership first) that accepts them now: one that refuses them (its
/// security policy, a role gone meanwhile) is left out, as its routes would refuse them;
/// any other failure is an error.
pub async fn memberships_everywhere(
    ctx: &AppContext,
    caller: &Caller,
) -> Result<Vec<Membership>, ApiError> {
    let orgs: Vec<Uuid> = match caller.subject {
        Subject::User(user) => {
            sqlx::query_scalar(
                "SELECT organization_id FROM organization_members WHERE user_id = $1
                 ORDER BY created_at LIMIT 100",
            )
            .bind(user)
            .fetch_all(&ctx.db)
            .await?
        }
        Subject::Client { organization_id } => vec![organization_id],
    };
    let mut out = Vec::with_capacity(orgs.len());
    for org in orgs {
        match membership(ctx, org, caller).await {
            Ok(m) => out.push(m),
            Err(ApiError::Problem(p))
                if matches!(
                    p.status(),
                    axum::http::StatusCode::FORBIDDEN | axum::http::StatusCode::NOT_FOUND
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
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
            // The organization's rules for how its people sign in, on every call.
            crate::policy::enforce(ctx, org, caller).await?;
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
/// reads the caller's membership again under it: someone removed or demoted (or a
/// client revoked) a moment ago cannot act on a membership read before. 404 if they no
/// longer belong; ask the fresh membership for the proof the change needs.
pub async fn relock(conn: &mut PgConnection, m: &Membership) -> Result<Membership, ApiError> {
    lock_org(&mut *conn, m.org).await?;
    let role = m
        .current_role(conn)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Membership {
        org: m.org,
        role,
        who: m.who.clone(),
    })
}
