//! `/healthz`, `/readyz` and `/metrics`.

use std::time::Duration;

use printworks_common::db::{self, MIGRATOR};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::db_proxy::DbProxy;
use crate::helpers::{TestApp, expect_problem};

#[sqlx::test(migrator = "MIGRATOR")]
async fn healthz_answers_while_the_process_runs(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({ "status": "ok" })
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn readyz_is_ready_with_a_migrated_database(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({ "status": "ready" })
    );
}

#[sqlx::test(migrations = false)]
async fn readyz_waits_for_migrations(pool: PgPool) {
    // The account service needs its tables to start; the org service does not.
    let org_only = printworks::ServiceSet::from_list(&[printworks::Service::Org]);
    let app = TestApp::spawn_with(pool.clone(), &org_only, |_| {}).await;
    let body = expect_problem(app.get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], "urn:printworks:problem:not-ready");
    assert!(
        body["detail"].as_str().unwrap().contains("migrations"),
        "{body}"
    );

    db::migrate(&pool).await.unwrap();
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn readyz_fails_while_the_database_is_down_and_recovers_by_itself(
    _pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (proxy, via_proxy) = DbProxy::start(&connect).await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(via_proxy);
    let app = TestApp::spawn(pool).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);

    proxy.cut();
    let body = expect_problem(app.get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], "urn:printworks:problem:not-ready");
    assert_eq!(body["detail"], "The database is unreachable.");
    // The process itself is fine.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    proxy.restore();
    app.wait_for_readyz(StatusCode::OK, Duration::from_secs(5))
        .await;
}

#[sqlx::test(migrations = false)]
async fn replicas_starting_together_apply_each_migration_once(pool: PgPool) {
    let runs = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { db::migrate(&pool).await })
    });
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(applied, expected);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn metrics_count_requests_by_route_and_status(pool: PgPool) {
    let max_connections = pool.options().get_max_connections();
    let app = TestApp::spawn(pool).await;
    app.get("/healthz").await;
    app.get("/healthz").await;
    app.get("/org/v1/").await;
    app.get("/no/such/route/12345").await;

    let res = app.get("/metrics").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text().await.unwrap();
    for line in [
        r#"printworks_http_requests_total{method="GET",route="/healthz",status="200"} 2"#,
        r#"printworks_http_requests_total{method="GET",route="/org/v1/",status="200"} 1"#,
        // Unknown paths share one label: a scanner cannot blow up the series count.
        r#"printworks_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"printworks_http_request_duration_seconds_count{method="GET",route="/healthz"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        text.contains(&format!(
            "printworks_db_pool_max_connections {max_connections}\n"
        )),
        "{text}"
    );
    assert!(text.contains(r#"printworks_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/healthz"}"#)
        || text.contains(r#"printworks_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="0.001"}"#), "{text}");
    assert!(
        text.contains(r#"printworks_db_pool_connections{state="idle"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"printworks_db_pool_connections{state="in_use"}"#),
        "{text}"
    );
    assert!(!text.contains("12345"), "raw paths must not become labels");
}
