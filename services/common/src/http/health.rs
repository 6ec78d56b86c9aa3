//! `GET /healthz` (the process answers), `GET /readyz` (the database answers and every
//! migration this binary knows is applied) and `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Json;
use crate::context::AppContext;
use crate::db::{self, Readiness};
use crate::error::Problem;
use crate::routes::{Access, RouteTable};

/// A readiness probe must answer even when the database hangs.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

#[rustfmt::skip]
pub fn health_routes() -> RouteTable<AppContext> {
    use Access::Public;
    RouteTable::new("")
        .get("/healthz", Public, healthz)
        .get("/readyz", Public, readyz)
        .get("/metrics", Public, metrics)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(ctx): State<AppContext>) -> Response {
    let not_ready = |detail: &str| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "The service is not ready",
        )
        .detail(detail)
        .header(header::RETRY_AFTER, header::HeaderValue::from_static("5"))
        .into_response()
    };
    match tokio::time::timeout(READINESS_TIMEOUT, db::readiness(&ctx.db)).await {
        Ok(Ok(Readiness::Ready)) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Ok(Readiness::MigrationsPending { missing })) => not_ready(&format!(
            "{missing} database migrations are not applied yet"
        )),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            not_ready("The database is unreachable.")
        }
        Err(_) => {
            tracing::warn!("readiness: database did not answer in time");
            not_ready("The database did not answer in time.")
        }
    }
}

async fn metrics(State(ctx): State<AppContext>) -> Response {
    ctx.metrics.observe_pool(&ctx.db);
    match ctx.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => crate::ApiError::Internal(e).into_response(),
    }
}
