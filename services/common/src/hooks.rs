//! What one crate needs of another that it may not depend on, as traits the owner
//! implements: the relay owns print jobs, but printers leave through the org service
//! (unpairing) and the pairing service (a re-pairing that replaces one); every service
//! verifies access tokens with the keys the account service publishes. The binary hands
//! each the owner's implementation, as it hands the account service the org service's
//! directory.

use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The print jobs of a printer, as the services that remove printers must treat them.
pub trait PrinterJobs: Send + Sync + 'static {
    /// `printer` left its organization (unpaired, or replaced by a re-pairing that could
    /// not prove it was the same printer): its jobs that have not finished are failed
    /// now, in the caller's transaction, with `reason` in their history — none is sent
    /// to anyone after. Returns how many were failed.
    fn printer_left<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        printer: Uuid,
        reason: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;

    /// `user` left organization `org` (or was removed): what the relay holds that acts
    /// for them there — their printer upload keys — is revoked now, in the caller's
    /// transaction, so that a later return does not bring it back. Returns how many.
    fn member_left<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        org: Uuid,
        user: Uuid,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;
}

/// A token-signing public key, as its owner (the account service) publishes it.
#[derive(Clone, Debug)]
pub struct PublishedKey {
    pub kid: String,
    /// The public JWK.
    pub jwk: serde_json::Value,
    /// When it stops being published, if that is decided.
    pub published_until: Option<OffsetDateTime>,
}

/// The keys that sign access tokens, published now: what every service verifies tokens
/// with ([`crate::auth::TokenVerifier`]).
pub trait PublishedKeys: Send + Sync + 'static {
    fn published(&self, now: OffsetDateTime) -> BoxFuture<'_, sqlx::Result<Vec<PublishedKey>>>;
}
