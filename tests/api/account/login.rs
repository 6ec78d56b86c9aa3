//! `POST /account/v1/sessions`: the session cookie, one answer for unknown accounts and
//! wrong passwords, the per-account growing wait (with the injected clock), and the
//! audit of every failure.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::Duration;

use crate::helpers::{PASSWORD, TestApp, expect_problem};

/// The `Set-Cookie` of the cookie named `name`.
fn set_cookie(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie set"))
}

async fn attempt(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/account/v1/sessions"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn logging_in_sets_a_session_cookie_that_scripts_cannot_read(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.sign_up("ada@example.com", PASSWORD).await;
    let res = attempt(&app, "ADA@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let cookie = set_cookie(&res, "pw_session");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "http public URL: no Secure flag: {cookie}"
    );
    // The device cookie, which remembers that this browser logged in to the account.
    let device = set_cookie(&res, "pw_device");
    assert!(
        device.contains("HttpOnly")
            && device.contains("SameSite=Strict")
            && device.contains("Path=/"),
        "{device}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["email"], "ada@example.com");

    // Only the digest of the cookie's secret is stored.
    let secret = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("pw_session=")
        .to_owned();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(stored, secret.as_bytes());
    assert_eq!(stored, printworks_common::crypto::token_digest(&secret));

    let b = app.login("ada@example.com", PASSWORD).await;
    let me: Value = b
        .get(app.url("/account/v1/users/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "ada@example.com");
    // Without the cookie: 401.
    expect_problem(
        app.get("/account/v1/users/me").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn https_public_urls_make_the_cookie_secure_and_host_bound(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.public_url =
            printworks_common::settings::PublicUrl::parse_setting("https://print.example.com")
                .unwrap();
    })
    .await;
    app.sign_up("ada@example.com", PASSWORD).await;
    let res = attempt(&app, "ada@example.com", PASSWORD).await;
    for name in ["__Host-pw_session", "__Host-pw_device"] {
        let cookie = set_cookie(&res, name);
        assert!(cookie.contains("Secure"), "{cookie}");
    }
    assert!(
        res.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_accounts_and_wrong_passwords_get_the_same_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.sign_up("ada@example.com", PASSWORD).await;
    let wrong = expect_problem(
        attempt(&app, "ada@example.com", "not the password at all").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let unknown = expect_problem(
        attempt(&app, "nobody@example.com", "not the password at all").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let garbage = expect_problem(
        attempt(&app, "not an address", "x").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    assert_eq!(strip(wrong.clone()), strip(unknown));
    assert_eq!(strip(wrong.clone()), strip(garbage));
    assert_eq!(wrong["type"], "urn:printworks:problem:invalid-credentials");

    // Each failure is audited; the unknown one without an actor.
    let failures: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT actor_type, actor_id, record::json->'details'->>'reason' FROM audit_events
         WHERE action = 'session.login' AND outcome = 'failure' ORDER BY occurred_at, chain_index",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0].0, "user");
    assert_eq!(failures[0].2, "wrong_password");
    assert_eq!(
        (failures[1].0.as_str(), failures[1].2.as_str()),
        ("anonymous", "unknown_account")
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn failed_attempts_make_the_account_wait_longer_and_longer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.sign_up("ada@example.com", PASSWORD).await;
    // Three free attempts.
    for _ in 0..3 {
        expect_problem(
            attempt(&app, "ada@example.com", "wrong password!").await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    // The fourth must wait 1 s — even with the right password (a wait, not a lock-out).
    let res = attempt(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(res.headers()["retry-after"], "1");
    let body = expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["type"], "urn:printworks:problem:rate-limited");

    app.clock.advance(Duration::seconds(1));
    expect_problem(
        attempt(&app, "ada@example.com", "wrong password!").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // Now 2 s, then 4 s.
    let res = attempt(&app, "ada@example.com", "wrong password!").await;
    assert_eq!(res.headers()["retry-after"], "2");
    app.clock.advance(Duration::seconds(2));
    expect_problem(
        attempt(&app, "ada@example.com", "wrong password!").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let res = attempt(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(res.headers()["retry-after"], "4");
    app.clock.advance(Duration::seconds(4));
    // The owner gets in, and the count is forgotten.
    assert_eq!(
        attempt(&app, "ada@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    for _ in 0..3 {
        expect_problem(
            attempt(&app, "ada@example.com", "wrong password!").await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_accounts_are_throttled_alike(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for _ in 0..3 {
        expect_problem(
            attempt(&app, "ghost@example.com", "wrong password!").await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    let res = attempt(&app, "ghost@example.com", "wrong password!").await;
    assert_eq!(res.headers()["retry-after"], "1");
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn parallel_attempts_cannot_slip_past_the_wait(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.sign_up("ada@example.com", PASSWORD).await;
    let attempts = (0..12).map(|_| attempt(&app, "ada@example.com", "wrong password!"));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // With the clock standing still, exactly the three free attempts were checked.
    assert_eq!((checked, refused), (3, 9), "{statuses:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_session_api_refuses_bad_input_with_problem_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let url = app.url("/account/v1/sessions");
    for body in [
        json!({}),
        json!({ "email": "a@example.com" }),
        json!({ "email": 1, "password": 2 }),
    ] {
        let res = app.client.post(&url).json(&body).send().await.unwrap();
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let res = app
        .client
        .post(&url)
        .json(&json!({ "email": "a".repeat(400), "password": "x" }))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = app
        .client
        .post(&url)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::BAD_REQUEST).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_per_address_limit_answers_429(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.auth_rate_limit_per_minute = 10
    })
    .await;
    // A burst of 10 / 5 = 2, then one every 6 s.
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(attempt(&app, &format!("p{i}@example.com"), "wrong password!").await);
    }
    let last = statuses.pop().unwrap();
    assert!(last.headers().contains_key("retry-after"));
    let body = expect_problem(last, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["type"], "urn:printworks:problem:rate-limited");
    // Routes outside the list are not limited.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}
