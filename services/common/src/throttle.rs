//! Growing waits between failed attempts at a secret, kept in PostgreSQL so they hold
//! across replicas and restarts — a soft lock in the manner of Kanidm: an attacker is
//! slowed to a crawl, and the owner is never locked out for good.
//!
//! A *subject* is what the attempts are counted against: an account (its normalised
//! e-mail address) for logins and TOTP; a person, an organization or a source address
//! for pairing codes (`pairing:user:<id>`, ...). Every attempt is counted *before* its
//! password or code is checked, in one atomic statement that also refuses it when the
//! subject's wait has not passed. So parallel attempts cannot slip through together: the
//! first `free` attempts are immediate, then each one must wait 1 s, 2 s, 4 s … (up to
//! the configured maximum) after the previous. A success clears the count (or, where a
//! success proves nothing about the next attempt, takes back only its own); a day
//! without attempts forgets it.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;

#[derive(Clone, Debug)]
pub struct Throttle {
    pub free_attempts: u32,
    pub max_delay: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go on and check the credentials.
    Allowed,
    /// Refused without checking; the account's next attempt is allowed after this.
    Wait(Duration),
}

impl Throttle {
    /// Counts an attempt on `subject` at `now`.
    pub async fn attempt(
        &self,
        db: &PgPool,
        subject: &str,
        now: OffsetDateTime,
    ) -> sqlx::Result<Gate> {
        let counted: Option<i32> = sqlx::query_scalar(
            "INSERT INTO attempt_throttle AS t (subject, failures, next_allowed_at)
             VALUES ($1, 1, $2 + make_interval(secs => CASE WHEN 1 < $3 THEN 0 ELSE 1 END))
             ON CONFLICT (subject) DO UPDATE SET
               failures = CASE WHEN t.next_allowed_at < $2 - interval '1 day' THEN 1
                               ELSE t.failures + 1 END,
               next_allowed_at = $2 + make_interval(secs => CASE
                   WHEN t.next_allowed_at < $2 - interval '1 day' OR t.failures + 1 < $3 THEN 0
                   ELSE LEAST($4, power(2, LEAST(t.failures + 1 - $3, 30)))
                 END)
             WHERE t.next_allowed_at <= $2
             RETURNING failures",
        )
        .bind(subject)
        .bind(now)
        .bind(i32::try_from(self.free_attempts).unwrap_or(i32::MAX))
        .bind(self.max_delay.as_secs_f64())
        .fetch_optional(db)
        .await?;
        if counted.is_some() {
            return Ok(Gate::Allowed);
        }
        // The row may have been cleared by a success in between: then wait a second.
        let next: Option<OffsetDateTime> =
            sqlx::query_scalar("SELECT next_allowed_at FROM attempt_throttle WHERE subject = $1")
                .bind(subject)
                .fetch_optional(db)
                .await?;
        let wait = next
            .map(|n| n - now)
            .unwrap_or_default()
            .max(time::Duration::seconds(1));
        Ok(Gate::Wait(
            Duration::try_from(wait).unwrap_or(Duration::from_secs(1)),
        ))
    }

    /// A check that was counted succeeded, but was not a login (a code confirmed, a
    /// password re-entered): take back its own count, and only that — earlier failures
    /// stand, so such routes cannot be used to reset the throttle.
    pub async fn refund(&self, db: impl sqlx::PgExecutor<'_>, subject: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE attempt_throttle SET failures = GREATEST(failures - 1, 0) WHERE subject = $1",
        )
        .bind(subject)
        .execute(db)
        .await?;
        Ok(())
    }

    /// The credentials were right: forget the failures.
    pub async fn succeeded(&self, db: &PgPool, subject: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM attempt_throttle WHERE subject = $1")
            .bind(subject)
            .execute(db)
            .await?;
        Ok(())
    }
}
