//! The per-source-address limit on the routes a stranger can use to guess secrets:
//! login, sign-up, TOTP, the token endpoint, pairing. Each service that uses it keeps
//! one bucket per address for all its limited routes (the account service's, the
//! pairing service's); over the limit answers 429 problem+json with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

use super::client::ClientKeyExtractor;
use crate::error::{ApiError, Problem};
use crate::settings::Settings;

pub type RateLimitLayer =
    GovernorLayer<ClientKeyExtractor, governor::middleware::NoOpMiddleware, Body>;

/// `PRINTWORKS_AUTH_RATE_LIMIT` requests a minute per client address (IPv6 per /64;
/// behind trusted proxies, the forwarded address), in bursts of up to a fifth of that.
/// Must be called inside the runtime: it starts the task that forgets idle addresses.
pub fn rate_limit(settings: &Settings) -> RateLimitLayer {
    let per_minute = settings.auth_rate_limit_per_minute.max(1);
    let extractor = ClientKeyExtractor {
        trusted: Arc::new(settings.trusted_proxies.clone()),
    };
    let period = Duration::from_micros((60_000_000 / u64::from(per_minute)).max(1));
    #[allow(clippy::expect_used)]
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .const_period(period)
            .const_burst_size((per_minute / 5).max(1))
            .key_extractor(extractor)
            .finish()
            .expect("a non-zero period and burst"),
    );
    // A scan from many addresses must not grow memory without bound.
    let limiter = Arc::downgrade(config.limiter());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                break;
            };
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
    GovernorLayer::new(config).error_handler(refusal)
}

fn refusal(e: GovernorError) -> Response {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            ApiError::too_many_requests(Duration::from_secs(wait_time.max(1))).into_response()
        }
        GovernorError::UnableToExtractKey => {
            tracing::error!("rate limit: the peer address is unknown");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        GovernorError::Other { code, .. } => {
            let mut res = Problem::from_status(code).into_response();
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
    }
}
