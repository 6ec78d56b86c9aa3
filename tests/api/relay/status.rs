//! Live printer status: what a printer reports (bounded, rate-limited, refused when out
//! of bounds), who may read it (everyone who may see the printer, nobody else), whether
//! the printer is connected now, the server-sent stream of changes, the history's
//! bounds, and the reference agent reporting while it prints.

use std::time::Duration;

use futures_util::StreamExt as _;
use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use printworks_agent::run::{RunOptions, run};
use tokio_util::sync::CancellationToken;

use super::agent::WITHIN;
use super::gcode;
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter};

fn printing(progress: f32) -> Value {
    json!({
        "state": "printing",
        "heaters": [
            {"name": "tool0", "actual": 209.6, "target": 210.0},
            {"name": "bed", "actual": 59.8, "target": 60.0},
        ],
        "job_id": null,
        "progress": progress,
        "firmware_version": "Marlin 2.1.2",
        "message": null,
    })
}

async fn report(printer: &TestPrinter, status: &Value) -> StatusCode {
    printer
        .client()
        .post(format!("{}/printer/v1/status", printer.printer_url))
        .json(status)
        .send()
        .await
        .unwrap()
        .status()
}

async fn read(app: &TestApp, token: &str, printer: Uuid) -> crate::helpers::Answer {
    app.call(
        Method::GET,
        &format!("/relay/v1/printers/{printer}/status"),
        Some(token),
        None,
    )
    .await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_reports_its_status_and_those_who_may_see_it_read_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-STATUS").await;
    // Never reported, never connected.
    let none = read(&app, &token, printer.id).await.expect(StatusCode::OK);
    assert_eq!(none.body["connected"], false);
    assert_eq!(none.body["status"], Value::Null);

    assert_eq!(
        report(&printer, &printing(12.5)).await,
        StatusCode::NO_CONTENT
    );
    let seen = read(&app, &token, printer.id).await.expect(StatusCode::OK);
    assert_eq!(seen.body["status"]["state"], "printing");
    assert_eq!(seen.body["status"]["progress"], 12.5);
    assert_eq!(seen.body["status"]["heaters"][0]["name"], "tool0");
    assert!(seen.body["reported_at"].is_string());

    // Everyone who may see the printer reads it; a member or guest it is not shared with
    // and an outsider get 404, as for the printer itself.
    let member_token = app.access_token(&w.member, ALL_SCOPES).await;
    read(&app, &member_token, printer.id)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.share_printer(printer.id, &[w.member.id]).await;
    read(&app, &member_token, printer.id)
        .await
        .expect(StatusCode::OK);
    let guest_token = app.access_token(&w.guest, ALL_SCOPES).await;
    read(&app, &guest_token, printer.id)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.share_printer(printer.id, &[w.guest.id]).await;
    read(&app, &guest_token, printer.id)
        .await
        .expect(StatusCode::OK);
    let outsider_token = app.access_token(&w.outsider, ALL_SCOPES).await;
    read(&app, &outsider_token, printer.id)
        .await
        .expect(StatusCode::NOT_FOUND);

    // Out of bounds: refused with the reason, nothing kept.
    for bad in [
        json!({"state": "melting"}),
        json!({"state": "idle", "progress": 101}),
        json!({"state": "idle", "heaters": [{"name": "tool0", "actual": 9000, "target": null}]}),
        json!({"state": "idle", "heaters": [{"name": "tool 0", "actual": 20, "target": null}]}),
        json!({"state": "idle", "message": "x".repeat(201)}),
        json!({"state": "idle", "heaters": (0..17).map(|i| json!({"name": format!("h{i}"), "actual": 20, "target": null})).collect::<Vec<_>>()}),
    ] {
        let status = report(&printer, &bad).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{bad}: {status}"
        );
    }
    // A job it names must be one of its own.
    app.clock.advance(time::Duration::seconds(1));
    let mut foreign = printing(20.0);
    foreign["job_id"] = json!(Uuid::new_v4());
    assert_eq!(
        report(&printer, &foreign).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let kept = read(&app, &token, printer.id).await.expect(StatusCode::OK);
    assert_eq!(kept.body["status"]["progress"], 12.5);
    let job = app
        .submit_gcode(&token, printer.id, "own.gcode", gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let mut own = printing(12.5);
    own["job_id"] = json!(job);
    assert_eq!(report(&printer, &own).await, StatusCode::NO_CONTENT);

    // More than twice a second: 429, whatever the state (a printer flapping between
    // states writes no more); half a second later it is taken.
    assert_eq!(
        report(&printer, &printing(13.0)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        report(&printer, &json!({"state": "paused"})).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(time::Duration::milliseconds(500));
    assert_eq!(
        report(&printer, &json!({"state": "paused"})).await,
        StatusCode::NO_CONTENT
    );
    // Without a client certificate there is no printer endpoint at all.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .post(format!("{}/printer/v1/status", printer.printer_url))
        .json(&printing(1.0))
        .send()
        .await;
    assert!(anonymous.is_err() || anonymous.unwrap().status().is_client_error());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_history_keeps_a_day_at_a_report_a_minute(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-HISTORY").await;
    let rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM printer_status_history WHERE printer_id = $1",
        )
        .bind(printer.id)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    // Reports every 2 s for a minute: one row (the same state), then one a minute.
    for i in 0..30 {
        assert_eq!(
            report(&printer, &printing(i as f32)).await,
            StatusCode::NO_CONTENT
        );
        app.clock.advance(time::Duration::seconds(2));
    }
    assert_eq!(rows().await, 1);
    app.clock.advance(time::Duration::seconds(1));
    report(&printer, &printing(50.0)).await;
    assert_eq!(rows().await, 2);
    // A change of state is kept, unless one was kept less than 5 s before.
    app.clock.advance(time::Duration::seconds(1));
    report(&printer, &json!({"state": "paused"})).await;
    app.clock.advance(time::Duration::seconds(1));
    report(&printer, &json!({"state": "printing"})).await;
    assert_eq!(rows().await, 2, "a row was kept a second before");
    app.clock.advance(time::Duration::seconds(5));
    report(&printer, &json!({"state": "paused"})).await;
    assert_eq!(rows().await, 3);
    // A day later, the next report leaves only itself.
    app.clock
        .advance(time::Duration::hours(24) + time::Duration::seconds(1));
    report(&printer, &json!({"state": "idle"})).await;
    assert_eq!(rows().await, 1);
}

/// Reads server-sent events from `res` until one named `status` arrives.
async fn next_status(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
) -> Value {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: status") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream goes on")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn status_changes_stream_to_whoever_follows_them_and_the_agent_reports_its_prints(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-LIVE").await;
    let res = app
        .client
        .get(app.url(&format!("/relay/v1/printers/{}/status/events", printer.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = res.bytes_stream();
    let mut buffer = String::new();
    // First the status now (none yet, not connected) …
    let first = next_status(&mut body, &mut buffer).await;
    assert_eq!(first["connected"], false);
    assert_eq!(first["status"], Value::Null);
    // … then the reference agent connects, reports idle, prints a job (printing, with
    // progress and hot heaters) and is idle again.
    // The app's clock runs as the agent's does (the relay refuses a report within half a
    // second of the last, by the app's clock).
    let ticking = tokio::spawn({
        let clock = app.clock.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                clock.advance(time::Duration::milliseconds(100));
            }
        }
    });
    // Printing for 3 s, so that the stream sees it whatever the machine's load.
    let dir = tempfile::tempdir().unwrap();
    let state = printer.state_dir(&dir.path().join("p"), &app.base);
    let stop = CancellationToken::new();
    let options = RunOptions {
        print_time: Duration::from_secs(3),
        print_steps: 6,
        max_backoff: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(60),
        octoprint: None,
    };
    tokio::spawn({
        let stop = stop.clone();
        async move { run(&state, options, stop).await }
    });
    let job = app
        .submit_gcode(&token, printer.id, "cube.gcode", gcode(20))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let mut states = Vec::new();
    let watched = tokio::time::timeout(WITHIN, async {
        loop {
            let e = next_status(&mut body, &mut buffer).await;
            let state = e["status"]["state"].as_str().unwrap_or("none").to_owned();
            if state == "printing" {
                assert_eq!(e["connected"], true);
                assert_eq!(e["status"]["job_id"], job.to_string());
                assert_eq!(e["status"]["heaters"][0]["target"], 210.0);
            }
            let done = state == "idle" && states.iter().any(|s| s == "printing");
            states.push(state);
            if done {
                break;
            }
        }
    })
    .await;
    assert!(watched.is_ok(), "the stream showed {states:?}");
    app.wait_for_job(&token, job, "completed", WITHIN).await;
    // An outsider cannot follow it.
    let outsider_token = app.access_token(&w.outsider, ALL_SCOPES).await;
    let res = app
        .client
        .get(app.url(&format!("/relay/v1/printers/{}/status/events", printer.id)))
        .bearer_auth(&outsider_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The agent stops: the printer is no longer connected.
    stop.cancel();
    let gone = tokio::time::timeout(WITHIN, async {
        loop {
            let e = next_status(&mut body, &mut buffer).await;
            if e["connected"] == false {
                assert_eq!(e["status"]["state"], "idle");
                break;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the stream never showed the printer gone");
    ticking.abort();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_caller_holds_a_bounded_number_of_status_streams(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-STREAMS").await;
    let open = |token: String| {
        let url = app.url(&format!("/relay/v1/printers/{}/status/events", printer.id));
        let client = app.client.clone();
        async move { client.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let mut held = Vec::new();
    for _ in 0..16 {
        let res = open(token.clone()).await;
        assert_eq!(res.status(), StatusCode::OK);
        held.push(res);
    }
    let refused = open(token.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:printworks:problem:too-many-streams");
    // Someone else is not held back by it.
    let member_token = app.access_token(&w.member, ALL_SCOPES).await;
    app.share_printer(printer.id, &[w.member.id]).await;
    assert_eq!(open(member_token).await.status(), StatusCode::OK);
    // A stream closed frees its place.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = open(token.clone()).await;
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
