//! E-mail that must not be lost: written to the `email_outbox` table in the transaction
//! of what it announces, then handed to a [`MailSender`] by a worker that retries with
//! growing pauses until the sender takes it. Several replicas may run the worker: rows
//! are claimed with `FOR UPDATE SKIP LOCKED`. Delivery is at least once (a crash between
//! the hand-over and the commit sends again), never zero times.
//!
//! Senders: SMTP (`PRINTWORKS_SMTP_URL`, through lettre with rustls), or for development
//! a file per message under `<data dir>/mail/` (owner-only: messages carry invitation
//! tokens, which must not reach a log).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use printworks_account::BoxFuture;
use printworks_common::AppContext;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Hands a message to the world. Errors are retried later.
pub trait MailSender: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Queues a message (in the caller's transaction).
pub async fn enqueue(
    conn: &mut PgConnection,
    to: &str,
    subject: &str,
    body: &str,
    now: OffsetDateTime,
) -> sqlx::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO email_outbox (id, to_address, subject, body, created_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id)
    .bind(to)
    .bind(subject)
    .bind(body)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}

/// The pause before the next attempt after `attempts` failures: 10 s doubling, at most
/// an hour.
pub fn backoff(attempts: i32) -> time::Duration {
    let secs = 10i64.saturating_mul(1i64 << attempts.clamp(0, 20));
    time::Duration::seconds(secs.min(3600))
}

/// Sends what is due now, at most `batch` messages. Returns how many were sent.
pub async fn deliver_due(
    ctx: &AppContext,
    sender: &dyn MailSender,
    batch: i64,
) -> anyhow::Result<usize> {
    let now = ctx.now();
    let mut tx = ctx.db.begin().await?;
    let due: Vec<(Uuid, String, String, String, i32)> = sqlx::query_as(
        "SELECT id, to_address, subject, body, attempts FROM email_outbox
         WHERE sent_at IS NULL AND next_attempt_at <= $1
         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut sent = 0;
    for (id, to, subject, body, attempts) in due {
        match sender.send(&to, &subject, &body).await {
            Ok(()) => {
                sqlx::query("UPDATE email_outbox SET sent_at = $2, attempts = attempts + 1, last_error = NULL WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sent += 1;
            }
            Err(e) => {
                let error: String = format!("{e:#}").chars().take(500).collect();
                tracing::warn!(message_id = %id, attempts = attempts + 1, error = %error, "e-mail not sent; will retry");
                sqlx::query(
                    "UPDATE email_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(now + backoff(attempts))
                .bind(error)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(sent)
}

/// Wakes the worker when a message was queued (a hint: the worker also polls).
#[derive(Clone, Default)]
pub struct Outbox {
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn queued(&self) {
        self.wake.notify_one();
    }

    /// Runs the delivery loop until `stop`.
    pub fn spawn_worker(
        &self,
        ctx: AppContext,
        sender: Arc<dyn MailSender>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let wake = self.wake.clone();
        tokio::spawn(async move {
            loop {
                match deliver_due(&ctx, sender.as_ref(), 20).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "e-mail worker"),
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        })
    }
}

/// Development: each message becomes a file under `<data dir>/mail/`.
pub struct FileSender {
    dir: PathBuf,
}

impl FileSender {
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            dir: data_dir.join("mail"),
        }
    }
}

impl MailSender for FileSender {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            printworks_common::settings::ensure_private_dir(&self.dir)?;
            let path = self.dir.join(format!("{}.eml", Uuid::new_v4()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            write!(f, "To: {to}\r\nSubject: {subject}\r\n\r\n{body}")?;
            f.sync_all()?;
            let domain = to.rsplit_once('@').map_or("", |(_, d)| d);
            tracing::info!(to_domain = domain, file = %path.display(), "e-mail written (no SMTP configured)");
            Ok(())
        })
    }
}

/// SMTP through lettre (rustls).
pub struct SmtpSender {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl SmtpSender {
    /// `url`: `smtps://user:pass@host:465` (TLS), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS required), or `smtp://host:25` for a local relay (unencrypted: refused
    /// when it carries a password, which would cross the network in the clear).
    pub fn new(url: &str, from: &str) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).context("PRINTWORKS_SMTP_URL is not a valid URL")?;
        let tls = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        if parsed.scheme() == "smtp"
            && parsed.password().is_some()
            && tls.as_deref() != Some("required")
        {
            anyhow::bail!(
                "PRINTWORKS_SMTP_URL would send its password unencrypted: use smtps:// or add ?tls=required"
            );
        }
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .context("PRINTWORKS_SMTP_URL is not a valid SMTP URL")?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let from = from
            .parse()
            .context("PRINTWORKS_MAIL_FROM is not a valid address")?;
        Ok(Self { transport, from })
    }
}

impl MailSender for SmtpSender {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            use lettre::AsyncTransport as _;
            let message = lettre::Message::builder()
                .from(self.from.clone())
                .to(to.parse().context("recipient address")?)
                .subject(subject)
                .header(lettre::message::header::ContentType::TEXT_PLAIN)
                .body(body.to_owned())?;
            self.transport.send(message).await?;
            Ok(())
        })
    }
}

/// The sender the settings ask for.
pub fn sender_from_settings(ctx: &AppContext) -> anyhow::Result<Arc<dyn MailSender>> {
    let s = &ctx.settings.org;
    Ok(match &s.smtp_url {
        Some(url) => Arc::new(SmtpSender::new(
            secrecy::ExposeSecret::expose_secret(url),
            &s.mail_from,
        )?),
        None => Arc::new(FileSender::new(&ctx.settings.data_dir)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(backoff(0), time::Duration::seconds(10));
        assert_eq!(backoff(1), time::Duration::seconds(20));
        assert_eq!(backoff(5), time::Duration::seconds(320));
        assert_eq!(backoff(9), time::Duration::seconds(3600));
        assert_eq!(backoff(1000), time::Duration::seconds(3600));
    }
}
