//! The state every service is built from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenVerifier;
use crate::clock::SharedClock;
use crate::crypto::SecretBox;
use crate::metrics::Metrics;
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
    /// Cancelled when the process stops: background tasks watch it.
    pub shutdown: CancellationToken,
    /// Routes (by their matched path) that may take longer than the request timeout,
    /// e.g. an upload of a print job. See [`AppContext::allow_longer`].
    route_timeouts: Arc<std::sync::RwLock<HashMap<String, Duration>>>,
}

impl AppContext {
    /// Loads (or, in the data directory, creates) the master key.
    pub fn new(db: PgPool, settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        let secrets = SecretBox::from_settings(&settings)?;
        let tokens = Arc::new(TokenVerifier::new(
            db.clone(),
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
            shutdown: CancellationToken::new(),
            route_timeouts: Arc::default(),
        })
    }

    /// Lets `method` requests to `route` (a matched path such as
    /// `/relay/v1/printers/{printer}/jobs`) take up to `timeout` instead of the request
    /// timeout. Every other route and method keeps `PRINTWORKS_REQUEST_TIMEOUT`.
    pub fn allow_longer(&self, method: &str, route: &str, timeout: Duration) {
        self.route_timeouts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(format!("{method} {route}"), timeout);
    }

    /// How long a `method` request to `route` may take.
    pub fn timeout_for(&self, method: &str, route: Option<&str>) -> Duration {
        route
            .and_then(|r| {
                self.route_timeouts
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&format!("{method} {r}"))
                    .copied()
            })
            .unwrap_or(self.settings.request_timeout)
    }

    /// The current time from the injected clock.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }
}
