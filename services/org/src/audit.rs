//! The audit log, read over HTTP: `GET …/{org}/audit-events` (admins; filter by time,
//! actor and action; paginated), `GET …/{org}/audit-events/verify` (the organization's
//! chain checked record by record), `GET …/{org}/audit-events/export` (NDJSON: each
//! record's canonical text with its hashes, re-verifiable by anyone).
//!
//! What an admin sees: the organization's chain, and the events of no organization
//! about the people themselves (logins, sessions, MFA and password changes) of its
//! current members since they joined — not what they did with other organizations'
//! apps (consents, tokens), which is theirs and those organizations' business.
//!
//! Only the handlers are here: parsing the filter, checking that the caller is an admin,
//! saying who the members are ([`crate::members::joined`]) and shaping the responses.
//! The audit tables and everything that reads them — the queries, checkpoints,
//! verification (also `printworks audit verify`) and retention (run by this service's
//! background job, see `spawn_retention`) — are `printworks_common::audit`'s.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::audit::events::{self, Event, EventFilter};
use printworks_common::audit::integrity::{RetentionRule, Verification, verify_chain};
use printworks_common::auth::Auth;
use printworks_common::http::{Json, Page, Paginated, Path, Query};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OrgState;
use crate::access::membership;
use crate::members;

#[derive(Deserialize)]
pub struct Filter {
    /// RFC 3339: events at or after.
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    /// RFC 3339: events before.
    #[serde(default, with = "time::serde::rfc3339::option")]
    to: Option<OffsetDateTime>,
    /// `user:<uuid>`, `client:<id>`, `printer:<uuid>`, `anonymous`, `system`.
    actor: Option<String>,
    /// An action (`session.login`) or a prefix ending in a dot (`session.`).
    action: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

impl Filter {
    /// The filter the queries take, once the actor and action are checked.
    fn events(&self) -> Result<EventFilter, ApiError> {
        let (actor_type, actor_id) = parse_actor(self.actor.as_deref())?;
        check_action(&self.action)?;
        Ok(EventFilter {
            from: self.from,
            to: self.to,
            actor_type,
            actor_id,
            action: self.action.clone(),
        })
    }
}

fn parse_actor(actor: Option<&str>) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(a) = actor else {
        return Ok((None, None));
    };
    let bad = || {
        ApiError::bad_request(
            "actor must be user:<id>, client:<id>, printer:<id>, anonymous or system.",
        )
    };
    match a.split_once(':') {
        Some((kind @ ("user" | "client" | "printer"), id)) if !id.is_empty() && id.len() <= 100 => {
            Ok((Some(kind.to_owned()), Some(id.to_owned())))
        }
        None if matches!(a, "anonymous" | "system") => Ok((Some(a.to_owned()), None)),
        _ => Err(bad()),
    }
}

fn check_action(action: &Option<String>) -> Result<(), ApiError> {
    if action
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.len() > 100 || a.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request("action must be 1 to 100 characters."));
    }
    Ok(())
}

pub async fn list(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(f): Query<Filter>,
) -> Result<Json<Paginated<Event>>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    let page = Page::from_query(&printworks_common::http::PageQuery {
        limit: f.limit,
        cursor: f.cursor.clone(),
    })?;
    let filter = f.events()?;
    let members = members::joined(&state.ctx.db, org).await?;
    let rows = events::page(
        &state.ctx.db,
        org,
        &members,
        &filter,
        page.after,
        page.fetch_limit(),
    )
    .await?;
    Ok(Json(page.finish(rows, |e| (e.occurred_at, e.id))))
}

/// NDJSON, oldest first: `{"chain_id", "chain_index", "record", "prev_hash", "hash"}`
/// per line, where `record` is the exact text that was hashed (see
/// [`events::export`]; each page of it reads the members again).
pub async fn export(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
    Query(f): Query<Filter>,
) -> Result<Response, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    let filter = f.events()?;
    let db = state.ctx.db.clone();
    let members = {
        let db = db.clone();
        move || {
            let db = db.clone();
            async move { members::joined(&db, org).await }
        }
    };
    let stream = events::export(db, org, members, filter);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn verify(
    State(state): State<OrgState>,
    auth: Auth,
    Path(org): Path<Uuid>,
) -> Result<Json<Verification>, ApiError> {
    let m = membership(&state.ctx, org, &auth).await?;
    m.require_admin()?;
    let rule = RetentionRule {
        now: state.ctx.now(),
        retention: state.ctx.settings.org.audit_retention,
    };
    Ok(Json(
        verify_chain(&state.ctx.db, &state.ctx.secrets, org, rule).await?,
    ))
}
