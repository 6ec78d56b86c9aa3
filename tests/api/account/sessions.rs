//! Sessions: listing mine, ending one, logging out, the idle timeout and the absolute
//! lifetime (by the injected clock), and a password change ending the others.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::Duration;
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, expect_problem};

async fn my_sessions(app: &TestApp, browser: &reqwest::Client) -> Vec<Value> {
    let res = browser
        .get(app.url("/account/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["next_cursor"].is_null());
    body["items"].as_array().unwrap().clone()
}

async fn me_status(app: &TestApp, browser: &reqwest::Client) -> StatusCode {
    browser
        .get(app.url("/account/v1/users/me"))
        .send()
        .await
        .unwrap()
        .status()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn i_see_my_sessions_and_can_end_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let laptop = ada.browser.clone();
    let phone = app.login(&ada.email, PASSWORD).await;
    let eve = app.new_user("eve").await;

    let sessions = my_sessions(&app, &laptop).await;
    assert_eq!(sessions.len(), 2);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(sessions[0]["source_addr"], "127.0.0.1");
    for field in ["created_at", "last_seen_at", "expires_at"] {
        assert!(sessions[0][field].is_string(), "{field}");
    }
    let phone_id = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Eve cannot end Ada's session: it does not exist for her.
    let res = eve
        .browser
        .delete(app.url(&format!("/account/v1/sessions/{phone_id}")))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::NOT_FOUND).await;
    assert_eq!(me_status(&app, &phone).await, StatusCode::OK);

    let res = laptop
        .delete(app.url(&format!("/account/v1/sessions/{phone_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(me_status(&app, &phone).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&app, &laptop).await, StatusCode::OK);
    // Twice: gone.
    let res = laptop
        .delete(app.url(&format!("/account/v1/sessions/{phone_id}")))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::NOT_FOUND).await;
    for bad in ["not-a-uuid", &Uuid::new_v4().to_string()] {
        let res = laptop
            .delete(app.url(&format!("/account/v1/sessions/{bad}")))
            .send()
            .await
            .unwrap();
        expect_problem(res, StatusCode::NOT_FOUND).await;
    }

    // Logging out ends the current one and clears the cookie.
    let res = laptop
        .delete(app.url("/account/v1/sessions/current"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(me_status(&app, &laptop).await, StatusCode::UNAUTHORIZED);

    let ended: Vec<String> = sqlx::query_scalar(
        "SELECT record::json->'details'->>'reason' FROM audit_events WHERE action = 'session.end' ORDER BY chain_index",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(ended, ["ended_by_user", "logout"]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sessions_end_when_idle_and_after_fourteen_days(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    // Idle for longer than the 24 h timeout.
    app.clock
        .advance(Duration::hours(24) + Duration::seconds(1));
    assert_eq!(
        me_status(&app, &ada.browser).await,
        StatusCode::UNAUTHORIZED
    );

    // In use every 12 hours, it still ends 14 days after login.
    let b = app.login(&ada.email, PASSWORD).await;
    for _ in 0..27 {
        app.clock.advance(Duration::hours(12));
        assert_eq!(me_status(&app, &b).await, StatusCode::OK);
    }
    app.clock.advance(Duration::hours(12));
    assert_eq!(me_status(&app, &b).await, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn changing_the_password_ends_every_other_session(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let other = app.login(&ada.email, PASSWORD).await;
    let tokens = app.cli_tokens(&ada, "openid offline_access").await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    let change = |current: &str, new: &str| {
        ada.browser
            .post(app.url("/account/v1/password"))
            .json(&json!({ "current_password": current, "new_password": new }))
            .send()
    };
    let body = expect_problem(
        change("wrong", "another fine passphrase 77").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("current password")
    );
    let body = expect_problem(
        change(PASSWORD, "password1234").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("too easy"));
    assert_eq!(
        me_status(&app, &other).await,
        StatusCode::OK,
        "refusals change nothing"
    );

    let res = change(PASSWORD, "another fine passphrase 77")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(me_status(&app, &ada.browser).await, StatusCode::OK);
    assert_eq!(me_status(&app, &other).await, StatusCode::UNAUTHORIZED);
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", "printworks-cli"),
        ])
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    // The new password works; the old one does not.
    app.login(&ada.email, "another fine passphrase 77").await;
    let res = app
        .client
        .post(app.url("/account/v1/sessions"))
        .json(&json!({ "email": ada.email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cross_site_writes_with_the_cookie_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let res = ada
        .browser
        .delete(app.url("/account/v1/sessions/current"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    let body = expect_problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["type"], "urn:printworks:problem:cross-site-request");
    assert_eq!(me_status(&app, &ada.browser).await, StatusCode::OK);
}
