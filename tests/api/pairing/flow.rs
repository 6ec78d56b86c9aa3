//! Pairing over real HTTP: request, claim, collect (again only within a short window);
//! the ten minutes counted by the injected clock to the second; single use; two claims
//! at once; who may claim.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::helpers::{OrgWorld, TestApp, printer_key_and_csr};

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_printer_pairs_and_collects_its_credentials_within_a_short_window(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (key, csr) = printer_key_and_csr();

    let req = app
        .request_pairing("SN-5001", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code = req.body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(req.body["expires_in"], 600);
    let (id, poll_token) = (
        req.body["request_id"].as_str().unwrap().to_owned(),
        req.body["poll_token"].as_str().unwrap().to_owned(),
    );
    // The code is stored only as a keyed digest; the poll token only as a hash.
    let stored: String = sqlx::query_scalar("SELECT to_jsonb(r)::text FROM pairing_requests r")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!stored.contains(&poll_token));
    let plain_hash = printworks_common::crypto::sha256(code.as_bytes());
    let code_hash: Vec<u8> = sqlx::query_scalar("SELECT code_hash FROM pairing_requests")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(code_hash, plain_hash.to_vec());

    // Waiting: 202, and a wrong poll token learns nothing.
    let waiting = app
        .poll(&id, &poll_token)
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(waiting.body["status"], "pending");
    app.poll(&id, "not-the-token")
        .await
        .expect(StatusCode::NOT_FOUND);

    // A member enters the code (spaces forgiven).
    let claimed = app
        .claim(
            &w.member_token,
            w.org,
            &format!("{} {}", &code[..3], &code[3..]),
            "Lab S5",
        )
        .await
        .expect(StatusCode::CREATED);
    let printer = Uuid::parse_str(claimed.body["printer_id"].as_str().unwrap()).unwrap();
    assert_eq!(claimed.body["repaired"], false);

    let got = app.poll(&id, &poll_token).await.expect(StatusCode::OK);
    assert_eq!(got.body["printer_id"], json!(printer));
    assert_eq!(got.body["organization_id"], json!(w.org));
    assert_eq!(got.body["organization_name"], "Fab Lab");
    assert_eq!(got.body["shared_secret"].as_str().unwrap().len(), 43);
    let printer_url = got.body["printer_url"].as_str().unwrap();
    assert_eq!(
        printer_url,
        format!("https://{}", app.printer_addr.unwrap())
    );

    // The certificate: issued by the CA, for the printer's own key, naming the printer,
    // for client authentication only, 90 days.
    let (_, ca_pem) =
        x509_parser::pem::parse_x509_pem(got.body["ca_chain_pem"].as_str().unwrap().as_bytes())
            .unwrap();
    let (_, cert_pem) =
        x509_parser::pem::parse_x509_pem(got.body["certificate_pem"].as_str().unwrap().as_bytes())
            .unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_pem.contents).unwrap();
    let (_, cert) = X509Certificate::from_der(&cert_pem.contents).unwrap();
    assert!(ca.is_ca());
    assert!(!cert.is_ca());
    assert_eq!(cert.issuer(), ca.subject());
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        format!("[URI(\"urn:printworks:printer:{printer}\")]")
    );
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.client_auth && !eku.value.server_auth);
    let validity = cert.validity();
    assert_eq!(
        (validity.not_after.to_datetime() - validity.not_before.to_datetime()).whole_days(),
        90
    );
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let recorded: Uuid =
        sqlx::query_scalar("SELECT printer_id FROM printer_certificates WHERE serial = $1")
            .bind(&serial)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(recorded, printer);

    // The same poll token collects the same credentials again for five minutes (an
    // answer lost on the way); then the secrets are gone from the database, and a poll
    // is 410.
    let again = app.poll(&id, &poll_token).await.expect(StatusCode::OK);
    assert_eq!(again.body, got.body);
    app.clock.advance(time::Duration::seconds(301));
    app.poll(&id, &poll_token).await.expect(StatusCode::GONE);
    let leftover: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT credentials_sealed FROM pairing_requests")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(leftover, None);
    let secret = got.body["shared_secret"].as_str().unwrap();
    let secret_row: String = sqlx::query_scalar("SELECT to_jsonb(s)::text FROM printer_secrets s")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        !secret_row.contains(secret),
        "the shared secret is sealed at rest"
    );

    // The printer is in the organization, claimed by the member, and the claim audited.
    let listed = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{}/printers/{printer}", w.org),
            Some(&w.member_token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed.body["serial"], "SN-5001");
    assert_eq!(listed.body["claimed_by"], json!(w.member.id));
    let audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT outcome, actor_id FROM audit_events WHERE action = 'printer.claim' AND organization_id = $1",
    )
    .bind(w.org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audited,
        vec![("success".to_owned(), w.member.id.to_string())]
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_code_dies_at_the_600th_second_and_works_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (_, csr) = printer_key_and_csr();
    let early = app
        .request_pairing("SN-1", &csr)
        .await
        .expect(StatusCode::CREATED);
    let late = app
        .request_pairing("SN-2", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code = |a: &crate::helpers::Answer| a.body["code"].as_str().unwrap().to_owned();

    app.clock.advance(time::Duration::seconds(599));
    // Access tokens live ten minutes too: a fresh one, as the person's app would get.
    let token = app.access_token(&w.admin, crate::helpers::ORG_SCOPES).await;
    app.claim(&token, w.org, &code(&early), "Early")
        .await
        .expect(StatusCode::CREATED);
    app.clock.advance(time::Duration::seconds(1));
    let expired = app
        .claim(&token, w.org, &code(&late), "Late")
        .await
        .expect(StatusCode::NOT_FOUND);
    // Used: the same answer as expired, and as a code nobody was given.
    let used = app
        .claim(&token, w.org, &code(&early), "Again")
        .await
        .expect(StatusCode::NOT_FOUND);
    let unknown_code = if code(&early) == "000000" {
        "000001"
    } else {
        "000000"
    };
    let unknown = app
        .claim(&token, w.org, unknown_code, "Nobody")
        .await
        .expect(StatusCode::NOT_FOUND);
    assert_eq!(
        expired.body["type"],
        "urn:printworks:problem:pairing-code-not-found"
    );
    for other in [&used, &unknown] {
        for field in ["type", "title", "detail", "status"] {
            assert_eq!(other.body[field], expired.body[field], "{field}");
        }
    }
    // The late printer learns its request is gone.
    app.poll(
        late.body["request_id"].as_str().unwrap(),
        late.body["poll_token"].as_str().unwrap(),
    )
    .await
    .expect(StatusCode::GONE);
    let printers: i64 = sqlx::query_scalar("SELECT count(*) FROM printers")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(printers, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_people_claiming_one_code_at_once_one_wins(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    for round in 0..5 {
        let (_, csr) = printer_key_and_csr();
        let req = app
            .request_pairing(&format!("SN-race-{round}"), &csr)
            .await
            .expect(StatusCode::CREATED);
        let code = req.body["code"].as_str().unwrap();
        // Two organizations race for the same printer.
        let (a, b) = tokio::join!(
            app.claim(&w.admin_token, w.org, code, "Mine"),
            app.claim(&w.outsider_token, w.other_org, code, "No, mine"),
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::NOT_FOUND],
            "round {round}"
        );
        // Each lost race is a miss for the address (both sides come from 127.0.0.1);
        // this test is about the race, not the throttle, which has its own.
        sqlx::query("DELETE FROM attempt_throttle")
            .execute(&app.db)
            .await
            .unwrap();
    }
    let printers: i64 = sqlx::query_scalar("SELECT count(*) FROM printers")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(printers, 5);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn only_admins_and_members_of_the_organization_with_the_scope_claim(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (_, csr) = printer_key_and_csr();
    let req = app
        .request_pairing("SN-7", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code = req.body["code"].as_str().unwrap();
    let body = json!({"organization_id": w.org, "code": code, "name": "S7"});

    app.call(Method::POST, "/pairing/v1/claims", None, Some(&body))
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let read_only = app
        .access_token(&w.admin, "printer.read organization.write")
        .await;
    let res = app
        .call(
            Method::POST,
            "/pairing/v1/claims",
            Some(&read_only),
            Some(&body),
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:insufficient-scope"
    );
    app.call(
        Method::POST,
        "/pairing/v1/claims",
        Some(&w.guest_token),
        Some(&body),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    // Into an organization one does not belong to: as if it did not exist.
    app.call(
        Method::POST,
        "/pairing/v1/claims",
        Some(&w.outsider_token),
        Some(&body),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    // Bad input.
    for bad in [
        json!({"organization_id": w.org, "code": "12345", "name": "S7"}),
        json!({"organization_id": w.org, "code": "abcdef", "name": "S7"}),
        json!({"organization_id": w.org, "code": code, "name": ""}),
        json!({"organization_id": w.org, "code": code, "name": "x".repeat(101)}),
    ] {
        app.call(
            Method::POST,
            "/pairing/v1/claims",
            Some(&w.member_token),
            Some(&bad),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    // None of that used the code up.
    app.call(
        Method::POST,
        "/pairing/v1/claims",
        Some(&w.member_token),
        Some(&body),
    )
    .await
    .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pairing_the_same_printer_again_keeps_it_only_when_it_proves_its_secret(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let first = app.pair_printer(&w.admin_token, w.org, "SN-42").await;
    // With a proof of its shared secret: the same printer, new credentials.
    let again = app.repair_printer(&w.admin_token, &first).await;
    assert_eq!(first.id, again.id);
    let certs: Vec<(bool, Option<String>)> = sqlx::query_as(
        "SELECT revoked_at IS NOT NULL, revoked_reason FROM printer_certificates WHERE printer_id = $1 ORDER BY issued_at, revoked_at NULLS LAST",
    )
    .bind(first.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs.iter().filter(|c| c.0).count(), 1);
    assert!(certs.iter().any(|c| c.1.as_deref() == Some("re-paired")));
    assert_ne!(first.shared_secret, again.shared_secret);
    // Without one (a factory reset, or another device using the serial): a new printer
    // replaces it, and the old one is gone with its credentials.
    let fresh = app.pair_printer(&w.admin_token, w.org, "SN-42").await;
    assert_ne!(fresh.id, first.id);
    let old_paired: bool =
        sqlx::query_scalar("SELECT unpaired_at IS NULL FROM printers WHERE id = $1")
            .bind(first.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!old_paired);
    // The same serial in another organization is another printer.
    let elsewhere = app
        .pair_printer(&w.outsider_token, w.other_org, "SN-42")
        .await;
    assert_ne!(elsewhere.id, fresh.id);
}
