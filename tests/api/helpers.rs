//! The one place tests get a running Printworks from: [`TestApp::spawn`] serves the real
//! application on a random loopback port, over real HTTP, against the fresh database
//! `#[sqlx::test]` made for the test. Request helpers that several tests need (sign up,
//! log in, get a token through the real OAuth flow, ...) live here too.

#![allow(dead_code)] // not every test binary module uses every helper

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use printworks::{Application, ServiceSet};
use printworks_common::clock::Clock as _;
use printworks_common::clock::ManualClock;
use printworks_common::clock::SharedClock;
use printworks_common::crypto::{base64url, random_token, sha256};
use printworks_common::http::REQUEST_ID_HEADER;
use printworks_common::settings::PublicUrl;
use printworks_common::{AppContext, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A password that passes the policy.
pub const PASSWORD: &str = "violet-lantern 93 orbit quince";
/// The first-party client that exists out of the box.
pub const CLI: &str = "printworks-cli";
/// A loopback redirect of a native app (any port matches the registered one).
pub const CLI_REDIRECT: &str = "http://127.0.0.1:53682/callback";

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    /// The application's clock: move it instead of sleeping.
    pub clock: Arc<ManualClock>,
    pub db: PgPool,
    /// The printer endpoint (mutual TLS), when the relay service runs.
    pub printer_addr: Option<SocketAddr>,
    /// The data directory, removed when the test ends.
    pub data_dir: tempfile::TempDir,
    /// The data directory the app runs with (`data_dir`, unless the test gave another).
    pub data_path: std::path::PathBuf,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Settings that believe `X-Forwarded-For` from 127.0.0.1, so a test can speak from
/// many addresses ([`TestApp::call_from`]).
pub fn trusting_loopback_proxy(s: &mut Settings) {
    s.trusted_proxies = vec!["127.0.0.1/32".parse().expect("loopback network")];
}

/// Settings for a test: defaults, the given data directory, no practical per-address
/// rate limit (every test client is 127.0.0.1; the limit has its own test).
/// A context like the binary's, on `pool`: tokens verified with the account service's
/// published keys.
pub async fn test_context(pool: &PgPool, settings: Settings, clock: SharedClock) -> AppContext {
    let keys = std::sync::Arc::new(printworks_account::keys::Published(pool.clone()));
    AppContext::new(pool.clone(), settings, clock, keys)
        .await
        .expect("context")
}

pub fn test_settings(data_dir: &Path) -> Settings {
    let mut s = Settings::defaults();
    s.http_addr = "127.0.0.1:0".parse().expect("loopback address");
    s.data_dir = data_dir.to_path_buf();
    s.auth_rate_limit_per_minute = 1_000_000;
    s.printer_addr = "127.0.0.1:0".parse().expect("loopback address");
    s
}

impl TestApp {
    /// Every service, default settings.
    pub async fn spawn(db: PgPool) -> Self {
        Self::spawn_with(db, &ServiceSet::all(), |_| {}).await
    }

    /// Chosen services, settings adjusted by `configure`.
    pub async fn spawn_with(
        db: PgPool,
        services: &ServiceSet,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            // `TEST_LOG=debug cargo test ...` shows the server's logs.
            let _ = printworks_common::telemetry::init(
                printworks_common::settings::LogFormat::Human,
                &filter,
            );
        }
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut settings = test_settings(data_dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let base = format!("http://{addr}");
        settings.public_url = PublicUrl::parse_setting(&base).expect("public URL");
        configure(&mut settings);
        let data_path = settings.data_dir.clone();
        let clock = ManualClock::starting_now();
        let app = Application::build_on(listener, settings, services, db.clone(), clock.clone())
            .await
            .expect("build application");
        let shutdown = app.shutdown_token();
        let printer_addr = app.printer_addr();
        let server = tokio::spawn(app.run());
        Self {
            addr,
            base,
            client: client(),
            clock,
            db,
            printer_addr,
            data_dir,
            data_path,
            shutdown,
            server: Some(server),
        }
    }

    /// A handle on a Printworks that runs elsewhere (a `printworks serve` process) at
    /// `base`, on `db`, keeping its data in `data_path`, so that the helpers below (sign
    /// up, tokens, jobs, ...) work against it. Its clock is the process's own.
    pub fn attach(base: &str, db: PgPool, data_path: &Path) -> Self {
        let addr: SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .expect("http://address:port");
        Self {
            addr,
            base: base.to_owned(),
            client: client(),
            clock: ManualClock::starting_now(),
            db,
            printer_addr: None,
            data_dir: tempfile::tempdir().expect("temporary directory"),
            data_path: data_path.to_path_buf(),
            shutdown: CancellationToken::new(),
            server: None,
        }
    }

    /// The application's current time.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the server")
    }

    /// Starts a graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    // ---- people -----------------------------------------------------------------------

    pub async fn sign_up(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/account/v1/users"))
            .json(&json!({ "email": email, "password": password, "display_name": "Test Person" }))
            .send()
            .await
            .expect("sign up")
    }

    /// Logs in with the JSON API; the returned browser holds the session cookie.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Client {
        let browser = browser();
        let res = browser
            .post(self.url("/account/v1/sessions"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("log in");
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "{}",
            res.text().await.unwrap_or_default()
        );
        browser
    }

    /// A new person with a unique address, signed up (the address confirmed through
    /// the link e-mailed to it) and logged in.
    pub async fn new_user(&self, label: &str) -> TestUser {
        let user = self.new_unverified_user(label).await;
        let link = self.verification_link(&user.email).await;
        let res = self
            .client
            .get(&link)
            .send()
            .await
            .expect("follow the link");
        assert_eq!(res.status(), StatusCode::OK, "{link}");
        user
    }

    /// A new person, signed up and logged in, who has not followed the link yet.
    pub async fn new_unverified_user(&self, label: &str) -> TestUser {
        let email = format!(
            "{label}-{}@example.com",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let res = self.sign_up(&email, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.expect("user");
        let id = Uuid::parse_str(body["id"].as_str().expect("id")).expect("uuid");
        let browser = self.login(&email, PASSWORD).await;
        TestUser { id, email, browser }
    }

    /// The newest e-mail to `to` whose topic starts with `topic`, as the person reads it:
    /// from the outbox while it waits (its body sealed with the app's master key), or
    /// from the file the development sender wrote once it was sent.
    pub async fn mail_to(&self, to: &str, topic: &str) -> String {
        let secrets =
            printworks_common::crypto::SecretBox::from_settings(&test_settings(&self.data_path))
                .expect("the app's master key");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let row: Option<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT id, body_sealed FROM email_outbox WHERE to_address = $1 AND topic LIKE $2
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(to)
            .bind(format!("{topic}%"))
            .fetch_optional(&self.db)
            .await
            .expect("outbox");
            if let Some((id, Some(sealed))) = &row
                && let Some(body) = secrets.open(&format!("email:{id}"), sealed)
            {
                return String::from_utf8(body).expect("UTF-8 body");
            }
            let sent = std::fs::read_dir(self.data_path.join("mail"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find(|m| m.starts_with(&format!("To: {to}\r\n")));
            if let Some(m) = sent {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no e-mail about {topic} to {to}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The address-confirmation link e-mailed to `email`.
    pub async fn verification_link(&self, email: &str) -> String {
        let mail = self.mail_to(email, "verify-email:").await;
        mail.split_whitespace()
            .find(|w| w.contains("/account/verify-email?token="))
            .expect("a link in the e-mail")
            .to_owned()
    }

    /// The same person, signed in afresh (after their session ended or idled out).
    pub async fn relogin(&self, user: &TestUser) -> TestUser {
        TestUser {
            id: user.id,
            email: user.email.clone(),
            browser: self.login(&user.email, PASSWORD).await,
        }
    }

    // ---- OAuth ------------------------------------------------------------------------

    /// `GET /oauth/authorize` in the user's browser; returns the response (a redirect to
    /// the client with a code, a consent page, ...).
    pub async fn authorize(&self, user: &TestUser, params: &[(&str, &str)]) -> reqwest::Response {
        user.browser
            .get(self.url("/oauth/authorize"))
            .query(params)
            .send()
            .await
            .expect("authorize")
    }

    /// [`TestApp::authorize`], approving the consent page when one is shown: the
    /// redirect a person who agrees ends with.
    pub async fn authorize_approving(
        &self,
        user: &TestUser,
        params: &[(&str, &str)],
    ) -> reqwest::Response {
        let res = self.authorize(user, params).await;
        if res.status() != StatusCode::OK {
            return res;
        }
        let page = res.text().await.expect("consent page");
        assert!(page.contains("decision"), "not a consent page: {page}");
        self.decide(user, &page, "approve").await
    }

    /// Registers an OAuth client for `org` as `admin` (`body` without its organization).
    pub async fn register_client(
        &self,
        admin: &TestUser,
        org: Uuid,
        mut body: serde_json::Value,
    ) -> reqwest::Response {
        body["organization_id"] = serde_json::json!(org);
        admin
            .browser
            .post(self.url("/account/v1/clients"))
            .json(&body)
            .send()
            .await
            .expect("client registration")
    }

    /// What `/oauth/introspect` says of `token` to the client `id` (which must be let in).
    pub async fn introspect(&self, id: &str, secret: &str, token: &str) -> serde_json::Value {
        let res = self
            .client
            .post(self.url("/oauth/introspect"))
            .basic_auth(id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection");
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.expect("introspection JSON")
    }

    /// Posts the consent form of `page` (as the person's browser) with `decision`
    /// (`approve` or `deny`).
    pub async fn decide(&self, user: &TestUser, page: &str, decision: &str) -> reqwest::Response {
        let mut fields = form_fields(page);
        fields.push(("decision".into(), decision.into()));
        user.browser
            .post(self.url("/oauth/authorize"))
            .header("origin", self.base.as_str())
            .form(&fields)
            .send()
            .await
            .expect("consent decision")
    }

    /// The authorization code flow with PKCE for the first-party CLI client (approving
    /// the consent page when it is asked); returns the token response.
    pub async fn cli_tokens(&self, user: &TestUser, scope: &str) -> Value {
        let pkce = Pkce::new();
        // The CLI is a public client: the first time (and for new scopes) it asks.
        let res = self
            .authorize_approving(
                user,
                &[
                    ("response_type", "code"),
                    ("client_id", CLI),
                    ("redirect_uri", CLI_REDIRECT),
                    ("scope", scope),
                    ("state", "st4te"),
                    ("code_challenge", &pkce.challenge),
                    ("code_challenge_method", "S256"),
                ],
            )
            .await;
        let code = code_from_redirect(&res, CLI_REDIRECT);
        let res = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CLI_REDIRECT),
                ("client_id", CLI),
                ("code_verifier", &pkce.verifier),
            ])
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.expect("token response")
    }

    /// An access token for `user` with `scope`, through the real flow.
    pub async fn access_token(&self, user: &TestUser, scope: &str) -> String {
        self.cli_tokens(user, scope).await["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// `POST /oauth/token` with `grant_type=client_credentials`, the client
    /// authenticating with HTTP Basic.
    pub async fn client_credentials(&self, id: &str, secret: &str) -> reqwest::Response {
        self.client
            .post(self.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request")
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(self.url("/oauth/token"))
            .form(form)
            .send()
            .await
            .expect("token request")
    }

    /// Creates an organization as `user`; returns its id.
    pub async fn new_org(&self, user: &TestUser, name: &str) -> Uuid {
        let token = self.access_token(user, "organization.write").await;
        let res = self
            .client
            .post(self.url("/org/v1/organizations"))
            .bearer_auth(&token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("create organization");
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.expect("organization");
        Uuid::parse_str(body["id"].as_str().expect("id")).expect("uuid")
    }

    /// Adds `user` to `org` with `role`, directly in the database (the invitation flow
    /// has its own tests).
    pub async fn add_member(&self, org: Uuid, user: &TestUser, role: &str) {
        self.add_member_id(org, user.id, role).await;
    }

    pub async fn add_member_id(&self, org: Uuid, user: Uuid, role: &str) {
        sqlx::query(
            "INSERT INTO organization_members (organization_id, user_id, role, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(org)
        .bind(user)
        .bind(role)
        .bind(self.now())
        .execute(&self.db)
        .await
        .expect("add member");
    }

    /// A person who exists but never signs in (a target of other people's actions),
    /// written directly to the database: no password hashing, so tables of many cases
    /// stay fast.
    pub async fn insert_person(&self, label: &str) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (id, email, display_name, password_hash, created_at, updated_at)
             VALUES ($1, $2, $3, '!', $4, $4)",
        )
        .bind(id)
        .bind(format!("{label}-{}@example.com", id.simple()))
        .bind(label)
        .bind(self.now())
        .execute(&self.db)
        .await
        .expect("insert person");
        id
    }

    /// A printer in `org`, as pairing registers one when it is claimed.
    pub async fn register_printer(&self, org: Uuid, claimed_by: Uuid, name: &str) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO printers (id, organization_id, name, model, serial, claimed_by, created_at)
             VALUES ($1, $2, $3, 'S5', 'SN-1', $4, $5)",
        )
        .bind(id)
        .bind(org)
        .bind(name)
        .bind(claimed_by)
        .bind(self.clock.now())
        .execute(&self.db)
        .await
        .expect("register printer");
        id
    }

    /// A person and the organization they created ("Fab Lab"), of which they are the
    /// admin.
    pub async fn admin_with_org(&self) -> (TestUser, Uuid) {
        let admin = self.new_user("admin").await;
        let org = self.new_org(&admin, "Fab Lab").await;
        (admin, org)
    }

    /// Shares `printer` with each of `users` directly.
    pub async fn share_printer(&self, printer: Uuid, users: &[Uuid]) {
        for user in users {
            sqlx::query(
                "INSERT INTO printer_shares (printer_id, grantee_type, grantee_id, created_at)
                 VALUES ($1, 'user', $2, $3)",
            )
            .bind(printer)
            .bind(user)
            .bind(self.now())
            .execute(&self.db)
            .await
            .expect("share the printer");
        }
    }

    /// A JSON request with an optional bearer token; the response is checked against the
    /// OpenAPI document (status documented, body valid) before it is returned.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        self.call_from(None, method, path, token, body).await
    }

    /// [`TestApp::call`] as if from `addr` (`X-Forwarded-For`, believed when the app
    /// trusts 127.0.0.1 as a proxy: see [`trusting_loopback_proxy`]).
    pub async fn call_from(
        &self,
        addr: Option<&str>,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut req = self.client.request(method.clone(), self.url(path));
        if let Some(addr) = addr {
            req = req.header("x-forwarded-for", addr);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.expect("request reaches the server");
        Answer::checked(&method, path, res).await
    }
}

/// A checked response: its status and JSON body (`null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// Reads `res` to the end and checks it against the OpenAPI document (status
    /// documented, body valid) for `method` and `path`.
    async fn checked(method: &Method, path: &str, res: reqwest::Response) -> Self {
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        crate::openapi::spec().check(method, path, status, content_type.as_deref(), &body);
        Self { status, body }
    }

    /// The `id` field of the body.
    pub fn id(&self) -> Uuid {
        Uuid::parse_str(self.body["id"].as_str().expect("id")).expect("uuid")
    }

    /// Asserts the status (with the body in the message) and returns self.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "{}", self.body);
        self
    }
}

/// A printer paired through the real flow: its key, and what it collected.
#[derive(Clone)]
pub struct TestPrinter {
    pub id: Uuid,
    pub org: Uuid,
    pub key_pem: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub shared_secret: String,
    pub printer_url: String,
    pub job_signing_key: String,
    pub job_signing_key_id: String,
}

impl TestPrinter {
    /// Its credentials kept in a state directory, as the agent keeps them.
    pub fn state_dir(&self, dir: &Path, server: &str) -> printworks_agent::StateDir {
        let state = printworks_agent::StateDir::new(dir);
        let credentials = printworks_common::printer::Credentials {
            printer_id: self.id,
            organization_id: self.org,
            organization_name: "Fab Lab".into(),
            shared_secret: self.shared_secret.clone(),
            certificate_pem: self.certificate_pem.clone(),
            ca_chain_pem: self.ca_pem.clone(),
            printer_url: self.printer_url.clone(),
            job_signing_key: self.job_signing_key.clone(),
            job_signing_key_id: self.job_signing_key_id.clone(),
        };
        state
            .save_paired(&self.key_pem, &credentials, server)
            .expect("save the printer's state");
        state
    }

    /// An HTTP client for the printer endpoint, with this printer's certificate.
    pub fn client(&self) -> reqwest::Client {
        let dir = tempfile::tempdir().expect("temporary directory");
        let saved = self
            .state_dir(&dir.path().join("p"), "http://unused")
            .load()
            .expect("load");
        printworks_agent::printer_client(&saved).expect("printer client")
    }
}

/// The DER of a CSR in PEM.
pub fn csr_der(csr_pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).expect("CSR PEM");
    pem.contents
}

/// A fresh ECDSA P-256 key and a CSR for it (PEM), as a printer makes them.
pub fn printer_key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}

impl TestApp {
    /// `POST /pairing/v1/requests` as a printer.
    pub async fn request_pairing(&self, serial: &str, csr_pem: &str) -> Answer {
        self.request_pairing_with(serial, csr_pem, None).await
    }

    /// `POST /pairing/v1/requests` as a printer, proving its previous identity when
    /// `previous` is given (`{printer_id, challenge, proof}`).
    pub async fn request_pairing_with(
        &self,
        serial: &str,
        csr_pem: &str,
        previous: Option<Value>,
    ) -> Answer {
        let mut body = json!({
            "serial": serial,
            "model": "Ultimaker S5",
            "firmware_version": "9.1.2",
            "csr_pem": csr_pem,
        });
        if let Some(previous) = previous {
            body["previous"] = previous;
        }
        self.call(Method::POST, "/pairing/v1/requests", None, Some(&body))
            .await
    }

    /// A challenge for proving `printer`'s shared secret.
    /// A team of `org` named `name`, made with `token`.
    pub async fn create_team(&self, org: Uuid, token: &str, name: &str) -> Uuid {
        self.call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/teams"),
            Some(token),
            Some(&serde_json::json!({ "name": name })),
        )
        .await
        .expect(StatusCode::CREATED)
        .id()
    }

    pub async fn printer_challenge(&self, printer: Uuid) -> String {
        self.printer_challenge_from(None, printer).await
    }

    /// [`TestApp::printer_challenge`] as if from `addr` (see [`TestApp::call_from`]).
    pub async fn printer_challenge_from(&self, addr: Option<&str>, printer: Uuid) -> String {
        let res = self
            .call_from(
                addr,
                Method::POST,
                &format!("/pairing/v1/printers/{printer}/challenge"),
                None,
                None,
            )
            .await
            .expect(StatusCode::CREATED);
        res.body["challenge"]
            .as_str()
            .expect("challenge")
            .to_owned()
    }

    /// `previous` for a pairing request with `csr_pem`: a fresh challenge and the proof
    /// of `printer`'s shared secret over it and the CSR.
    pub async fn repair_previous(&self, printer: &TestPrinter, csr_pem: &str) -> Value {
        let challenge = self.printer_challenge(printer.id).await;
        let proof = printworks_common::printer::repair_proof(
            &printer.shared_secret,
            printer.id,
            &challenge,
            &csr_der(csr_pem),
        );
        json!({ "printer_id": printer.id, "challenge": challenge, "proof": proof })
    }

    /// Pairs `printer` again, proving it is the same printer (its shared secret), into
    /// its organization, claimed with `token`.
    pub async fn repair_printer(&self, token: &str, printer: &TestPrinter) -> TestPrinter {
        let (key, csr) = printer_key_and_csr();
        let previous = self.repair_previous(printer, &csr).await;
        let req = self
            .request_pairing_with("SN-again", &csr, Some(previous))
            .await
            .expect(StatusCode::CREATED);
        self.finish_pairing(token, printer.org, &req, key, "Printer again")
            .await
    }

    pub async fn claim(&self, token: &str, org: Uuid, code: &str, name: &str) -> Answer {
        let body = json!({ "organization_id": org, "code": code, "name": name });
        self.call(Method::POST, "/pairing/v1/claims", Some(token), Some(&body))
            .await
    }

    pub async fn poll(&self, request_id: &str, poll_token: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("/pairing/v1/requests/{request_id}/poll"),
            None,
            Some(&json!({ "poll_token": poll_token })),
        )
        .await
    }

    /// Pairs a new printer into `org`, claimed with `token` (printer.write).
    pub async fn pair_printer(&self, token: &str, org: Uuid, serial: &str) -> TestPrinter {
        let (key, csr) = printer_key_and_csr();
        let req = self
            .request_pairing(serial, &csr)
            .await
            .expect(StatusCode::CREATED);
        self.finish_pairing(token, org, &req, key, serial).await
    }

    /// Claims a pairing request `req` (made with `key`'s CSR) into `org` with `token`
    /// under `name`, and collects the printer's credentials.
    pub async fn finish_pairing(
        &self,
        token: &str,
        org: Uuid,
        req: &Answer,
        key: rcgen::KeyPair,
        name: &str,
    ) -> TestPrinter {
        let code = req.body["code"].as_str().expect("code");
        self.claim(token, org, code, name)
            .await
            .expect(StatusCode::CREATED);
        let got = self
            .poll(
                req.body["request_id"].as_str().expect("id"),
                req.body["poll_token"].as_str().expect("token"),
            )
            .await
            .expect(StatusCode::OK);
        let text = |k: &str| got.body[k].as_str().expect(k).to_owned();
        TestPrinter {
            id: Uuid::parse_str(&text("printer_id")).expect("uuid"),
            org,
            key_pem: key.serialize_pem(),
            certificate_pem: text("certificate_pem"),
            ca_pem: text("ca_chain_pem"),
            shared_secret: text("shared_secret"),
            printer_url: text("printer_url"),
            job_signing_key: text("job_signing_key"),
            job_signing_key_id: text("job_signing_key_id"),
        }
    }
}

/// Every scope, for a token that may do anything the caller's role allows.
pub const ALL_SCOPES: &str = "organization.read organization.write printer.read printer.write print_job.read print_job.write audit.read";

impl TestApp {
    /// `POST /relay/v1/printers/{printer}/jobs?name=…` with `body` as the file; checked
    /// against the OpenAPI document like [`TestApp::call`].
    pub async fn submit_job(
        &self,
        token: Option<&str>,
        printer: Uuid,
        name: &str,
        content_type: &str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Answer {
        let path = format!("/relay/v1/printers/{printer}/jobs");
        let mut req = self
            .client
            .post(self.url(&path))
            .query(&[("name", name)])
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let res = req.send().await.expect("upload reaches the server");
        Answer::checked(&Method::POST, &path, res).await
    }

    /// `PATCH …/members/{user} {role}` with `token` (an admin's, to succeed).
    pub async fn set_role(&self, token: &str, org: Uuid, user: Uuid, role: &str) -> Answer {
        self.call(
            Method::PATCH,
            &format!("/org/v1/organizations/{org}/members/{user}"),
            Some(token),
            Some(&serde_json::json!({ "role": role })),
        )
        .await
    }

    /// A G-code job sent with `token`, without an idempotency key.
    pub async fn submit_gcode(
        &self,
        token: &str,
        printer: Uuid,
        name: &str,
        body: Vec<u8>,
    ) -> Answer {
        self.submit_job(Some(token), printer, name, "text/x-gcode", body, None)
            .await
    }

    /// Waits (at most `within`) for `/readyz` to answer `want`.
    pub async fn wait_for_readyz(&self, want: StatusCode, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.get("/readyz").await.status();
            if status == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz stayed {status}, not {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most `within`) for the job to reach `state`, watching it as its
    /// owner would; returns the job.
    pub async fn wait_for_job(
        &self,
        token: &str,
        job: Uuid,
        state: &str,
        within: std::time::Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let res = self
                .call(
                    Method::GET,
                    &format!("/relay/v1/jobs/{job}"),
                    Some(token),
                    None,
                )
                .await
                .expect(StatusCode::OK);
            if res.body["status"] == state {
                return res.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} did not become {state}: {}",
                res.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Every scope the org service's routes need.
pub const ORG_SCOPES: &str =
    "organization.read organization.write printer.read printer.write audit.read";

/// An organization with an admin, a member and a guest, each signed in with a token
/// for every org scope, and an outsider: the admin of another organization.
pub struct OrgWorld {
    pub org: Uuid,
    pub admin: TestUser,
    pub member: TestUser,
    pub guest: TestUser,
    pub outsider: TestUser,
    pub other_org: Uuid,
    pub admin_token: String,
    pub member_token: String,
    pub guest_token: String,
    pub outsider_token: String,
}

impl OrgWorld {
    pub async fn new(app: &TestApp) -> Self {
        let admin = app.new_user("admin").await;
        let member = app.new_user("member").await;
        let guest = app.new_user("guest").await;
        let outsider = app.new_user("outsider").await;
        let org = app.new_org(&admin, "Fab Lab").await;
        let other_org = app.new_org(&outsider, "Other Lab").await;
        app.add_member(org, &member, "member").await;
        app.add_member(org, &guest, "guest").await;
        let admin_token = app.access_token(&admin, ORG_SCOPES).await;
        let member_token = app.access_token(&member, ORG_SCOPES).await;
        let guest_token = app.access_token(&guest, ORG_SCOPES).await;
        let outsider_token = app.access_token(&outsider, ORG_SCOPES).await;
        Self {
            org,
            admin,
            member,
            guest,
            outsider,
            other_org,
            admin_token,
            member_token,
            guest_token,
            outsider_token,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    /// Holds the session cookie.
    pub browser: reqwest::Client,
}

/// A client that does not follow redirects (tests look at them).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Like [`client`], keeping cookies.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("http client")
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = random_token();
        let challenge = base64url(&sha256(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

/// Text as the pages escape it, unescaped (named and numeric character references).
pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..semi];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The hidden fields and the CSRF value of the consent form in `html`.
pub fn form_fields(html: &str) -> Vec<(String, String)> {
    let unescape = html_unescape;
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|chunk| {
            let name = chunk.split("name=\"").nth(1)?.split('"').next()?;
            let value = chunk.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// The `Location` of a redirect response.
pub fn location(res: &reqwest::Response) -> String {
    assert!(
        res.status().is_redirection(),
        "expected a redirect, got {}",
        res.status()
    );
    res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned()
}

/// An invalid authorization request's answer: a 400 page (never a redirect) whose link
/// back to `redirect_uri` carries these error parameters.
pub async fn error_page_params(
    res: reqwest::Response,
    redirect_uri: &str,
) -> Vec<(String, String)> {
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none(), "redirected");
    let page = res.text().await.expect("page");
    let href = page
        .split("href=\"")
        .skip(1)
        .filter_map(|c| c.split('"').next())
        .map(html_unescape)
        .find(|h| h.starts_with(redirect_uri))
        .unwrap_or_else(|| panic!("no link back to {redirect_uri} in {page}"));
    url::Url::parse(&href)
        .expect("absolute link")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The query parameters of a redirect to `redirect_uri`.
pub fn redirect_params(res: &reqwest::Response, redirect_uri: &str) -> Vec<(String, String)> {
    let to = location(res);
    assert!(to.starts_with(redirect_uri), "redirected to {to}");
    url::Url::parse(&to)
        .expect("absolute redirect")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

pub fn code_from_redirect(res: &reqwest::Response, redirect_uri: &str) -> String {
    let params = redirect_params(res, redirect_uri);
    param(&params, "code").unwrap_or_else(|| panic!("no code in {params:?}"))
}

/// Asserts that `res` is an RFC 9457 problem with `status`, whose `request_id` matches
/// the `x-request-id` header, and returns its body.
pub async fn expect_problem(res: reqwest::Response, status: StatusCode) -> Value {
    let url = res.url().clone();
    let actual = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let header_id = res
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = res.text().await.unwrap_or_default();
    assert_eq!(actual, status, "status of {url}: {text}");
    assert_eq!(content_type, "application/problem+json", "{url}: {text}");
    let body: Value = serde_json::from_str(&text).expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["type"].is_string(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert_eq!(
        body["request_id"].as_str(),
        Some(header_id.expect("x-request-id header").as_str()),
        "{body}"
    );
    body
}
