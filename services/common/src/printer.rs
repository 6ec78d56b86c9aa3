//! What printers and the cloud say to each other, shared by the services and the
//! reference printer agent: the credentials a printer collects when it is paired, and
//! the proof of its shared secret that renews an expired certificate.

use uuid::Uuid;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

use crate::crypto::{SecretBox, base64url, hmac_sha256, sha256};

pub use printworks_proto::{Credentials, job_message};

/// What the renewal proof is an HMAC of: the printer, the server's challenge and the
/// digest of the CSR, so that a proof cannot be replayed or moved to another CSR.
pub fn renewal_message(printer_id: Uuid, challenge: &str, csr_der: &[u8]) -> Vec<u8> {
    printworks_proto::renewal_message_from_digest(
        printer_id,
        challenge,
        &crate::crypto::hex(&sha256(csr_der)),
    )
}

/// What a re-pairing printer's proof is an HMAC of: the printer it was, the server's
/// challenge and the digest of the CSR it asks to be paired with. Only a request carrying
/// such a proof re-pairs that printer under the same identity.
pub fn repair_message(printer_id: Uuid, challenge: &str, csr_der: &[u8]) -> Vec<u8> {
    printworks_proto::repair_message_from_digest(
        printer_id,
        challenge,
        &crate::crypto::hex(&sha256(csr_der)),
    )
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

/// The relay's job-signing key: an Ed25519 key of its own with its own id, kept in the
/// database sealed by the master key (it outlives a rotation of the master key, so the
/// key printers pinned when they paired stays the one that signs their jobs). Made on
/// first use from the seed the relay used to derive from the master key, so that
/// printers paired before keep trusting it.
pub struct JobSigner {
    pub key_id: String,
    key: Ed25519KeyPair,
}

const JOB_SIGNING: &str = "job-signing";

impl JobSigner {
    /// From a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        #[allow(clippy::expect_used)]
        let key = Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte Ed25519 seed");
        let digest = crate::crypto::hex(&sha256(key.public_key().as_ref()));
        Self {
            key_id: format!("job-{}", &digest[..16]),
            key,
        }
    }

    /// The key, from the database (made there on first use; a database whose
    /// migrations have not made the table yet has never seen a rotation, and gets the
    /// first key).
    pub async fn load(conn: &mut sqlx::PgConnection, secrets: &SecretBox) -> anyhow::Result<Self> {
        let context = format!("service-key:{JOB_SIGNING}");
        let seed = secrets.mac("relay-job-signing-key", b"v1");
        let first = Self::from_seed(&seed);
        let kept = sqlx::query(
            "INSERT INTO service_keys (name, key_id, key_sealed, created_at)
             VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO NOTHING",
        )
        .bind(JOB_SIGNING)
        .bind(&first.key_id)
        .bind(secrets.seal(&context, &seed))
        .execute(&mut *conn)
        .await;
        match kept {
            Ok(_) => {}
            Err(e) if crate::crypto::is_undefined_table(&e) => return Ok(first),
            Err(e) => return Err(e.into()),
        }
        let sealed: Vec<u8> =
            sqlx::query_scalar("SELECT key_sealed FROM service_keys WHERE name = $1")
                .bind(JOB_SIGNING)
                .fetch_one(&mut *conn)
                .await?;
        let seed: [u8; 32] = secrets
            .open(&context, &sealed)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("the job-signing key does not open with the configured master keys")
            })?;
        Ok(Self::from_seed(&seed))
    }

    /// The public half, as printers receive it (base64url of the 32 raw bytes).
    pub fn public_key(&self) -> String {
        base64url(self.key.public_key().as_ref())
    }

    /// The signature of a job (base64url).
    pub fn sign(&self, printer_id: Uuid, job_id: Uuid, size: u64, sha256_hex: &str) -> String {
        base64url(
            self.key
                .sign(&job_message(printer_id, job_id, size, sha256_hex))
                .as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature;

    use super::*;
    use crate::crypto::base64url_decode;

    #[test]
    fn jobs_are_signed_and_a_changed_field_fails() {
        let signer = JobSigner::from_seed(&[3; 32]);
        let public = signer.public_key();
        assert!(signer.key_id.starts_with("job-") && signer.key_id.len() == 20);
        let (p, j) = (Uuid::new_v4(), Uuid::new_v4());
        let sig = signer.sign(p, j, 42, "ab");
        let verify = |key: &str, p, j, size, digest: &str, sig: &str| {
            let (Some(key), Some(sig)) = (base64url_decode(key), base64url_decode(sig)) else {
                return false;
            };
            signature::UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(&job_message(p, j, size, digest), &sig)
                .is_ok()
        };
        assert!(verify(&public, p, j, 42, "ab", &sig));
        assert!(!verify(&public, p, j, 43, "ab", &sig));
        assert!(!verify(&public, p, j, 42, "ac", &sig));
        assert!(!verify(&public, Uuid::new_v4(), j, 42, "ab", &sig));
        let other = JobSigner::from_seed(&[4; 32]);
        assert!(!verify(&other.public_key(), p, j, 42, "ab", &sig));
        assert!(!verify(&public, p, j, 42, "ab", "not base64!"));
    }
}
