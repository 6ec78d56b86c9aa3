//! PostgreSQL restarted under load: a cluster of its own (deploy/embedded-postgres.sh,
//! the one `make run` uses), stopped and started again while requests keep coming.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::Server;
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};
use crate::relay::gcode;

/// `deploy/embedded-postgres.sh <command>` for the cluster under `dir`.
fn run_cluster_script(dir: &std::path::Path, command: &str) -> std::process::Output {
    std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/embedded-postgres.sh"
    ))
    .arg(command)
    .env("PRINTWORKS_DATA_DIR", dir)
    .output()
    .unwrap()
}

/// [`run_cluster_script`], which must succeed; what it printed (the URL, for `start`).
async fn cluster(dir: &std::path::Path, command: &str) -> String {
    let (dir, command) = (dir.to_path_buf(), command.to_owned());
    let out = tokio::task::spawn_blocking(move || run_cluster_script(&dir, &command))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "embedded-postgres.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn postgresql_restarted_under_load_answers_503_recovers_and_keeps_every_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let url = cluster(dir.path(), "start").await;
    /// Stops the cluster however the test ends.
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            run_cluster_script(&self.0, "stop");
        }
    }
    let _stop = Stop(dir.path().to_path_buf());
    // No DATABASE_URL: the server finds the cluster's URL in its data directory, as with
    // `make run`. A request waits at most 2 s for a connection.
    let server = Server::start(
        dir.path(),
        "all",
        &[("PRINTWORKS_DB_CONNECT_TIMEOUT", "2s")],
    );
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let app = Arc::new(TestApp::attach(&server.base(), db, dir.path()));
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-PG").await;

    // The load: reads, and now and then a job sent.
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (app, running, token) = (app.clone(), running.clone(), token.clone());
        tokio::spawn(async move {
            let mut answers: Vec<(bool, StatusCode)> = Vec::new();
            let mut accepted: Vec<Uuid> = Vec::new();
            let mut i = 0u32;
            while running.load(Ordering::SeqCst) {
                i += 1;
                if i.is_multiple_of(5) {
                    let a = app
                        .submit_gcode(&token, printer.id, &format!("part-{i}.gcode"), gcode(50))
                        .await;
                    if a.status == StatusCode::CREATED {
                        accepted.push(a.id());
                    }
                    answers.push((true, a.status));
                } else {
                    let a = app
                        .call(Method::GET, "/org/v1/organizations", Some(&token), None)
                        .await;
                    answers.push((false, a.status));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answers, accepted)
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster(dir.path(), "stop").await;
    app.wait_for_readyz(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster(dir.path(), "start").await;
    app.wait_for_readyz(StatusCode::OK, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::SeqCst);
    let (answers, accepted) = load.await.unwrap();

    // Nothing but answers and "unavailable, retry": never a 500.
    let odd: Vec<_> = answers
        .iter()
        .filter(|(_, s)| {
            ![
                StatusCode::OK,
                StatusCode::CREATED,
                StatusCode::SERVICE_UNAVAILABLE,
            ]
            .contains(s)
        })
        .collect();
    assert!(odd.is_empty(), "{odd:?}");
    assert!(
        answers
            .iter()
            .any(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "no request met the outage"
    );
    // Recovered without a restart: the last reads and sends succeeded.
    let last_read = answers.iter().rev().find(|(job, _)| !job).unwrap();
    let last_send = answers.iter().rev().find(|(job, _)| *job).unwrap();
    assert_eq!(
        (last_read.1, last_send.1),
        (StatusCode::OK, StatusCode::CREATED)
    );
    // Every job that was accepted is there, waiting for its printer.
    assert!(accepted.len() >= 5, "{}", accepted.len());
    for job in accepted {
        let a = app
            .call(
                Method::GET,
                &format!("/relay/v1/jobs/{job}"),
                Some(&token),
                None,
            )
            .await
            .expect(StatusCode::OK);
        assert_eq!(a.body["status"], "queued", "{}", a.body);
    }
    drop(server);
}
