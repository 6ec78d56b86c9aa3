//! The whole federated sign-in in headless Chromium: the e-mail address on Printworks'
//! login page, the provider's own login form (on another loopback address, so another
//! site, as in production: the cookie that binds the sign-in must survive the
//! cross-site return), back, signed in, a member of the organization.

use printworks_common::db::MIGRATOR;
use sqlx::PgPool;

use super::Fed;
use crate::browser::Browser;

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_person_signs_in_with_their_corporate_account_in_a_browser(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.3", "corp.test", true).await;
    let app = &fed.app;
    let browser = Browser::start().await;
    browser.goto(&app.url("/account/login")).await;
    browser.fill("#email", "alice@corp.test").await;
    browser.click("#sign-in-sso").await;
    // The provider's page, on its own site; the login is prefilled from login_hint.
    let at = browser.url().await;
    assert!(at.as_str().starts_with(&fed.idp.issuer), "{at}");
    browser.fill("#password", "alice-password").await;
    browser.click("#submit").await;
    let at = browser.url().await;
    assert_eq!(at.as_str(), app.url("/account/"), "{at}");
    assert_eq!(
        browser.text("#message").await,
        "Signed in as alice@corp.test."
    );
    let role: String = sqlx::query_scalar(
        "SELECT m.role FROM organization_members m JOIN users u ON u.id = m.user_id
         WHERE m.organization_id = $1 AND u.email = 'alice@corp.test'",
    )
    .bind(fed.org)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(role, "member");
    browser.close().await;
}
