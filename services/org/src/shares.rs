//! What printers and projects share: the grantee (a member or a team of the same
//! organization) and withdrawing a share, one way for both.

use std::net::IpAddr;

use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::audit::{AuditEvent, Outcome};
use serde::Deserialize;
use uuid::Uuid;

use crate::OrgState;
use crate::access::Allowed;

#[derive(Deserialize)]
pub struct Grantee {
    pub grantee_type: String,
    pub grantee_id: Uuid,
}

/// Checks that a share's grantee is a member of `org` or a team of `org`.
pub async fn check_grantee(
    state: &OrgState,
    org: Uuid,
    kind: &str,
    id: Uuid,
) -> Result<&'static str, ApiError> {
    match kind {
        "user" => {
            if crate::role_of(&state.ctx.db, org, id).await?.is_none() {
                return Err(ApiError::invalid(
                    "Share with members of the organization only.",
                ));
            }
            Ok("user")
        }
        "team" => {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM teams WHERE id = $1 AND organization_id = $2)",
            )
            .bind(id)
            .bind(org)
            .fetch_one(&state.ctx.db)
            .await?;
            if !exists {
                return Err(ApiError::invalid(
                    "Share with teams of the organization only.",
                ));
            }
            Ok("team")
        }
        _ => Err(ApiError::invalid("grantee_type must be user or team.")),
    }
}

/// What can be shared.
#[derive(Clone, Copy, Debug)]
pub enum Shared {
    Printer,
    Project,
}

impl Shared {
    fn name(self) -> &'static str {
        match self {
            Self::Printer => "printer",
            Self::Project => "project",
        }
    }
}

/// Withdraws the share of `id` with `kind:grantee` (404 if there is none), audited as
/// `<printer|project>.unshare`. The caller has checked that `m` may.
pub async fn remove_share(
    state: &OrgState,
    m: &Allowed<'_>,
    source: Option<IpAddr>,
    what: Shared,
    id: Uuid,
    kind: &str,
    grantee: Uuid,
) -> Result<StatusCode, ApiError> {
    let delete = match what {
        Shared::Printer => {
            "DELETE FROM printer_shares WHERE printer_id = $1 AND grantee_type = $2 AND grantee_id = $3"
        }
        Shared::Project => {
            "DELETE FROM project_shares WHERE project_id = $1 AND grantee_type = $2 AND grantee_id = $3"
        }
    };
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let removed = sqlx::query(delete)
        .bind(id)
        .bind(kind)
        .bind(grantee)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::not_found());
    }
    let action = match what {
        Shared::Printer => "printer.unshare",
        Shared::Project => "project.unshare",
    };
    AuditEvent::new(action, m.audit_actor(), Outcome::Success)
        .organization(m.org)
        .source(source)
        .target(what.name(), id)
        .detail("grantee", format!("{kind}:{grantee}"))
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
