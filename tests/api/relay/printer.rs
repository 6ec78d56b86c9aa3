//! The printer's side of the relay, spoken by the test over real mutual TLS: events
//! (settings first, then signed jobs in order, aborts), downloads with `Range`, status
//! reports and their rules, a tampered stored file refused, settings confirmed, and an
//! unpaired printer's stream cut.

use std::time::Duration;

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Events, gcode, history_states, sha256_hex};
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter};

async fn events(p: &TestPrinter) -> Events {
    Events::new(
        p.client()
            .get(format!("{}/printer/v1/events", p.printer_url))
            .send()
            .await
            .unwrap(),
    )
}

async fn status(
    p: &TestPrinter,
    job: uuid::Uuid,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let res = p
        .client()
        .post(format!("{}/printer/v1/jobs/{job}/status", p.printer_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = res.status();
    (s, res.json().await.unwrap_or_default())
}

const WAIT: Duration = Duration::from_secs(10);

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_gets_signed_jobs_in_order_downloads_them_and_reports(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-1").await;
    let first = gcode(10_000); // over three 64 KiB chunks
    let second = gcode(3);
    let job1 = app
        .submit_gcode(&token, printer.id, "first.gcode", first.clone())
        .await
        .expect(StatusCode::CREATED)
        .id();
    let job2 = app
        .submit_gcode(&token, printer.id, "second.gcode", second)
        .await
        .expect(StatusCode::CREATED)
        .id();

    let mut ev = events(&printer).await;
    let (name, settings) = ev.next(WAIT).await.unwrap();
    assert_eq!(name, "settings");
    assert_eq!(
        settings,
        json!({"firewall_enabled": false, "pin_hash": null, "version": 0})
    );
    let (name, j1) = ev.next(WAIT).await.unwrap();
    assert_eq!((name.as_str(), j1["id"].clone()), ("job", json!(job1)));
    let (_, j2) = ev.next(WAIT).await.unwrap();
    assert_eq!(j2["id"], json!(job2));
    assert_eq!(j1["size"], first.len());
    assert_eq!(j1["sha256"], sha256_hex(&first));
    // Signed by the relay's key, which the printer pinned when it paired.
    assert!(printworks_agent::crypto::verify_job(
        &printer.job_signing_key,
        printer.id,
        job1,
        first.len() as u64,
        j1["sha256"].as_str().unwrap(),
        j1["signature"].as_str().unwrap(),
    ));
    assert!(!printworks_agent::crypto::verify_job(
        &printer.job_signing_key,
        printer.id,
        job2,
        first.len() as u64,
        j1["sha256"].as_str().unwrap(),
        j1["signature"].as_str().unwrap(),
    ));

    // The whole file, then parts of it.
    let url = format!("{}/printer/v1/jobs/{job1}/content", printer.printer_url);
    let c = printer.client();
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], format!("\"{}\"", sha256_hex(&first)));
    assert_eq!(res.bytes().await.unwrap(), first);
    let n = first.len();
    for (range, want) in [
        ("bytes=100-199".to_owned(), &first[100..200]),
        ("bytes=65530-65545".to_owned(), &first[65530..65546]),
        (format!("bytes={}-", n - 10), &first[n - 10..]),
        ("bytes=-5".to_owned(), &first[n - 5..]),
        (format!("bytes=0-{}", n + 1000), &first[..]),
    ] {
        let res = c.get(&url).header("range", &range).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let cr = res.headers()["content-range"].to_str().unwrap().to_owned();
        assert!(cr.ends_with(&format!("/{n}")), "{cr}");
        assert_eq!(res.bytes().await.unwrap(), want, "{range}");
    }
    // A range that does not parse is ignored: the whole file.
    for ignored in ["bytes=50-10", "bytes=x-y", "items=0-5"] {
        let res = c.get(&url).header("range", ignored).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{ignored}");
        assert_eq!(res.bytes().await.unwrap().len(), n);
    }
    for bad in [format!("bytes={n}-"), "bytes=-0".to_owned()] {
        let res = c.get(&url).header("range", &bad).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(res.headers()["content-range"], format!("bytes */{n}"));
    }

    // Reports: forward only; the same state again is fine; backwards is not.
    let (s, _) = status(&printer, job1, json!({"state": "printing", "progress": 10})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = status(
        &printer,
        job1,
        json!({"state": "printing", "progress": 55.5, "message": "layer 40"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = status(&printer, job1, json!({"state": "downloading"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    for bad in [
        json!({"state": "queued"}),
        json!({"state": "printing", "progress": 101}),
        json!({"state": 3}),
    ] {
        let (s, _) = status(&printer, job1, bad.clone()).await;
        assert!(s.is_client_error(), "{bad}: {s}");
    }
    let (s, _) = status(
        &printer,
        job1,
        json!({"state": "completed", "progress": 100}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = status(&printer, job1, json!({"state": "completed"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = status(&printer, job1, json!({"state": "failed"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // A finished job cannot be downloaded any more.
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::GONE);

    let job = app
        .call(
            Method::GET,
            &format!("/relay/v1/jobs/{job1}"),
            Some(&token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(job.body["status"], "completed");
    assert!(job.body["finished_at"].is_string());
    let states = history_states(&job.body);
    assert_eq!(states.first(), Some(&"queued"));
    let order = [
        "queued",
        "dispatched",
        "downloading",
        "printing",
        "completed",
    ];
    let mut seen = states.clone();
    seen.dedup();
    assert_eq!(seen, order, "{states:?}");
    assert!(
        job.body["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["message"] == "layer 40")
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn aborts_before_and_after_the_printer_has_the_job(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-2").await;
    let queued = app
        .submit_gcode(&token, printer.id, "never.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED)
        .id();
    // Aborted while queued: the printer never hears of it.
    app.call(
        Method::POST,
        &format!("/relay/v1/jobs/{queued}/abort"),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::OK);
    let mut ev = events(&printer).await;
    assert_eq!(ev.next(WAIT).await.unwrap().0, "settings");
    let sent = app
        .submit_gcode(&token, printer.id, "later.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let (name, j) = ev.next(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), j["id"].clone()),
        ("job", json!(sent)),
        "the aborted job was sent"
    );
    let (s, _) = status(&printer, sent, json!({"state": "printing", "progress": 20})).await;
    assert_eq!(s, StatusCode::OK);

    // Aborted while printing: the printer is told at once, and says it stopped.
    let aborted = app
        .call(
            Method::POST,
            &format!("/relay/v1/jobs/{sent}/abort"),
            Some(&token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(aborted.body["status"], "aborted");
    let (name, a) = ev.next(WAIT).await.unwrap();
    assert_eq!((name.as_str(), a["id"].clone()), ("abort", json!(sent)));
    let (s, body) = status(
        &printer,
        sent,
        json!({"state": "aborted", "message": "stopped"}),
    )
    .await;
    assert_eq!(
        (s, body["status"].clone()),
        (StatusCode::OK, json!("aborted"))
    );
    let acknowledged: bool = sqlx::query_scalar(
        "SELECT abort_acknowledged_at IS NOT NULL FROM print_jobs WHERE id = $1",
    )
    .bind(sent)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(acknowledged);
    // A reconnecting printer is not told again.
    drop(ev);
    let mut ev = events(&printer).await;
    assert_eq!(ev.next(WAIT).await.unwrap().0, "settings");
    assert_eq!(ev.next(Duration::from_millis(500)).await, None);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_tampered_stored_file_is_refused_not_sent(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-3").await;
    let big = gcode(10_000);
    let mut jobs = Vec::new();
    for name in ["first-chunk.gcode", "later-chunk.gcode"] {
        jobs.push(
            app.submit_gcode(&token, printer.id, name, big.clone())
                .await
                .expect(StatusCode::CREATED)
                .id(),
        );
    }
    let blob = |job: uuid::Uuid| {
        let app = &app;
        async move {
            let key: String = sqlx::query_scalar("SELECT blob_key FROM print_jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&app.db)
                .await
                .unwrap();
            app.data_dir.path().join("blobs").join(key)
        }
    };
    // One byte of the first chunk, and one of the third.
    for (job, at) in [(jobs[0], 40usize), (jobs[1], 2 * 65552 + 40)] {
        let path = blob(job).await;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }
    let c = printer.client();
    let url = |job| format!("{}/printer/v1/jobs/{job}/content", printer.printer_url);
    let res = c.get(url(jobs[0])).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["type"], "urn:printworks:problem:job-file-damaged");
    // Damage further in: the verified part may go out, the rest never; the transfer
    // breaks before the end and the file is not whole. (When the damage is found
    // before the answer's first bytes have left the server, the connection breaks
    // before any answer at all: nothing was sent either.)
    if let Ok(res) = c.get(url(jobs[1])).send().await {
        assert_eq!(res.status(), StatusCode::OK);
        if let Ok(got) = res.bytes().await {
            assert!(got.len() < big.len());
            assert!(
                big.starts_with(&got),
                "only authenticated bytes may be sent"
            );
        }
    }
    for job in jobs {
        let failed = app.wait_for_job(&token, job, "failed", WAIT).await;
        assert_eq!(
            failed["message"],
            "the stored file was altered; it was not sent"
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn settings_reach_the_printer_and_its_confirmation_is_recorded(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-4").await;
    let mut ev = events(&printer).await;
    assert_eq!(ev.next(WAIT).await.unwrap().1["version"], 0);
    let path = format!(
        "/org/v1/organizations/{}/printers/{}/security",
        w.org, printer.id
    );
    app.call(
        Method::PUT,
        &path,
        Some(&token),
        Some(&json!({"firewall_enabled": true, "pin": "462819"})),
    )
    .await
    .expect(StatusCode::OK);
    let (name, s) = ev.next(WAIT).await.unwrap();
    assert_eq!(name, "settings");
    assert_eq!(s["version"], 1);
    assert_eq!(s["firewall_enabled"], true);
    assert!(s["pin_hash"].as_str().unwrap().starts_with("$argon2id$"));
    let applied = |v: i64| {
        printer
            .client()
            .post(format!(
                "{}/printer/v1/settings/applied",
                printer.printer_url
            ))
            .json(&json!({"version": v}))
            .send()
    };
    assert_eq!(applied(7).await.unwrap().status(), StatusCode::CONFLICT);
    // A setting the printer cannot apply is said, by name; other names are refused.
    let applied_but = |names: Value| {
        printer
            .client()
            .post(format!(
                "{}/printer/v1/settings/applied",
                printer.printer_url
            ))
            .json(&json!({"version": 1, "not_applied": names}))
            .send()
    };
    for bad in [json!(["telnet"]), json!(["PIN"]), json!([1]), json!("pin")] {
        let status = applied_but(bad.clone()).await.unwrap().status();
        assert!(
            status.is_client_error() && status != StatusCode::CONFLICT,
            "{bad}: {status}"
        );
    }
    assert_eq!(
        app.call(Method::GET, &path, Some(&token), None).await.body["confirmed_version"],
        Value::Null
    );
    assert_eq!(
        applied_but(json!(["pin", "pin"])).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let seen = app
        .call(Method::GET, &path, Some(&token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(seen.body["confirmed_version"], 1);
    assert_eq!(seen.body["not_applied"], json!(["pin"]));
    // Said again of the same version, differently (the printer moved behind another
    // controller, say): recorded; in any order.
    assert_eq!(
        applied_but(json!(["pin", "firewall"]))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let seen = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(seen.body["not_applied"], json!(["firewall", "pin"]));
    // Confirmed again as it was: nothing new, nothing audited.
    assert_eq!(
        applied_but(json!(["firewall", "pin"]))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let audited: Vec<Value> = sqlx::query_scalar(
        "SELECT record::jsonb FROM audit_events WHERE action = 'printer.security_confirmed'
         ORDER BY chain_index",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let said: Vec<&Value> = audited
        .iter()
        .map(|a| &a["details"]["not_applied"])
        .collect();
    assert_eq!(said, [&json!(["pin"]), &json!(["firewall", "pin"])]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_unpaired_printer_is_cut_off(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-5").await;
    let mut ev = events(&printer).await;
    assert_eq!(ev.next(WAIT).await.unwrap().0, "settings");
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert!(
        ev.ends_within(WAIT).await,
        "the event stream of an unpaired printer stayed open"
    );
    let res = printer
        .client()
        .get(format!("{}/printer/v1/events", printer.printer_url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // And no more jobs for it.
    app.submit_gcode(&token, printer.id, "x.gcode", gcode(1))
        .await
        .expect(StatusCode::NOT_FOUND);
}
