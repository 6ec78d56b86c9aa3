//! Printers and pairing: takeover by re-pairing, guessing codes with many identities,
//! filling the waiting list from one network, renewal races and renewal denial, jobs of
//! a removed printer, and a lost poll answer.

use std::time::Duration;

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgPool};
use uuid::Uuid;

use printworks::ServiceSet;

use crate::helpers::{
    ALL_SCOPES, OrgWorld, TestApp, TestPrinter, csr_der, printer_key_and_csr,
    trusting_loopback_proxy,
};
use crate::tls;

async fn connect(app: &TestApp, p: &TestPrinter) -> tls::Conn {
    let config = tls::client_config(&p.ca_pem, Some((&p.certificate_pem, &p.key_pem)));
    tls::connect(app.printer_addr.unwrap(), config)
        .await
        .unwrap()
}

async fn job_state(app: &TestApp, job: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, message FROM print_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_member_cannot_take_over_a_printer_of_the_organization_by_pairing_its_serial(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let admin_jobs = app.access_token(&w.admin, ALL_SCOPES).await;
    let member = app.access_token(&w.member, ALL_SCOPES).await;
    let printer = app.pair_printer(&admin_jobs, w.org, "SN-VICTIM").await;
    // Someone else's file waits in the printer's queue.
    let job = app
        .submit_gcode(
            &admin_jobs,
            printer.id,
            "secret.gcode",
            crate::relay::gcode(5),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();

    // The member's own device asks to be paired under the victim's serial, and the
    // member enters its code.
    let (_, csr) = printer_key_and_csr();
    let req = app
        .request_pairing("SN-VICTIM", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code = req.body["code"].as_str().unwrap();
    let refused = app
        .claim(&member, w.org, code, "mine now")
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.body["type"], "urn:printworks:problem:forbidden");
    // Nothing of the printer changed hands: it is paired, its certificate works, its
    // secret still renews, and the job still waits for it.
    let mut conn = connect(&app, &printer).await;
    let (status, body) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["printer_id"], json!(printer.id));
    assert_eq!(job_state(&app, job).await.0, "queued");
    let poll = app
        .poll(
            req.body["request_id"].as_str().unwrap(),
            req.body["poll_token"].as_str().unwrap(),
        )
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(poll.body["status"], "pending");

    // The admin, who may remove it, pairs that device: it is a new printer, and the old
    // one's queued job fails instead of going to a device that proved nothing.
    let claimed = app
        .claim(&admin_jobs, w.org, code, "replacement")
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(claimed.body["repaired"], false);
    assert_eq!(claimed.body["replaced_printer_id"], json!(printer.id));
    assert_ne!(claimed.body["printer_id"], json!(printer.id));
    let (state, message) = job_state(&app, job).await;
    assert_eq!(
        (state.as_str(), message.as_deref()),
        ("failed", Some("the printer was replaced by a re-pairing"))
    );
    let new_id = Uuid::parse_str(claimed.body["printer_id"].as_str().unwrap()).unwrap();
    let handed: i64 = sqlx::query_scalar("SELECT count(*) FROM print_jobs WHERE printer_id = $1")
        .bind(new_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(handed, 0);
    // The old certificate no longer opens the printer endpoint.
    let mut conn = connect(&app, &printer).await;
    let (status, _) = tls::request(&mut conn, "GET", "/printer/v1/identity", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_guesser_spread_over_many_accounts_organizations_and_addresses_claims_nothing_once_the_budget_is_spent(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), trusting_loopback_proxy).await;
    let owner = OrgWorld::new(&app).await;
    let owner_token = app.access_token(&owner.admin, "printer.write").await;
    let (_, csr) = printer_key_and_csr();
    let victim = app
        .request_pairing("SN-TARGET-1", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code = victim.body["code"].as_str().unwrap().to_owned();
    let wrong = |n: u32| {
        let c = (code.parse::<u32>().unwrap() + 1 + n) % 1_000_000;
        format!("{c:06}")
    };

    // Eight accounts, each with its own organization, each guessing five times (the free
    // tries of every per-identity throttle) from addresses of its own: 40 wrong codes at
    // once, what the service-wide budget (80 in any ten minutes) lets through in one
    // burst, none of them slowed by any per-identity limit.
    let mut guess = 0;
    for a in 0..8 {
        let user = app.new_user(&format!("guesser{a}")).await;
        let org = app.new_org(&user, &format!("Guessers {a}")).await;
        let token = app.access_token(&user, "printer.write").await;
        for _ in 0..5 {
            let addr = format!("198.51.{}.{}", 100 + a, 1 + guess % 200);
            let body = json!({"organization_id": org, "code": wrong(guess), "name": "x"});
            app.call_from(
                Some(&addr),
                Method::POST,
                "/pairing/v1/claims",
                Some(&token),
                Some(&body),
            )
            .await
            .expect(StatusCode::NOT_FOUND);
            guess += 1;
        }
    }
    // The next guess is the right code, by a fresh account from a fresh address: without
    // the serial it is refused, and the printer still waits for its owner.
    let user = app.new_user("lucky").await;
    let org = app.new_org(&user, "Lucky").await;
    let token = app.access_token(&user, "printer.write").await;
    let body = json!({"organization_id": org, "code": code, "name": "stolen"});
    let refused = app
        .call_from(
            Some("203.0.113.200"),
            Method::POST,
            "/pairing/v1/claims",
            Some(&token),
            Some(&body),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.body["type"],
        "urn:printworks:problem:pairing-serial-required"
    );
    // Its owner, reading the serial beside the code, claims it.
    let body = json!({"organization_id": owner.org, "code": code, "name": "ours", "serial": "sn-target-1"});
    app.call(
        Method::POST,
        "/pairing/v1/claims",
        Some(&owner_token),
        Some(&body),
    )
    .await
    .expect(StatusCode::CREATED);

    // With the serial, wrong codes count against that printer, whoever sends them: after
    // five, the sixth waits, even from a new account and a new address.
    let (_, csr) = printer_key_and_csr();
    let second = app
        .request_pairing("SN-TARGET-2", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code2 = second.body["code"].as_str().unwrap().to_owned();
    for n in 0..6u32 {
        let user = app.new_user(&format!("serial{n}")).await;
        let org = app.new_org(&user, "Serial guessers").await;
        let token = app.access_token(&user, "printer.write").await;
        let c = format!("{:06}", (code2.parse::<u32>().unwrap() + 1 + n) % 1_000_000);
        let body = json!({"organization_id": org, "code": c, "name": "x", "serial": "SN-TARGET-2"});
        let expected = if n < 5 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        app.call_from(
            Some(&format!("192.0.2.{}", 10 + n)),
            Method::POST,
            "/pairing/v1/claims",
            Some(&token),
            Some(&body),
        )
        .await
        .expect(expected);
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_flood_from_one_network_cannot_stop_printers_elsewhere_from_pairing(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        trusting_loopback_proxy(s);
        s.printers.pairing_max_pending = 45;
        s.printers.pairing_max_pending_per_network = 20;
    })
    .await;
    let (_, csr) = printer_key_and_csr();
    let body = |serial: &str| json!({"serial": serial, "model": "Ultimaker S5", "firmware_version": "1", "csr_pem": csr});
    // Forty addresses of one /24, one request each: the network's share is 20.
    let mut accepted = 0;
    for i in 1..=40 {
        let res = app
            .call_from(
                Some(&format!("203.0.113.{i}")),
                Method::POST,
                "/pairing/v1/requests",
                None,
                Some(&body(&format!("FLOOD-{i}"))),
            )
            .await;
        match res.status {
            StatusCode::CREATED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}: {}", res.body),
        }
    }
    assert_eq!(accepted, 20);
    // The same flood over IPv6: one /48.
    for i in 1..=25 {
        let res = app
            .call_from(
                Some(&format!("2001:db8:77:{i:x}::1")),
                Method::POST,
                "/pairing/v1/requests",
                None,
                Some(&body(&format!("FLOOD6-{i}"))),
            )
            .await;
        assert!(
            matches!(
                res.status,
                StatusCode::CREATED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{}",
            res.body
        );
    }
    // A printer on another network still pairs.
    app.call_from(
        Some("198.51.100.7"),
        Method::POST,
        "/pairing/v1/requests",
        None,
        Some(&body("ELSEWHERE")),
    )
    .await
    .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn concurrent_renewals_over_tls_cannot_leave_a_printer_several_certificates(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-RACE").await;
    // Hold the organization's audit chain: every renewal stops at its audit record, after
    // it decided whether to issue, so all of them decide before any commits. (On
    // connections of their own: the application's pool is small.)
    let options = app.db.connect_options().as_ref().clone();
    let mut hold_conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut watch = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut hold = sqlx::Connection::begin(&mut hold_conn).await.unwrap();
    sqlx::query("SELECT 1 FROM audit_chains WHERE chain_id = $1 FOR UPDATE")
        .bind(w.org)
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut conn = connect(&app, &printer).await;
        tasks.push(tokio::spawn(async move {
            let (_, csr) = printer_key_and_csr();
            tls::request(
                &mut conn,
                "POST",
                "/printer/v1/certificate",
                Some(&json!({ "csr_pem": csr })),
            )
            .await
            .unwrap()
            .0
        }));
    }
    // Until all three wait on a lock (the audit chain, or the printer's row).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{waiting} waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hold.commit().await.unwrap();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 429, 429]);
    // One certificate lives on: the new one. The one that asked retires within minutes.
    let now = app.now();
    let long_lived: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM printer_certificates
         WHERE printer_id = $1 AND revoked_at IS NULL AND not_after > $2",
    )
    .bind(printer.id)
    .bind(now + time::Duration::minutes(11))
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(long_lived, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_stranger_who_knows_a_printer_id_cannot_keep_it_from_renewing_by_secret(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), trusting_loopback_proxy).await;
    let w = OrgWorld::new(&app).await;
    let printer = app.pair_printer(&w.admin_token, w.org, "SN-DOS").await;
    let base = format!("/pairing/v1/printers/{}", printer.id);
    let at_printer = Some("198.51.100.5");
    let stranger = Some("203.0.113.9");
    // The printer asks for its challenge first.
    let mine = app.printer_challenge_from(at_printer, printer.id).await;
    // The stranger asks for many challenges and answers them all wrongly, and sends
    // made-up challenges too.
    let (_, csr) = printer_key_and_csr();
    for i in 0..12 {
        let c = app.printer_challenge_from(stranger, printer.id).await;
        let challenge = if i % 2 == 0 {
            c
        } else {
            format!("made-up-{i}")
        };
        let body = json!({"challenge": challenge, "proof": "AAAA", "csr_pem": csr});
        let res = app
            .call_from(
                stranger,
                Method::POST,
                &format!("{base}/certificate"),
                None,
                Some(&body),
            )
            .await;
        assert!(
            matches!(
                res.status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{}",
            res.body
        );
    }
    // The printer still renews with the challenge it got, at once.
    let (_, csr) = printer_key_and_csr();
    let proof = printworks_agent::crypto::renewal_proof(
        &printer.shared_secret,
        printer.id,
        &mine,
        &csr_der(&csr),
    );
    let body = json!({"challenge": mine, "proof": proof, "csr_pem": csr});
    app.call_from(
        at_printer,
        Method::POST,
        &format!("{base}/certificate"),
        None,
        Some(&body),
    )
    .await
    .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_unpaired_printers_jobs_fail_at_once_instead_of_waiting_for_the_cleanup(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-GONE").await;
    let job = app
        .submit_gcode(&token, printer.id, "part.gcode", crate::relay::gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let (state, message) = job_state(&app, job).await;
    assert_eq!(
        (state.as_str(), message.as_deref()),
        ("failed", Some("the printer was removed"))
    );
    let history: Vec<String> =
        sqlx::query_scalar("SELECT state FROM print_job_events WHERE job_id = $1 ORDER BY id")
            .bind(job)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(history, vec!["queued", "failed"]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lost_poll_answer_does_not_force_the_printer_to_pair_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (_, csr) = printer_key_and_csr();
    let req = app
        .request_pairing("SN-LOST", &csr)
        .await
        .expect(StatusCode::CREATED);
    app.claim(
        &w.admin_token,
        w.org,
        req.body["code"].as_str().unwrap(),
        "p",
    )
    .await
    .expect(StatusCode::CREATED);
    let (id, token) = (
        req.body["request_id"].as_str().unwrap(),
        req.body["poll_token"].as_str().unwrap(),
    );
    let first: Value = app.poll(id, token).await.expect(StatusCode::OK).body;
    // That answer never arrived; the printer polls again.
    app.clock.advance(time::Duration::seconds(60));
    let again = app.poll(id, token).await.expect(StatusCode::OK).body;
    assert_eq!(again, first);
    // Not forever: five minutes after the first collection the secrets are erased.
    app.clock.advance(time::Duration::seconds(241));
    app.poll(id, token).await.expect(StatusCode::GONE);
}
