//! The shared layers, exercised through routes that misbehave on purpose. The routes
//! here exist only in this test; the layers are the ones `printworks serve` applies
//! (`apply_common_layers`), served by the same `server::serve`.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use printworks_common::clock::ManualClock;
use printworks_common::db::MIGRATOR;
use printworks_common::http::{Json, apply_common_layers};
use printworks_common::{ApiError, AppContext, server};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{client, expect_problem, test_settings};

#[derive(Deserialize)]
struct Greeting {
    name: String,
    times: u8,
}

async fn echo(Json(g): Json<Greeting>) -> Json<Value> {
    Json(json!({ "hello": g.name, "times": g.times }))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

async fn panics() -> &'static str {
    panic!("secret panic detail: key=abc123");
}

async fn fails_internally() -> Result<&'static str, ApiError> {
    Err(anyhow::anyhow!("connection to 10.0.0.7 refused; table users_secret").into())
}

async fn bad_sql(
    axum::extract::State(ctx): axum::extract::State<AppContext>,
) -> Result<&'static str, ApiError> {
    sqlx::query("SELECT no_such_column FROM no_such_table")
        .execute(&ctx.db)
        .await?;
    Ok("unreachable")
}

struct Served {
    base: String,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

async fn serve_test_routes(pool: PgPool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.max_body_bytes = 2048;
    settings.request_timeout = Duration::from_millis(300);
    let ctx = crate::helpers::test_context(&pool, settings, ManualClock::starting_now()).await;
    let routes = Router::new()
        .route("/echo", post(echo))
        .route("/slow", get(slow))
        .route("/panic", get(panics))
        .route("/internal", get(fails_internally))
        .route("/sql", get(bad_sql))
        .with_state(ctx.clone());
    let app = apply_common_layers(routes, &ctx, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));
    Served {
        base,
        _stop: stop.drop_guard(),
        _dir: dir,
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn json_bodies_within_the_limit_are_accepted(pool: PgPool) {
    let s = serve_test_routes(pool).await;
    let res = client()
        .post(format!("{}/echo", s.base))
        .json(&json!({ "name": "Ada", "times": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({ "hello": "Ada", "times": 2 })
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn oversized_bodies_answer_413(pool: PgPool) {
    let s = serve_test_routes(pool).await;
    let big = "x".repeat(4096);
    // Announced by Content-Length ...
    let res = client()
        .post(format!("{}/echo", s.base))
        .json(&json!({ "name": big, "times": 1 }))
        .send()
        .await
        .unwrap();
    let body = expect_problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(body["type"], "urn:printworks:problem:body-too-large");
    // ... or streamed without one.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 1024])).collect();
    let res = client()
        .post(format!("{}/echo", s.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_json_is_refused_with_a_reason(pool: PgPool) {
    let s = serve_test_routes(pool).await;
    let url = format!("{}/echo", s.base);
    let send = |body: &'static str, ct: &'static str| {
        client()
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    let body = expect_problem(
        send("{\"name\": ", "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["type"], "urn:printworks:problem:bad-request");
    assert!(body["detail"].as_str().unwrap().contains("EOF"), "{body}");

    let body = expect_problem(
        send("{\"name\": \"Ada\"}", "application/json")
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["type"], "urn:printworks:problem:validation");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `times`"),
        "{body}"
    );

    let body = expect_problem(
        send("{\"name\": \"Ada\", \"times\": 300}", "application/json")
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("times"), "{body}");

    let body = expect_problem(
        send("name=Ada", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert_eq!(
        body["type"],
        "urn:printworks:problem:unsupported-media-type"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn slow_requests_time_out_with_503(pool: PgPool) {
    let s = serve_test_routes(pool).await;
    let res = client()
        .get(format!("{}/slow", s.base))
        .send()
        .await
        .unwrap();
    let body = expect_problem(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], "urn:printworks:problem:unavailable");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn failures_inside_answer_500_and_reveal_nothing(pool: PgPool) {
    let s = serve_test_routes(pool).await;
    for path in ["/panic", "/internal", "/sql"] {
        let res = client()
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        let body = expect_problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Internal Server Error");
        let text = body.to_string();
        for leak in [
            "secret",
            "abc123",
            "10.0.0.7",
            "users_secret",
            "no_such",
            "SELECT",
            "panic",
        ] {
            assert!(!text.contains(leak), "{path} leaked {leak}: {text}");
        }
    }
}
