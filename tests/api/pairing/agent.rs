//! The reference printer agent, as the real binary: `printworks printer pair` shows a
//! code, someone enters it, and the credentials land in the state directory,
//! owner-only; `printworks printer identity` then talks to the printer endpoint over
//! mutual TLS.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::Duration;

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::binary::printworks;
use crate::helpers::{OrgWorld, TestApp};

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_agent_pairs_keeps_its_credentials_and_is_recognised(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("printer");
    let mut child = printworks(dir.path())
        .env("PRINTWORKS_LOG", "warn")
        .args([
            "printer",
            "pair",
            "--server",
            &app.base,
            "--serial",
            "AGENT-1",
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    });
    let (first, rest) = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with("Pairing code: "), "{first}");
    let code: String = first["Pairing code: ".len()..]
        .chars()
        .take(7)
        .filter(char::is_ascii_digit)
        .collect();
    assert_eq!(code.len(), 6, "{first}");

    let claimed = app
        .claim(&w.admin_token, w.org, &code, "Agent printer")
        .await
        .expect(StatusCode::CREATED);
    let status = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = rest.map_while(Result::ok).collect();
        (child.wait().unwrap(), rest)
    });
    let (status, rest) = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("Paired: printer")),
        "{rest:?}"
    );

    // Owner-only state.
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o077,
        0
    );
    for f in [
        "key.pem",
        "certificate.pem",
        "ca.pem",
        "secret",
        "printer.json",
    ] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("printer.json")).unwrap())
            .unwrap();
    assert_eq!(record["printer_id"], claimed.body["printer_id"]);

    // Pairing twice into the same state directory is refused, not overwritten.
    let again = printworks(dir.path())
        .env("PRINTWORKS_LOG", "warn")
        .args(["printer", "pair", "--server", &app.base, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!again.status.success());

    // The agent is recognised by the printer endpoint.
    let out = agent_command(dir.path(), &state, "identity").await;
    let identity: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(identity["printer_id"], claimed.body["printer_id"]);

    // And renews its certificate over the printer endpoint.
    agent_command(dir.path(), &state, "renew").await;
    let issued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM printer_certificates WHERE issued_by = 'renewal'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(issued, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_agent_renews_with_its_secret_when_the_printer_endpoint_cannot_be_reached(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let mut printer = app.pair_printer(&w.admin_token, w.org, "SN-F").await;
    // The printer endpoint it knows is gone (a closed port): the certificate is still
    // valid, but renewal over mutual TLS cannot happen.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    printer.printer_url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let state = printer.state_dir(&dir.path().join("p"), &app.base);
    let before = state.load().unwrap();

    let after = printworks_agent::renew(&state, app.now()).await.unwrap();
    assert_ne!(after.certificate_pem, before.certificate_pem);
    assert_ne!(
        after.key_pem, before.key_pem,
        "a fresh key with each renewal"
    );
    assert_eq!(state.load().unwrap().certificate_pem, after.certificate_pem);
    let issued: Vec<String> = sqlx::query_scalar(
        "SELECT issued_by FROM printer_certificates WHERE printer_id = $1 ORDER BY issued_at, issued_by",
    )
    .bind(printer.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        issued,
        ["pairing", "secret"],
        "through the shared-secret route"
    );
}

/// `printworks printer <command> --state-dir <state>`, run off the runtime; it must
/// succeed.
async fn agent_command(
    dir: &std::path::Path,
    state: &std::path::Path,
    command: &'static str,
) -> std::process::Output {
    let (dir, state) = (dir.to_owned(), state.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        printworks(&dir)
            .env("PRINTWORKS_LOG", "warn")
            .args(["printer", command, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "printer {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
