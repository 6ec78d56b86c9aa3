//! Every JSON route of the account service, fed each class of bad input, answers 4xx
//! problem+json — never a 500, never a stack trace.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::helpers::{TestApp, expect_problem};

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_account_route_refuses_bad_input_with_problem_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let routes: &[(Method, &str)] = &[
        (Method::POST, "/account/v1/users"),
        (Method::POST, "/account/v1/sessions"),
        (Method::POST, "/account/v1/password"),
        (Method::POST, "/account/v1/totp/confirm"),
        (Method::POST, "/account/v1/totp/disable"),
        (Method::POST, "/account/v1/clients"),
    ];
    let bodies: &[(&str, &str, StatusCode)] = &[
        ("application/json", "{", StatusCode::BAD_REQUEST),
        ("application/json", "null", StatusCode::UNPROCESSABLE_ENTITY),
        ("application/json", "{}", StatusCode::UNPROCESSABLE_ENTITY),
        ("application/json", "[]", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "application/json",
            "{\"email\": [1]}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("text/plain", "hello", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/json", "\u{0}\u{1}", StatusCode::BAD_REQUEST),
    ];
    for (method, path) in routes {
        for (content_type, body, status) in bodies {
            let res = ada
                .browser
                .request(method.clone(), app.url(path))
                .header("content-type", *content_type)
                .body(*body)
                .send()
                .await
                .unwrap();
            let got = res.status();
            let problem = expect_problem(res, *status).await;
            assert!(got.is_client_error(), "{method} {path} {body:?}: {problem}");
        }
    }
    // Query strings and path parameters.
    for (path, status) in [
        ("/account/v1/sessions?limit=0", StatusCode::BAD_REQUEST),
        ("/account/v1/sessions?limit=abc", StatusCode::BAD_REQUEST),
        (
            "/account/v1/sessions?cursor=garbage",
            StatusCode::BAD_REQUEST,
        ),
        ("/account/v1/consents?limit=1000", StatusCode::BAD_REQUEST),
        ("/account/v1/clients", StatusCode::BAD_REQUEST),
        (
            "/account/v1/clients?organization_id=nope",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let res = ada.browser.get(app.url(path)).send().await.unwrap();
        expect_problem(res, status).await;
    }
}
