//! The master key rotates (`printworks keys rotate-master`, then `reseal --check`), and
//! nothing a printer or a person holds breaks: the job-signing key a printer pinned keeps
//! signing (under its own key id), its shared secret still renews it, queued files still
//! open, tokens still verify, and the audit log's signed checkpoints still check.

use std::process::Command;

use printworks::ServiceSet;
use printworks_agent::crypto::verify_job;
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, csr_der, printer_key_and_csr};
use crate::relay::{Events, gcode, sha256_hex};

fn printworks(data_dir: &std::path::Path, url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_printworks"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PRINTWORKS_DATA_DIR", data_dir)
        .env("DATABASE_URL", url)
        .env("PRINTWORKS_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The test's database, also by URL (for the binary), and a data directory (where the
/// master key is kept) for the servers and commands it runs to share.
async fn database_and_data_dir(
    pool: PgPoolOptions,
    connect: PgConnectOptions,
) -> (String, sqlx::PgPool, tempfile::TempDir) {
    let url = connect.to_url_lossy().to_string();
    let db = pool.connect_with(connect).await.unwrap();
    (url, db, tempfile::tempdir().unwrap())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_job_signing_key_and_every_secret_survive_a_master_key_rotation(
    pool: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, db, data) = database_and_data_dir(pool, connect).await;
    let dir = data.path().to_path_buf();
    let shared = move |s: &mut printworks_common::Settings| s.data_dir = dir.clone();

    // Before: a printer paired (pinning the job-signing key), a job waiting for it, the
    // audit log signed.
    let before = TestApp::spawn_with(db.clone(), &ServiceSet::all(), shared.clone()).await;
    let w = OrgWorld::new(&before).await;
    let token = before.access_token(&w.admin, ALL_SCOPES).await;
    let mut printer = before.pair_printer(&token, w.org, "SN-ROT").await;
    assert!(printer.job_signing_key_id.starts_with("job-"));
    let file = gcode(20);
    let job = before
        .submit_gcode(&token, printer.id, "kept.gcode", file.clone())
        .await
        .expect(StatusCode::CREATED)
        .id();
    let old_key = std::fs::read(data.path().join("keys/master.key")).unwrap();
    let secrets = printworks_common::crypto::SecretBox::load(
        &crate::helpers::test_settings(data.path()),
        &db,
    )
    .await
    .unwrap();
    printworks_common::audit::integrity::checkpoint(&db, &secrets, before.now())
        .await
        .unwrap();
    before.stop().await.unwrap();

    // The rotation, servers stopped.
    let (ok, out) = printworks(data.path(), &url, &["keys", "rotate-master"]);
    assert!(ok, "{out}");
    assert!(out.contains("resealed"), "{out}");
    assert_ne!(
        std::fs::read(data.path().join("keys/master.key")).unwrap(),
        old_key
    );
    let (ok, out) = printworks(data.path(), &url, &["keys", "reseal", "--check"]);
    assert!(
        ok && out.starts_with("0 values under a previous key"),
        "{out}"
    );
    // Nothing needs the old key any more: it goes.
    std::fs::remove_dir_all(data.path().join("keys/previous")).unwrap();

    // After, with the new key alone.
    let after = TestApp::spawn_with(db.clone(), &ServiceSet::all(), shared).await;
    printer.printer_url = format!("https://{}", after.printer_addr.unwrap());
    // The job reaches the printer signed by the key it pinned, under the same key id,
    // and its file (sealed under a per-job key, itself resealed) opens.
    let mut events = Events::new(
        printer
            .client()
            .get(format!("{}/printer/v1/events", printer.printer_url))
            .send()
            .await
            .unwrap(),
    );
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(events.next(wait).await.unwrap().0, "settings");
    let (name, event) = events.next(wait).await.unwrap();
    assert_eq!((name.as_str(), event["id"].clone()), ("job", json!(job)));
    assert_eq!(event["key_id"], printer.job_signing_key_id.as_str());
    let digest = sha256_hex(&file);
    assert!(verify_job(
        &printer.job_signing_key,
        printer.id,
        job,
        file.len() as u64,
        &digest,
        event["signature"].as_str().unwrap(),
    ));
    let content = printer
        .client()
        .get(format!(
            "{}/printer/v1/jobs/{job}/content",
            printer.printer_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), StatusCode::OK);
    assert_eq!(content.bytes().await.unwrap().as_ref(), &file[..]);
    // The shared secret (resealed) still renews the printer's certificate, and the
    // challenge (a MAC under the kept root) checks.
    let challenge = after.printer_challenge(printer.id).await;
    let (_, csr) = printer_key_and_csr();
    let proof = printworks_agent::crypto::renewal_proof(
        &printer.shared_secret,
        printer.id,
        &challenge,
        &csr_der(&csr),
    );
    after
        .call(
            reqwest::Method::POST,
            &format!("/pairing/v1/printers/{}/certificate", printer.id),
            None,
            Some(&json!({"challenge": challenge, "proof": proof, "csr_pem": csr})),
        )
        .await
        .expect(StatusCode::CREATED);
    // People sign in and get tokens signed by the (resealed) signing key.
    let admin = after.relogin(&w.admin).await;
    let token = after.access_token(&admin, ALL_SCOPES).await;
    after
        .call(
            reqwest::Method::GET,
            &format!("/org/v1/organizations/{}", w.org),
            Some(&token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    // The audit log's signed checkpoints still check.
    let (ok, out) = printworks(data.path(), &url, &["audit", "verify"]);
    assert!(ok, "{out}");
}

/// The service keys of a database that has not kept them yet (one last served before
/// they were kept), as the rotated master key finds them.
async fn job_key_id(db: &sqlx::PgPool, settings: &printworks_common::Settings) -> String {
    let secrets = printworks_common::crypto::SecretBox::load(settings, db)
        .await
        .unwrap();
    let mut conn = db.acquire().await.unwrap();
    printworks_common::printer::JobSigner::load(&mut conn, &secrets)
        .await
        .unwrap()
        .key_id
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rotation_before_the_service_keys_were_kept_keeps_the_keys_printers_pinned(
    pool: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, db, data) = database_and_data_dir(pool, connect).await;
    let dir = data.path().to_path_buf();
    let shared = move |s: &mut printworks_common::Settings| s.data_dir = dir.clone();
    let app = TestApp::spawn_with(db.clone(), &ServiceSet::all(), shared).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-EARLY").await;
    app.stop().await.unwrap();
    // As a database from before the keys were kept: no rows.
    sqlx::query("DELETE FROM service_keys")
        .execute(&db)
        .await
        .unwrap();

    let original = std::fs::read(data.path().join("keys/master.key")).unwrap();
    // Rotated by the command: the keys are kept under the old key before it is swapped.
    let (ok, out) = printworks(data.path(), &url, &["keys", "rotate-master"]);
    assert!(ok, "{out}");
    let settings = crate::helpers::test_settings(data.path());
    assert_eq!(job_key_id(&db, &settings).await, printer.job_signing_key_id);

    // Rotated by configuration instead (a new key, the one the database was last served
    // with as the one previous key), the database without its keys: the roots are the
    // old key's.
    sqlx::query("DELETE FROM service_keys")
        .execute(&db)
        .await
        .unwrap();
    let old = printworks_common::settings::MasterKey::from_bytes(original.try_into().unwrap());
    let mut configured = settings.clone();
    configured.master_key = Some(printworks_common::settings::MasterKey::from_bytes(
        printworks_common::crypto::random_bytes::<32>(),
    ));
    configured.master_key_previous = vec![old.clone()];
    // Which of several previous keys the database knew is unknown: refused, nothing kept.
    let mut ambiguous = configured.clone();
    ambiguous
        .master_key_previous
        .push(printworks_common::settings::MasterKey::from_bytes(
            printworks_common::crypto::random_bytes::<32>(),
        ));
    let refused = printworks_common::crypto::SecretBox::load(&ambiguous, &db).await;
    assert!(refused.is_err());
    assert_eq!(
        job_key_id(&db, &configured).await,
        printer.job_signing_key_id
    );
}
