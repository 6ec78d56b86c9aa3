//! What printers and the cloud say to each other, shared by the services and the
//! reference printer agent: the credentials a printer collects when it is paired, and
//! the proof of its shared secret that renews an expired certificate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};

use crate::crypto::{SecretBox, base64url, base64url_decode, hmac_sha256, sha256};

/// What a paired printer collects, once (`POST /pairing/v1/requests/{id}/poll`).
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub printer_id: Uuid,
    pub organization_id: Uuid,
    pub organization_name: String,
    /// Proves the printer when its certificate has expired (HMAC over a challenge).
    pub shared_secret: String,
    pub certificate_pem: String,
    pub ca_chain_pem: String,
    /// Where the printer endpoint is.
    pub printer_url: String,
    /// The relay's public key (Ed25519, base64url) that signs every job sent to the
    /// printer: pin it, and print nothing it did not sign.
    pub job_signing_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("printer_id", &self.printer_id)
            .field("organization_id", &self.organization_id)
            .field("printer_url", &self.printer_url)
            .finish_non_exhaustive()
    }
}

/// What the renewal proof is an HMAC of: the printer, the server's challenge and the
/// digest of the CSR, so that a proof cannot be replayed or moved to another CSR.
pub fn renewal_message(printer_id: Uuid, challenge: &str, csr_der: &[u8]) -> Vec<u8> {
    let digest = crate::crypto::hex(&sha256(csr_der));
    format!("printworks-renew-v1\n{printer_id}\n{challenge}\n{digest}").into_bytes()
}

/// The proof a printer sends: base64url of HMAC-SHA256(shared secret, message).
pub fn renewal_proof(
    shared_secret: &str,
    printer_id: Uuid,
    challenge: &str,
    csr_der: &[u8],
) -> String {
    base64url(&hmac_sha256(
        shared_secret.as_bytes(),
        &renewal_message(printer_id, challenge, csr_der),
    ))
}

/// What a re-pairing printer's proof is an HMAC of: the printer it was, the server's
/// challenge and the digest of the CSR it asks to be paired with. Only a request carrying
/// such a proof re-pairs that printer under the same identity.
pub fn repair_message(printer_id: Uuid, challenge: &str, csr_der: &[u8]) -> Vec<u8> {
    let digest = crate::crypto::hex(&sha256(csr_der));
    format!("printworks-repair-v1\n{printer_id}\n{challenge}\n{digest}").into_bytes()
}

/// The re-pairing proof a printer sends: base64url of HMAC-SHA256(shared secret, message).
pub fn repair_proof(
    shared_secret: &str,
    printer_id: Uuid,
    challenge: &str,
    csr_der: &[u8],
) -> String {
    base64url(&hmac_sha256(
        shared_secret.as_bytes(),
        &repair_message(printer_id, challenge, csr_der),
    ))
}

/// The relay's job-signing key, derived from the master key: every replica with the
/// same master key signs alike, and nothing more is stored.
pub fn job_signing_key(secrets: &SecretBox) -> Ed25519KeyPair {
    let seed = secrets.mac("relay-job-signing-key", b"v1");
    #[allow(clippy::expect_used)]
    Ed25519KeyPair::from_seed_unchecked(&seed).expect("a 32-byte Ed25519 seed")
}

/// The public half, as printers receive it (base64url of the 32 raw bytes).
pub fn job_signing_public_key(secrets: &SecretBox) -> String {
    base64url(job_signing_key(secrets).public_key().as_ref())
}

/// What a job signature covers: the printer, the job, its size and its SHA-256 (hex).
pub fn job_message(printer_id: Uuid, job_id: Uuid, size: u64, sha256_hex: &str) -> Vec<u8> {
    format!("printworks-job-v1\n{printer_id}\n{job_id}\n{size}\n{sha256_hex}").into_bytes()
}

/// The relay's signature of a job (base64url).
pub fn sign_job(
    key: &Ed25519KeyPair,
    printer_id: Uuid,
    job_id: Uuid,
    size: u64,
    sha256_hex: &str,
) -> String {
    base64url(
        key.sign(&job_message(printer_id, job_id, size, sha256_hex))
            .as_ref(),
    )
}

/// Whether `signature` is the relay's (whose public key the printer pinned) over this job.
pub fn verify_job(
    public_key: &str,
    printer_id: Uuid,
    job_id: Uuid,
    size: u64,
    sha256_hex: &str,
    signature: &str,
) -> bool {
    let (Some(key), Some(sig)) = (base64url_decode(public_key), base64url_decode(signature)) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(&job_message(printer_id, job_id, size, sha256_hex), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::MasterKey;

    #[test]
    fn jobs_are_signed_and_a_changed_field_fails() {
        let secrets = SecretBox::new(&MasterKey::from_bytes([3; 32]));
        let key = job_signing_key(&secrets);
        let public = job_signing_public_key(&secrets);
        let (p, j) = (Uuid::new_v4(), Uuid::new_v4());
        let sig = sign_job(&key, p, j, 42, "ab");
        assert!(verify_job(&public, p, j, 42, "ab", &sig));
        assert!(!verify_job(&public, p, j, 43, "ab", &sig));
        assert!(!verify_job(&public, p, j, 42, "ac", &sig));
        assert!(!verify_job(&public, Uuid::new_v4(), j, 42, "ab", &sig));
        let other = SecretBox::new(&MasterKey::from_bytes([4; 32]));
        assert!(!verify_job(
            &job_signing_public_key(&other),
            p,
            j,
            42,
            "ab",
            &sig
        ));
        assert!(!verify_job(&public, p, j, 42, "ab", "not base64!"));
        // The same master key gives the same key on every replica.
        assert_eq!(
            job_signing_public_key(&SecretBox::new(&MasterKey::from_bytes([3; 32]))),
            public
        );
    }
}
