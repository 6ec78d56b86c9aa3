//! What a stranger can send: pairing requests with bad CSRs and bad fields, oversized
//! bodies, and guesses at codes — slowed per person, organization and address, and
//! audited.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{OrgWorld, TestApp, printer_key_and_csr};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/api/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_certificate_signing_requests_are_refused_and_nothing_is_kept(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (_, good) = printer_key_and_csr();
    let p384 = csr_with(&rcgen::PKCS_ECDSA_P384_SHA384);
    // One bit of the signature flipped.
    let tampered = {
        let (_, pem) = x509_parser::pem::parse_x509_pem(good.as_bytes()).unwrap();
        let mut der = pem.contents.clone();
        let at = der.len() - 3;
        der[at] ^= 0x10;
        use base64::Engine as _;
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("not PEM", "hello printer".to_owned(), "PEM"),
        (
            "a certificate, not a request",
            good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
            "PEM",
        ),
        ("trailing garbage", format!("{good}and then some"), "PEM"),
        ("two requests", format!("{good}{good}"), "PEM"),
        ("bad signature", tampered, "signature"),
        ("RSA 1024", fixture("rsa1024.csr.pem"), "RSA of 1024 bits"),
        ("secp256k1", fixture("secp256k1.csr.pem"), "another curve"),
        (
            "Ed448",
            fixture("ed448.csr.pem"),
            "ECDSA P-256, Ed25519 or RSA",
        ),
        ("P-384", p384, "another curve"),
        (
            "oversized",
            format!("{good}{}", " ".repeat(9000)),
            "at most",
        ),
        ("empty", String::new(), "PEM"),
    ];
    for (what, csr, says) in cases {
        let res = app
            .request_pairing("SN-1", &csr)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        let detail = res.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{what}: {detail}");
    }
    // RSA of 2048 bits and Ed25519 are fine.
    app.request_pairing("SN-rsa", &fixture("rsa2048.csr.pem"))
        .await
        .expect(StatusCode::CREATED);
    let ed = csr_with(&rcgen::PKCS_ED25519);
    app.request_pairing("SN-ed", &ed)
        .await
        .expect(StatusCode::CREATED);

    // Other fields.
    for (serial, model, firmware) in [
        ("", "S5", "1"),
        ("x".repeat(65).as_str(), "S5", "1"),
        ("SN\u{1}", "S5", "1"),
        ("SN-ü", "S5", "1"),
        ("SN", "", "1"),
        ("SN", "S5", ""),
    ] {
        let body = json!({"serial": serial, "model": model, "firmware_version": firmware, "csr_pem": good});
        app.call(Method::POST, "/pairing/v1/requests", None, Some(&body))
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    for body in [
        json!({}),
        json!({"serial": "SN"}),
        json!([1, 2]),
        json!("csr"),
    ] {
        let res = app
            .call(Method::POST, "/pairing/v1/requests", None, Some(&body))
            .await;
        assert!(res.status.is_client_error(), "{body}: {}", res.status);
    }
    // A body past the route's limit: 413, before anything is parsed.
    let huge = json!({"serial": "SN", "model": "S5", "firmware_version": "1", "csr_pem": "A".repeat(20_000)});
    app.call(Method::POST, "/pairing/v1/requests", None, Some(&huge))
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);

    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM pairing_requests")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(kept, 2, "only the two good requests");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn guessing_codes_is_slowed_per_person_organization_and_address_and_audited(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (_, csr) = printer_key_and_csr();
    let real = app
        .request_pairing("SN-target", &csr)
        .await
        .expect(StatusCode::CREATED);
    let real_code = real.body["code"].as_str().unwrap().to_owned();
    let wrong = |i: u32| {
        let mut c = format!(
            "{:06}",
            (real_code.parse::<u32>().unwrap() + 1 + i) % 1_000_000
        );
        if c == real_code {
            c = "999999".into();
        }
        c
    };

    // Five tries at once, then each try must wait 1 s, 2 s, 4 s … after the previous —
    // even with the right code, which is not looked at while waiting.
    for i in 0..5 {
        let res = app
            .claim(&w.member_token, w.org, &wrong(i), "x")
            .await
            .expect(StatusCode::NOT_FOUND);
        assert_eq!(
            res.body["type"],
            "urn:printworks:problem:pairing-code-not-found"
        );
    }
    let slowed = app
        .claim(&w.member_token, w.org, &real_code, "x")
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(slowed.body["type"], "urn:printworks:problem:rate-limited");
    // The organization is slowed too: another of its people waits as well.
    app.claim(&w.admin_token, w.org, &real_code, "x")
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    // And the address: someone of another organization, from the same address, waits.
    app.claim(&w.outsider_token, w.other_org, &real_code, "x")
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);

    // The wait passes (by the clock); the right code still works, the printer intact.
    app.clock.advance(time::Duration::seconds(2));
    app.claim(&w.member_token, w.org, &real_code, "Target")
        .await
        .expect(StatusCode::CREATED);

    let failures: Vec<(String, String)> = sqlx::query_as(
        "SELECT record::json -> 'details' ->> 'reason', actor_id FROM audit_events
         WHERE action = 'printer.claim' AND outcome = 'failure' ORDER BY occurred_at, chain_index",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let misses = failures.iter().filter(|(r, _)| r == "no_such_code").count();
    let throttled = failures.iter().filter(|(r, _)| r == "throttled").count();
    assert_eq!((misses, throttled), (5, 3), "{failures:?}");
    assert!(
        failures
            .iter()
            .filter(|(r, _)| r == "no_such_code")
            .all(|(_, actor)| *actor == w.member.id.to_string())
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_address_cannot_fill_the_code_space(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (_, csr) = printer_key_and_csr();
    for i in 0..20 {
        app.request_pairing(&format!("SN-{i}"), &csr)
            .await
            .expect(StatusCode::CREATED);
    }
    let res = app
        .request_pairing("SN-21", &csr)
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert!(res.body["detail"].is_string());
    // Expired requests give their place back.
    app.clock.advance(time::Duration::seconds(600));
    app.request_pairing("SN-22", &csr)
        .await
        .expect(StatusCode::CREATED);
}

/// A certificate signing request for a fresh key of `alg`, without names.
fn csr_with(alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}
