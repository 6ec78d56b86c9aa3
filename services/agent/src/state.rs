//! The printer's state directory: its private key, certificate, the CA it trusts, its
//! shared secret and who it is. Created owner-only; every file is written to a
//! temporary name, synced and renamed, so a crash leaves the old file or the new one,
//! never half of one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use printworks_proto::Credentials;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const KEY: &str = "key.pem";
const CERTIFICATE: &str = "certificate.pem";
const CA: &str = "ca.pem";
const SECRET: &str = "secret";
const PRINTER: &str = "printer.json";

/// Who the printer is, and where it connects.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrinterRecord {
    pub printer_id: Uuid,
    pub organization_id: Uuid,
    pub organization_name: String,
    /// The printer endpoint (mutual TLS).
    pub printer_url: String,
    /// The public API (for renewal by shared secret, and pairing again).
    pub server_url: String,
    /// The relay's job-signing key, pinned when the printer paired.
    pub job_signing_key: String,
    /// Its id, as job events name it (empty for printers paired before keys had ids).
    #[serde(default)]
    pub job_signing_key_id: String,
}

/// Everything a paired printer keeps.
#[derive(Clone)]
pub struct Saved {
    pub printer: PrinterRecord,
    pub key_pem: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub shared_secret: String,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("printer", &self.printer)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// Creates `dir` (and its parents) readable only by the owner, unless it exists.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` atomically, readable only by the owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a state file has no directory")?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        Uuid::new_v4().simple()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn read(&self, name: &str) -> anyhow::Result<String> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    pub fn is_paired(&self) -> bool {
        self.dir.join(PRINTER).exists()
    }

    /// Keeps what pairing handed out, with the key that made the CSR.
    pub fn save_paired(
        &self,
        key_pem: &str,
        credentials: &Credentials,
        server_url: &str,
    ) -> anyhow::Result<Saved> {
        ensure_private_dir(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let record = PrinterRecord {
            printer_id: credentials.printer_id,
            organization_id: credentials.organization_id,
            organization_name: credentials.organization_name.clone(),
            printer_url: credentials.printer_url.clone(),
            server_url: server_url.trim_end_matches('/').to_owned(),
            job_signing_key: credentials.job_signing_key.clone(),
            job_signing_key_id: credentials.job_signing_key_id.clone(),
        };
        write_private(&self.dir.join(KEY), key_pem.as_bytes())?;
        write_private(
            &self.dir.join(CERTIFICATE),
            credentials.certificate_pem.as_bytes(),
        )?;
        write_private(&self.dir.join(CA), credentials.ca_chain_pem.as_bytes())?;
        write_private(&self.dir.join(SECRET), credentials.shared_secret.as_bytes())?;
        // Last: its presence says the printer is paired.
        write_private(
            &self.dir.join(PRINTER),
            &serde_json::to_vec_pretty(&record)?,
        )?;
        self.load()
    }

    /// A renewed certificate with the key of its CSR. The key goes first: a crash in
    /// between leaves a key without its certificate, which renewal by secret repairs.
    pub fn save_certificate(&self, key_pem: &str, certificate_pem: &str) -> anyhow::Result<()> {
        write_private(&self.dir.join(KEY), key_pem.as_bytes())?;
        write_private(&self.dir.join(CERTIFICATE), certificate_pem.as_bytes())
    }

    pub fn load(&self) -> anyhow::Result<Saved> {
        let printer: PrinterRecord = serde_json::from_str(&self.read(PRINTER)?)
            .with_context(|| format!("{} is damaged", self.dir.join(PRINTER).display()))?;
        Ok(Saved {
            printer,
            key_pem: self.read(KEY)?,
            certificate_pem: self.read(CERTIFICATE)?,
            ca_pem: self.read(CA)?,
            shared_secret: self.read(SECRET)?.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn credentials_are_kept_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("printer"));
        assert!(!state.is_paired());
        let credentials = Credentials {
            printer_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            organization_name: "Fab Lab".into(),
            shared_secret: "s3cret".into(),
            certificate_pem: "CERT".into(),
            ca_chain_pem: "CA".into(),
            printer_url: "https://127.0.0.1:8443".into(),
            job_signing_key: "key".into(),
            job_signing_key_id: "job-0123456789abcdef".into(),
        };
        let saved = state
            .save_paired("KEY", &credentials, "http://127.0.0.1:8080/")
            .unwrap();
        assert!(state.is_paired());
        assert_eq!(saved.printer.server_url, "http://127.0.0.1:8080");
        assert_eq!(saved.shared_secret, "s3cret");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(state.path()), 0o700);
        for f in [KEY, CERTIFICATE, CA, SECRET, PRINTER] {
            assert_eq!(mode(&state.path().join(f)), 0o600, "{f}");
        }
        state.save_certificate("KEY2", "CERT2").unwrap();
        let again = state.load().unwrap();
        assert_eq!(
            (again.key_pem.as_str(), again.certificate_pem.as_str()),
            ("KEY2", "CERT2")
        );
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 5);
    }
}
