//! The reference agent printing jobs: end to end with the real binary; two relay
//! replicas on one database (submitted to one, printed through the other); a printer
//! offline when the job is sent; a download cut in the middle and resumed with `Range`.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use printworks_agent::run::{RunOptions, local_jobs, run};
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{gcode, resumed_at, sha256_hex};
use crate::binary::printworks;
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter};
use crate::proxy::{Proxy, ProxyOptions};

pub const WITHIN: Duration = Duration::from_secs(60);

fn quick() -> RunOptions {
    RunOptions {
        print_time: Duration::from_millis(200),
        print_steps: 4,
        max_backoff: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(60),
        octoprint: None,
    }
}

/// Runs the in-process agent for `printer` until the returned token is cancelled.
pub fn start_agent(
    app: &TestApp,
    printer: &TestPrinter,
    dir: &std::path::Path,
) -> CancellationToken {
    let state = printer.state_dir(dir, &app.base);
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { run(&state, quick(), s).await });
    stop
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn end_to_end_with_the_real_binary(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("printer");

    // Pair: the agent shows a code, the admin enters it.
    let mut pair = printworks(dir.path())
        .env("PRINTWORKS_LOG", "warn")
        .args([
            "printer",
            "pair",
            "--server",
            &app.base,
            "--model",
            "Ultimaker S5",
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = pair.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read the code, then keep reading until the agent is done talking.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first =
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)).unwrap())
            .await
            .unwrap();
    let code: String = first["Pairing code: ".len()..]
        .chars()
        .take(7)
        .filter(char::is_ascii_digit)
        .collect();
    let printer = app
        .claim(&token, w.org, &code, "Workshop S5")
        .await
        .expect(StatusCode::CREATED)
        .body["printer_id"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    assert!(
        tokio::task::spawn_blocking(move || pair.wait().unwrap())
            .await
            .unwrap()
            .success()
    );

    // Run it, send a job, see it completed.
    let mut agent = printworks(dir.path())
        .env("PRINTWORKS_LOG", "info")
        .args(["printer", "run", "--print-seconds", "1", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = gcode(2_000);
    let job = app
        .submit_gcode(&token, printer, "bracket.gcode", g.clone())
        .await
        .expect(StatusCode::CREATED)
        .id();
    let done = app.wait_for_job(&token, job, "completed", WITHIN).await;
    assert_eq!(done["sha256"], sha256_hex(&g));
    assert_eq!(done["progress"], 100.0);
    // SIGTERM stops it cleanly.
    let pid = agent.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || agent.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_job_sent_to_one_replica_is_printed_through_another(pool: PgPool) {
    let a = TestApp::spawn(pool.clone()).await;
    // The second replica: the same database, master key, CA and blob store.
    let shared = a.data_dir.path().to_path_buf();
    let b = TestApp::spawn_with(
        pool,
        &printworks::ServiceSet::from_list(&[printworks::Service::Relay]),
        move |s| {
            s.data_dir = shared.clone();
        },
    )
    .await;
    let w = OrgWorld::new(&a).await;
    let token = a.access_token(&w.admin, ALL_SCOPES).await;
    let mut printer = a.pair_printer(&token, w.org, "SN-R").await;
    // The printer holds its connection to replica B.
    printer.printer_url = format!("https://{}", b.printer_addr.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&a, &printer, &dir.path().join("p"));
    let g = gcode(500);
    let job = a
        .submit_gcode(&token, printer.id, "across.gcode", g)
        .await
        .expect(StatusCode::CREATED)
        .id();
    a.wait_for_job(&token, job, "completed", WITHIN).await;
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_offline_when_the_job_was_sent_prints_it_when_it_connects(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-O").await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(
            app.submit_gcode(
                &token,
                printer.id,
                &format!("part-{i}.gcode"),
                gcode(100 + i),
            )
            .await
            .expect(StatusCode::CREATED)
            .id(),
        );
    }
    let queued = app.wait_for_job(&token, jobs[0], "queued", WITHIN).await;
    assert_eq!(queued["status"], "queued");
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("p");
    let stop = start_agent(&app, &printer, &state_dir);
    for job in &jobs {
        app.wait_for_job(&token, *job, "completed", WITHIN).await;
    }
    // In the order sent.
    let finished: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM print_jobs WHERE printer_id = $1 ORDER BY finished_at, seq",
    )
    .bind(printer.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(finished, jobs);
    let local = local_jobs(&printworks_agent::StateDir::new(&state_dir)).unwrap();
    assert_eq!(local.len(), 3, "each job once on the printer");
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_download_cut_in_the_middle_resumes_with_range(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let mut printer = app.pair_printer(&token, w.org, "SN-C").await;
    // The network fails once in the middle of a download.
    let proxy = Proxy::start(
        &[app.printer_addr.unwrap()],
        ProxyOptions {
            cut_first_after: Some(200 * 1024),
            ..ProxyOptions::default()
        },
    )
    .await;
    printer.printer_url = proxy.url();
    let g = gcode(40_000); // about 1 MB
    let job = app
        .submit_gcode(&token, printer.id, "long.gcode", g.clone())
        .await
        .expect(StatusCode::CREATED)
        .id();
    let dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&app, &printer, &dir.path().join("p"));
    let done = app.wait_for_job(&token, job, "completed", WITHIN).await;
    assert!(proxy.was_cut(), "the connection was never cut");
    let at = resumed_at(&done).expect("no resumed download");
    assert!(at > 0 && at < g.len(), "{at}");
    // The printer checked the digest before printing: it completed, so it had exactly
    // the file that was sent.
    assert_eq!(done["sha256"], sha256_hex(&g));
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_that_loses_the_network_mid_print_finishes_and_reports_later(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let mut printer = app.pair_printer(&token, w.org, "SN-N").await;
    let proxy = Proxy::start(&[app.printer_addr.unwrap()], ProxyOptions::default()).await;
    printer.printer_url = proxy.url();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("p");
    let state = printer.state_dir(&state_dir, &app.base);
    let stop = CancellationToken::new();
    let options = RunOptions {
        print_time: Duration::from_secs(3),
        ..quick()
    };
    tokio::spawn({
        let stop = stop.clone();
        async move { run(&state, options, stop).await }
    });
    let job = app
        .submit_gcode(&token, printer.id, "long-print.gcode", gcode(50))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, job, "printing", WITHIN).await;
    // The network goes: every connection of the printer is cut, none gets through.
    proxy.set_down(true);
    // The print goes on and finishes on the printer...
    let local = printworks_agent::StateDir::new(&state_dir);
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !local_jobs(&local)
        .unwrap()
        .iter()
        .any(|j| j.id == job && j.phase == printworks_agent::run::Phase::Done)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the print stopped with the network"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...while the cloud still thinks it is printing.
    let seen = app
        .call(
            reqwest::Method::GET,
            &format!("/relay/v1/jobs/{job}"),
            Some(&token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(seen.body["status"], "printing");
    // The network is back: the report arrives.
    proxy.set_down(false);
    app.wait_for_job(&token, job, "completed", WITHIN).await;
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_agent_stops_a_print_that_is_aborted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-X").await;
    let dir = tempfile::tempdir().unwrap();
    let state = printer.state_dir(&dir.path().join("p"), &app.base);
    let stop = CancellationToken::new();
    let options = RunOptions {
        print_time: Duration::from_secs(60),
        print_steps: 60,
        ..quick()
    };
    tokio::spawn({
        let stop = stop.clone();
        async move { run(&state, options, stop).await }
    });
    let job = app
        .submit_gcode(&token, printer.id, "abort-me.gcode", gcode(50))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let next = app
        .submit_gcode(&token, printer.id, "after.gcode", gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, job, "printing", WITHIN).await;
    app.call(
        reqwest::Method::POST,
        &format!("/relay/v1/jobs/{job}/abort"),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::OK);
    // The printer stops, says so, and goes on with the next job.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let acknowledged: bool = sqlx::query_scalar(
            "SELECT abort_acknowledged_at IS NOT NULL FROM print_jobs WHERE id = $1",
        )
        .bind(job)
        .fetch_one(&app.db)
        .await
        .unwrap();
        if acknowledged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the printer never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_for_job(&token, next, "printing", WITHIN).await;
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_print_is_paused_and_resumed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-HOLD").await;
    let dir = tempfile::tempdir().unwrap();
    let state = printer.state_dir(&dir.path().join("p"), &app.base);
    let stop = CancellationToken::new();
    let options = RunOptions {
        print_time: Duration::from_secs(4),
        print_steps: 20,
        ..quick()
    };
    tokio::spawn({
        let stop = stop.clone();
        async move { run(&state, options, stop).await }
    });
    let job = app
        .submit_gcode(&token, printer.id, "hold-me.gcode", gcode(50))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let act = |what: &'static str| {
        let token = token.clone();
        let app = &app;
        async move {
            app.call(
                reqwest::Method::POST,
                &format!("/relay/v1/jobs/{job}/{what}"),
                Some(&token),
                None,
            )
            .await
        }
    };
    app.wait_for_job(&token, job, "printing", WITHIN).await;
    // Not paused: nothing to resume.
    act("resume").await.expect(StatusCode::CONFLICT);
    act("pause").await.expect(StatusCode::OK);
    act("pause").await.expect(StatusCode::CONFLICT);
    // The printer holds the print and says so; its progress stands still meanwhile.
    app.wait_for_job(&token, job, "paused", WITHIN).await;
    let progress = |app: &TestApp| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, Option<f32>>("SELECT progress FROM print_jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let held_at = progress(&app).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(progress(&app).await, held_at);
    assert!(held_at.unwrap_or(100.0) < 100.0);
    act("resume").await.expect(StatusCode::OK);
    app.wait_for_job(&token, job, "completed", WITHIN).await;
    // The history tells the story, and both asks are audited.
    let history: Vec<String> = sqlx::query_scalar(
        "SELECT state || coalesce(' ' || message, '') FROM print_job_events WHERE job_id = $1 ORDER BY id",
    )
    .bind(job)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let at = |needle: &str| {
        history
            .iter()
            .position(|h| h.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {history:?}"))
    };
    assert!(at("pause asked by a person") < at("paused"));
    assert!(at("resume asked by a person") < at("completed"));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action IN ('job.pause', 'job.resume') AND target_id = $1",
    )
    .bind(job.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    // A finished job is neither paused nor resumed.
    act("pause").await.expect(StatusCode::CONFLICT);
    stop.cancel();
}
