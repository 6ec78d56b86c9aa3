//! The little cryptography a printer does, with aws-lc-rs (as rustls does): a digest,
//! the HMAC that proves its shared secret, the check of the relay's job signatures, and
//! jitter. The bytes each covers are fixed by the protocol (`printworks_proto`); the
//! server side computes the same with `printworks_common`.

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::{digest, hmac, signature};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// SHA-256 of `data`, lowercase hex (as the protocol writes digests).
pub fn sha256_hex(data: &[u8]) -> String {
    printworks_proto::hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// The proof of the shared secret that renews an expired certificate: base64url (no
/// padding) of HMAC-SHA256, keyed with the secret's UTF-8 bytes, over
/// [`renewal_message_from_digest`](printworks_proto::renewal_message_from_digest) for
/// this printer, the server's challenge and the digest of the CSR's DER.
pub fn renewal_proof(
    shared_secret: &str,
    printer_id: Uuid,
    challenge: &str,
    csr_der: &[u8],
) -> String {
    let message =
        printworks_proto::renewal_message_from_digest(printer_id, challenge, &sha256_hex(csr_der));
    let key = hmac::Key::new(hmac::HMAC_SHA256, shared_secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, &message).as_ref())
}

/// Whether `signature` (Ed25519, base64url) is the relay's over this job
/// ([`job_message`](printworks_proto::job_message)), with `public_key` the key
/// (base64url of its 32 bytes) the printer pinned when it paired.
pub fn verify_job(
    public_key: &str,
    printer_id: Uuid,
    job_id: Uuid,
    size: u64,
    sha256_hex: &str,
    signature: &str,
) -> bool {
    let (Ok(key), Ok(sig)) = (
        URL_SAFE_NO_PAD.decode(public_key),
        URL_SAFE_NO_PAD.decode(signature),
    ) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(
            &printworks_proto::job_message(printer_id, job_id, size, sha256_hex),
            &sig,
        )
        .is_ok()
}

/// A uniformly random integer in `0..bound` (rejection sampling, no modulo bias), from
/// the operating system's CSPRNG.
pub fn random_below(bound: u32) -> u32 {
    assert!(bound > 0);
    let zone = u32::MAX - (u32::MAX % bound);
    let rng = SystemRandom::new();
    loop {
        let mut buf = [0u8; 4];
        #[allow(clippy::expect_used)]
        rng.fill(&mut buf)
            .expect("the system random number generator failed");
        let v = u32::from_le_bytes(buf);
        if v < zone {
            return v % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

    use super::*;

    /// Signs as the relay does (`printworks_common::printer::JobSigner`): Ed25519 over
    /// the job message, key and signature in base64url.
    fn relay_key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn sign(key: &Ed25519KeyPair, printer: Uuid, job: Uuid, size: u64, sha256: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            key.sign(&printworks_proto::job_message(printer, job, size, sha256))
                .as_ref(),
        )
    }

    #[test]
    fn jobs_signed_by_the_relay_verify_and_a_changed_field_fails() {
        let key = relay_key(3);
        let public = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        let (p, j) = (Uuid::new_v4(), Uuid::new_v4());
        let sig = sign(&key, p, j, 42, "ab");
        assert!(verify_job(&public, p, j, 42, "ab", &sig));
        assert!(!verify_job(&public, p, j, 43, "ab", &sig));
        assert!(!verify_job(&public, p, j, 42, "ac", &sig));
        assert!(!verify_job(&public, Uuid::new_v4(), j, 42, "ab", &sig));
        assert!(!verify_job(&public, p, Uuid::new_v4(), 42, "ab", &sig));
        let other = URL_SAFE_NO_PAD.encode(relay_key(4).public_key().as_ref());
        assert!(!verify_job(&other, p, j, 42, "ab", &sig));
        assert!(!verify_job(&public, p, j, 42, "ab", "not base64!"));
        assert!(!verify_job("not base64!", p, j, 42, "ab", &sig));
        assert!(!verify_job(&public, p, j, 42, "ab", ""));
    }

    #[test]
    fn digests_are_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The expected proof was computed apart from this code (Python's `hmac` and
    /// `hashlib`), from the message the protocol fixes.
    #[test]
    fn the_renewal_proof_is_the_hmac_of_the_protocol_message() {
        let printer = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            renewal_proof("s3cret", printer, "chal", b"csr"),
            "c1jI-ywGvkSDGOBl3KG1VQ8JISajAlkQYadUDRxM87w"
        );
        assert_ne!(
            renewal_proof("s3cret", printer, "chal", b"csr2"),
            renewal_proof("s3cret", printer, "chal", b"csr")
        );
    }

    #[test]
    fn random_below_stays_in_range() {
        for _ in 0..1000 {
            assert!(random_below(1000) < 1000);
        }
        assert_eq!(random_below(1), 0);
    }
}
