//! The printer endpoint's resources: one live event stream per printer, connections
//! bounded per certificate and in all, handshakes under way bounded per address, wake-ups that cost one query per printer, and
//! work a printer was told of that wakes nobody again at every sweep.

use std::time::Duration;

use printworks::ServiceSet;
use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter};
use crate::relay::{Events, gcode};
use crate::tls;

const WAIT: Duration = Duration::from_secs(10);

async fn events(p: &TestPrinter) -> Events {
    Events::new(
        p.client()
            .get(format!("{}/printer/v1/events", p.printer_url))
            .send()
            .await
            .unwrap(),
    )
}

/// `printworks_printer_event_collects_total` from `/metrics`.
async fn collects(app: &TestApp) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("printworks_printer_event_collects_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no collect counter in {text}"))
}

async fn identity_status(app: &TestApp, p: &TestPrinter) -> Option<(tls::Conn, u16)> {
    let config = tls::client_config(&p.ca_pem, Some((&p.certificate_pem, &p.key_pem)));
    let mut conn = tls::connect(app.printer_addr.unwrap(), config).await.ok()?;
    let (status, _) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .ok()?;
    Some((conn, status))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_second_event_stream_takes_the_printer_over_and_the_first_gets_nothing_more(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-TWICE").await;
    let mut first = events(&printer).await;
    assert_eq!(first.next(WAIT).await.unwrap().0, "settings");
    // The same certificate (a copy of the printer's key, say) opens a second stream.
    let mut second = events(&printer).await;
    assert_eq!(second.next(WAIT).await.unwrap().0, "settings");
    assert!(first.ends_within(WAIT).await, "the older stream ends");
    let job = app
        .submit_gcode(&token, printer.id, "once.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let (name, data) = second.next(WAIT).await.unwrap();
    assert_eq!((name.as_str(), data["id"].clone()), ("job", json!(job)));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_certificate_cannot_hold_unbounded_connections(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-MANY").await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let (conn, status) = identity_status(&app, &printer).await.unwrap();
        assert_eq!(status, 200);
        held.push(conn);
    }
    let (_, status) = identity_status(&app, &printer).await.unwrap();
    assert_eq!(status, 429);
    // One closes: there is room again.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if identity_status(&app, &printer).await.map(|(_, s)| s) == Some(200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_printer_endpoint_holds_no_more_connections_than_its_limit(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.printer_max_connections = 2;
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let a = app.pair_printer(&w.admin_token, w.org, "SN-A").await;
    let b = app.pair_printer(&w.admin_token, w.org, "SN-B").await;
    let _one = identity_status(&app, &a).await.unwrap();
    let _two = identity_status(&app, &b).await.unwrap();
    assert_eq!((_one.1, _two.1), (200, 200));
    // The third is closed before its handshake.
    assert!(identity_status(&app, &a).await.is_none());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_address_cannot_hold_the_endpoint_with_handshakes_it_never_finishes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-HELLO").await;
    let addr = app.printer_addr.unwrap();
    // Sockets from one address that never say hello.
    let mut silent = Vec::new();
    for _ in 0..printworks_relay::endpoint::MAX_HANDSHAKES_PER_ADDRESS {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A printer from that address is closed before its handshake...
    assert!(identity_status(&app, &printer).await.is_none());
    // ...one from another address is served.
    let config = tls::client_config(
        &printer.ca_pem,
        Some((&printer.certificate_pem, &printer.key_pem)),
    );
    let mut conn = tls::connect_from([127, 0, 0, 2].into(), addr, config)
        .await
        .unwrap();
    let (status, _) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // Once the silent ones go, the address may connect again.
    drop(silent);
    let deadline = tokio::time::Instant::now() + WAIT;
    while identity_status(&app, &printer).await.map(|(_, s)| s) != Some(200) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_wake_up_costs_one_query_per_printer_however_many_streams_it_opened(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        // No sweep during the test: only the job's hint wakes anyone.
        s.relay.dispatch_sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-WAKE").await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = events(&printer).await;
        assert_eq!(s.next(WAIT).await.unwrap().0, "settings");
        streams.push(s);
    }
    let mut live = streams.pop().unwrap();
    for mut old in streams {
        assert!(old.ends_within(WAIT).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = collects(&app).await;
    app.submit_gcode(&token, printer.id, "one.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(live.next(WAIT).await.unwrap().0, "job");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(collects(&app).await - before, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn settings_and_aborts_a_printer_does_not_answer_do_not_wake_it_at_every_sweep(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.dispatch_sweep_interval = Duration::from_millis(100);
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-MUTE").await;
    app.call(
        Method::PUT,
        &format!(
            "/org/v1/organizations/{}/printers/{}/security",
            w.org, printer.id
        ),
        Some(&token),
        Some(&json!({"firewall_enabled": true, "pin": null})),
    )
    .await
    .expect(StatusCode::OK);
    // A printer that never confirms its settings nor acknowledges an abort.
    let mut stream = events(&printer).await;
    let (name, data) = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), data["version"].clone()),
        ("settings", json!(1))
    );
    let job = app
        .submit_gcode(&token, printer.id, "stop.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED)
        .id();
    assert_eq!(stream.next(WAIT).await.unwrap().0, "job");
    app.call(
        Method::POST,
        &format!("/relay/v1/jobs/{job}/abort"),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(stream.next(WAIT).await.unwrap().0, "abort");
    // An abort asked for on another replica, whose clock runs ahead of this one's.
    let second = app
        .submit_gcode(&token, printer.id, "ahead.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED)
        .id();
    assert_eq!(stream.next(WAIT).await.unwrap().0, "job");
    sqlx::query("UPDATE print_jobs SET abort_requested_at = $2 WHERE id = $1")
        .bind(second)
        .bind(app.now() + time::Duration::hours(1))
        .execute(&app.db)
        .await
        .unwrap();
    let (name, data) = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), data["id"].clone()),
        ("abort", json!(second))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = collects(&app).await;
    // Fifteen sweeps later, nobody has looked again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(collects(&app).await, before);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_pause_whose_hint_was_lost_arrives_with_the_sweep_and_wakes_nobody_after(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.relay.dispatch_sweep_interval = Duration::from_millis(100);
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-HUSH").await;
    let mut stream = events(&printer).await;
    assert_eq!(stream.next(WAIT).await.unwrap().0, "settings");
    let job = app
        .submit_gcode(&token, printer.id, "hold.gcode", gcode(3))
        .await
        .expect(StatusCode::CREATED)
        .id();
    assert_eq!(stream.next(WAIT).await.unwrap().0, "job");
    // A pause asked for while the hint went nowhere (the trigger that sends it is
    // bypassed, as for a notification lost with a connection).
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE print_jobs SET pause_requested = true, hold_changed_at = $2 WHERE id = $1")
        .bind(job)
        .bind(app.now())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (name, data) = stream.next(WAIT).await.unwrap();
    assert_eq!((name.as_str(), data["id"].clone()), ("pause", json!(job)));
    // The printer never answers it: sweeps do not wake the stream again for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = collects(&app).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(collects(&app).await, before);
}
