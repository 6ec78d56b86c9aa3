//! The authorization code flow with PKCE, exact redirect matching, codes used once,
//! refresh token rotation with reuse detection, discovery, and sessions ending tokens.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{
    CLI, CLI_REDIRECT, Pkce, TestApp, TestUser, code_from_redirect, error_page_params,
    expect_problem, location, param, redirect_params,
};

fn cli_params<'a>(pkce: &'a Pkce, scope: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", CLI),
        ("redirect_uri", CLI_REDIRECT),
        ("scope", scope),
        ("state", "xyz-123"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", &pkce.challenge),
        ("code_challenge_method", "S256"),
    ]
}

async fn exchange(app: &TestApp, code: &str, verifier: &str) -> reqwest::Response {
    app.token(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CLI_REDIRECT),
        ("client_id", CLI),
        ("code_verifier", verifier),
    ])
    .await
}

async fn oauth_error(res: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert!(body["error_description"].is_string());
    assert!(body["request_id"].is_string());
    body["error"].as_str().unwrap().to_owned()
}

/// Verifies an ID token with the published JWKS, as a client would.
async fn verify_id_token(app: &TestApp, token: &str, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let jwks: jsonwebtoken::jwk::JwkSet = app.get("/oauth/jwks").await.json().await.unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_issuer(&[app.base.as_str()]);
    v.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap()
        .claims
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn discovery_names_every_endpoint(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let d: Value = app
        .get("/.well-known/openid-configuration")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], app.base.as_str());
    for (k, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("introspection_endpoint", "/oauth/introspect"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("jwks_uri", "/oauth/jwks"),
    ] {
        assert_eq!(d[k], format!("{}{path}", app.base), "{k}");
    }
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["EdDSA"])
    );
    let jwks: Value = app.get("/oauth/jwks").await.json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(key.get("d").is_none(), "no private part published");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_code_flow_with_pkce_gives_tokens_the_other_services_accept(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    let res = app
        .authorize_approving(
            &ada,
            &cli_params(
                &pkce,
                "openid profile email offline_access organization.write",
            ),
        )
        .await;
    let params = redirect_params(&res, CLI_REDIRECT);
    assert_eq!(param(&params, "state").as_deref(), Some("xyz-123"));
    assert_eq!(param(&params, "iss").as_deref(), Some(app.base.as_str()));
    let code = param(&params, "code").unwrap();

    let res = exchange(&app, &code, &pkce.verifier).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let t: Value = res.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 600);
    assert_eq!(
        t["scope"],
        "openid profile email offline_access organization.write"
    );
    assert!(t["refresh_token"].is_string());

    let claims = verify_id_token(&app, t["id_token"].as_str().unwrap(), CLI).await;
    assert_eq!(claims["sub"], ada.id.to_string());
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["email"], ada.email.as_str());
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));

    // The access token works on another service ...
    let access = t["access_token"].as_str().unwrap();
    let res = app
        .client
        .post(app.url("/org/v1/organizations"))
        .bearer_auth(access)
        .json(&serde_json::json!({ "name": "Ada's print farm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // ... and on userinfo.
    let info: Value = app
        .client
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], ada.id.to_string());
    assert_eq!(info["name"], "Test Person");
    assert_eq!(info["email"], ada.email.as_str());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_code_works_once_and_its_replay_revokes_what_it_gave(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    let code = code_from_redirect(
        &app.authorize_approving(&ada, &cli_params(&pkce, "openid offline_access"))
            .await,
        CLI_REDIRECT,
    );
    let t: Value = exchange(&app, &code, &pkce.verifier)
        .await
        .json()
        .await
        .unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    assert_eq!(
        oauth_error(
            exchange(&app, &code, &pkce.verifier).await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "invalid_grant"
    );
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLI),
        ])
        .await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'oauth.code_replay'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(audited, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pkce_is_required_of_public_clients_and_checked(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();

    // Without a challenge, or with `plain`: refused, on a page whose link goes back to
    // the client with the error.
    let mut no_pkce = cli_params(&pkce, "openid");
    no_pkce.retain(|(k, _)| !k.starts_with("code_challenge"));
    let p = error_page_params(app.authorize(&ada, &no_pkce).await, CLI_REDIRECT).await;
    assert_eq!(param(&p, "error").as_deref(), Some("invalid_request"));
    assert_eq!(param(&p, "state").as_deref(), Some("xyz-123"));
    let mut plain = cli_params(&pkce, "openid");
    plain.retain(|(k, _)| *k != "code_challenge_method");
    plain.push(("code_challenge_method", "plain"));
    let p = error_page_params(app.authorize(&ada, &plain).await, CLI_REDIRECT).await;
    assert_eq!(param(&p, "error").as_deref(), Some("invalid_request"));
    assert!(param(&p, "code").is_none());

    // A wrong verifier, or none: refused, and the code is spent.
    let code = code_from_redirect(
        &app.authorize_approving(&ada, &cli_params(&pkce, "openid"))
            .await,
        CLI_REDIRECT,
    );
    let wrong = Pkce::new();
    assert_eq!(
        oauth_error(
            exchange(&app, &code, &wrong.verifier).await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "invalid_grant"
    );
    assert_eq!(
        oauth_error(
            exchange(&app, &code, &pkce.verifier).await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "invalid_grant"
    );
    let code = code_from_redirect(
        &app.authorize_approving(&ada, &cli_params(&pkce, "openid"))
            .await,
        CLI_REDIRECT,
    );
    let res = app
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CLI_REDIRECT),
            ("client_id", CLI),
        ])
        .await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn codes_expire_after_a_minute(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    let code = code_from_redirect(
        &app.authorize_approving(&ada, &cli_params(&pkce, "openid"))
            .await,
        CLI_REDIRECT,
    );
    app.clock.advance(time::Duration::seconds(61));
    assert_eq!(
        oauth_error(
            exchange(&app, &code, &pkce.verifier).await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "invalid_grant"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn redirect_uris_must_match_so_no_open_redirect(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    for bad in [
        "https://evil.example/callback",
        "http://127.0.0.1:53682/callback/../evil",
        "http://localhost:53682/callback",
        "http://127.0.0.1:53682/other",
        "http://127.0.0.1.evil.example/callback",
    ] {
        let mut p = cli_params(&pkce, "openid");
        p.retain(|(k, _)| *k != "redirect_uri");
        p.push(("redirect_uri", bad));
        let res = app.authorize(&ada, &p).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(res.headers().get("location").is_none(), "{bad} redirected");
        assert!(
            res.text().await.unwrap().contains("does not match"),
            "{bad}"
        );
    }
    // An unknown client: a page, not a redirect.
    let mut p = cli_params(&pkce, "openid");
    p.retain(|(k, _)| *k != "client_id");
    p.push(("client_id", "no-such-client"));
    let res = app.authorize(&ada, &p).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none());
    // At the token endpoint, the redirect must be the authorization request's.
    let code = code_from_redirect(
        &app.authorize_approving(&ada, &cli_params(&pkce, "openid"))
            .await,
        CLI_REDIRECT,
    );
    let res = app
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:1/callback"),
            ("client_id", CLI),
            ("code_verifier", &pkce.verifier),
        ])
        .await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_authorization_requests_are_shown_not_redirected_with_the_way_back(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    let cases: &[(&str, &str, &str)] = &[
        ("response_type", "token", "unsupported_response_type"),
        ("scope", "openid admin", "invalid_scope"),
        ("scope", "", "invalid_scope"),
    ];
    for (key, value, error) in cases {
        let mut p = cli_params(&pkce, "openid");
        p.retain(|(k, _)| k != key);
        p.push((key, value));
        let params = error_page_params(app.authorize(&ada, &p).await, CLI_REDIRECT).await;
        assert_eq!(
            param(&params, "error").as_deref(),
            Some(*error),
            "{key}={value}"
        );
        assert_eq!(param(&params, "state").as_deref(), Some("xyz-123"));
    }
    // A repeated parameter is malformed: a page.
    let res = app
        .authorize(&ada, &[("client_id", CLI), ("client_id", CLI)])
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn without_a_session_the_browser_is_sent_to_sign_in_and_back(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let stranger = TestUser {
        id: uuid::Uuid::nil(),
        email: String::new(),
        browser: crate::helpers::browser(),
    };
    let pkce = Pkce::new();
    let res = app.authorize(&stranger, &cli_params(&pkce, "openid")).await;
    let to = location(&res);
    assert!(
        to.starts_with("/account/login?return_to=%2Foauth%2Fauthorize%3F"),
        "{to}"
    );
    // prompt=none: no page, an error for the client.
    let mut p = cli_params(&pkce, "openid");
    p.push(("prompt", "none"));
    let params = redirect_params(&app.authorize(&stranger, &p).await, CLI_REDIRECT);
    assert_eq!(param(&params, "error").as_deref(), Some("login_required"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let t = app
        .cli_tokens(&ada, "openid offline_access printer.read")
        .await;
    let first = t["refresh_token"].as_str().unwrap().to_owned();
    let app = &app;
    let refresh = |token: String| async move {
        app.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &token),
            ("client_id", CLI),
        ])
        .await
    };
    let res = refresh(first.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let t2: Value = res.json().await.unwrap();
    let second = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(t2["scope"], "openid offline_access printer.read");

    // The old one again: reuse. The family dies, including the new one.
    assert_eq!(
        oauth_error(refresh(first).await, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    assert_eq!(
        oauth_error(refresh(second).await, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    let reuse: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'oauth.refresh_token_reuse'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(reuse, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn refresh_tokens_need_offline_access_and_cannot_widen_scope(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let t = app.cli_tokens(&ada, "openid printer.read").await;
    assert!(t.get("refresh_token").is_none());
    let t = app.cli_tokens(&ada, "offline_access printer.read").await;
    assert!(t.get("id_token").is_none(), "no openid, no ID token");
    let refresh = t["refresh_token"].as_str().unwrap();
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLI),
            ("scope", "printer.write"),
        ])
        .await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_scope"
    );
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLI),
            ("scope", "printer.read"),
        ])
        .await;
    let narrowed: Value = res.json().await.unwrap();
    assert_eq!(narrowed["scope"], "printer.read");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn ending_the_session_revokes_its_refresh_tokens(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let t = app.cli_tokens(&ada, "offline_access printer.read").await;
    let refresh = t["refresh_token"].as_str().unwrap();
    let res = ada
        .browser
        .delete(app.url("/account/v1/sessions/current"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLI),
        ])
        .await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_token_endpoint_refuses_bad_input_in_the_oauth_format(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_eq!(
        oauth_error(
            app.token(&[("grant_type", "password"), ("client_id", CLI)])
                .await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "unsupported_grant_type"
    );
    assert_eq!(
        oauth_error(
            app.token(&[("client_id", CLI)]).await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "invalid_request"
    );
    assert_eq!(
        oauth_error(
            app.token(&[("grant_type", "authorization_code")]).await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "invalid_client"
    );
    assert_eq!(
        oauth_error(
            app.token(&[("grant_type", "authorization_code"), ("client_id", "nope")])
                .await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "invalid_client"
    );
    // The CLI is public: it has no secret to give, and client_credentials is not its grant.
    assert_eq!(
        oauth_error(
            app.token(&[("grant_type", "client_credentials"), ("client_id", CLI)])
                .await,
            StatusCode::BAD_REQUEST
        )
        .await,
        "unauthorized_client"
    );
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .json(&serde_json::json!({"grant_type": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
    let res = app.client_credentials(CLI, "guess").await;
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(
        oauth_error(res, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );
    // Other routes keep problem+json.
    expect_problem(app.get("/oauth/nope").await, StatusCode::NOT_FOUND).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn offline_access_outlives_an_idle_browser_but_not_a_logout(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let t = app.cli_tokens(&ada, "offline_access printer.read").await;
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // Two days without the browser: the session idled out, the CLI keeps working.
    app.clock.advance(time::Duration::days(2));
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", CLI),
        ])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next: Value = res.json().await.unwrap();
    // Signing out (here: ending the session from another browser) ends it.
    let other = app.login(&ada.email, crate::helpers::PASSWORD).await;
    let list: Value = other
        .get(app.url("/account/v1/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "the idle session is not listed"
    );
    let old: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE user_id = $1 ORDER BY created_at LIMIT 1",
    )
    .bind(ada.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE sessions SET ended_at = now(), ended_reason = 'logout' WHERE id = $1")
        .bind(old)
        .execute(&app.db)
        .await
        .unwrap();
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", next["refresh_token"].as_str().unwrap()),
            ("client_id", CLI),
        ])
        .await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
}
