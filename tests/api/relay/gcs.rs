//! The Google Cloud Storage blob store, against the emulator `make test` starts
//! (`deploy/gcs-emulator.sh`; its URL in `PRINTWORKS_TEST_GCS_ENDPOINT`): the store's
//! own operations, then a job stored in the bucket and printed from it.

use printworks_common::db::MIGRATOR;
use printworks_relay::blob::{BlobStore, read_exact};
use printworks_relay::gcs::GcsStore;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{gcode, sha256_hex};
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};

pub const BUCKET: &str = "printworks-test";

pub fn endpoint() -> String {
    std::env::var("PRINTWORKS_TEST_GCS_ENDPOINT").expect(
        "PRINTWORKS_TEST_GCS_ENDPOINT is not set: run `make test`, which starts the Cloud Storage \
         emulator (deploy/gcs-emulator.sh start prints its URL)",
    )
}

/// The names of the objects under `prefix` in the emulator's bucket.
async fn objects(prefix: &str) -> Vec<String> {
    let list: Value = reqwest::get(format!(
        "{}/storage/v1/b/{BUCKET}/o?prefix={prefix}",
        endpoint()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|o| o["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_store_writes_reads_ranges_and_deletes() {
    let prefix = format!("store-{}", Uuid::new_v4().simple());
    let url = url::Url::parse(&format!("gs://{BUCKET}/{prefix}")).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let store = GcsStore::new(&url, spool.path(), Some(&endpoint()))
        .await
        .unwrap();
    // Larger than one 8 MiB resumable piece.
    let data: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let file = spool.path().join("blob");
    std::fs::write(&file, &data).unwrap();
    store.put_file("jobs/a/b", &file).await.unwrap();
    assert!(!file.exists(), "the spool file is taken over");
    assert_eq!(objects(&prefix).await, vec![format!("{prefix}/jobs/a/b")]);
    let whole = read_exact(&store, "jobs/a/b", 0, data.len() as u64)
        .await
        .unwrap();
    assert!(whole == data, "the object differs from what was written");
    let part = read_exact(&store, "jobs/a/b", 8 * 1024 * 1024 - 3, 10)
        .await
        .unwrap();
    assert_eq!(part, &data[8 * 1024 * 1024 - 3..8 * 1024 * 1024 + 7]);
    store.delete("jobs/a/b").await.unwrap();
    store.delete("jobs/a/b").await.unwrap();
    assert_eq!(objects(&prefix).await, Vec::<String>::new());
    assert!(read_exact(&store, "jobs/a/b", 0, 1).await.is_err());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_job_is_kept_sealed_in_the_bucket_and_printed_from_it(pool: PgPool) {
    let prefix = format!("relay-{}", Uuid::new_v4().simple());
    let blob_url = url::Url::parse(&format!("gs://{BUCKET}/{prefix}")).unwrap();
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), move |s| {
        s.relay.blob_url = Some(blob_url.clone());
        s.relay.gcs_endpoint = Some(endpoint());
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-G").await;
    let g = gcode(5_000);
    let job = app
        .submit_gcode(&token, printer.id, "cloud.gcode", g.clone())
        .await
        .expect(StatusCode::CREATED)
        .id();
    let stored = objects(&prefix).await;
    assert_eq!(stored, vec![format!("{prefix}/jobs/{}/{job}", w.org)]);
    let raw = reqwest::get(format!(
        "{}/storage/v1/b/{BUCKET}/o/{}?alt=media",
        endpoint(),
        url::form_urlencoded::byte_serialize(stored[0].as_bytes()).collect::<String>()
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert!(raw.starts_with(b"PWB1"), "sealed at rest");
    assert!(!raw.windows(9).any(|w| w == b"M104 S210"));

    let c = printer.client();
    let url = format!("{}/printer/v1/jobs/{job}/content", printer.printer_url);
    let whole = c.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    let body = whole.bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&g));
    let part = c
        .get(&url)
        .header("range", "bytes=70000-70099")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), &g[70000..70100]);
}
