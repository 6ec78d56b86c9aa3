//! The OAuth 2.0 / OpenID Connect provider: discovery and JWKS, the authorization
//! endpoint (code flow, PKCE, consent), the token endpoint (authorization_code,
//! refresh_token with rotation and reuse detection, client_credentials), revocation
//! (RFC 7009), introspection (RFC 7662) and userinfo.

pub mod authorize;
pub mod clients;
pub mod discovery;
pub mod introspect;
pub mod token;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use printworks_common::http::current_request_id;
use serde_json::json;

/// An error of the token, revocation or introspection endpoint, in the format RFC 6749
/// §5.2 prescribes (`application/json` with `error` and `error_description`), carrying the
/// problem-details members too so that it reads like every other error of the API.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// The client tried HTTP Basic: answer 401 with a Basic challenge.
    pub basic_challenge: bool,
}

impl OAuthError {
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }

    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }

    pub fn invalid_client(basic: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "Client authentication failed.".into(),
            basic_challenge: basic,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.error,
            "error_description": self.description,
            "type": format!("{}oauth-{}", printworks_common::error::TYPE_PREFIX, self.error.replace('_', "-")),
            "title": "The OAuth request was refused",
            "status": self.status.as_u16(),
            "detail": self.description,
            "request_id": current_request_id(),
        });
        let mut res = (self.status, axum::Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.basic_challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"printworks\""),
            );
        }
        res
    }
}

impl From<anyhow::Error> for OAuthError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "internal error in the OAuth provider");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: "The server could not answer this request.".into(),
            basic_challenge: false,
        }
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d)
                if d.code().as_deref() == Some(printworks_common::error::NUL_IN_TEXT) =>
            {
                OAuthError::invalid_request("Parameters must not contain NUL characters.")
            }
            _ => anyhow::Error::from(e).into(),
        }
    }
}

/// Whether a parameter holds a control character (refused before it reaches a query).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A response that must not be cached (RFC 6749 §5.1).
pub fn no_store<T: IntoResponse>(body: T) -> Response {
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}
