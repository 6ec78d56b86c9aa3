//! Errors as RFC 9457 problem details.
//!
//! Every error a client sees is `application/problem+json` with `type`, `title`,
//! `status`, an optional `detail` and the `request_id` (also in the `x-request-id`
//! header). A 500 logs its cause and says nothing about it. Error responses made outside
//! our handlers (unknown route, wrong method, a layer's refusal) are rewritten into the
//! same shape by [`crate::http`], so there is no second format.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::http::current_request_id;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Problem `type` URIs are `urn:printworks:problem:<slug>`; the slugs are listed in
/// `docs/errors.md`. Plain HTTP errors use `about:blank` with the status phrase as title.
pub const TYPE_PREFIX: &str = "urn:printworks:problem:";

/// One problem document, ready to render.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    type_uri: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<String>,
    extensions: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of our own kind: `slug` becomes `urn:printworks:problem:<slug>`.
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str) -> Self {
        Self {
            status,
            type_uri: Cow::Owned(format!("{TYPE_PREFIX}{slug}")),
            title: Cow::Borrowed(title),
            detail: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// A plain HTTP error: `about:blank`, titled with the status phrase.
    pub fn from_status(status: StatusCode) -> Self {
        Self {
            status,
            type_uri: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An extension member, e.g. `"mfa_required": true`. `type`, `title`, `status`,
    /// `detail` and `request_id` are reserved and ignored here.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if !matches!(key, "type" | "title" | "status" | "detail" | "request_id") {
            self.extensions.insert(key.to_owned(), value.into());
        }
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn type_uri(&self) -> &str {
        &self.type_uri
    }

    fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::from(self.type_uri.as_ref()));
        body.insert("title".into(), Value::from(self.title.as_ref()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(detail) = &self.detail {
            body.insert("detail".into(), Value::from(detail.as_str()));
        }
        for (k, v) in &self.extensions {
            body.insert(k.clone(), v.clone());
        }
        if let Some(id) = current_request_id() {
            body.insert("request_id".into(), Value::from(id));
        }
        Value::Object(body)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut res = (self.status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        res
    }
}

/// The error type handlers return. Client errors carry a [`Problem`]; anything else is
/// [`ApiError::Internal`], logged with its cause and answered with a bare 500.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.title)]
    Problem(Box<Problem>),
    #[error("service unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
        )
        .detail(detail)
        .into()
    }

    /// The request is well-formed but its content is refused (validation).
    pub fn invalid(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The request content is not valid",
        )
        .detail(detail)
        .into()
    }

    /// Not found, or not visible to the caller: the same answer, by design.
    pub fn not_found() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").into()
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict")
            .detail(detail)
            .into()
    }

    pub fn too_many_requests(retry_after: Duration) -> Self {
        let secs = retry_after.as_secs().max(1);
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .detail(format!("Try again in {secs} seconds."))
        .header(header::RETRY_AFTER, HeaderValue::from(secs))
        .into()
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(Box::new(p))
    }
}

/// The database is down, restarting or saturated: the client may retry (503, not 500).
/// Beside the pool's own errors, what PostgreSQL says as it goes away or comes back:
/// SQLSTATE class 08 (connection exception) and 57P (operator intervention: shut down by
/// an administrator or a crash, not accepting connections yet).
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // An outage stays a 503 however it was wrapped.
        let unavailable = e
            .chain()
            .any(|cause| cause.downcast_ref::<sqlx::Error>().is_some_and(is_outage));
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            e if is_outage(&e) => Self::Unavailable(e.into()),
            // A NUL character in text (PostgreSQL refuses it): the input was bad, whatever
            // route let it through.
            sqlx::Error::Database(d) if d.code().as_deref() == Some(NUL_IN_TEXT) => {
                Self::bad_request("Text must not contain NUL characters.")
            }
            e => Self::Internal(e.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Problem(p) => p.into_response(),
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %format!("{cause:#}"), "dependency unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "The service is temporarily unavailable",
                )
                .detail("Try again shortly.")
                .header(header::RETRY_AFTER, HeaderValue::from_static("5"))
                .into_response()
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "internal error");
                Problem::from_status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// SQLSTATE `character_not_in_repertoire`: what PostgreSQL answers to a NUL in text.
pub const NUL_IN_TEXT: &str = "22021";

/// 403: the caller's role in the organization does not allow this; `detail` says what
/// would.
pub fn role_forbids(detail: &str) -> ApiError {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Your role in this organization does not allow this",
    )
    .detail(detail)
    .into()
}

/// A problem+json answer re-shaped for a client that reads another error format (Cura's
/// envelope, OctoPrint's `{"error"}`): `shape` gets its status and the problem's fields
/// and gives the status and body to send. `Retry-After` and `WWW-Authenticate` are kept.
pub async fn reshape(
    res: Response,
    shape: impl FnOnce(StatusCode, &Value) -> (StatusCode, Value),
) -> Response {
    let kept: Vec<_> = [header::RETRY_AFTER, header::WWW_AUTHENTICATE]
        .into_iter()
        .filter_map(|name| res.headers().get(&name).cloned().map(|v| (name, v)))
        .collect();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, body) = shape(status, &problem);
    let mut res = (status, axum::Json(body)).into_response();
    for (name, value) in kept {
        res.headers_mut().insert(name, value);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_database_outage_is_still_unavailable() {
        let e = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("loading the account");
        assert!(matches!(ApiError::from(e), ApiError::Unavailable(_)));
        assert!(matches!(
            ApiError::from(anyhow::anyhow!("a bug")),
            ApiError::Internal(_)
        ));
    }
}
