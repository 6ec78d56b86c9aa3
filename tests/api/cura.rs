//! UltiMaker Cura signs in, replayed as Cura sends it (`../shared/reference/
//! cura-cloud-api.md` §3): its authorize URL with its keys in its order, its S512 PKCE
//! challenge of a known verifier, the consent of a person, its callback, its token and
//! refresh requests (form fields in its order, an empty `client_secret`, UltiMaker's scope
//! names), and the answers read with Cura's required-field rules; `check-token` and
//! `users/permissions` in its `{"data": …}` shape; a refusal as `error_code=user_denied`;
//! and S512 refused to every other client and in any other alphabet.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{CLI, CLI_REDIRECT, TestApp, TestUser, code_from_redirect, redirect_params};

const CURA: &str = "um----------------------------ultimaker_cura";
const CALLBACK: &str = "http://localhost:32118/callback";
/// `CLIENT_SCOPES` of `cura/API/Account.py`.
const SCOPES: &str = "account.user.read drive.backup.read drive.backup.write packages.download packages.rating.read packages.rating.write connect.cluster.read connect.cluster.write connect.material.write library.project.read library.project.write cura.printjob.read cura.printjob.write cura.mesh.read cura.mesh.write";
/// The reference's worked example: `secrets.token_hex(32)` and its S512 challenge.
const VERIFIER: &str = "5d8cf54ed7a86bb4787afaf1d0b51c4ae1a65b422cc577c70349346830cc6d2b";
const CHALLENGE: &str =
    "EBZuAPX1wAVdV_SqxZctxn3jjTxD4AWYHivsC3rOQ_pqYR9dTfwEcWTBuEbU29LpsQgnt8yZq0JCN8WxdVybOA==";
const STATE: &str = "7a1f4e4ad7c24bd0a3a0c2d1f7d2b9e3a6a4e0f1d2c3b4a5968778695a4b3c2d";
const USER_AGENT: &str = "cura/5.11.0 (Linux x86_64)";

/// The query Cura builds with `urllib.parse.urlencode`, its keys in its order.
fn cura_query(client: &str, redirect: &str, challenge: &str, method: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", SCOPES)
        .append_pair("response_type", "code")
        .append_pair("state", STATE)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", method)
        .finish()
}

/// The browser Cura opened, at `{account}/authorize`, with the person signed in: the
/// consent page approved (or refused), the redirect to Cura's callback.
async fn authorize(
    app: &TestApp,
    user: &TestUser,
    query: &str,
    decision: &str,
) -> reqwest::Response {
    let res = user
        .browser
        .get(app.url(&format!("/cura-account/authorize?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("UltiMaker Cura"),
        "the consent page names Cura"
    );
    app.decide(user, &page, decision).await
}

/// `POST {account}/token` as `AuthorizationHelpers.py` sends it.
async fn cura_token(app: &TestApp, fields: &[(&str, &str)]) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url("/cura-account/token"))
        .header("user-agent", USER_AGENT)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// Cura's token response rules (`AuthorizationHelpers.parseTokenResponse`): a JSON
/// object, and on success all five fields, `expires_in` well above Cura's 60 s margin.
fn as_cura_reads_it(body: &Value) {
    for field in [
        "token_type",
        "access_token",
        "refresh_token",
        "expires_in",
        "scope",
    ] {
        assert!(!body[field].is_null(), "{field} missing: {body}");
    }
    assert!(body["expires_in"].as_f64().unwrap() > 120.0, "{body}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cura_signs_in_with_its_own_pkce_and_refreshes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let user = app.new_user("cura-user").await;
    let query = cura_query(CURA, CALLBACK, CHALLENGE, "S512");
    let back = authorize(&app, &user, &query, "approve").await;
    let code = code_from_redirect(&back, CALLBACK);
    let params = redirect_params(&back, CALLBACK);
    assert!(
        params.contains(&("state".to_owned(), STATE.to_owned())),
        "{params:?}"
    );

    // The exchange, fields in Cura's order, its secret empty.
    let (status, tokens) = cura_token(
        &app,
        &[
            ("client_id", CURA),
            ("client_secret", ""),
            ("redirect_uri", CALLBACK),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
            ("scope", SCOPES),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    as_cura_reads_it(&tokens);
    let scope = tokens["scope"].as_str().unwrap();
    for granted in ["print_job.write", "printer.read", "offline_access"] {
        assert!(scope.split(' ').any(|s| s == granted), "{scope}");
    }
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    // check-token, as Cura reads it: data.user_id and data.username required, no null
    // organization.
    let checked = app
        .call(
            Method::GET,
            "/cura-account/check-token",
            Some(&access),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(checked.body["data"]["user_id"], user.id.to_string());
    assert!(checked.body["data"]["username"].is_string());
    assert!(
        !checked.body["data"]
            .as_object()
            .unwrap()
            .get("organization")
            .is_some_and(Value::is_null)
    );
    // Permissions: Cura asks first without a token (refused), then with one.
    let anonymous = app
        .client
        .get(app.url("/cura-account/users/permissions"))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let permissions = app
        .call(
            Method::GET,
            "/cura-account/users/permissions",
            Some(&access),
            None,
        )
        .await
        .expect(StatusCode::OK);
    let list: Vec<&str> = permissions.body["data"]["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "digital-factory.print-job.read",
        "digital-factory.print-job.write.own",
        "digital-factory.printer.read",
    ] {
        assert!(list.contains(&p), "{list:?}");
    }
    // The token works on Printworks' own API.
    app.call(Method::GET, "/org/v1/organizations", Some(&access), None)
        .await
        .expect(StatusCode::OK);

    // The refresh Cura sends when the token nears its end: every field again.
    let (status, refreshed) = cura_token(
        &app,
        &[
            ("client_id", CURA),
            ("client_secret", ""),
            ("redirect_uri", CALLBACK),
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("scope", SCOPES),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    as_cura_reads_it(&refreshed);
    assert_ne!(refreshed["refresh_token"], tokens["refresh_token"]);

    // A code is good once; its replay is refused with a JSON body Cura can read.
    let (status, again) = cura_token(
        &app,
        &[
            ("client_id", CURA),
            ("client_secret", ""),
            ("redirect_uri", CALLBACK),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
            ("scope", SCOPES),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(again["error_description"].is_string(), "{again}");

    // The pages Cura sends the browser to.
    for page in [
        "/cura-account/app/auth-success",
        "/cura-account/app/auth-error",
    ] {
        let res = app.get(page).await;
        assert_eq!(res.status(), StatusCode::OK, "{page}");
        assert!(res.text().await.unwrap().contains("Cura"));
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn curas_pkce_is_curas_alone_and_a_refusal_is_user_denied(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let user = app.new_user("cura-refusals").await;

    // Refused by the person: error_code=user_denied (and the standard error), state kept.
    let back = authorize(
        &app,
        &user,
        &cura_query(CURA, CALLBACK, CHALLENGE, "S512"),
        "deny",
    )
    .await;
    let params = redirect_params(&back, CALLBACK);
    for (k, v) in [
        ("error_code", "user_denied"),
        ("error", "access_denied"),
        ("state", STATE),
    ] {
        assert!(params.contains(&(k.to_owned(), v.to_owned())), "{params:?}");
    }

    // The same digest in base64url (what a server computing "S512" the usual way would
    // expect) is not Cura's challenge: the code it gets cannot be exchanged.
    let url_safe = CHALLENGE
        .replace('_', "+")
        .replace('-', "_")
        .replace('+', "-");
    assert_ne!(url_safe, CHALLENGE);
    let back = authorize(
        &app,
        &user,
        &cura_query(CURA, CALLBACK, &url_safe, "S512"),
        "approve",
    )
    .await;
    let code = code_from_redirect(&back, CALLBACK);
    let (status, e) = cura_token(
        &app,
        &[
            ("client_id", CURA),
            ("client_secret", ""),
            ("redirect_uri", CALLBACK),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
            ("scope", SCOPES),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"], "invalid_grant");

    // Unpadded: not a challenge Cura makes.
    let res = user
        .browser
        .get(app.url(&format!(
            "/cura-account/authorize?{}",
            cura_query(CURA, CALLBACK, CHALLENGE.trim_end_matches('='), "S512")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // S512 is Cura's alone: the command-line client stays S256-only.
    let cli = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", CLI)
        .append_pair("redirect_uri", CLI_REDIRECT)
        .append_pair("scope", "openid print_job.read")
        .append_pair("response_type", "code")
        .append_pair("state", STATE)
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S512")
        .finish();
    let res = user
        .browser
        .get(app.url(&format!("/oauth/authorize?{cli}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("S256"));

    // Cura's client redirects only to Cura's callback.
    let res = user
        .browser
        .get(app.url(&format!(
            "/cura-account/authorize?{}",
            cura_query(CURA, "http://localhost:32119/callback", CHALLENGE, "S512")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}
