//! UltiMaker Cura signs in to Printworks as it signs in to UltiMaker's account server,
//! unmodified but for its account root (`{PUBLIC_URL}/cura-account`;
//! `../shared/reference/cura-cloud-api.md` §3 records what it sends and needs):
//!
//! - its public client is built in ([`CLIENT_ID`], redirect
//!   `http://localhost:32118/callback`, migration `20261201030000_cura_client.sql`);
//! - its PKCE method `S512` — SHA-512, in standard base64 with `+`→`_` and `/`→`-` (the
//!   reverse of base64url) and with its padding — is taken for this client only
//!   ([`s512`]); every other client stays S256-only;
//! - it asks for UltiMaker's scope names; they are read as the Printworks scopes they
//!   amount to ([`printworks_scopes`]), and the consent page shows those;
//! - a refusal goes back as `error_code=user_denied`, the only one Cura recognises;
//! - `GET /cura-account/check-token` and `GET /cura-account/users/permissions` answer in
//!   Cura's `{"data": …}` shape, and `/cura-account/app/auth-success|auth-error` are the
//!   pages Cura sends the browser to.
//!
//! `GET /cura-account/authorize` and `POST /cura-account/token` are the OAuth endpoints
//! themselves (`oauth::authorize`, `oauth::token`), at the paths Cura builds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use printworks_common::ApiError;
use printworks_common::auth::{Auth, Scope};
use serde_json::{Value, json};

use crate::AccountState;
use crate::pages::message;

/// Cura's client id, as Cura ships it (`cura/API/Account.py`).
pub const CLIENT_ID: &str = "um----------------------------ultimaker_cura";
/// Where Cura's account root is served: `{PUBLIC_URL}/cura-account`.
pub const ACCOUNT_ROOT: &str = "/cura-account";

/// The Printworks scopes UltiMaker's scope names amount to. Names Printworks has no use
/// for (backups, packages, meshes, materials) grant nothing; Printworks' own names are
/// taken as they are; and the refresh token Cura requires comes with
/// `account.user.read`, the scope every Cura sign-in asks for.
pub fn printworks_scopes(asked: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for name in asked.split(' ').filter(|s| !s.is_empty()) {
        let granted: &[&str] = match name {
            "account.user.read" => &["openid", "profile", "email", "offline_access"],
            "connect.cluster.read" => &["printer.read", "print_job.read"],
            "connect.cluster.write" => &["print_job.write"],
            "cura.printjob.read" => &["print_job.read"],
            "cura.printjob.write" => &["print_job.write"],
            "library.project.read" | "library.project.write" => &["organization.read"],
            "drive.backup.read"
            | "drive.backup.write"
            | "packages.download"
            | "packages.rating.read"
            | "packages.rating.write"
            | "connect.material.write"
            | "cura.mesh.read"
            | "cura.mesh.write" => &[],
            // A Printworks scope asked by name is taken; a name of UltiMaker's that
            // a later Cura adds is dropped rather than failing its sign-in.
            other => {
                if Scope::parse(other).is_some() {
                    out.push(other);
                }
                &[]
            }
        };
        out.extend_from_slice(granted);
    }
    out.sort_unstable();
    out.dedup();
    out.join(" ")
}

/// Cura's S512 challenge of `verifier`: `b64encode(sha512(verifier), altchars=b"_-")`,
/// padded (88 characters).
pub fn s512(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, verifier.as_bytes());
    base64::engine::general_purpose::STANDARD
        .encode(digest.as_ref())
        .replace('+', "_")
        .replace('/', "-")
}

/// Whether `challenge` can be an S512 challenge: 88 characters of Cura's alphabet,
/// ending in its padding.
pub fn is_s512_challenge(challenge: &str) -> bool {
    challenge.len() == 88
        && challenge.ends_with("==")
        && challenge[..86]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// `GET /cura-account/check-token`: who the token is for, in Cura's shape (`user_id`
/// and `username` required; `organization` left out, as Cura takes it optional but never
/// `null`).
pub async fn check_token(
    State(state): State<AccountState>,
    auth: Auth,
) -> Result<axum::Json<Value>, ApiError> {
    // Cura's question, for Cura's tokens: no other app learns the person's name here.
    if auth.client_id != CLIENT_ID {
        return Err(ApiError::not_found());
    }
    let user = auth.user_id().ok_or_else(ApiError::not_found)?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT email, display_name FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional(&state.ctx.db)
            .await?;
    let (email, display_name) = row.ok_or_else(ApiError::not_found)?;
    // The name with `profile`, else the address with `email`, else the id.
    let username = if auth.scopes.contains(Scope::Profile) && !display_name.trim().is_empty() {
        display_name
    } else if auth.scopes.contains(Scope::Email) {
        email
    } else {
        user.to_string()
    };
    Ok(axum::Json(json!({
        "data": {
            "user_id": user,
            "username": username,
            "profile_image_url": "",
            "subscriptions": [],
        }
    })))
}

/// `GET /cura-account/users/permissions`: what the token lets Cura do, as the Digital
/// Factory permission names Cura reads (`cloud/CloudOutputDevice.py`).
pub async fn permissions(auth: Auth) -> axum::Json<Value> {
    let mut permissions = Vec::new();
    if auth.scopes.contains(Scope::PrinterRead) {
        permissions.push("digital-factory.printer.read");
    }
    if auth.scopes.contains(Scope::PrintJobRead) {
        permissions.push("digital-factory.print-job.read");
    }
    if auth.scopes.contains(Scope::PrintJobWrite) {
        // Acting on other people's jobs depends on the role in each organization,
        // which the relay checks on every action; Cura is told "own".
        permissions.push("digital-factory.print-job.write.own");
    }
    axum::Json(json!({ "data": { "permissions": permissions } }))
}

/// `GET /cura-account/app/auth-success`: where Cura sends the browser after a sign-in.
pub async fn auth_success() -> Response {
    message(
        StatusCode::OK,
        "Signed in to UltiMaker Cura",
        "Cura is signed in to Printworks. You may close this page and return to Cura.",
        None,
    )
}

/// `GET /cura-account/app/auth-error`: where Cura sends the browser when it failed.
pub async fn auth_error() -> Response {
    message(
        StatusCode::OK,
        "Cura could not sign in",
        "The sign-in did not complete (it was refused, or Cura could not finish it). Return to Cura and try again.",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the Cura reference (§3.2): Cura's alphabet, not base64url.
    #[test]
    fn the_s512_challenge_is_curas() {
        let verifier = "5d8cf54ed7a86bb4787afaf1d0b51c4ae1a65b422cc577c70349346830cc6d2b";
        let challenge = "EBZuAPX1wAVdV_SqxZctxn3jjTxD4AWYHivsC3rOQ_pqYR9dTfwEcWTBuEbU29LpsQgnt8yZq0JCN8WxdVybOA==";
        assert_eq!(s512(verifier), challenge);
        assert!(is_s512_challenge(challenge));
        // (base64url has the same characters: only the exchange tells the alphabets
        // apart, `tests/api/cura.rs`.)
        assert!(!is_s512_challenge(&challenge[..87]));
        assert!(!is_s512_challenge(challenge.trim_end_matches('=')));
    }

    #[test]
    fn curas_scopes_are_read_as_printworks_scopes() {
        let cura = "account.user.read drive.backup.read drive.backup.write packages.download packages.rating.read packages.rating.write connect.cluster.read connect.cluster.write connect.material.write library.project.read library.project.write cura.printjob.read cura.printjob.write cura.mesh.read cura.mesh.write";
        assert_eq!(
            printworks_scopes(cura),
            "email offline_access openid organization.read print_job.read print_job.write printer.read profile"
        );
        assert_eq!(printworks_scopes("openid unknown.scope"), "openid");
    }
}
