//! The PostgreSQL pool, the migrations embedded in the binary, and readiness.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::settings::{DatabaseUrl, Settings};

/// Every migration in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Pool options from the settings: bounded, and a request waits for a connection at
/// most `db_connect_timeout` before it is answered 503.
pub fn pool_options(settings: &Settings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(settings.db_connect_timeout)
        .idle_timeout(Some(Duration::from_secs(600)))
        // A connection is checked before use, so a restarted database is noticed and
        // the pool heals by itself.
        .test_before_acquire(true)
}

/// Connects, retrying with growing pauses until `db_connect_timeout` has passed, so
/// replicas started alongside their database wait for it instead of crash-looping.
/// The error names the database (without its password) and the cause.
pub async fn connect(settings: &Settings, url: &DatabaseUrl) -> anyhow::Result<PgPool> {
    let options = url.connect_options().application_name("printworks");
    let deadline = tokio::time::Instant::now() + settings.db_connect_timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = tokio::time::timeout_at(deadline, PgConnection::connect_with(&options)).await;
        match attempt {
            Ok(Ok(conn)) => {
                // Reachable: the pool opens its own connections as requests need them.
                let _ = conn.close().await;
                return Ok(pool_options(settings).connect_lazy_with(options));
            }
            Ok(Err(e)) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(database = %url.redacted(), error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Ok(Err(e)) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("cannot reach the database at {}", url.redacted()));
            }
            Err(_) => {
                anyhow::bail!(
                    "cannot reach the database at {}: no answer within {:?}",
                    url.redacted(),
                    settings.db_connect_timeout
                );
            }
        }
    }
}

/// Applies pending migrations. Guarded by PostgreSQL's advisory lock (the migrator's
/// default), so replicas starting together apply each migration once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    MigrationsPending { missing: usize },
}

/// The database answers, and every migration this binary carries is applied.
pub async fn readiness(pool: &PgPool) -> Result<Readiness, sqlx::Error> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            // No migrations table yet: nothing is applied.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
    let applied: HashSet<i64> = applied.into_iter().collect();
    let missing = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .count();
    Ok(if missing == 0 {
        Readiness::Ready
    } else {
        Readiness::MigrationsPending { missing }
    })
}

/// What a crate owns in the one schema: the tables it creates and writes, and the
/// trigger functions that run on them. Only the owner's SQL names them; other crates
/// call the owner's functions (`tests/api/ownership.rs` holds every crate to this).
#[derive(Clone, Copy, Debug)]
pub struct Owned {
    pub tables: &'static [&'static str],
    pub functions: &'static [&'static str],
}

/// The shared infrastructure's tables: the attempt throttle, the e-mail outbox, the
/// service keys, and the audit log (written by every service through [`crate::audit`]).
pub const OWNED: Owned = Owned {
    tables: &[
        "attempt_throttle",
        "email_outbox",
        "service_keys",
        "audit_chains",
        "audit_events",
        "audit_checkpoints",
    ],
    functions: &["audit_events_append_only"],
};
