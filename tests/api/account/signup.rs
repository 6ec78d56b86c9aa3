//! `POST /account/v1/users`: addresses normalised and unique regardless of case, the
//! password policy with reasons, every bad input refused with problem+json.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{PASSWORD, TestApp, expect_problem};

#[sqlx::test(migrator = "MIGRATOR")]
async fn signing_up_creates_a_person_with_a_normalised_address(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .client
        .post(app.url("/account/v1/users"))
        .json(&json!({ "email": "  Ada.Lovelace@Example.COM ", "password": PASSWORD, "display_name": " Ada " }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["location"], "/account/v1/users/me");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["email"], "ada.lovelace@example.com");
    assert_eq!(body["display_name"], "Ada");
    assert_eq!(body["totp_enabled"], false);
    assert!(body.get("password").is_none() && body.get("password_hash").is_none());

    // The hash is Argon2id at no less than the OWASP minimum; the password is not stored.
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_address_is_taken_whatever_its_case(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_eq!(
        app.sign_up("grace@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let body = expect_problem(
        app.sign_up("GRACE@example.com", PASSWORD).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(body["type"], "urn:printworks:problem:conflict");

    // The database itself refuses it, whatever the application does.
    let err = sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash, created_at, updated_at)
         VALUES (gen_random_uuid(), 'Grace@Example.com', 'x', 'x', now(), now())",
    )
    .execute(&app.db)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.constraint()),
        Some("users_email_key")
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn weak_passwords_are_refused_with_the_reason(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let cases = [
        ("short1!A", "at least 12 characters"),
        ("password1234", "too easy to guess"),
        ("qwertyuiop123", "too easy to guess"),
        ("aaaaaaaaaaaaaaaa", "too easy to guess"),
        ("margaret.hamilton-apollo", "e-mail"),
    ];
    for (password, reason) in cases {
        let res = app.sign_up("margaret.hamilton@example.com", password).await;
        let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["type"], "urn:printworks:problem:validation");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{password}: {detail}");
    }
    let long = "x7!".repeat(100);
    let body = expect_problem(
        app.sign_up("m@example.com", &long).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("at most 256"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_bad_input_is_refused_with_problem_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let url = app.url("/account/v1/users");
    let cases: Vec<(Value, StatusCode)> = vec![
        (
            json!({ "email": "not-an-address", "password": PASSWORD, "display_name": "A" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "email": "a@example.com", "password": PASSWORD, "display_name": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "email": "a@example.com", "password": PASSWORD, "display_name": "x".repeat(101) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "email": "a@example.com", "password": PASSWORD, "display_name": "a\u{0}b" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "email": "a@example.com", "password": PASSWORD }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "email": 42, "password": PASSWORD, "display_name": "A" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!([1, 2, 3]), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, status) in cases {
        let res = app.client.post(&url).json(&body).send().await.unwrap();
        expect_problem(res, status).await;
    }
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::BAD_REQUEST).await;
    let res = app
        .client
        .post(&url)
        .body("email=a@example.com")
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let huge =
        json!({ "email": "a@example.com", "password": "p".repeat(300_000), "display_name": "A" });
    let res = app.client.post(&url).json(&huge).send().await.unwrap();
    expect_problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;
    // Nothing was created by any of them.
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 0);
}
