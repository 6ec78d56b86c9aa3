//! TOTP: enrolment (with the password again), confirmation with recovery codes, login
//! with a code, replay refused, recovery codes single-use, turning it off with a code or
//! a recovery code, and wrong codes throttled.

use base64::Engine as _;
use printworks_account::totp;
use printworks_common::clock::Clock as _;
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::Duration;

use crate::helpers::{PASSWORD, TestApp, TestUser, expect_problem};

/// The code an authenticator app shows for `secret` (base32) at the app's time.
pub(crate) fn code(app: &TestApp, secret: &str, offset_steps: i64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret)
        .unwrap()
        .as_ref()
        .to_vec();
    let t = totp::build(&bytes, "x").unwrap();
    let at = app.clock.now().unix_timestamp() + offset_steps * 30;
    t.generate(at as u64).to_string()
}

async fn post(app: &TestApp, user: &TestUser, path: &str, body: Value) -> reqwest::Response {
    user.browser
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login(app: &TestApp, email: &str, code: Option<&str>) -> reqwest::Response {
    let mut body = json!({ "email": email, "password": PASSWORD });
    if let Some(c) = code {
        body["totp_code"] = Value::from(c);
    }
    app.client
        .post(app.url("/account/v1/sessions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn audited(app: &TestApp, pattern: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT action, outcome FROM audit_events WHERE action LIKE $1 ORDER BY chain_index",
    )
    .bind(pattern)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Enrols and confirms TOTP; returns the secret and the recovery codes.
pub(crate) async fn turn_on(app: &TestApp, user: &TestUser) -> (String, Vec<String>) {
    let res = post(
        app,
        user,
        "/account/v1/totp",
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let e: Value = res.json().await.unwrap();
    let secret = e["secret"].as_str().unwrap().to_owned();
    let res = post(
        app,
        user,
        "/account/v1/totp/confirm",
        json!({ "code": code(app, &secret, 0) }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    app.clock.advance(Duration::seconds(30));
    (secret, codes)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn enrolment_needs_the_password_and_gives_a_secret_a_uri_and_a_qr_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    // The password again: a stolen session alone cannot turn TOTP on.
    expect_problem(
        post(&app, &ada, "/account/v1/totp", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let body = expect_problem(
        post(
            &app,
            &ada,
            "/account/v1/totp",
            json!({ "password": "guess guess guess" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"], "The password is wrong.");

    let res = post(
        &app,
        &ada,
        "/account/v1/totp",
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let e: Value = res.json().await.unwrap();
    let secret = e["secret"].as_str().unwrap();
    assert!(
        secret.len() >= 32
            && secret
                .chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)),
        "{secret}"
    );
    let uri = e["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Printworks:"), "{uri}");
    assert!(
        uri.contains(&format!("secret={secret}")) && uri.contains("issuer=Printworks"),
        "{uri}"
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(e["qr_png"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Stored sealed, not in the clear.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_sealed FROM totp_credentials")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let raw = totp_rs::Secret::try_from_base32(secret)
        .unwrap()
        .as_ref()
        .to_vec();
    assert!(!sealed.windows(raw.len()).any(|w| w == raw));
    // Not on until confirmed, and not by a wrong code.
    assert_eq!(
        login(&app, &ada.email, None).await.status(),
        StatusCode::CREATED
    );
    let res = post(
        &app,
        &ada,
        "/account/v1/totp/confirm",
        json!({ "code": "000000" }),
    )
    .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        login(&app, &ada.email, None).await.status(),
        StatusCode::CREATED
    );
    // Confirming twice: the second finds nothing pending.
    app.clock.advance(Duration::seconds(30));
    let res = post(
        &app,
        &ada,
        "/account/v1/totp/confirm",
        json!({ "code": code(&app, secret, 0) }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = post(
        &app,
        &ada,
        "/account/v1/totp/confirm",
        json!({ "code": code(&app, secret, 1) }),
    )
    .await;
    expect_problem(res, StatusCode::CONFLICT).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM recovery_codes")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 10);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn with_totp_on_a_login_needs_a_fresh_code(pool: PgPool) {
    // Many wrong codes below: the throttle has its own test.
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.account.login_free_attempts = 50
    })
    .await;
    let ada = app.new_user("ada").await;
    let (secret, _) = turn_on(&app, &ada).await;

    let body = expect_problem(
        login(&app, &ada.email, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["mfa_required"], true);
    assert_eq!(body["type"], "urn:printworks:problem:mfa-required");

    let now = code(&app, &secret, 0);
    assert_eq!(
        login(&app, &ada.email, Some(&now)).await.status(),
        StatusCode::CREATED
    );
    // The same code again, within its step: replay.
    let body = expect_problem(
        login(&app, &ada.email, Some(&now)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["mfa_required"], true);
    assert_eq!(body["type"], "urn:printworks:problem:invalid-second-factor");
    // The previous step's code is older than the one used: refused too.
    expect_problem(
        login(&app, &ada.email, Some(&code(&app, &secret, -1))).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // Two steps away: refused.
    expect_problem(
        login(&app, &ada.email, Some(&code(&app, &secret, 2))).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // The next step's code works.
    app.clock.advance(Duration::seconds(30));
    assert_eq!(
        login(&app, &ada.email, Some(&code(&app, &secret, 0)))
            .await
            .status(),
        StatusCode::CREATED
    );
    let amr: Vec<String> =
        sqlx::query_scalar("SELECT amr FROM sessions ORDER BY created_at DESC LIMIT 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(amr, ["pwd", "otp"]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn recovery_codes_work_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let (_, codes) = turn_on(&app, &ada).await;
    assert_eq!(codes.len(), 10);
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    assert_eq!(
        login(&app, &ada.email, Some(&codes[3].to_uppercase()))
            .await
            .status(),
        StatusCode::CREATED
    );
    expect_problem(
        login(&app, &ada.email, Some(&codes[3])).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT code_hash FROM recovery_codes")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 10);
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 32 && !codes.iter().any(|c| h == c.as_bytes()))
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn turning_totp_off_needs_a_current_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let (secret, _) = turn_on(&app, &ada).await;
    // A second enrolment is refused while it is on.
    expect_problem(
        post(
            &app,
            &ada,
            "/account/v1/totp",
            json!({ "password": PASSWORD }),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    // Not without a code, nor with a wrong one.
    expect_problem(
        post(&app, &ada, "/account/v1/totp/disable", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    expect_problem(
        post(
            &app,
            &ada,
            "/account/v1/totp/disable",
            json!({ "code": "123456" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let res = post(
        &app,
        &ada,
        "/account/v1/totp/disable",
        json!({ "code": code(&app, &secret, 0) }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        login(&app, &ada.email, None).await.status(),
        StatusCode::CREATED
    );
    let actions = audited(&app, "totp.%").await;
    let actions: Vec<(&str, &str)> = actions
        .iter()
        .map(|(a, o)| (a.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("totp.enable", "success"),
            ("totp.disable", "failure"),
            ("totp.disable", "success")
        ]
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lost_authenticator_is_replaced_with_recovery_codes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let (_, codes) = turn_on(&app, &ada).await;
    // Signed in with a recovery code, Ada turns TOTP off with another and enrols anew.
    assert_eq!(
        login(&app, &ada.email, Some(&codes[0])).await.status(),
        StatusCode::CREATED
    );
    let res = post(
        &app,
        &ada,
        "/account/v1/totp/disable",
        json!({ "code": codes[1] }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (secret, _) = turn_on(&app, &ada).await;
    assert_eq!(
        login(&app, &ada.email, Some(&code(&app, &secret, 0)))
            .await
            .status(),
        StatusCode::CREATED
    );
    // The old recovery codes died with the old authenticator.
    app.clock.advance(Duration::seconds(30));
    expect_problem(
        login(&app, &ada.email, Some(&codes[2])).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn wrong_codes_count_in_the_throttle(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let (secret, _) = turn_on(&app, &ada).await;
    // The password is right; the codes are wrong. Each login counts once.
    for _ in 0..3 {
        expect_problem(
            login(&app, &ada.email, Some("000000")).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    let res = login(&app, &ada.email, Some(&code(&app, &secret, 0))).await;
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
    // After the wait, the right code gets in.
    app.clock.advance(Duration::seconds(1));
    assert_eq!(
        login(&app, &ada.email, Some(&code(&app, &secret, 0)))
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn totp_management_cannot_reset_the_login_throttle(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let (secret, _) = turn_on(&app, &ada).await;
    // Two wrong password guesses at the password change, then a right code to turn
    // TOTP off: the guesses still count.
    for _ in 0..2 {
        let res = ada
            .browser
            .post(app.url("/account/v1/password"))
            .json(&json!({ "current_password": "a guess", "new_password": "another fine passphrase 77" }))
            .send()
            .await
            .unwrap();
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let res = post(
        &app,
        &ada,
        "/account/v1/totp/disable",
        json!({ "code": code(&app, &secret, 0) }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The right code took back only its own count: the two guesses stand, so one more
    // guess is free and the next must wait (after a reset, three would be free).
    app.clock.advance(Duration::seconds(1));
    let res = ada
        .browser
        .post(app.url("/account/v1/password"))
        .json(
            &json!({ "current_password": "a guess", "new_password": "another fine passphrase 77" }),
        )
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = ada
        .browser
        .post(app.url("/account/v1/password"))
        .json(
            &json!({ "current_password": "a guess", "new_password": "another fine passphrase 77" }),
        )
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
}
