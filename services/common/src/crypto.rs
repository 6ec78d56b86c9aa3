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

/// The bytes of lowercase or uppercase hex; `None` if it is not hex.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign ("+1").
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn base64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Sealed values: version 1 was `[1][nonce][ciphertext+tag]` under the one master key;
/// version 2 names the key: `[2][key id (8 bytes)][nonce][ciphertext+tag]`.
const SEALED_V1: u8 = 1;
const SEALED_V2: u8 = 2;
const KEY_ID_LEN: usize = 8;

/// One master key, ready to seal and open.
struct SealKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl SealKey {
    fn new(key: &MasterKey) -> Self {
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose()).expect("32-byte AES key");
        Self {
            id: key_id(key),
            key: LessSafeKey::new(unbound),
        }
    }

    fn open(&self, context: &str, nonce: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// A master key's id: the first bytes of an HMAC under it (names it, reveals nothing).
pub fn key_id(key: &MasterKey) -> [u8; KEY_ID_LEN] {
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&hmac_sha256(key.expose(), b"printworks key id")[..KEY_ID_LEN]);
    id
}

/// The configured current and previous master keys: the settings' ones, or the data
/// directory's (`keys/master.key`, created on first use, and `keys/previous/*.key`).
fn configured_keys(settings: &Settings) -> anyhow::Result<(MasterKey, Vec<MasterKey>)> {
    let keys = settings.data_dir.join("keys");
    let current = match &settings.master_key {
        Some(key) => key.clone(),
        None => load_or_create_key_file(&keys.join("master.key"))?,
    };
    let mut previous = settings.master_key_previous.clone();
    if settings.master_key.is_none() {
        previous.extend(previous_key_files(&keys.join("previous"))?);
    }
    Ok((current, previous))
}

/// The name under which the MAC root is kept in `service_keys`.
const MAC_ROOT: &str = "mac-root";

/// Authenticated encryption of secrets at rest (AES-256-GCM, a random nonce per seal),
/// and keyed digests.
///
/// The `context` (e.g. `"totp:<user id>"`) is bound into the tag, so a sealed value
/// moved to another row or purpose no longer opens. Values are sealed under the current
/// master key and opened under it or any previous one still configured, so the master
/// key can be rotated: configure the new one and keep the old as previous, reseal
/// (`printworks keys reseal`), then drop the old one.
///
/// MACs hang off a root of their own, kept in the database sealed by the master key
/// ([`SecretBox::load`]), so that what is stored as a MAC — pairing codes, audit
/// checkpoints — and what is derived from the root — renewal challenges, device cookies
/// — outlives a rotation of the master key.
#[derive(Clone)]
pub struct SecretBox {
    current: std::sync::Arc<SealKey>,
    previous: std::sync::Arc<Vec<SealKey>>,
    /// For [`SecretBox::mac`]: never the AES key itself.
    mac_root: std::sync::Arc<[u8; 32]>,
}

impl SecretBox {
    /// With `key` alone, its MAC root derived from it — the root every deployment had
    /// before roots were kept in the database, and the one [`SecretBox::load`] keeps
    /// when it finds none.
    pub fn new(key: &MasterKey) -> Self {
        Self {
            current: std::sync::Arc::new(SealKey::new(key)),
            previous: std::sync::Arc::default(),
            mac_root: std::sync::Arc::new(hmac_sha256(key.expose(), b"printworks mac root")),
        }
    }

    /// Also opens what `previous` keys sealed (new values are sealed under the current one).
    pub fn with_previous(mut self, previous: &[MasterKey]) -> Self {
        self.previous = std::sync::Arc::new(previous.iter().map(SealKey::new).collect());
        self
    }

    /// The current master key's id.
    pub fn current_key_id(&self) -> [u8; KEY_ID_LEN] {
        self.current.id
    }

    /// A keyed digest of `data` for `purpose` (HMAC-SHA256 under a key derived from the
    /// MAC root and the purpose): what is stored in place of a low-entropy secret, such
    /// as a six-digit pairing code, that a plain hash would not protect.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let key = hmac_sha256(&self.mac_root[..], purpose.as_bytes());
        hmac_sha256(&key, data)
    }

    /// The configured master key and previous keys (`PRINTWORKS_MASTER_KEY`,
    /// `PRINTWORKS_MASTER_KEY_PREVIOUS`), or the ones in the data directory
    /// (`keys/master.key`, created on first use owner-only, and `keys/previous/*.key`).
    /// Its MAC root is derived from the current key: use [`SecretBox::load`] wherever
    /// MACs matter.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let (current, previous) = configured_keys(settings)?;
        Ok(Self::new(&current).with_previous(&previous))
    }

    /// [`SecretBox::from_settings`], with the MAC root kept in the database (created, on
    /// first use, as the one derived from the current key). A database whose migrations
    /// have not made the table yet has never seen a rotation: the derived root is its
    /// root, and is kept there by the first process that finds the table.
    ///
    /// A database with no root kept whose master key was already rotated (the old key
    /// configured as the one previous key) gets the root derived from that old key — the
    /// one its pairing codes and printers' pinned keys were made with. With several
    /// previous keys and no root kept, which one it was is unknown: refused.
    pub async fn load(settings: &Settings, db: &sqlx::PgPool) -> anyhow::Result<Self> {
        let (current, previous) = configured_keys(settings)?;
        let mut b = Self::new(&current).with_previous(&previous);
        let context = format!("service-key:{MAC_ROOT}");
        let stored: Result<Option<Vec<u8>>, sqlx::Error> =
            sqlx::query_scalar("SELECT key_sealed FROM service_keys WHERE name = $1")
                .bind(MAC_ROOT)
                .fetch_optional(db)
                .await;
        match stored {
            Ok(Some(_)) => {}
            Ok(None) => match previous.as_slice() {
                [] => {}
                [old] => b.mac_root = Self::new(old).mac_root,
                _ => anyhow::bail!(
                    "no MAC root is kept in the database and several previous master keys \
                     are configured: start once with only the key the database was last \
                     used with as previous"
                ),
            },
            Err(e) if is_undefined_table(&e) => return Ok(b),
            Err(e) => return Err(e.into()),
        }
        let kept = sqlx::query(
            "INSERT INTO service_keys (name, key_id, key_sealed, created_at)
             VALUES ($1, $1, $2, now()) ON CONFLICT (name) DO NOTHING",
        )
        .bind(MAC_ROOT)
        .bind(b.seal(&context, &b.mac_root[..]))
        .execute(db)
        .await;
        match kept {
            Ok(_) => {}
            Err(e) if is_undefined_table(&e) => return Ok(b),
            Err(e) => return Err(e.into()),
        }
        let sealed: Vec<u8> =
            sqlx::query_scalar("SELECT key_sealed FROM service_keys WHERE name = $1")
                .bind(MAC_ROOT)
                .fetch_one(db)
                .await?;
        let root: [u8; 32] = b
            .open(&context, &sealed)
            .and_then(|r| r.try_into().ok())
            .context("the MAC root does not open with the configured master keys")?;
        b.mac_root = std::sync::Arc::new(root);
        Ok(b)
    }

    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut in_out = plaintext.to_vec();
        #[allow(clippy::expect_used)]
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .expect("AES-GCM seal");
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + in_out.len());
        out.push(SEALED_V2);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&in_out);
        out
    }

    /// `None` when the value was altered, sealed under a key not configured here, or for
    /// another context.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        let keys = || std::iter::once(&*self.current).chain(self.previous.iter());
        match version {
            SEALED_V1 if rest.len() >= NONCE_LEN => {
                let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
                keys().find_map(|k| k.open(context, nonce, ciphertext))
            }
            SEALED_V2 if rest.len() >= KEY_ID_LEN + NONCE_LEN => {
                let (id, rest) = rest.split_at(KEY_ID_LEN);
                let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
                keys()
                    .find(|k| k.id[..] == *id)
                    .and_then(|k| k.open(context, nonce, ciphertext))
            }
            _ => None,
        }
    }

    /// Whether the master key with id `id` (see [`key_id`]) is configured here, as the
    /// current key or a previous one.
    pub fn knows_key(&self, id: &[u8]) -> bool {
        std::iter::once(&*self.current)
            .chain(self.previous.iter())
            .any(|k| k.id[..] == *id)
    }

    /// Whether `sealed` is sealed under the current key (nothing to reseal).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        sealed.first() == Some(&SEALED_V2)
            && sealed.get(1..1 + KEY_ID_LEN) == Some(&self.current.id[..])
    }
}

/// Whether a master key is configured: `PRINTWORKS_MASTER_KEY`, or kept in the data
/// directory (`keys/master.key`). Unlike [`SecretBox::from_settings`], this makes none.
pub fn master_key_configured(settings: &Settings) -> bool {
    settings.master_key.is_some() || settings.data_dir.join("keys").join("master.key").exists()
}

/// The id of the master key that sealed the MAC root kept in the database — the key the
/// database's secrets need — or `None` when no root is kept yet (or it was sealed in the
/// first format, without an id).
pub async fn sealing_key_id(conn: &mut sqlx::PgConnection) -> sqlx::Result<Option<Vec<u8>>> {
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT key_sealed FROM service_keys WHERE name = $1")
            .bind(MAC_ROOT)
            .fetch_optional(conn)
            .await?;
    Ok(sealed.and_then(|s| match s.split_first() {
        Some((&SEALED_V2, rest)) if rest.len() >= KEY_ID_LEN => Some(rest[..KEY_ID_LEN].to_vec()),
        _ => None,
    }))
}

/// Whether `e` says a table does not exist (migrations still pending).
pub fn is_undefined_table(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42P01")
}

/// The keys in `dir` (`*.key`, 32 bytes each), if it exists.
fn previous_key_files(dir: &Path) -> anyhow::Result<Vec<MasterKey>> {
    let mut keys = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "key") {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
            keys.push(MasterKey::from_bytes(key));
        }
    }
    Ok(keys)
}

/// Writes `key` to `path` (owner-only, synced), failing if the file exists.
pub fn write_key_file(path: &Path, key: &[u8; 32]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(key)?;
    f.sync_all()?;
    Ok(())
}

/// The 32-byte key in `path`, or a new random one written there (owner-only) when the
/// file does not exist yet.
pub fn load_or_create_key_file(path: &Path) -> anyhow::Result<MasterKey> {
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
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(
            hex_decode(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(hex_decode("ABff"), Some(vec![0xab, 0xff]));
        assert_eq!(hex_decode(""), Some(vec![]));
        for bad in ["a", "zz", "0g", "é0", "+1"] {
            assert_eq!(hex_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn sealed_values_open_only_in_their_context_and_unaltered() {
        let b = SecretBox::new(&MasterKey::from_bytes([7; 32]));
        let sealed = b.seal("totp:1", b"seed");
        assert_eq!(b.open("totp:1", &sealed).as_deref(), Some(&b"seed"[..]));
        assert_eq!(b.open("totp:2", &sealed), None);
        assert!(b.is_current(&sealed));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(b.open("totp:1", &tampered), None);
        let other = SecretBox::new(&MasterKey::from_bytes([8; 32]));
        assert_eq!(other.open("totp:1", &sealed), None);
        assert_ne!(b.seal("totp:1", b"seed"), sealed, "nonces differ");
    }

    #[test]
    fn a_rotated_box_opens_what_the_previous_key_sealed_and_seals_under_the_new() {
        let old = MasterKey::from_bytes([7; 32]);
        let new = MasterKey::from_bytes([9; 32]);
        let before = SecretBox::new(&old);
        let sealed = before.seal("printer-secret:1", b"s3cret");
        let rotated = SecretBox::new(&new).with_previous(std::slice::from_ref(&old));
        assert_eq!(
            rotated.open("printer-secret:1", &sealed).as_deref(),
            Some(&b"s3cret"[..])
        );
        assert!(!rotated.is_current(&sealed));
        let resealed = rotated.seal("printer-secret:1", b"s3cret");
        assert!(rotated.is_current(&resealed));
        // Once the previous key is gone, only the resealed value opens.
        let after = SecretBox::new(&new);
        assert_eq!(after.open("printer-secret:1", &sealed), None);
        assert_eq!(
            after.open("printer-secret:1", &resealed).as_deref(),
            Some(&b"s3cret"[..])
        );
        // Values sealed before key ids (version 1) still open with the right key.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&sealed[1 + 8..]);
        assert_eq!(
            rotated.open("printer-secret:1", &v1).as_deref(),
            Some(&b"s3cret"[..])
        );
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
