//! Slicers print to Printworks through a printer's OctoPrint-compatible address, with a
//! printer upload key: the keys (made once, listed without the secret, revocable, for
//! their printer only, their maker's rights checked on every use, bounded), a real
//! OctoPrint client from PyPI (`octoprint-cli`, in `.tools/octoprint-venv`) checking
//! the connection and the key and uploading, and PrusaSlicer's upload replayed with
//! libcurl (what PrusaSlicer sends with), its fields in its order; the reference agent
//! then prints the files.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};
use crate::relay::agent::{WITHIN, start_agent};

/// A new upload key of `printer` made with `token`: the key and the address to enter.
async fn upload_key(app: &TestApp, token: &str, printer: Uuid, name: &str) -> (String, String) {
    let made = app
        .call(
            Method::POST,
            &format!("/relay/v1/printers/{printer}/upload-keys"),
            Some(token),
            Some(&json!({ "name": name })),
        )
        .await
        .expect(StatusCode::CREATED);
    (
        made.body["key"].as_str().unwrap().to_owned(),
        made.body["octoprint_url"].as_str().unwrap().to_owned(),
    )
}

/// `GET {url}api/version` with `key` in `X-Api-Key`: the status.
async fn version(url: &str, key: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{url}api/version"))
        .header("X-Api-Key", key)
        .send()
        .await
        .unwrap()
        .status()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn upload_keys_act_for_their_maker_on_their_printer_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, ALL_SCOPES).await;
    let member = app.access_token(&w.member, ALL_SCOPES).await;
    let mine = app
        .register_printer(w.org, w.admin.id, "Ultimaker S5")
        .await;
    let other = app
        .register_printer(w.org, w.admin.id, "Ultimaker S5")
        .await;
    app.share_printer(mine, &[w.member.id]).await;

    let (key, url) = upload_key(&app, &member, mine, "PrusaSlicer on the lab PC").await;
    assert!(key.starts_with("pwu_") && key.len() > 40, "{key}");
    assert!(url.ends_with(&format!("/octoprint/{mine}/")), "{url}");
    // Kept as its SHA-256 only, and in no audit record.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM printer_upload_keys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        stored,
        printworks_common::crypto::sha256(key.as_bytes()).to_vec()
    );
    let leaked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE record LIKE '%' || $1 || '%'")
            .bind(&key[4..])
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(leaked, 0);

    // Listed without the secret; the member sees theirs, an admin everyone's.
    let listed = app
        .call(
            Method::GET,
            &format!("/relay/v1/printers/{mine}/upload-keys"),
            Some(&member),
            None,
        )
        .await
        .expect(StatusCode::OK);
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("key").is_none());
    assert_eq!(items[0]["prefix"], &key[..10]);
    let (admins, _) = upload_key(&app, &admin, mine, "admin's").await;
    let seen = |token: String| {
        let app = &app;
        async move {
            app.call(
                Method::GET,
                &format!("/relay/v1/printers/{mine}/upload-keys"),
                Some(&token),
                None,
            )
            .await
            .body["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(seen(member.clone()).await, 1);
    assert_eq!(seen(admin.clone()).await, 2);

    // The key works on its printer's address only, in either header OctoPrint takes.
    assert_eq!(version(&url, &key).await, StatusCode::OK);
    let other_url = url.replace(&mine.to_string(), &other.to_string());
    assert_eq!(version(&other_url, &key).await, StatusCode::FORBIDDEN);
    assert_eq!(version(&url, "pwu_guessed").await, StatusCode::FORBIDDEN);
    let bearer = reqwest::Client::new()
        .get(format!("{url}api/version"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let body: Value = bearer.json().await.unwrap();
    assert!(body["text"].as_str().unwrap().starts_with("OctoPrint"));
    // A bearer access token is not an upload key.
    assert_eq!(version(&url, &member).await, StatusCode::FORBIDDEN);
    // Nothing else of OctoPrint is pretended.
    let other_path = reqwest::Client::new()
        .get(format!("{url}api/printer"))
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(other_path.status(), StatusCode::NOT_FOUND);

    // Another member's key is not theirs to revoke; its maker or an admin may.
    let admins_id =
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM printer_upload_keys WHERE user_id = $1")
            .bind(w.admin.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let revoke = |token: String, id: Uuid| {
        let app = &app;
        async move {
            app.call(
                Method::DELETE,
                &format!("/relay/v1/printers/{mine}/upload-keys/{id}"),
                Some(&token),
                None,
            )
            .await
            .status
        }
    };
    assert_eq!(
        revoke(member.clone(), admins_id).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(version(&url, &admins).await, StatusCode::OK);
    assert_eq!(
        revoke(admin.clone(), admins_id).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(version(&url, &admins).await, StatusCode::FORBIDDEN);
    assert_eq!(
        revoke(admin.clone(), admins_id).await,
        StatusCode::NOT_FOUND
    );

    // Bounded: ten live keys per person and printer.
    for i in 1..10 {
        upload_key(&app, &member, mine, &format!("slicer {i}")).await;
    }
    let eleventh = app
        .call(
            Method::POST,
            &format!("/relay/v1/printers/{mine}/upload-keys"),
            Some(&member),
            Some(&json!({"name": "one too many"})),
        )
        .await;
    assert_eq!(eleventh.status, StatusCode::CONFLICT);
    for bad in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({}),
    ] {
        let res = app
            .call(
                Method::POST,
                &format!("/relay/v1/printers/{other}/upload-keys"),
                Some(&admin),
                Some(&bad),
            )
            .await;
        assert!(res.status.is_client_error(), "{bad}: {}", res.status);
    }

    // The maker's rights are checked on every use: removed from the organization,
    // their key is worth nothing.
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{}/members/{}", w.org, w.member.id),
        Some(&admin),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert_eq!(version(&url, &key).await, StatusCode::FORBIDDEN);
    // Invited back, their old keys stay revoked.
    app.add_member(w.org, &w.member, "member").await;
    assert_eq!(version(&url, &key).await, StatusCode::FORBIDDEN);
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM printer_upload_keys WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(w.member.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(live, 0);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action IN ('upload_key.create', 'upload_key.revoke')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 12);
}

fn venv_bin(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../.tools/octoprint-venv/bin/{name}"))
}

/// Runs `octoprint-cli` (from PyPI) against `url` with `key`: its exit status and output.
async fn octoprint_cli(dir: &Path, url: &str, key: &str, args: &[&str]) -> (bool, String) {
    let config = dir.join("octoprint-cli.ini");
    std::fs::write(
        &config,
        format!(
            "[server]\nServerAddress = {url}\nApiKey = {key}\n\n[preferences]\nUpdateCheck = false\nFormattedText = false\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(venv_bin("octoprint-cli"));
    cmd.arg("-c").arg(&config).args(args).current_dir(dir);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("octoprint-cli in .tools/octoprint-venv: run `make test-deps`");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The printer's jobs, newest first.
async fn jobs(app: &TestApp, token: &str, printer: Uuid) -> Vec<Value> {
    app.call(
        Method::GET,
        &format!("/relay/v1/printers/{printer}/jobs"),
        Some(token),
        None,
    )
    .await
    .expect(StatusCode::OK)
    .body["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn octoprint_cli_uploads_and_the_job_prints_once_started(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, ALL_SCOPES).await;
    let member = app.access_token(&w.member, ALL_SCOPES).await;
    let printer = app.pair_printer(&admin, w.org, "SN-SLICER-CLI").await;
    app.share_printer(printer.id, &[w.member.id]).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&app, &printer, &dir.path().join("agent"));
    let (key, url) = upload_key(&app, &member, printer.id, "octoprint-cli").await;

    // Its connection check (api/version), key check (api/job), then the command.
    let (ok, said) = octoprint_cli(dir.path(), &url, &key, &["version"]).await;
    assert!(ok, "{said}");
    assert_eq!(said.trim(), "OctoPrint v1.11.8 - API v0.1");
    // A wrong key: api/version is refused already (as a real OctoPrint refuses it), which
    // octoprint-cli reports as its connection check failing.
    let (ok, said) = octoprint_cli(dir.path(), &url, "pwu_wrong", &["version"]).await;
    assert!(!ok);
    assert!(
        said.contains("OctoPrint server cannot be reached"),
        "{said}"
    );

    let part = dir.path().join("bracket.gcode");
    std::fs::write(&part, super::relay::gcode(50)).unwrap();
    let (ok, said) = octoprint_cli(
        dir.path(),
        &url,
        &key,
        &["files", "upload", "bracket.gcode"],
    )
    .await;
    assert!(ok && said.contains("File uploaded to OctoPrint"), "{said}");
    // Sent without "print": held, never shown to the printer, until started.
    let listed = jobs(&app, &member, printer.id).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "held");
    assert_eq!(listed[0]["name"], "bracket.gcode");
    assert_eq!(listed[0]["submitted_by"], w.member.id.to_string());
    let id: Uuid = listed[0]["id"].as_str().unwrap().parse().unwrap();
    // The printer never hears of it, and cannot fetch it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let local = printworks_agent::run::local_jobs(&printworks_agent::StateDir::new(
        dir.path().join("agent"),
    ))
    .unwrap_or_default();
    assert!(local.iter().all(|j| j.id != id), "the agent got a held job");
    let fetched = printer
        .client()
        .get(format!(
            "{}/printer/v1/jobs/{id}/content",
            printer.printer_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::NOT_FOUND);
    // Started by whoever sent it: queued, then printed.
    let started = app
        .call(
            Method::POST,
            &format!("/relay/v1/jobs/{id}/start"),
            Some(&member),
            None,
        )
        .await
        .expect(StatusCode::OK);
    // Queued (the printer's stream may have claimed it already).
    assert!(
        [
            "queued",
            "dispatched",
            "downloading",
            "printing",
            "completed"
        ]
        .contains(&started.body["status"].as_str().unwrap()),
        "{}",
        started.body
    );
    app.wait_for_job(&member, id, "completed", WITHIN).await;
    let again = app
        .call(
            Method::POST,
            &format!("/relay/v1/jobs/{id}/start"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let audit: String = sqlx::query_scalar(
        "SELECT record FROM audit_events WHERE action = 'job.submit' AND target_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(audit.contains("upload_key"), "{audit}");
    stop.cancel();
}

/// Runs curl (libcurl is what PrusaSlicer sends with) with `args`: the status and body.
async fn curl(args: Vec<String>) -> (u16, Value) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// PrusaSlicer's "Upload and Print" (its `OctoPrint::upload`): `X-Api-Key`, then the
/// form fields `print`, `path` and `file`, in that order.
fn prusaslicer(url: &str, key: &str, print: bool, file: &Path, name: &str) -> Vec<String> {
    vec![
        "-A".into(),
        "PrusaSlicer/2.9.2".into(),
        "-H".into(),
        format!("X-Api-Key: {key}"),
        "-F".into(),
        format!("print={print}"),
        "-F".into(),
        "path=".into(),
        "-F".into(),
        format!("file=@{};filename={name}", file.display()),
        format!("{url}api/files/local"),
    ]
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_prusaslicer_upload_and_print_is_printed_and_bad_files_are_refused(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.relay.max_job_bytes = 64 * 1024
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&admin, w.org, "SN-SLICER-PRUSA").await;
    let dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&app, &printer, &dir.path().join("agent"));
    let (key, url) = upload_key(&app, &admin, printer.id, "PrusaSlicer").await;

    // The connection test: PrusaSlicer reads api/version's text.
    let (status, v) = curl(vec![
        "-A".into(),
        "PrusaSlicer/2.9.2".into(),
        "-H".into(),
        format!("X-Api-Key: {key}"),
        format!("{url}api/version"),
    ])
    .await;
    assert_eq!(status, 200);
    assert!(v["text"].as_str().unwrap().starts_with("OctoPrint"), "{v}");

    // Upload and print: queued at once, printed by the agent.
    let part = dir.path().join("part.gcode");
    std::fs::write(&part, super::relay::gcode(100)).unwrap();
    let (status, answer) = curl(prusaslicer(
        &url,
        &key,
        true,
        &part,
        "Shape-Box_0.2mm_PLA.gcode",
    ))
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["done"], true);
    assert_eq!(answer["effectivePrint"], true);
    assert_eq!(
        answer["files"]["local"]["name"],
        "Shape-Box_0.2mm_PLA.gcode"
    );
    assert_eq!(answer["printworks"]["state"], "queued");
    let id: Uuid = answer["printworks"]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let done = app.wait_for_job(&admin, id, "completed", WITHIN).await;
    assert_eq!(
        done["sha256"],
        super::relay::sha256_hex(&std::fs::read(&part).unwrap())
    );
    // api/job in OctoPrint's shape: the printer is idle again.
    let (status, job) = curl(vec![
        "-H".into(),
        format!("X-Api-Key: {key}"),
        format!("{url}api/job"),
    ])
    .await;
    assert_eq!(status, 200);
    assert!(
        job["job"]["file"].is_object() && job["progress"].is_object(),
        "{job}"
    );
    assert!(job["state"].is_string(), "{job}");

    // "print" after the file (field order is the client's): still queued.
    let (status, answer) = curl(vec![
        "-H".into(),
        format!("X-Api-Key: {key}"),
        "-F".into(),
        format!("file=@{};filename=late.gcode", part.display()),
        "-F".into(),
        "print=true".into(),
        format!("{url}api/files/local"),
    ])
    .await;
    assert_eq!(status, 201, "{answer}");
    let late: Uuid = answer["printworks"]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.wait_for_job(&admin, late, "completed", WITHIN).await;

    // Refusals, in OctoPrint's shape, with words the slicer shows.
    let hot = dir.path().join("hot.gcode");
    std::fs::write(&hot, "M104 S300\nG28\n").unwrap();
    let (status, e) = curl(prusaslicer(&url, &key, true, &hot, "hot.gcode")).await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"].as_str().unwrap().contains("line 1"), "{e}");
    let (status, e) = curl(prusaslicer(&url, &key, true, &part, "part.stl")).await;
    assert_eq!(status, 415, "{e}");
    assert!(e["error"].is_string());
    let big = dir.path().join("big.gcode");
    std::fs::write(&big, super::relay::gcode(5000)).unwrap();
    assert!(std::fs::metadata(&big).unwrap().len() > 64 * 1024);
    let (status, e) = curl(prusaslicer(&url, &key, true, &big, "big.gcode")).await;
    assert_eq!(status, 413, "{e}");
    let (status, e) = curl(vec![
        "-H".into(),
        format!("X-Api-Key: {key}"),
        "-F".into(),
        "print=true".into(),
        format!("{url}api/files/local"),
    ])
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"], "No file included.");
    let (status, e) = curl(prusaslicer(&url, "pwu_wrong", true, &part, "part.gcode")).await;
    assert_eq!(status, 403, "{e}");
    // A form that fails after its file takes the file back: a slicer that retries never
    // prints it twice. Two files; too many fields after the file.
    let (status, e) = curl(vec![
        "-H".into(),
        format!("X-Api-Key: {key}"),
        "-F".into(),
        "print=true".into(),
        "-F".into(),
        format!("file=@{};filename=one.gcode", part.display()),
        "-F".into(),
        format!("file=@{};filename=two.gcode", part.display()),
        format!("{url}api/files/local"),
    ])
    .await;
    assert_eq!(status, 400, "{e}");
    let mut many = vec![
        "-H".to_owned(),
        format!("X-Api-Key: {key}"),
        "-F".into(),
        format!("file=@{};filename=many.gcode", part.display()),
    ];
    for i in 0..20 {
        many.extend(["-F".to_owned(), format!("extra{i}=x")]);
    }
    many.push(format!("{url}api/files/local"));
    let (status, e) = curl(many).await;
    assert_eq!(status, 400, "{e}");
    // A body that never shows a boundary is refused once it has sent more than the
    // fields may take, not held in memory up to the size of a job.
    let junk = reqwest::Client::new()
        .post(format!("{url}api/files/local"))
        .header("X-Api-Key", &key)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(vec![b'a'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), StatusCode::BAD_REQUEST);
    // Nothing of the refused uploads was kept.
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM print_jobs WHERE printer_id = $1")
        .bind(printer.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(kept, 2);
    stop.cancel();
}
