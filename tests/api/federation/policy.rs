//! The organization's security policy, enforced on every call from the database:
//! a second factor, sign-in through the organization's provider, a maximum session age,
//! and the system use notification shown before sign-in.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::Fed;
use crate::account::totp::{code, turn_on};
use crate::helpers::{ALL_SCOPES, PASSWORD, TestApp, TestUser, browser, form_fields};

async fn put_policy(app: &TestApp, org: Uuid, token: &str, body: Value) -> crate::helpers::Answer {
    app.call(
        Method::PUT,
        &format!("/org/v1/organizations/{org}/policy"),
        Some(token),
        Some(&body),
    )
    .await
}

async fn get_org(app: &TestApp, org: Uuid, token: &str) -> crate::helpers::Answer {
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/printers"),
        Some(token),
        None,
    )
    .await
}

/// `user` signed in again with their password and a TOTP code: a session with a
/// second factor, and a token from it.
async fn with_second_factor(app: &TestApp, user: &TestUser, secret: &str) -> (TestUser, String) {
    let b = browser();
    let res = b
        .post(app.url("/account/v1/sessions"))
        .json(
            &json!({"email": user.email, "password": PASSWORD, "totp_code": code(app, secret, 0)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let again = TestUser {
        id: user.id,
        email: user.email.clone(),
        browser: b,
    };
    let token = app.access_token(&again, ALL_SCOPES).await;
    (again, token)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_second_factor_is_required_where_the_organization_says_so(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (admin, strict) = app.admin_with_org().await;
    let relaxed = app.new_org(&admin, "Relaxed Lab").await;
    let member = app.new_user("member").await;
    app.add_member(strict, &member, "member").await;
    app.add_member(relaxed, &member, "member").await;
    let admin_token = app.access_token(&admin, ALL_SCOPES).await;
    let member_token = app.access_token(&member, ALL_SCOPES).await;
    let policy = json!({"require_mfa": true, "max_session_age": null, "allowed_auth": "both", "notice": null});

    // The admin cannot lock themselves out: their own session has no second factor.
    let res = put_policy(&app, strict, &admin_token, policy.clone())
        .await
        .expect(StatusCode::CONFLICT);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:policy-would-lock-you-out"
    );
    let (secret, _) = turn_on(&app, &admin).await;
    let (_, admin_token) = with_second_factor(&app, &admin, &secret).await;
    put_policy(&app, strict, &admin_token, policy.clone())
        .await
        .expect(StatusCode::OK);
    // Members may read it (to learn how to comply); only admins change it.
    let read = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{strict}/policy"),
            Some(&admin_token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(read.body["require_mfa"], true);

    // The member without a second factor: refused here, with how to comply …
    let res = get_org(&app, strict, &member_token)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:organization-requires-mfa"
    );
    assert!(res.body["detail"].as_str().unwrap().contains("TOTP"));
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{strict}/policy"),
        Some(&member_token),
        None,
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    // The same rule where the account service acts for the organization: an admin
    // without a second factor cannot manage its OAuth clients.
    let other_admin = app.new_user("other-admin").await;
    app.add_member(strict, &other_admin, "admin").await;
    let other_token = app.access_token(&other_admin, ALL_SCOPES).await;
    let res = app
        .call(
            Method::GET,
            &format!("/account/v1/clients?organization_id={strict}"),
            Some(&other_token),
            None,
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:organization-requires-mfa"
    );
    app.call(
        Method::GET,
        &format!("/account/v1/clients?organization_id={strict}"),
        Some(&admin_token),
        None,
    )
    .await
    .expect(StatusCode::OK);
    // … allowed where the organization does not ask for it.
    get_org(&app, relaxed, &member_token)
        .await
        .expect(StatusCode::OK);
    // The same token after the policy is relaxed: read on every call.
    let relaxed_policy = json!({"require_mfa": false, "max_session_age": null, "allowed_auth": "both", "notice": null});
    put_policy(&app, strict, &admin_token, relaxed_policy)
        .await
        .expect(StatusCode::OK);
    get_org(&app, strict, &member_token)
        .await
        .expect(StatusCode::OK);
    put_policy(&app, strict, &admin_token, policy)
        .await
        .expect(StatusCode::OK);
    // With TOTP on and a sign-in that used it, the member acts again.
    let (secret, _) = turn_on(&app, &member).await;
    let (_, member_token) = with_second_factor(&app, &member, &secret).await;
    get_org(&app, strict, &member_token)
        .await
        .expect(StatusCode::OK);

    // Bad policies are refused with the reason.
    for bad in [
        json!({"require_mfa": true, "max_session_age": 10, "allowed_auth": "both", "notice": null}),
        json!({"require_mfa": true, "max_session_age": null, "allowed_auth": "sometimes", "notice": null}),
        json!({"require_mfa": true, "max_session_age": null, "allowed_auth": "federation", "notice": null}),
        json!({"require_mfa": true, "max_session_age": null, "allowed_auth": "both", "notice": "x".repeat(2001)}),
    ] {
        put_policy(&app, strict, &admin_token, bad)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE organization_id = $1 AND action = 'organization.policy'",
    )
    .bind(strict)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(changed, 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn federation_only_mfa_from_the_provider_and_a_maximum_session_age(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    let org = fed.org;
    // dave signs in at the provider with a second factor (amr otp, mfa), alice without.
    let dave = fed.sign_in("dave@corp.test", "dave").await.user(app).await;
    let alice = fed
        .sign_in("alice@corp.test", "alice")
        .await
        .user(app)
        .await;
    app.set_role(&fed.token, org, dave.id, "admin")
        .await
        .expect(StatusCode::OK);
    let dave_token = app.access_token(&dave, ALL_SCOPES).await;
    let alice_token = app.access_token(&alice, ALL_SCOPES).await;

    let strict = json!({"require_mfa": true, "max_session_age": 300, "allowed_auth": "federation", "notice": null});
    // The password admin would lock themselves out; dave, signed in through the
    // provider with its second factor, meets it.
    put_policy(app, org, &fed.token, strict.clone())
        .await
        .expect(StatusCode::CONFLICT);
    put_policy(app, org, &dave_token, strict)
        .await
        .expect(StatusCode::OK);
    get_org(app, org, &dave_token).await.expect(StatusCode::OK);
    let res = get_org(app, org, &alice_token)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:organization-requires-mfa"
    );
    let res = get_org(app, org, &fed.token)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:organization-requires-federation"
    );
    // Five minutes after dave signed in, his session is too old to act here (a new
    // token from it too); a new sign-in is not.
    app.clock.advance(time::Duration::seconds(301));
    let fresh_token = app.access_token(&dave, ALL_SCOPES).await;
    let res = get_org(app, org, &fresh_token)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(res.body["type"], "urn:printworks:problem:session-too-old");
    let dave = fed.sign_in("dave@corp.test", "dave").await.user(app).await;
    let token = app.access_token(&dave, ALL_SCOPES).await;
    get_org(app, org, &token).await.expect(StatusCode::OK);
    // Nobody could sign in if the provider went, or the domain went unproven, while the
    // policy wants it.
    fed.configure(org, &token, "elsewhere.test", false)
        .await
        .expect(StatusCode::CONFLICT);
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{org}/sso"),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::CONFLICT);

    // The second factor dave's provider reported counts for this organization only: in
    // an organization of his own, it proves nothing (another organization's provider
    // could say anything).
    let own = app.new_org(&dave, "Dave's Lab").await;
    let res = put_policy(
        app,
        own,
        &token,
        json!({"require_mfa": true, "max_session_age": null, "allowed_auth": "both", "notice": null}),
    )
    .await
    .expect(StatusCode::CONFLICT);
    assert_eq!(
        res.body["type"],
        "urn:printworks:problem:policy-would-lock-you-out"
    );
    assert!(
        res.body["detail"]
            .as_str()
            .unwrap()
            .contains("second factor"),
        "{}",
        res.body
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_organization_notice_is_shown_before_sign_in(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    let notice = "Authorised users of Fab Lab only. Activity is logged.";
    put_policy(
        app,
        fed.org,
        &fed.token,
        json!({"require_mfa": false, "max_session_age": null, "allowed_auth": "both", "notice": notice}),
    )
    .await
    .expect(StatusCode::OK);
    // On the login page for the organization …
    let page = app
        .get(&format!("/account/login?org={}", fed.org))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(notice), "{page}");
    // … and before the browser is sent to the provider: a page to acknowledge it.
    let plain = app.get("/account/login").await.text().await.unwrap();
    assert!(!plain.contains(notice));
    let b = browser();
    let csrf = super::login_csrf(app, &b).await;
    let res = b
        .post(app.url("/account/login/federated"))
        .form(&[("email", "alice@corp.test"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(page.contains(notice), "{page}");
    let fields = form_fields(&page);
    assert!(
        fields
            .iter()
            .any(|(n, v)| n == "acknowledged" && v == "yes")
    );
    let res = b
        .post(app.url("/account/login/federated"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(crate::helpers::location(&res).starts_with(&fed.idp.issuer));
    // The cookie that binds the sign-in to this browser: HttpOnly, Lax (it must come
    // back with the provider's cross-site redirect), on `/` (as `__Host-` needs on https).
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("pw_federation="))
        .unwrap();
    for part in ["HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(format!("{cookie};").contains(part), "{cookie}");
    }
    // An address of no federated domain is told to use its password.
    let res = b
        .post(app.url("/account/login/federated"))
        .form(&[("email", "someone@example.com"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("password"));
}
