//! Access tokens refused: missing, expired, tampered, signed by an unknown key or with
//! a forged `kid`, `alg: none`, HMAC key confusion, the wrong audience or type, a
//! missing scope. And key rotation: published before it signs, the old key kept until
//! its tokens have expired.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use printworks_common::crypto::SecretBox;
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::Duration;

use crate::helpers::{TestApp, expect_problem, test_settings};

async fn list_orgs(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/org/v1/organizations"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn refused(app: &TestApp, token: &str) {
    let res = list_orgs(app, token).await;
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body = expect_problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["type"], "urn:printworks:problem:unauthenticated");
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    let p = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, p, it.next().unwrap().to_owned())
}

fn join(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string())
    )
}

/// Signs `payload` with a fresh Ed25519 key the server never saw.
fn sign_with_own_key(header: &Value, payload: &Value) -> String {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let pair = Ed25519KeyPair::generate().unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref());
    let h: jsonwebtoken::Header = serde_json::from_value(header.clone()).unwrap();
    jsonwebtoken::encode(&h, payload, &key).unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn forged_and_stale_tokens_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let t = app.cli_tokens(&ada, "openid organization.read").await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(list_orgs(&app, &token).await.status(), StatusCode::OK);
    let (header, payload, signature) = parts(&token);
    assert_eq!(header["typ"], "at+jwt");

    // Tampered claims: more scope, someone else.
    let mut more = payload.clone();
    more["scope"] = json!("organization.read organization.write audit.read");
    refused(&app, &join(&header, &more, &signature)).await;
    let mut other = payload.clone();
    other["sub"] = json!(uuid::Uuid::new_v4().to_string());
    refused(&app, &join(&header, &other, &signature)).await;
    // A signature bit flipped.
    let mut sig = B64.decode(&signature).unwrap();
    sig[0] ^= 1;
    refused(&app, &join(&header, &payload, &B64.encode(sig))).await;
    // Signed by another key, under an unknown kid or the real one.
    let mut unknown = header.clone();
    unknown["kid"] = json!("attacker-key");
    refused(&app, &sign_with_own_key(&unknown, &payload)).await;
    refused(&app, &sign_with_own_key(&header, &payload)).await;
    // alg: none, and HS256 keyed with the public key (algorithm confusion).
    let mut none = header.clone();
    none["alg"] = json!("none");
    refused(&app, &join(&none, &payload, "")).await;
    let jwks: Value = app.get("/oauth/jwks").await.json().await.unwrap();
    let public = B64.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = header["kid"].as_str().map(str::to_owned);
    hs.typ = Some("at+jwt".into());
    refused(
        &app,
        &jsonwebtoken::encode(
            &hs,
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap(),
    )
    .await;
    // The ID token is not an access token: other type, other audience.
    refused(&app, t["id_token"].as_str().unwrap()).await;
    // Garbage.
    for junk in ["", "abc", "a.b.c", &"x".repeat(9000)] {
        let res = list_orgs(&app, junk).await;
        expect_problem(res, StatusCode::UNAUTHORIZED).await;
    }

    // Expired: ten minutes later.
    app.clock.advance(Duration::seconds(600));
    refused(&app, &token).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_token_without_the_routes_scope_is_forbidden(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let token = app.access_token(&ada, "organization.read").await;
    let res = app
        .client
        .post(app.url("/org/v1/organizations"))
        .bearer_auth(&token)
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("organization.write"),
        "{challenge}"
    );
    let body = expect_problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["required_scope"], "organization.write");
    // No token at all.
    let res = app.get("/org/v1/organizations").await;
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"printworks\""
    );
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
}

async fn published(app: &TestApp) -> Vec<String> {
    let jwks: Value = app.get("/oauth/jwks").await.json().await.unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rotation_publishes_the_new_key_before_it_signs_and_keeps_the_old_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let kid = |token: &str| parts(token).0["kid"].as_str().unwrap().to_owned();
    let old_token = app.access_token(&ada, "organization.read").await;
    let old = kid(&old_token);
    assert_eq!(published(&app).await, [old.as_str()]);

    // What `printworks keys rotate` does, with the app's master key and clock.
    let secrets = SecretBox::from_settings(&test_settings(app.data_dir.path())).unwrap();
    let rotation = printworks_account::keys::rotate(
        &app.db,
        &secrets,
        printworks_common::clock::Clock::now(app.clock.as_ref()),
        printworks_account::keys::PUBLISH_LEAD,
        std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert_eq!(published(&app).await, [old.clone(), rotation.kid.clone()]);
    // Published, not signing yet.
    assert_eq!(kid(&app.access_token(&ada, "organization.read").await), old);

    // Nine minutes on: still the old key; then the new one signs.
    app.clock.advance(Duration::minutes(9));
    let last_old = app.access_token(&ada, "organization.read").await;
    assert_eq!(kid(&last_old), old);
    app.clock.advance(Duration::minutes(1));
    let new_token = app.access_token(&ada, "organization.read").await;
    assert_eq!(kid(&new_token), rotation.kid);
    assert_eq!(list_orgs(&app, &new_token).await.status(), StatusCode::OK);
    // The old key's last token is still good until it expires.
    app.clock.advance(Duration::minutes(8));
    assert_eq!(list_orgs(&app, &last_old).await.status(), StatusCode::OK);
    assert_eq!(published(&app).await.len(), 2);
    // Once all its tokens have expired, the old key is no longer published.
    app.clock.advance(Duration::minutes(4));
    assert_eq!(published(&app).await, [rotation.kid]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retired_key_is_not_trusted_even_by_a_warm_cache(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let token = app.access_token(&ada, "organization.read").await;
    assert_eq!(
        list_orgs(&app, &token).await.status(),
        StatusCode::OK,
        "the cache now holds the key"
    );
    let (header, mut payload, _) = parts(&token);
    let old = header["kid"].as_str().unwrap().to_owned();

    let secrets = SecretBox::from_settings(&test_settings(app.data_dir.path())).unwrap();
    printworks_account::keys::rotate(
        &app.db,
        &secrets,
        printworks_common::clock::Clock::now(app.clock.as_ref()),
        std::time::Duration::from_secs(0),
        std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    app.clock.advance(Duration::minutes(12));

    // Someone who stole the old private key signs a token that has not expired.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT private_key_sealed FROM signing_keys WHERE kid = $1")
            .bind(&old)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let pkcs8 = secrets
        .open(&format!("signing-key:{old}"), &sealed)
        .unwrap();
    let now = printworks_common::clock::Clock::now(app.clock.as_ref()).unix_timestamp();
    payload["iat"] = json!(now);
    payload["exp"] = json!(now + 300);
    let h: jsonwebtoken::Header = serde_json::from_value(header).unwrap();
    let forged = jsonwebtoken::encode(
        &h,
        &payload,
        &jsonwebtoken::EncodingKey::from_ed_der(&pkcs8),
    )
    .unwrap();
    refused(&app, &forged).await;
}
