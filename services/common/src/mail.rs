//! E-mail that must not be lost: written to the `email_outbox` table in the transaction
//! of what it announces (its body sealed with the master key: it may carry a token),
//! then handed to a [`MailSender`] by a worker that retries with growing pauses until
//! the sender takes it, or gives up after [`MAX_ATTEMPTS`]. Several replicas may run the
//! worker: rows are claimed with `FOR UPDATE SKIP LOCKED` and a lease. Delivery is at
//! least once (a crash between the hand-over and the record sends again), never zero
//! times. A sent message's body is erased.
//!
//! Senders: SMTP (`PRINTWORKS_SMTP_URL`, through lettre with rustls), or for development
//! a file per message under `<data dir>/mail/` (owner-only: messages carry invitation
//! tokens, which must not reach a log).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::AppContext;
use crate::crypto::SecretBox;
use crate::hooks::BoxFuture;
use anyhow::Context as _;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tokio::sync::Notify;
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

fn sealing_context(id: Uuid) -> String {
    format!("email:{id}")
}

/// Queues a message (in the caller's transaction). The body is sealed with the master
/// key: it may carry a token. `topic` names what the message is about
/// (`invitation:<id>`, `verify-email:<user>`), so that it can be [`cancel`]led while it
/// waits.
pub async fn enqueue(
    conn: &mut PgConnection,
    secrets: &SecretBox,
    to: &str,
    subject: &str,
    body: &str,
    topic: Option<&str>,
    now: OffsetDateTime,
) -> sqlx::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO email_outbox (id, to_address, subject, body_sealed, created_at, next_attempt_at, topic)
         VALUES ($1, $2, $3, $4, $5, $5, $6)",
    )
    .bind(id)
    .bind(to)
    .bind(subject)
    .bind(secrets.seal(&sealing_context(id), body.as_bytes()))
    .bind(now)
    .bind(topic)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Withdraws the messages about `topic` that have not been handed to the sender (in the
/// caller's transaction): they are given up on and their bodies erased. One a worker is
/// sending at this moment may still go out (delivery is at least once). Returns how many
/// were withdrawn.
pub async fn cancel(
    conn: &mut PgConnection,
    topic: &str,
    now: OffsetDateTime,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE email_outbox SET gave_up_at = $2, body = NULL, body_sealed = NULL,
                last_error = 'withdrawn'
         WHERE topic = $1 AND sent_at IS NULL AND gave_up_at IS NULL",
    )
    .bind(topic)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The pause before the next attempt after `attempts` failures: 10 s doubling, at most
/// an hour.
pub fn backoff(attempts: i32) -> time::Duration {
    let secs = 10i64.saturating_mul(1i64 << attempts.clamp(0, 20));
    time::Duration::seconds(secs.min(3600))
}

/// Attempts before a message is given up on (about a day of retries).
pub const MAX_ATTEMPTS: i32 = 30;
/// How long one message is left to its worker before another may try it (the SMTP
/// sender gives up on a command after 20 s); a batch's lease is this times its size,
/// since its messages are sent one after another.
const LEASE_PER_MESSAGE: time::Duration = time::Duration::minutes(1);

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    to_address: String,
    subject: String,
    body_sealed: Option<Vec<u8>>,
    body: Option<String>,
    attempts: i32,
}

/// Sends what is due now, at most `batch` messages. Returns how many were sent.
///
/// Messages are claimed with a lease (`FOR UPDATE SKIP LOCKED`, committed at once) and
/// sent outside any transaction, so a slow mail server holds no database connection;
/// a worker that dies mid-send leaves the message to be tried again when the lease
/// ends (at least once, never zero times).
pub async fn deliver_due(
    ctx: &AppContext,
    sender: &dyn MailSender,
    batch: i64,
) -> anyhow::Result<usize> {
    let now = ctx.now();
    let lease = now + LEASE_PER_MESSAGE * i32::try_from(batch.clamp(1, 1000)).unwrap_or(1);
    let due: Vec<Due> = sqlx::query_as(
        "UPDATE email_outbox SET next_attempt_at = $3
         WHERE id IN (SELECT id FROM email_outbox
                      WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1
                      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id, to_address, subject, body_sealed, body, attempts",
    )
    .bind(now)
    .bind(batch)
    .bind(lease)
    .fetch_all(&ctx.db)
    .await?;
    let mut sent = 0;
    for Due {
        id,
        to_address: to,
        subject,
        body_sealed: sealed,
        body: plain,
        attempts,
    } in due
    {
        // A message withdrawn since the batch was taken (a revoked invitation) is not
        // sent: asked again right before each one, so only a send already under way
        // can race a withdrawal.
        let live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM email_outbox
                            WHERE id = $1 AND sent_at IS NULL AND gave_up_at IS NULL)",
        )
        .bind(id)
        .fetch_one(&ctx.db)
        .await?;
        if !live {
            continue;
        }
        let body = match (sealed, plain) {
            (Some(sealed), _) => ctx
                .secrets
                .open(&sealing_context(id), &sealed)
                .and_then(|b| String::from_utf8(b).ok()),
            (None, plain) => plain,
        };
        let result = match &body {
            Some(body) => sender.send(&to, &subject, body).await,
            None => Err(anyhow::anyhow!("the message's body does not open")),
        };
        match result {
            Ok(()) => {
                sqlx::query(
                    "UPDATE email_outbox SET sent_at = $2, attempts = attempts + 1, last_error = NULL,
                            body = NULL, body_sealed = NULL
                     WHERE id = $1 AND sent_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .execute(&ctx.db)
                .await?;
                sent += 1;
            }
            Err(e) => {
                let error: String = format!("{e:#}").chars().take(500).collect();
                let give_up = attempts + 1 >= MAX_ATTEMPTS || body.is_none();
                if give_up {
                    tracing::error!(message_id = %id, attempts = attempts + 1, error = %error, "e-mail given up on");
                } else {
                    tracing::warn!(message_id = %id, attempts = attempts + 1, error = %error, "e-mail not sent; will retry");
                }
                // A message withdrawn while it was being tried stays withdrawn.
                sqlx::query(
                    "UPDATE email_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3,
                            gave_up_at = CASE WHEN $4 THEN $5 END,
                            body = CASE WHEN $4 THEN NULL ELSE body END,
                            body_sealed = CASE WHEN $4 THEN NULL ELSE body_sealed END
                     WHERE id = $1 AND next_attempt_at = $6 AND sent_at IS NULL AND gave_up_at IS NULL",
                )
                .bind(id)
                .bind(now + backoff(attempts))
                .bind(error)
                .bind(give_up)
                .bind(now)
                .bind(lease)
                .execute(&ctx.db)
                .await?;
            }
        }
    }
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

    /// The delivery loop, as a background task: what is due goes out, then it waits
    /// for a message to be queued (or five seconds).
    pub fn worker(&self, ctx: AppContext, sender: Arc<dyn MailSender>) -> crate::tasks::Task {
        let wake = self.wake.clone();
        crate::tasks::Task::looping("e-mail", move |stop| async move {
            loop {
                match deliver_due(&ctx, sender.as_ref(), 10).await {
                    Ok(n) if n > 0 && !stop.is_cancelled() => continue,
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
            crate::settings::ensure_private_dir(&self.dir)?;
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
    Ok(match smtp_url(s)? {
        Some(url) => Arc::new(SmtpSender::new(
            secrecy::ExposeSecret::expose_secret(&url),
            &s.mail_from,
        )?),
        None => Arc::new(FileSender::new(&ctx.settings.data_dir)),
    })
}

/// PRINTWORKS_SMTP_URL, or the content of PRINTWORKS_SMTP_URL_FILE.
fn smtp_url(s: &crate::settings::OrgSettings) -> anyhow::Result<Option<secrecy::SecretString>> {
    let Some(path) = &s.smtp_url_file else {
        return Ok(s.smtp_url.clone());
    };
    crate::settings::secret_from_file("PRINTWORKS_SMTP_URL_FILE", path)
        .map(Some)
        .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smtp_url_comes_from_the_setting_or_its_file() {
        use secrecy::ExposeSecret as _;
        let mut s = crate::Settings::defaults().org;
        assert!(smtp_url(&s).unwrap().is_none());
        s.smtp_url = Some("smtp://a@mail.example.com".into());
        assert_eq!(
            smtp_url(&s).unwrap().unwrap().expose_secret(),
            "smtp://a@mail.example.com"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "smtps://b:secret@mail.example.com:465\n").unwrap();
        s.smtp_url = None;
        s.smtp_url_file = Some(file.clone());
        assert_eq!(
            smtp_url(&s).unwrap().unwrap().expose_secret(),
            "smtps://b:secret@mail.example.com:465"
        );
        std::fs::write(&file, " \n").unwrap();
        assert!(smtp_url(&s).unwrap_err().to_string().contains("is empty"));
        s.smtp_url_file = Some(dir.path().join("missing"));
        let e = smtp_url(&s).unwrap_err().to_string();
        assert!(
            e.contains("PRINTWORKS_SMTP_URL_FILE") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(backoff(0), time::Duration::seconds(10));
        assert_eq!(backoff(1), time::Duration::seconds(20));
        assert_eq!(backoff(5), time::Duration::seconds(320));
        assert_eq!(backoff(9), time::Duration::seconds(3600));
        assert_eq!(backoff(1000), time::Duration::seconds(3600));
    }
}
