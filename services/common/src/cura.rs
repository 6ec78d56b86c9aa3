//! What every service that answers UltiMaker Cura shares (`../shared/reference/
//! cura-cloud-api.md` §4.1, `cura-digital-library.md` §3–§4): Cura's error envelope,
//! made from any refusal ([`errors`]), and the one date format its parsers take
//! ([`time`]).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;

use crate::ApiError;

/// A date as Cura's parsers take it: `%Y-%m-%dT%H:%M:%S.%fZ`, in UTC, to the millisecond.
pub fn time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A refusal in Cura's error envelope, `{"errors": [{"id", "code", "title",
/// "http_status", "detail"}]}` (`http_status` a string), from any [`ApiError`]: its
/// status, its problem type as the code, its words, and its `Retry-After`. A full queue
/// becomes a 409, which Cura shows as "queue full".
pub async fn errors(e: ApiError) -> Response {
    envelope(e.into_response()).await
}

/// Where Cura's API is served: refusals there are in its shape.
pub const PATHS: [&str; 3] = ["/connect/v1/", "/cura/v1/", "/cura-packages/"];

/// A layer for the whole application: a problem+json answer to a request of Cura's API
/// ([`PATHS`]) — a refusal made before any handler ran (no token, a missing scope, the
/// rate limit) — goes out in Cura's error envelope, which its parsers need.
pub async fn in_curas_shape(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let curas = PATHS.iter().any(|p| req.uri().path().starts_with(p));
    let res = next.run(req).await;
    let problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if curas && problem {
        envelope(res).await
    } else {
        res
    }
}

/// A problem+json answer in Cura's envelope.
async fn envelope(res: Response) -> Response {
    crate::error::reshape(res, |mut status, problem| {
        let mut code = problem["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:printworks:problem:"))
            .unwrap_or("error");
        if code == "job-queue-full" {
            status = StatusCode::CONFLICT;
            code = "queueFull";
        }
        let title = problem["title"]
            .as_str()
            .unwrap_or("The request was refused");
        let mut error = json!({
            "id": problem["request_id"].as_str().unwrap_or_default(),
            "code": code,
            "title": title,
            "http_status": status.as_u16().to_string(),
        });
        if let Some(detail) = problem["detail"].as_str() {
            error["detail"] = json!(detail);
        }
        (status, json!({ "errors": [error] }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_as_curas_parsers_take_them() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_763_035_200_500_000_000).unwrap();
        assert_eq!(time(t), "2025-11-13T12:00:00.500Z");
    }
}
