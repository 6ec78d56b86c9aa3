//! Each service mounts its routes under its prefix, and only the chosen services run.

use printworks::{Service, ServiceSet};
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, expect_problem};

const PREFIXES: [(&str, &str); 4] = [
    ("account", "/account/v1/"),
    ("org", "/org/v1/"),
    ("pairing", "/pairing/v1/"),
    ("relay", "/relay/v1/"),
];

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_service_answers_at_its_prefix(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (name, prefix) in PREFIXES {
        let res = app.get(prefix).await;
        assert_eq!(res.status(), StatusCode::OK, "{prefix}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["service"], name);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn only_the_chosen_services_run(pool: PgPool) {
    let chosen = ServiceSet::from_list(&[Service::Org, Service::Relay]);
    let app = TestApp::spawn_with(pool, &chosen, |_| {}).await;
    for (name, prefix) in PREFIXES {
        let res = app.get(prefix).await;
        if name == "org" || name == "relay" {
            assert_eq!(res.status(), StatusCode::OK, "{prefix}");
        } else {
            expect_problem(res, StatusCode::NOT_FOUND).await;
        }
    }
    // Health routes belong to every process.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

#[test]
fn all_means_every_service() {
    let all = ServiceSet::all();
    assert_eq!(all.names(), ["account", "org", "pairing", "relay"]);
    assert_eq!(
        ServiceSet::from_list(&[Service::Account, Service::All]),
        all
    );
    assert_eq!(
        ServiceSet::from_list(&[Service::Pairing]).names(),
        ["pairing"]
    );
}
