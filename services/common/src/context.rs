//! The state every service is built from.

use std::sync::Arc;

use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// What the binary hands each service: the pool, the settings, the clock and the metrics
/// registry. Cheap to clone; services wrap it in their own state as they grow.
#[derive(Clone)]
pub struct AppContext {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
}
