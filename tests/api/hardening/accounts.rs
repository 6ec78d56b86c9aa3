//! Accounts and OAuth: the built-in public client asks for consent, invalid requests
//! are not redirected, introspection tells a client only about its own tokens, e-mail
//! addresses are verified, and a stranger cannot keep an owner from logging in.

use printworks::ServiceSet;
use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{
    CLI, CLI_REDIRECT, Pkce, TestApp, code_from_redirect, error_page_params, param, redirect_params,
};

const APP_REDIRECT: &str = "https://slicer.example.com/oauth/callback";

fn cli(pkce: &Pkce, scope: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("response_type", "code".into()),
        ("client_id", CLI.into()),
        ("redirect_uri", CLI_REDIRECT.into()),
        ("scope", scope.into()),
        ("state", "s1".into()),
        ("code_challenge", pkce.challenge.clone()),
        ("code_challenge_method", "S256".into()),
    ]
}

fn borrowed<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_built_in_public_client_is_not_approved_without_asking(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ada = app.new_user("ada").await;
    let pkce = Pkce::new();
    // Anyone can present the command-line client's id (a public client): the person is
    // asked, and may refuse.
    let res = app
        .authorize(&ada, &borrowed(&cli(&pkce, "openid printer.write")))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("Printworks CLI") && page.contains("printer.write"),
        "{page}"
    );
    let refused = app.decide(&ada, &page, "deny").await;
    assert_eq!(
        param(&redirect_params(&refused, CLI_REDIRECT), "error").as_deref(),
        Some("access_denied")
    );
    // Approved, it is remembered for that set of scopes…
    let approved = app
        .authorize_approving(&ada, &borrowed(&cli(&pkce, "openid printer.write")))
        .await;
    code_from_redirect(&approved, CLI_REDIRECT);
    let again = app.authorize(&ada, &borrowed(&cli(&pkce, "openid"))).await;
    code_from_redirect(&again, CLI_REDIRECT);
    // …and asked again for more.
    let more = app
        .authorize(
            &ada,
            &borrowed(&cli(&pkce, "openid printer.write audit.read")),
        )
        .await;
    assert_eq!(more.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_invalid_request_of_a_registered_client_is_not_redirected_to_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, org) = app.admin_with_org().await;
    let res = app
        .register_client(
            &admin,
            org,
            json!({
                "name": "Slicer Cloud", "type": "confidential", "redirect_uris": [APP_REDIRECT],
                "scopes": ["openid", "printer.read"], "grant_types": ["authorization_code"],
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let c: Value = res.json().await.unwrap();
    let id = c["client_id"].as_str().unwrap();
    let pkce = Pkce::new();
    // Someone sends a person a link that asks for what the client may not have: the
    // server must not bounce the browser to the client's address by itself.
    let res = app
        .authorize(
            &admin,
            &[
                ("response_type", "code"),
                ("client_id", id),
                ("redirect_uri", APP_REDIRECT),
                ("scope", "openid audit.read"),
                ("state", "s1"),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    let back = error_page_params(res, APP_REDIRECT).await;
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(param(&back, "state").as_deref(), Some("s1"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_client_learns_nothing_from_introspection_about_tokens_issued_to_others(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let (admin, org) = app.admin_with_org().await;
    let res = app
        .register_client(
            &admin,
            org,
            json!({
                "name": "Gateway", "type": "confidential", "scopes": ["printer.read"],
                "grant_types": ["client_credentials"], "role": "guest",
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let c: Value = res.json().await.unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    );
    // A person's tokens, issued to the command-line client.
    let ada = app.new_user("ada").await;
    let t = app.cli_tokens(&ada, "offline_access printer.read").await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    assert_eq!(
        app.introspect(&id, &secret, access).await,
        json!({"active": false})
    );
    assert_eq!(
        app.introspect(&id, &secret, refresh).await,
        json!({"active": false})
    );
    // Its own token, it may look at.
    let own: Value = app
        .client_credentials(&id, &secret)
        .await
        .json()
        .await
        .unwrap();
    let own = own["access_token"].as_str().unwrap();
    assert_eq!(app.introspect(&id, &secret, own).await["active"], true);
    // A resource server the operator names may look at any token (another replica with
    // that setting, over the same database and keys).
    let shared = app.data_dir.path().to_path_buf();
    let trusted_id = id.clone();
    let issuer = app.base.clone();
    let resource_server = TestApp::spawn_with(pool, &ServiceSet::all(), move |s| {
        s.data_dir = shared.clone();
        s.public_url = printworks_common::settings::PublicUrl::parse_setting(&issuer).unwrap();
        s.account.introspection_clients = vec![trusted_id.clone()];
    })
    .await;
    let info = resource_server.introspect(&id, &secret, access).await;
    assert_eq!(
        (info["active"].as_bool(), info["client_id"].as_str()),
        (Some(true), Some(CLI))
    );
}

async fn log_in(
    browser: &reqwest::Client,
    app: &TestApp,
    email: &str,
    password: &str,
) -> StatusCode {
    browser
        .post(app.url("/account/v1/sessions"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_stranger_who_knows_an_address_cannot_keep_its_owner_from_logging_in(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // The owner logged in from this browser before (`new_user` did), then out.
    let owner = app.new_user("owner").await;
    owner
        .browser
        .delete(app.url("/account/v1/sessions/current"))
        .send()
        .await
        .unwrap();
    // A stranger fails at the address until every further try must wait.
    let stranger = crate::helpers::browser();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(log_in(&stranger, &app, &owner.email, "not the password at all").await);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The owner, from the browser they used before, gets in at once…
    assert_eq!(
        log_in(&owner.browser, &app, &owner.email, crate::helpers::PASSWORD).await,
        StatusCode::CREATED
    );
    // …while an attempt without that browser still waits, even with the right password.
    assert_eq!(
        log_in(
            &crate::helpers::browser(),
            &app,
            &owner.email,
            crate::helpers::PASSWORD
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The device is slowed on its own when it guesses wrongly (a stolen cookie).
    let mut own = Vec::new();
    for _ in 0..5 {
        own.push(log_in(&owner.browser, &app, &owner.email, "wrong again, sorry").await);
    }
    assert_eq!(own.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{own:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_unverified_address_cannot_create_organizations_claim_printers_or_register_clients(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = crate::helpers::OrgWorld::new(&app).await;
    let eve = app.new_unverified_user("eve").await;
    // She can sign in and get a token…
    let token = app.access_token(&eve, crate::helpers::ALL_SCOPES).await;
    let me: Value = eve
        .browser
        .get(app.url("/account/v1/users/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], false);
    // …but not make an organization,
    let res = app
        .call(
            reqwest::Method::POST,
            "/org/v1/organizations",
            Some(&token),
            Some(&json!({"name": "Eve's"})),
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(res.body["type"], "urn:printworks:problem:email-unverified");
    // nor claim a printer of an organization she was added to,
    app.add_member(w.org, &eve, "admin").await;
    let (_, csr) = crate::helpers::printer_key_and_csr();
    let req = app
        .request_pairing("SN-EVE", &csr)
        .await
        .expect(StatusCode::CREATED);
    let code = req.body["code"].as_str().unwrap().to_owned();
    app.claim(&token, w.org, &code, "eve's")
        .await
        .expect(StatusCode::FORBIDDEN);
    // nor register a client.
    let client = json!({
        "name": "Eve's app", "type": "confidential",
        "redirect_uris": [APP_REDIRECT], "scopes": ["openid"],
        "grant_types": ["authorization_code"],
    });
    let res = app.register_client(&eve, w.org, client.clone()).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A new link at most once a minute.
    let resend = |b: &reqwest::Client| {
        b.post(app.url("/account/v1/users/me/email-verification"))
            .send()
    };
    assert_eq!(
        resend(&eve.browser).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(time::Duration::seconds(61));
    assert_eq!(
        resend(&eve.browser).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // The link works once.
    let link = app.verification_link(&eve.email).await;
    assert_eq!(
        app.client.get(&link).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        app.client.get(&link).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    // Now all of it works (with a fresh token: the clock moved).
    let token = app.access_token(&eve, crate::helpers::ALL_SCOPES).await;
    app.call(
        reqwest::Method::POST,
        "/org/v1/organizations",
        Some(&token),
        Some(&json!({"name": "Eve's"})),
    )
    .await
    .expect(StatusCode::CREATED);
    app.claim(&token, w.org, &code, "eve's")
        .await
        .expect(StatusCode::CREATED);
    let res = app.register_client(&eve, w.org, client.clone()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // A link that expired does not work.
    let late = app.new_unverified_user("late").await;
    let link = app.verification_link(&late.email).await;
    app.clock.advance(time::Duration::hours(25));
    assert_eq!(
        app.client.get(&link).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}
