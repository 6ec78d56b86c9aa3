//! Google Cloud Storage as the blob store (`PRINTWORKS_BLOB_URL=gs://bucket/prefix`),
//! through Google's `google-cloud-storage` crate: uploads from the sealed spool file
//! (resumable, in 8 MiB pieces), ranged reads. Deletion goes through the JSON API with
//! the same credentials (the crate's control client speaks only gRPC). Credentials are
//! the application default ones; with `PRINTWORKS_GCS_ENDPOINT` (an emulator) none.
//!
//! Tested against fake-gcs-server, which the Makefile starts (`deploy/gcs-emulator.sh`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_storage::client::Storage;
use google_cloud_storage::model_ext::ReadRange;
use printworks_common::settings::ensure_private_dir;

use crate::blob::{BlobStore, ByteStream};

pub struct GcsStore {
    client: Storage,
    credentials: Credentials,
    http: reqwest::Client,
    /// `projects/_/buckets/<bucket>`, as the crate names buckets.
    bucket_path: String,
    bucket: String,
    /// Object names are `<prefix>/<key>` (no leading slash).
    prefix: String,
    /// The JSON API's base, for deletion.
    api: String,
    spool: PathBuf,
}

impl GcsStore {
    pub async fn new(url: &url::Url, spool: &Path, endpoint: Option<&str>) -> anyhow::Result<Self> {
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .context("gs:// URL without a bucket")?
            .to_owned();
        let prefix = url.path().trim_matches('/').to_owned();
        let credentials = match endpoint {
            Some(_) => google_cloud_auth::credentials::anonymous::Builder::new().build(),
            None => google_cloud_auth::credentials::Builder::default()
                .build()
                .context("no Google Cloud credentials (application default credentials)")?,
        };
        let mut builder = Storage::builder().with_credentials(credentials.clone());
        if let Some(e) = endpoint {
            builder = builder.with_endpoint(e.trim_end_matches('/'));
        }
        let client = builder.build().await.context("the Cloud Storage client")?;
        ensure_private_dir(spool).with_context(|| format!("cannot create {}", spool.display()))?;
        Ok(Self {
            client,
            credentials,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
            bucket_path: format!("projects/_/buckets/{bucket}"),
            api: endpoint
                .unwrap_or("https://storage.googleapis.com")
                .trim_end_matches('/')
                .to_owned(),
            bucket,
            prefix,
            spool: spool.to_path_buf(),
        })
    }

    fn object(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The JSON API's collection of the bucket's objects (deletion and listing).
    fn objects_url(&self) -> String {
        format!(
            "{}/storage/v1/b/{}/o",
            self.api,
            url::form_urlencoded::byte_serialize(self.bucket.as_bytes()).collect::<String>()
        )
    }

    async fn auth_headers(&self) -> anyhow::Result<reqwest::header::HeaderMap> {
        match self.credentials.headers(http::Extensions::new()).await? {
            CacheableResource::New { data, .. } => Ok(data),
            CacheableResource::NotModified => Ok(reqwest::header::HeaderMap::new()),
        }
    }
}

impl BlobStore for GcsStore {
    fn spool_dir(&self) -> &Path {
        &self.spool
    }

    fn put_file<'a>(&'a self, key: &'a str, file: &'a Path) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let f = tokio::fs::File::open(file).await?;
            self.client
                .write_object(&self.bucket_path, self.object(key), f)
                .send_buffered()
                .await
                .context("uploading a job file to Cloud Storage")?;
            tokio::fs::remove_file(file).await?;
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
            let resp = self
                .client
                .read_object(&self.bucket_path, self.object(key))
                .set_read_range(ReadRange::segment(start, len))
                .send()
                .await
                .context("reading a job file from Cloud Storage")?;
            let stream = futures_util::stream::unfold(resp, |mut resp| async move {
                resp.next()
                    .await
                    .map(|r| (r.map_err(std::io::Error::other), resp))
            });
            Ok(Box::pin(stream) as ByteStream)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let url = format!(
                "{}/{}",
                self.objects_url(),
                url::form_urlencoded::byte_serialize(self.object(key).as_bytes())
                    .collect::<String>(),
            );
            let res = self
                .http
                .delete(url)
                .headers(self.auth_headers().await?)
                .send()
                .await
                .context("deleting a job file from Cloud Storage")?;
            match res.status() {
                s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
                s => anyhow::bail!("Cloud Storage answered {s} to a deletion"),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<(String, u64)>>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            items: Vec<Item>,
            #[serde(rename = "nextPageToken")]
            next: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            name: String,
            // The JSON API sends sizes as decimal strings.
            size: String,
        }
        Box::pin(async move {
            let folder = self.object(prefix.trim_end_matches('/')) + "/";
            let strip = if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            };
            let base = self.objects_url();
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut url = url::Url::parse(&base).context("the Cloud Storage endpoint")?;
                url.query_pairs_mut()
                    .append_pair("prefix", &folder)
                    .append_pair("fields", "items(name,size),nextPageToken");
                if let Some(t) = token.take() {
                    url.query_pairs_mut().append_pair("pageToken", &t);
                }
                let res = self
                    .http
                    .get(url)
                    .headers(self.auth_headers().await?)
                    .send()
                    .await
                    .context("listing Cloud Storage objects")?;
                anyhow::ensure!(
                    res.status().is_success(),
                    "Cloud Storage answered {} to a listing",
                    res.status()
                );
                let page: Page = res.json().await.context("a Cloud Storage listing")?;
                for item in page.items {
                    if let Some(key) = item.name.strip_prefix(&strip) {
                        found.push((key.to_owned(), item.size.parse().unwrap_or(0)));
                    }
                }
                match page.next {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => return Ok(found),
                }
            }
        })
    }
}
