//! Printer certificates on the printer endpoint, with a real rustls client: accepted
//! while valid; refused without a certificate or with one from another CA; a live
//! connection dropped within seconds of unpairing and refused thereafter; renewal over
//! mutual TLS, and with the shared secret after expiry (single-use challenges, wrong
//! proofs refused and audited).

use std::time::Duration;

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ORG_SCOPES, OrgWorld, TestApp, TestPrinter, printer_key_and_csr};
use crate::tls;

async fn connect(app: &TestApp, p: &TestPrinter) -> tls::Conn {
    let config = tls::client_config(&p.ca_pem, Some((&p.certificate_pem, &p.key_pem)));
    tls::connect(app.printer_addr.unwrap(), config)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_endpoint_knows_printers_by_their_certificate_and_refuses_others(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-1").await;
    let addr = app.printer_addr.unwrap();

    let mut conn = connect(&app, &printer).await;
    let (status, body) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["printer_id"], json!(printer.id));
    assert_eq!(body["organization_id"], json!(w.org));
    // Keep-alive: a second request on the same connection.
    let (status, _) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // No certificate: the handshake fails (TLS 1.3 shows it at the first read).
    let anonymous = tls::client_config(&printer.ca_pem, None);
    assert!(
        tls::refused(addr, anonymous).await,
        "a connection without a client certificate was served"
    );

    // A certificate from another CA (with that CA's own chain): refused the same way.
    let now = app.now();
    let (other_ca_pem, other_ca_key) = printworks_pairing::PrinterCa::generate(now).unwrap();
    let other = printworks_pairing::PrinterCa::from_pem(&other_ca_pem, &other_ca_key).unwrap();
    let (key, _) = printer_key_and_csr();
    let forged = other
        .issue_printer(&key, printer.id, now, Duration::from_secs(86400))
        .unwrap();
    let config = tls::client_config(&printer.ca_pem, Some((&forged.pem, &key.serialize_pem())));
    assert!(
        tls::refused(addr, config).await,
        "a certificate of another CA was served"
    );

    // The endpoint's own certificate names the address the printer was told to use;
    // a client that expects another name refuses it.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let wrong_name = rustls::pki_types::ServerName::try_from("printworks.example.com").unwrap();
    let config = tls::client_config(
        &printer.ca_pem,
        Some((&printer.certificate_pem, &printer.key_pem)),
    );
    assert!(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(wrong_name, tcp)
            .await
            .is_err()
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unpairing_drops_the_live_connection_and_refuses_the_next(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.member_token, w.org, "SN-9").await;
    let mut live = connect(&app, &printer).await;
    let (status, _) = tls::request(&mut live, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // A guest cannot unpair; the member who claimed it can.
    let path = format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id);
    app.call(Method::DELETE, &path, Some(&w.guest_token), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::DELETE, &path, Some(&w.member_token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::DELETE, &path, Some(&w.member_token), None)
        .await
        .expect(StatusCode::NOT_FOUND);

    // Dropped within seconds, by the revocation notice (not the 30-second sweep).
    assert!(
        tls::closed_within(&mut live, Duration::from_secs(10)).await,
        "the live connection stayed open"
    );
    let mut next = connect(&app, &printer).await;
    let (status, body) = tls::request(&mut next, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        body["type"],
        "urn:printworks:problem:printer-certificate-refused"
    );
    assert!(body["request_id"].is_string(), "{body}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'printer.unpair' AND actor_id = $1",
    )
    .bind(w.member.id.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // Gone from the organization's list.
    let list = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{}/printers", w.org),
            Some(&w.admin_token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.body["items"], json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn re_pairing_drops_the_connection_of_the_old_certificate(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let old = app.pair_printer(&w.admin_token, w.org, "SN-3").await;
    let mut live = connect(&app, &old).await;
    assert_eq!(
        tls::request(&mut live, "GET", "/printer/v1/identity", None)
            .await
            .unwrap()
            .0,
        200
    );
    let new = app.pair_printer(&w.admin_token, w.org, "SN-3").await;
    assert!(tls::closed_within(&mut live, Duration::from_secs(10)).await);
    let mut conn = connect(&app, &new).await;
    assert_eq!(
        tls::request(&mut conn, "GET", "/printer/v1/identity", None)
            .await
            .unwrap()
            .0,
        200
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn certificates_renew_over_tls_and_with_the_secret_after_expiry(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-R").await;

    // While valid: over the printer endpoint, with a fresh key.
    let (key, csr) = printer_key_and_csr();
    let mut conn = connect(&app, &printer).await;
    let (status, body) = tls::request(
        &mut conn,
        "POST",
        "/printer/v1/certificate",
        Some(&json!({"csr_pem": csr})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let renewed = TestPrinter {
        key_pem: key.serialize_pem(),
        certificate_pem: body["certificate_pem"].as_str().unwrap().to_owned(),
        ..clone_printer(&printer)
    };
    let mut conn = connect(&app, &renewed).await;
    assert_eq!(
        tls::request(&mut conn, "GET", "/printer/v1/identity", None)
            .await
            .unwrap()
            .0,
        200
    );
    // A bad CSR over TLS is refused with a reason.
    let (status, body) = tls::request(
        &mut conn,
        "POST",
        "/printer/v1/certificate",
        Some(&json!({"csr_pem": "nope"})),
    )
    .await
    .unwrap();
    assert_eq!((status, body["status"].clone()), (422, json!(422)));

    // 91 days later (by the clock, which the endpoint's TLS reads too) every
    // certificate has expired: refused.
    app.clock.advance(time::Duration::days(91));
    let config = tls::client_config(
        &renewed.ca_pem,
        Some((&renewed.certificate_pem, &renewed.key_pem)),
    );
    assert!(tls::refused(app.printer_addr.unwrap(), config).await);

    // With the shared secret: a challenge, and an HMAC proof bound to the CSR.
    let base = format!("/pairing/v1/printers/{}", printer.id);
    let (key, csr) = printer_key_and_csr();
    let der = x509_parser::pem::parse_x509_pem(csr.as_bytes())
        .unwrap()
        .1
        .contents;
    let proof = |secret: &str, c: &str, der: &[u8]| {
        printworks_agent::crypto::renewal_proof(secret, printer.id, c, der)
    };

    // Wrong secret: refused and audited; the challenge is used up all the same.
    let c1 = challenge(&app, &base).await;
    renew(
        &app,
        &base,
        c1.clone(),
        proof("not-the-secret", &c1, &der),
        csr.clone(),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    renew(
        &app,
        &base,
        c1.clone(),
        proof(&printer.shared_secret, &c1, &der),
        csr.clone(),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    // A proof for another CSR does not carry over.
    let c2 = challenge(&app, &base).await;
    let (_, other_csr) = printer_key_and_csr();
    renew(
        &app,
        &base,
        c2.clone(),
        proof(&printer.shared_secret, &c2, &der),
        other_csr,
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    // Expired challenge.
    let c3 = challenge(&app, &base).await;
    app.clock.advance(time::Duration::minutes(6));
    renew(
        &app,
        &base,
        c3.clone(),
        proof(&printer.shared_secret, &c3, &der),
        csr.clone(),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    // The right proof.
    let c4 = challenge(&app, &base).await;
    let res = renew(
        &app,
        &base,
        c4.clone(),
        proof(&printer.shared_secret, &c4, &der),
        csr.clone(),
    )
    .await
    .expect(StatusCode::CREATED);
    let fresh = TestPrinter {
        key_pem: key.serialize_pem(),
        certificate_pem: res.body["certificate_pem"].as_str().unwrap().to_owned(),
        ..clone_printer(&printer)
    };
    let mut conn = connect(&app, &fresh).await;
    let (status, body): (u16, Value) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let outcomes: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, record::json -> 'details' ->> 'reason' FROM audit_events
         WHERE action = 'printer.certificate_renew' ORDER BY occurred_at, chain_index",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let failures = outcomes.iter().filter(|(o, _)| o == "failure").count();
    let successes = outcomes.iter().filter(|(o, _)| o == "success").count();
    assert_eq!((failures, successes), (4, 2), "{outcomes:?}");

    // Unpaired: no challenges for it any more. (Months later: a fresh sign-in.)
    let admin = app.relogin(&w.admin).await;
    let token = app.access_token(&admin, ORG_SCOPES).await;
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(Method::POST, &format!("{base}/challenge"), None, None)
        .await
        .expect(StatusCode::NOT_FOUND);
}

fn clone_printer(p: &TestPrinter) -> TestPrinter {
    p.clone()
}

async fn challenge(app: &TestApp, base: &str) -> String {
    app.call(Method::POST, &format!("{base}/challenge"), None, None)
        .await
        .expect(StatusCode::CREATED)
        .body["challenge"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn renew(
    app: &TestApp,
    base: &str,
    challenge: String,
    proof: String,
    csr: String,
) -> crate::helpers::Answer {
    let body = json!({"challenge": challenge, "proof": proof, "csr_pem": csr});
    app.call(
        Method::POST,
        &format!("{base}/certificate"),
        None,
        Some(&body),
    )
    .await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_renewed_certificate_supersedes_the_old_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-S").await;
    let addr = app.printer_addr.unwrap();
    let config =
        |p: &TestPrinter| tls::client_config(&p.ca_pem, Some((&p.certificate_pem, &p.key_pem)));

    // Over mutual TLS: once a minute at most; the old certificate lives ten more minutes.
    let (key, csr) = printer_key_and_csr();
    let mut conn = connect(&app, &printer).await;
    let body = json!({"csr_pem": csr});
    let (status, renewed) = tls::request(&mut conn, "POST", "/printer/v1/certificate", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 201, "{renewed}");
    let (status, again) = tls::request(&mut conn, "POST", "/printer/v1/certificate", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 429, "{again}");
    let new = TestPrinter {
        key_pem: key.serialize_pem(),
        certificate_pem: renewed["certificate_pem"].as_str().unwrap().to_owned(),
        ..clone_printer(&printer)
    };
    app.clock.advance(time::Duration::minutes(9));
    assert!(
        !tls::refused(addr, config(&printer)).await,
        "the old certificate retired too soon"
    );
    app.clock.advance(time::Duration::minutes(2));
    assert!(
        tls::refused(addr, config(&printer)).await,
        "the old certificate lives on"
    );
    assert!(!tls::refused(addr, config(&new)).await);

    // With the shared secret: every earlier certificate is revoked at once, and a live
    // connection that holds one is dropped.
    let mut live = connect(&app, &new).await;
    assert_eq!(
        tls::request(&mut live, "GET", "/printer/v1/identity", None)
            .await
            .unwrap()
            .0,
        200
    );
    let base = format!("/pairing/v1/printers/{}", printer.id);
    let (key, csr) = printer_key_and_csr();
    let der = x509_parser::pem::parse_x509_pem(csr.as_bytes())
        .unwrap()
        .1
        .contents;
    let c = challenge(&app, &base).await;
    let proof =
        printworks_agent::crypto::renewal_proof(&printer.shared_secret, printer.id, &c, &der);
    let res = renew(&app, &base, c, proof, csr)
        .await
        .expect(StatusCode::CREATED);
    assert!(tls::closed_within(&mut live, Duration::from_secs(10)).await);
    assert!(tls::refused(addr, config(&new)).await);
    let newest = TestPrinter {
        key_pem: key.serialize_pem(),
        certificate_pem: res.body["certificate_pem"].as_str().unwrap().to_owned(),
        ..clone_printer(&printer)
    };
    assert!(!tls::refused(addr, config(&newest)).await);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn secrets_are_not_cached_and_a_demoted_claimer_cannot_unpair(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (_, csr) = printer_key_and_csr();
    let res = app
        .client
        .post(app.url("/pairing/v1/requests"))
        .json(&json!({"serial": "SN-C", "model": "S5", "firmware_version": "1", "csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");

    let printer = app.pair_printer(&w.member_token, w.org, "SN-D").await;
    app.set_role(&w.admin_token, w.org, w.member.id, "guest")
        .await
        .expect(StatusCode::OK);
    let path = format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id);
    // Demoted to guest, the claimer no longer even sees the printer (it was not shared
    // with them).
    app.call(Method::DELETE, &path, Some(&w.member_token), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::DELETE, &path, Some(&w.admin_token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
}
