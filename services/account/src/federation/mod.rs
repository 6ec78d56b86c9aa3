//! Federated sign-in: an organization signs its people in with its own OpenID Connect
//! provider. The org service keeps the provider's settings, the e-mail domains it has
//! proven and the organization's policy; this module is the relying party
//! ([`provider`]) and the sign-in pages ([`signin`]).

pub mod provider;
pub mod signin;

use printworks_common::auth::Role;
use secrecy::SecretString;
use uuid::Uuid;

/// An organization's identity provider, as the org service hands it to the sign-in.
#[derive(Clone, Debug)]
pub struct IdentityProvider {
    pub organization_id: Uuid,
    pub organization_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// The role of the people its sign-in brings in.
    pub default_role: Role,
    /// Addresses of its proven domains may not sign in with a password.
    pub enforced: bool,
    /// The organization's policy allows sign-in through the provider.
    pub federation_allowed: bool,
    /// The organization's system use notification, shown before sign-in.
    pub notice: Option<String>,
}

/// Which provider the sign-in asks for.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// The organization that proved this e-mail domain.
    Domain(String),
    /// The organization's own.
    Organization(Uuid),
}

/// `amr` values (RFC 8176) that show a second factor was used at the provider.
const SECOND_FACTORS: &[&str] = &["mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris"];

/// The session's `amr`: `fed` (signed in through a provider), and `mfa` if the
/// provider says it checked a second factor.
pub fn session_amr(provider_amr: &[String]) -> Vec<&'static str> {
    let mfa = provider_amr
        .iter()
        .any(|m| SECOND_FACTORS.contains(&m.as_str()));
    if mfa { vec!["fed", "mfa"] } else { vec!["fed"] }
}

/// Whether the person is already linked to someone at `issuer` for the organization.
pub(crate) async fn linked_at(
    db: impl sqlx::PgExecutor<'_>,
    user_id: Uuid,
    organization_id: Uuid,
    issuer: &str,
) -> sqlx::Result<bool> {
    let linked: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM federated_identities
         WHERE user_id = $1 AND organization_id = $2 AND issuer = $3 LIMIT 1",
    )
    .bind(user_id)
    .bind(organization_id)
    .bind(issuer)
    .fetch_optional(db)
    .await?;
    Ok(linked.is_some())
}
