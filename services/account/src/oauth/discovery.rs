//! `GET /.well-known/openid-configuration` and `GET /oauth/jwks`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use printworks_common::ApiError;
use printworks_common::auth::Scope;
use printworks_common::http::Json;
use serde_json::json;

use crate::AccountState;
use crate::keys::JWKS_MAX_AGE_SECS;

pub(crate) async fn configuration(State(state): State<AccountState>) -> Response {
    let base = &state.ctx.settings.public_url;
    let scopes: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(json!({
            "issuer": base.as_str(),
            "authorization_endpoint": base.link("/oauth/authorize"),
            "token_endpoint": base.link("/oauth/token"),
            "revocation_endpoint": base.link("/oauth/revoke"),
            "introspection_endpoint": base.link("/oauth/introspect"),
            "userinfo_endpoint": base.link("/oauth/userinfo"),
            "jwks_uri": base.link("/oauth/jwks"),
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "sid", "name", "email", "email_verified"],
            "prompt_values_supported": ["none", "consent"],
            "authorization_response_iss_parameter_supported": true,
        })),
    )
        .into_response()
}

pub(crate) async fn jwks(State(state): State<AccountState>) -> Result<Response, ApiError> {
    let doc = state.keys.jwks().await?;
    Ok((
        [
            (
                header::CACHE_CONTROL,
                format!("public, max-age={JWKS_MAX_AGE_SECS}"),
            ),
            (header::CONTENT_TYPE, "application/jwk-set+json".to_owned()),
        ],
        axum::Json(doc),
    )
        .into_response())
}
