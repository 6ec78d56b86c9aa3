//! Third-party clients: registration by organization admins only, consent (approve,
//! deny, remember, withdraw), client_credentials acting inside the organization, and
//! introspection reflecting revocation before expiry.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    Pkce, TestApp, TestUser, code_from_redirect, expect_problem, form_fields, param,
    redirect_params,
};

const APP_REDIRECT: &str = "https://slicer.example.com/oauth/callback";

fn web_app() -> Value {
    json!({
        "name": "Slicer Cloud",
        "type": "confidential",
        "redirect_uris": [APP_REDIRECT],
        "scopes": ["openid", "profile", "offline_access", "printer.read", "print_job.write"],
        "grant_types": ["authorization_code", "refresh_token"],
    })
}

async fn consent(
    app: &TestApp,
    user: &TestUser,
    client_id: &str,
    pkce: &Pkce,
    scope: &str,
) -> reqwest::Response {
    app.authorize(
        user,
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", APP_REDIRECT),
            ("scope", scope),
            ("state", "s1"),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn only_admins_of_the_organization_register_clients(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.new_user("admin").await;
    let member = app.new_user("member").await;
    let outsider = app.new_user("outsider").await;
    let org = app.new_org(&admin, "Fab Lab").await;
    app.add_member(org, &member, "member").await;

    let res = app.register_client(&admin, org, web_app()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let c: Value = res.json().await.unwrap();
    let id = c["client_id"].as_str().unwrap();
    let secret = c["client_secret"].as_str().unwrap();
    assert_eq!(secret.len(), 43);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM oauth_clients WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        stored,
        printworks_common::crypto::token_digest(secret),
        "stored as a digest"
    );

    let body = expect_problem(
        app.register_client(&member, org, web_app()).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["type"], "urn:printworks:problem:forbidden");
    expect_problem(
        app.register_client(&outsider, org, web_app()).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.register_client(&admin, Uuid::new_v4(), web_app()).await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // With a token: organization.write is needed.
    let read_only = app.access_token(&admin, "organization.read").await;
    let mut body = web_app();
    body["organization_id"] = json!(org);
    let res = app
        .client
        .post(app.url("/account/v1/clients"))
        .bearer_auth(&read_only)
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::FORBIDDEN).await;
    let write = app.access_token(&admin, "organization.write").await;
    let res = app
        .client
        .post(app.url("/account/v1/clients"))
        .bearer_auth(&write)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);

    // Listed for the admin, and for nobody else.
    let list: Value = admin
        .browser
        .get(app.url(&format!("/account/v1/clients?organization_id={org}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(
        list["items"][0].get("client_secret").is_none()
            && list["items"][0].get("secret_hash").is_none()
    );
    let res = outsider
        .browser
        .get(app.url(&format!("/account/v1/clients?organization_id={org}")))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::NOT_FOUND).await;

    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'oauth_client.register' AND organization_id = $1")
        .bind(org)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(audited, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn registrations_are_validated(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let with = |k: &str, v: Value| {
        let mut b = web_app();
        b[k] = v;
        b
    };
    let cases = [
        with("redirect_uris", json!(["http://slicer.example.com/cb"])),
        with("redirect_uris", json!(["https://slicer.example.com/cb#x"])),
        with("redirect_uris", json!([])),
        with("scopes", json!(["openid", "root"])),
        with("scopes", json!([])),
        with("grant_types", json!(["implicit"])),
        with("grant_types", json!(["refresh_token"])),
        with("type", json!("secret")),
        with("name", json!("")),
        {
            let mut b = with("type", json!("public"));
            b["grant_types"] = json!(["client_credentials"]);
            b["redirect_uris"] = json!([]);
            b["role"] = json!("member");
            b
        },
        {
            let mut b = with("grant_types", json!(["client_credentials"]));
            b["redirect_uris"] = json!([]);
            b
        },
        {
            let mut b = with("grant_types", json!(["client_credentials"]));
            b["redirect_uris"] = json!([]);
            b["role"] = json!("owner");
            b
        },
    ];
    for body in cases {
        let res = app.register_client(&admin, org, body.clone()).await;
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM oauth_clients WHERE organization_id = $1")
            .bind(org)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn consent_says_who_asks_for_what_and_is_remembered_until_withdrawn(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let c: Value = app
        .register_client(&admin, org, web_app())
        .await
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();

    let res = consent(&app, &ada, id, &pkce, "openid offline_access printer.read").await;
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let page = res.text().await.unwrap();
    for text in [
        "Slicer Cloud",
        "Fab Lab",
        &ada.email,
        "See the printers you have access to",
        "Keep access while you are not using it",
        "name=\"decision\" value=\"approve\"",
        "name=\"decision\" value=\"deny\"",
    ] {
        assert!(page.contains(text), "consent page lacks {text:?}");
    }

    // Deny: the app learns only that.
    let res = app.decide(&ada, &page, "deny").await;
    let p = redirect_params(&res, APP_REDIRECT);
    assert_eq!(param(&p, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&p, "state").as_deref(), Some("s1"));
    assert!(param(&p, "code").is_none());

    // A forged decision (no CSRF cookie match) changes nothing.
    let mut fields = form_fields(&page);
    for f in &mut fields {
        if f.0 == "csrf" {
            f.1 = "forged-forged-forged-forged-forged-forged-00".into();
        }
    }
    fields.push(("decision".into(), "approve".into()));
    let res = ada
        .browser
        .post(app.url("/oauth/authorize"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Nor does a decision posted from another origin.
    let mut fields = form_fields(&page);
    fields.push(("decision".into(), "approve".into()));
    let res = ada
        .browser
        .post(app.url("/oauth/authorize"))
        .header("origin", "https://evil.example")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Approve: a code, then tokens for the confidential client.
    let res = consent(&app, &ada, id, &pkce, "openid offline_access printer.read").await;
    let page = res.text().await.unwrap();
    let code = code_from_redirect(&app.decide(&ada, &page, "approve").await, APP_REDIRECT);
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", APP_REDIRECT),
            ("code_verifier", &pkce.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t: Value = res.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(app.introspect(id, secret, &access).await["active"], true);

    // Remembered: the same scopes again need no page.
    let res = consent(&app, &ada, id, &pkce, "printer.read").await;
    assert!(param(&redirect_params(&res, APP_REDIRECT), "code").is_some());
    // A new scope asks again.
    assert_eq!(
        consent(&app, &ada, id, &pkce, "print_job.write")
            .await
            .status(),
        StatusCode::OK
    );

    // Listed, then withdrawn: the refresh token dies, the access token stops introspecting.
    let list: Value = ada
        .browser
        .get(app.url("/account/v1/consents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["client_name"], "Slicer Cloud");
    assert_eq!(
        list["items"][0]["scopes"],
        json!(["openid", "offline_access", "printer.read"])
    );
    let res = ada
        .browser
        .delete(app.url(&format!("/account/v1/consents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.introspect(id, secret, &access).await["active"], false);
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = ada
        .browser
        .delete(app.url(&format!("/account/v1/consents/{id}")))
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::NOT_FOUND).await;

    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE action LIKE 'consent.%' AND target_id = $1
         ORDER BY occurred_at, chain_index",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(actions, ["consent.deny", "consent.grant", "consent.revoke"]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn automated_systems_act_inside_their_organization(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let body = json!({
        "name": "Night shift scheduler",
        "type": "confidential",
        "scopes": ["printer.read", "print_job.write", "openid"],
        "grant_types": ["client_credentials"],
        "role": "member",
    });
    let c: Value = app
        .register_client(&admin, org, body)
        .await
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    assert_eq!(c["role"], "member");

    let token = |form: Vec<(&'static str, &'static str)>| {
        app.client
            .post(app.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&form)
            .send()
    };
    let res = token(vec![("grant_type", "client_credentials")])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t: Value = res.json().await.unwrap();
    assert_eq!(
        t["scope"], "printer.read print_job.write",
        "person-only scopes are not given"
    );
    assert!(t.get("refresh_token").is_none() && t.get("id_token").is_none());
    let info = app
        .introspect(id, secret, t["access_token"].as_str().unwrap())
        .await;
    assert_eq!(info["sub"], id);
    assert_eq!(info["organization_id"], org.to_string());

    let res = token(vec![
        ("grant_type", "client_credentials"),
        ("scope", "audit.read"),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app.client_credentials(id, "wrong").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A client is not a person: person-only routes refuse it.
    let res = app
        .client
        .get(app.url("/org/v1/organizations"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::FORBIDDEN).await;

    // Revoked by the admin: no more tokens.
    let res = admin
        .browser
        .delete(app.url(&format!("/account/v1/clients/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        token(vec![("grant_type", "client_credentials")])
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn introspection_sees_a_session_end_before_the_token_expires(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let c: Value = app
        .register_client(&admin, org, web_app())
        .await
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );

    // Ada lets the app act for her; it asks about the tokens it was given.
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    let page = consent(&app, &ada, id, &pkce, "offline_access printer.read")
        .await
        .text()
        .await
        .unwrap();
    let code = code_from_redirect(&app.decide(&ada, &page, "approve").await, APP_REDIRECT);
    let t: Value = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", APP_REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    let info = app.introspect(id, secret, access).await;
    assert_eq!(
        (info["active"].as_bool(), info["client_id"].as_str()),
        (Some(true), Some(id))
    );
    assert_eq!(app.introspect(id, secret, refresh).await["active"], true);
    ada.browser
        .delete(app.url("/account/v1/sessions/current"))
        .send()
        .await
        .unwrap();
    assert_eq!(app.introspect(id, secret, access).await["active"], false);
    assert_eq!(app.introspect(id, secret, refresh).await["active"], false);
    assert_eq!(
        app.introspect(id, secret, "garbage").await,
        json!({ "active": false })
    );
    // Public clients may not introspect.
    let res = app
        .client
        .post(app.url("/oauth/introspect"))
        .form(&[("token", access), ("client_id", "printworks-cli")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn revocation_ends_a_refresh_token_family(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let t = app.cli_tokens(&ada, "offline_access printer.read").await;
    let refresh = t["refresh_token"].as_str().unwrap();
    let res = app
        .client
        .post(app.url("/oauth/revoke"))
        .form(&[("token", refresh), ("client_id", "printworks-cli")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "printworks-cli"),
        ])
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Unknown tokens: 200 all the same (RFC 7009).
    let res = app
        .client
        .post(app.url("/oauth/revoke"))
        .form(&[("token", "nope"), ("client_id", "printworks-cli")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_code_issued_before_consent_was_withdrawn_is_worthless_after(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let c: Value = app
        .register_client(&admin, org, web_app())
        .await
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    let page = consent(&app, &ada, id, &pkce, "printer.read")
        .await
        .text()
        .await
        .unwrap();
    let code = code_from_redirect(&app.decide(&ada, &page, "approve").await, APP_REDIRECT);
    let res = ada
        .browser
        .delete(app.url(&format!("/account/v1/consents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", APP_REDIRECT),
            ("code_verifier", &pkce.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_third_party_app_cannot_mint_clients_with_its_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let mut body = web_app();
    body["scopes"] = json!(["organization.write"]);
    let c: Value = app
        .register_client(&admin, org, body)
        .await
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    // The admin allows the app organization.write ...
    let pkce = Pkce::new();
    let page = consent(&app, &admin, id, &pkce, "organization.write")
        .await
        .text()
        .await
        .unwrap();
    let code = code_from_redirect(&app.decide(&admin, &page, "approve").await, APP_REDIRECT);
    let t: Value = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", APP_REDIRECT),
            ("code_verifier", &pkce.verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // ... which cannot use it to register a client of its own, outliving the consent.
    let mut minted = web_app();
    minted["organization_id"] = json!(org);
    minted["grant_types"] = json!(["client_credentials"]);
    minted["redirect_uris"] = json!([]);
    minted["role"] = json!("admin");
    let res = app
        .client
        .post(app.url("/account/v1/clients"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .json(&minted)
        .send()
        .await
        .unwrap();
    expect_problem(res, StatusCode::FORBIDDEN).await;
}
