//! Print jobs bounded: unfinished jobs and stored bytes per printer and organization,
//! uploads at once per caller, queued jobs that expire, UFP packages that may not
//! inflate beyond a ratio, and every part of a package a printer might read checked.

use std::time::Duration;

use printworks::ServiceSet;
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};
use crate::relay::{CONTENT_TYPES, gcode, package};

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_or_an_organization_cannot_be_sent_unbounded_jobs(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.max_queued_jobs_per_printer = 3;
        s.relay.max_queued_jobs_per_org = 4;
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let a = app.pair_printer(&token, w.org, "SN-QA").await;
    let b = app.pair_printer(&token, w.org, "SN-QB").await;
    for i in 0..3 {
        app.submit_gcode(&token, a.id, &format!("{i}.gcode"), gcode(2))
            .await
            .expect(StatusCode::CREATED);
    }
    let full = app
        .submit_gcode(&token, a.id, "3.gcode", gcode(2))
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(full.body["type"], "urn:printworks:problem:job-queue-full");
    app.submit_gcode(&token, b.id, "b0.gcode", gcode(2))
        .await
        .expect(StatusCode::CREATED);
    // The organization's fifth unfinished job, on a printer with room.
    app.submit_gcode(&token, b.id, "b1.gcode", gcode(2))
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(count(&app, "SELECT count(*) FROM print_jobs").await, 4);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn stored_job_files_are_bounded_per_printer_and_organization(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.max_stored_bytes_per_printer = 20_000;
        s.relay.max_stored_bytes_per_org = 30_000;
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let a = app.pair_printer(&token, w.org, "SN-SA").await;
    let b = app.pair_printer(&token, w.org, "SN-SB").await;
    let file = |n: usize| {
        let mut g = gcode(0);
        g.resize(n, b'\n');
        g
    };
    app.submit_gcode(&token, a.id, "big.gcode", file(15_000))
        .await
        .expect(StatusCode::CREATED);
    // Said up front (Content-Length): refused at once.
    let refused = app
        .submit_gcode(&token, a.id, "more.gcode", file(6_000))
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        refused.body["type"],
        "urn:printworks:problem:storage-quota-exceeded"
    );
    app.submit_gcode(&token, b.id, "b.gcode", file(10_000))
        .await
        .expect(StatusCode::CREATED);
    // Streamed without a length: refused once its size is known, and nothing is kept.
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        file(8_000)
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    ));
    let res = app
        .client
        .post(app.url(&format!("/relay/v1/printers/{}/jobs", b.id)))
        .query(&[("name", "streamed.gcode")])
        .header("content-type", "text/x-gcode")
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(count(&app, "SELECT count(*) FROM print_jobs").await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_caller_cannot_keep_unbounded_uploads_open(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.max_uploads_per_caller = 2;
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let member = app.access_token(&w.member, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-UP").await;
    app.call(
        reqwest::Method::PUT,
        &format!(
            "/org/v1/organizations/{}/printers/{}/shares",
            w.org, printer.id
        ),
        Some(&token),
        Some(&serde_json::json!({"grantee_type": "user", "grantee_id": w.member.id})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    // Two uploads that trickle and never end.
    let held: Vec<_> = (0..2)
        .map(|i| {
            trickle(
                &app,
                &token,
                printer.id,
                &format!("slow-{i}.gcode"),
                b"G28\n",
                None,
            )
        })
        .collect();
    until_receiving(&app, 2).await;
    let third = app
        .submit_gcode(&token, printer.id, "third.gcode", gcode(2))
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        third.body["type"],
        "urn:printworks:problem:too-many-uploads"
    );
    // Someone else is not held up by them.
    app.submit_gcode(&member, printer.id, "other.gcode", gcode(2))
        .await
        .expect(StatusCode::CREATED);
    // Once they end, the caller may send again.
    for (tx, task) in held {
        drop(tx);
        let _ = task.await;
    }
    app.submit_gcode(&token, printer.id, "after.gcode", gcode(2))
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_job_cannot_wait_for_its_printer_for_ever(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-AWAY").await;
    let job = app
        .submit_gcode(&token, printer.id, "waits.gcode", gcode(2))
        .await
        .expect(StatusCode::CREATED)
        .id();
    // And one sent without "print" from a slicer, held until someone starts it.
    let held = app
        .submit_gcode(&token, printer.id, "held.gcode", gcode(2))
        .await
        .expect(StatusCode::CREATED)
        .id();
    sqlx::query("UPDATE print_jobs SET state = 'held' WHERE id = $1")
        .bind(held)
        .execute(&app.db)
        .await
        .unwrap();
    let ttl = Duration::from_secs(7 * 24 * 3600);
    // The held one waits a day for someone to start it.
    app.clock.advance(time::Duration::hours(23));
    let expired = printworks_relay::lifecycle::expire_queued(&app.db, app.now(), ttl).await;
    assert_eq!(expired.unwrap(), 0);
    app.clock.advance(time::Duration::hours(2));
    let expired = printworks_relay::lifecycle::expire_queued(&app.db, app.now(), ttl).await;
    assert_eq!(expired.unwrap(), 1);
    // The queued one a week for its printer.
    app.clock.advance(time::Duration::days(5));
    let expired = printworks_relay::lifecycle::expire_queued(&app.db, app.now(), ttl).await;
    assert_eq!(expired.unwrap(), 0);
    app.clock.advance(time::Duration::days(2));
    let expired = printworks_relay::lifecycle::expire_queued(&app.db, app.now(), ttl).await;
    assert_eq!(expired.unwrap(), 1);
    let held: (String, String) =
        sqlx::query_as("SELECT state, message FROM print_jobs WHERE id = $1")
            .bind(held)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (held.0.as_str(), held.1.as_str()),
        ("failed", "expired: nobody started it within 24 hours")
    );
    let (state, message): (String, String) =
        sqlx::query_as("SELECT state, message FROM print_jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), message.as_str()),
        (
            "failed",
            "expired: the printer did not take it within 7 days"
        )
    );
}

async fn send_ufp(app: &TestApp, token: &str, printer: Uuid, body: Vec<u8>) -> (StatusCode, Value) {
    let res = app
        .submit_job(
            Some(token),
            printer,
            "p.ufp",
            "application/x-ufp",
            body,
            None,
        )
        .await;
    (res.status, res.body)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_ufp_package_cannot_inflate_beyond_its_ratio(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-BOMB").await;
    // A few hundred KiB that unpack to 64 MiB of blank lines: far below the old limit
    // (eight times the largest job), far above 32 times its own size.
    let blank = vec![b'\n'; 64 * 1024 * 1024];
    let bomb = package(&[
        ("[Content_Types].xml", CONTENT_TYPES),
        ("3D/model.gcode", &blank),
    ]);
    assert!(bomb.len() < 1024 * 1024);
    let (status, body) = send_ufp(&app, &token, printer.id, bomb).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("32 times its size"),
        "{body}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM print_jobs").await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_part_of_a_ufp_package_a_printer_might_read_is_checked(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-PARTS").await;
    let fine = gcode(3);
    let hot: &[u8] = b"G28\nM104 S330\n";
    let rels = |target: &str| {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Target="{target}" Type="http://schemas.ultimaker.org/package/2018/relationships/gcode" Id="rel0"/></Relationships>"#
        )
    };
    let material = |temp: &str| {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><fdmmaterial xmlns="http://www.ultimaker.com/material"><settings><setting key="print temperature">200</setting><machine><setting key="print temperature">{temp}</setting></machine></settings></fdmmaterial>"#
        )
    };
    let ok_rels = rels("/3D/model.gcode");
    let elsewhere = rels("/3D/other.gcode");
    let hot_material = material("400");
    let sly_material = material("2&#56;0");
    // A reader takes the unprefixed attribute; a prefixed one of the same local name
    // must not be the one the checker reads instead.
    let prefixed_rels = r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships" xmlns:x="urn:x"><Relationship x:Type="urn:other" x:Target="/3D/model.gcode" Target="/3D/other.gcode" Type="http://schemas.ultimaker.org/package/2018/relationships/gcode" Id="rel0"/></Relationships>"#;
    let prefixed_material = r#"<?xml version="1.0" encoding="UTF-8"?><fdmmaterial xmlns="http://www.ultimaker.com/material" xmlns:x="urn:x"><settings><setting x:key="note" key="print temperature">400</setting></settings></fdmmaterial>"#;
    let twice_material = r#"<?xml version="1.0" encoding="UTF-8"?><fdmmaterial xmlns="http://www.ultimaker.com/material"><settings><setting key="note" key="print temperature">400</setting></settings></fdmmaterial>"#;
    type Parts<'a> = Vec<(&'a str, &'a [u8])>;
    let cases: Vec<(&str, Parts, &str)> = vec![
        (
            "a second G-code part",
            vec![("/3D/model.gcode", &fine), ("/3D/other.gcode", hot)],
            "3D/other.gcode: line 2",
        ),
        (
            "the same part twice, spelled differently",
            vec![("3D/model.gcode", &fine), ("/3d/Model.gcode", hot)],
            "two parts named",
        ),
        (
            "a relationship to another G-code part",
            vec![
                ("/3D/model.gcode", &fine),
                ("/3D/other.gcode", &fine),
                ("/_rels/.rels", elsewhere.as_bytes()),
            ],
            "relationship points at /3D/other.gcode",
        ),
        (
            "a material profile hotter than the printer allows",
            vec![
                ("/3D/model.gcode", &fine),
                ("/Materials/hot.xml.fdm_material", hot_material.as_bytes()),
            ],
            "print temperature of 400",
        ),
        (
            "a temperature written with a character reference",
            vec![
                ("/3D/model.gcode", &fine),
                ("/Materials/sly.xml.fdm_material", sly_material.as_bytes()),
            ],
            "written with a reference",
        ),
        (
            "a relationship whose prefixed attributes look harmless",
            vec![
                ("/3D/model.gcode", &fine),
                ("/3D/other.gcode", &fine),
                ("/_rels/.rels", prefixed_rels.as_bytes()),
            ],
            "relationship points at /3D/other.gcode",
        ),
        (
            "a material setting whose prefixed key looks harmless",
            vec![
                ("/3D/model.gcode", &fine),
                (
                    "/Materials/x.xml.fdm_material",
                    prefixed_material.as_bytes(),
                ),
            ],
            "print temperature of 400",
        ),
        (
            "a material setting with its key twice",
            vec![
                ("/3D/model.gcode", &fine),
                ("/Materials/x.xml.fdm_material", twice_material.as_bytes()),
            ],
            "malformed",
        ),
        (
            "compressed G-code",
            vec![
                ("/3D/model.gcode", &fine),
                ("/3D/model.gcode.gz", b"\x1f\x8b"),
            ],
            "compressed or binary G-code",
        ),
    ];
    for (what, mut parts, expected) in cases {
        parts.insert(0, ("/[Content_Types].xml", CONTENT_TYPES));
        let (status, body) = send_ufp(&app, &token, printer.id, package(&parts)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{what}: {detail}");
    }
    // A package as Cura writes it (slashed names, relationships, a material) passes.
    let cool = material("210");
    let parts: Vec<(&str, &[u8])> = vec![
        ("/3D/model.gcode", &fine),
        ("/Materials/generic_pla.xml.fdm_material", cool.as_bytes()),
        ("/[Content_Types].xml", CONTENT_TYPES),
        ("/_rels/.rels", ok_rels.as_bytes()),
    ];
    let (status, body) = send_ufp(&app, &token, printer.id, package(&parts)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// An upload that sends `first` and then waits: send the rest on the sender, or drop it
/// to end the body. With `length`, the body declares it (Content-Length).
fn trickle(
    app: &TestApp,
    token: &str,
    printer: Uuid,
    name: &str,
    first: &'static [u8],
    length: Option<u64>,
) -> (
    tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tx.try_send(Ok(bytes::Bytes::from_static(first))).unwrap();
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut req = app
        .client
        .post(app.url(&format!("/relay/v1/printers/{printer}/jobs")))
        .query(&[("name", name)])
        .header("content-type", "text/x-gcode")
        .bearer_auth(token)
        .body(body);
    if let Some(length) = length {
        req = req.header("content-length", length);
    }
    (tx, tokio::spawn(req.send()))
}

async fn until_receiving(app: &TestApp, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(
        app,
        "SELECT count(*) FROM print_jobs WHERE state = 'receiving'",
    )
    .await
        < n
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn uploads_side_by_side_count_their_declared_sizes(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.max_stored_bytes_per_printer = 1000;
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-SIDE").await;
    // 800 bytes declared, 4 sent so far.
    let (tx, first) = trickle(&app, &token, printer.id, "big.gcode", b"G28\n", Some(800));
    until_receiving(&app, 1).await;
    let second = app
        .submit_gcode(&token, printer.id, "small.gcode", b"G28\n".repeat(75))
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        second.body["type"],
        "urn:printworks:problem:storage-quota-exceeded"
    );
    // The first ends as declared, and is queued.
    tx.send(Ok(bytes::Bytes::from(b"G1 X1\n".repeat(796 / 6))))
        .await
        .unwrap();
    tx.send(Ok(bytes::Bytes::from(vec![b'\n'; 796 % 6])))
        .await
        .unwrap();
    drop(tx);
    let res = first.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_file_still_arriving_when_its_printer_is_removed_is_not_queued(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-MIDWAY").await;
    let (tx, upload) = trickle(&app, &token, printer.id, "late.gcode", b"G28\n", None);
    until_receiving(&app, 1).await;
    app.call(
        reqwest::Method::DELETE,
        &format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    tx.send(Ok(bytes::Bytes::from_static(b"G1 X1\n")))
        .await
        .unwrap();
    drop(tx);
    let res = upload.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "urn:printworks:problem:printer-removed");
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM print_jobs")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(states, vec!["failed"]);
}
