//! The account service's JSON API under `/account/v1`.

pub mod clients;
pub mod consents;
pub mod sessions;
pub mod totp;
pub mod users;

use axum::http::StatusCode;
use printworks_common::ApiError;
use printworks_common::error::Problem;

use crate::login::LoginError;

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::Throttled(wait) => ApiError::too_many_requests(wait),
            LoginError::InvalidCredentials => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "The e-mail address or the password is wrong",
            )
            .into(),
            LoginError::SecondFactorRequired => Problem::new(
                StatusCode::UNAUTHORIZED,
                "mfa-required",
                "A code from your authenticator app is required",
            )
            .detail(
                "Send totp_code: the 6-digit code of your authenticator app, or a recovery code.",
            )
            .with("mfa_required", true)
            .into(),
            LoginError::InvalidSecondFactor => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-second-factor",
                "The code is wrong or was already used",
            )
            .with("mfa_required", true)
            .into(),
            LoginError::FederationRequired => Problem::new(
                StatusCode::FORBIDDEN,
                "federation-required",
                "This address signs in through its organization's identity provider",
            )
            .detail(
                "The organization that owns this e-mail domain requires single sign-on: sign in at /account/login with “Sign in with single sign-on”.",
            )
            .into(),
            LoginError::Internal(e) => ApiError::from(e),
        }
    }
}

/// Trims and checks a display name: 1 to 100 characters, no control characters.
pub fn display_name(input: &str) -> Result<String, ApiError> {
    printworks_common::names::checked_name(input, "display_name")
}
