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

#[sqlx::test(migrator = "MIGRATOR")]
async fn nul_characters_are_refused_not_crashed_on(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let res = app
        .client
        .post(app.url("/account/v1/sessions"))
        .json(&serde_json::json!({ "email": "\u{0}", "password": "x" }))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
    let res = app
        .client
        .post(app.url("/account/v1/users"))
        .json(&serde_json::json!({ "email": "a@example.com", "password": "violet-lantern 93 orbit quince", "display_name": "A\u{0}" }))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    for path in [
        "/account/v1/consents/%00",
        "/account/v1/clients/a%00b",
        "/account/v1/sessions/%00",
    ] {
        let res = ada.browser.delete(app.url(path)).send().await.unwrap();
        expect_problem(res, StatusCode::NOT_FOUND).await;
    }
    let res = app
        .token(&[("grant_type", "client_credentials"), ("client_id", "\u{0}")])
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let pkce = crate::helpers::Pkce::new();
    let res = app
        .authorize(
            &ada,
            &[
                ("response_type", "code"),
                ("client_id", crate::helpers::CLI),
                ("redirect_uri", crate::helpers::CLI_REDIRECT),
                ("scope", "openid"),
                ("nonce", "a\u{0}b"),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    let p = crate::helpers::error_page_params(res, crate::helpers::CLI_REDIRECT).await;
    assert_eq!(
        crate::helpers::param(&p, "error").as_deref(),
        Some("invalid_request")
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn behind_a_trusted_proxy_the_forwarded_address_counts(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.auth_rate_limit_per_minute = 5;
    })
    .await;
    let attempt = |from: &'static str| {
        app.client
            .post(app.url("/account/v1/sessions"))
            .header("x-forwarded-for", format!("{from}, 127.0.0.1"))
            .json(&serde_json::json!({ "email": "x@example.com", "password": "x" }))
            .send()
    };
    // A burst of 1 per address: the second from the same client is limited ...
    assert_eq!(
        attempt("203.0.113.7").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    expect_problem(
        attempt("203.0.113.7").await.unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    // ... another client behind the same proxy is not; IPv6 counts per /64.
    assert_eq!(
        attempt("198.51.100.4").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        attempt("2001:db8:1:2::1").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    expect_problem(
        attempt("2001:db8:1:2::99").await.unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    // The audit record names the client, not the proxy.
    let sources: Vec<Option<String>> =
        sqlx::query_scalar("SELECT source_addr FROM audit_events ORDER BY chain_index")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        sources.first().cloned().flatten().as_deref(),
        Some("203.0.113.7")
    );
}
