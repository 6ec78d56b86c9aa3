//! The printer certificate authority: an ECDSA P-256 CA that issues printers their
//! client certificates (from the key in their CSR; the private key never leaves the
//! printer) and the printer endpoint its server certificate, so that the CA certificate
//! is all a printer needs to trust.
//!
//! Development: generated on first start into `<data dir>/ca/` (the key owner-only).
//! Production: loaded from `PRINTWORKS_PRINTER_CA_CERT` and `PRINTWORKS_PRINTER_CA_KEY`
//! (e.g. a Kubernetes Secret), the same for every replica.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use printworks_common::Settings;
use printworks_common::crypto::{hex, random_bytes, sha256};
use printworks_common::settings::ensure_private_dir;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use time::OffsetDateTime;
use uuid::Uuid;

/// Printer certificates name their printer with this URI (a subject alternative name).
pub const PRINTER_URI_PREFIX: &str = "urn:printworks:printer:";

/// Tolerance for printers whose clocks run a little behind.
const BACKDATE: time::Duration = time::Duration::minutes(5);

pub struct PrinterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for PrinterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrinterCa(..)")
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The serial number in hex.
    pub serial: String,
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// SHA-256 of the DER: how the printer endpoint recognises it.
    pub fingerprint: [u8; 32],
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// 128 random bits, positive and without a leading zero byte.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes = random_bytes::<16>();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex(&bytes))
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl PrinterCa {
    /// The configured CA, or the one in the data directory (created the first time).
    pub fn from_settings(settings: &Settings, now: OffsetDateTime) -> anyhow::Result<Self> {
        let p = &settings.printers;
        match (&p.printer_ca_cert, &p.printer_ca_key) {
            (Some(cert), Some(key)) => Self::from_files(cert, key)
                .context("PRINTWORKS_PRINTER_CA_CERT / PRINTWORKS_PRINTER_CA_KEY"),
            _ => Self::load_or_create(&settings.data_dir.join("ca"), now),
        }
    }

    fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("cannot read {}", key.display()))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// A CA from its certificate and PKCS#8 key, both PEM. The key must be the
    /// certificate's, and the certificate a CA's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("the CA key is not a PKCS#8 PEM key")?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .context("the CA certificate is not PEM")?
            .into_owned();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|_| anyhow::anyhow!("the CA certificate does not parse"))?;
        anyhow::ensure!(parsed.is_ca(), "the CA certificate is not a CA's");
        anyhow::ensure!(
            parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
            "the CA key does not belong to the CA certificate"
        );
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).context("the CA certificate cannot issue")?;
        Ok(Self {
            issuer,
            cert_pem: pem_of(&cert_der),
            cert_der,
        })
    }

    fn load_or_create(dir: &Path, now: OffsetDateTime) -> anyhow::Result<Self> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            return Self::from_files(&cert_path, &key_path)
                .with_context(|| format!("the printer CA in {}", dir.display()));
        }
        ensure_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (cert_pem, key_pem) = Self::generate(now)?;
        let write = |path: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok(())
        };
        write(&key_path, &key_pem, 0o600)?;
        write(&cert_path, &cert_pem, 0o644)?;
        tracing::info!(dir = %dir.display(), "generated the printer CA");
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// A new CA: (certificate PEM, key PEM). Valid 20 years; it issues end-entity
    /// certificates only.
    pub fn generate(now: OffsetDateTime) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Printworks printer CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Printworks");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365 * 20);
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A client certificate for printer `printer_id`, for `public_key` (from its CSR):
    /// named by the URI `urn:printworks:printer:<id>`, usable only for client
    /// authentication, valid from a few minutes ago for `ttl`. Nothing the CSR asked for
    /// (names, extensions, CA rights) is copied.
    pub fn issue_printer(
        &self,
        public_key: &impl PublicKeyData,
        printer_id: Uuid,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> anyhow::Result<Issued> {
        let ttl = time::Duration::try_from(ttl).context("certificate lifetime")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("printer {printer_id}"));
        params.subject_alt_names = vec![SanType::URI(
            format!("{PRINTER_URI_PREFIX}{printer_id}").try_into()?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, public_key, now, now + ttl)
    }

    /// The printer endpoint's server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        key: &KeyPair,
        names: &[String],
        now: OffsetDateTime,
        ttl: time::Duration,
    ) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(names.to_vec())
            .context("a printer endpoint host name is not a valid DNS name or address")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Printworks printer endpoint");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, key, now, now + ttl)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<Issued> {
        let (serial_number, serial) = random_serial();
        // Whole seconds: what X.509 keeps, so the database says what the certificate says.
        let second = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
        let not_before = second(now - BACKDATE);
        let not_after = second(not_after);
        params.serial_number = Some(serial_number);
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().clone();
        Ok(Issued {
            serial,
            fingerprint: sha256(&der),
            pem: cert.pem(),
            der,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ca_issues_printer_certificates_that_name_the_printer() {
        let now = time::macros::datetime!(2026-11-26 12:00 UTC);
        let (cert_pem, key_pem) = PrinterCa::generate(now).unwrap();
        let ca = PrinterCa::from_pem(&cert_pem, &key_pem).unwrap();
        let printer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let id = Uuid::new_v4();
        let issued = ca
            .issue_printer(
                &printer_key,
                id,
                now,
                std::time::Duration::from_secs(90 * 86400),
            )
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
        assert!(!cert.is_ca());
        assert_eq!(
            cert.issuer(),
            x509_parser::parse_x509_certificate(ca.cert_der())
                .unwrap()
                .1
                .subject()
        );
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!("[URI(\"urn:printworks:printer:{id}\")]")
        );
        assert_eq!(
            issued.not_after - issued.not_before,
            time::Duration::days(90) + BACKDATE
        );
        assert_eq!(hex(cert.raw_serial()), issued.serial);
        // The key must match the certificate.
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(PrinterCa::from_pem(&cert_pem, &other.serialize_pem()).is_err());
        // An end-entity certificate cannot pose as the CA.
        assert!(PrinterCa::from_pem(&issued.pem, &printer_key.serialize_pem()).is_err());
    }
}
