//! The state every service is built from.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenVerifier;
use crate::clock::SharedClock;
use crate::crypto::SecretBox;
use crate::hooks::PublishedKeys;
use crate::metrics::Metrics;
use crate::printer::JobSigner;
use crate::settings::Settings;

/// What the binary hands each service: the pool, the settings, the clock, the metrics
/// registry, the access-token verifier and the box that seals secrets at rest. Cheap to
/// clone; services wrap it in their own state as they grow.
#[derive(Clone)]
pub struct AppContext {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<TokenVerifier>,
    pub secrets: SecretBox,
    /// The relay's job-signing key: the relay signs with it, pairing hands printers its
    /// public half.
    pub job_signer: Arc<JobSigner>,
    /// Wakes the e-mail worker when a message was queued.
    pub outbox: crate::mail::Outbox,
    /// Cancelled when the process stops: background tasks watch it.
    pub shutdown: CancellationToken,
}

impl AppContext {
    /// Loads (or, in the data directory, creates) the master key, and the MAC root and
    /// the job-signing key from the database (which must be migrated). Access tokens are
    /// verified with the keys `published_keys` (the account service's) publishes.
    pub async fn new(
        db: PgPool,
        settings: Settings,
        clock: SharedClock,
        published_keys: Arc<dyn PublishedKeys>,
    ) -> anyhow::Result<Self> {
        let secrets = SecretBox::load(&settings, &db).await?;
        let job_signer = Arc::new(JobSigner::load(&mut *db.acquire().await?, &secrets).await?);
        let tokens = Arc::new(TokenVerifier::new(
            published_keys,
            settings.public_url.as_str().to_owned(),
            clock.clone(),
        ));
        Ok(Self {
            db,
            settings: Arc::new(settings),
            clock,
            metrics: Arc::new(Metrics::new()),
            tokens,
            secrets,
            job_signer,
            outbox: crate::mail::Outbox::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// The current time from the injected clock.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }
}
