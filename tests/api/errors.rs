//! The error format, on the real application: problem+json for every refusal, with a
//! request id that matches the header; request ids from callers kept only when sane.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::{TestApp, expect_problem};

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_routes_answer_problem_json_404(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for path in [
        "/nope",
        "/account/v2/",
        "/org/v1/../../etc/passwd",
        "/%3Cscript%3E",
    ] {
        let body = expect_problem(app.get(path).await, StatusCode::NOT_FOUND).await;
        assert_eq!(body["type"], "urn:printworks:problem:not-found");
        assert_eq!(body["title"], "Not found");
        // Nothing of the request is reflected back.
        assert!(!body.to_string().contains("script") && !body.to_string().contains("passwd"));
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_wrong_method_answers_405_with_allow(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app.client.delete(app.url("/healthz")).send().await.unwrap();
    let allow = res.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    let body = expect_problem(res, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(body["type"], "urn:printworks:problem:method-not-allowed");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn request_ids_are_echoed_when_sane_and_replaced_when_not(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let sent = "lb-7f3a.42_x";
    let res = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", sent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], sent);
    let body = expect_problem(res, StatusCode::NOT_FOUND).await;
    assert_eq!(body["request_id"], sent);

    for bad in ["two words", &"x".repeat(65), "a\"b"] {
        let res = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }

    // Without one, each request gets its own.
    let a = app.get("/healthz").await.headers()["x-request-id"].clone();
    let b = app.get("/healthz").await.headers()["x-request-id"].clone();
    assert_ne!(a, b);
}

/// PostgreSQL ending a connection (shut down, restarting: SQLSTATE 57P01) is an outage,
/// answered 503 with `Retry-After`, like an unreachable server — not a 500.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_connection_the_database_ends_is_a_503_not_a_500(pool: PgPool) {
    use axum::response::IntoResponse as _;
    let e = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("57P01")
    );
    let res = printworks_common::ApiError::from(e).into_response();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    // Any other database error stays a 500.
    let e = sqlx::query("SELECT 1/0").execute(&pool).await.unwrap_err();
    let res = printworks_common::ApiError::from(e).into_response();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
