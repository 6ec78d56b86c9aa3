//! An organization's audit events as its admins see them, for the org service's
//! `GET /org/v1/organizations/{org}/audit-events` ([`page`]) and `…/audit-events/export`
//! ([`export`]): the organization's chain, and the events of no organization about the
//! people themselves (logins, sessions, MFA and password changes) of its current members
//! since they joined — not what they did with other organizations' apps (consents,
//! tokens), which is theirs and those organizations' business.
//!
//! Who the members are, and since when, is the org service's to say (its
//! `organization_members` table, which this crate does not read): the caller passes them
//! in as `(user id, joined at)` pairs, which the queries read as a derived table
//! (`unnest` of two arrays, one element per member: the arrays are as long as the
//! organization has members).

use std::collections::VecDeque;

use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::crypto::hex;

/// What to read of the events (every field optional: `None` filters nothing).
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Events at or after.
    pub from: Option<OffsetDateTime>,
    /// Events before.
    pub to: Option<OffsetDateTime>,
    /// `user`, `client`, `printer`, `anonymous` or `system`.
    pub actor_type: Option<String>,
    /// The actor's id (a user's or printer's uuid, a client's id).
    pub actor_id: Option<String>,
    /// An action (`session.login`) or a prefix ending in a dot (`session.`).
    pub action: Option<String>,
}

/// One event, as the listing shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Event {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub action: String,
    pub outcome: String,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub source_addr: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    #[sqlx(json)]
    pub details: Value,
    /// Which chain (the organization's, or the global one) and where in it.
    pub chain_id: Uuid,
    pub chain_index: i64,
}

/// Events of organization $1 visible to its admins, as described in the module docs,
/// with the filters $2..$6; its members are $7 (user ids) and $8 (when each joined), in
/// the same order. `$tail` adds a cursor (from $9), orders and limits.
macro_rules! org_events {
    ($columns:literal, $tail:literal) => {
        concat!(
            "SELECT ", $columns, " FROM audit_events e
             WHERE (e.organization_id = $1
                    OR (e.organization_id IS NULL AND e.actor_type = 'user'
                        AND split_part(e.action, '.', 1) IN ('session', 'totp', 'password', 'user')
                        AND EXISTS (
                          SELECT 1 FROM unnest($7::uuid[], $8::timestamptz[]) AS m(user_id, joined_at)
                          WHERE m.user_id::text = e.actor_id
                            AND m.joined_at <= e.occurred_at)))
               AND ($2::timestamptz IS NULL OR e.occurred_at >= $2)
               AND ($3::timestamptz IS NULL OR e.occurred_at < $3)
               AND ($4::text IS NULL OR e.actor_type = $4)
               AND ($5::text IS NULL OR e.actor_id = $5)
               AND ($6::text IS NULL OR e.action = $6 OR (right($6, 1) = '.' AND starts_with(e.action, $6))) ",
            $tail
        )
    };
}

/// The members as the two arrays the queries take.
fn member_arrays(members: &[(Uuid, OffsetDateTime)]) -> (Vec<Uuid>, Vec<OffsetDateTime>) {
    members.iter().copied().unzip()
}

/// One page of organization `org`'s events, newest first (by time, then id): at most
/// `limit` of them, older than `after` (the time and id of the previous page's last
/// event). `members` are the organization's current members with when each joined.
pub async fn page(
    db: &PgPool,
    org: Uuid,
    members: &[(Uuid, OffsetDateTime)],
    filter: &EventFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    let (after_time, after_id) = after.unzip();
    let (user_ids, joined_at) = member_arrays(members);
    sqlx::query_as(org_events!(
        "e.id, e.occurred_at, e.action, e.outcome, e.actor_type, e.actor_id, e.source_addr,
         e.target_type, e.target_id, (e.record::json -> 'details') AS details, e.chain_id, e.chain_index",
        "AND ($9::timestamptz IS NULL OR (e.occurred_at, e.id) < ($9, $10))
         ORDER BY e.occurred_at DESC, e.id DESC LIMIT $11"
    ))
    .bind(org)
    .bind(filter.from)
    .bind(filter.to)
    .bind(&filter.actor_type)
    .bind(&filter.actor_id)
    .bind(&filter.action)
    .bind(user_ids)
    .bind(joined_at)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Organization `org`'s events as NDJSON, oldest first, one line per record:
/// `{"chain_id", "chain_index", "record", "prev_hash", "hash"}`, where `record` is the
/// exact text that was hashed (so anyone can verify it again).
///
/// One page of the export at a time, each read with a connection taken from the pool
/// for the query alone: a client that reads slowly (or not at all) holds no database
/// connection, only the page in memory. `members` gives the organization's current
/// members with when each joined; it is called again for every page, so each page sees
/// the members of its moment.
pub fn export<M, F>(
    db: PgPool,
    org: Uuid,
    members: M,
    filter: EventFilter,
) -> impl Stream<Item = Result<String, std::io::Error>> + Send + 'static
where
    M: FnMut() -> F + Send + 'static,
    F: Future<Output = sqlx::Result<Vec<(Uuid, OffsetDateTime)>>> + Send + 'static,
{
    const PAGE: usize = 500;
    struct Export<M> {
        db: PgPool,
        org: Uuid,
        members: M,
        filter: EventFilter,
        after: Option<(OffsetDateTime, Uuid, i64)>,
        lines: VecDeque<String>,
        done: bool,
    }
    type ExportRow = (OffsetDateTime, Uuid, i64, String, Vec<u8>, Vec<u8>);
    let start = Export {
        db,
        org,
        members,
        filter,
        after: None,
        lines: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(start, |mut e| async move {
        loop {
            if let Some(line) = e.lines.pop_front() {
                return Some((Ok(line), e));
            }
            if e.done {
                return None;
            }
            let (after_time, after_chain, after_index) = match e.after {
                Some((t, c, i)) => (Some(t), Some(c), Some(i)),
                None => (None, None, None),
            };
            let page: sqlx::Result<Vec<ExportRow>> = async {
                let (user_ids, joined_at) = member_arrays(&(e.members)().await?);
                sqlx::query_as(org_events!(
                    "e.occurred_at, e.chain_id, e.chain_index, e.record, e.prev_hash, e.hash",
                    "AND ($9::timestamptz IS NULL OR (e.occurred_at, e.chain_id, e.chain_index) > ($9, $10, $11))
                     ORDER BY e.occurred_at, e.chain_id, e.chain_index LIMIT 500"
                ))
                .bind(e.org)
                .bind(e.filter.from)
                .bind(e.filter.to)
                .bind(&e.filter.actor_type)
                .bind(&e.filter.actor_id)
                .bind(&e.filter.action)
                .bind(user_ids)
                .bind(joined_at)
                .bind(after_time)
                .bind(after_chain)
                .bind(after_index)
                .fetch_all(&e.db)
                .await
            }
            .await;
            let page = match page {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(error = %err, "audit export");
                    e.done = true;
                    return Some((Err(std::io::Error::other(err)), e));
                }
            };
            e.done = page.len() < PAGE;
            if let Some((t, c, i, ..)) = page.last() {
                e.after = Some((*t, *c, *i));
            }
            e.lines.extend(
                page.into_iter()
                    .map(|(_, chain, index, record, prev, hash)| {
                        format!(
                            "{}\n",
                            serde_json::json!({
                                "chain_id": chain,
                                "chain_index": index,
                                "record": record,
                                "prev_hash": hex(&prev),
                                "hash": hex(&hash),
                            })
                        )
                    }),
            );
        }
    })
}
