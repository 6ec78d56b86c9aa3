//! Rotating the master key (`printworks keys rotate-master | reseal | new-master`).
//!
//! The master key seals every secret at rest. A rotation: the new key becomes the
//! current one and the old one stays configured as previous (what it sealed still
//! opens); every value is sealed again under the new key ([`reseal`]); once a check finds
//! nothing left under an old key, the old key is dropped. What the services sign or MAC
//! with keys of their own (the job-signing key printers pinned, the MAC root of pairing
//! codes, audit checkpoints and challenges) is kept in `service_keys`, sealed like the
//! rest, so it survives unchanged. docs/operations.md has the procedure.

use std::path::PathBuf;

use anyhow::Context as _;
use printworks_common::Settings;
use printworks_common::crypto::{SecretBox, hex, key_id, random_bytes, write_key_file};
use printworks_common::reseal::{Resealed, SealedColumn};
use printworks_common::settings::MasterKey;
use sqlx::PgPool;

/// Every service's columns of sealed values.
pub fn sealed_columns() -> Vec<SealedColumn> {
    [
        printworks_common::reseal::SEALED,
        printworks_account::SEALED,
        printworks_org::SEALED,
        printworks_pairing::SEALED,
        printworks_relay::SEALED,
    ]
    .concat()
}

/// Seals again under the current master key what previous keys sealed (with `check`,
/// only counts it).
pub async fn reseal(settings: &Settings, db: &PgPool, check: bool) -> anyhow::Result<Resealed> {
    let secrets = SecretBox::load(settings, db).await?;
    printworks_common::reseal::reseal(db, &secrets, &sealed_columns(), check).await
}

/// A new master key, for a deployment that configures it (`PRINTWORKS_MASTER_KEY`).
pub fn new_master_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>())
}

/// What [`rotate_master_file`] did.
pub struct Rotated {
    pub new_key_id: String,
    /// Where the old key is kept until nothing needs it.
    pub previous_file: PathBuf,
    pub resealed: Resealed,
}

/// Rotates the master key kept in the data directory (`keys/master.key`): the old key
/// moves to `keys/previous/<id>.key`, a new one takes its place, and everything is
/// resealed under it. Servers must be stopped meanwhile (one running with the old key
/// alone could not open what is resealed), and started again after.
pub async fn rotate_master_file(settings: &Settings, db: &PgPool) -> anyhow::Result<Rotated> {
    anyhow::ensure!(
        settings.master_key.is_none(),
        "PRINTWORKS_MASTER_KEY is set: rotate it by configuration instead (docs/operations.md): \
         make a key with `printworks keys new-master`, give every replica it as \
         PRINTWORKS_MASTER_KEY and the old one as PRINTWORKS_MASTER_KEY_PREVIOUS, restart them, \
         then run `printworks keys reseal`"
    );
    let keys = settings.data_dir.join("keys");
    let current_path = keys.join("master.key");
    let current: [u8; 32] = std::fs::read(&current_path)
        .with_context(|| format!("reading {}", current_path.display()))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", current_path.display()))?;
    // The service keys are made under the old key first (a database that never ran a
    // server since they were kept would otherwise get ones derived from the new key,
    // and every pairing code, audit checkpoint and printer's pinned job key would
    // break).
    let old = SecretBox::load(settings, db).await?;
    let mut conn = db.acquire().await?;
    printworks_common::printer::JobSigner::load(&mut conn, &old).await?;
    drop(conn);
    let old_id = hex(&key_id(&MasterKey::from_bytes(current)));
    let previous_file = keys.join("previous").join(format!("{old_id}.key"));
    if !previous_file.exists() {
        write_key_file(&previous_file, &current)?;
    }
    // The new key is written beside the old and renamed over it: a crash leaves one or
    // the other, and the old one is kept as previous already.
    let fresh = random_bytes::<32>();
    let staged = keys.join("master.key.new");
    let _ = std::fs::remove_file(&staged);
    write_key_file(&staged, &fresh)?;
    std::fs::rename(&staged, &current_path)
        .with_context(|| format!("replacing {}", current_path.display()))?;
    std::fs::File::open(&keys)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", keys.display()))?;
    let resealed = reseal(settings, db, false).await?;
    Ok(Rotated {
        new_key_id: hex(&key_id(&MasterKey::from_bytes(fresh))),
        previous_file,
        resealed,
    })
}
