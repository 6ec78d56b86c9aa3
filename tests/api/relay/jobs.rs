//! Sending jobs: who may, what is refused (with the line that is wrong), what a refused
//! upload leaves behind (nothing), retries, and other organizations' ids.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{gcode, sha256_hex, stored_files, ufp};
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};

#[sqlx::test(migrator = "MIGRATOR")]
async fn who_may_send_jobs_to_a_printer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = |u| app.access_token(u, ALL_SCOPES);
    let (admin, member, guest, outsider) = (
        token(&w.admin).await,
        token(&w.member).await,
        token(&w.guest).await,
        token(&w.outsider).await,
    );
    // Claimed by the admin; shared with nobody yet.
    let printer = app.pair_printer(&admin, w.org, "SN-1").await;
    let g = gcode(20);
    let send = |t: Option<&str>| {
        let (t, g, app) = (t.map(str::to_owned), g.clone(), &app);
        async move {
            app.submit_job(
                t.as_deref(),
                printer.id,
                "bracket.gcode",
                "text/x-gcode",
                g,
                None,
            )
            .await
        }
    };

    let job = send(Some(&admin)).await.expect(StatusCode::CREATED);
    assert_eq!(job.body["status"], "queued");
    assert_eq!(job.body["name"], "bracket.gcode");
    assert_eq!(job.body["size"], g.len());
    assert_eq!(job.body["sha256"], sha256_hex(&g));
    send(Some(&member)).await.expect(StatusCode::NOT_FOUND);
    send(Some(&guest)).await.expect(StatusCode::NOT_FOUND);
    send(Some(&outsider)).await.expect(StatusCode::NOT_FOUND);
    send(None).await.expect(StatusCode::UNAUTHORIZED);
    let read_only = app
        .access_token(&w.admin, "print_job.read printer.read")
        .await;
    let res = send(Some(&read_only)).await.expect(StatusCode::FORBIDDEN);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:insufficient-scope"
    );

    // Shared with the guest directly, and with the member through a team.
    let base = format!("/org/v1/organizations/{}", w.org);
    app.call(
        Method::PUT,
        &format!("{base}/printers/{}/shares", printer.id),
        Some(&admin),
        Some(&json!({"grantee_type": "user", "grantee_id": w.guest.id})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let team = app
        .call(
            Method::POST,
            &format!("{base}/teams"),
            Some(&admin),
            Some(&json!({"name": "Print room"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::PUT,
        &format!("{base}/teams/{team}/members/{}", w.member.id),
        Some(&admin),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::PUT,
        &format!("{base}/printers/{}/shares", printer.id),
        Some(&admin),
        Some(&json!({"grantee_type": "team", "grantee_id": team})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let guests = send(Some(&guest)).await.expect(StatusCode::CREATED);
    send(Some(&member)).await.expect(StatusCode::CREATED);

    // Reading: the same people; the list newest first.
    let list = app
        .call(
            Method::GET,
            &format!("/relay/v1/printers/{}/jobs?limit=2", printer.id),
            Some(&guest),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 2);
    assert!(list.body["next_cursor"].is_string());
    let detail = app
        .call(
            Method::GET,
            &format!("/relay/v1/jobs/{}", guests.id()),
            Some(&member),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(detail.body["submitted_by"], json!(w.guest.id));
    assert_eq!(detail.body["history"][0]["state"], "queued");
    app.call(
        Method::GET,
        &format!("/relay/v1/jobs/{}", guests.id()),
        Some(&outsider),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);

    // Aborting: not the member (neither sender nor claimer), but the guest who sent it.
    let abort = format!("/relay/v1/jobs/{}/abort", guests.id());
    app.call(Method::POST, &abort, Some(&member), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    let aborted = app
        .call(Method::POST, &abort, Some(&guest), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(aborted.body["status"], "aborted");
    app.call(Method::POST, &abort, Some(&admin), None)
        .await
        .expect(StatusCode::CONFLICT);

    // Each submission and the abort is audited, with its actor.
    let audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor_id FROM audit_events WHERE action LIKE 'job.%' ORDER BY occurred_at, chain_index",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(audited.iter().filter(|(a, _)| a == "job.submit").count(), 3);
    assert!(audited.contains(&("job.abort".to_owned(), w.guest.id.to_string())));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_uploads_are_refused_with_the_line_and_leave_nothing(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.relay.max_job_bytes = 256 * 1024;
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-2").await;
    let send = |name: &str, ct: &str, body: Vec<u8>| {
        let (name, ct, app, token) = (name.to_owned(), ct.to_owned(), &app, &token);
        async move {
            app.submit_job(Some(token), printer.id, &name, &ct, body, None)
                .await
        }
    };

    let mut hot = gcode(3);
    hot.extend_from_slice(b"M104 S330\n");
    let res = send("hot.gcode", "text/x-gcode", hot)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        res.body["detail"],
        "line 10: M104 S330 sets the nozzle to 330 °C; the Ultimaker S5 allows at most 280 °C"
    );
    let res = send("bed.gcode", "text/x-gcode", b"G28\nM190 S150\n".to_vec())
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body["detail"].as_str().unwrap().starts_with("line 2:"));
    let res = send(
        "binary.gcode",
        "text/x-gcode",
        b"G28\nG1 \x00\x01\n".to_vec(),
    )
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body["detail"].as_str().unwrap().contains("line 2"));
    let res = send("big.gcode", "text/x-gcode", gcode(20_000))
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(res.body["detail"].as_str().unwrap().contains("262144"));
    send("x.stl", "model/stl", b"solid".to_vec())
        .await
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    send("", "text/x-gcode", gcode(1))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);

    // UFP packages: a zip with its content types and its G-code, which is checked too.
    let res = send(
        "a.ufp",
        "application/x-ufp",
        b"PK\x03\x04 not really".to_vec(),
    )
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body["detail"].as_str().unwrap().contains("well-formed"));
    send("b.ufp", "application/x-ufp", ufp(&gcode(5), false))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    let mut hot = gcode(2);
    hot.extend_from_slice(b"M140 S200\n");
    let res = send("c.ufp", "application/x-ufp", ufp(&hot, true))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        res.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("3D/model.gcode: line 9:"),
        "{}",
        res.body
    );
    // A zip bomb (a small package that unpacks far beyond the limit) stops early.
    let bomb = ufp(&[b'\n'; 8 * 1024 * 1024][..], true);
    assert!(bomb.len() < 256 * 1024);
    let res = send("bomb.ufp", "application/x-ufp", bomb)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        res.body["detail"]
            .as_str()
            .unwrap()
            .contains("unpacks to more than"),
        "{}",
        res.body
    );

    // Nothing kept: no job rows, no blobs, no spool files.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM print_jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(stored_files(&app), Vec::<std::path::PathBuf>::new());

    // A good UFP is taken, and its blob is sealed: the G-code is not in it.
    let good = ufp(&gcode(50), true);
    let job = send("good.ufp", "application/x-ufp", good.clone())
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(job.body["sha256"], sha256_hex(&good));
    let files = stored_files(&app);
    assert_eq!(files.len(), 1);
    let sealed = std::fs::read(&files[0]).unwrap();
    assert!(sealed.starts_with(b"PWB1"));
    assert!(
        !sealed.windows(4).any(|w| w == b"PK\x03\x04"),
        "the stored file is not sealed"
    );
    let g = gcode(50);
    let job = send("plain.gcode", "text/x-gcode", g)
        .await
        .expect(StatusCode::CREATED);
    let (key, sealed_key): (String, Vec<u8>) =
        sqlx::query_as("SELECT blob_key, key_sealed FROM print_jobs WHERE id = $1")
            .bind(job.id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    let blob = std::fs::read(app.data_dir.path().join("blobs").join(&key)).unwrap();
    assert!(
        !blob.windows(9).any(|w| w == b"M104 S210"),
        "G-code readable at rest"
    );
    assert_eq!(
        sealed_key[0], 2,
        "the data key is sealed with the master key (and names it)"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retried_upload_with_the_same_key_makes_one_job(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-3").await;
    let g = gcode(10);
    let first = app
        .submit_job(
            Some(&token),
            printer.id,
            "part.gcode",
            "text/x-gcode",
            g.clone(),
            Some("upload-42"),
        )
        .await
        .expect(StatusCode::CREATED);
    let again = app
        .submit_job(
            Some(&token),
            printer.id,
            "part.gcode",
            "text/x-gcode",
            g.clone(),
            Some("upload-42"),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(first.id(), again.id());
    let other = app
        .submit_job(
            Some(&token),
            printer.id,
            "part.gcode",
            "text/x-gcode",
            g,
            Some("upload-43"),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_ne!(first.id(), other.id());
    // The same key for another upload is a mistake, not a replay.
    let res = app
        .submit_job(
            Some(&token),
            printer.id,
            "another.gcode",
            "text/x-gcode",
            gcode(10),
            Some("upload-42"),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        res.body["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM print_jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    for bad in ["", "has space", &"k".repeat(201)] {
        let res = app
            .submit_job(
                Some(&token),
                printer.id,
                "p.gcode",
                "text/x-gcode",
                gcode(1),
                Some(bad),
            )
            .await;
        assert!(res.status.is_client_error(), "{bad:?}: {}", res.status);
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn another_organizations_jobs_and_printers_are_404_everywhere(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, ALL_SCOPES).await;
    let outsider = app.access_token(&w.outsider, ALL_SCOPES).await;
    let a_printer = app.pair_printer(&admin, w.org, "SN-A").await;
    let b_printer = app.pair_printer(&outsider, w.other_org, "SN-B").await;
    let job = app
        .submit_gcode(&admin, a_printer.id, "a.gcode", gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    for (method, path) in [
        (Method::GET, format!("/relay/v1/jobs/{job}")),
        (Method::POST, format!("/relay/v1/jobs/{job}/abort")),
        (
            Method::GET,
            format!("/relay/v1/printers/{}/jobs", a_printer.id),
        ),
        (Method::GET, format!("/relay/v1/jobs/{}", Uuid::new_v4())),
    ] {
        let res = app
            .call(method.clone(), &path, Some(&outsider), None)
            .await
            .expect(StatusCode::NOT_FOUND);
        assert_eq!(
            res.body["type"], "urn:printworks:problem:not-found",
            "{method} {path}"
        );
    }
    app.submit_gcode(&outsider, a_printer.id, "b.gcode", gcode(1))
        .await
        .expect(StatusCode::NOT_FOUND);
    // Nor may another organization's printer fetch it.
    let res = b_printer
        .client()
        .get(format!(
            "{}/printer/v1/jobs/{job}/content",
            b_printer.printer_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = b_printer
        .client()
        .post(format!(
            "{}/printer/v1/jobs/{job}/status",
            b_printer.printer_url
        ))
        .json(&json!({"state": "completed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let state: String = sqlx::query_scalar("SELECT state FROM print_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(state, "queued");
}

/// A body that sends `first`, waits `pause`, then sends `rest`: a slow client.
fn trickle(first: Vec<u8>, pause: std::time::Duration, rest: Vec<u8>) -> reqwest::Body {
    let parts = futures_util::stream::unfold(0, move |step| {
        let (first, rest) = (first.clone(), rest.clone());
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    tokio::time::sleep(pause).await;
                    Some((Ok(rest), 2))
                }
                _ => None,
            }
        }
    });
    reqwest::Body::wrap_stream(parts)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_upload_may_take_longer_than_the_request_timeout(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.request_timeout = std::time::Duration::from_secs(2);
        s.relay.upload_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-SLOW").await;
    let pause = std::time::Duration::from_secs(3);

    // An upload from a slow connection: past the request timeout, within its own.
    let g = gcode(2000);
    let (first, rest) = g.split_at(g.len() / 2);
    let res = app
        .client
        .post(app.url(&format!("/relay/v1/printers/{}/jobs", printer.id)))
        .query(&[("name", "slow.gcode")])
        .header("content-type", "text/x-gcode")
        .bearer_auth(&token)
        .body(trickle(first.to_vec(), pause, rest.to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let job: serde_json::Value = res.json().await.unwrap();
    assert_eq!(job["size"], g.len());

    // The same slowness on an ordinary route is cut off at the request timeout.
    let res = app
        .client
        .post(app.url("/org/v1/organizations"))
        .header("content-type", "application/json")
        .bearer_auth(&token)
        .body(trickle(
            b"{\"name\": ".to_vec(),
            pause,
            b"\"Slow Lab\"}".to_vec(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_print_the_printer_held_by_itself_can_be_resumed_and_a_settled_wish_is_not_sent_again(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, crate::helpers::ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-SELF").await;
    let job = app
        .submit_gcode(&token, printer.id, "self.gcode", super::gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let say = |state: &'static str| {
        let client = printer.client();
        let url = format!("{}/printer/v1/jobs/{job}/status", printer.printer_url);
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"state": state, "progress": 10.0, "message": null}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let act = |what: &'static str| {
        let token = token.clone();
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/relay/v1/jobs/{job}/{what}"),
                Some(&token),
                None,
            )
            .await
        }
    };
    // Queued: not with the printer yet.
    act("pause").await.expect(StatusCode::CONFLICT);
    assert_eq!(say("printing").await, StatusCode::OK);
    // The printer holds the print by itself (its own button): the cloud may resume it,
    // not pause it again.
    assert_eq!(say("paused").await, StatusCode::OK);
    act("pause").await.expect(StatusCode::CONFLICT);
    act("resume").await.expect(StatusCode::OK);
    let wish = || async {
        sqlx::query_as::<_, (bool, bool)>(
            "SELECT pause_requested, hold_changed_at IS NOT NULL FROM print_jobs WHERE id = $1",
        )
        .bind(job)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    assert_eq!(wish().await, (false, true));
    // It goes on: the wish is settled, and no longer sent on each connection.
    assert_eq!(say("printing").await, StatusCode::OK);
    assert_eq!(wish().await, (false, false));
    act("pause").await.expect(StatusCode::OK);
    assert_eq!(wish().await, (true, true));
    assert_eq!(say("paused").await, StatusCode::OK);
    assert_eq!(wish().await, (true, false));
}
