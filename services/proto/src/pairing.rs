//! Pairing and certificate renewal, the printer's side of the pairing service (public
//! API, no client certificate):
//!
//! - `POST /pairing/v1/requests` [`PairingRequestCreate`] → 201 [`PairingRequestCreated`];
//! - `POST /pairing/v1/requests/{id}/poll` [`PairingPollRequest`] → 202
//!   [`PairingPending`] while nobody entered the code, 200 [`Credentials`] once someone has;
//! - `POST /pairing/v1/printers/{printer}/challenge` (no body) → 201 [`PrinterChallenge`];
//! - `POST /pairing/v1/printers/{printer}/certificate` [`SecretRenewalRequest`] → 201
//!   [`RenewedCertificate`], as `POST /printer/v1/certificate`
//!   ([`TlsRenewalRequest`](crate::TlsRenewalRequest)) answers.
//!
//! The proofs of the shared secret are HMAC-SHA256, keyed with the UTF-8 bytes of the
//! secret, over [`renewal_message_from_digest`] or [`repair_message_from_digest`],
//! base64url without padding. Computing them (a digest, an HMAC) is left to each side's
//! cryptography; the bytes are fixed here.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The pairing service's routes for printers.
pub mod path {
    use uuid::Uuid;

    pub const REQUESTS: &str = "/pairing/v1/requests";

    /// `POST` a [`PairingPollRequest`](super::PairingPollRequest).
    pub fn poll(request: Uuid) -> String {
        format!("/pairing/v1/requests/{request}/poll")
    }

    /// `POST`, no body: a [`PrinterChallenge`](super::PrinterChallenge).
    pub fn challenge(printer: Uuid) -> String {
        format!("/pairing/v1/printers/{printer}/challenge")
    }

    /// `POST` a [`SecretRenewalRequest`](super::SecretRenewalRequest).
    pub fn certificate(printer: Uuid) -> String {
        format!("/pairing/v1/printers/{printer}/certificate")
    }
}

/// `POST /pairing/v1/requests`: the printer asks to be paired, with a CSR for a key it
/// made (OpenAPI `PairingRequestCreate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRequestCreate {
    pub csr_pem: String,
    pub firmware_version: String,
    pub model: String,
    /// A printer that was paired before proves its shared secret here, to be paired again
    /// under the same identity. Left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PairingPrevious>,
    pub serial: String,
}

/// Proof of a previous identity: a challenge from `POST
/// /pairing/v1/printers/{printer_id}/challenge` and the HMAC of the shared secret over
/// [`repair_message_from_digest`] for it and this request's CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPrevious {
    pub challenge: String,
    pub printer_id: Uuid,
    pub proof: String,
}

/// The answer to a [`PairingRequestCreate`] (OpenAPI `PairingRequestCreated`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRequestCreated {
    pub request_id: Uuid,
    /// Only this printer knows it: it collects the credentials with it.
    pub poll_token: String,
    /// Six digits to show on the printer's screen.
    pub code: String,
    /// Seconds the code can be claimed.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// `POST /pairing/v1/requests/{id}/poll` (OpenAPI `PairingPollRequest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPollRequest {
    pub poll_token: String,
}

/// 202 to a poll: nobody has entered the code yet (OpenAPI `PairingPending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPending {
    /// Seconds left to claim the code.
    pub expires_in: u64,
    /// Seconds until the next poll.
    pub interval: u64,
    pub status: PendingStatus,
}

impl PairingPending {
    pub fn new(expires_in: u64, interval: u64) -> Self {
        Self {
            expires_in,
            interval,
            status: PendingStatus::Pending,
        }
    }
}

/// The one `status` of a [`PairingPending`]: `"pending"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingStatus {
    Pending,
}

/// What a paired printer collects, once (`POST /pairing/v1/requests/{id}/poll`; OpenAPI
/// `PrinterCredentials`). Moved here from `printworks_common::printer`.
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
    /// That key's id (`job-…`), which every job event names too.
    #[serde(default)]
    pub job_signing_key_id: String,
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

/// `POST /pairing/v1/printers/{printer}/challenge`: a single-use challenge for a proof
/// of the shared secret (OpenAPI `PrinterChallenge`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrinterChallenge {
    pub challenge: String,
    /// Seconds it can be answered.
    pub expires_in: u64,
}

/// `POST /pairing/v1/printers/{printer}/certificate`: renewal of an expired certificate
/// with a proof of the shared secret over [`renewal_message_from_digest`] (OpenAPI
/// `SecretRenewalRequest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRenewalRequest {
    pub challenge: String,
    /// A PKCS#10 request (PEM) for the new key.
    pub csr_pem: String,
    /// base64url (no padding) of HMAC-SHA256(shared secret, the renewal message).
    pub proof: String,
}

/// A new certificate, by either renewal (OpenAPI `RenewedCertificate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewedCertificate {
    pub certificate_pem: String,
    pub ca_chain_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// What the renewal proof is an HMAC of: the printer, the server's challenge and the
/// digest of the CSR (`csr_sha256_hex`: lowercase hex SHA-256 of the CSR's DER), so that
/// a proof cannot be replayed or moved to another CSR. The UTF-8 bytes of
/// `printworks-renew-v1\n<printer id>\n<challenge>\n<csr digest>`, no final line feed.
pub fn renewal_message_from_digest(
    printer_id: Uuid,
    challenge: &str,
    csr_sha256_hex: &str,
) -> Vec<u8> {
    format!("printworks-renew-v1\n{printer_id}\n{challenge}\n{csr_sha256_hex}").into_bytes()
}

/// What a re-pairing printer's proof is an HMAC of: the printer it was, the server's
/// challenge and the digest of the CSR it asks to be paired with (as in
/// [`renewal_message_from_digest`]). The UTF-8 bytes of
/// `printworks-repair-v1\n<printer id>\n<challenge>\n<csr digest>`.
pub fn repair_message_from_digest(
    printer_id: Uuid,
    challenge: &str,
    csr_sha256_hex: &str,
) -> Vec<u8> {
    format!("printworks-repair-v1\n{printer_id}\n{challenge}\n{csr_sha256_hex}").into_bytes()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
    }

    #[test]
    fn requests_are_what_the_agent_sent() {
        let create = PairingRequestCreate {
            csr_pem: "CSR".into(),
            firmware_version: "0.1.0".into(),
            model: "Virtual".into(),
            previous: None,
            serial: "PW-1".into(),
        };
        let by_hand = json!({
            "serial": "PW-1",
            "model": "Virtual",
            "firmware_version": "0.1.0",
            "csr_pem": "CSR",
        });
        assert_eq!(serde_json::to_string(&create).unwrap(), by_hand.to_string());
        let with_previous = PairingRequestCreate {
            previous: Some(PairingPrevious {
                challenge: "c".into(),
                printer_id: id(),
                proof: "p".into(),
            }),
            ..create
        };
        let by_hand = json!({
            "serial": "PW-1",
            "model": "Virtual",
            "firmware_version": "0.1.0",
            "csr_pem": "CSR",
            "previous": { "printer_id": id(), "challenge": "c", "proof": "p" },
        });
        assert_eq!(
            serde_json::to_string(&with_previous).unwrap(),
            by_hand.to_string()
        );
        assert_eq!(
            serde_json::from_str::<PairingRequestCreate>(&by_hand.to_string()).unwrap(),
            with_previous
        );

        assert_eq!(
            serde_json::to_string(&PairingPollRequest {
                poll_token: "t".into()
            })
            .unwrap(),
            json!({ "poll_token": "t" }).to_string()
        );
        let renew = SecretRenewalRequest {
            challenge: "c".into(),
            csr_pem: "CSR".into(),
            proof: "p".into(),
        };
        assert_eq!(
            serde_json::to_string(&renew).unwrap(),
            json!({ "challenge": "c", "proof": "p", "csr_pem": "CSR" }).to_string()
        );
    }

    #[test]
    fn answers_are_what_the_pairing_service_sent() {
        let created = PairingRequestCreated {
            request_id: id(),
            poll_token: "t".into(),
            code: "012345".into(),
            expires_in: 600,
            interval: 5,
        };
        assert_eq!(
            serde_json::to_string(&created).unwrap(),
            format!(
                r#"{{"request_id":"{}","poll_token":"t","code":"012345","expires_in":600,"interval":5}}"#,
                id()
            )
        );
        let pending = json!({ "status": "pending", "expires_in": 42i64, "interval": 5u64 });
        assert_eq!(
            serde_json::to_string(&PairingPending::new(42, 5)).unwrap(),
            pending.to_string()
        );
        assert_eq!(
            serde_json::from_str::<PairingPending>(&pending.to_string()).unwrap(),
            PairingPending::new(42, 5)
        );
        assert_eq!(
            serde_json::to_string(&PrinterChallenge {
                challenge: "c".into(),
                expires_in: 300
            })
            .unwrap(),
            r#"{"challenge":"c","expires_in":300}"#
        );
        let renewed = RenewedCertificate {
            certificate_pem: "CERT".into(),
            ca_chain_pem: "CA".into(),
            not_after: time::macros::datetime!(2027-01-02 03:04:05.5 UTC),
        };
        let text = serde_json::to_string(&renewed).unwrap();
        assert_eq!(
            text,
            r#"{"certificate_pem":"CERT","ca_chain_pem":"CA","not_after":"2027-01-02T03:04:05.5Z"}"#
        );
        assert_eq!(
            serde_json::from_str::<RenewedCertificate>(&text).unwrap(),
            renewed
        );
    }

    #[test]
    fn credentials_read_without_a_key_id_and_hide_their_secrets() {
        let text = format!(
            r#"{{"printer_id":"{0}","organization_id":"{0}","organization_name":"Fab Lab","shared_secret":"s3cret","certificate_pem":"CERT","ca_chain_pem":"CA","printer_url":"https://127.0.0.1:8443","job_signing_key":"key"}}"#,
            id()
        );
        let c: Credentials = serde_json::from_str(&text).unwrap();
        assert_eq!(c.job_signing_key_id, "");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("CERT"));
    }

    #[test]
    fn proof_messages_are_byte_for_byte() {
        assert_eq!(
            renewal_message_from_digest(id(), "chal", "ab01"),
            b"printworks-renew-v1\n01234567-89ab-cdef-0123-456789abcdef\nchal\nab01"
        );
        assert_eq!(
            repair_message_from_digest(id(), "chal", "ab01"),
            b"printworks-repair-v1\n01234567-89ab-cdef-0123-456789abcdef\nchal\nab01"
        );
    }
}
