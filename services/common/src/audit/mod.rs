//! The audit log writer every service calls, in the same transaction as the change it
//! records (so a failed change leaves no record and a failed record leaves no change).
//!
//! Records are append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and
//! hash-chained: each organization has its own chain, and events that belong to no
//! organization (a login, say) form the global chain. A record's `record` column holds
//! the exact canonical JSON that was hashed; `hash = SHA-256(prev_hash || record)`.
//! Appending takes the chain's head row lock, which orders the chain.
//!
//! The audit tables (`audit_chains`, `audit_events`, `audit_checkpoints`) belong to this
//! module: no other service's SQL names them (only the API tests do, to tamper with
//! them on purpose). Here, the writer; beside it:
//!
//! - [`events`]: an organization's events as its admins see them, a page at a time or
//!   as an NDJSON export (the org service's `…/audit-events` routes, which check who
//!   asks and say who the organization's members are);
//! - [`integrity`]: signed checkpoints of the chains' heads, and verification of one
//!   chain or all (`…/audit-events/verify`, `printworks audit verify`);
//! - [`retention`]: pruning records older than `PRINTWORKS_AUDIT_RETENTION`, keeping the
//!   chains verifiable.
//!
//! The org service runs checkpoints and retention in its background job.

pub mod events;
pub mod integrity;
pub mod retention;

use std::net::IpAddr;

use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::crypto::sha256;

/// The chain of events that belong to no organization.
pub const GLOBAL_CHAIN: Uuid = Uuid::nil();

/// Who did it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    User(Uuid),
    Client(String),
    Printer(Uuid),
    System,
    /// Not identified (e.g. a login with an unknown e-mail address).
    Anonymous,
}

impl Actor {
    fn parts(&self) -> (&'static str, Option<String>) {
        match self {
            Actor::User(id) => ("user", Some(id.to_string())),
            Actor::Client(id) => ("client", Some(id.clone())),
            Actor::Printer(id) => ("printer", Some(id.to_string())),
            Actor::System => ("system", None),
            Actor::Anonymous => ("anonymous", None),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// One event. Build with [`AuditEvent::new`] and the setters, then [`AuditEvent::write`].
#[derive(Clone, Debug)]
pub struct AuditEvent {
    action: &'static str,
    actor: Actor,
    outcome: Outcome,
    organization_id: Option<Uuid>,
    source: Option<IpAddr>,
    target: Option<(&'static str, String)>,
    details: Map<String, Value>,
}

impl AuditEvent {
    /// `action` is a dotted name such as `session.login` or `totp.disable`.
    pub fn new(action: &'static str, actor: Actor, outcome: Outcome) -> Self {
        Self {
            action,
            actor,
            outcome,
            organization_id: None,
            source: None,
            target: None,
            details: Map::new(),
        }
    }

    pub fn organization(mut self, id: Uuid) -> Self {
        self.organization_id = Some(id);
        self
    }

    pub fn source(mut self, addr: Option<IpAddr>) -> Self {
        self.source = addr;
        self
    }

    pub fn target(mut self, kind: &'static str, id: impl ToString) -> Self {
        self.target = Some((kind, id.to_string()));
        self
    }

    /// A detail worth keeping (never a secret): a reason, a role, a scope list.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Appends the event to its chain on `conn`, which should be the transaction of the
    /// change it records (write the event last in it: the chain's head stays locked until
    /// the transaction ends). On a connection outside a transaction the event is written
    /// in one of its own. Returns the event's id.
    pub async fn write(self, conn: &mut PgConnection, at: OffsetDateTime) -> sqlx::Result<Uuid> {
        // A savepoint inside the caller's transaction, or a transaction of its own: either
        // way the head's row lock orders concurrent appends.
        let mut tx = sqlx::Connection::begin(conn).await?;
        let id = self.append(&mut tx, at).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn append(self, conn: &mut PgConnection, at: OffsetDateTime) -> sqlx::Result<Uuid> {
        let chain = self.organization_id.unwrap_or(GLOBAL_CHAIN);
        // Microseconds: what PostgreSQL keeps, so the record reads back as hashed.
        let at = at
            .replace_nanosecond(at.nanosecond() / 1000 * 1000)
            .unwrap_or(at);
        sqlx::query(
            "INSERT INTO audit_chains (chain_id, last_index, last_hash)
             VALUES ($1, 0, $2) ON CONFLICT (chain_id) DO NOTHING",
        )
        .bind(chain)
        .bind(&[0u8; 32][..])
        .execute(&mut *conn)
        .await?;
        let (last_index, prev_hash): (i64, Vec<u8>) = sqlx::query_as(
            "SELECT last_index, last_hash FROM audit_chains WHERE chain_id = $1 FOR UPDATE",
        )
        .bind(chain)
        .fetch_one(&mut *conn)
        .await?;

        let id = Uuid::new_v4();
        let index = last_index + 1;
        let (actor_type, actor_id) = self.actor.parts();
        let (target_type, target_id) = match &self.target {
            Some((k, v)) => (Some(*k), Some(v.clone())),
            None => (None, None),
        };
        let occurred_at = at.format(&Rfc3339).unwrap_or_default();
        let source = self.source.map(|a| a.to_string());
        // serde_json's maps are sorted, so this text is canonical.
        let record = json!({
            "action": self.action,
            "actor_id": actor_id,
            "actor_type": actor_type,
            "chain_id": chain,
            "chain_index": index,
            "details": Value::Object(self.details),
            "id": id,
            "occurred_at": occurred_at,
            "organization_id": self.organization_id,
            "outcome": self.outcome.as_str(),
            "source_addr": source,
            "target_id": target_id,
            "target_type": target_type,
        })
        .to_string();
        let hash = chain_hash(&prev_hash, &record);

        sqlx::query(
            "INSERT INTO audit_events
               (id, chain_id, chain_index, occurred_at, organization_id, actor_type, actor_id,
                source_addr, action, outcome, target_type, target_id, record, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(id)
        .bind(chain)
        .bind(index)
        .bind(at)
        .bind(self.organization_id)
        .bind(actor_type)
        .bind(actor_id)
        .bind(source)
        .bind(self.action)
        .bind(self.outcome.as_str())
        .bind(target_type)
        .bind(target_id)
        .bind(&record)
        .bind(&prev_hash)
        .bind(&hash[..])
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE audit_chains SET last_index = $2, last_hash = $3 WHERE chain_id = $1")
            .bind(chain)
            .bind(index)
            .bind(&hash[..])
            .execute(&mut *conn)
            .await?;
        Ok(id)
    }
}

/// `SHA-256(prev_hash || record)`.
pub fn chain_hash(prev_hash: &[u8], record: &str) -> [u8; 32] {
    let mut data = Vec::with_capacity(prev_hash.len() + record.len());
    data.extend_from_slice(prev_hash);
    data.extend_from_slice(record.as_bytes());
    sha256(&data)
}
