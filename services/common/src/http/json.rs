//! `Json<T>`: axum's JSON extractor and response, with refusals as problem+json that say
//! what was wrong (a missing field, a syntax error, the wrong content type, a body over
//! the limit) without revealing anything internal.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Problem};

#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(rejection_to_problem(&rejection).into()),
        }
    }
}

fn rejection_to_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The request content is not valid",
        )
        // serde's message names the field and position, e.g. "missing field `email`".
        .detail(serde_detail(&e.body_text())),
        JsonRejection::JsonSyntaxError(e) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
        )
        .detail(serde_detail(&e.body_text())),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("Send the body as Content-Type: application/json."),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The request body is too large",
        ),
        other => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
        )
        .detail(if other.status() == StatusCode::REQUEST_TIMEOUT {
            "The request body was not received in time."
        } else {
            "The request body could not be read."
        }),
    }
}

/// axum prefixes serde's message with its own sentence; keep serde's part.
fn serde_detail(body_text: &str) -> String {
    let msg = body_text
        .split_once(": ")
        .map(|(_, rest)| rest)
        .unwrap_or(body_text);
    // Bounded: serde quotes the offending input in some messages.
    msg.chars().take(300).collect()
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
