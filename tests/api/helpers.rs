//! The one place tests get a running Printworks from: [`TestApp::spawn`] serves the real
//! application on a random loopback port, over real HTTP, against the fresh database
//! `#[sqlx::test]` made for the test. Later features add their request helpers here
//! (create a user, log in, get a token, ...), not in the test files.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use printworks::{Application, ServiceSet};
use printworks_common::Settings;
use printworks_common::clock::ManualClock;
use printworks_common::http::REQUEST_ID_HEADER;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The application's clock: move it instead of sleeping.
    #[allow(dead_code)] // for the tests of expiring things
    pub clock: Arc<ManualClock>,
    #[allow(dead_code)] // for tests that look into the database
    pub db: PgPool,
    /// The data directory, removed when the test ends.
    #[allow(dead_code)] // for tests that look at generated keys and files
    pub data_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Settings for a test: defaults, an ephemeral port, the given data directory.
pub fn test_settings(data_dir: &Path) -> Settings {
    let mut s = Settings::defaults();
    s.http_addr = "127.0.0.1:0".parse().expect("loopback address");
    s.data_dir = data_dir.to_path_buf();
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
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut settings = test_settings(data_dir.path());
        configure(&mut settings);
        let clock = ManualClock::starting_now();
        let app = Application::build(settings, services, db.clone(), clock.clone())
            .await
            .expect("build application");
        let addr = app.local_addr();
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run());
        Self {
            addr,
            client: client(),
            clock,
            db,
            data_dir,
            shutdown,
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Asserts that `res` is an RFC 9457 problem with `status`, whose `request_id` matches
/// the `x-request-id` header, and returns its body.
pub async fn expect_problem(res: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(res.status(), status, "status of {}", res.url());
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let header_id = res
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id header")
        .to_owned();
    let body: Value = res.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["type"].is_string(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert_eq!(body["request_id"], header_id.as_str(), "{body}");
    body
}
