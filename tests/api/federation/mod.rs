//! Federated sign-in per organization against a real OpenID provider (Node's
//! `oidc-provider`, [`peers::Idp`]) and real DNS ([`peers::Dns`]): configuring the
//! provider and proving the domain, signing in (plain HTTP here, Chromium in
//! `browser`), every refusal of a bad answer, leavers, and the organization's policy.

mod browser;
mod peers;
mod policy;

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{ALL_SCOPES, TestApp, TestUser, browser, form_fields, location};
use peers::{CLIENT_ID, CLIENT_SECRET, Dns, Idp};
use printworks::ServiceSet;

const CALLBACK: &str = "/account/login/federated/callback";

/// An app whose DNS lookups go to `dns`, an admin and their organization.
pub struct Fed {
    pub app: TestApp,
    pub dns: Dns,
    pub idp: Idp,
    pub org: Uuid,
    pub token: String,
}

impl Fed {
    /// Printworks, the provider on `idp_host`, and an organization with nothing
    /// configured yet.
    pub async fn new(pool: PgPool, idp_host: &str) -> Self {
        let dns = Dns::start().await;
        let idp = Idp::start(idp_host);
        let addr = dns.addr;
        let app = TestApp::spawn_with(pool, &ServiceSet::all(), move |s| {
            s.org.dns_server = Some(addr);
            // The test provider runs on this machine.
            s.account.federation_allow_loopback = true;
        })
        .await;
        let (admin, org) = app.admin_with_org().await;
        let token = app.access_token(&admin, ALL_SCOPES).await;
        Self {
            app,
            dns,
            idp,
            org,
            token,
        }
    }

    /// … with the provider configured for `domain`, the domain proven.
    pub async fn configured(pool: PgPool, idp_host: &str, domain: &str, enforced: bool) -> Self {
        let fed = Self::new(pool, idp_host).await;
        fed.configure(fed.org, &fed.token, domain, enforced)
            .await
            .expect(StatusCode::OK);
        fed.prove(fed.org, &fed.token, domain).await;
        fed
    }

    pub async fn configure(
        &self,
        org: Uuid,
        token: &str,
        domain: &str,
        enforced: bool,
    ) -> crate::helpers::Answer {
        self.configure_domains(org, token, &[domain], enforced)
            .await
    }

    /// `PUT …/sso` with the test provider, its client and secret, and `domains`.
    pub async fn configure_domains(
        &self,
        org: Uuid,
        token: &str,
        domains: &[&str],
        enforced: bool,
    ) -> crate::helpers::Answer {
        let body = json!({
            "issuer": self.idp.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "domains": domains, "default_role": "member", "enforced": enforced,
        });
        self.app
            .call(
                Method::PUT,
                &format!("/org/v1/organizations/{org}/sso"),
                Some(token),
                Some(&body),
            )
            .await
    }

    /// Publishes the TXT record the configuration asks for and has it checked.
    pub async fn prove(&self, org: Uuid, token: &str, domain: &str) {
        let sso = self.sso(org, token).await;
        let d = sso["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == domain)
            .unwrap()
            .clone();
        self.dns
            .txt(
                d["txt_name"].as_str().unwrap(),
                d["txt_value"].as_str().unwrap(),
            )
            .await;
        let res = self.verify(org, token, domain).await.expect(StatusCode::OK);
        assert!(
            res.body["domains"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["domain"] == domain && d["status"] == "verified")
        );
    }

    pub async fn verify(&self, org: Uuid, token: &str, domain: &str) -> crate::helpers::Answer {
        self.app
            .call(
                Method::POST,
                &format!("/org/v1/organizations/{org}/sso/domains/{domain}/verify"),
                Some(token),
                None,
            )
            .await
    }

    pub async fn sso(&self, org: Uuid, token: &str) -> Value {
        self.app
            .call(
                Method::GET,
                &format!("/org/v1/organizations/{org}/sso"),
                Some(token),
                None,
            )
            .await
            .expect(StatusCode::OK)
            .body
    }

    /// Signs in as `login` at the provider (password `LOGIN-password`), starting from
    /// Printworks' login page with `email`, over plain HTTP with a cookie jar.
    pub async fn sign_in(&self, email: &str, login: &str) -> SignIn {
        let b = browser();
        let callback = self.to_callback(&b, email, login).await;
        let res = b.get(&callback).send().await.unwrap();
        let status = res.status();
        let to = res
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        let body = res.text().await.unwrap();
        SignIn {
            browser: b,
            callback,
            status,
            to,
            body,
        }
    }

    /// Through the login page and the provider's form up to the callback URL the
    /// provider sends the browser to (not followed).
    pub async fn to_callback(&self, b: &reqwest::Client, email: &str, login: &str) -> String {
        let csrf = login_csrf(&self.app, b).await;
        // The login form with its password left empty starts single sign-on.
        let res = b
            .post(self.app.url("/account/login"))
            .form(&[
                ("email", email),
                ("password", ""),
                ("csrf", &csrf),
                ("return_to", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::SEE_OTHER,
            "{}",
            res.text().await.unwrap()
        );
        let mut url = location(&res);
        assert!(url.starts_with(&self.idp.issuer), "{url}");
        for _ in 0..10 {
            let res = b.get(&url).send().await.unwrap();
            if res.status().is_redirection() {
                let next = join(&url, &location(&res));
                if next.starts_with(&self.app.url(CALLBACK)) {
                    return next;
                }
                url = next;
                continue;
            }
            let html = res.text().await.unwrap();
            let action = html
                .split("action=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_else(|| panic!("the provider's login form: {html}"));
            let res = b
                .post(join(&url, action))
                .form(&[("login", login), ("password", &format!("{login}-password"))])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
            url = join(&url, &location(&res));
        }
        panic!("the provider never sent the browser back");
    }
}

fn join(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

pub struct SignIn {
    pub browser: reqwest::Client,
    pub callback: String,
    pub status: StatusCode,
    pub to: Option<String>,
    pub body: String,
}

impl SignIn {
    /// Signed in: sent on, and the session cookie works.
    pub async fn me(&self, app: &TestApp) -> Value {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{}", self.body);
        assert_eq!(self.to.as_deref(), Some("/account/"));
        let res = self
            .browser
            .get(app.url("/account/v1/users/me"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// Refused: the page says so and nobody is signed in.
    pub async fn refused(&self, app: &TestApp) {
        assert!(
            self.status.is_client_error(),
            "expected a refusal, got {} {:?}",
            self.status,
            self.to
        );
        assert!(
            self.body.contains("Sign-in refused") || self.body.contains("expired"),
            "{}",
            self.body
        );
        assert_eq!(
            session_status(app, &self.browser).await,
            StatusCode::UNAUTHORIZED
        );
    }

    /// Signed in (as [`SignIn::me`]): the person, with the browser holding the session.
    pub async fn user(self, app: &TestApp) -> TestUser {
        let me = self.me(app).await;
        TestUser {
            id: Uuid::parse_str(me["id"].as_str().unwrap()).unwrap(),
            email: me["email"].as_str().unwrap().to_owned(),
            browser: self.browser,
        }
    }
}

/// The CSRF token of the login page, as `b` gets it (with its cookie).
pub async fn login_csrf(app: &TestApp, b: &reqwest::Client) -> String {
    let page = b
        .get(app.url("/account/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    form_fields(&page)
        .into_iter()
        .find(|(n, _)| n == "csrf")
        .unwrap()
        .1
}

/// What `/account/v1/users/me` answers `b`: whether its session still stands.
pub async fn session_status(app: &TestApp, b: &reqwest::Client) -> StatusCode {
    b.get(app.url("/account/v1/users/me"))
        .send()
        .await
        .unwrap()
        .status()
}

/// What `POST /oauth/token` answers a refresh of the CLI's `refresh_token`.
async fn refresh_status(app: &TestApp, refresh_token: &str) -> StatusCode {
    app.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", crate::helpers::CLI),
    ])
    .await
    .status()
}

/// How many federated sign-ins the audit log records as refused for `reason`.
async fn refused_for(app: &TestApp, reason: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events
         WHERE action = 'session.federated_login' AND outcome = 'failure'
           AND record::jsonb #>> '{details,reason}' = $1",
    )
    .bind(reason)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Runs `attempt` and checks it was audited as refused for `reason`, once.
macro_rules! refused_once {
    ($app:expr, $reason:expr, $attempt:expr) => {{
        let before = refused_for($app, $reason).await;
        let result = $attempt;
        assert_eq!(
            refused_for($app, $reason).await,
            before + 1,
            "expected one refusal for {}",
            $reason
        );
        result
    }};
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_admin_configures_the_provider_and_proves_the_domain(pool: PgPool) {
    let fed = Fed::new(pool, "127.0.0.1").await;
    let (app, org, token) = (&fed.app, fed.org, fed.token.as_str());
    let put = |body: Value| async move {
        app.call(
            Method::PUT,
            &format!("/org/v1/organizations/{org}/sso"),
            Some(token),
            Some(&body),
        )
        .await
    };
    let good = json!({
        "issuer": fed.idp.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "domains": ["corp.test"], "default_role": "member", "enforced": false,
    });
    // The provider is asked first: each wrong issuer is refused with its reason.
    let port = fed.idp.issuer.rsplit(':').next().unwrap();
    for (issuer, reason) in [
        ("http://127.0.0.1:1".to_owned(), "cannot be reached"),
        // Discovery names http://127.0.0.1:PORT: not the issuer asked for.
        (format!("http://localhost:{port}"), "this machine"),
        (format!("{}/", fed.idp.issuer), "wrong"),
        ("http://example.com".to_owned(), "https"),
        ("not a url".to_owned(), "not a URL"),
    ] {
        let mut body = good.clone();
        body["issuer"] = json!(issuer);
        let res = put(body).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            res.body["type"], "urn:printworks:problem:invalid-identity-provider",
            "{issuer}: {}",
            res.body
        );
        assert!(
            res.body["detail"].as_str().unwrap().contains(reason),
            "{issuer}: {}",
            res.body
        );
    }
    for (field, value) in [
        ("default_role", json!("admin")),
        ("domains", json!([])),
        ("domains", json!(["not a domain"])),
        ("client_id", json!("")),
    ] {
        let mut body = good.clone();
        body[field] = value;
        put(body).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    let mut no_secret = good.clone();
    no_secret.as_object_mut().unwrap().remove("client_secret");
    put(no_secret.clone())
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);

    let res = put(good.clone()).await.expect(StatusCode::OK);
    assert!(res.body.get("client_secret").is_none());
    assert!(!res.body.to_string().contains(CLIENT_SECRET));
    let domain = &res.body["domains"][0];
    assert_eq!(domain["status"], "pending");
    assert_eq!(domain["txt_name"], "_printworks-challenge.corp.test");
    assert!(
        res.body["redirect_uri"]
            .as_str()
            .unwrap()
            .ends_with(CALLBACK)
    );
    // Updating without the secret keeps the stored one.
    put(no_secret).await.expect(StatusCode::OK);
    let sealed: Vec<u8> = sqlx::query_scalar(
        "SELECT client_secret_sealed FROM org_identity_providers WHERE organization_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(
        !sealed
            .windows(CLIENT_SECRET.len())
            .any(|w| w == CLIENT_SECRET.as_bytes())
    );

    // Not proven: no record, then a wrong one; the right one proves it.
    let refused = fed.verify(org, token, "corp.test").await;
    let refused = refused.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.body["type"],
        "urn:printworks:problem:domain-not-proven"
    );
    fed.dns
        .txt(
            "_printworks-challenge.corp.test",
            "printworks-domain-verification=guess",
        )
        .await;
    fed.verify(org, token, "corp.test")
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    fed.verify(org, token, "unclaimed.test")
        .await
        .expect(StatusCode::NOT_FOUND);
    fed.prove(org, token, "corp.test").await;
    // Another client at the provider (or another provider) vouches for nothing the old
    // one proved: its secret again, and the domain proven again.
    let mut other_client = good.clone();
    other_client["client_id"] = json!("printworks-2");
    other_client
        .as_object_mut()
        .unwrap()
        .remove("client_secret");
    put(other_client.clone())
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    other_client["client_secret"] = json!("another-secret");
    let res = put(other_client).await.expect(StatusCode::OK);
    assert_eq!(res.body["domains"][0]["status"], "pending");
    put(good.clone()).await.expect(StatusCode::OK);
    fed.prove(org, token, "corp.test").await;

    // Another organization cannot claim a proven domain, nor prove it.
    let rival = app.new_user("rival").await;
    let rival_org = app.new_org(&rival, "Rival Lab").await;
    let rival_token = app.access_token(&rival, ALL_SCOPES).await;
    let res = fed
        .configure(rival_org, &rival_token, "corp.test", false)
        .await
        .expect(StatusCode::CONFLICT);
    assert_eq!(res.body["type"], "urn:printworks:problem:domain-claimed");

    // Members and guests may not see or change it; other organizations see nothing.
    let member = app.new_user("member").await;
    app.add_member(org, &member, "member").await;
    let member_token = app.access_token(&member, ALL_SCOPES).await;
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/sso"),
        Some(&member_token),
        None,
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/sso"),
        Some(&rival_token),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);

    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, outcome FROM audit_events WHERE organization_id = $1 AND action LIKE 'sso.%' ORDER BY chain_index",
    )
    .bind(org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let has = |a: &str, o: &str| actions.iter().any(|(x, y)| x == a && y == o);
    assert!(has("sso.configured", "success"), "{actions:?}");
    assert!(has("sso.domain_verified", "failure"), "{actions:?}");
    assert!(has("sso.domain_verified", "success"), "{actions:?}");

    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{org}/sso"),
        Some(token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/sso"),
        Some(token),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    // The domain is free again.
    fed.configure(rival_org, &rival_token, "corp.test", false)
        .await
        .expect(StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_person_signs_in_at_their_provider_and_is_made_a_member(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    let first = fed.sign_in("alice@corp.test", "alice").await;
    let me = first.me(app).await;
    assert_eq!(me["email"], "alice@corp.test");
    assert_eq!(me["email_verified"], true);
    let alice = Uuid::parse_str(me["id"].as_str().unwrap()).unwrap();
    let role: String = sqlx::query_scalar(
        "SELECT role FROM organization_members WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(fed.org)
    .bind(alice)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(role, "member");
    // Just-in-time provisioning, the membership and the sign-in are audited.
    for action in ["user.provisioned", "member.provisioned", "session.login"] {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE action = $1 AND actor_id = $2 AND outcome = 'success'",
        )
        .bind(action)
        .bind(alice.to_string())
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(n, 1, "{action}");
    }

    // The provider's `sub` is who they are: a new address is still alice.
    fed.idp
        .put_user("sub-alice", json!({"email": "alice.smith@corp.test"}))
        .await;
    let again = fed.sign_in("alice.smith@corp.test", "alice").await;
    assert_eq!(again.me(app).await["id"], alice.to_string());

    // Another person at the provider with alice's old address is not alice.
    fed.idp
        .put_user(
            "sub-mallory",
            json!({"login": "mallory", "email": "alice@corp.test", "password": "mallory-password"}),
        )
        .await;
    refused_once!(app, "email_of_another_identity", {
        fed.sign_in("alice@corp.test", "mallory")
            .await
            .refused(app)
            .await
    });
    let identities: i64 =
        sqlx::query_scalar("SELECT count(*) FROM federated_identities WHERE user_id = $1")
            .bind(alice)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(identities, 1);

    // Once the organization no longer proves alice's domain, its provider signs her in
    // no more, even though it linked her before (here the sign-in starts from an
    // address of a domain it still proves).
    fed.configure_domains(fed.org, &fed.token, &["corp.test", "lab.test"], false)
        .await
        .expect(StatusCode::OK);
    fed.prove(fed.org, &fed.token, "lab.test").await;
    fed.configure_domains(fed.org, &fed.token, &["lab.test"], false)
        .await
        .expect(StatusCode::OK);
    refused_once!(app, "domain_not_proven", {
        fed.sign_in("someone@lab.test", "alice")
            .await
            .refused(app)
            .await
    });

    // The OAuth flows work for them as for anyone: a token, and the organization.
    let user = TestUser {
        id: alice,
        email: "alice@corp.test".into(),
        browser: first.browser,
    };
    let token = app.access_token(&user, ALL_SCOPES).await;
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{}", fed.org),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_defective_answer_is_refused_and_signs_no_one_in(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    // Each defect of the ID token, once: the token was fetched (nothing pending after)
    // and refused for exactly its reason.
    for (mode, reason) in [
        ("wrong-aud", "id_token_audience"),
        ("wrong-iss", "id_token_issuer"),
        ("expired", "id_token_expired"),
        ("bad-signature", "id_token_signature"),
        ("unknown-kid", "id_token_signature"),
        ("alg-none", "id_token_signature"),
        ("no-nonce", "id_token_nonce"),
        ("wrong-nonce", "id_token_nonce"),
    ] {
        fed.idp.tamper(mode).await;
        refused_once!(app, reason, {
            fed.sign_in("alice@corp.test", "alice")
                .await
                .refused(app)
                .await
        });
        assert_eq!(fed.idp.pending_tamper().await["once"], json!([]), "{mode}");
    }
    // Unverified address (bob), disabled account (carol, a leaver).
    refused_once!(app, "email_unverified", {
        fed.sign_in("bob@corp.test", "bob").await.refused(app).await
    });
    let carol = refused_once!(app, "provider_error", {
        fed.sign_in("carol@corp.test", "carol").await
    });
    carol.refused(app).await;
    assert!(carol.body.contains("refused the sign-in"), "{}", carol.body);
    // An address outside the proven domains, vouched for by the provider all the same.
    fed.idp
        .put_user(
            "sub-eve",
            json!({"login": "eve", "email": "eve@elsewhere.test", "password": "eve-password"}),
        )
        .await;
    refused_once!(app, "domain_not_proven", {
        fed.sign_in("alice@corp.test", "eve")
            .await
            .refused(app)
            .await
    });
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE '%.test'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 0, "nobody was provisioned by a refused answer");

    // A replayed answer: the provider hands the same tokens out again for a spent code
    // (replay-codes), so only Printworks' single-use `state` stands in the way.
    fed.idp.tamper("replay-codes").await;
    let first = fed.sign_in("alice@corp.test", "alice").await;
    first.me(app).await;
    let replay = refused_once!(app, "unknown_state", {
        first.browser.get(&first.callback).send().await.unwrap()
    });
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    // … nor from another browser, which never had the cookie that binds the sign-in.
    let b = browser();
    let callback = fed.to_callback(&b, "alice@corp.test", "alice").await;
    let stranger = browser();
    let res = refused_once!(app, "other_browser", {
        stranger.get(&callback).send().await.unwrap()
    });
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // An answer naming another issuer (RFC 9207 mix-up) is refused before any code is
    // spent.
    let callback = fed.to_callback(&b, "alice@corp.test", "alice").await;
    let mixed = callback.replace("iss=", "iss=http%3A%2F%2Fevil.test&was=");
    let res = refused_once!(app, "issuer_mismatch", {
        b.get(&mixed).send().await.unwrap()
    });
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rotated_provider_keys_are_fetched_again(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    fed.sign_in("alice@corp.test", "alice")
        .await
        .me(&fed.app)
        .await;
    // Past the refresh interval, the old keys retired: a token with a new `kid`.
    fed.app.clock.advance(time::Duration::seconds(11));
    fed.idp.rotate(true).await;
    fed.sign_in("alice@corp.test", "alice")
        .await
        .me(&fed.app)
        .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_enforced_provider_refuses_passwords_and_links_the_existing_account(pool: PgPool) {
    let fed = Fed::new(pool, "127.0.0.1").await;
    let app = &fed.app;
    // dave had a password account before his organization turned federation on.
    let res = app
        .sign_up("dave@corp.test", crate::helpers::PASSWORD)
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let dave: Value = res.json().await.unwrap();
    app.login("dave@corp.test", crate::helpers::PASSWORD).await;
    fed.configure(fed.org, &fed.token, "corp.test", true)
        .await
        .expect(StatusCode::OK);
    // Not proven yet: passwords still work.
    app.login("dave@corp.test", crate::helpers::PASSWORD).await;
    fed.prove(fed.org, &fed.token, "corp.test").await;

    let res = crate::helpers::client()
        .post(app.url("/account/v1/sessions"))
        .json(&json!({"email": "Dave@Corp.test", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    let problem = crate::helpers::expect_problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(
        problem["type"],
        "urn:printworks:problem:federation-required"
    );
    // The page says the same, in words.
    let b = browser();
    let csrf = login_csrf(app, &b).await;
    let res = b
        .post(app.url("/account/login"))
        .form(&[
            ("email", "dave@corp.test"),
            ("password", crate::helpers::PASSWORD),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("single sign-on"));

    // Through the provider, dave is the same person as before.
    let me = fed.sign_in("dave@corp.test", "dave").await.me(app).await;
    assert_eq!(me["id"], dave["id"]);
    let linked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'user.federation_linked'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(linked, 1);
    // Others keep their passwords.
    app.new_user("outside").await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_leaver_loses_access(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    let alice = fed
        .sign_in("alice@corp.test", "alice")
        .await
        .user(app)
        .await;
    let tokens = app
        .cli_tokens(&alice, &format!("{ALL_SCOPES} offline_access"))
        .await;
    // Refreshing works while the session stands (each use gives a new refresh token).
    let res = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", crate::helpers::CLI),
        ])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let refreshed: Value = res.json().await.unwrap();
    let refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();

    // Disabled at the provider: the next sign-in there is refused.
    fed.idp
        .put_user("sub-alice", json!({"disabled": true}))
        .await;
    fed.sign_in("alice@corp.test", "alice")
        .await
        .refused(app)
        .await;

    // The session from the provider ends at the federated maximum (12 h), and the
    // refresh tokens issued through it end with it.
    app.clock
        .advance(time::Duration::hours(12) + time::Duration::seconds(1));
    assert_eq!(
        session_status(app, &alice.browser).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(refresh_status(app, &refresh).await, StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_admin_signs_a_managed_member_out_everywhere(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    let alice = fed
        .sign_in("alice@corp.test", "alice")
        .await
        .user(app)
        .await;
    let refresh = app
        .cli_tokens(&alice, &format!("{ALL_SCOPES} offline_access"))
        .await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (org, token) = (fed.org, fed.token.as_str());
    let sign_out = |user: Uuid| {
        let path = format!("/org/v1/organizations/{org}/members/{user}/sessions");
        async move { app.call(Method::DELETE, &path, Some(token), None).await }
    };
    let res = sign_out(alice.id).await.expect(StatusCode::OK);
    assert_eq!(res.body["ended"], 1);
    assert_eq!(
        session_status(app, &alice.browser).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(refresh_status(app, &refresh).await, StatusCode::BAD_REQUEST);
    // A member whose account is their own (not from the organization's provider, nor
    // in its domain) is not the admin's to sign out.
    let own = app.new_user("own").await;
    app.add_member(fed.org, &own, "member").await;
    sign_out(own.id).await.expect(StatusCode::FORBIDDEN);
    assert_eq!(session_status(app, &own.browser).await, StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_account_squatted_before_the_owner_arrives_is_taken_back(pool: PgPool) {
    let fed = Fed::configured(pool, "127.0.0.1", "corp.test", false).await;
    let app = &fed.app;
    // Someone signs up with erin's address (never confirming it) and signs in.
    let res = app
        .sign_up("erin@corp.test", crate::helpers::PASSWORD)
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let squatter = app.login("erin@corp.test", crate::helpers::PASSWORD).await;
    // erin arrives through her organization's provider: the account is hers now, and
    // nothing the squatter held works any more.
    fed.idp
        .put_user(
            "sub-erin",
            json!({"login": "erin", "email": "erin@corp.test", "password": "erin-password"}),
        )
        .await;
    fed.sign_in("erin@corp.test", "erin").await.me(app).await;
    assert_eq!(
        session_status(app, &squatter).await,
        StatusCode::UNAUTHORIZED
    );
    let res = crate::helpers::client()
        .post(app.url("/account/v1/sessions"))
        .json(&json!({"email": "erin@corp.test", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let reset: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'user.federation_linked'
           AND record::jsonb #>> '{details,account_reset}' = 'true'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(reset, 1);
}
