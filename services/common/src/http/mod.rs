//! The HTTP plumbing every route goes through, assembled once in
//! [`apply_common_layers`]:
//!
//! 1. a request id (the caller's `x-request-id` when it is a short token, else a new
//!    UUID), in the response header, in every log line of the request and in every
//!    problem document;
//! 2. one access-log line and the request metrics;
//! 3. any error response that is not yet problem+json (unknown route, wrong method, a
//!    refusal by a layer or an extractor, a panic) rewritten into one, so clients see a
//!    single error format;
//! 4. panics caught and answered 500 without their message;
//! 5. a timeout (503; a route may be allowed longer, see [`LongerRoute`]) and a body
//!    size limit (413) on every route;
//! 6. security headers on every response (`nosniff`, no referrer, no framing, a
//!    restrictive default CSP, HSTS when the public URL is https).

mod client;
mod extract;
mod health;
mod json;
mod ratelimit;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

pub use client::{ClientInfo, limit_key, network_of};
pub use extract::{Page, PageQuery, Paginated, Path, Query};
pub use health::health_routes;
pub use json::Json;
pub use ratelimit::{RateLimitLayer, rate_limit};

use crate::context::AppContext;
use crate::error::{PROBLEM_CONTENT_TYPE, Problem};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// A route that may take longer than the request timeout (an upload streaming to
/// storage): `method` requests to `route`, a matched path such as
/// `/relay/v1/printers/{printer}/jobs`.
#[derive(Clone, Debug)]
pub struct LongerRoute {
    pub method: Method,
    pub route: String,
    pub timeout: Duration,
}

/// Wraps `router` (all routes and the fallback) in the shared layers and gives it the
/// problem+json 404 fallback. Call once, on the whole application. Every request has
/// `PRINTWORKS_REQUEST_TIMEOUT`, but those of `longer`.
pub fn apply_common_layers(router: Router, ctx: &AppContext, longer: &[LongerRoute]) -> Router {
    let deadlines = Deadlines {
        default: ctx.settings.request_timeout,
        longer: longer.into(),
    };
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(ctx.settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(deadlines, deadline))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(ctx.clone(), request_context))
}

/// `GET /<prefix>/` of a service: its name and version, so the wiring is visible.
pub fn service_index<S>(name: &'static str, version: &'static str) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    get(move || async move { Json(serde_json::json!({ "service": name, "version": version })) })
}

#[derive(Clone)]
struct Deadlines {
    default: Duration,
    longer: Arc<[LongerRoute]>,
}

/// Every request is answered within the request timeout (or its route's own, see
/// [`LongerRoute`]), else 503. The response body may stream on after.
async fn deadline(State(d): State<Deadlines>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let limit = d
        .longer
        .iter()
        .find(|l| Some(l.route.as_str()) == route && l.method == req.method())
        .map_or(d.default, |l| l.timeout);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
}

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let message = err
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %message, "handler panicked");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// A caller-supplied request id is kept only when it is a short, plain token: it ends up
/// in logs and must not be a vehicle for log injection.
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| s.to_owned())
}

async fn request_context(State(ctx): State<AppContext>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();

    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = route.as_deref().unwrap_or("-"));
    let response = REQUEST_ID
        .scope(request_id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let mut response = REQUEST_ID
        .scope(request_id.clone(), async {
            into_problem_if_error(response)
        })
        .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    add_security_headers(&mut response, ctx.settings.public_url.is_https());

    let status = response.status();
    let elapsed = started.elapsed();
    let route_label = route.as_deref().unwrap_or("unmatched");
    ctx.metrics
        .observe_request(method.as_str(), route_label, status.as_u16(), elapsed);

    let _enter = span.enter();
    let latency_ms = (elapsed.as_micros() as f64) / 1000.0;
    if matches!(route_label, "/healthz" | "/readyz" | "/metrics") && status.is_success() {
        tracing::debug!(status = status.as_u16(), latency_ms, path = ?path, "request");
    } else if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), latency_ms, path = ?path, "request");
    } else {
        tracing::info!(status = status.as_u16(), latency_ms, path = ?path, "request");
    }
    response
}

fn add_security_headers(res: &mut Response, https: bool) {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::REFERRER_POLICY) {
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages set their own policy; everything else may load nothing and be framed nowhere.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
}

fn is_problem(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()))
}

/// An error body made on purpose: problem+json; the `{"error": ...}` JSON that OAuth's
/// token, revocation and introspection endpoints must answer (RFC 6749 §5.2); or an
/// HTML page for a person (the login page answering 401, say).
fn is_deliberate_error(res: &Response) -> bool {
    is_problem(res)
        || res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/json") || v.starts_with(b"text/html")
        })
}

/// Error responses that did not come from [`crate::ApiError`] (axum's 405, a layer's
/// 413, 429 or 503, a caught panic) keep their status and useful headers (`Allow`,
/// `Retry-After`, `WWW-Authenticate`) and get a problem body instead of theirs.
fn into_problem_if_error(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_deliberate_error(&res) {
        return res;
    }
    let (parts, _discarded) = res.into_parts();
    let problem = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(status, "body-too-large", "The request body is too large")
        }
        StatusCode::SERVICE_UNAVAILABLE => Problem::new(
            status,
            "unavailable",
            "The service is temporarily unavailable",
        ),
        StatusCode::NOT_FOUND => Problem::new(status, "not-found", "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => {
            Problem::new(status, "method-not-allowed", "Method not allowed")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Problem::new(status, "unsupported-media-type", "Unsupported media type")
        }
        _ => Problem::from_status(status),
    };
    let mut fresh = problem.into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            fresh.headers_mut().insert(name, v.clone());
        }
    }
    let (mut new_parts, body): (_, Body) = fresh.into_parts();
    new_parts.extensions = parts.extensions;
    Response::from_parts(new_parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_callers_are_plain_tokens() {
        let ok = |s: &'static str| acceptable_request_id(&HeaderValue::from_static(s));
        assert_eq!(ok("abc-123_x.y").as_deref(), Some("abc-123_x.y"));
        assert_eq!(ok(""), None);
        assert_eq!(ok("has space"), None);
        assert_eq!(ok("quote\"inject"), None);
        let long = "a".repeat(65);
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
    }

    #[test]
    fn foreign_errors_become_problems_and_keep_their_headers() {
        let res = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,HEAD")],
            "plain text",
        )
            .into_response();
        let res = into_problem_if_error(res);
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(is_problem(&res));
        assert_eq!(res.headers()[header::ALLOW], "GET,HEAD");
        let ok = into_problem_if_error((StatusCode::OK, "fine").into_response());
        assert!(!is_problem(&ok));
    }
}
