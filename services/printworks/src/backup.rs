//! Backups of the database: `printworks backup create | list | restore`.
//!
//! A backup is two objects in the blob store (the one job files live in), under
//! `backups/<id>/` where the id is a UUIDv7 (its time orders them):
//!
//! - `data`: a dump of every table of the schema, read in one `REPEATABLE READ` snapshot
//!   (so it is consistent: every foreign key, every audit chain as of one instant), as
//!   `COPY ... TO STDOUT` text in foreign-key order, framed (see [`Frame`]), then sealed
//!   with AES-256-GCM in 64 KiB chunks ([`printworks_relay::seal`], bound to the backup's
//!   id) under a random data key;
//! - `manifest`: JSON with the time, the schema version (the last migration applied), the
//!   rows of each table, the sequences, the head of every audit chain, the dump's size
//!   and SHA-256, and the data key — sealed as a whole with the backup key.
//!
//! The backup key (`PRINTWORKS_BACKUP_KEY`, or `<data dir>/keys/backup.key`) is not the
//! master key: whoever holds the backups and the backup key can read them, but not what
//! the master key seals inside (TOTP seeds, signing keys), and the master key alone
//! cannot read a backup. A restore needs both: the backup key to open it, the master key
//! to verify the audit checkpoints and to use what it sealed.
//!
//! Restoring reads the whole backup once, checking every chunk and the digest, before it
//! writes anything; then migrates the empty target database to the backup's schema
//! version, loads every table in one transaction (row counts checked against the
//! manifest), sets the sequences, applies the migrations the binary has beyond the
//! backup's, and verifies every audit chain and checkpoint.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aws_lc_rs::digest;
use futures_util::TryStreamExt as _;
use printworks_common::audit::integrity;
use printworks_common::crypto::{self, SecretBox, base64url, base64url_decode, hex};
use printworks_common::db::MIGRATOR;
use printworks_common::settings::MasterKey;
use printworks_common::{Settings, db};
use printworks_relay::blob::{BlobStore, ByteStream};
use printworks_relay::seal::{self, Opener, Sealer};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use uuid::Uuid;

/// The folder of the blob store that holds the backups.
pub const FOLDER: &str = "backups";
/// What a backup's chunks are bound to, beside its id.
const DOMAIN: &[u8] = b"printworks-backup-v1";
/// The manifest format this binary writes and reads.
const FORMAT: u32 = 1;
/// The first bytes of a dump (inside the encryption).
const MAGIC: &[u8] = b"printworks-dump-1\n";
/// The largest data frame a dump is written in, and (with a table's header) the largest
/// frame a restore accepts.
const DATA_FRAME: usize = 64 * 1024;
const MAX_FRAME: usize = 1 << 20;
/// How long a backup whose manifest was never written (the run stopped half-way) is kept
/// before retention removes its data.
const INCOMPLETE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a backup holds, sealed with the backup key beside the data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The last migration applied when the backup was taken.
    pub schema_version: i64,
    /// Every table, in the order it is restored (referenced tables first).
    pub tables: Vec<TableRows>,
    pub sequences: Vec<SequenceValue>,
    pub audit_heads: Vec<ChainHead>,
    /// The dump's size before sealing, and its SHA-256 (hex).
    pub dump_bytes: u64,
    pub dump_sha256: String,
    /// The size of the `data` object.
    pub sealed_bytes: u64,
    /// The id (hex) of the master key that sealed the secrets inside (the database's MAC
    /// root): a restore needs it configured. `None` when the database kept no root yet.
    #[serde(default)]
    pub master_key_id: Option<String>,
    /// The data key that sealed `data`.
    data_key: DataKey,
}

/// A data key, base64url in the manifest; never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct DataKey(String);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SequenceValue {
    pub sequence: String,
    /// `None` for a sequence never used.
    pub last_value: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChainHead {
    pub chain_id: Uuid,
    pub last_index: i64,
    /// Hex of the chain's last hash.
    pub last_hash: String,
}

impl Manifest {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// The backup key: the configured one, or `<data dir>/keys/backup.key` — created there
/// on first use when `create` (taking a backup) is true; listing and restoring need the
/// key the backups were taken with. Refused when it is the master key (where one is
/// configured here).
pub fn backup_key(
    settings: &Settings,
    configured: Option<MasterKey>,
    create: bool,
) -> anyhow::Result<MasterKey> {
    let file = settings.data_dir.join("keys").join("backup.key");
    let key = match configured {
        Some(k) => k,
        None if create || file.exists() => crypto::load_or_create_key_file(&file)?,
        None => anyhow::bail!(
            "no backup key: set PRINTWORKS_BACKUP_KEY to the key the backups were taken with \
             (or put it in {})",
            file.display()
        ),
    };
    // A master key is neither made nor required here (the backup job does without).
    if crypto::master_key_configured(settings) {
        let master = SecretBox::from_settings(settings)?;
        anyhow::ensure!(
            crypto::key_id(&key) != master.current_key_id(),
            "PRINTWORKS_BACKUP_KEY must not be the master key"
        );
    }
    Ok(key)
}

fn data_object(id: Uuid) -> String {
    format!("{FOLDER}/{id}/data")
}

fn manifest_object(id: Uuid) -> String {
    format!("{FOLDER}/{id}/manifest")
}

fn manifest_context(id: Uuid) -> String {
    format!("backup-manifest:{id}")
}

/// `"name"` with any `"` doubled: an identifier, whatever the catalog holds.
fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The frames of a dump: a table's header (JSON), its `COPY` text in pieces, its end;
/// and the end of the dump. Each is a tag byte and a 32-bit big-endian length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Frame {
    Table = b'T',
    Data = b'D',
    EndTable = b'E',
    End = b'Z',
}

impl Frame {
    fn from_tag(tag: u8) -> Option<Self> {
        [Self::Table, Self::Data, Self::EndTable, Self::End]
            .into_iter()
            .find(|f| *f as u8 == tag)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TableHeader {
    table: String,
    columns: Vec<String>,
}

/// The tables of the `public` schema (but the migrator's own), referenced tables before
/// those that reference them, and each one's columns (generated ones left out: they are
/// computed again).
async fn tables_in_order(conn: &mut PgConnection) -> anyhow::Result<Vec<TableHeader>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations'
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT f.relname::text, t.relname::text FROM pg_constraint k
         JOIN pg_class f ON f.oid = k.conrelid JOIN pg_class t ON t.oid = k.confrelid
         JOIN pg_namespace n ON n.oid = f.relnamespace
         WHERE k.contype = 'f' AND n.nspname = 'public' AND k.conrelid <> k.confrelid",
    )
    .fetch_all(&mut *conn)
    .await?;
    // Kahn's algorithm, alphabetical among the ready ones so that the order is stable.
    let mut ordered = Vec::with_capacity(names.len());
    let mut left: std::collections::BTreeSet<String> = names.into_iter().collect();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|t| {
                !edges
                    .iter()
                    .any(|(from, to)| from == *t && left.contains(to))
            })
            .cloned()
            .collect();
        anyhow::ensure!(
            !ready.is_empty(),
            "the tables {left:?} reference each other in a cycle; a backup cannot order them"
        );
        for t in ready {
            left.remove(&t);
            ordered.push(t);
        }
    }
    let mut out = Vec::with_capacity(ordered.len());
    for table in ordered {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
             ORDER BY attnum",
        )
        .bind(quote(&table))
        .fetch_all(&mut *conn)
        .await?;
        out.push(TableHeader { table, columns });
    }
    Ok(out)
}

/// Writes a dump as it is made: frames into the sealer, sealed chunks into the file,
/// the plaintext into the digest.
struct DumpWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    sealer: Sealer,
    sealed: Vec<u8>,
    digest: digest::Context,
    dump_bytes: u64,
    sealed_bytes: u64,
}

impl DumpWriter {
    async fn write(&mut self, plain: &[u8]) -> anyhow::Result<()> {
        self.digest.update(plain);
        self.dump_bytes += plain.len() as u64;
        self.sealer.push(plain, &mut self.sealed)?;
        self.flush_sealed().await
    }

    async fn frame(&mut self, frame: Frame, body: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(body.len()).context("a frame over 4 GiB")?;
        let mut head = [0u8; 5];
        head[0] = frame as u8;
        head[1..].copy_from_slice(&len.to_be_bytes());
        self.write(&head).await?;
        self.write(body).await
    }

    /// `COPY` text in frames of at most [`DATA_FRAME`] bytes (it may be cut anywhere,
    /// even inside a row), so that a restore never holds more than that of it.
    async fn data(&mut self, text: &[u8]) -> anyhow::Result<()> {
        for part in text.chunks(DATA_FRAME) {
            self.frame(Frame::Data, part).await?;
        }
        Ok(())
    }

    async fn flush_sealed(&mut self) -> anyhow::Result<()> {
        if !self.sealed.is_empty() {
            self.file.write_all(&self.sealed).await?;
            self.sealed_bytes += self.sealed.len() as u64;
            self.sealed.clear();
        }
        Ok(())
    }

    /// Seals the last chunk, syncs the file; the dump's size and digest.
    async fn finish(self) -> anyhow::Result<(u64, String, u64)> {
        let Self {
            mut file,
            sealer,
            mut sealed,
            digest,
            dump_bytes,
            sealed_bytes,
        } = self;
        sealer.finish(&mut sealed)?;
        file.write_all(&sealed).await?;
        file.flush().await?;
        file.get_mut().sync_all().await?;
        Ok((
            dump_bytes,
            hex(digest.finish().as_ref()),
            sealed_bytes + sealed.len() as u64,
        ))
    }
}

/// Removes a spool file when dropped (a backup that failed half-way leaves nothing).
struct Spooled(PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Takes a backup of `pool`'s database into `store`, sealed under `key`.
pub async fn create(
    pool: &PgPool,
    store: &dyn BlobStore,
    key: &MasterKey,
    now: OffsetDateTime,
) -> anyhow::Result<Manifest> {
    let nanos = u64::try_from(now.unix_timestamp_nanos()).context("a time before 1970")?;
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        nanos / 1_000_000_000,
        (nanos % 1_000_000_000) as u32,
    ));
    let data_key = seal::new_data_key();
    let (sealer, header) = Sealer::for_domain(&data_key, DOMAIN, id);
    let spool = Spooled(store.spool_dir().join(format!(".backup-{id}")));
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spool.0)
        .await
        .with_context(|| format!("creating {}", spool.0.display()))?;
    let mut out = DumpWriter {
        file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
        sealer,
        sealed: Vec::new(),
        digest: digest::Context::new(&digest::SHA256),
        dump_bytes: 0,
        sealed_bytes: 0,
    };
    out.file.write_all(&header).await?;
    out.sealed_bytes += header.len() as u64;
    out.write(MAGIC).await?;

    // One snapshot for everything read below.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let schema_version: i64 =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_optional(&mut *tx)
            .await?
            .flatten()
            .context("the database has no migrations applied: nothing to back up")?;
    let tables = tables_in_order(&mut tx).await?;
    let mut counts = Vec::with_capacity(tables.len());
    for t in &tables {
        out.frame(Frame::Table, &serde_json::to_vec(t)?).await?;
        let columns: Vec<String> = t.columns.iter().map(|c| quote(c)).collect();
        let mut stream = tx
            .copy_out_raw(&format!(
                "COPY {} ({}) TO STDOUT",
                quote(&t.table),
                columns.join(", ")
            ))
            .await?;
        let mut piece = Vec::with_capacity(128 * 1024);
        let mut rows = 0u64;
        while let Some(bytes) = stream.try_next().await? {
            // Text format: one line per row (newlines inside values are escaped).
            rows += bytes.iter().filter(|b| **b == b'\n').count() as u64;
            piece.extend_from_slice(&bytes);
            if piece.len() >= DATA_FRAME {
                out.data(&piece).await?;
                piece.clear();
            }
        }
        drop(stream);
        out.data(&piece).await?;
        out.frame(Frame::EndTable, &[]).await?;
        counts.push(TableRows {
            table: t.table.clone(),
            rows,
        });
    }
    out.frame(Frame::End, &[]).await?;
    let sequences: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT sequencename::text, last_value FROM pg_sequences
         WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let audit_heads = audit_heads(&mut tx).await?;
    let master_key_id = crypto::sealing_key_id(&mut tx).await?.map(|id| hex(&id));
    tx.commit().await?;
    let (dump_bytes, dump_sha256, sealed_bytes) = out.finish().await?;

    store
        .put_file(&data_object(id), &spool.0)
        .await
        .context("storing the backup")?;
    let manifest = Manifest {
        format: FORMAT,
        id,
        created_at: now,
        schema_version,
        tables: counts,
        sequences: sequences
            .into_iter()
            .map(|(sequence, last_value)| SequenceValue {
                sequence,
                last_value,
            })
            .collect(),
        audit_heads,
        dump_bytes,
        dump_sha256,
        sealed_bytes,
        master_key_id,
        data_key: DataKey(base64url(&data_key)),
    };
    let sealed = SecretBox::new(key).seal(&manifest_context(id), &serde_json::to_vec(&manifest)?);
    let spool = Spooled(store.spool_dir().join(format!(".backup-{id}.manifest")));
    write_synced(&spool.0, &sealed).await?;
    store
        .put_file(&manifest_object(id), &spool.0)
        .await
        .context("storing the backup's manifest")?;
    Ok(manifest)
}

async fn write_synced(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).await?;
    f.sync_all().await?;
    Ok(())
}

async fn audit_heads(conn: &mut PgConnection) -> anyhow::Result<Vec<ChainHead>> {
    let heads = integrity::heads(conn).await?;
    Ok(heads
        .into_iter()
        .map(|(chain_id, last_index, hash)| ChainHead {
            chain_id,
            last_index,
            last_hash: hex(&hash),
        })
        .collect())
}

/// One backup found in the store.
#[derive(Debug)]
pub enum Listed {
    /// Complete, and its manifest opens with the key.
    Complete(Box<Manifest>),
    /// Data without a manifest: the run that wrote it did not finish.
    Incomplete { id: Uuid },
    /// A manifest that does not open with this key (another key, or altered).
    Unreadable { id: Uuid },
    /// A manifest whose data is missing or not of the size it says: it cannot be
    /// restored.
    Damaged {
        id: Uuid,
        created_at: OffsetDateTime,
    },
}

impl Listed {
    pub fn id(&self) -> Uuid {
        match self {
            Self::Complete(m) => m.id,
            Self::Incomplete { id } | Self::Unreadable { id } | Self::Damaged { id, .. } => *id,
        }
    }
}

/// Every backup in the store, oldest first.
pub async fn list(store: &dyn BlobStore, key: &MasterKey) -> anyhow::Result<Vec<Listed>> {
    let objects = store.list(FOLDER).await.context("listing the backups")?;
    let mut ids: std::collections::BTreeMap<Uuid, (Option<u64>, Option<u64>)> = Default::default();
    for (name, size) in objects {
        let mut parts = name.split('/').skip(1);
        let (Some(id), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(id) = id.parse::<Uuid>() else { continue };
        let entry = ids.entry(id).or_default();
        match kind {
            "manifest" => entry.0 = Some(size),
            "data" => entry.1 = Some(size),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for (id, (manifest, data)) in ids {
        out.push(match manifest {
            None => Listed::Incomplete { id },
            Some(size) => match read_manifest(store, key, id, size).await {
                Ok(m) if data == Some(m.sealed_bytes) => Listed::Complete(Box::new(m)),
                Ok(m) => Listed::Damaged {
                    id,
                    created_at: m.created_at,
                },
                Err(_) => Listed::Unreadable { id },
            },
        });
    }
    Ok(out)
}

async fn read_manifest(
    store: &dyn BlobStore,
    key: &MasterKey,
    id: Uuid,
    size: u64,
) -> anyhow::Result<Manifest> {
    anyhow::ensure!(size <= 16 << 20, "backup {id}: its manifest is too large");
    let sealed = printworks_relay::blob::read_exact(store, &manifest_object(id), 0, size).await?;
    let plain = SecretBox::new(key)
        .open(&manifest_context(id), &sealed)
        .with_context(|| {
            format!(
                "backup {id}: its manifest does not open with this backup key \
                 (another PRINTWORKS_BACKUP_KEY, or altered)"
            )
        })?;
    let m: Manifest = serde_json::from_slice(&plain).context("a backup manifest")?;
    anyhow::ensure!(
        m.format == FORMAT && m.id == id,
        "backup {id}: a manifest of format {} this binary does not read",
        m.format
    );
    Ok(m)
}

/// The manifest of backup `id` (listing the store for the objects' sizes).
pub async fn manifest(
    store: &dyn BlobStore,
    key: &MasterKey,
    id: Uuid,
) -> anyhow::Result<Manifest> {
    let (manifest, data) = sizes(store, id).await?;
    let manifest_size = manifest.with_context(|| format!("there is no complete backup {id}"))?;
    let m = read_manifest(store, key, id, manifest_size).await?;
    let data = data.with_context(|| format!("backup {id}: its data is missing"))?;
    anyhow::ensure!(
        data == m.sealed_bytes,
        "backup {id}: its data is {data} bytes where its manifest says {}: truncated or altered",
        m.sealed_bytes
    );
    Ok(m)
}

async fn sizes(store: &dyn BlobStore, id: Uuid) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let objects = store.list(&format!("{FOLDER}/{id}")).await?;
    let find = |k: String| objects.iter().find(|(n, _)| *n == k).map(|(_, s)| *s);
    Ok((find(manifest_object(id)), find(data_object(id))))
}

/// Removes the backups older than `keep` (but never the newest complete one, so that a
/// backup job that stopped for weeks does not leave none; a damaged one does not count),
/// and the data of runs that did not finish after a day. Backups whose manifest this key
/// cannot open are left alone.
/// The ids removed.
pub async fn prune(
    store: &dyn BlobStore,
    key: &MasterKey,
    now: OffsetDateTime,
    keep: Duration,
) -> anyhow::Result<Vec<Uuid>> {
    let listed = list(store, key).await?;
    let newest = listed
        .iter()
        .filter_map(|l| match l {
            Listed::Complete(m) => Some(m.id),
            _ => None,
        })
        .max();
    let mut removed = Vec::new();
    for l in listed {
        let expired = match &l {
            Listed::Complete(m) => Some(m.id) != newest && now - m.created_at > keep,
            Listed::Incomplete { id } => id_time(*id).is_none_or(|t| now - t > INCOMPLETE_GRACE),
            Listed::Damaged { created_at, .. } => now - *created_at > keep,
            Listed::Unreadable { .. } => false,
        };
        if expired {
            let id = l.id();
            store.delete(&manifest_object(id)).await?;
            store.delete(&data_object(id)).await?;
            removed.push(id);
        }
    }
    Ok(removed)
}

fn id_time(id: Uuid) -> Option<OffsetDateTime> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?)
        .ok()
        .map(|t| t + time::Duration::nanoseconds(i64::from(nanos)))
}

/// Reads a sealed dump chunk by chunk: every chunk authenticated, the plaintext hashed.
struct DumpReader {
    stream: ByteStream,
    opener: Opener,
    size: u64,
    chunk: u64,
    raw: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    digest: digest::Context,
    read: u64,
}

/// The next `n` bytes of `stream`, read on into `raw` as needed (what was read beyond
/// them stays in `raw`).
async fn next_bytes(
    stream: &mut ByteStream,
    raw: &mut Vec<u8>,
    n: usize,
) -> anyhow::Result<Vec<u8>> {
    while raw.len() < n {
        let more = stream
            .try_next()
            .await?
            .context("the backup's data is truncated")?;
        raw.extend_from_slice(&more);
    }
    let rest = raw.split_off(n);
    Ok(std::mem::replace(raw, rest))
}

impl DumpReader {
    async fn open(store: &dyn BlobStore, m: &Manifest, key: &[u8; 32]) -> anyhow::Result<Self> {
        let mut stream = store
            .read_range(&data_object(m.id), 0, m.sealed_bytes)
            .await
            .context("reading the backup")?;
        let mut raw = Vec::new();
        let header = next_bytes(&mut stream, &mut raw, seal::HEADER as usize).await?;
        let opener = Opener::for_domain(key, DOMAIN, m.id, m.dump_bytes, &header)
            .map_err(|e| anyhow::anyhow!("backup {}: {e}", m.id))?;
        Ok(Self {
            stream,
            opener,
            size: m.dump_bytes,
            chunk: 0,
            raw,
            plain: Vec::new(),
            pos: 0,
            digest: digest::Context::new(&digest::SHA256),
            read: 0,
        })
    }

    /// Opens the next chunk into `plain`; false at the end.
    async fn next_chunk(&mut self) -> anyhow::Result<bool> {
        if self.chunk >= seal::chunks(self.size) {
            return Ok(false);
        }
        let (_, len) = seal::chunk_span(self.size, self.chunk);
        let sealed = next_bytes(&mut self.stream, &mut self.raw, len as usize).await?;
        let plain = self
            .opener
            .open(self.chunk, sealed)
            .map_err(|e| anyhow::anyhow!("the backup was altered or is damaged: {e}"))?;
        self.digest.update(&plain);
        self.read += plain.len() as u64;
        self.plain.drain(..self.pos);
        self.pos = 0;
        self.plain.extend_from_slice(&plain);
        self.chunk += 1;
        Ok(true)
    }

    async fn take(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        while self.plain.len() - self.pos < n {
            anyhow::ensure!(self.next_chunk().await?, "the backup's dump ends early");
        }
        let out = self.plain[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    async fn frame(&mut self) -> anyhow::Result<(Frame, Vec<u8>)> {
        let head = self.take(5).await?;
        let frame = Frame::from_tag(head[0]).context("the backup's dump is malformed")?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        anyhow::ensure!(len <= MAX_FRAME, "the backup's dump is malformed");
        Ok((frame, self.take(len).await?))
    }

    /// After the end frame: nothing left, and the digest is the manifest's.
    async fn finish(mut self, m: &Manifest) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.pos == self.plain.len() && !self.next_chunk().await?,
            "the backup's dump goes on after its end"
        );
        anyhow::ensure!(
            self.read == m.dump_bytes && hex(self.digest.finish().as_ref()) == m.dump_sha256,
            "the backup's dump does not match its manifest's digest"
        );
        Ok(())
    }
}

/// What a restore found.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub audit: Vec<integrity::Verification>,
}

/// Restores backup `id` into the empty database of `target`, and verifies it. `settings`
/// gives the master key (the one the backed-up deployment used) and audit retention.
pub async fn restore(
    target: &PgPool,
    store: &dyn BlobStore,
    key: &MasterKey,
    id: Uuid,
    settings: &Settings,
    now: OffsetDateTime,
) -> anyhow::Result<Restored> {
    let m = manifest(store, key, id).await?;
    let data_key: [u8; 32] = base64url_decode(&m.data_key.0)
        .and_then(|k| k.try_into().ok())
        .context("a backup manifest with a malformed data key")?;
    anyhow::ensure!(
        MIGRATOR.version_exists(m.schema_version),
        "backup {id} is of schema version {}, which this binary does not know: restore it \
         with the release that took it, or a later one",
        m.schema_version
    );
    let used: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public'",
    )
    .fetch_one(target)
    .await?;
    anyhow::ensure!(
        used == 0,
        "the target database is not empty: restore into a new, empty database"
    );
    // The secrets inside open only with the master key they were sealed under: it must be
    // configured here (never made up), as the current key or a previous one.
    anyhow::ensure!(
        crypto::master_key_configured(settings),
        "no master key is configured: a restore needs the master key of the deployment \
         the backup came from (PRINTWORKS_MASTER_KEY, or keys/master.key in the data directory)"
    );
    if let Some(needed) = &m.master_key_id {
        let configured = SecretBox::from_settings(settings)?;
        let known = crypto::hex_decode(needed).is_some_and(|id| configured.knows_key(&id));
        anyhow::ensure!(
            known,
            "backup {id} holds secrets sealed under master key {needed}, which is not \
             configured here: set PRINTWORKS_MASTER_KEY (or PRINTWORKS_MASTER_KEY_PREVIOUS) \
             to the key of the deployment the backup came from"
        );
    }

    // First pass: the whole backup authenticates and matches its manifest, before
    // anything is written.
    let mut reader = DumpReader::open(store, &m, &data_key).await?;
    anyhow::ensure!(
        reader.take(MAGIC.len()).await? == MAGIC,
        "the backup's dump is malformed"
    );
    loop {
        match reader.frame().await?.0 {
            Frame::End => break,
            Frame::Table | Frame::Data | Frame::EndTable => {}
        }
    }
    reader.finish(&m).await?;

    MIGRATOR
        .run_to(m.schema_version, target)
        .await
        .context("creating the backup's schema")?;
    load(target, store, &m, &data_key)
        .await
        .context("loading the backup (the target now holds the schema: drop and create the database again before another try)")?;
    db::migrate(target).await?;

    let secrets = SecretBox::load(settings, target).await?;
    let audit = integrity::verify_all(
        target,
        &secrets,
        integrity::RetentionRule {
            now,
            retention: settings.org.audit_retention,
        },
    )
    .await?;
    if let Some(bad) = audit.iter().find(|v| v.first_bad_record.is_some()) {
        anyhow::bail!(
            "backup {id} was loaded, but its audit chain {} does not verify ({:?}): do not \
             serve from this database",
            bad.chain_id,
            bad.first_bad_record
        );
    }
    Ok(Restored { manifest: m, audit })
}

/// Second pass: every table in one transaction, counts and chain heads checked.
async fn load(
    target: &PgPool,
    store: &dyn BlobStore,
    m: &Manifest,
    data_key: &[u8; 32],
) -> anyhow::Result<()> {
    let mut reader = DumpReader::open(store, m, data_key).await?;
    reader.take(MAGIC.len()).await?;
    let mut tx = target.begin().await?;
    // Rows the migrations seeded (the built-in OAuth clients, ...) are in the backup as
    // they were then. The append-only audit tables refuse a DELETE unless the
    // transaction says it is allowed to (as retention does): none is seeded today, but
    // one seeded later must not make every restore fail.
    sqlx::query("SELECT set_config('printworks.audit_retention', 'on', true)")
        .execute(&mut *tx)
        .await?;
    for t in m.tables.iter().rev() {
        // An identifier from the sealed manifest, quoted.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {}",
            quote(&t.table)
        )))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("table {}", t.table))?;
    }
    let mut expected = m.tables.iter();
    loop {
        let (frame, body) = reader.frame().await?;
        match frame {
            Frame::End => break,
            Frame::Table => {}
            _ => anyhow::bail!("the backup's dump is malformed"),
        }
        let header: TableHeader = serde_json::from_slice(&body).context("the backup's dump")?;
        let want = expected
            .next()
            .filter(|t| t.table == header.table)
            .context("the backup's dump does not follow its manifest")?;
        let columns: Vec<String> = header.columns.iter().map(|c| quote(c)).collect();
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {} ({}) FROM STDIN",
                quote(&header.table),
                columns.join(", ")
            ))
            .await
            .with_context(|| format!("table {}", header.table))?;
        loop {
            let (frame, body) = reader.frame().await?;
            match frame {
                Frame::Data => {
                    copy.send(body).await?;
                }
                Frame::EndTable => break,
                _ => {
                    copy.abort("malformed backup").await?;
                    anyhow::bail!("the backup's dump is malformed");
                }
            }
        }
        let rows = copy
            .finish()
            .await
            .with_context(|| format!("table {}", header.table))?;
        anyhow::ensure!(
            rows == want.rows,
            "table {}: {rows} rows restored where the manifest says {}",
            header.table,
            want.rows
        );
    }
    anyhow::ensure!(
        expected.next().is_none(),
        "the backup's dump ends before its manifest's last table"
    );
    reader.finish(m).await?;
    for s in &m.sequences {
        if let Some(v) = s.last_value {
            sqlx::query("SELECT setval($1::regclass, $2, true)")
                .bind(quote(&s.sequence))
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
    }
    anyhow::ensure!(
        audit_heads(&mut tx).await? == m.audit_heads,
        "the restored audit chains do not end where the manifest says"
    );
    tx.commit().await?;
    Ok(())
}
