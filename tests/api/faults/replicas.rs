//! Two replicas behind the printer load balancer: one killed, or stopped with SIGTERM,
//! in the middle of the work.

use std::time::Duration;

use futures_util::StreamExt as _;
use printworks_agent::run::Events;
use printworks_common::db::MIGRATOR;
use printworks_proto::PrinterEvent;
use reqwest::StatusCode;
use sqlx::{ConnectOptions as _, PgPool};

use super::Server;
use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter};
use crate::proxy::{Proxy, ProxyOptions};
use crate::relay::agent::{WITHIN, start_agent};
use crate::relay::{gcode, history_states, resumed_at, sha256_hex};

/// A deployment made through the API (in-process, then stopped): an organization, a
/// token of its admin, a printer paired to reach the printer endpoint through the
/// balancer. What the replicas share is kept in `dir`.
struct Fleet {
    dir: tempfile::TempDir,
    balancer: Proxy,
    token: String,
    printer: TestPrinter,
    database_url: String,
    /// The issuer of the tokens: the same for every replica.
    public_url: String,
    _world: OrgWorld,
}

impl Fleet {
    async fn new(pool: &PgPool, bytes_per_second: usize) -> Self {
        let balancer = Proxy::start(
            &[],
            ProxyOptions {
                bytes_per_second: Some(bytes_per_second),
                ..ProxyOptions::default()
            },
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (shared, printer_url) = (dir.path().to_path_buf(), balancer.url());
        let app = TestApp::spawn_with(pool.clone(), &printworks::ServiceSet::all(), move |s| {
            s.data_dir = shared;
            s.printers.printer_url = Some(url::Url::parse(&printer_url).unwrap());
        })
        .await;
        // The tokens' issuer: every replica says the same (a deployment's public URL).
        let public_url = app.base.clone();
        let world = OrgWorld::new(&app).await;
        let token = app.access_token(&world.admin, ALL_SCOPES).await;
        let printer = app.pair_printer(&token, world.org, "SN-FLEET").await;
        assert_eq!(printer.printer_url, balancer.url());
        app.stop().await.unwrap();
        Self {
            dir,
            balancer,
            token,
            printer,
            database_url: pool.connect_options().to_url_lossy().to_string(),
            public_url,
            _world: world,
        }
    }

    /// A replica running `services`.
    fn replica(&self, services: &str) -> Server {
        let printer_url = self.balancer.url();
        Server::start(
            self.dir.path(),
            services,
            &[
                ("DATABASE_URL", &self.database_url),
                ("PRINTWORKS_PRINTER_URL", &printer_url),
                ("PRINTWORKS_PUBLIC_URL", &self.public_url),
            ],
        )
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_relay_killed_mid_download_hands_its_printer_to_another_that_delivers_the_job_once(
    pool: PgPool,
) {
    // 2 MiB/s towards the printer: the 24 MB job takes some 12 s to download, more than
    // the kernel's buffers hold when the replica dies.
    let fleet = Fleet::new(&pool, 2 * 1024 * 1024).await;
    let mut a = fleet.replica("all");
    let b = fleet.replica("relay");
    fleet
        .balancer
        .set_backends(&[a.printer.unwrap(), b.printer.unwrap()]);
    let api_a = TestApp::attach(&a.base(), pool.clone(), fleet.dir.path());
    let api_b = TestApp::attach(&b.base(), pool.clone(), fleet.dir.path());

    let agent_dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&api_a, &fleet.printer, &agent_dir.path().join("p"));
    let g = gcode(1_000_000);
    let job = api_a
        .submit_gcode(&fleet.token, fleet.printer.id, "big.gcode", g.clone())
        .await
        .expect(StatusCode::CREATED)
        .id();
    // The printer, connected to A (the balancer's first choice), is downloading it.
    api_a
        .wait_for_job(&fleet.token, job, "downloading", WITHIN)
        .await;
    a.kill();

    // B takes the printer: the job is downloaded from where it stopped, checked and
    // printed, once.
    let done = api_b
        .wait_for_job(&fleet.token, job, "completed", WITHIN)
        .await;
    let states = history_states(&done);
    assert_eq!(
        states.iter().filter(|s| **s == "printing").count(),
        1,
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&"completed"));
    assert!(
        resumed_at(&done).is_some(),
        "the download did not resume after the kill: {done}"
    );
    assert_eq!(done["sha256"], sha256_hex(&g));
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sigterm_finishes_requests_in_flight_tells_printers_to_reconnect_and_strands_no_job(
    pool: PgPool,
) {
    let fleet = Fleet::new(&pool, 64 * 1024 * 1024).await;
    let a = fleet.replica("all");
    let b = fleet.replica("all");
    fleet
        .balancer
        .set_backends(&[a.printer.unwrap(), b.printer.unwrap()]);
    let api_a = TestApp::attach(&a.base(), pool.clone(), fleet.dir.path());
    let api_b = TestApp::attach(&b.base(), pool.clone(), fleet.dir.path());

    // The printer's event stream, read as the printer: it is on A.
    let client = fleet.printer.client();
    let mut events = Events::open(&client, &fleet.balancer.url()).await.unwrap();
    let first = events.next(Duration::from_secs(30)).await.unwrap();
    assert!(
        matches!(first, Some(PrinterEvent::Settings(_))),
        "{first:?}"
    );

    // An upload to A, half sent when the stop comes.
    let g = gcode(20_000);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(pieces(rx));
    let upload = {
        let (client, url, token, len) = (
            crate::helpers::client(),
            format!(
                "{}/relay/v1/printers/{}/jobs?name=draining.gcode",
                api_a.base, fleet.printer.id
            ),
            fleet.token.clone(),
            g.len(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "text/x-gcode")
                .header("content-length", len)
                .body(body)
                .send()
                .await
        })
    };
    let half = g.len() / 2;
    tx.send(Ok(g[..half].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.terminate();

    // The printer hears `reconnect`, then its stream ends.
    let mut seen = Vec::new();
    loop {
        match events.next(Duration::from_secs(30)).await {
            Ok(Some(PrinterEvent::Heartbeat)) => {}
            Ok(Some(e)) => seen.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(seen.last(), Some(&PrinterEvent::Reconnect), "{seen:?}");

    // The upload in flight finishes and is accepted.
    tx.send(Ok(g[half..].to_vec())).await.unwrap();
    drop(tx);
    let res = upload.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let job: serde_json::Value = res.json().await.unwrap();
    let job = job["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap();

    // A exits cleanly, within its grace.
    let (status, logs) = tokio::time::timeout(Duration::from_secs(30), a.wait())
        .await
        .expect("A stops within its grace");
    assert!(status.success(), "{status}: {}", logs.join("\n"));

    // The printer reconnects (to B) and the job accepted while A drained is printed.
    let agent_dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&api_b, &fleet.printer, &agent_dir.path().join("p"));
    let done = api_b
        .wait_for_job(&fleet.token, job, "completed", WITHIN)
        .await;
    assert_eq!(done["sha256"], sha256_hex(&g));
    stop.cancel();
    drop(b);
}

/// The receiving end of `rx` as a stream, for a request body sent piece by piece.
fn pieces(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
        .boxed()
}
