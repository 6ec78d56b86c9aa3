//! The agent as a bridge to a real OctoPrint ([`peer`]): a printer OctoPrint drives
//! pairs with its identity, prints what it is sent (progress seen on the way), carries
//! abort, pause and resume to OctoPrint, reports its live status from OctoPrint, says
//! which settings it cannot apply, never lets a file over the printer's limits reach
//! OctoPrint, fails a job when OctoPrint goes down or the firmware errs and takes new
//! jobs when it is back, and follows a print again after the agent restarted.

mod peer;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use printworks_agent::octoprint::OctoPrint as Client;
use printworks_agent::run::{Bridge, RunOptions, run};
use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::binary::printworks;
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter};
use crate::relay::agent::WITHIN;
use peer::{OctoPrint, octoprint};

/// A print of `tenths` tenths of a second on the virtual printer (`G4` dwells sleep
/// their full time; progress moves with the file position).
fn dwell(tenths: usize) -> Vec<u8> {
    let mut g = String::from("M104 S200\nM140 S55\nG28\nG90\n");
    for i in 0..tenths {
        g.push_str(&format!("G4 P100 ; step {i}\n"));
    }
    g.push_str("M104 S0\nM140 S0\n");
    g.into_bytes()
}

/// The app's clock runs as the agent's does (the relay takes one status report per
/// printer each half second, by the app's clock).
fn tick(app: &TestApp) -> tokio::task::JoinHandle<()> {
    let clock = app.clock.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.advance(time::Duration::milliseconds(100));
        }
    })
}

/// A child process of the test (the real binary), killed if the test ends early.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Killed {
    /// Waits (at most [`WITHIN`]) for it to exit; whether it exited with success.
    async fn exited(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.success();
            }
            assert!(tokio::time::Instant::now() < deadline, "it did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn bridge(op: &OctoPrint, dir: &std::path::Path) -> Bridge {
    Bridge {
        poll: Duration::from_millis(200),
        unreachable_for: Duration::from_secs(2),
        ..Bridge::new(Client::new(&op.url, &op.key_file(dir)).unwrap())
    }
}

/// The in-process agent for `printer`, bridged to `op`, until the token is cancelled.
fn start_bridge(
    app: &TestApp,
    printer: &TestPrinter,
    op: &OctoPrint,
    dir: &std::path::Path,
) -> CancellationToken {
    let state = printer.state_dir(&dir.join("p"), &app.base);
    let options = RunOptions {
        max_backoff: Duration::from_millis(500),
        octoprint: Some(bridge(op, dir)),
        ..RunOptions::default()
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { run(&state, options, s).await });
    stop
}

async fn job(app: &TestApp, token: &str, job: Uuid) -> Value {
    app.call(
        Method::GET,
        &format!("/relay/v1/jobs/{job}"),
        Some(token),
        None,
    )
    .await
    .expect(StatusCode::OK)
    .body
}

async fn act(app: &TestApp, token: &str, job: Uuid, action: &str) -> StatusCode {
    app.call(
        Method::POST,
        &format!("/relay/v1/jobs/{job}/{action}"),
        Some(token),
        None,
    )
    .await
    .status
}

/// Waits (at most [`WITHIN`]) for the printer's live status to satisfy `ok`; returns it.
async fn wait_status(
    app: &TestApp,
    token: &str,
    printer: Uuid,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = app
            .call(
                Method::GET,
                &format!("/relay/v1/printers/{printer}/status"),
                Some(token),
                None,
            )
            .await
            .expect(StatusCode::OK)
            .body;
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status never matched: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_is(s: &Value, want: &str) -> bool {
    s["status"]["state"] == want
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_behind_octoprint_pairs_prints_and_reports(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let _clock = tick(&app);
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let op = octoprint().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("printer");
    let key_file = op.key_file(dir.path());

    // Pair with the real binary: the identity comes from OctoPrint.
    let mut pair = printworks(dir.path())
        .env("PRINTWORKS_LOG", "warn")
        .args([
            "printer",
            "pair",
            "--server",
            &app.base,
            "--octoprint",
            &op.url,
        ])
        .arg("--octoprint-key-file")
        .arg(&key_file)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = pair.stdout.take().unwrap();
    let mut pair = Killed(pair);
    let (tx, rx) = std::sync::mpsc::channel();
    // The code, then the rest of what it says (read, so that it can say it).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = tokio::task::spawn_blocking(move || rx.recv_timeout(WITHIN).unwrap())
        .await
        .unwrap();
    let code: String = first
        .strip_prefix("Pairing code: ")
        .unwrap_or_else(|| panic!("no pairing code: {first:?}"))
        .chars()
        .take(7)
        .filter(char::is_ascii_digit)
        .collect();
    let claimed = app
        .claim(&token, w.org, &code, "Fab lab Prusa")
        .await
        .expect(StatusCode::CREATED);
    let printer: Uuid = claimed.body["printer_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pair.exited().await);
    let seen = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{}/printers/{printer}", w.org),
            Some(&token),
            None,
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(seen["model"], "Generic RepRap Printer");
    let serial = seen["serial"].as_str().unwrap();
    assert!(
        serial.starts_with("OCTO-") && serial.len() == 21,
        "{serial}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("octoprint-serial")).unwrap(),
        serial,
        "the serial is kept, so pairing again gives the same"
    );

    // Run it with the real binary.
    let log = dir.path().join("agent.log");
    let agent = printworks(dir.path())
        .env("PRINTWORKS_LOG", "debug")
        .args(["printer", "run", "--octoprint", &op.url])
        .arg("--octoprint-key-file")
        .arg(&key_file)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Killed(agent);

    // Its live status is OctoPrint's: idle, its heaters, the firmware it reported.
    let idle = wait_status(&app, &token, printer, |s| {
        state_is(s, "idle") && s["status"]["firmware_version"].is_string()
    })
    .await;
    assert_eq!(idle["connected"], true);
    let heaters: Vec<&str> = idle["status"]["heaters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(
        heaters.contains(&"tool0") && heaters.contains(&"bed"),
        "{idle}"
    );
    assert!(
        idle["status"]["firmware_version"]
            .as_str()
            .unwrap()
            .contains("Marlin"),
        "{idle}"
    );

    // A job: uploaded into printworks/, printed by OctoPrint's virtual printer, with
    // progress on the way, completed; its file removed afterwards.
    let id = app
        .submit_gcode(&token, printer, "bracket v2.gcode", dwell(60))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let mut progress = Vec::new();
    let mut status_while_printing = None;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let j = job(&app, &token, id).await;
        if j["status"] == "printing" {
            if let Some(p) = j["progress"].as_f64() {
                progress.push(p);
            }
            if status_while_printing.is_none() {
                status_while_printing =
                    Some(wait_status(&app, &token, printer, |s| state_is(s, "printing")).await);
            }
        }
        if j["status"] == "completed" {
            assert_eq!(j["progress"], 100.0);
            break;
        }
        assert_ne!(j["status"], "failed", "{j}");
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        progress.iter().any(|p| *p > 0.0 && *p < 100.0),
        "progress seen on the way: {progress:?}"
    );
    let printing = status_while_printing.unwrap();
    assert_eq!(printing["status"]["job_id"], id.to_string(), "{printing}");
    let file = format!("bracketv2-{}.gcode", id.simple());
    assert!(
        op.log().contains(&format!(
            "Print job done - origin: local, path: printworks/{file}"
        )),
        "OctoPrint printed it"
    );
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !op.printworks_files().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the file stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The settings push: confirmed, and what OctoPrint cannot express said so.
    let put = app
        .call(
            Method::PUT,
            &format!(
                "/org/v1/organizations/{}/printers/{printer}/security",
                w.org
            ),
            Some(&token),
            Some(&json!({"firewall_enabled": true, "pin": "482913"})),
        )
        .await
        .expect(StatusCode::OK);
    let version = put.body["version"].clone();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let security = loop {
        let s = app
            .call(
                Method::GET,
                &format!(
                    "/org/v1/organizations/{}/printers/{printer}/security",
                    w.org
                ),
                Some(&token),
                None,
            )
            .await
            .expect(StatusCode::OK)
            .body;
        if s["confirmed_version"] == version {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(security["not_applied"], json!(["firewall", "pin"]));

    let pid = agent.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(agent.exited().await);
    // The key is in no log line, even at debug.
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("printing through OctoPrint"), "{written}");
    assert!(!written.contains(&op.key));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pause_resume_and_abort_reach_octoprint(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Each wish is told apart by when it was made, by the app's clock.
    let _clock = tick(&app);
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let op = octoprint().await;
    let printer = app.pair_printer(&token, w.org, "SN-OCTO-HOLD").await;
    let dir = tempfile::tempdir().unwrap();
    let stop = start_bridge(&app, &printer, &op, dir.path());
    let id = app
        .submit_gcode(&token, printer.id, "long.gcode", dwell(600))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, id, "printing", WITHIN).await;
    op.wait_state("Printing").await;

    // Paused from Printworks: OctoPrint holds it.
    assert_eq!(act(&app, &token, id, "pause").await, StatusCode::OK);
    op.wait_state("Paused").await;
    let paused = app.wait_for_job(&token, id, "paused", WITHIN).await;
    let held_at = paused["progress"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(op.state().await, "Paused");
    assert_eq!(
        job(&app, &token, id).await["progress"].as_f64().unwrap(),
        held_at
    );

    // Resumed from Printworks.
    assert_eq!(act(&app, &token, id, "resume").await, StatusCode::OK);
    op.wait_state("Printing").await;
    app.wait_for_job(&token, id, "printing", WITHIN).await;

    // Paused at OctoPrint itself: Printworks sees it, and may resume it.
    let (status, _) = op
        .api(
            Method::POST,
            "/api/job",
            Some(json!({"command": "pause", "action": "pause"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_job(&token, id, "paused", WITHIN).await;
    assert_eq!(act(&app, &token, id, "resume").await, StatusCode::OK);
    op.wait_state("Printing").await;
    app.wait_for_job(&token, id, "printing", WITHIN).await;

    // Aborted from Printworks: OctoPrint cancels the print.
    assert_eq!(act(&app, &token, id, "abort").await, StatusCode::OK);
    op.wait_state("Operational").await;
    app.wait_for_job(&token, id, "aborted", WITHIN).await;
    let log = op.log();
    let file = format!("printworks/long-{}.gcode", id.simple());
    for what in ["paused", "resumed", "cancelled"] {
        assert!(
            log.contains(&format!("Print job {what} - origin: local, path: {file}")),
            "OctoPrint's log has the job {what}"
        );
    }
    assert!(!log.contains(&format!("Print job done - origin: local, path: {file}")));

    // Cancelled at OctoPrint by someone there: aborted, and said so.
    let other = app
        .submit_gcode(&token, printer.id, "other.gcode", dwell(600))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, other, "printing", WITHIN).await;
    op.wait_state("Printing").await;
    let (status, _) = op
        .api(Method::POST, "/api/job", Some(json!({"command": "cancel"})))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let aborted = app.wait_for_job(&token, other, "aborted", WITHIN).await;
    assert_eq!(aborted["message"], "cancelled in OctoPrint");
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_file_over_the_printers_limits_never_reaches_octoprint(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let op = octoprint().await;
    // This printer has no heated bed; the relay, which knows only its model, lets a
    // bed temperature pass that the agent, reading OctoPrint's profile, refuses.
    let (status, _) = op
        .api(
            Method::PATCH,
            "/api/printerprofiles/_default",
            Some(json!({"profile": {"heatedBed": false}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let printer = app.pair_printer(&token, w.org, "SN-OCTO-LIMITS").await;
    let dir = tempfile::tempdir().unwrap();
    let stop = start_bridge(&app, &printer, &op, dir.path());
    // Over the model's limits: refused when it is sent.
    app.submit_gcode(
        &token,
        printer.id,
        "hot.gcode",
        b"M104 S300\nG28\n".to_vec(),
    )
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
    // Over this printer's: refused by the agent.
    let id = app
        .submit_gcode(
            &token,
            printer.id,
            "bed.gcode",
            b"M140 S60\nG28\nG1 X10 F600\n".to_vec(),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    let failed = app.wait_for_job(&token, id, "failed", WITHIN).await;
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains("refused before OctoPrint"), "{message}");
    assert!(message.contains("line 1"), "{message}");
    assert!(op.printworks_files().await.is_empty());
    assert!(!op.log().contains(&id.simple().to_string()));
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn octoprint_down_or_a_firmware_error_fails_the_job_then_jobs_flow_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let _clock = tick(&app);
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let mut op = octoprint().await;
    let printer = app.pair_printer(&token, w.org, "SN-OCTO-DOWN").await;
    let dir = tempfile::tempdir().unwrap();
    let stop = start_bridge(&app, &printer, &op, dir.path());
    wait_status(&app, &token, printer.id, |s| state_is(s, "idle")).await;

    // OctoPrint stops in the middle of a print.
    let first = app
        .submit_gcode(&token, printer.id, "first.gcode", dwell(600))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, first, "printing", WITHIN).await;
    op.stop().await;
    let failed = app.wait_for_job(&token, first, "failed", WITHIN).await;
    // Unreachable, or (caught in the act of stopping) without its printer.
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("OctoPrint is not reachable")
            || message.contains("OctoPrint lost the printer"),
        "{failed}"
    );
    // The agent keeps its Printworks connection and says the printer is offline.
    let offline = wait_status(&app, &token, printer.id, |s| state_is(s, "offline")).await;
    assert_eq!(offline["connected"], true);

    // Back: the printer is idle again and new jobs flow.
    op.start().await;
    wait_status(&app, &token, printer.id, |s| state_is(s, "idle")).await;

    // The firmware fails in the middle of a print: the job fails with its words.
    let second = app
        .submit_gcode(&token, printer.id, "second.gcode", dwell(600))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, second, "printing", WITHIN).await;
    op.wait_state("Printing").await;
    let (status, _) = op
        .api(
            Method::POST,
            "/api/printer/command",
            Some(json!({"command": "!!DEBUG:trigger_fatal_error_marlin"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let failed = app.wait_for_job(&token, second, "failed", WITHIN).await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("Thermal Runaway"),
        "{failed}"
    );
    wait_status(&app, &token, printer.id, |s| {
        state_is(s, "error") || state_is(s, "offline")
    })
    .await;

    // Reconnected in OctoPrint: the next job prints.
    let (status, _) = op
        .api(
            Method::POST,
            "/api/connection",
            Some(json!({"command": "connect", "port": "VIRTUAL", "baudrate": 115_200})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    op.wait_state("Operational").await;
    let third = app
        .submit_gcode(&token, printer.id, "third.gcode", dwell(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, third, "completed", WITHIN).await;
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_print_goes_on_while_the_agent_is_away_and_is_followed_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let op = octoprint().await;
    let printer = app.pair_printer(&token, w.org, "SN-OCTO-AWAY").await;
    let dir = tempfile::tempdir().unwrap();
    let stop = start_bridge(&app, &printer, &op, dir.path());
    let id = app
        .submit_gcode(&token, printer.id, "away.gcode", dwell(150))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.wait_for_job(&token, id, "printing", WITHIN).await;
    op.wait_state("Printing").await;
    // The agent stops (its connection to Printworks with it); OctoPrint prints on.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(op.state().await, "Printing");
    let before = job(&app, &token, id).await;
    assert_eq!(before["status"], "printing");
    // Started again on the same state directory, it follows the same print to its end.
    let stop = start_bridge(&app, &printer, &op, dir.path());
    app.wait_for_job(&token, id, "completed", WITHIN).await;
    let file = format!("printworks/away-{}.gcode", id.simple());
    assert_eq!(
        op.log()
            .matches(&format!("Print job started - origin: local, path: {file}"))
            .count(),
        1
    );
    stop.cancel();
}
