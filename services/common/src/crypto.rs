//! Secrets, done once: random tokens, digests, constant-time comparison, and sealing
//! data at rest with the master key. Everything here uses aws-lc-rs, the one crypto
//! library of the build (it is also rustls' provider).

use std::path::Path;

use anyhow::Context as _;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::settings::{MasterKey, Settings, ensure_private_dir};

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random number generator failed");
    buf
}

/// A uniformly random integer in `0..bound` (rejection sampling, no modulo bias).
pub fn random_below(bound: u32) -> u32 {
    assert!(bound > 0);
    let zone = u32::MAX - (u32::MAX % bound);
    loop {
        let v = u32::from_le_bytes(random_bytes::<4>());
        if v < zone {
            return v % bound;
        }
    }
}

/// A 256-bit secret as URL-safe base64 (43 characters): session cookies, refresh
/// tokens, authorization codes, client secrets.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What is stored in place of a high-entropy secret (a token, a code): its SHA-256.
/// Lookups go by this digest, so the secret itself is never compared or kept.
pub fn token_digest(token: &str) -> Vec<u8> {
    sha256(token.as_bytes()).to_vec()
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    #[allow(deprecated)]
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Lower-case hex, as digests and fingerprints are shown.
pub fn hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    data.iter()
        .fold(String::with_capacity(data.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub fn base64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

const SEALED_VERSION: u8 = 1;

/// Authenticated encryption of secrets at rest (AES-256-GCM, a random nonce per seal).
/// The `context` (e.g. `"totp:<user id>"`) is bound into the tag, so a sealed value
/// moved to another row or purpose no longer opens.
#[derive(Clone)]
pub struct SecretBox {
    key: std::sync::Arc<LessSafeKey>,
    /// For [`SecretBox::mac`]: derived from the master key, never the AES key itself.
    mac_root: std::sync::Arc<[u8; 32]>,
}

impl SecretBox {
    pub fn new(key: &MasterKey) -> Self {
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose()).expect("32-byte AES key");
        Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
            mac_root: std::sync::Arc::new(hmac_sha256(key.expose(), b"printworks mac root")),
        }
    }

    /// A keyed digest of `data` for `purpose` (HMAC-SHA256 under a key derived from the
    /// master key and the purpose): what is stored in place of a low-entropy secret, such
    /// as a six-digit pairing code, that a plain hash would not protect.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let key = hmac_sha256(&self.mac_root[..], purpose.as_bytes());
        hmac_sha256(&key, data)
    }

    /// The configured master key, or the one generated into the data directory (created
    /// on first use, owner-only permissions).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        if let Some(key) = &settings.master_key {
            return Ok(Self::new(key));
        }
        let key = load_or_create_key_file(&settings.data_dir.join("keys").join("master.key"))?;
        Ok(Self::new(&key))
    }

    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut in_out = plaintext.to_vec();
        #[allow(clippy::expect_used)]
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .expect("AES-GCM seal");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&in_out);
        out
    }

    /// `None` when the value was altered, sealed under another key, or for another context.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != SEALED_VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn load_or_create_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read(path) {
        Ok(bytes) => {
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
            return Ok(MasterKey::from_bytes(key));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = random_bytes::<32>();
    // create_new: if another process won the race, use its key.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(MasterKey::from_bytes(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key_file(path),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_context_and_unaltered() {
        let b = SecretBox::new(&MasterKey::from_bytes([7; 32]));
        let sealed = b.seal("totp:1", b"seed");
        assert_eq!(b.open("totp:1", &sealed).as_deref(), Some(&b"seed"[..]));
        assert_eq!(b.open("totp:2", &sealed), None);
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(b.open("totp:1", &tampered), None);
        let other = SecretBox::new(&MasterKey::from_bytes([8; 32]));
        assert_eq!(other.open("totp:1", &sealed), None);
        assert_ne!(b.seal("totp:1", b"seed"), sealed, "nonces differ");
    }

    #[test]
    fn macs_depend_on_the_key_the_purpose_and_the_data() {
        let b = SecretBox::new(&MasterKey::from_bytes([7; 32]));
        let other = SecretBox::new(&MasterKey::from_bytes([8; 32]));
        let m = b.mac("pairing-code", b"123456");
        assert_eq!(m, b.mac("pairing-code", b"123456"));
        assert_ne!(m, b.mac("pairing-code", b"123457"));
        assert_ne!(m, b.mac("other", b"123456"));
        assert_ne!(m, other.mac("pairing-code", b"123456"));
        assert_ne!(&m[..], &sha256(b"123456")[..]);
    }

    #[test]
    fn key_file_is_created_once_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("master.key");
        let a = load_or_create_key_file(&path).unwrap();
        let b = load_or_create_key_file(&path).unwrap();
        assert_eq!(a.expose(), b.expose());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn random_below_stays_in_range() {
        for _ in 0..1000 {
            assert!(random_below(1_000_000) < 1_000_000);
        }
        assert_eq!(random_below(1), 0);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
