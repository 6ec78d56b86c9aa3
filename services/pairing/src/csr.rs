//! Certificate signing requests from printers, checked before anything is stored: one
//! PEM block and nothing else, DER that parses to its end, a key we accept (ECDSA P-256,
//! Ed25519, or RSA of 2048 to 8192 bits), signed with the matching algorithm, and a
//! signature that verifies. Only the public key is used; nothing else the CSR asks for
//! reaches a certificate.

use rcgen::{CertificateSigningRequestParams, PublicKey};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey as ParsedKey;

/// The largest CSR accepted, in bytes of PEM (an RSA-8192 request is about 3 KB).
pub const MAX_CSR_PEM_BYTES: usize = 8 * 1024;

/// A CSR that passed every check.
pub struct CheckedCsr {
    pub der: Vec<u8>,
    pub public_key: PublicKey,
    /// `ecdsa-p256`, `ed25519` or `rsa-<bits>`.
    pub key_kind: String,
}

/// Why a CSR was refused, in words for the printer's developer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csr_pem must be at most {MAX_CSR_PEM_BYTES} bytes")]
    TooLarge,
    #[error("csr_pem must be one PEM block labelled CERTIFICATE REQUEST, and nothing else")]
    NotPem,
    #[error("the certificate signing request is not valid DER")]
    Malformed,
    #[error("the key must be ECDSA P-256, Ed25519 or RSA of at least 2048 bits; this one is {0}")]
    UnsupportedKey(String),
    #[error("the request must be signed with {expected} for its key")]
    WrongSignatureAlgorithm { expected: &'static str },
    #[error("the request's signature does not verify")]
    BadSignature,
    #[error("the request carries extensions that are not accepted (only names and key usages)")]
    UnsupportedExtension,
}

/// Checks a CSR in PEM.
pub fn check(pem_text: &str) -> Result<CheckedCsr, CsrError> {
    if pem_text.len() > MAX_CSR_PEM_BYTES {
        return Err(CsrError::TooLarge);
    }
    let (rest, pem) = x509_parser::pem::parse_x509_pem(pem_text.trim_start().as_bytes())
        .map_err(|_| CsrError::NotPem)?;
    if pem.label != "CERTIFICATE REQUEST" || !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(CsrError::NotPem);
    }
    check_der(&pem.contents)
}

/// Checks a CSR in DER (one stored after [`check`], say).
pub fn check_der(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let key_alg = &info.subject_pki.algorithm;
    let sig_alg = &csr.signature_algorithm.algorithm;
    let (key_kind, expected_sig, sig_ok) = if key_alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = key_alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(CsrError::UnsupportedKey("ECDSA on another curve".into()));
        }
        (
            "ecdsa-p256".to_owned(),
            "ecdsa-with-SHA256",
            *sig_alg == OID_SIG_ECDSA_WITH_SHA256,
        )
    } else if key_alg.algorithm == OID_SIG_ED25519 {
        ("ed25519".to_owned(), "Ed25519", *sig_alg == OID_SIG_ED25519)
    } else if key_alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match info.subject_pki.parsed() {
            Ok(ParsedKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed),
        };
        if !(2048..=8192).contains(&bits) {
            return Err(CsrError::UnsupportedKey(format!("RSA of {bits} bits")));
        }
        (
            format!("rsa-{bits}"),
            "sha256WithRSAEncryption (or SHA-384, SHA-512)",
            [
                OID_PKCS1_SHA256WITHRSA,
                OID_PKCS1_SHA384WITHRSA,
                OID_PKCS1_SHA512WITHRSA,
            ]
            .contains(sig_alg),
        )
    } else {
        return Err(CsrError::UnsupportedKey(format!(
            "of the algorithm {}",
            key_alg.algorithm
        )));
    };
    if !sig_ok {
        return Err(CsrError::WrongSignatureAlgorithm {
            expected: expected_sig,
        });
    }
    let params = CertificateSigningRequestParams::from_der(&der.into()).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
        rcgen::Error::UnsupportedExtension => CsrError::UnsupportedExtension,
        _ => CsrError::Malformed,
    })?;
    Ok(CheckedCsr {
        der: der.to_vec(),
        public_key: params.public_key,
        key_kind,
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{
        CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    };

    use super::*;

    fn csr_for(key: &KeyPair) -> String {
        CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn accepted_keys() {
        for alg in [&PKCS_ECDSA_P256_SHA256, &PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let checked = check(&csr_for(&key)).unwrap();
            assert_eq!(
                rcgen::PublicKeyData::der_bytes(&checked.public_key),
                key.public_key_raw()
            );
        }
    }

    #[test]
    fn refused_requests_say_why() {
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            check(&csr_for(&p384)),
            Err(CsrError::UnsupportedKey(_))
        ));

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let good = csr_for(&key);
        assert_eq!(check("hello").err(), Some(CsrError::NotPem));
        assert_eq!(
            check(&format!("{good}trailing garbage")).err(),
            Some(CsrError::NotPem)
        );
        assert_eq!(
            check(&format!("{good}{good}")).err(),
            Some(CsrError::NotPem)
        );
        assert_eq!(
            check(&good.replace("CERTIFICATE REQUEST", "CERTIFICATE")).err(),
            Some(CsrError::NotPem)
        );
        assert_eq!(
            check(&"A".repeat(MAX_CSR_PEM_BYTES + 1)).err(),
            Some(CsrError::TooLarge)
        );
        // Flip a bit of the signature (the last bytes of the DER).
        let (_, pem) = x509_parser::pem::parse_x509_pem(good.as_bytes()).unwrap();
        let mut der = pem.contents.clone();
        let last = der.len() - 2;
        der[last] ^= 0x01;
        let tampered = pem_of_csr(&der);
        assert_eq!(check(&tampered).err(), Some(CsrError::BadSignature));
        // Truncated DER.
        let short = pem_of_csr(&pem.contents[..pem.contents.len() - 10]);
        assert_eq!(check(&short).err(), Some(CsrError::Malformed));
    }

    fn pem_of_csr(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
    }
}
