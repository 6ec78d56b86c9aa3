//! The disk of the local blob store fills up during an upload: a small tmpfs as the
//! store (mounting one needs root, as CI runs).

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};
use crate::relay::gcode;

/// A tmpfs of `size` mounted at a new directory; unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![self.0.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    found.push(p);
                }
            }
        }
        found
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_full_disk_during_an_upload_answers_507_and_keeps_nothing(pool: PgPool) {
    let disk = Tmpfs::mount("2m");
    let store = url::Url::from_directory_path(disk.0.path()).unwrap();
    let app = TestApp::spawn_with(pool.clone(), &printworks::ServiceSet::all(), move |s| {
        s.relay.blob_url = Some(store);
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-DISK").await;

    // About 4 MB: twice what the disk holds.
    let big = gcode(160_000);
    assert!(big.len() > 3 * 1024 * 1024);
    let res = app
        .submit_gcode(&token, printer.id, "too-big-for-the-disk.gcode", big)
        .await;
    assert_eq!(res.status, StatusCode::INSUFFICIENT_STORAGE, "{}", res.body);
    assert_eq!(
        res.body["type"], "urn:printworks:problem:insufficient-storage",
        "{}",
        res.body
    );

    // Nothing half-written: no spool file, no blob, no job (the refused upload is
    // cleaned up as it is answered, in the background).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM print_jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        let files = disk.files();
        if jobs == 0 && files.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {jobs} jobs, files {files:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The space is free again: a job that fits is taken.
    app.submit_gcode(&token, printer.id, "fits.gcode", gcode(1_000))
        .await
        .expect(StatusCode::CREATED);
    app.stop().await.unwrap();
}
