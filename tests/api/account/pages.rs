//! The pages, in real headless Chromium: signing in (with the system use notification),
//! the TOTP step, consent approved and denied, signing out.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::RawQuery;
use axum::routing::get;
use printworks_common::clock::Clock as _;
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::browser::Browser;
use crate::helpers::{PASSWORD, Pkce, TestApp, TestUser};

const NOTICE: &str = "Authorised use only. Activity on this system is logged.";

/// A stand-in for the third-party app: records what its redirect URI receives.
async fn callback_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/cb",
        get(move |RawQuery(q): RawQuery| async move {
            record.lock().unwrap().push(q.unwrap_or_default());
            "Back at the app."
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn third_party_client(app: &TestApp, admin: &TestUser, redirect: &str) -> (String, String) {
    let org = app.new_org(admin, "Fab Lab").await;
    let res = admin
        .browser
        .post(app.url("/account/v1/clients"))
        .json(&json!({
            "organization_id": org,
            "name": "Slicer Cloud",
            "type": "confidential",
            "redirect_uris": [redirect],
            "scopes": ["openid", "printer.read"],
            "grant_types": ["authorization_code"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let c: Value = res.json().await.unwrap();
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}

fn authorize_url(app: &TestApp, client_id: &str, redirect: &str, pkce: &Pkce) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "openid printer.read")
        .append_pair("state", "from-the-app")
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    app.url(&format!("/oauth/authorize?{q}"))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sign_in_with_totp_and_approve_an_app_in_a_real_browser(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &printworks::ServiceSet::all(), |s| {
        s.account.system_use_notice = Some(NOTICE.into());
    })
    .await;
    let (redirect, seen) = callback_server().await;
    let admin = app.new_user("admin").await;
    let (client_id, secret) = third_party_client(&app, &admin, &redirect).await;

    // Ada has TOTP on.
    let ada = app.new_user("ada").await;
    let e: Value = ada
        .browser
        .post(app.url("/account/v1/totp"))
        .json(&json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret_b32 = e["secret"].as_str().unwrap().to_owned();
    let code_now = |offset: i64| {
        let bytes = totp_rs::Secret::try_from_base32(&secret_b32)
            .unwrap()
            .as_ref()
            .to_vec();
        let t = printworks_account::totp::build(&bytes, "x").unwrap();
        t.generate((app.clock.now().unix_timestamp() + offset * 30) as u64)
            .to_string()
    };
    let res = ada
        .browser
        .post(app.url("/account/v1/totp/confirm"))
        .json(&json!({ "code": code_now(0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.clock.advance(time::Duration::seconds(30));

    let b = Browser::start().await;
    let pkce = Pkce::new();
    b.goto(&authorize_url(&app, &client_id, &redirect, &pkce))
        .await;
    // Sent to sign in, with the notification shown first.
    assert_eq!(b.url().await.path(), "/account/login");
    assert!(b.text(".notice").await.contains(NOTICE));
    b.fill("#email", &ada.email).await;
    b.fill("#password", "not my password").await;
    b.click("#sign-in").await;
    assert_eq!(
        b.text("#error").await,
        "The e-mail address or the password is wrong."
    );
    b.fill("#password", PASSWORD).await;
    b.click("#sign-in").await;
    // The TOTP step: a wrong code, then the right one.
    assert_eq!(b.url().await.path(), "/account/login");
    b.fill("#code", "000000").await;
    b.click("#verify").await;
    assert_eq!(
        b.text("#error").await,
        "The code is wrong or was already used."
    );
    // Three attempts so far (two passwords, one code): a person takes a second to type
    // the next one, and must.
    app.clock.advance(time::Duration::seconds(1));
    b.fill("#code", &code_now(0)).await;
    b.click("#verify").await;
    // Consent: who asks, for what.
    assert_eq!(b.url().await.path(), "/oauth/authorize");
    let heading = b.text("h1").await;
    assert!(heading.contains("Slicer Cloud"), "{heading}");
    let scopes = b.text("#scopes").await;
    assert!(
        scopes.contains("See the printers you have access to"),
        "{scopes}"
    );
    b.click("#approve").await;
    // Back at the app with a code it can exchange.
    assert!(b.url().await.as_str().starts_with(&redirect));
    let query = seen.lock().unwrap().last().cloned().unwrap();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("state").as_deref(), Some("from-the-app"));
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(&client_id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &get("code").unwrap()),
            ("redirect_uri", &redirect),
            ("code_verifier", &pkce.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let amr: Vec<String> = sqlx::query_scalar(
        "SELECT amr FROM sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(ada.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(amr, ["pwd", "otp"]);
    b.close().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn deny_an_app_then_sign_out_in_a_real_browser(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (redirect, seen) = callback_server().await;
    let admin = app.new_user("admin").await;
    let (client_id, _) = third_party_client(&app, &admin, &redirect).await;
    let ada = app.new_user("ada").await;

    let b = Browser::start().await;
    b.goto(&authorize_url(&app, &client_id, &redirect, &Pkce::new()))
        .await;
    b.fill("#email", &ada.email).await;
    b.fill("#password", PASSWORD).await;
    b.click("#sign-in").await;
    assert_eq!(b.url().await.path(), "/oauth/authorize");
    b.click("#deny").await;
    let query = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        query.contains("error=access_denied") && query.contains("state=from-the-app"),
        "{query}"
    );
    assert!(!query.contains("code="));
    let consents: i64 =
        sqlx::query_scalar("SELECT count(*) FROM oauth_consents WHERE client_id = $1")
            .bind(&client_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(consents, 0);

    // Signing out ends the session.
    b.goto(&app.url("/account/logout")).await;
    assert!(b.text("main").await.contains(&ada.email));
    b.click("#sign-out").await;
    assert_eq!(b.text("h1").await, "You are signed out");
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1 AND ended_at IS NULL")
            .bind(ada.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    // Ada's API session from the test set-up remains; the browser's is gone.
    assert_eq!(open, 1);
    b.goto(&app.url("/account/")).await;
    assert_eq!(b.url().await.path(), "/account/login");
    b.close().await;
}
