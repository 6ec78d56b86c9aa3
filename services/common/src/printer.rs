//! What printers and the cloud say to each other, shared by the services and the
//! reference printer agent: the credentials a printer collects when it is paired, and
//! the proof of its shared secret that renews an expired certificate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{base64url, hmac_sha256, sha256};

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
    let digest: String = sha256(csr_der).iter().map(|b| format!("{b:02x}")).collect();
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
