//! Where sealed job files live, behind one trait: the local data directory by default
//! (written to a temporary file, synced, renamed), or Google Cloud Storage
//! (`PRINTWORKS_BLOB_URL=gs://bucket/prefix`, see [`crate::gcs`]). Blobs arrive already
//! sealed ([`crate::seal`]); a store never sees plaintext.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use printworks_common::settings::ensure_private_dir;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

pub trait BlobStore: Send + Sync + 'static {
    /// A directory for files being received (on the same file system as the store, for
    /// the local one, so that storing is a rename).
    fn spool_dir(&self) -> &Path;
    /// Stores the complete, synced file at `file` as `key`, taking it over.
    fn put_file<'a>(&'a self, key: &'a str, file: &'a Path) -> BoxFuture<'a, anyhow::Result<()>>;
    /// `len` bytes of `key` from `start`.
    fn read_range<'a>(
        &'a self,
        key: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, anyhow::Result<ByteStream>>;
    /// Removes `key`; a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Every key under the folder `prefix` (e.g. `backups/`), with its size in bytes, in
    /// no particular order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<(String, u64)>>>;
}

/// The store the settings ask for.
pub async fn from_settings(
    settings: &printworks_common::Settings,
) -> anyhow::Result<Arc<dyn BlobStore>> {
    match &settings.relay.blob_url {
        Some(url) if url.scheme() == "gs" => Ok(Arc::new(
            crate::gcs::GcsStore::new(
                url,
                &settings.data_dir.join("spool"),
                settings.relay.gcs_endpoint.as_deref(),
            )
            .await
            .context("PRINTWORKS_BLOB_URL")?,
        )),
        Some(url) => {
            let path = url.to_file_path().map_err(|()| {
                anyhow::anyhow!(
                    "PRINTWORKS_BLOB_URL must be file:///absolute/path or gs://bucket/prefix"
                )
            })?;
            Ok(Arc::new(LocalStore::new(&path)?))
        }
        None => Ok(Arc::new(LocalStore::new(&settings.data_dir.join("blobs"))?)),
    }
}

/// Blobs as files under a directory.
pub struct LocalStore {
    root: PathBuf,
    spool: PathBuf,
}

impl LocalStore {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let spool = root.join(".spool");
        ensure_private_dir(&spool).with_context(|| format!("cannot create {}", spool.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            spool,
        })
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        // Keys are made here (uuids and slashes); refuse anything that could climb out.
        anyhow::ensure!(
            !key.is_empty()
                && key
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != ".." && !p.starts_with('.')),
            "invalid blob key"
        );
        Ok(self.root.join(key))
    }
}

impl BlobStore for LocalStore {
    fn spool_dir(&self) -> &Path {
        &self.spool
    }

    fn put_file<'a>(&'a self, key: &'a str, file: &'a Path) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let dest = self.path(key)?;
            let dir = dest
                .parent()
                .context("blob key without a directory")?
                .to_path_buf();
            ensure_private_dir(&dir)?;
            tokio::fs::rename(file, &dest)
                .await
                .with_context(|| format!("storing {}", dest.display()))?;
            // The rename is durable once the directory is synced.
            tokio::fs::File::open(&dir).await?.sync_all().await?;
            Ok(())
        })
    }

    fn read_range<'a>(
        &'a self,
        key: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, anyhow::Result<ByteStream>> {
        Box::pin(async move {
            let mut f = tokio::fs::File::open(self.path(key)?)
                .await
                .context("opening a stored job file")?;
            f.seek(std::io::SeekFrom::Start(start)).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 64 * 1024);
            Ok(Box::pin(stream) as ByteStream)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<(String, u64)>>> {
        Box::pin(async move {
            let prefix = prefix.trim_end_matches('/');
            let mut found = Vec::new();
            let mut folders = vec![prefix.to_owned()];
            while let Some(folder) = folders.pop() {
                let mut entries = match tokio::fs::read_dir(self.path(&folder)?).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                while let Some(entry) = entries.next_entry().await? {
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if name.starts_with('.') {
                        continue; // a spool or temporary file, not a blob
                    }
                    let key = format!("{folder}/{name}");
                    let meta = entry.metadata().await?;
                    if meta.is_dir() {
                        folders.push(key);
                    } else if meta.is_file() {
                        found.push((key, meta.len()));
                    }
                }
            }
            Ok(found)
        })
    }
}

/// Reads exactly `len` bytes of `key` from `start`.
pub async fn read_exact(
    store: &dyn BlobStore,
    key: &str,
    start: u64,
    len: u64,
) -> anyhow::Result<Vec<u8>> {
    use futures_util::TryStreamExt as _;
    let mut stream = store.read_range(key, start, len).await?;
    let mut out = Vec::with_capacity(len as usize);
    while let Some(chunk) = stream.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    anyhow::ensure!(
        out.len() as u64 == len,
        "a stored job file is shorter than recorded"
    );
    Ok(out)
}
